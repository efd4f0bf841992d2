//! The `memory` section: one memory budget, in bytes, divided among what grows with
//! client input (docs/security.md).

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Errors};

const MIB: u64 = 1024 * 1024;

/// Without `limit` and without a cgroup memory limit: the chart's default pod limit.
pub const FALLBACK_LIMIT: u64 = 256 * MIB;

/// The proxy's memory budget. Unset, it is the cgroup's memory limit (`memory.max` on
/// cgroup v2, `memory.limit_in_bytes` on v1), as Kubernetes sets it from the pod's
/// `resources.limits.memory`; with neither, 256 MiB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The budget in bytes (at least 32 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// How a budget is divided, in bytes. First a reserve for the process itself (code, the
/// runtime, sockets, metrics, the pod table: a quarter of the budget, at least 24 MiB);
/// of the rest, half is the most the cache may hold (`cache.max_bytes` is capped by it),
/// a fifth the queries waiting for upstreams, a fifth the TCP connections' buffers and
/// queued answers, a tenth the dnstap queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    pub total: u64,
    pub reserve: u64,
    pub cache: u64,
    pub inflight: u64,
    pub tcp: u64,
    pub dnstap: u64,
}

impl Shares {
    pub fn of(total: u64) -> Shares {
        let reserve = (total / 4).max(24 * MIB).min(total);
        let rest = total - reserve;
        Shares {
            total,
            reserve,
            cache: rest / 2,
            inflight: rest / 5,
            tcp: rest / 5,
            dnstap: rest / 10,
        }
    }
}

impl MemoryConfig {
    /// `Config::validate`, for this section and the cache's size within it.
    pub(crate) fn check(&self, e: &mut Errors) {
        if let Some(limit) = self.limit {
            e.range("limit", limit, limits::MEMORY_LIMIT);
        }
    }

    /// Why `cache.max_bytes` does not fit this budget, if it does not (checked by
    /// `Config::validate`, where both sections are known).
    pub(crate) fn cache_share_problem(&self, cache_max_bytes: u64) -> Option<String> {
        let limit = self.limit.filter(|l| limits::MEMORY_LIMIT.contains(*l))?;
        let share = Shares::of(limit).cache;
        (cache_max_bytes > share).then(|| {
            format!(
                "{cache_max_bytes} is more than the cache's share of memory.limit ({share} of {limit} bytes: docs/security.md)"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_keep_a_reserve() {
        let s = Shares::of(64 * MIB);
        assert_eq!(s.reserve, 24 * MIB);
        assert_eq!(s.cache, 20 * MIB);
        assert_eq!(s.inflight, 8 * MIB);
        assert!(s.reserve + s.cache + s.inflight + s.tcp + s.dnstap <= s.total);
        let s = Shares::of(FALLBACK_LIMIT);
        assert_eq!(s.reserve, 64 * MIB);
        assert_eq!(s.cache, 96 * MIB);
    }

    #[test]
    fn the_cache_must_fit_its_share_of_an_explicit_limit() {
        let m = MemoryConfig {
            limit: Some(64 * MIB),
        };
        assert_eq!(m.cache_share_problem(8 * MIB), None);
        assert!(m.cache_share_problem(32 * MIB).is_some());
        let mut errs = Vec::new();
        let small = MemoryConfig { limit: Some(MIB) };
        small.check(&mut Errors::new(&mut errs).at("memory"));
        assert_eq!(errs[0].field(), "memory.limit");
        assert_eq!(
            small.cache_share_problem(4096),
            None,
            "reported as the limit"
        );
    }
}
