//! Responses built from a query and the fuzzer's bytes: the query echoed as an answer, with
//! records whose types, TTLs and data are drawn from the input.

use super::*;

/// Input bytes read in a loop, so one input always builds the same response.
pub(super) struct Draw<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Draw<'a> {
    pub(super) fn new(data: &'a [u8], at: usize) -> Self {
        Draw { data, at }
    }
    pub(super) fn u8(&mut self) -> u8 {
        let len = self.data.len().max(1);
        let v = self.data.get(self.at % len).copied().unwrap_or(0);
        self.at += 1;
        v
    }
    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub(super) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fn push_record(out: &mut Vec<u8>, name: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// Record data of the right size for A and AAAA; one character-string (valid TXT) otherwise.
fn rdata_for(t: u16, d: &mut Draw<'_>) -> Vec<u8> {
    let len = match t {
        rtype::A => 4,
        rtype::AAAA => 16,
        _ => 1 + usize::from(d.u8() % 16),
    };
    let mut v: Vec<u8> = (0..len).map(|_| d.u8()).collect();
    if let (false, Some(first)) = (matches!(t, rtype::A | rtype::AAAA), v.first_mut()) {
        *first = (len - 1) as u8;
    }
    v
}

/// A response to `query` whose RCODE, records and TTLs are drawn from the query's bytes:
/// answers named by a compression pointer to the question, a CNAME chain, an SOA for
/// negative answers, glue, and an OPT record when the query had one.
pub fn synth_response(query: &[u8], qi: &QueryInfo) -> Vec<u8> {
    let mut d = Draw::new(query, qi.question_end);
    let rc = [
        rcode::NOERROR,
        rcode::NOERROR,
        rcode::NXDOMAIN,
        rcode::SERVFAIL,
        rcode::REFUSED,
        rcode::NOERROR,
    ][d.u8() as usize % 6];
    let tc = if d.u8().is_multiple_of(16) {
        header::TC
    } else {
        0
    };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&d.u16().to_be_bytes());
    let flags =
        header::QR | header::RA | (qi.flags & (header::RD | header::CD)) | tc | u16::from(rc);
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&[0; 8]);
    let qname_at = r.len();
    r.extend_from_slice(query.get(HEADER_LEN..qi.question_end).unwrap_or(&[]));
    if d.u8() & 1 == 1 {
        // The upstream may answer in another letter case (0x20 randomisation).
        flip_ascii_case(&mut r, qname_at, qname_at + (qi.qname_end - HEADER_LEN));
    }
    let to_question = [0xC0, HEADER_LEN as u8];
    let mut an = 0u16;
    let mut ns = 0u16;
    let mut ar = 0u16;
    if rc == rcode::NOERROR {
        if d.u8().is_multiple_of(4) {
            // www.<qname> CNAME, then the answers for it.
            let alias_at = r.len() + 2 + 10;
            push_record(
                &mut r,
                &to_question,
                rtype::CNAME,
                d.u32(),
                &[3, b'w', b'w', b'w', 0xC0, HEADER_LEN as u8],
            );
            an += 1;
            let alias = [0xC0 | (alias_at >> 8) as u8, alias_at as u8];
            if alias_at < 0x3FFF {
                let rdata = rdata_for(qi.qtype, &mut d);
                push_record(&mut r, &alias, qi.qtype, d.u32(), &rdata);
                an += 1;
            }
        }
        for _ in 0..d.u8() % 6 {
            let rdata = rdata_for(qi.qtype, &mut d);
            push_record(&mut r, &to_question, qi.qtype, d.u32(), &rdata);
            an += 1;
        }
    }
    if an == 0 && rc != rcode::SERVFAIL {
        // RFC 2308: the zone's SOA in the authority section.
        let mut soa = vec![
            2,
            b'n',
            b's',
            0xC0,
            HEADER_LEN as u8,
            0xC0,
            HEADER_LEN as u8,
        ];
        for _ in 0..5 {
            soa.extend_from_slice(&d.u32().to_be_bytes());
        }
        let owner: &[u8] = if d.u8() & 1 == 1 { &to_question } else { &[0] };
        push_record(&mut r, owner, rtype::SOA, d.u32(), &soa);
        ns += 1;
    }
    if d.u8().is_multiple_of(3) {
        push_record(
            &mut r,
            &[2, b'n', b's', 0xC0, HEADER_LEN as u8],
            rtype::A,
            d.u32(),
            &[198, 51, 100, 53],
        );
        ar += 1;
    }
    if let Some(e) = qi.edns {
        r.push(0);
        r.extend_from_slice(&rtype::OPT.to_be_bytes());
        r.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
        let ttl = if e.do_bit { 0x8000u32 } else { 0 };
        r.extend_from_slice(&ttl.to_be_bytes());
        if d.u8() & 1 == 1 {
            // An option the client never sees (server cookie).
            r.extend_from_slice(&12u16.to_be_bytes());
            r.extend_from_slice(&opt::COOKIE.to_be_bytes());
            r.extend_from_slice(&8u16.to_be_bytes());
            r.extend_from_slice(&d.u32().to_be_bytes());
            r.extend_from_slice(&d.u32().to_be_bytes());
        } else {
            r.extend_from_slice(&0u16.to_be_bytes());
        }
        ar += 1;
    }
    header::set_counts(&mut r, 1, an, ns, ar);
    r
}
