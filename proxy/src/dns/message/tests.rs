use super::*;
use crate::dns::wire::parse_query;
use crate::test_util::{self, option_codes};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// An A query (ID 77) with, when `edns` gives a UDP size, an ECS option.
fn query(name: &str, edns: Option<u16>) -> Vec<u8> {
    let edns = edns.map(|size| test_util::edns(size, false, true));
    test_util::query(77, name, RecordType::A, edns)
}

fn response(name: &str, ttls: &[u32], rcode: ResponseCode, soa: Option<(u32, u32)>) -> Vec<u8> {
    let mut m = Message::new(5, MessageType::Response, OpCode::Query);
    let n = Name::from_ascii(name).expect("name");
    let mut q = Query::new();
    q.set_name(n.clone()).set_query_type(RecordType::A);
    m.add_query(q);
    m.metadata.response_code = rcode;
    for (i, t) in ttls.iter().enumerate() {
        m.add_answer(Record::from_rdata(
            n.clone(),
            *t,
            RData::A(A::new(192, 0, 2, i as u8)),
        ));
    }
    if let Some((ttl, min)) = soa {
        let z = Name::from_ascii("example.").expect("zone");
        m.add_authority(Record::from_rdata(
            z.clone(),
            ttl,
            RData::SOA(SOA::new(z.clone(), z, 1, 2, 3, 4, min)),
        ));
    }
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().expect("encode")
}

/// The query sent upstream for `q` with these options.
fn upstream_with(q: &[u8], strip_ecs: bool, padding_block: u16, keepalive: bool) -> Vec<u8> {
    let qi = parse_query(q).expect("valid");
    let mut out = Vec::new();
    let opts = UpstreamQueryOptions {
        strip_ecs,
        padding_block,
        keepalive,
    };
    upstream_query(q, &qi, &opts, &mut out);
    out
}

#[test]
fn upstream_query_pads_strips_ecs_and_asks_keepalive() {
    let q = query("WWW.example.", Some(4096));
    let out = upstream_with(&q, true, 128, true);
    assert_eq!(out.len() % 128, 0, "padded to a block");
    let m = Message::from_vec(&out).expect("parse");
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.example.", "case kept");
    let codes = option_codes(&m);
    assert!(!codes.contains(&8), "ECS removed: {codes:?}");
    assert!(codes.contains(&11) && codes.contains(&12));
    let out2 = upstream_with(&q, false, 0, false);
    let m = Message::from_vec(&out2).expect("parse");
    assert_eq!(option_codes(&m), vec![8]);
    // Without client EDNS we still send our OPT (for padding and large answers).
    let q = query("a.example.", None);
    let out = upstream_with(&q, true, 128, true);
    assert!(Message::from_vec(&out).expect("parse").edns.is_some());
}

#[test]
fn positive_ttl_is_the_minimum_and_clamped() {
    let q = query("a.example.", None);
    let qi = parse_query(&q).expect("valid");
    let r = response("a.example.", &[300, 60, 900], ResponseCode::NoError, None);
    let a = Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default()).expect("answer");
    assert_eq!((a.kind(), a.ttl()), (AnswerKind::Positive, 60));
    let p = TtlPolicy {
        min_ttl: 120,
        max_ttl: 600,
        ..Default::default()
    };
    let a = Answer::from_upstream(&r, &q, &qi, &p).expect("answer");
    assert_eq!(a.ttl(), 120);
    let mut out = Vec::new();
    a.stored().render(&q, &qi, 0, None, 512, &mut out);
    let m = Message::from_vec(&out).expect("parse");
    let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(
        ttls,
        vec![300, 120, 600],
        "each record clamped into [min, max]"
    );
    assert!(m.edns.is_none(), "no OPT for a client without EDNS");
}

#[test]
fn negative_ttl_from_soa_per_rfc2308() {
    let q = query("nx.example.", None);
    let qi = parse_query(&q).expect("valid");
    let r = response("nx.example.", &[], ResponseCode::NXDomain, Some((3600, 45)));
    let a = Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default()).expect("answer");
    assert_eq!((a.kind(), a.ttl()), (AnswerKind::Negative, 45));
    let a = Answer::from_upstream(
        &r,
        &q,
        &qi,
        &TtlPolicy {
            negative_max_ttl: 10,
            ..Default::default()
        },
    )
    .expect("answer");
    assert_eq!(a.ttl(), 10);
    // NODATA without SOA: not cached.
    let r = response("nx.example.", &[], ResponseCode::NoError, None);
    assert_eq!(
        Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default())
            .expect("answer")
            .ttl(),
        0
    );
    // SERVFAIL: the short servfail TTL.
    let r = response("nx.example.", &[], ResponseCode::ServFail, None);
    let a = Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default()).expect("answer");
    assert_eq!((a.kind(), a.ttl()), (AnswerKind::ServFail, 5));
}

#[test]
fn render_restores_id_case_and_counts_ttls_down() {
    let q = query("MiXeD.example.", Some(1232));
    let qi = parse_query(&q).expect("valid");
    let r = response("mixed.example.", &[100], ResponseCode::NoError, None);
    let a = Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default()).expect("answer");
    let mut out = Vec::new();
    a.stored().render(&q, &qi, 30, None, 1232, &mut out);
    let m = Message::from_vec(&out).expect("parse");
    assert_eq!(m.metadata.id, 77);
    assert_eq!(m.queries[0].name().to_ascii(), "MiXeD.example.");
    assert_eq!(m.answers[0].ttl, 70);
    assert!(m.edns.is_some());
    a.stored().render(&q, &qi, 500, None, 1232, &mut out);
    assert_eq!(
        Message::from_vec(&out).expect("parse").answers[0].ttl,
        0,
        "never negative"
    );
    a.stored().render(&q, &qi, 500, Some(30), 1232, &mut out);
    assert_eq!(
        Message::from_vec(&out).expect("parse").answers[0].ttl,
        30,
        "stale TTL"
    );
}

#[test]
fn answer_must_match_the_question() {
    let q = query("a.example.", None);
    let qi = parse_query(&q).expect("valid");
    let r = response("b.example.", &[100], ResponseCode::NoError, None);
    assert!(Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default()).is_err());
}

#[test]
fn error_answers_echo_id_and_question() {
    let q = query("a.example.", Some(1232));
    let qi = parse_query(&q).expect("valid");
    let mut out = Vec::new();
    servfail(&q, &qi, &mut out);
    let m = Message::from_vec(&out).expect("parse");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (77, ResponseCode::ServFail)
    );
    assert_eq!(m.queries.len(), 1);
    assert!(m.edns.is_some());
}
