//! A large set of blocked names: sorted 64-bit keyed hashes (SipHash with a per-process
//! random key, so nobody can aim for a collision) of lower-cased wire-format names, one
//! sorted array per action: 8 bytes a name, looked up by binary search. A query name is
//! blocked when it or any of its parent names is in a set.

use std::hash::BuildHasher;

use crate::config::BlockAction;
use crate::route::zone_to_wire;

const ACTIONS: [BlockAction; 3] = [
    BlockAction::Nxdomain,
    BlockAction::Refused,
    BlockAction::NullAddress,
];

#[derive(Default)]
pub struct BlockSet {
    key: std::collections::hash_map::RandomState,
    /// Per action (in ACTIONS order): sorted, deduplicated hashes.
    sets: [Vec<u64>; 3],
    sorted: bool,
}

fn slot(a: BlockAction) -> usize {
    ACTIONS.iter().position(|x| *x == a).unwrap_or(0)
}

impl BlockSet {
    fn hash(&self, wire_name: &[u8]) -> u64 {
        self.key.hash_one(wire_name)
    }

    pub fn insert(&mut self, wire_name: &[u8], action: BlockAction) {
        let h = self.hash(wire_name);
        self.sets[slot(action)].push(h);
        self.sorted = false;
    }

    /// Sorts and deduplicates after inserts; `Policy::new` calls it once.
    pub fn finish(&mut self) {
        for s in &mut self.sets {
            s.sort_unstable();
            s.dedup();
            s.shrink_to_fit();
        }
        self.sorted = true;
    }

    /// Loads a hosts-format or plain list; returns how many lines were skipped.
    pub fn load_list(&mut self, text: &str, action: BlockAction) -> usize {
        let mut skipped = 0;
        self.sets[slot(action)].reserve(text.len() / 24);
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            // hosts format: an address, then one or more names.
            let is_hosts = first.parse::<std::net::IpAddr>().is_ok();
            let names = std::iter::once(first)
                .filter(|_| !is_hosts)
                .chain(fields.filter(|_| is_hosts));
            for n in names {
                match crate::config::normalize_zone(n) {
                    Ok(z)
                        if !matches!(
                            z.as_str(),
                            "." | "localhost" | "localhost.localdomain" | "local" | "broadcasthost"
                        ) =>
                    {
                        self.insert(&zone_to_wire(&z), action)
                    }
                    Ok(_) => {}
                    Err(_) => skipped += 1,
                }
            }
        }
        skipped
    }

    /// The action for a lower-cased wire name when it or a parent is listed.
    pub fn matches(&self, name: &[u8]) -> Option<BlockAction> {
        if self.is_empty() {
            return None;
        }
        let mut at = 0usize;
        while let Some(&len) = name.get(at) {
            if len == 0 {
                break;
            }
            if let Some(suffix) = name.get(at..) {
                let h = self.hash(suffix);
                for (i, s) in self.sets.iter().enumerate() {
                    let found = if self.sorted {
                        s.binary_search(&h).is_ok()
                    } else {
                        s.contains(&h)
                    };
                    if found {
                        return Some(ACTIONS[i]);
                    }
                }
            }
            at += 1 + len as usize;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.sets.iter().map(Vec::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(Vec::is_empty)
    }
    /// Bytes held by the hashes.
    pub fn memory(&self) -> usize {
        self.sets.iter().map(|s| s.capacity() * 8).sum()
    }
}
