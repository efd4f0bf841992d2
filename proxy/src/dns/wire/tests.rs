use super::*;
use crate::test_util;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

/// An AAAA query (ID 0x1234), with `edns` an OPT (4000, DO) carrying an ECS option.
fn q(name: &str, edns: bool) -> Vec<u8> {
    let edns = edns.then(|| test_util::edns(4000, true, true));
    test_util::query(0x1234, name, RecordType::AAAA, edns)
}

#[test]
fn parses_a_plain_query() {
    let b = q("WwW.Example.Com.", false);
    let qi = parse_query(&b).expect("valid");
    assert_eq!(qi.id, 0x1234);
    assert_eq!(qi.qtype, 28);
    assert_eq!(qi.qclass, 1);
    assert!(qi.rd());
    assert_eq!(&b[12..qi.qname_end], b"\x03WwW\x07Example\x03Com\x00");
    assert_eq!(qi.max_udp_size(), 512);
    assert!(qi.edns.is_none());
}

#[test]
fn parses_edns() {
    let b = q("example.com.", true);
    let qi = parse_query(&b).expect("valid");
    let e = qi.edns.expect("edns");
    assert_eq!(e.udp_size, 4000);
    assert!(e.do_bit && e.has_ecs);
    assert_eq!(qi.max_udp_size(), 4000);
    assert_eq!(e.end, b.len());
    let opts: Vec<u16> = edns_options(&b, &e).map(|(c, _)| c).collect();
    assert_eq!(opts, vec![crate::dns::opt::ECS]);
}

#[test]
fn rejections() {
    assert_eq!(parse_query(&[0; 11]), Err(Rejection::Drop));
    let mut r = q("a.", false);
    r[2] |= 0x80;
    assert_eq!(parse_query(&r), Err(Rejection::Drop));
    let mut r = q("a.", false);
    r[2] |= 2 << 3;
    assert!(matches!(
        parse_query(&r),
        Err(Rejection::Answer { rcode: 4, .. })
    ));
    let mut r = q("a.", false);
    r[5] = 0;
    assert!(matches!(
        parse_query(&r),
        Err(Rejection::Answer {
            rcode: 1,
            question_end: None
        })
    ));
    // A 64-byte label.
    let mut r = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64];
    r.extend_from_slice(&[b'a'; 64]);
    r.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert!(matches!(
        parse_query(&r),
        Err(Rejection::Answer { rcode: 1, .. })
    ));
    // Two OPT records.
    let mut r = q("a.", true);
    let opt = r[r.len() - 11 - 12..].to_vec();
    r.extend_from_slice(&opt);
    r[11] = 2;
    assert!(matches!(
        parse_query(&r),
        Err(Rejection::Answer { rcode: 1, .. })
    ));
    // AXFR is not served.
    let mut r = q("a.", false);
    let n = r.len();
    r[n - 3] = 252;
    assert!(matches!(
        parse_query(&r),
        Err(Rejection::Answer { rcode: 4, .. })
    ));
}

#[test]
fn never_panics_on_prefixes_and_bit_flips() {
    let b = q("www.example.com.", true);
    for n in 0..b.len() {
        let _ = parse_query(&b[..n]);
        let _ = parse_response(&b[..n]);
    }
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[i] ^= 1 << bit;
            let _ = parse_query(&c);
            let _ = parse_response(&c);
        }
    }
}

#[test]
fn name_text() {
    assert_eq!(name_to_string(b"\x03www\x07example\x00"), "www.example.");
    assert_eq!(name_to_string(b"\x00"), ".");
    assert_eq!(name_to_string(b"\x03a.b\x00"), "a\\046b.");
}

#[test]
fn lowercase_name_follows_pointers_safely() {
    let msg = [
        0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'A', 0, 0xC0, 12, 0xC0, 17,
    ];
    let mut out = Vec::new();
    read_name_lower(&msg, 15, &mut out).expect("pointer back");
    assert_eq!(out, b"\x01a\x00");
    assert!(
        read_name_lower(&msg, 17, &mut out).is_err(),
        "pointer to itself is refused"
    );
}

