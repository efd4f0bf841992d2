//! A harness for fuzzers and property tests: runs the synchronous part of the query path on
//! raw bytes, without sockets or upstreams, and asserts what every step promises. A panic is
//! a finding.
//!
//! [`query_path`] takes the bytes two ways:
//! - as a client's query, through `Pipeline::handle_fast` (a pipeline built by
//!   [`dot_proxy::fuzzing::pipeline`]): a drop, an error answer, or a miss, each checked
//!   against what [`wire::parse_query`] made of the bytes; for a miss, its request (kept
//!   query, cache key), the query sent upstream, and answers rendered from responses built
//!   from the query (the query echoed with QR set, and a response whose records are drawn
//!   from the input bytes);
//! - as an upstream's response: answers rendered from it for queries asking its question
//!   (with and without EDNS), so real responses in the corpus (compressed, negative with SOA,
//!   truncated) reach [`Answer::from_upstream`] and [`StoredAnswer::render`](dot_proxy::dns::message::StoredAnswer::render) as they are.
//!
//! Every answer the proxy would send is checked to be well-formed for both the proxy's own
//! parser and hickory-proto's, to carry the client's ID and question bytes, and to fit the
//! length it was rendered for. Used by `fuzz/fuzz_targets/query_path.rs` and
//! `proxy/tests/properties.rs`; it lives in the test kit, not in the proxy's library.
//!
//! One check is relaxed, for the inputs that need it: [`names_touch_rewritten_bytes`]
//! (docs/fuzzing.md says why).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_proto::op::Message;

use dot_proxy::cache::CacheKey;
use dot_proxy::config::Config;
use dot_proxy::dns::message::{
    error_answer, upstream_query, Answer, AnswerKind, TtlPolicy, UpstreamQueryOptions, BADVERS,
};
use dot_proxy::dns::wire::{self, header, Edns, QueryInfo, Rejection, ResponseInfo, HEADER_LEN};
use dot_proxy::dns::{opt, rcode, rtype, EDNS_UDP_SIZE};
use dot_proxy::fuzzing::pipeline;
use dot_proxy::metrics::Transport;
use dot_proxy::pipeline::{Fast, Pipeline};

mod synth;
pub use synth::synth_response;
use synth::Draw;

/// Runs the whole synchronous query path on `data`; panics when an invariant breaks.
pub fn query_path(data: &[u8]) {
    as_client_query(data);
    as_upstream_response(data);
}

thread_local! {
    /// The harness's pipeline: no cache (every valid query is a miss, whatever came
    /// before), no rate limit, and no group (`resolve` is never called).
    static PIPELINE: Arc<Pipeline> = {
        let mut cfg = Config::default();
        cfg.cache.enabled = false;
        cfg.rate_limit.enabled = false;
        pipeline(&cfg, Vec::new(), Arc::default()).0
    };
}

/// The bytes as a client's query, through `Pipeline::handle_fast`: dropped, answered with
/// an error, or a miss whose request (kept query, parsed info, cache key) is checked, with
/// the query it sends upstream and answers rendered from responses built from it (the
/// query echoed with QR set, and a response whose records are drawn from the input bytes).
pub fn as_client_query(data: &[u8]) {
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let mut out = Vec::new();
    let fast =
        PIPELINE.with(|p| p.handle_fast(data, client, Transport::udp, p.clock().now(), &mut out));
    match (fast, wire::parse_query(data)) {
        (Fast::Drop { .. }, Err(Rejection::Drop)) => {
            assert!(
                data.len() < HEADER_LEN || header::is_response(data),
                "dropped a query that carries an ID and is no response"
            );
        }
        (
            Fast::Answered(0),
            Err(Rejection::Answer {
                rcode: rc,
                question_end,
            }),
        ) => {
            check_error_answer(&out, data, question_end, rc, None);
        }
        (Fast::Answered(0), Err(Rejection::BadVersion { question_end })) => {
            check_error_answer(
                &out,
                data,
                Some(question_end),
                BADVERS,
                Some(&Edns::default()),
            );
        }
        (Fast::Miss(req), Ok(qi)) => {
            let end = qi.question_end;
            assert_eq!(
                req.query.get(..end),
                data.get(..end),
                "the miss lost the question"
            );
            check_query_info(&req.query, &req.qi);
            assert_eq!(req.key.as_bytes(), CacheKey::new(data, &qi, 0).as_bytes());
            error_answer(
                data,
                Some(qi.question_end),
                rcode::SERVFAIL,
                qi.edns.as_ref(),
                &mut out,
            );
            check_error_answer(
                &out,
                data,
                Some(qi.question_end),
                rcode::SERVFAIL,
                qi.edns.as_ref(),
            );
            check_cache_key(data, &qi);
            check_upstream_queries(data, &qi);
            let mut echo = data.to_vec();
            header::set_flags(&mut echo, header::flags(data) | header::QR | header::RA);
            check_answers(&echo, data, &qi);
            let synth = synth_response(data, &qi);
            check_answers(&synth, data, &qi);
        }
        (fast, parsed) => panic!(
            "the pipeline's {} does not follow the guard's {parsed:?}",
            match fast {
                Fast::Drop { .. } => "drop",
                Fast::Answered(_) => "inline answer",
                Fast::Miss(_) => "miss",
            }
        ),
    }
}

