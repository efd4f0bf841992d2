//! One memory budget, in bytes, that nothing growing with client input can exceed
//! (docs/security.md). The budget is `memory.limit`, else the cgroup's memory limit, else
//! 256 MiB; [`MemoryShares`] divides it. Each share is a counter of bytes in use: work that
//! would hold memory takes a [`Charge`] first (returned when the work is done, by drop),
//! and when the share is full the newest work is shed instead (a queued query answered
//! REFUSED, a TCP connection closed, a query log message dropped), counted in
//! `dot_proxy_overload_shed_total{resource}` and warned about at most once a second per
//! share. The model is Envoy's overload manager: fixed thresholds on measured resources,
//! actions that refuse new work rather than fail old work.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::{MemoryConfig, MemoryShares, MEMORY_FALLBACK_LIMIT};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Resource {
    /// The whole budget (`dot_proxy_memory_budget_bytes` only).
    total,
    cache,
    inflight,
    tcp,
    dnstap,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: Resource,
}

/// Where the budget came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Config,
    Cgroup,
    Fallback,
}

/// One share: its limit and the bytes charged against it now.
#[derive(Debug)]
pub struct Share {
    resource: Resource,
    limit: AtomicU64,
    used: Gauge,
    shed: Counter,
    /// Seconds since the Unix epoch of the last warning.
    warned: AtomicU64,
}

impl Share {
    fn new(resource: Resource, limit: u64, f: &Families) -> Arc<Share> {
        let label = ResourceLabels { resource };
        Arc::new(Share {
            resource,
            limit: AtomicU64::new(limit),
            used: f.used.get_or_create_owned(&label),
            shed: f.shed.get_or_create_owned(&label),
            warned: AtomicU64::new(0),
        })
    }

    /// Charges `n` bytes, or sheds: `None` (counted and warned) when they do not fit.
    pub fn try_charge(self: &Arc<Self>, n: usize) -> Option<Charge> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let limit = i64::try_from(self.limit.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let used: &AtomicI64 = self.used.inner();
        let mut cur = used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > limit {
                self.shed();
                return None;
            }
            match used.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Charge {
                        share: Arc::clone(self),
                        n,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Counts (and at most once a second warns of) work shed for this share.
    pub fn shed(&self) {
        self.shed.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.warned.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                resource = ?self.resource,
                limit_bytes = self.limit(),
                "memory share full: new work is shed (docs/security.md)"
            );
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.get().max(0) as u64
    }

    /// Work shed so far.
    pub fn shed_count(&self) -> u64 {
        self.shed.get()
    }
}

/// Bytes charged to a share, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    share: Arc<Share>,
    n: i64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.share.used.dec_by(self.n);
    }
}

#[derive(Debug, Default)]
struct Families {
    budget: Family<ResourceLabels, Gauge>,
    used: Family<ResourceLabels, Gauge>,
    shed: Family<ResourceLabels, Counter>,
}

/// The budget and its shares.
#[derive(Debug)]
pub struct Budget {
    families: Families,
    total: AtomicU64,
    /// The most the cache may hold (`cache.max_bytes` is capped by it).
    cache: AtomicU64,
    pub inflight: Arc<Share>,
    pub tcp: Arc<Share>,
    pub dnstap: Arc<Share>,
}

impl Budget {
    pub fn from_config(cfg: &MemoryConfig) -> Budget {
        let (total, source) = total_of(cfg, Path::new("/sys/fs/cgroup"));
        let s = MemoryShares::of(total);
        tracing::info!(budget_bytes = total, source = ?source, "memory budget");
        let families = Families::default();
        let b = Budget {
            total: AtomicU64::new(total),
            cache: AtomicU64::new(s.cache),
            inflight: Share::new(Resource::inflight, s.inflight, &families),
            tcp: Share::new(Resource::tcp, s.tcp, &families),
            dnstap: Share::new(Resource::dnstap, s.dnstap, &families),
            families,
        };
        b.export();
        b
    }

    /// A reload: the shares follow a changed `memory` section (bytes already charged stay
    /// charged; new work is measured against the new limits).
    pub fn update(&self, cfg: &MemoryConfig) {
        let (total, source) = total_of(cfg, Path::new("/sys/fs/cgroup"));
        if total == self.total() {
            return;
        }
        let s = MemoryShares::of(total);
        self.total.store(total, Ordering::Relaxed);
        tracing::info!(budget_bytes = total, source = ?source, "memory budget changed");
        self.cache.store(s.cache, Ordering::Relaxed);
        self.inflight.limit.store(s.inflight, Ordering::Relaxed);
        self.tcp.limit.store(s.tcp, Ordering::Relaxed);
        self.dnstap.limit.store(s.dnstap, Ordering::Relaxed);
        self.export();
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The cache's size: `max_bytes`, or its share of the budget when that is smaller
    /// (said once, as a warning, when the budget came from the cgroup: an explicit
    /// `memory.limit` is checked with the config).
    pub fn cache_bytes(&self, max_bytes: u64) -> u64 {
        let share = self.cache.load(Ordering::Relaxed);
        if max_bytes > share {
            tracing::warn!(
                max_bytes,
                share,
                "cache.max_bytes is more than the cache's share of the memory budget: the cache holds at most its share"
            );
        }
        max_bytes.min(share)
    }

    /// Registers the budget's metrics (`dot_proxy_memory_budget_bytes`,
    /// `dot_proxy_memory_used_bytes`, `dot_proxy_overload_shed_total`, by resource).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "memory_budget_bytes",
            "The memory budget (resource=total: memory.limit, else the cgroup's limit, else 256 MiB) and each share of it, in bytes",
            self.families.budget.clone(),
        );
        r.register(
            "memory_used_bytes",
            "Bytes charged against each share of the memory budget now (the cache's own count is dot_proxy_cache_bytes)",
            self.families.used.clone(),
        );
        r.register(
            "overload_shed",
            "Work shed because its share of the memory budget was full: queries answered REFUSED (inflight), TCP connections closed (tcp), query log messages dropped (dnstap)",
            self.families.shed.clone(),
        );
    }

    fn export(&self) {
        let f = &self.families.budget;
        let set = |resource, v: u64| {
            f.get_or_create(&ResourceLabels { resource })
                .set(i64::try_from(v).unwrap_or(i64::MAX))
        };
        set(Resource::total, self.total());
        set(Resource::cache, self.cache.load(Ordering::Relaxed));
        for s in [&self.inflight, &self.tcp, &self.dnstap] {
            set(s.resource, s.limit());
        }
    }
}