#[test]
fn soa_borrowing_bytes_from_the_next_record_is_refused() {
    // Found by the fuzzer: an SOA whose RDATA length is shorter than its fields, so its
    // MINIMUM was read from the OPT record that follows.
    let mut b = vec![0x22, 0x22, 0x81, 0x83, 0, 1, 0, 0, 0, 1, 0, 1];
    b.extend_from_slice(b"\x02nx\x07example\x03com\x00\x00\x01\x00\x01");
    // SOA with rdlength 4: two root names, then nothing.
    b.extend_from_slice(&[0xC0, 12, 0, 6, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 0, 0, 0, 0]);
    // OPT with 18 bytes of option data the SOA would otherwise have "read".
    b.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 22, 0, 12, 0, 18]);
    b.extend_from_slice(&[0; 18]);
    assert!(parse_response(&b).is_err());
}

#[test]
fn forward_compression_pointers_are_refused() {
    let mut b = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    b.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
    let at = b.len();
    // Owner name pointing forward, past itself.
    b.extend_from_slice(&[
        0xC0,
        (at + 20) as u8,
        0,
        1,
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        4,
        1,
        2,
        3,
        4,
    ]);
    assert!(parse_response(&b).is_err());
}

/// A response to `a. A`, then the given records (ANCOUNT = their number).
fn response_with(records: &[&[u8]]) -> Vec<u8> {
    let mut b = vec![0, 1, 0x81, 0x80, 0, 1, 0, records.len() as u8, 0, 0, 0, 0];
    b.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
    for r in records {
        b.extend_from_slice(r);
    }
    b
}

#[test]
fn names_may_point_at_the_question_name() {
    // Owner c0 0c (the question), a CNAME to "b" + pointer to the question, then an A.
    let cname: &[u8] = &[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'b', 0xC0, 12];
    let a: &[u8] = &[0xC0, 31, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1];
    let b = response_with(&[cname, a]);
    let info = parse_response(&b).expect("ordinary compression");
    assert_eq!(info.ttls.len(), 2);
    assert!(Message::from_vec(&b).is_ok());
}

#[test]
fn names_reading_rewritten_bytes_are_refused() {
    // Owner names pointing into the ID, the flags, the question's type and class.
    for target in [0u8, 2, 4, 17, 19] {
        let rec: &[u8] = &[0xC0, target, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1];
        assert!(parse_response(&response_with(&[rec])).is_err(), "{target}");
    }
    // A second record whose owner points into the first record's TTL (offsets 25..29).
    let first: &[u8] = &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1];
    let second: &[u8] = &[0xC0, 27, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2];
    assert!(parse_response(&response_with(&[first, second])).is_err());
    // A label whose bytes run over a TTL field: the class's low byte (1, at offset 24) read
    // as a label length takes in the TTL's first byte.
    let second: &[u8] = &[0xC0, 24, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2];
    assert!(parse_response(&response_with(&[first, second])).is_err());
}

#[test]
fn rdata_names_are_checked() {
    // CNAME target pointing forward (into whatever follows, e.g. an OPT that gets cut).
    let fwd: &[u8] = &[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 40];
    let a: &[u8] = &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1];
    assert!(parse_response(&response_with(&[fwd, a])).is_err());
    // MX exchange pointing into its own TTL.
    let mx: &[u8] = &[0xC0, 12, 0, 15, 0, 1, 0, 0, 0, 60, 0, 4, 0, 10, 0xC0, 27];
    assert!(parse_response(&response_with(&[mx])).is_err());
    // A CNAME whose name ends before its RDATA does.
    let short: &[u8] = &[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 3, 0xC0, 12, 0];
    assert!(parse_response(&response_with(&[short])).is_err());
    // An A record's data is not a name, whatever its bytes.
    let a: &[u8] = &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 0xC0, 0, 2, 1];
    assert!(parse_response(&response_with(&[a])).is_ok());
}

#[test]
fn a_pointed_name_must_end_before_its_pointer() {
    // Found by proptest: an SOA RNAME pointing at its own RDLENGTH byte (39), read as a
    // label that runs on past the pointer into the OPT record, which the stored answer
    // drops: the stored answer would not parse.
    let b: &[u8] = &[
        34, 34, 129, 131, 0, 1, 0, 0, 0, 1, 0, 1, 2, 110, 120, 7, 101, 120, 97, 109, 112, 108, 101,
        3, 99, 111, 109, 0, 0, 1, 0, 1, 192, 15, 0, 6, 0, 1, 0, 0, 14, 16, 0, 39, 3, 110, 115, 49,
        192, 15, 10, 104, 111, 115, 116, 109, 97, 115, 116, 101, 114, 192, 43, 0, 163, 241, 117, 0,
        0, 28, 32, 0, 0, 3, 132, 0, 18, 117, 0, 0, 0, 1, 44, 0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0,
    ];
    assert!(parse_response(b).is_err());
}

