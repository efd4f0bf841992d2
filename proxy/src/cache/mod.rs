//! The answer cache: normalized upstream answers in wire form, keyed by lower-cased name,
//! type, class and the DO and CD bits, so DNSSEC-aware clients never get answers stripped
//! for others.
//!
//! Bounded by entries and bytes (quick_cache's CLOCK-Pro eviction keeps popular names):
//! every entry weighs at least `max_bytes / max_entries`, so the byte bound also caps the
//! count. Expired entries stay for serve-stale (RFC 8767) until `stale_max_age` has passed.
//! Hot names are refreshed shortly before they expire (prefetch); the hot set is bounded.

mod coalesce;
mod hot;
mod key;
mod metrics;

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use tokio::time::Instant;
use triomphe::ThinArc;

use crate::config::CacheConfig;
use crate::dns::message::{Answer, AnswerKind, AnswerMeta, StoredAnswer, TtlPolicy};

pub use coalesce::{Coalescer, Role, Turn};
pub use hot::HotName;
pub use key::{CacheKey, KeyBuf};
pub use metrics::CacheMetrics;

/// Everything about a cached answer but its bytes.
#[derive(Debug)]
struct Head {
    meta: AnswerMeta,
    key_len: u16,
    stored: Instant,
    expires: Instant,
    hits: AtomicU32,
    refreshing: AtomicBool,
}

/// One cached answer: its key, its bytes (message and TTL table) and its bookkeeping in a
/// single allocation, shared by the map's key and value (cloning one is a reference count).
#[derive(Clone, Debug)]
pub struct Entry(ThinArc<Head, u8>);

impl Entry {
    fn new(key: &[u8], answer: &Answer, now: Instant) -> Option<Entry> {
        let key_len = u16::try_from(key.len()).ok()?;
        let head = Head {
            meta: *answer.meta(),
            key_len,
            stored: now,
            expires: now + Duration::from_secs(u64::from(answer.ttl())),
            hits: AtomicU32::new(0),
            refreshing: AtomicBool::new(false),
        };
        let bytes = key.iter().chain(answer.bytes()).copied();
        let len = key.len() + answer.bytes().len();
        Some(Entry(ThinArc::from_header_and_iter(
            head,
            ExactLen {
                inner: bytes,
                left: len,
            },
        )))
    }
    fn head(&self) -> &Head {
        &self.0.header.header
    }
    fn key(&self) -> &[u8] {
        self.0
            .slice
            .get(..usize::from(self.head().key_len))
            .unwrap_or(&[])
    }
    fn answer_bytes(&self) -> &[u8] {
        self.0
            .slice
            .get(usize::from(self.head().key_len)..)
            .unwrap_or(&[])
    }
    /// Bytes this entry holds on the heap: its one allocation (reference count, header,
    /// length, bytes).
    fn heap_bytes(&self) -> usize {
        8 + std::mem::size_of::<Head>() + 8 + self.0.slice.len()
    }
    pub fn kind(&self) -> AnswerKind {
        self.head().meta.kind()
    }
    pub fn stored_at(&self) -> Instant {
        self.head().stored
    }
    pub fn expires(&self) -> Instant {
        self.head().expires
    }
    /// Whole seconds since the answer was stored (TTLs count down by this much).
    pub fn age_secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.stored_at())
            .as_secs()
            .min(u32::MAX as u64) as u32
    }
    /// Marks the entry as being refreshed; false if a refresh is already under way.
    pub fn start_refresh(&self) -> bool {
        !self.head().refreshing.swap(true, Ordering::AcqRel)
    }
    pub fn end_refresh(&self) {
        self.head().refreshing.store(false, Ordering::Release);
    }
    /// The cached answer, for rendering: its addresses (if they rotate) turned by the
    /// number of hits so far, so each client gets the next one first.
    pub fn stored(&self) -> StoredAnswer<'_> {
        StoredAnswer::new(&self.head().meta, self.answer_bytes())
            .turned(self.head().hits.load(Ordering::Relaxed))
    }
}

/// The map's key: the entry itself, hashed and compared by its key bytes, so a lookup by
/// `&[u8]` finds it and the key costs no allocation of its own.
#[derive(Clone, Debug)]
struct EntryKey(Entry);