/// `memory.limit`, else the cgroup's limit under `root`, else the fallback.
fn total_of(cfg: &MemoryConfig, root: &Path) -> (u64, Source) {
    if let Some(l) = cfg.limit {
        return (l, Source::Config);
    }
    match cgroup_limit(root) {
        Some(l) => (l, Source::Cgroup),
        None => (MEMORY_FALLBACK_LIMIT, Source::Fallback),
    }
}

/// This process's cgroup memory limit: cgroup v2's `memory.max` of its own cgroup (from
/// `/proc/self/cgroup`), else v1's `memory.limit_in_bytes`; `None` when unlimited or not
/// readable. Limits below 32 MiB are taken as 32 MiB (the budget's floor).
pub fn cgroup_limit(root: &Path) -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    limit_in(&own, root)
}

/// [`cgroup_limit`] for a process whose `/proc/self/cgroup` reads `own`.
fn limit_in(own: &str, root: &Path) -> Option<u64> {
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(rel).join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(root.join("memory").join(rel).join("memory.limit_in_bytes"));
        }
    }
    candidates.push(root.join("memory.max"));
    candidates.push(root.join("memory").join("memory.limit_in_bytes"));
    candidates
        .iter()
        .find_map(|p| parse_limit(&std::fs::read_to_string(p).ok()?))
        .map(|l| l.max(32 * 1024 * 1024))
}

/// A cgroup limit file's value: `None` for `max` and for v1's "unlimited" (a page-rounded
/// `i64::MAX`).
fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < (1 << 60)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_comes_from_the_config_the_cgroup_or_the_fallback() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        // cgroup v2: the process's own cgroup's memory.max.
        std::fs::create_dir_all(root.join("kubepods/pod1")).expect("mkdir");
        std::fs::write(root.join("kubepods/pod1/memory.max"), "134217728\n").expect("write");
        assert_eq!(limit_in("0::/kubepods/pod1\n", root), Some(128 << 20));
        // Unlimited.
        std::fs::write(root.join("kubepods/pod1/memory.max"), "max\n").expect("write");
        assert_eq!(limit_in("0::/kubepods/pod1\n", root), None);
        // cgroup v1: the memory controller's hierarchy; unlimited is a huge number.
        std::fs::create_dir_all(root.join("memory/kubepods/pod2")).expect("mkdir");
        std::fs::write(
            root.join("memory/kubepods/pod2/memory.limit_in_bytes"),
            "67108864\n",
        )
        .expect("write");
        let v1 = "12:cpu,cpuacct:/kubepods/pod2\n9:memory:/kubepods/pod2\n";
        assert_eq!(limit_in(v1, root), Some(64 << 20));
        std::fs::write(
            root.join("memory/kubepods/pod2/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("write");
        assert_eq!(limit_in(v1, root), None);
        // Tiny limits are raised to the floor; junk lines are skipped.
        std::fs::write(
            root.join("memory/kubepods/pod2/memory.limit_in_bytes"),
            "1048576",
        )
        .expect("write");
        assert_eq!(
            limit_in("junk\n9:memory:/kubepods/pod2", root),
            Some(32 << 20)
        );
        // The config wins.
        let cfg = MemoryConfig {
            limit: Some(100 << 20),
        };
        assert_eq!(total_of(&cfg, root), (100 << 20, Source::Config));
        let empty = tempfile::tempdir().expect("tmp");
        assert_eq!(
            total_of(&MemoryConfig::default(), empty.path()).1,
            Source::Fallback
        );
    }

    #[test]
    fn a_full_share_sheds_and_charges_come_back_on_drop() {
        let b = Budget::from_config(&MemoryConfig {
            limit: Some(64 << 20),
        });
        let limit = b.inflight.limit() as usize;
        let big = b.inflight.try_charge(limit - 100).expect("fits");
        assert!(b.inflight.try_charge(101).is_none(), "over the share");
        assert_eq!(b.inflight.shed_count(), 1);
        let small = b.inflight.try_charge(100).expect("exactly fits");
        assert_eq!(b.inflight.used(), limit as u64);
        drop(big);
        drop(small);
        assert_eq!(b.inflight.used(), 0);
        assert!(b.inflight.try_charge(101).is_some());
        // A reload to a smaller budget: new work is measured against it.
        b.update(&MemoryConfig {
            limit: Some(32 << 20),
        });
        assert!(b.inflight.limit() < limit as u64);
        assert_eq!(b.cache_bytes(u64::MAX), MemoryShares::of(32 << 20).cache);
    }
}
