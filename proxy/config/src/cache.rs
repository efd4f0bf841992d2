//! The `cache` section: size, TTL clamps, serve-stale, prefetch and per-zone clamps.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use crate::patterns;
#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, normalize_zone, Dur, Errors, FieldPath, Message};

/// The answer cache of each proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Most answers kept.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_MAX_ENTRIES.min, max = limits::CACHE_MAX_ENTRIES.max)))]
    pub max_entries: usize,
    /// Most bytes of answers kept (wire size plus bookkeeping).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_MAX_BYTES.min, max = limits::CACHE_MAX_BYTES.max)))]
    pub max_bytes: u64,
    /// Lower clamp on positive TTLs, seconds.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_MIN_TTL.min, max = limits::CACHE_MIN_TTL.max)))]
    pub min_ttl: u32,
    /// Upper clamp on positive TTLs, seconds.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_MAX_TTL.min, max = limits::CACHE_MAX_TTL.max)))]
    pub max_ttl: u32,
    /// Upper clamp on negative (NXDOMAIN/NODATA) TTLs, seconds.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_NEGATIVE_MAX_TTL.min, max = limits::CACHE_NEGATIVE_MAX_TTL.max)))]
    pub negative_max_ttl: u32,
    /// How long a SERVFAIL is kept, seconds (RFC 9520 caps it at 5 minutes; keep it short).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_SERVFAIL_TTL.min, max = limits::CACHE_SERVFAIL_TTL.max)))]
    pub servfail_ttl: u32,
    /// Serve expired answers up to this long after expiry when upstreams fail (RFC 8767);
    /// `0s` turns serve-stale off.
    pub stale_max_age: Dur,
    /// TTL put on stale answers.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_STALE_TTL.min, max = limits::CACHE_STALE_TTL.max)))]
    pub stale_ttl: u32,
    /// Keep the last good answer: when the refresh of a cached positive answer comes back
    /// NXDOMAIN or NODATA (or fails), answer with the positive one (stale TTL) until this
    /// long after it expired, then with what the upstream says. `0s` (the default) is off;
    /// at most `1d`.
    pub prefer_positive: Dur,
    pub prefetch: PrefetchConfig,
    /// Hand out the addresses of cached A and AAAA answers in turn: each hit gets the
    /// list started one further (round robin, as CoreDNS's `loadbalance` and Unbound's
    /// `rrset-roundrobin` do), so the clients of a node spread over a name's addresses.
    pub rotate: bool,
    /// TTL clamps for names under a zone, overriding the ones above (the longest matching
    /// zone wins), e.g. `cluster.local` capped at 30 s positive and 5 s negative, as
    /// NodeLocal DNSCache does, so a new pod or service is found quickly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::CACHE_ZONES.max)))]
    pub zones: Vec<CacheZone>,
}

/// Per-zone TTL clamps (`cache.zones[]`); unset fields keep the cache-wide value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CacheZone {
    /// A domain (`cluster.local`); `.` is not allowed (that is the cache-wide setting).
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 254), regex(pattern = patterns::DOMAIN)))]
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_MIN_TTL.min, max = limits::CACHE_MIN_TTL.max)))]
    pub min_ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_MAX_TTL.min, max = limits::CACHE_MAX_TTL.max)))]
    pub max_ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = limits::CACHE_NEGATIVE_MAX_TTL.min, max = limits::CACHE_NEGATIVE_MAX_TTL.max)))]
    pub negative_max_ttl: Option<u32>,
    /// Address rotation for names under this zone (unset: `cache.rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<bool>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_entries: 100_000,
            // Unbound's default budget (4 MiB messages + 4 MiB RRsets): about 27,000 typical
            // answers, more than NodeLocal DNSCache keeps (9,984 + 9,984).
            max_bytes: 8 * 1024 * 1024,
            min_ttl: 0,
            max_ttl: 86_400,
            negative_max_ttl: 3_600,
            servfail_ttl: 5,
            stale_max_age: Dur::secs(86_400),
            stale_ttl: 30,
            prefer_positive: Dur::secs(0),
            prefetch: PrefetchConfig::default(),
            rotate: true,
            zones: Vec::new(),
        }
    }
}

