//! Zero-copy views of DNS messages: header fields, the question, the EDNS OPT record and
//! the TTL positions of a response. Nothing here allocates on the query path or panics on
//! any input.

use super::{opt, rtype};

mod names;
mod rotation;
use names::{check_name, check_rdata_names, Rewritten};
pub use rotation::Rotation;
use rotation::{first_rotation, AddrRecord, CLASS_IN};

pub const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
const MAX_POINTERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message shorter than a DNS header")]
    TooShort,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("unsupported EDNS version")]
    BadVersion,
}

#[inline]
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}
#[inline]
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}
#[inline]
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Header accessors on raw bytes (callers have checked the length is at least 12).
pub mod header {
    use super::*;
    pub fn id(b: &[u8]) -> u16 {
        u16_at(b, 0).unwrap_or(0)
    }
    pub fn set_id(b: &mut [u8], id: u16) {
        put_u16(b, 0, id)
    }
    pub fn flags(b: &[u8]) -> u16 {
        u16_at(b, 2).unwrap_or(0)
    }
    pub fn set_flags(b: &mut [u8], f: u16) {
        put_u16(b, 2, f)
    }
    pub fn is_response(b: &[u8]) -> bool {
        flags(b) & 0x8000 != 0
    }
    pub fn opcode(b: &[u8]) -> u8 {
        ((flags(b) >> 11) & 0xF) as u8
    }
    pub fn is_truncated(b: &[u8]) -> bool {
        flags(b) & 0x0200 != 0
    }
    pub fn rcode(b: &[u8]) -> u8 {
        (flags(b) & 0xF) as u8
    }
    pub fn qdcount(b: &[u8]) -> u16 {
        u16_at(b, 4).unwrap_or(0)
    }
    pub fn ancount(b: &[u8]) -> u16 {
        u16_at(b, 6).unwrap_or(0)
    }
    pub fn nscount(b: &[u8]) -> u16 {
        u16_at(b, 8).unwrap_or(0)
    }
    pub fn arcount(b: &[u8]) -> u16 {
        u16_at(b, 10).unwrap_or(0)
    }
    pub fn set_counts(b: &mut [u8], qd: u16, an: u16, ns: u16, ar: u16) {
        put_u16(b, 4, qd);
        put_u16(b, 6, an);
        put_u16(b, 8, ns);
        put_u16(b, 10, ar);
    }
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
}

/// Reads an uncompressed name starting at `at`; returns the offset just past it.
/// Used for the question, which is the first name and so can never be compressed.
pub fn skip_plain_name(b: &[u8], mut at: usize) -> Result<usize, WireError> {
    let start = at;
    loop {
        let len = *b
            .get(at)
            .ok_or(WireError::Malformed("name runs past the end"))? as usize;
        if len == 0 {
            at += 1;
            // 255 octets at most, the root label's zero byte included (RFC 1035 2.3.4).
            if at - start > MAX_NAME_LEN {
                return Err(WireError::Malformed("name longer than 255 bytes"));
            }
            break;
        }
        if len & 0xC0 != 0 {
            return Err(WireError::Malformed(
                "compressed or extended label in question",
            ));
        }
        at += 1 + len;
        if at - start > MAX_NAME_LEN {
            return Err(WireError::Malformed("name longer than 255 bytes"));
        }
    }
    if at > b.len() {
        return Err(WireError::Malformed("name runs past the end"));
    }
    Ok(at)
}

