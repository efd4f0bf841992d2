//! Cache keys: lower-cased question name, type, class, and the DO, CD, RD and AD bits,
//! built in a stack buffer so a lookup allocates nothing.

use crate::dns::wire::{header, QueryInfo, HEADER_LEN};

/// Enough for a 255-byte name, type, class, flags and the route tag.
pub type KeyBuf = [u8; 264];

/// Bytes after the name in a key: type (2), class (2), flags (1), route tag (1).
pub const KEY_SUFFIX: usize = 6;

#[derive(Clone)]
pub struct CacheKey {
    buf: KeyBuf,
    len: usize,
}

impl CacheKey {
    /// `route_tag` is 0 for zone routing, or 1 + the index of a client-chosen group, so
    /// clients sent to another upstream group never share its answers.
    pub fn new(query: &[u8], qi: &QueryInfo, route_tag: u8) -> CacheKey {
        let mut buf = [0u8; 264];
        let name = query.get(HEADER_LEN..qi.qname_end).unwrap_or(&[]);
        let n = name.len().min(255);
        for (d, s) in buf[..n].iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        buf[n..n + 2].copy_from_slice(&qi.qtype.to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&qi.qclass.to_be_bytes());
        // The query bits that change what an upstream answers: DO and CD (DNSSEC), RD (a
        // non-recursive query gets a cache-only answer or a referral, never to be served to
        // recursive ones) and AD (whether the answer may carry AD, RFC 6840 5.7).
        let f = qi.flags;
        buf[n + 4] = u8::from(qi.do_bit())
            | (u8::from(qi.cd()) << 1)
            | (u8::from(f & header::RD == 0) << 2)
            | (u8::from(f & header::AD != 0) << 3);
        buf[n + 5] = route_tag;
        CacheKey {
            buf,
            len: n + KEY_SUFFIX,
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    pub fn route_tag(&self) -> u8 {
        self.buf[self.len.saturating_sub(1)]
    }
    /// The lower-cased wire-format name inside the key.
    pub fn name(&self) -> &[u8] {
        &self.buf[..self.len.saturating_sub(KEY_SUFFIX)]
    }
}