/// The bytes as an upstream's response: rendered for clients asking its question.
pub fn as_upstream_response(data: &[u8]) {
    if data.len() < HEADER_LEN || header::qdcount(data) != 1 {
        return;
    }
    let Ok(qname_end) = wire::skip_plain_name(data, HEADER_LEN) else {
        return;
    };
    let Some(question) = data.get(HEADER_LEN..qname_end + 4) else {
        return;
    };
    let mut resp = data.to_vec();
    header::set_flags(&mut resp, header::flags(data) | header::QR);
    let mut draw = Draw::new(data, 0);
    let client_edns = [
        None,
        Some((EDNS_UDP_SIZE, false, false)),
        Some((draw.u16(), true, draw.u8() & 1 == 1)),
    ];
    for edns in client_edns {
        let query = build_query(draw.u16(), question, edns, draw.u8() & 1 == 1);
        // Questions a client cannot ask (AXFR, OPT...) are answered by the guard, not upstream.
        let Ok(qi) = wire::parse_query(&query) else {
            continue;
        };
        check_answers(&resp, &query, &qi);
    }
}

/// A query asking `question`; `edns` is (UDP size, DO, CD).
fn build_query(
    id: u16,
    question: &[u8],
    edns: Option<(u16, bool, bool)>,
    flip_case: bool,
) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER_LEN + question.len() + 11);
    q.extend_from_slice(&id.to_be_bytes());
    let cd = if edns.is_some_and(|e| e.2) {
        header::CD
    } else {
        0
    };
    q.extend_from_slice(&(header::RD | cd).to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    let name_end = q.len() + question.len().saturating_sub(4);
    q.extend_from_slice(question);
    if flip_case {
        flip_ascii_case(&mut q, HEADER_LEN, name_end);
    }
    if let Some((size, do_bit, _)) = edns {
        q.push(0);
        q.extend_from_slice(&rtype::OPT.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, if do_bit { 0x80 } else { 0 }, 0, 0, 0]);
    }
    q
}

/// Swaps the letter case of the labels of the uncompressed name in `b[from..to]`.
fn flip_ascii_case(b: &mut [u8], from: usize, to: usize) {
    let mut at = from;
    while at < to {
        let len = b.get(at).copied().unwrap_or(0) as usize;
        if len == 0 || len & 0xC0 != 0 {
            break;
        }
        let end = (at + 1 + len).min(to);
        for c in b.get_mut(at + 1..end).into_iter().flatten() {
            if c.is_ascii_alphabetic() {
                *c ^= 0x20;
            }
        }
        at = end;
    }
}