impl Borrow<[u8]> for EntryKey {
    fn borrow(&self) -> &[u8] {
        self.0.key()
    }
}
impl Hash for EntryKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as the `[u8]` it borrows as.
        self.0.key().hash(state);
    }
}
impl PartialEq for EntryKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}
impl Eq for EntryKey {}

/// An iterator of known length (ThinArc needs `ExactSizeIterator`; `Chain` is not one).
struct ExactLen<I> {
    inner: I,
    left: usize,
}
impl<I: Iterator<Item = u8>> Iterator for ExactLen<I> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let b = self.inner.next()?;
        self.left = self.left.saturating_sub(1);
        Some(b)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<I: Iterator<Item = u8>> ExactSizeIterator for ExactLen<I> {}

#[derive(Clone)]
struct EntryWeigher {
    min_weight: u64,
}

/// What the map spends per entry besides the entry's allocation: its slot (key and value
/// pointers, hash, state) and its share of the index, measured with
/// `examples/cache_memory.rs`; plus the allocator's rounding up to a size class.
const SLOT_OVERHEAD: usize = 128;

impl Weighter<EntryKey, Entry> for EntryWeigher {
    fn weight(&self, _key: &EntryKey, val: &Entry) -> u64 {
        let alloc = val.heap_bytes();
        // mimalloc rounds small sizes up to classes about 12.5% apart.
        let rounded = alloc + alloc / 8;
        ((rounded + SLOT_OVERHEAD) as u64).max(self.min_weight)
    }
}

#[derive(Clone)]
struct EvictionCounter(Counter);

impl Lifecycle<EntryKey, Entry> for EvictionCounter {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: EntryKey, _: Entry) {
        self.0.inc();
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer; `prefetch` is true when this hit should trigger a background refresh.
    Fresh {
        entry: Entry,
        prefetch: bool,
    },
    /// Expired but within the serve-stale window.
    Stale(Entry),
    Miss,
}

/// A typical answer's weight in the cache (a name, one or two records, the entry's own
/// bookkeeping): sizes the map up front.
const TYPICAL_ENTRY_BYTES: u64 = 256;

type Map = QuickCache<EntryKey, Entry, EntryWeigher, DefaultHashBuilder, EvictionCounter>;

pub struct Cache {
    map: Arc<Map>,
    cfg: CacheConfig,
    ttl_policy: TtlPolicy,
    /// `cache.zones`: which TTL clamps a name gets (index 0: the cache-wide ones).
    zone_ttls: (crate::route::Router, Vec<TtlPolicy>),
    hot: Arc<hot::HotSet>,
    metrics: CacheMetrics,
}

impl Cache {
    pub fn new(cfg: &CacheConfig, metrics: &CacheMetrics) -> Cache {
        let entries = cfg.max_entries.max(1);
        let min_weight = (cfg.max_bytes / entries as u64).max(1);
        let map = QuickCache::with(
            entries,
            cfg.max_bytes.max(min_weight),
            EntryWeigher { min_weight },
            DefaultHashBuilder::default(),
            EvictionCounter(metrics.evictions.clone()),
        );
        // Room for as many answers as the byte budget typically holds, now: grown on
        // demand, the map doubles and rehashes every entry while the worker waits
        // (milliseconds at tens of thousands of entries), in the middle of live traffic.
        map.reserve(entries.min((cfg.max_bytes / TYPICAL_ENTRY_BYTES) as usize));
        Cache {
            map: Arc::new(map),
            cfg: cfg.clone(),
            ttl_policy: ttl_policy(cfg),
            zone_ttls: zone_ttls(cfg),
            hot: Arc::new(hot::HotSet::new(cfg.prefetch.top_n)),
            metrics: metrics.clone(),
        }
    }

    /// The cache a new config gets: this one (`previous`, the running pipeline's) when
    /// still valid, with its contents, under the new TTL, stale and prefetch settings; a
    /// new empty one when its size bounds changed, or when `same_sources` is false (what
    /// decides where and how its answers were fetched changed: they came by the old routes).
    pub fn from_config(
        cfg: &CacheConfig,
        previous: Option<&Arc<Cache>>,
        same_sources: bool,
        metrics: &CacheMetrics,
    ) -> Option<Arc<Cache>> {
        if !cfg.enabled {
            return None;
        }
        Some(
            match previous.filter(|c| same_sources && c.compatible(cfg)) {
                Some(c) if c.cfg == *cfg => c.clone(),
                Some(c) => Arc::new(c.with_config(cfg)),
                None => Arc::new(Cache::new(cfg, metrics)),
            },
        )
    }

