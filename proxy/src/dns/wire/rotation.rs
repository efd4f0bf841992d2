//! Address rotation: where the addresses of an answer's A or AAAA RRset lie, so a cache
//! can hand them out in turn (round robin) by moving only those bytes.

/// Where the addresses of one RRset lie in a message: `n` records, `stride` bytes apart,
/// each address `len` bytes long, the first at `at`. Names never point into them
/// ([`parse_response`] refuses a message whose names do), so their order may change per
/// client without changing any name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    pub at: u16,
    pub stride: u16,
    pub n: u16,
    pub len: u8,
}

impl Rotation {
    /// Writes the addresses of `src` into `out` (a copy of it) turned `turn` places: the
    /// address first in `src` is the `turn % n`-th in `out`, the others following in
    /// their order (round robin).
    pub fn apply(&self, src: &[u8], turn: u32, out: &mut [u8]) {
        let n = usize::from(self.n);
        if n < 2 {
            return;
        }
        let r = turn as usize % n;
        if r == 0 {
            return;
        }
        let (at, stride, len) = (
            usize::from(self.at),
            usize::from(self.stride),
            usize::from(self.len),
        );
        for k in 0..n {
            let from = at + ((k + r) % n) * stride;
            let to = at + k * stride;
            if let (Some(s), Some(d)) = (src.get(from..from + len), out.get_mut(to..to + len)) {
                d.copy_from_slice(s);
            }
        }
    }
}

pub(super) const CLASS_IN: u16 = 1;

/// An address record of the answer section: where it starts, where its address is, and
/// where it ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct AddrRecord {
    pub(super) start: usize,
    pub(super) ttl_at: usize,
    pub(super) rdata_at: usize,
    pub(super) end: usize,
}

/// The first run of at least two address records that follow each other with the same
/// owner bytes, type and class, and the same length.
pub(super) fn first_rotation(b: &[u8], recs: &[AddrRecord]) -> Option<Rotation> {
    let same = |x: &AddrRecord, y: &AddrRecord| {
        x.end == y.start
            && x.end - x.start == y.end - y.start
            && b.get(x.start..x.ttl_at) == b.get(y.start..y.ttl_at)
    };
    let mut i = 0;
    while i < recs.len() {
        let mut j = i + 1;
        while j < recs.len() && same(&recs[j - 1], &recs[j]) {
            j += 1;
        }
        if j - i >= 2 {
            let first = recs[i];
            return Some(Rotation {
                at: u16::try_from(first.rdata_at).ok()?,
                stride: u16::try_from(first.end - first.start).ok()?,
                n: u16::try_from(j - i).ok()?,
                len: u8::try_from(first.end - first.rdata_at).ok()?,
            });
        }
        i = j;
    }
    None
}