fn check_query_info(data: &[u8], qi: &QueryInfo) {
    assert_eq!(qi.id, header::id(data));
    assert_eq!(
        header::qdcount(data),
        1,
        "accepted a query without exactly one question"
    );
    assert_eq!(
        header::opcode(data),
        0,
        "accepted an opcode other than QUERY"
    );
    assert!(!header::is_response(data));
    assert_eq!(qi.qname_end + 4, qi.question_end);
    assert!(qi.question_end <= data.len());
    assert!(
        !matches!(qi.qtype, rtype::AXFR | rtype::IXFR | rtype::OPT),
        "accepted qtype {}",
        qi.qtype
    );
    assert!(
        qi.edns.is_none_or(|e| e.version == 0),
        "accepted EDNS version > 0"
    );
    let max = qi.max_udp_size();
    assert!((512..=dot_proxy::dns::MAX_UDP_ANSWER).contains(&max));
}

/// An answer the proxy makes itself (FORMERR, NOTIMP, BADVERS, SERVFAIL...).
fn check_error_answer(
    out: &[u8],
    query: &[u8],
    question_end: Option<usize>,
    rc: u8,
    edns: Option<&Edns>,
) {
    assert!(out.len() >= HEADER_LEN);
    assert_eq!(
        header::id(out),
        header::id(query),
        "error answer does not echo the ID"
    );
    assert!(header::is_response(out));
    assert_eq!(header::opcode(out), header::opcode(query));
    assert_eq!(header::rcode(out), rc & 0xF);
    assert_eq!(header::qdcount(out), u16::from(question_end.is_some()));
    assert_eq!((header::ancount(out), header::nscount(out)), (0, 0));
    if let Some(end) = question_end {
        assert_eq!(
            out.get(HEADER_LEN..end),
            query.get(HEADER_LEN..end),
            "error answer does not echo the question"
        );
        let info = wire::parse_response(out)
            .unwrap_or_else(|e| panic!("error answer does not parse: {e}"));
        assert_eq!(info.rcode, rc, "extended RCODE lost");
        assert_eq!(info.edns.is_some(), edns.is_some() || rc > 15);
    }
    let m = hickory(out, "error answer");
    assert_eq!(m.metadata.id, header::id(query));
    assert_eq!(m.queries.len(), usize::from(question_end.is_some()));
}

fn check_cache_key(data: &[u8], qi: &QueryInfo) {
    let name = data.get(HEADER_LEN..qi.qname_end).unwrap_or(&[]);
    let lower: Vec<u8> = name.iter().map(u8::to_ascii_lowercase).collect();
    for tag in [0u8, 1, 255] {
        let key = CacheKey::new(data, qi, tag);
        assert_eq!(key.route_tag(), tag);
        // Name, then type, class, DO/CD flags and route tag.
        assert_eq!(key.as_bytes().len(), key.name().len() + 6);
        assert!(
            lower.starts_with(key.name()),
            "key name is not the lower-cased question name"
        );
    }
    // The same question in other letter case shares the key; another DO or CD bit does not.
    let mut other_case = data.to_vec();
    flip_ascii_case(&mut other_case, HEADER_LEN, qi.qname_end);
    let qi2 = wire::parse_query(&other_case)
        .unwrap_or_else(|r| panic!("case change made the query invalid: {r:?}"));
    assert_eq!(
        CacheKey::new(data, qi, 0).as_bytes(),
        CacheKey::new(&other_case, &qi2, 0).as_bytes()
    );
    let mut other_cd = data.to_vec();
    header::set_flags(&mut other_cd, header::flags(data) ^ header::CD);
    let qi3 = wire::parse_query(&other_cd)
        .unwrap_or_else(|r| panic!("CD change made the query invalid: {r:?}"));
    assert_ne!(
        CacheKey::new(data, qi, 0).as_bytes(),
        CacheKey::new(&other_cd, &qi3, 0).as_bytes()
    );
}

