//! A large set of blocked names: 64-bit keyed hashes (SipHash with a per-process random
//! key, so nobody can aim for a collision) of lower-cased wire-format names. A query name is
//! blocked when it or any of its parent names is in the set.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::config::BlockAction;
use crate::route::zone_to_wire;

/// The hashes are already uniformly spread: the map uses them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
pub struct BlockSet {
    key: std::collections::hash_map::RandomState,
    names: HashMap<u64, BlockAction, BuildHasherDefault<Identity>>,
}

impl BlockSet {
    fn hash(&self, wire_name: &[u8]) -> u64 {
        self.key.hash_one(wire_name)
    }

    pub fn insert(&mut self, wire_name: &[u8], action: BlockAction) {
        let h = self.hash(wire_name);
        self.names.insert(h, action);
    }

    /// Loads a hosts-format or plain list; returns how many lines were skipped.
    pub fn load_list(&mut self, text: &str, action: BlockAction) -> usize {
        let mut skipped = 0;
        self.names.reserve(text.len() / 24);
        let mut buf = String::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            // hosts format: an address then one or more names.
            let names: Vec<&str> = if first.parse::<std::net::IpAddr>().is_ok() { fields.collect() } else { vec![first] };
            for n in names {
                buf.clear();
                buf.push_str(n);
                match crate::config::normalize_zone(&buf) {
                    Ok(z) if z != "." && z != "localhost" && z != "localhost.localdomain" && z != "local" && z != "broadcasthost" => {
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
        if self.names.is_empty() {
            return None;
        }
        let mut at = 0usize;
        while let Some(&len) = name.get(at) {
            if len == 0 {
                break;
            }
            if let Some(a) = name.get(at..).and_then(|s| self.names.get(&self.hash(s))) {
                return Some(*a);
            }
            at += 1 + len as usize;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    /// Approximate bytes held.
    pub fn memory(&self) -> usize {
        self.names.capacity() * (std::mem::size_of::<u64>() + std::mem::size_of::<BlockAction>() + 1)
    }
}
