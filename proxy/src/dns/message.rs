//! Building messages from raw bytes: error answers, the query sent upstream, and the answer
//! rendered for one client from a shared (possibly cached) upstream answer.

use super::wire::{self, header, Edns, QueryInfo, Rotation, WireError, HEADER_LEN};
use super::{opt, rcode, rtype, EDNS_UDP_SIZE};

/// Appends an OPT record with no options.
fn push_opt(out: &mut Vec<u8>, ext_rcode: u8, do_bit: bool) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out.push(ext_rcode);
    out.push(0);
    out.push(if do_bit { 0x80 } else { 0 });
    out.push(0);
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// An answer of our own (FORMERR, SERVFAIL, REFUSED, NOTIMP...) to a query.
/// `question_end` is where the query's question ends, when it parsed.
pub fn error_answer(
    query: &[u8],
    question_end: Option<usize>,
    rc: u8,
    edns: Option<&Edns>,
    out: &mut Vec<u8>,
) {
    out.clear();
    let qflags = header::flags(query);
    let opcode = qflags & 0x7800;
    let flags =
        header::QR | opcode | (qflags & (header::RD | header::CD)) | header::RA | (rc as u16 & 0xF);
    out.extend_from_slice(&header::id(query).to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    let qd = u16::from(question_end.is_some());
    out.extend_from_slice(&[0; 8]);
    if let Some(end) = question_end {
        out.extend_from_slice(query.get(HEADER_LEN..end).unwrap_or(&[]));
    }
    let with_opt = edns.is_some() || rc > 15;
    if with_opt {
        push_opt(out, rc >> 4, edns.is_some_and(|e| e.do_bit));
    }
    header::set_counts(out, qd, 0, 0, u16::from(with_opt));
}

/// Extended RCODE BADVERS (16): the client spoke an EDNS version we do not.
pub const BADVERS: u8 = 16;

/// Most bytes of client EDNS options forwarded upstream; beyond that none are.
pub const MAX_FORWARDED_OPTIONS: usize = 512;

/// Options for queries sent upstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpstreamQueryOptions {
    pub strip_ecs: bool,
    /// Pad to a multiple of this (0 = no padding).
    pub padding_block: u16,
    /// Ask for edns-tcp-keepalive (RFC 7828): sent on TCP/TLS connections.
    pub keepalive: bool,
}

/// Builds the query sent upstream: the client's header flags (RD, CD, AD), its question as
/// asked, ID 0 (the connection sets its own), and a fresh OPT record of ours carrying the
/// client's DO bit, the client's options minus ECS (if stripped), cookies, keepalive and
/// padding, then our keepalive request and padding.
pub fn upstream_query(query: &[u8], qi: &QueryInfo, o: &UpstreamQueryOptions, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0, 0]);
    let flags = header::flags(query) & (header::RD | header::CD | header::AD);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(query.get(HEADER_LEN..qi.question_end).unwrap_or(&[]));
    let opt_at = out.len();
    push_opt(out, 0, qi.do_bit());
    if let Some(e) = &qi.edns {
        // A client's own options travel only while they stay small: a query must never
        // outgrow a DNS message (65,535 bytes), whose length prefixes the DoT frame.
        let forwarded: usize = wire::edns_options(query, e).map(|(_, v)| v.len() + 4).sum();
        for (code, value) in
            wire::edns_options(query, e).filter(|_| forwarded <= MAX_FORWARDED_OPTIONS)
        {
            let drop = matches!(code, opt::COOKIE | opt::TCP_KEEPALIVE | opt::PADDING)
                || (code == opt::ECS && o.strip_ecs);
            if !drop {
                push_option(out, code, value);
            }
        }
    }
    if o.keepalive {
        push_option(out, opt::TCP_KEEPALIVE, &[]);
    }
    if o.padding_block > 0 {
        let block = o.padding_block as usize;
        let len_with_option = out.len() + 4;
        let pad = (block - len_with_option % block) % block;
        out.extend_from_slice(&opt::PADDING.to_be_bytes());
        out.extend_from_slice(&(pad as u16).to_be_bytes());
        out.resize(out.len() + pad, 0);
    }
    let rdlen = (out.len() - opt_at - 11) as u16;
    out[opt_at + 9..opt_at + 11].copy_from_slice(&rdlen.to_be_bytes());
}

fn push_option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// How an answer may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// NOERROR with records in the answer section.
    Positive,
    /// NXDOMAIN, or NOERROR with no answer (NODATA): RFC 2308.
    Negative,
    /// SERVFAIL: kept only briefly (RFC 9520).
    ServFail,
    /// Truncated, REFUSED, or anything else: never cached.
    Uncacheable,
}