/// Refreshing popular names before they expire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    pub enabled: bool,
    /// A name is hot once it has been asked this many times during its TTL.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::PREFETCH_MIN_HITS.min, max = limits::PREFETCH_MIN_HITS.max)))]
    pub min_hits: u32,
    /// At most this many names are kept hot at once (the most asked).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::PREFETCH_TOP_N.min, max = limits::PREFETCH_TOP_N.max)))]
    pub top_n: usize,
    /// Refresh when this fraction of the original TTL is left (0.0–0.5).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::PREFETCH_REMAINING_FRACTION.min, max = limits::PREFETCH_REMAINING_FRACTION.max)))]
    pub remaining_fraction: f64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            min_hits: 5,
            top_n: 1000,
            remaining_fraction: 0.1,
        }
    }
}

impl CacheConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        use limits::*;
        if self.enabled {
            e.range("max_entries", self.max_entries as u64, CACHE_MAX_ENTRIES);
            e.range("max_bytes", self.max_bytes, CACHE_MAX_BYTES);
        }
        e.range("min_ttl", self.min_ttl.into(), CACHE_MIN_TTL);
        e.range("max_ttl", self.max_ttl.into(), CACHE_MAX_TTL);
        e.range(
            "negative_max_ttl",
            self.negative_max_ttl.into(),
            CACHE_NEGATIVE_MAX_TTL,
        );
        e.range("servfail_ttl", self.servfail_ttl.into(), CACHE_SERVFAIL_TTL);
        e.range("stale_ttl", self.stale_ttl.into(), CACHE_STALE_TTL);
        if self.prefer_positive.get().as_secs() > CACHE_PREFER_POSITIVE_SECS {
            e.field(
                "prefer_positive",
                format!("{} is over the limit (1d)", self.prefer_positive),
            );
        }
        self.prefetch.check(&mut e.at("prefetch"));
        if self.min_ttl > self.max_ttl {
            e.field(
                "min_ttl",
                Message::from(format!("{} is above ", self.min_ttl))
                    .field(FieldPath::from("cache").field("max_ttl"))
                    .text(format!(" ({})", self.max_ttl)),
            );
        }
        e.length("zones", self.zones.len(), limits::CACHE_ZONES);
        for (i, z) in self.zones.iter().enumerate() {
            let mut e = e.at("zones");
            let mut e = e.index(i);
            match normalize_zone(&z.zone) {
                Ok(n) if n == "." => e.field(
                    "zone",
                    "must not be \".\" (the cache-wide settings are that)",
                ),
                Ok(n)
                    if self.zones[..i]
                        .iter()
                        .any(|o| normalize_zone(&o.zone).ok().as_ref() == Some(&n)) =>
                {
                    e.field("zone", format!("{n:?} is listed twice"))
                }
                Ok(_) => {}
                Err(m) => e.field("zone", m),
            }
            for (field, v, r) in [
                ("min_ttl", z.min_ttl, CACHE_MIN_TTL),
                ("max_ttl", z.max_ttl, CACHE_MAX_TTL),
                (
                    "negative_max_ttl",
                    z.negative_max_ttl,
                    CACHE_NEGATIVE_MAX_TTL,
                ),
            ] {
                if let Some(v) = v {
                    e.range(field, u64::from(v), r);
                }
            }
            let (min, max) = (
                z.min_ttl.unwrap_or(self.min_ttl),
                z.max_ttl.unwrap_or(self.max_ttl),
            );
            if min > max {
                e.field(
                    "min_ttl",
                    format!("{min} is above the zone's max_ttl ({max})"),
                );
            }
        }
    }
}

impl PrefetchConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        use limits::*;
        e.range("min_hits", self.min_hits.into(), PREFETCH_MIN_HITS);
        e.range("top_n", self.top_n as u64, PREFETCH_TOP_N);
        e.range(
            "remaining_fraction",
            self.remaining_fraction,
            PREFETCH_REMAINING_FRACTION,
        );
    }
}