    /// A coalescer whose followers this cache counts.
    pub fn coalescer<T>(&self) -> Coalescer<T> {
        Coalescer::counted(self.metrics.coalesced.clone())
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }
    pub fn ttl_policy(&self) -> &TtlPolicy {
        &self.ttl_policy
    }

    /// The TTL clamps for a lower-cased wire-format name: its longest `cache.zones` entry,
    /// else the cache-wide ones.
    pub fn ttl_policy_for(&self, name: &[u8]) -> &TtlPolicy {
        let (router, policies) = &self.zone_ttls;
        if policies.len() == 1 {
            return &self.ttl_policy;
        }
        policies.get(router.route(name)).unwrap_or(&self.ttl_policy)
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
            zone_ttls: zone_ttls(cfg),
            // The hot set (and so prefetch's bookkeeping) carries over unless its size changed.
            hot: if cfg.prefetch.top_n == self.cfg.prefetch.top_n {
                self.hot.clone()
            } else {
                Arc::new(hot::HotSet::new(cfg.prefetch.top_n))
            },
            metrics: self.metrics.clone(),
        }
    }

    /// A client's lookup, counted: a hit when fresh, else a miss.
    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        let found = self.find(key, now);
        match found {
            Lookup::Fresh { .. } => self.metrics.hits.inc(),
            Lookup::Stale(_) | Lookup::Miss => self.metrics.misses.inc(),
        };
        found
    }

    /// The lookup of a query search-path completion applies to, where an NXDOMAIN or a
    /// miss is not the end: counted as a hit only when a fresh answer other than NXDOMAIN
    /// ends it here (the walk's first step looks the name up again, and counts that).
    pub fn lookup_before_completion(&self, key: &[u8], now: Instant) -> Lookup {
        let found = self.find(key, now);
        if let Lookup::Fresh { entry, .. } = &found {
            if entry.stored().rcode() != crate::dns::rcode::NXDOMAIN {
                self.metrics.hits.inc();
            }
        }
        found
    }

    fn find(&self, key: &[u8], now: Instant) -> Lookup {
        let Some(entry) = self.map.get(key) else {
            return Lookup::Miss;
        };
        if now < entry.expires() {
            let hits = entry.head().hits.fetch_add(1, Ordering::Relaxed) + 1;
            let p = &self.cfg.prefetch;
            let mut prefetch = false;
            if p.enabled && hits >= p.min_hits {
                let ttl = entry.expires().duration_since(entry.stored_at());
                let left = entry.expires().duration_since(now);
                if left
                    <= ttl
                        .mul_f64(p.remaining_fraction)
                        .max(Duration::from_secs(1))
                {
                    prefetch = self.hot.admit(key, hits, now) && entry.start_refresh();
                }
            }
            if prefetch {
                self.metrics.prefetches.inc();
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

    /// Whether an answer better than a SERVFAIL is cached: one still fresh, or expired
    /// but inside the serve-stale window. A SERVFAIL must not replace it.
    pub fn holds_answer(&self, key: &[u8], now: Instant) -> bool {
        self.map.peek(key).is_some_and(|e| {
            e.kind() != AnswerKind::ServFail && (now < e.expires() || self.stale_ok(&e, now))
        })
    }

    /// An expired entry still inside the serve-stale window, to answer with (counted as a
    /// stale answer); `refresh` is true when the caller is to refresh it (no refresh of it
    /// runs yet; counted as a prefetch).
    pub fn stale(&self, key: &[u8], now: Instant) -> Option<(Entry, bool)> {
        let entry = self.map.peek(key).filter(|e| self.stale_ok(e, now))?;
        self.metrics.stale.inc();
        let refresh = entry.start_refresh();
        if refresh {
            self.metrics.prefetches.inc();
        }
        Some((entry, refresh))
    }

    /// Whether an expired entry may still answer when upstreams fail: within the
    /// serve-stale window, or for a positive answer within `prefer_positive` of its expiry.
    fn stale_ok(&self, e: &Entry, now: Instant) -> bool {
        let mut max = self.cfg.stale_max_age.get();
        if e.kind() == AnswerKind::Positive {
            max = max.max(self.cfg.prefer_positive.get());
        }
        !max.is_zero() && e.kind() != AnswerKind::ServFail && now <= e.expires() + max
    }

    /// `cache.prefer_positive`: true (and counted) when a negative answer for `key` is to be
    /// put aside because a positive answer is cached, fresh or expired less than
    /// `prefer_positive` ago; the caller then answers with that one.
    pub fn keeps_positive(&self, key: &[u8], now: Instant) -> bool {
        let window = self.cfg.prefer_positive.get();
        let keep = !window.is_zero()
            && self
                .map
                .peek(key)
                .is_some_and(|e| e.kind() == AnswerKind::Positive && now <= e.expires() + window);
        if keep {
            self.metrics.positive_kept.inc();
        }
        keep
    }

    /// Stores an answer if it may be cached; true if it was.
    pub fn insert(&self, key: &[u8], answer: &Answer, now: Instant) -> bool {
        let ttl = answer.ttl();
        if ttl == 0 || answer.kind() == AnswerKind::Uncacheable {
            return false;
        }
        let Some(entry) = Entry::new(key, answer, now) else {
            return false;
        };
        self.map.insert(EntryKey(entry.clone()), entry);
        self.metrics.inserts.inc();
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
    /// Sets the size gauges (`dot_proxy_cache_entries`, `dot_proxy_cache_bytes`); called when
    /// metrics are scraped.
    pub fn export_gauges(&self) {
        self.metrics.entries.set(self.len() as i64);
        self.metrics.bytes.set(self.weight() as i64);
    }

    /// `/debug/hot`: the names kept hot, as a JSON array.
    pub fn hot_names_json(&self) -> String {
        let v: Vec<serde_json::Value> = self
            .hot_names()
            .iter()
            .map(|h| serde_json::json!({"name": h.name, "qtype": h.qtype, "hits": h.hits, "prefetches": h.prefetches}))
            .collect();
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }

    pub fn hot_names(&self) -> Vec<HotName> {
        self.hot.snapshot()
    }
}

/// A router over `cache.zones` (index 0 is `.`) and the clamps of each.
fn zone_ttls(cfg: &CacheConfig) -> (crate::route::Router, Vec<TtlPolicy>) {
    let base = ttl_policy(cfg);
    let mut routes = vec![(".".to_string(), 0)];
    let mut policies = vec![base];
    for z in &cfg.zones {
        routes.push((z.zone.clone(), policies.len()));
        policies.push(TtlPolicy {
            min_ttl: z.min_ttl.unwrap_or(base.min_ttl),
            max_ttl: z.max_ttl.unwrap_or(base.max_ttl),
            negative_max_ttl: z.negative_max_ttl.unwrap_or(base.negative_max_ttl),
            servfail_ttl: base.servfail_ttl,
            rotate: z.rotate.unwrap_or(base.rotate),
        });
    }
    (crate::route::Router::new(&routes), policies)
}

pub fn ttl_policy(cfg: &CacheConfig) -> TtlPolicy {
    TtlPolicy {
        min_ttl: cfg.min_ttl,
        max_ttl: cfg.max_ttl,
        negative_max_ttl: cfg.negative_max_ttl,
        servfail_ttl: cfg.servfail_ttl,
        rotate: cfg.rotate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_the_hot_set_unless_its_size_changes() {
        let cfg = CacheConfig::default();
        let c = Cache::new(&cfg, &CacheMetrics::default());
        let same = c.with_config(&CacheConfig {
            min_ttl: 5,
            ..cfg.clone()
        });
        assert!(Arc::ptr_eq(&c.hot, &same.hot));
        assert!(Arc::ptr_eq(&c.map, &same.map));
        let mut bigger = cfg.clone();
        bigger.prefetch.top_n += 1;
        assert!(!Arc::ptr_eq(&c.hot, &c.with_config(&bigger).hot));
    }
}