/// What is applied to an answer as it is stored: the TTL clamps of its zone, and whether
/// its addresses are handed out in turn.
#[derive(Clone, Copy, Debug)]
pub struct TtlPolicy {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub negative_max_ttl: u32,
    pub servfail_ttl: u32,
    /// Hand out the addresses of a cached A or AAAA answer in turn (round robin).
    pub rotate: bool,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy {
            min_ttl: 0,
            max_ttl: 86_400,
            negative_max_ttl: 3_600,
            servfail_ttl: 5,
            rotate: true,
        }
    }
}

/// What rendering needs besides the bytes; small and `Copy`, so the cache keeps it beside
/// its own copy of the bytes, in one allocation per entry.
#[derive(Clone, Copy, Debug)]
pub struct AnswerMeta {
    /// Seconds this answer stays fresh.
    ttl: u32,
    wire_len: u16,
    question_end: u16,
    ext_rcode: u8,
    rcode: u8,
    kind: AnswerKind,
    /// The addresses handed out in turn, if any.
    rotation: Option<Rotation>,
}

impl AnswerMeta {
    pub fn kind(&self) -> AnswerKind {
        self.kind
    }
}

/// Bytes of one TTL table entry: the TTL field's offset (u16) and its value (u32).
const TTL_ENTRY: usize = 6;

/// An upstream answer, normalized so that any client asking the same question can be served
/// from it: ID 0, OPT removed, TTLs clamped. Rendering patches ID, flags, question and TTLs.
/// `bytes` holds the message, then the table of its TTL fields.
#[derive(Debug, Clone)]
pub struct Answer {
    meta: AnswerMeta,
    bytes: Box<[u8]>,
}

impl Answer {
    /// Normalizes an upstream response to the query `qi` (from `query`). Fails when the
    /// response is malformed or is not an answer to that question.
    pub fn from_upstream(
        resp: &[u8],
        query: &[u8],
        qi: &QueryInfo,
        policy: &TtlPolicy,
    ) -> Result<Answer, WireError> {
        let info = wire::parse_response(resp)?;
        let q_asked = query.get(HEADER_LEN..qi.question_end).unwrap_or(&[]);
        let q_got = resp.get(HEADER_LEN..info.question_end).unwrap_or(&[]);
        if !header::is_response(resp) || !wire::names_equal_ci(q_asked, q_got) {
            return Err(WireError::Malformed("answer does not match the question"));
        }
        let kind = match info.rcode {
            _ if info.truncated => AnswerKind::Uncacheable,
            rcode::NOERROR if info.answers > 0 => AnswerKind::Positive,
            rcode::NOERROR | rcode::NXDOMAIN => AnswerKind::Negative,
            rcode::SERVFAIL => AnswerKind::ServFail,
            _ => AnswerKind::Uncacheable,
        };
        let ttl = match kind {
            AnswerKind::Positive => info
                .min_answer_ttl
                .unwrap_or(0)
                .clamp(policy.min_ttl, policy.max_ttl.max(policy.min_ttl)),
            // RFC 2308 section 5: no SOA, no negative caching.
            AnswerKind::Negative => info
                .negative_ttl
                .map_or(0, |t| t.min(policy.negative_max_ttl)),
            AnswerKind::ServFail => policy.servfail_ttl,
            AnswerKind::Uncacheable => 0,
        };
        // Copy without the OPT record (always last when present, as parse_response checked).
        let body_end = info.edns.map_or(resp.len(), |e| e.start);
        if info.edns.is_some_and(|e| e.end != resp.len()) {
            return Err(WireError::Malformed("OPT is not the last record"));
        }
        let (Ok(wire_len), Ok(question_end)) =
            (u16::try_from(body_end), u16::try_from(info.question_end))
        else {
            return Err(WireError::Malformed("message too long"));
        };
        let mut w = Vec::with_capacity(body_end + info.ttls.len() * TTL_ENTRY);
        w.extend_from_slice(&resp[..body_end]);
        header::set_id(&mut w, 0);
        // A node cache is no authority for what it forwards (RFC 1035 4.1.1; caching
        // resolvers answer AA=0): the upstream's AA bit is not passed on.
        let flags = header::flags(&w) & !header::AA;
        header::set_flags(&mut w, flags);
        if info.edns.is_some() {
            let ar = header::arcount(&w).saturating_sub(1);
            let (qd, an, ns) = (
                header::qdcount(&w),
                header::ancount(&w),
                header::nscount(&w),
            );
            header::set_counts(&mut w, qd, an, ns, ar);
        }
        for &(at, t) in &info.ttls {
            let Ok(at16) = u16::try_from(at) else {
                return Err(WireError::Malformed("message too long"));
            };
            let clamped = match kind {
                AnswerKind::Positive => t.clamp(policy.min_ttl, policy.max_ttl.max(policy.min_ttl)),
                AnswerKind::Negative => t.min(ttl.max(1)),
                _ => t,
            };
            w.extend_from_slice(&at16.to_be_bytes());
            w.extend_from_slice(&clamped.to_be_bytes());
        }
        Ok(Answer {
            meta: AnswerMeta {
                ttl,
                wire_len,
                question_end,
                ext_rcode: info.rcode >> 4,
                rcode: info.rcode,
                kind,
                rotation: info
                    .rotation
                    .filter(|_| policy.rotate && kind == AnswerKind::Positive),
            },
            bytes: w.into_boxed_slice(),
        })
    }