/// Skips a possibly compressed name; returns the offset just past it in the message.
pub fn skip_name(b: &[u8], mut at: usize) -> Result<usize, WireError> {
    let mut total = 0usize;
    loop {
        let len = *b
            .get(at)
            .ok_or(WireError::Malformed("name runs past the end"))?;
        match len & 0xC0 {
            0x00 if len == 0 => return Ok(at + 1),
            0x00 => {
                total += 1 + len as usize;
                at += 1 + len as usize;
                if total > MAX_NAME_LEN {
                    return Err(WireError::Malformed("name longer than 255 bytes"));
                }
            }
            0xC0 => {
                let ptr = u16_at(b, at)
                    .ok_or(WireError::Malformed("truncated compression pointer"))?
                    & 0x3FFF;
                // RFC 1035 4.1.4: a pointer refers to a prior occurrence. Forward pointers
                // could reach records the proxy removes (OPT) and leave an answer broken.
                if usize::from(ptr) >= at {
                    return Err(WireError::Malformed("forward compression pointer"));
                }
                return Ok(at + 2);
            }
            _ => return Err(WireError::Malformed("unknown label type")),
        }
    }
}

/// Expands a (possibly compressed) name into lower-cased wire form, checking pointers.
pub fn read_name_lower(b: &[u8], mut at: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    let mut jumps = 0;
    loop {
        let len = *b
            .get(at)
            .ok_or(WireError::Malformed("name runs past the end"))?;
        match len & 0xC0 {
            0x00 if len == 0 => {
                out.push(0);
                if out.len() > MAX_NAME_LEN {
                    return Err(WireError::Malformed("name longer than 255 bytes"));
                }
                return Ok(());
            }
            0x00 => {
                let l = len as usize;
                let label = b
                    .get(at + 1..at + 1 + l)
                    .ok_or(WireError::Malformed("label runs past the end"))?;
                out.push(len);
                out.extend(label.iter().map(u8::to_ascii_lowercase));
                if out.len() > MAX_NAME_LEN {
                    return Err(WireError::Malformed("name longer than 255 bytes"));
                }
                at += 1 + l;
            }
            0xC0 => {
                let ptr = (u16_at(b, at).ok_or(WireError::Malformed("truncated pointer"))? & 0x3FFF)
                    as usize;
                jumps += 1;
                if jumps > MAX_POINTERS || ptr >= at {
                    return Err(WireError::Malformed("compression pointer loop"));
                }
                at = ptr;
            }
            _ => return Err(WireError::Malformed("unknown label type")),
        }
    }
}

/// What the EDNS OPT record of a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Edns {
    /// Offset of the OPT record (its owner name) and its end.
    pub start: usize,
    pub end: usize,
    pub udp_size: u16,
    pub ext_rcode: u8,
    pub version: u8,
    pub do_bit: bool,
    pub has_ecs: bool,
    /// Value of the edns-tcp-keepalive option, in units of 100 ms, if present with a value.
    pub keepalive: Option<u16>,
}

/// The parts of a query the proxy needs, located without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryInfo {
    pub id: u16,
    pub flags: u16,
    /// End of the question name (the name is `buf[12..qname_end]`).
    pub qname_end: usize,
    /// End of the question (name, type, class).
    pub question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl QueryInfo {
    pub fn rd(&self) -> bool {
        self.flags & header::RD != 0
    }
    pub fn cd(&self) -> bool {
        self.flags & header::CD != 0
    }
    pub fn do_bit(&self) -> bool {
        self.edns.is_some_and(|e| e.do_bit)
    }
    /// The largest answer this client takes over UDP.
    pub fn max_udp_size(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size as usize).clamp(512, super::MAX_UDP_ANSWER),
            None => 512,
        }
    }
}

/// Why a packet is not forwarded as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not answered at all (too short to carry an ID, or a response).
    Drop,
    /// Answered with this RCODE (and the question echoed when it parsed).
    Answer {
        rcode: u8,
        question_end: Option<usize>,
    },
    /// EDNS version above 0: BADVERS (extended RCODE 16) with our OPT.
    BadVersion { question_end: usize },
}