/// The query sent upstream must itself be a valid query for the same question. Client EDNS
/// options are forwarded as they are, so hickory-proto (which checks option contents, e.g.
/// an ECS address family) must parse the upstream query only when it parses the client's.
fn check_upstream_queries(data: &[u8], qi: &QueryInfo) {
    let client_parses = Message::from_vec(data).is_ok();
    let options = [
        UpstreamQueryOptions {
            strip_ecs: true,
            padding_block: 128,
            keepalive: true,
        },
        UpstreamQueryOptions {
            strip_ecs: false,
            padding_block: 0,
            keepalive: false,
        },
        UpstreamQueryOptions {
            strip_ecs: false,
            padding_block: 468,
            keepalive: false,
        },
    ];
    let mut up = Vec::new();
    for o in options {
        upstream_query(data, qi, &o, &mut up);
        // DoT frames carry a 16-bit length (reached only by inputs near 64 KiB, see
        // `upstream_query_never_exceeds_65535_bytes` in proxy/tests/properties.rs).
        assert!(up.len() <= 65_535, "upstream query of {} bytes", up.len());
        let uqi = wire::parse_query(&up)
            .unwrap_or_else(|r| panic!("upstream query rejected ({r:?}) for {o:?}"));
        assert_eq!(uqi.id, 0);
        assert_eq!(
            up.get(HEADER_LEN..uqi.question_end),
            data.get(HEADER_LEN..qi.question_end),
            "question changed"
        );
        assert_eq!(
            (uqi.rd(), uqi.cd(), uqi.do_bit()),
            (qi.rd(), qi.cd(), qi.do_bit())
        );
        let e = uqi
            .edns
            .unwrap_or_else(|| panic!("upstream query without OPT"));
        assert_eq!(e.udp_size, EDNS_UDP_SIZE);
        if o.padding_block > 0 {
            assert_eq!(
                up.len() % usize::from(o.padding_block),
                0,
                "upstream query not padded"
            );
        }
        let mut keepalive = false;
        for (code, value) in wire::edns_options(&up, &e) {
            assert!(code != opt::COOKIE, "client cookie forwarded");
            assert!(
                !(o.strip_ecs && code == opt::ECS),
                "ECS forwarded though stripped"
            );
            if code == opt::TCP_KEEPALIVE {
                assert!(value.is_empty() && !keepalive, "client keepalive forwarded");
                keepalive = true;
            }
        }
        assert_eq!(keepalive, o.keepalive);
        if client_parses {
            assert_eq!(hickory(&up, "upstream query").queries.len(), 1);
        }
    }
}

/// Normalizes `resp` as an upstream answer to `query` and renders it for that client under
/// several TTL policies, ages and length limits.
pub fn check_answers(resp: &[u8], query: &[u8], qi: &QueryInfo) {
    let parsed = wire::parse_response(resp);
    let hickory_parses = Message::from_vec(resp).is_ok()
        && parsed
            .as_ref()
            .is_ok_and(|info| !names_touch_rewritten_bytes(resp, info));
    let policies = [
        TtlPolicy::default(),
        TtlPolicy {
            min_ttl: 60,
            max_ttl: 300,
            negative_max_ttl: 30,
            servfail_ttl: 1,
            rotate: true,
        },
        TtlPolicy {
            min_ttl: 600,
            max_ttl: 10,
            negative_max_ttl: 0,
            servfail_ttl: 0,
            rotate: false,
        },
    ];
    let mut d = Draw::new(resp, 0);
    let renders = [
        (0, None),
        (d.u32() % 100_000, None),
        (u32::MAX, None),
        (d.u8().into(), Some(30)),
    ];
    let mut out = Vec::new();
    for policy in &policies {
        let Ok(answer) = Answer::from_upstream(resp, query, qi, policy) else {
            continue;
        };
        let Ok(info) = &parsed else {
            panic!("accepted a response its own parser rejects")
        };
        check_normalized(&answer, info, policy);
        let max_lens = [512, qi.max_udp_size(), 65_535];
        for max_len in max_lens {
            for (age, ttl_override) in renders {
                answer
                    .stored()
                    .render(query, qi, age, ttl_override, max_len, &mut out);
                let r = Rendered {
                    out: &out,
                    query,
                    qi,
                    info,
                    answer: &answer,
                    policy,
                    age,
                    ttl_override,
                    max_len,
                };
                r.check(hickory_parses);
            }
        }
    }
}