    pub fn kind(&self) -> AnswerKind {
        self.meta.kind
    }
    pub fn ttl(&self) -> u32 {
        self.meta.ttl
    }
    /// The full RCODE (extended bits included).
    pub fn rcode(&self) -> u8 {
        self.meta.rcode
    }
    pub fn meta(&self) -> &AnswerMeta {
        &self.meta
    }
    /// The stored response and its TTL table, as the cache copies them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The answer as stored: what rendering reads.
    pub fn stored(&self) -> StoredAnswer<'_> {
        StoredAnswer::new(&self.meta, &self.bytes)
    }
    /// The stored response (ID 0, no OPT).
    pub fn wire(&self) -> &[u8] {
        self.stored().wire()
    }
}

/// A stored answer, borrowed: an [`Answer`]'s, or the cache's copy of its `meta` and
/// `bytes` (the message, then its TTL table).
#[derive(Clone, Copy)]
pub struct StoredAnswer<'a> {
    meta: &'a AnswerMeta,
    bytes: &'a [u8],
    /// How many places the addresses turn in this rendering (see [`Rotation`]).
    turn: u32,
}

impl<'a> StoredAnswer<'a> {
    pub fn new(meta: &'a AnswerMeta, bytes: &'a [u8]) -> Self {
        StoredAnswer {
            meta,
            bytes,
            turn: 0,
        }
    }

    /// The same answer, its addresses turned `turn` places when rendered (the cache passes
    /// each entry's hit count, so clients get the addresses in turn).
    pub fn turned(self, turn: u32) -> Self {
        StoredAnswer { turn, ..self }
    }

    /// The full RCODE (extended bits included).
    pub fn rcode(&self) -> u8 {
        self.meta.rcode
    }

    /// The stored response (ID 0, no OPT).
    pub fn wire(&self) -> &'a [u8] {
        self.bytes
            .get(..usize::from(self.meta.wire_len))
            .unwrap_or(&[])
    }

    /// Renders the answer for one client: its ID, its question bytes (letter case as
    /// asked), RD/CD as it sent them, its addresses turned (round robin), TTLs aged by
    /// `age` seconds (or all set to `ttl_override`), an OPT record if it used EDNS,
    /// truncated with TC=1 if longer than `max_len`.
    pub fn render(
        &self,
        query: &[u8],
        qi: &QueryInfo,
        age: u32,
        ttl_override: Option<u32>,
        max_len: usize,
        out: &mut Vec<u8>,
    ) {
        let meta = self.meta;
        let wire = self.wire();
        let table = self.bytes.get(wire.len()..).unwrap_or(&[]);
        out.clear();
        out.extend_from_slice(wire);
        if let Some(r) = meta.rotation {
            r.apply(wire, self.turn, out);
        }
        header::set_id(out, qi.id);
        let flags = (header::flags(wire) & !(header::RD | header::CD))
            | (qi.flags & (header::RD | header::CD));
        header::set_flags(out, flags);
        let qe = meta.question_end as usize;
        if qe == qi.question_end {
            if let (Some(dst), Some(src)) = (out.get_mut(HEADER_LEN..qe), query.get(HEADER_LEN..qe))
            {
                dst.copy_from_slice(src);
            }
        }
        for e in table.chunks_exact(TTL_ENTRY) {
            let at = usize::from(u16::from_be_bytes([e[0], e[1]]));
            let t = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
            let v = ttl_override.unwrap_or_else(|| t.saturating_sub(age));
            if let Some(s) = out.get_mut(at..at + 4) {
                s.copy_from_slice(&v.to_be_bytes());
            }
        }
        let edns = qi.edns.is_some();
        if edns {
            push_opt(out, meta.ext_rcode, qi.do_bit());
            let (qd, an, ns, ar) = (
                header::qdcount(out),
                header::ancount(out),
                header::nscount(out),
                header::arcount(out),
            );
            header::set_counts(out, qd, an, ns, ar + 1);
        }
        if out.len() > max_len {
            out.truncate(qe);
            header::set_flags(out, flags | header::TC);
            header::set_counts(out, 1, 0, 0, u16::from(edns));
            if edns {
                push_opt(out, meta.ext_rcode, qi.do_bit());
            }
        }
    }
}

/// A SERVFAIL rendered straight from a query (upstream failure, timeout).
pub fn servfail(query: &[u8], qi: &QueryInfo, out: &mut Vec<u8>) {
    error_answer(
        query,
        Some(qi.question_end),
        rcode::SERVFAIL,
        qi.edns.as_ref(),
        out,
    );
}

#[cfg(test)]
mod tests;
