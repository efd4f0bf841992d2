//! The bounded set of names kept hot by prefetch: at most `top_n`, the most asked win.
//! Exposed (debug endpoint, debug logs) so users can see what is kept warm.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::dns::wire::name_to_string;

#[derive(Debug, Clone, PartialEq)]
pub struct HotName {
    pub name: String,
    pub qtype: u16,
    pub hits: u32,
    pub prefetches: u64,
}

struct Info {
    hits: u32,
    prefetches: u64,
    last: Instant,
}

pub struct HotSet {
    top_n: usize,
    names: Mutex<HashMap<Box<[u8]>, Info>>,
}

impl HotSet {
    pub fn new(top_n: usize) -> Self {
        HotSet {
            top_n,
            names: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `key` wants a prefetch with `hits` during its TTL; false when the set is
    /// full of names asked more often.
    pub fn admit(&self, key: &[u8], hits: u32, now: Instant) -> bool {
        if self.top_n == 0 {
            return false;
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = names.get_mut(key) {
            i.hits = hits;
            i.prefetches += 1;
            i.last = now;
            return true;
        }
        if names.len() >= self.top_n {
            // Forget names not refreshed for a long time, then the least asked if it is
            // asked less than this one.
            names.retain(|_, i| now.saturating_duration_since(i.last).as_secs() < 3600);
            if names.len() >= self.top_n {
                let weakest = names
                    .iter()
                    .min_by_key(|(_, i)| i.hits)
                    .map(|(k, i)| (k.clone(), i.hits));
                match weakest {
                    Some((k, h)) if h < hits => {
                        names.remove(&k);
                    }
                    _ => return false,
                }
            }
        }
        tracing::debug!(name = %name_to_string(name_of(key)), hits, "prefetching hot name");
        names.insert(
            key.into(),
            Info {
                hits,
                prefetches: 1,
                last: now,
            },
        );
        true
    }

    pub fn snapshot(&self) -> Vec<HotName> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<HotName> = names
            .iter()
            .map(|(k, i)| {
                let n = k.len().saturating_sub(super::key::KEY_SUFFIX);
                let qtype = u16::from_be_bytes([
                    k.get(n).copied().unwrap_or(0),
                    k.get(n + 1).copied().unwrap_or(0),
                ]);
                HotName {
                    name: name_to_string(name_of(k)),
                    qtype,
                    hits: i.hits,
                    prefetches: i.prefetches,
                }
            })
            .collect();
        v.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.name.cmp(&b.name)));
        v
    }
}

fn name_of(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(super::key::KEY_SUFFIX)]
}
