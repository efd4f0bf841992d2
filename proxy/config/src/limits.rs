//! The ranges numeric settings must lie in, defined once: [`Config::validate`](crate::Config::validate)
//! checks them, and the operator writes the same constants into the CRD's OpenAPI schema
//! (`minimum`/`maximum`), so the API server and the proxy refuse the same values.

/// An inclusive range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range<T> {
    pub min: T,
    pub max: T,
}

impl<T: PartialOrd + Copy + std::fmt::Display> Range<T> {
    pub const fn new(min: T, max: T) -> Range<T> {
        Range { min, max }
    }

    pub fn contains(&self, v: T) -> bool {
        self.min <= v && v <= self.max
    }

    /// `Some("must be between MIN and MAX")` when `v` is outside.
    pub fn check(&self, v: T) -> Option<String> {
        (!self.contains(v)).then(|| format!("must be between {} and {}", self.min, self.max))
    }
}

pub const WORKERS: Range<u64> = Range::new(0, 1024);
pub const POOL_SIZE: Range<u64> = Range::new(1, 64);
/// Servers in one upstream group, and SPKI pins on one server. This and the `policy` list
/// bounds below are the CRD's only (they bound the API server's CEL cost estimate); a
/// standalone proxy takes longer lists.
pub const SERVERS: Range<u64> = Range::new(1, 8);
pub const SPKI_PINS: Range<u64> = Range::new(0, 8);

/// `memory.limit`: from 32 MiB (the reserve and room for the shares) to 1 TiB.
pub const MEMORY_LIMIT: Range<u64> = Range::new(32 * 1024 * 1024, 1 << 40);

pub const CACHE_MAX_ENTRIES: Range<u64> = Range::new(1, 10_000_000);
pub const CACHE_MAX_BYTES: Range<u64> = Range::new(4096, 16 * 1024 * 1024 * 1024);
pub const CACHE_MIN_TTL: Range<u64> = Range::new(0, 86_400);
pub const CACHE_MAX_TTL: Range<u64> = Range::new(0, 604_800);
pub const CACHE_NEGATIVE_MAX_TTL: Range<u64> = Range::new(0, 86_400);
/// RFC 9520 caps how long a resolution failure may be cached at five minutes.
pub const CACHE_SERVFAIL_TTL: Range<u64> = Range::new(0, 300);
pub const CACHE_STALE_TTL: Range<u64> = Range::new(1, 3600);
/// `cache.prefer_positive`: at most a day, seconds.
pub const CACHE_PREFER_POSITIVE_SECS: u64 = 86_400;
pub const PREFETCH_MIN_HITS: Range<u64> = Range::new(1, 1_000_000);
pub const PREFETCH_TOP_N: Range<u64> = Range::new(1, 1_000_000);
pub const PREFETCH_REMAINING_FRACTION: Range<f64> = Range::new(0.0, 0.5);

pub const RATE_QPS: Range<f64> = Range::new(0.001, 1_000_000.0);
pub const RATE_BURST: Range<u64> = Range::new(1, 10_000_000);
pub const RATE_IPV6_PREFIX: Range<u64> = Range::new(1, 128);
pub const RATE_SLIP: Range<u64> = Range::new(0, 100);
pub const RATE_MAX_CLIENTS: Range<u64> = Range::new(1, 10_000_000);

pub const PADDING_BLOCK: Range<u64> = Range::new(0, 1024);

pub const DNSTAP_IPV4_PREFIX: Range<u64> = Range::new(0, 32);
pub const DNSTAP_IPV6_PREFIX: Range<u64> = Range::new(0, 128);
pub const DNSTAP_SAMPLE_RATE: Range<f64> = Range::new(0.0, 1.0);
pub const DNSTAP_QUEUE: Range<u64> = Range::new(1, 1_000_000);
pub const STATIC_TTL: Range<u64> = Range::new(0, 604_800);
/// `policy`: rules of each kind, records of one static answer, names of one block list.
pub const STATIC_ANSWERS: Range<u64> = Range::new(0, 1024);
pub const BLOCKLISTS: Range<u64> = Range::new(0, 32);
pub const REWRITES: Range<u64> = Range::new(0, 256);
pub const RECORDS: Range<u64> = Range::new(0, 16);
pub const BLOCKED_NAMES: Range<u64> = Range::new(0, 1024);
/// A block list's name (a label for logs).
pub const LABEL_LEN: Range<u64> = Range::new(1, 63);

/// Lengths (characters of a string, items of a list) the schema bounds and the proxy checks.
pub const LOG_LEVEL_LEN: Range<u64> = Range::new(1, 256);
pub const CACHE_ZONES: Range<u64> = Range::new(0, 64);
/// `kubernetes.namespace_metrics`: namespaces with series of their own.
pub const NAMESPACE_METRICS: Range<u64> = Range::new(0, 100);
pub const DNSTAP_SOCKET_LEN: Range<u64> = Range::new(1, 256);
pub const DNSTAP_TEXT_LEN: Range<u64> = Range::new(0, 255);
pub const COMPLETION_HOST_DOMAINS: Range<u64> = Range::new(0, 29);
pub const COMPLETION_TYPES: Range<u64> = Range::new(0, 8);
pub const FILTER_AAAA_ZONES: Range<u64> = Range::new(0, 64);
/// `zones`: at least the route for `.`.
pub const ZONES: Range<u64> = Range::new(1, 128);
pub const NODE_LOCAL_ADDRESSES: Range<u64> = Range::new(0, 4);
/// `node_local.interface`: a Linux interface name.
pub const INTERFACE_LEN: Range<u64> = Range::new(1, 15);

/// Where the operator's defaults differ from the standalone proxy's, on purpose: a node
/// proxy in Kubernetes serves every pod of its node.
pub mod kubernetes {
    /// `cache.maxBytes`: one node cache serves every pod of the node (the standalone
    /// default is 8 MiB); with typical answers the 100,000-entry bound is reached first.
    pub const CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
    /// `rateLimit.ipv6Prefix`: Kubernetes gives each node one /64 of pod addresses, so a /64
    /// bucket would be shared by every pod of the node (the standalone default is 64).
    pub const RATE_IPV6_PREFIX: u8 = 128;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_name_their_bounds() {
        assert!(CACHE_SERVFAIL_TTL.contains(300));
        assert_eq!(
            CACHE_SERVFAIL_TTL.check(301).as_deref(),
            Some("must be between 0 and 300")
        );
        assert!(RATE_QPS.check(f64::NAN).is_some());
        assert!(PREFETCH_REMAINING_FRACTION.check(0.5).is_none());
    }
}
