//! The `rate_limit` section: per-client token buckets and per-CIDR overrides.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Cidr, Errors};

/// Per-client (per source address) query rate limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained queries per second per client.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::RATE_QPS.min, max = limits::RATE_QPS.max)))]
    pub qps: f64,
    /// Bucket size: queries a client may send at once.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::RATE_BURST.min, max = limits::RATE_BURST.max)))]
    pub burst: u32,
    /// IPv6 clients are grouped by this prefix length. The operator's default is 128:
    /// Kubernetes gives each node one /64 of pod addresses, so a /64 bucket would be shared
    /// by every pod of the node.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::RATE_IPV6_PREFIX.min, max = limits::RATE_IPV6_PREFIX.max)))]
    pub ipv6_prefix: u8,
    /// What an over-limit query gets: `refused` or `drop`.
    pub action: LimitAction,
    /// Answer every Nth limited UDP query with TC=1 instead (0 = never).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::RATE_SLIP.min, max = limits::RATE_SLIP.max)))]
    pub slip: u32,
    /// Client buckets kept at most; idle ones are evicted first.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::RATE_MAX_CLIENTS.min, max = limits::RATE_MAX_CLIENTS.max)))]
    pub max_clients: usize,
    /// Size of the top-clients list exported for metrics.
    pub top_k: usize,
    /// Per-CIDR overrides, most specific prefix wins.
    pub overrides: Vec<RateLimitOverride>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            qps: 200.0,
            burst: 400,
            ipv6_prefix: 64,
            action: LimitAction::Refused,
            slip: 0,
            max_clients: 65_536,
            top_k: 10,
            overrides: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitAction {
    #[default]
    Refused,
    Drop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverride {
    /// `10.0.0.5/32`, `fd00::/64`.
    pub cidr: Cidr,
    /// Queries per second; ignored when `exempt`.
    #[serde(default)]
    pub qps: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    /// No limit at all for these clients.
    #[serde(default)]
    pub exempt: bool,
}

impl RateLimitOverride {
    /// No limit at all for the clients in `cidr`.
    pub fn exempt(cidr: Cidr) -> RateLimitOverride {
        RateLimitOverride {
            cidr,
            qps: None,
            burst: None,
            exempt: true,
        }
    }

    /// The clients in `cidr` limited to `qps` and `burst` (the section's where `None`).
    pub fn limit(cidr: Cidr, qps: Option<f64>, burst: Option<u32>) -> RateLimitOverride {
        RateLimitOverride {
            cidr,
            qps,
            burst,
            exempt: false,
        }
    }

    /// What is wrong with it, by field: validation and the merge of per-pod overrides both
    /// ask this.
    pub fn problems(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        let qps = self
            .qps
            .is_some_and(|q| !(q.is_finite() && q > 0.0))
            .then_some(("qps", "must be a number above 0"));
        let burst = (self.burst == Some(0)).then_some(("burst", "must be at least 1"));
        qps.into_iter().chain(burst)
    }
}

impl RateLimitConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        use limits::*;
        e.range("qps", self.qps, RATE_QPS);
        e.range("burst", self.burst.into(), RATE_BURST);
        e.range("ipv6_prefix", self.ipv6_prefix.into(), RATE_IPV6_PREFIX);
        e.range("slip", self.slip.into(), RATE_SLIP);
        e.range("max_clients", self.max_clients as u64, RATE_MAX_CLIENTS);
        for (i, o) in self.overrides.iter().enumerate() {
            for (field, m) in o.problems() {
                e.at("overrides").index(i).field(field, m);
            }
        }
    }
}