fn check_normalized(answer: &Answer, info: &ResponseInfo, policy: &TtlPolicy) {
    let w = answer.wire();
    assert_eq!(header::id(w), 0, "stored answer keeps an ID");
    let stored =
        wire::parse_response(w).unwrap_or_else(|e| panic!("stored answer does not parse: {e}"));
    assert!(
        stored.edns.is_none(),
        "stored answer keeps the upstream's OPT"
    );
    assert_eq!(stored.ttls.len(), info.ttls.len());
    assert_eq!(answer.rcode(), info.rcode);
    let expected_kind = match info.rcode {
        _ if info.truncated => AnswerKind::Uncacheable,
        rcode::NOERROR if info.answers > 0 => AnswerKind::Positive,
        rcode::NOERROR | rcode::NXDOMAIN => AnswerKind::Negative,
        rcode::SERVFAIL => AnswerKind::ServFail,
        _ => AnswerKind::Uncacheable,
    };
    assert_eq!(answer.kind(), expected_kind);
    match answer.kind() {
        AnswerKind::Positive => {
            let max = policy.max_ttl.max(policy.min_ttl);
            assert!(
                (policy.min_ttl..=max).contains(&answer.ttl()),
                "positive TTL {} outside the policy",
                answer.ttl()
            );
        }
        AnswerKind::Negative => {
            assert!(
                answer.ttl() <= policy.negative_max_ttl,
                "negative TTL above the policy's cap"
            );
            assert!(
                info.negative_ttl.is_some() || answer.ttl() == 0,
                "negative answer without SOA cached"
            );
        }
        AnswerKind::ServFail => assert_eq!(answer.ttl(), policy.servfail_ttl),
        AnswerKind::Uncacheable => assert_eq!(answer.ttl(), 0),
    }
}

/// One rendered answer and what it was rendered from.
struct Rendered<'a> {
    out: &'a [u8],
    query: &'a [u8],
    qi: &'a QueryInfo,
    info: &'a ResponseInfo,
    answer: &'a Answer,
    policy: &'a TtlPolicy,
    age: u32,
    ttl_override: Option<u32>,
    max_len: usize,
}

impl Rendered<'_> {
    fn check(&self, hickory_parses: bool) {
        let (out, qi) = (self.out, self.qi);
        assert!(
            out.len() <= self.max_len,
            "answer of {} bytes rendered for at most {}",
            out.len(),
            self.max_len
        );
        assert_eq!(
            header::id(out),
            qi.id,
            "answer does not carry the client's ID"
        );
        assert!(header::is_response(out));
        let rd_cd = header::RD | header::CD;
        assert_eq!(
            header::flags(out) & rd_cd,
            qi.flags & rd_cd,
            "RD/CD not as the client sent them"
        );
        assert_eq!(
            out.get(HEADER_LEN..qi.question_end),
            self.query.get(HEADER_LEN..qi.question_end),
            "answer does not echo the client's question bytes"
        );
        let r = wire::parse_response(out)
            .unwrap_or_else(|e| panic!("rendered answer does not parse: {e}"));
        assert_eq!(r.rcode & 0xF, self.info.rcode & 0xF, "RCODE changed");
        match (qi.edns, r.edns) {
            (Some(_), Some(e)) => {
                assert_eq!(e.do_bit, qi.do_bit(), "DO bit not the client's");
                assert_eq!(r.rcode, self.info.rcode, "extended RCODE changed");
            }
            (None, None) => {}
            (asked, got) => panic!(
                "client EDNS {:?} but answer OPT {:?}",
                asked.is_some(),
                got.is_some()
            ),
        }
        let full_len = self.answer.wire().len() + if qi.edns.is_some() { 11 } else { 0 };
        let truncated_here = full_len > self.max_len;
        if truncated_here {
            assert!(
                header::is_truncated(out),
                "cut an answer without setting TC"
            );
            assert_eq!((header::ancount(out), header::nscount(out)), (0, 0));
            assert!(r.ttls.is_empty());
        } else {
            assert_eq!(r.ttls.len(), self.info.ttls.len(), "records lost");
            for (&(_, got), &(_, orig)) in r.ttls.iter().zip(&self.info.ttls) {
                match self.ttl_override {
                    Some(v) => assert_eq!(got, v & 0x7FFF_FFFF),
                    None => {
                        let floor = if self.answer.kind() == AnswerKind::Positive {
                            self.policy.min_ttl
                        } else {
                            0
                        };
                        let bound = orig.max(floor).saturating_sub(self.age);
                        assert!(
                            got <= bound,
                            "TTL {got} above {bound} (original {orig}, age {})",
                            self.age
                        );
                    }
                }
            }
        }
        if hickory_parses || truncated_here {
            let m = hickory(out, "rendered answer");
            assert_eq!(m.metadata.id, qi.id);
            assert_eq!(m.queries.len(), 1);
        }
    }
}

