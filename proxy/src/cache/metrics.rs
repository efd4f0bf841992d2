//! What the cache counts of itself: hits and misses of client lookups, stale answers,
//! refreshes, inserts, evictions, coalesced misses, and its size at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// The cache's metrics; one set per process, kept by every cache a reload builds.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    pub(super) hits: Counter,
    pub(super) misses: Counter,
    pub(super) stale: Counter,
    pub(super) positive_kept: Counter,
    pub(super) prefetches: Counter,
    pub(super) evictions: Counter,
    pub(super) inserts: Counter,
    pub(super) coalesced: Counter,
    pub(super) entries: Gauge,
    pub(super) bytes: Gauge,
}

impl CacheMetrics {
    pub fn register(&self, r: &mut Registry) {
        let counters = [
            ("cache_hits", "Queries answered from the cache", &self.hits),
            (
                "cache_misses",
                "Cacheable queries not found fresh in the cache",
                &self.misses,
            ),
            (
                "cache_stale_answers",
                "Expired answers served because upstreams failed (RFC 8767)",
                &self.stale,
            ),
            (
                "cache_positive_kept",
                "Upstream NXDOMAIN or NODATA answers to a name whose positive answer was kept instead (cache.prefer_positive)",
                &self.positive_kept,
            ),
            (
                "cache_prefetches",
                "Background refreshes: of hot names before they expire, and of answers just served stale",
                &self.prefetches,
            ),
            (
                "cache_evictions",
                "Answers evicted to stay within the cache bounds",
                &self.evictions,
            ),
            ("cache_inserts", "Answers stored in the cache", &self.inserts),
            (
                "cache_coalesced",
                "Queries that waited for an identical query already in flight",
                &self.coalesced,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register(
            "cache_entries",
            "Answers in the cache",
            self.entries.clone(),
        );
        r.register_with_unit(
            "cache",
            "Memory held by cached answers",
            Unit::Bytes,
            self.bytes.clone(),
        );
    }

    /// Answers evicted.
    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }
    /// Client lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.get()
    }
    /// Client lookups that found nothing fresh.
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }
    /// Stale answers served.
    pub fn stale(&self) -> u64 {
        self.stale.get()
    }
    /// Negative answers put aside for a kept positive one.
    pub fn positive_kept(&self) -> u64 {
        self.positive_kept.get()
    }
    /// Background refreshes started.
    pub fn prefetches(&self) -> u64 {
        self.prefetches.get()
    }
    /// Misses that waited for an identical one in flight.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.get()
    }
}