/// Checks a query the way a server must before doing anything with it.
pub fn parse_query(b: &[u8]) -> Result<QueryInfo, Rejection> {
    if b.len() < HEADER_LEN || header::is_response(b) {
        return Err(Rejection::Drop);
    }
    let formerr = |q| Rejection::Answer {
        rcode: super::rcode::FORMERR,
        question_end: q,
    };
    let qd = header::qdcount(b);
    let question = if qd >= 1 {
        parse_question(b).ok()
    } else {
        None
    };
    if header::opcode(b) != 0 {
        return Err(Rejection::Answer {
            rcode: super::rcode::NOTIMP,
            question_end: question.filter(|_| qd == 1).map(|q| q.2),
        });
    }
    if qd != 1 {
        return Err(formerr(None));
    }
    let (qname_end, (qtype, qclass), question_end) = question.ok_or(formerr(None))?;
    // A query is a question and at most one additional record (its OPT): answer or
    // authority records, or more additional ones, are refused as Unbound's
    // worker_check_request refuses them, so no client can make a miss keep kilobytes of
    // records for its life.
    if header::ancount(b) != 0 || header::nscount(b) != 0 || header::arcount(b) > 1 {
        return Err(formerr(Some(question_end)));
    }
    let mut at = question_end;
    let mut edns = None;
    for _ in 0..header::arcount(b) {
        let rec = skip_record(b, at).map_err(|_| formerr(Some(question_end)))?;
        if rec.rtype == rtype::OPT {
            if edns.is_some() || rec.name_len != 1 {
                return Err(formerr(Some(question_end)));
            }
            let e = parse_opt(b, at, &rec).map_err(|_| formerr(Some(question_end)))?;
            if e.version != 0 {
                return Err(Rejection::BadVersion { question_end });
            }
            edns = Some(e);
        }
        at = rec.end;
    }
    if at != b.len() {
        // Trailing garbage: tolerated by most servers, but we refuse to guess.
        return Err(formerr(Some(question_end)));
    }
    if matches!(qtype, rtype::AXFR | rtype::IXFR | rtype::OPT) {
        return Err(Rejection::Answer {
            rcode: super::rcode::NOTIMP,
            question_end: Some(question_end),
        });
    }
    Ok(QueryInfo {
        id: header::id(b),
        flags: header::flags(b),
        qname_end,
        question_end,
        qtype,
        qclass,
        edns,
    })
}

fn parse_question(b: &[u8]) -> Result<(usize, (u16, u16), usize), WireError> {
    let qname_end = skip_plain_name(b, HEADER_LEN)?;
    let qtype = u16_at(b, qname_end).ok_or(WireError::Malformed("question type missing"))?;
    let qclass = u16_at(b, qname_end + 2).ok_or(WireError::Malformed("question class missing"))?;
    Ok((qname_end, (qtype, qclass), qname_end + 4))
}

/// One resource record's position.
#[derive(Debug, Clone, Copy)]
pub struct RecordPos {
    pub name_len: usize,
    pub rtype: u16,
    /// Offset of the TTL field.
    pub ttl_at: usize,
    pub rdata_at: usize,
    pub end: usize,
}

pub fn skip_record(b: &[u8], at: usize) -> Result<RecordPos, WireError> {
    let name_end = skip_name(b, at)?;
    let rtype =
        u16_at(b, name_end).ok_or(WireError::Malformed("record header runs past the end"))?;
    let rdlen = u16_at(b, name_end + 8)
        .ok_or(WireError::Malformed("record header runs past the end"))? as usize;
    let rdata_at = name_end + 10;
    let end = rdata_at + rdlen;
    if end > b.len() {
        return Err(WireError::Malformed("record data runs past the end"));
    }
    Ok(RecordPos {
        name_len: name_end - at,
        rtype,
        ttl_at: name_end + 4,
        rdata_at,
        end,
    })
}