/// Rendering rewrites bytes of the upstream's answer (ID, flags, ARCOUNT, TTLs, and the
/// question's type and class bytes). `wire::parse_response` refuses owner names, and the
/// names in the RDATA of the types that may be compressed (NS, CNAME, PTR, DNAME, MX, SRV,
/// SOA), that lead into those bytes. It does not read the RDATA of other types, where RFC
/// 3597 forbids compression but hickory-proto still follows pointers (RRSIG, NSEC, SVCB...):
/// for those, rendered answers are not held to hickory's parser; every other check applies.
///
/// True when a name reached from a record's owner, or from a pointer anywhere in record
/// data (A, AAAA and TXT carry no names), touches one of those bytes.
pub fn names_touch_rewritten_bytes(resp: &[u8], info: &ResponseInfo) -> bool {
    let qname_end = info.question_end.saturating_sub(4);
    // The addresses of the answer section's IN A and AAAA records: their order turns per
    // client (cache address rotation).
    let mut addresses = Vec::new();
    let mut at = info.question_end;
    for _ in 0..header::ancount(resp) {
        let Ok(rec) = wire::skip_record(resp, at) else {
            break;
        };
        let len = rec.end - rec.rdata_at;
        let class_in = wire::u16_at(resp, rec.ttl_at - 2) == Some(1);
        if class_in
            && ((rec.rtype == rtype::A && len == 4) || (rec.rtype == rtype::AAAA && len == 16))
        {
            addresses.push(rec.rdata_at..rec.end);
        }
        at = rec.end;
    }
    let rewritten = |at: usize| {
        at < HEADER_LEN
            || (qname_end..info.question_end).contains(&at)
            || info
                .ttls
                .iter()
                .any(|&(t, _)| (t as usize..t as usize + 4).contains(&at))
            || addresses.iter().any(|r| r.contains(&at))
    };
    let touches = |mut at: usize| {
        for _ in 0..256 {
            if rewritten(at) {
                return true;
            }
            let Some(&len) = resp.get(at) else {
                return false;
            };
            match len & 0xC0 {
                0x00 if len == 0 => return false,
                0x00 => {
                    let label = at + 1..at + 1 + usize::from(len);
                    if label.clone().any(rewritten) {
                        return true;
                    }
                    at = label.end;
                }
                0xC0 => {
                    if rewritten(at + 1) {
                        return true;
                    }
                    match wire::u16_at(resp, at) {
                        Some(p) => at = usize::from(p & 0x3FFF),
                        None => return false,
                    }
                }
                _ => return false,
            }
        }
        false
    };
    let records = [
        header::ancount(resp),
        header::nscount(resp),
        header::arcount(resp),
    ];
    let mut at = info.question_end;
    for _ in 0..records.iter().map(|&n| usize::from(n)).sum::<usize>() {
        let Ok(rec) = wire::skip_record(resp, at) else {
            return false;
        };
        if touches(at) {
            return true;
        }
        if !matches!(rec.rtype, rtype::A | rtype::AAAA | rtype::TXT) {
            let rdata = resp.get(rec.rdata_at..rec.end).unwrap_or(&[]);
            for (i, &b) in rdata.iter().enumerate() {
                if b & 0xC0 == 0xC0 && touches(rec.rdata_at + i) {
                    return true;
                }
            }
        }
        at = rec.end;
    }
    false
}

/// Parses `msg` with hickory-proto, panicking when it fails.
fn hickory(msg: &[u8], what: &str) -> Message {
    Message::from_vec(msg).unwrap_or_else(|e| {
        panic!("{what} does not parse with hickory-proto: {e}; bytes {msg:02x?}")
    })
}
