//! The names of a response, checked as it is stored: each must read the same for every
//! client it is served to, so no name may lie in (or point into) the bytes rewritten per
//! client, and compression pointers only lead backwards.

use super::rotation::AddrRecord;
use super::*;

/// Bytes of a response that the proxy rewrites for each client: the header (ID, flags,
/// counts), the question (copied from the client's), every TTL field, and the addresses of
/// the answer section (their order turns from one client to the next).
pub(super) struct Rewritten<'a> {
    pub(super) question_end: usize,
    /// TTL offsets, ascending.
    pub(super) ttls: &'a [(u32, u32)],
    /// Address records of the answer section, ascending.
    pub(super) addrs: &'a [AddrRecord],
}

impl Rewritten<'_> {
    /// True for byte `pos`. Names may point into the question's name (the client's own
    /// letter case then shows in them, as it should) but not into its type and class.
    fn contains(&self, pos: usize) -> bool {
        pos < HEADER_LEN
            || (self.question_end.saturating_sub(4)..self.question_end).contains(&pos)
            || rewritten_ttl(pos, self.ttls)
            || {
                let i = self.addrs.partition_point(|r| r.end <= pos);
                self.addrs.get(i).is_some_and(|r| r.rdata_at <= pos)
            }
    }
}

fn rewritten_ttl(pos: usize, ttls: &[(u32, u32)]) -> bool {
    let i = ttls.partition_point(|&(at, _)| at as usize + 4 <= pos);
    ttls.get(i).is_some_and(|&(at, _)| at as usize <= pos)
}

/// Follows a (possibly compressed) name of a response, checking that every byte it reads
/// lies outside the bytes rewritten per client: a name that points into the ID or a TTL
/// would read differently for each client it is served to. A pointer leads to a prior
/// occurrence (RFC 1035 4.1.4): the name it leads to must lie wholly before the pointer,
/// so no walk ends in bytes the stored answer drops (the OPT record, always last).
/// Returns the name's end.
pub(super) fn check_name(b: &[u8], start: usize, rw: &Rewritten<'_>) -> Result<usize, WireError> {
    let mut at = start;
    let mut end = None;
    // Bytes from here on may not be read: the position of the last pointer followed.
    let mut limit = b.len();
    let mut total = 0usize;
    let mut jumps = 0;
    loop {
        let len = *b
            .get(at)
            .filter(|_| at < limit)
            .ok_or(WireError::Malformed(
                "name runs past the end or its pointer",
            ))?;
        if rw.contains(at) {
            return Err(WireError::Malformed(
                "name inside bytes rewritten per client",
            ));
        }
        match len & 0xC0 {
            0x00 if len == 0 => return Ok(end.unwrap_or(at + 1)),
            0x00 => {
                let l = len as usize;
                total += 1 + l;
                if total > MAX_NAME_LEN || at + 1 + l > limit {
                    return Err(WireError::Malformed("bad label"));
                }
                if (at + 1..at + 1 + l).any(|p| rw.contains(p)) {
                    return Err(WireError::Malformed(
                        "name inside bytes rewritten per client",
                    ));
                }
                at += 1 + l;
            }
            0xC0 => {
                let ptr = (u16_at(b, at).ok_or(WireError::Malformed("truncated pointer"))? & 0x3FFF)
                    as usize;
                jumps += 1;
                if jumps > MAX_POINTERS || ptr >= at || at + 2 > limit || rw.contains(at + 1) {
                    return Err(WireError::Malformed("forward compression pointer"));
                }
                end.get_or_insert(at + 2);
                limit = at;
                at = ptr;
            }
            _ => return Err(WireError::Malformed("unknown label type")),
        }
    }
}

/// Checks the names inside the RDATA of the record types that may be compressed (RFC 3597
/// section 4: only the types of RFC 1035, plus MX and SRV in practice): each must lie
/// inside its own RDATA and read the same for every client.
pub(super) fn check_rdata_names(
    b: &[u8],
    rec: &RecordPos,
    rw: &Rewritten<'_>,
) -> Result<(), WireError> {
    let single = |at: usize| -> Result<(), WireError> {
        if check_name(b, at, rw)? == rec.end {
            Ok(())
        } else {
            Err(WireError::Malformed("name does not fit its RDATA"))
        }
    };
    match rec.rtype {
        rtype::NS | rtype::CNAME | rtype::PTR | rtype::DNAME => single(rec.rdata_at),
        rtype::MX => single(rec.rdata_at + 2),
        rtype::SRV => single(rec.rdata_at + 6),
        rtype::SOA => {
            let mname_end = check_name(b, rec.rdata_at, rw)?;
            let rname_end = check_name(b, mname_end, rw)?;
            if rname_end + 20 == rec.end {
                Ok(())
            } else {
                Err(WireError::Malformed("SOA fields do not fit its RDATA"))
            }
        }
        _ => Ok(()),
    }
}