fn parse_opt(b: &[u8], at: usize, rec: &RecordPos) -> Result<Edns, WireError> {
    let udp_size = u16_at(b, at + 3).ok_or(WireError::Malformed("OPT"))?;
    let ttl = u32_at(b, rec.ttl_at).ok_or(WireError::Malformed("OPT"))?;
    let mut e = Edns {
        start: at,
        end: rec.end,
        udp_size,
        ext_rcode: (ttl >> 24) as u8,
        version: (ttl >> 16) as u8,
        do_bit: ttl & 0x8000 != 0,
        has_ecs: false,
        keepalive: None,
    };
    let mut p = rec.rdata_at;
    while p < rec.end {
        let code = u16_at(b, p).ok_or(WireError::Malformed("EDNS option"))?;
        let len = u16_at(b, p + 2).ok_or(WireError::Malformed("EDNS option"))? as usize;
        if p + 4 + len > rec.end {
            return Err(WireError::Malformed("EDNS option runs past the record"));
        }
        match code {
            opt::ECS => e.has_ecs = true,
            opt::TCP_KEEPALIVE if len == 2 => e.keepalive = u16_at(b, p + 4),
            _ => {}
        }
        p += 4 + len;
    }
    Ok(e)
}

/// Whether `resp` is a whole answer to `query`: a response, one question equal to the
/// query's (letter case aside), and every record of every section within the message and
/// ending exactly at its end. What a group checks before taking an upstream's answer, so a
/// cut or garbled one fails over to the next server. Allocates nothing.
pub fn is_answer_to(resp: &[u8], query: &[u8]) -> bool {
    if resp.len() < HEADER_LEN || !header::is_response(resp) || header::qdcount(resp) != 1 {
        return false;
    }
    let (Ok(q_end), Ok(r_end)) = (skip_name(query, HEADER_LEN), skip_name(resp, HEADER_LEN)) else {
        return false;
    };
    let (Some(asked), Some(got)) = (
        query.get(HEADER_LEN..q_end + 4),
        resp.get(HEADER_LEN..r_end + 4),
    ) else {
        return false;
    };
    if !names_equal_ci(asked, got) {
        return false;
    }
    let records = usize::from(header::ancount(resp))
        + usize::from(header::nscount(resp))
        + usize::from(header::arcount(resp));
    let mut at = r_end + 4;
    for _ in 0..records {
        match skip_record(resp, at) {
            Ok(r) => at = r.end,
            Err(_) => return false,
        }
    }
    at == resp.len()
}

/// The edns-tcp-keepalive timeout (RFC 7828, in 100 ms units) of a response, if its OPT
/// record carries one. Skips the sections without collecting anything: cheap enough to run
/// on every answer of a connection.
pub fn response_keepalive(b: &[u8]) -> Option<u16> {
    if header::arcount(b) == 0 {
        return None; // no OPT record: nothing to walk to
    }
    let (_, _, mut at) = parse_question(b).ok()?;
    let records = usize::from(header::ancount(b))
        + usize::from(header::nscount(b))
        + usize::from(header::arcount(b));
    let first_additional = usize::from(header::ancount(b)) + usize::from(header::nscount(b));
    for n in 0..records {
        let rec = skip_record(b, at).ok()?;
        if n >= first_additional && rec.rtype == rtype::OPT {
            return parse_opt(b, at, &rec).ok()?.keepalive;
        }
        at = rec.end;
    }
    None
}

/// Iterates the EDNS options of an OPT record: (code, value).
pub fn edns_options<'a>(b: &'a [u8], e: &Edns) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
    let e = *e;
    let rdata_at = e.start + 11;
    let mut p = rdata_at;
    std::iter::from_fn(move || {
        let code = u16_at(b, p)?;
        let len = u16_at(b, p + 2)? as usize;
        let v = b.get(p + 4..p + 4 + len)?;
        if p + 4 + len > e.end {
            return None;
        }
        p += 4 + len;
        Some((code, v))
    })
}

/// What a response says, found by one walk over it.
#[derive(Debug, Clone, Default)]
pub struct ResponseInfo {
    pub rcode: u8,
    pub truncated: bool,
    pub question_end: usize,
    /// Offsets of every TTL field outside the OPT record, with its value.
    pub ttls: Vec<(u32, u32)>,
    /// Number of records in the answer section (not counting OPT).
    pub answers: u16,
    /// Smallest TTL in the answer section.
    pub min_answer_ttl: Option<u32>,
    /// For negative answers: min(SOA TTL, SOA MINIMUM) of the authority SOA (RFC 2308).
    pub negative_ttl: Option<u32>,
    pub edns: Option<Edns>,
    /// The first run of two or more A (or AAAA) records of one owner in the answer
    /// section, laid out alike, whose addresses a cache may hand out in turn.
    pub rotation: Option<Rotation>,
}