/// Issue 27: a query is a header, one question and at most an OPT record. Answer or
/// authority records, or more than one additional record, are FORMERR (as Unbound's
/// `worker_check_request`), so no client can make the proxy keep kilobytes of records for
/// the life of a miss.
#[test]
fn queries_with_records_beyond_the_question_and_opt_are_formerr() {
    // One A record (owner: a pointer to the question name).
    let record: &[u8] = &[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1];
    for (section, count_at) in [("answer", 7), ("authority", 9)] {
        let mut r = q("a.", false);
        r.extend_from_slice(record);
        r[count_at] = 1;
        assert!(
            matches!(
                parse_query(&r),
                Err(Rejection::Answer {
                    rcode: 1,
                    question_end: Some(_)
                })
            ),
            "a record in the {section} section"
        );
    }
    // Two additional records: an OPT and an A.
    let mut r = q("a.", true);
    r.extend_from_slice(record);
    r[11] = 2;
    assert!(matches!(
        parse_query(&r),
        Err(Rejection::Answer { rcode: 1, .. })
    ));
    // One OPT alone is a query.
    assert!(parse_query(&q("a.", true)).is_ok());
}

/// An A record of owner `c0 0c` (the question's name) with address 192.0.2.`last`.
fn a_rec(last: u8) -> [u8; 16] {
    [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, last]
}

#[test]
fn address_records_of_one_owner_rotate() {
    let (r1, r2, r3) = (a_rec(1), a_rec(2), a_rec(3));
    let b = response_with(&[&r1, &r2, &r3]);
    let rot = parse_response(&b).expect("valid").rotation.expect("a run");
    // The question ends at 12 + 7; each record is 16 bytes, its address the last 4.
    assert_eq!(
        rot,
        Rotation {
            at: 19 + 12,
            stride: 16,
            n: 3,
            len: 4
        }
    );
    let last_octets = |m: &[u8]| -> Vec<u8> { (0..3).map(|k| m[19 + 16 * k + 15]).collect() };
    for (turn, want) in [
        (0, [1, 2, 3]),
        (1, [2, 3, 1]),
        (2, [3, 1, 2]),
        (4, [2, 3, 1]),
    ] {
        let mut out = b.clone();
        rot.apply(&b, turn, &mut out);
        assert_eq!(last_octets(&out), want, "turn {turn}");
        assert_eq!(out[..19], b[..19], "only addresses move");
    }
}

#[test]
fn only_alike_address_records_rotate() {
    // One address: nothing to turn.
    assert!(parse_response(&response_with(&[&a_rec(1)]))
        .expect("valid")
        .rotation
        .is_none());
    // Two owners (the second record's owner is a pointer to the first's): not one RRset.
    let other: &[u8] = &[
        1, b'b', 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2,
    ];
    assert!(parse_response(&response_with(&[&a_rec(1), other]))
        .expect("valid")
        .rotation
        .is_none());
    // Another class (CH): not rotated.
    let ch: &[u8] = &[0xC0, 12, 0, 1, 0, 3, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2];
    assert!(parse_response(&response_with(&[ch, ch]))
        .expect("valid")
        .rotation
        .is_none());
    // A CNAME first, then the run of addresses: the run is found after it.
    let cname: &[u8] = &[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'b', 0xC0, 12];
    let to_b = |last: u8| [0xC0, 31, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, last];
    let (b1, b2) = (to_b(1), to_b(2));
    let rot = parse_response(&response_with(&[cname, &b1, &b2]))
        .expect("valid")
        .rotation
        .expect("run after the CNAME");
    assert_eq!((rot.at, rot.n), (19 + 16 + 12, 2));
}

#[test]
fn names_pointing_into_rotated_addresses_are_refused() {
    // The second record's owner points at the first record's address bytes (offset 31),
    // which a rotation rewrites per client: the name would change with the order.
    let first: &[u8] = &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0, 0];
    let second: &[u8] = &[0xC0, 31, 0, 16, 0, 1, 0, 0, 0, 60, 0, 1, 0];
    assert!(parse_response(&response_with(&[first, second])).is_err());
    // The same bytes in a TXT record's data may be pointed at (only addresses rotate).
    let first: &[u8] = &[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0, 0];
    assert!(parse_response(&response_with(&[first, second])).is_ok());
}
