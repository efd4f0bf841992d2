//! The answer cache: normalized upstream answers in wire form, keyed by lower-cased name,
//! type, class and the DO and CD bits, so DNSSEC-aware clients never get answers stripped
//! for others.
//!
//! Bounded by entries and bytes (quick_cache's CLOCK-Pro eviction keeps popular names):
//! every entry weighs at least `max_bytes / max_entries`, so the byte bound also caps the
//! count. Expired entries stay for serve-stale (RFC 8767) until `stale_max_age` has passed.
//! Hot names are refreshed shortly before they expire (prefetch); the hot set is bounded.

mod hot;
mod key;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::dns::message::{Answer, AnswerKind, TtlPolicy};

pub use hot::HotName;
pub use key::{CacheKey, KeyBuf};

/// One cached answer.
#[derive(Debug)]
pub struct Entry {
    pub answer: Arc<Answer>,
    pub stored: Instant,
    pub expires: Instant,
    hits: AtomicU32,
    refreshing: AtomicBool,
}

impl Entry {
    /// Whole seconds since the answer was stored (TTLs count down by this much).
    pub fn age_secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.stored)
            .as_secs()
            .min(u32::MAX as u64) as u32
    }
    /// Marks the entry as being refreshed; false if a refresh is already under way.
    pub fn start_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }
    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

#[derive(Clone)]
struct EntryWeigher {
    min_weight: u64,
}

impl Weighter<Box<[u8]>, Arc<Entry>> for EntryWeigher {
    fn weight(&self, key: &Box<[u8]>, val: &Arc<Entry>) -> u64 {
        // Payloads plus what the allocator and the map spend on them: five allocations
        // (key, entry, answer, its wire bytes, its TTL table) and the map's slot.
        const OVERHEAD: usize = 5 * 16 + 64;
        let bytes =
            (key.len() + val.answer.size() + std::mem::size_of::<Entry>() + OVERHEAD) as u64;
        bytes.max(self.min_weight)
    }
}

#[derive(Clone)]
struct EvictionCounter(Counter);

impl Lifecycle<Box<[u8]>, Arc<Entry>> for EvictionCounter {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: Box<[u8]>, _: Arc<Entry>) {
        self.0.inc();
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer; `prefetch` is true when this hit should trigger a background refresh.
    Fresh {
        entry: Arc<Entry>,
        prefetch: bool,
    },
    /// Expired but within the serve-stale window.
    Stale(Arc<Entry>),
    Miss,
}

type Map = QuickCache<Box<[u8]>, Arc<Entry>, EntryWeigher, DefaultHashBuilder, EvictionCounter>;

pub struct Cache {
    map: Arc<Map>,
    cfg: CacheConfig,
    ttl_policy: TtlPolicy,
    hot: hot::HotSet,
}

impl Cache {
    pub fn new(cfg: &CacheConfig, evictions: Counter) -> Cache {
        let entries = cfg.max_entries.max(1);
        let min_weight = (cfg.max_bytes / entries as u64).max(1);
        let map = QuickCache::with(
            entries,
            cfg.max_bytes.max(min_weight),
            EntryWeigher { min_weight },
            DefaultHashBuilder::default(),
            EvictionCounter(evictions),
        );
        Cache {
            map: Arc::new(map),
            cfg: cfg.clone(),
            ttl_policy: ttl_policy(cfg),
            hot: hot::HotSet::new(cfg.prefetch.top_n),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }
    pub fn ttl_policy(&self) -> &TtlPolicy {
        &self.ttl_policy
    }

    /// True when a new cache config can keep this cache's contents.
    pub fn compatible(&self, new: &CacheConfig) -> bool {
        let (a, b) = (&self.cfg, new);
        a.enabled == b.enabled && a.max_entries == b.max_entries && a.max_bytes == b.max_bytes
    }

    /// The same stored answers under new TTL, stale and prefetch settings (reload).
    pub fn with_config(&self, cfg: &CacheConfig) -> Cache {
        Cache {
            map: self.map.clone(),
            cfg: cfg.clone(),
            ttl_policy: ttl_policy(cfg),
            hot: hot::HotSet::new(cfg.prefetch.top_n),
        }
    }

    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        let Some(entry) = self.map.get(key) else {
            return Lookup::Miss;
        };
        if now < entry.expires {
            let hits = entry.hits.fetch_add(1, Ordering::Relaxed) + 1;
            let p = &self.cfg.prefetch;
            let mut prefetch = false;
            if p.enabled && hits >= p.min_hits {
                let ttl = entry.expires.duration_since(entry.stored);
                let left = entry.expires.duration_since(now);
                if left
                    <= ttl
                        .mul_f64(p.remaining_fraction)
                        .max(Duration::from_secs(1))
                {
                    prefetch = self.hot.admit(key, hits, now) && entry.start_refresh();
                }
            }
            return Lookup::Fresh { entry, prefetch };
        }
        if self.stale_ok(&entry, now) {
            Lookup::Stale(entry)
        } else {
            self.map.remove(key);
            Lookup::Miss
        }
    }

    /// An expired entry still inside the serve-stale window.
    pub fn stale(&self, key: &[u8], now: Instant) -> Option<Arc<Entry>> {
        self.map.peek(key).filter(|e| self.stale_ok(e, now))
    }

    fn stale_ok(&self, e: &Entry, now: Instant) -> bool {
        let max = self.cfg.stale_max_age.get();
        !max.is_zero() && e.answer.kind() != AnswerKind::ServFail && now <= e.expires + max
    }

    /// Stores an answer if it may be cached; returns the entry stored.
    pub fn insert(&self, key: &[u8], answer: Arc<Answer>, now: Instant) -> bool {
        let ttl = answer.ttl();
        if ttl == 0 || answer.kind() == AnswerKind::Uncacheable {
            return false;
        }
        let entry = Entry {
            answer,
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
            hits: AtomicU32::new(0),
            refreshing: AtomicBool::new(false),
        };
        self.map.insert(key.into(), Arc::new(entry));
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn weight(&self) -> u64 {
        self.map.weight()
    }
    pub fn clear(&self) {
        self.map.clear();
    }
    /// The names currently kept hot by prefetch, most asked first.
    pub fn hot_names(&self) -> Vec<HotName> {
        self.hot.snapshot()
    }
}

pub fn ttl_policy(cfg: &CacheConfig) -> TtlPolicy {
    TtlPolicy {
        min_ttl: cfg.min_ttl,
        max_ttl: cfg.max_ttl,
        negative_max_ttl: cfg.negative_max_ttl,
        servfail_ttl: cfg.servfail_ttl,
    }
}