/// Walks a response, checking every record fits, and collects TTL positions.
pub fn parse_response(b: &[u8]) -> Result<ResponseInfo, WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::TooShort);
    }
    if header::qdcount(b) != 1 {
        return Err(WireError::Malformed(
            "response without exactly one question",
        ));
    }
    let (_, _, question_end) = parse_question(b)?;
    let mut info = ResponseInfo {
        rcode: header::rcode(b),
        truncated: header::is_truncated(b),
        question_end,
        answers: header::ancount(b),
        ..Default::default()
    };
    let (an, ns, ar) = (header::ancount(b), header::nscount(b), header::arcount(b));
    let mut at = question_end;
    let mut addrs: Vec<AddrRecord> = Vec::new();
    for i in 0..(an as usize + ns as usize + ar as usize) {
        let rec = skip_record(b, at)?;
        let opt = rec.rtype == rtype::OPT;
        let ttl = u32_at(b, rec.ttl_at).unwrap_or(0) & 0x7FFF_FFFF;
        if !opt {
            info.ttls.push((rec.ttl_at as u32, ttl));
        }
        let rdlen = rec.end - rec.rdata_at;
        if i < an as usize
            && u16_at(b, rec.ttl_at - 2) == Some(CLASS_IN)
            && ((rec.rtype == rtype::A && rdlen == 4) || (rec.rtype == rtype::AAAA && rdlen == 16))
        {
            addrs.push(AddrRecord {
                start: at,
                ttl_at: rec.ttl_at,
                rdata_at: rec.rdata_at,
                end: rec.end,
            });
        }
        let rw = Rewritten {
            question_end,
            ttls: &info.ttls,
            addrs: &addrs,
        };
        check_name(b, at, &rw)?;
        if opt {
            if i < an as usize + ns as usize || info.edns.is_some() {
                return Err(WireError::Malformed("misplaced or repeated OPT"));
            }
            let e = parse_opt(b, at, &rec)?;
            info.rcode |= e.ext_rcode << 4;
            info.edns = Some(e);
        } else {
            check_rdata_names(b, &rec, &rw)?;
            if i < an as usize {
                info.min_answer_ttl = Some(info.min_answer_ttl.map_or(ttl, |m| m.min(ttl)));
            } else if i < an as usize + ns as usize && rec.rtype == rtype::SOA {
                // check_rdata_names made the SOA's names end 20 bytes before its RDATA
                // does, so its fields lie inside it (a record borrowing bytes from the next
                // one would break once that one is cut: the OPT at cache insert), and
                // MINIMUM is its last four bytes.
                let minimum =
                    u32_at(b, rec.end - 4).ok_or(WireError::Malformed("SOA too short"))?;
                let neg = ttl.min(minimum);
                info.negative_ttl = Some(info.negative_ttl.map_or(neg, |m| m.min(neg)));
            }
        }
        at = rec.end;
    }
    if at != b.len() {
        return Err(WireError::Malformed("trailing bytes after the last record"));
    }
    info.rotation = first_rotation(b, &addrs);
    Ok(info)
}

/// Compares two wire-format names case-insensitively (both uncompressed).
pub fn names_equal_ci(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// Converts a wire-format (uncompressed) name to dotted text, for logs and rules.
pub fn name_to_string(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut p = 0;
    while let Some(&len) = wire.get(p) {
        if len == 0 {
            break;
        }
        let label = wire.get(p + 1..p + 1 + len as usize).unwrap_or(&[]);
        for &c in label {
            if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                out.push(c as char);
            } else {
                out.push_str(&format!("\\{c:03}"));
            }
        }
        out.push('.');
        p += 1 + len as usize;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests;
