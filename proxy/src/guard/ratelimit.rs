//! Per-client token buckets: per IPv4 address, per IPv6 prefix (/64 by default), with
//! per-CIDR overrides (longest prefix wins; thousands of /32 and /128 entries cost one hash
//! lookup). An IPv6 client matched by an override longer than the prefix gets a bucket of
//! that override's length (a pod's `/128` annotation is its own bucket, not its node's
//! /64's). The table is sharded so the hot path never serialises on one lock, and bounded:
//! when a shard is full, idle clients are evicted first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::metrics::{GuardMetrics, LimitedAction};

use super::cidr::{ip_bits, mask, PrefixTable};
use crate::config::{LimitAction, RateLimitConfig};

/// A power of two (`shard_of` takes the top bits of a hash).
const SHARDS: usize = 64;
/// A bucket untouched for this long may be evicted before a busier one.
const IDLE_SECS: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    Exempt,
    Rate { qps: f64, burst: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Refuse,
    Drop,
    /// Answer with TC=1 so a real client retries over TCP (slip).
    Truncate,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: f64,
    /// Queries counted in the current one-second window, and the rate of the last full one.
    window_start: f64,
    window_count: u32,
    last_rate: f64,
    limited: u32,
}

/// A bucket's key: (0, IPv4 address) or (IPv6 prefix length, masked IPv6 address).
type Key = (u8, u128);

#[derive(Default)]
struct Shard {
    buckets: HashMap<Key, Bucket>,
}

pub struct RateLimiter {
    default: Limit,
    /// Each override's limit and prefix length.
    overrides: PrefixTable<(Limit, u8)>,
    ipv6_prefix: u8,
    action: LimitAction,
    slip: u32,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    epoch: Instant,
    cfg: RateLimitConfig,
    metrics: GuardMetrics,
}

/// A client's recent query rate, for the top-K list.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRate {
    pub client: String,
    pub qps: f64,
}

impl RateLimiter {
    /// The limiter a new config gets (None when rate limiting is off): `previous` (the
    /// running pipeline's) while its section is unchanged, else a new one that carries its
    /// buckets over ([`carry_over`](Self::carry_over)).
    pub fn from_config(
        cfg: &RateLimitConfig,
        previous: Option<&Arc<RateLimiter>>,
        metrics: &GuardMetrics,
    ) -> Option<Arc<RateLimiter>> {
        if !cfg.enabled {
            metrics.off();
            return None;
        }
        Some(match previous {
            Some(l) if l.cfg == *cfg => l.clone(),
            Some(l) => Arc::new(RateLimiter::carry_over(cfg, l)),
            None => Arc::new(RateLimiter::new(cfg, metrics)),
        })
    }

    /// Builds the limiter from validated config.
    pub fn new(cfg: &RateLimitConfig, metrics: &GuardMetrics) -> RateLimiter {
        let default = Limit::Rate {
            qps: cfg.qps,
            burst: f64::from(cfg.burst),
        };
        let mut overrides = PrefixTable::default();
        for o in &cfg.overrides {
            let c = o.cidr;
            let l = if o.exempt {
                Limit::Exempt
            } else {
                let qps = o.qps.unwrap_or(cfg.qps);
                Limit::Rate {
                    qps,
                    burst: f64::from(o.burst.unwrap_or_else(|| cfg.burst.max(qps.ceil() as u32))),
                }
            };
            overrides.insert(c, (l, c.len));
        }
        RateLimiter {
            default,
            overrides,
            ipv6_prefix: cfg.ipv6_prefix,
            action: cfg.action,
            slip: cfg.slip,
            per_shard: cfg.max_clients.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            epoch: Instant::now(),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
        }
    }

    /// The limiter for a changed `cfg`, keeping `old`'s buckets: a reload must not refill
    /// anyone's burst (under the operator, every annotated pod that comes or goes on a node
    /// changes its overrides). A bucket stays while its key still means the same client
    /// (IPv4 addresses always; an IPv6 prefix while the prefix length that applies to it is
    /// unchanged), its tokens capped at the client's new burst and never raised. A client
    /// that becomes exempt needs no bucket; one that stops being exempt starts with a full
    /// burst, as any client new to the limiter does.
    pub fn carry_over(cfg: &RateLimitConfig, old: &RateLimiter) -> RateLimiter {
        let mut new = RateLimiter::new(cfg, &old.metrics);
        // Bucket times count from the old limiter's start.
        new.epoch = old.epoch;
        for shard in old.shards.iter() {
            let s = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (key, b) in &s.buckets {
                let ip = key_ip(key);
                let (limit, override_len) = match new.overrides.lookup(ip) {
                    Some(&(l, len)) => (l, Some(len)),
                    None => (new.default, None),
                };
                let Limit::Rate { burst, .. } = limit else {
                    continue;
                };
                if new.key(ip, override_len) != *key {
                    continue;
                }
                let mut target = new.shards[shard_of(key)]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if target.buckets.len() < new.per_shard {
                    let mut b = *b;
                    b.tokens = b.tokens.min(burst);
                    target.buckets.insert(*key, b);
                }
            }
        }
        new
    }

    /// The bucket of `ip`: per address for IPv4; per `ipv6_prefix` for IPv6, or per the
    /// matching override's prefix when that is longer.
    fn key(&self, ip: IpAddr, override_len: Option<u8>) -> Key {
        let (bits, v6) = ip_bits(ip);
        if v6 {
            let len = override_len.map_or(self.ipv6_prefix, |l| l.max(self.ipv6_prefix));
            (len.max(1), mask(bits, len, true))
        } else {
            (0, bits)
        }
    }

    /// Takes one token for `ip`; a query over its limit is counted by the action decided.
    pub fn check(&self, ip: IpAddr, udp: bool, now: Instant) -> Decision {
        let d = self.decide(ip, udp, now);
        let action = match d {
            Decision::Allow => return d,
            Decision::Refuse => LimitedAction::refused,
            Decision::Drop => LimitedAction::dropped,
            Decision::Truncate => LimitedAction::truncated,
        };
        self.metrics.limited.inc(action);
        d
    }

    fn decide(&self, ip: IpAddr, udp: bool, now: Instant) -> Decision {
        let (limit, override_len) = match self.overrides.lookup(ip) {
            Some(&(l, len)) => (l, Some(len)),
            None => (self.default, None),
        };
        let Limit::Rate { qps, burst } = limit else {
            return Decision::Allow;
        };
        let key = self.key(ip, override_len);
        let t = now.saturating_duration_since(self.epoch).as_secs_f64();
        let mut shard = self.shards[shard_of(&key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !shard.buckets.contains_key(&key) && shard.buckets.len() >= self.per_shard {
            shard.buckets.retain(|_, b| t - b.last < IDLE_SECS);
            if shard.buckets.len() >= self.per_shard {
                if let Some(k) = shard
                    .buckets
                    .iter()
                    .min_by(|a, b| a.1.last.total_cmp(&b.1.last))
                    .map(|(k, _)| *k)
                {
                    shard.buckets.remove(&k);
                }
            }
        }
        let b = shard.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: t,
            window_start: t,
            window_count: 0,
            last_rate: 0.0,
            limited: 0,
        });
        b.tokens = (b.tokens + (t - b.last).max(0.0) * qps).min(burst);
        b.last = t;
        if t - b.window_start >= 1.0 {
            let span = t - b.window_start;
            b.last_rate = if span < 2.0 {
                f64::from(b.window_count) / span
            } else {
                0.0
            };
            b.window_start = t;
            b.window_count = 0;
        }
        b.window_count += 1;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Decision::Allow;
        }
        b.limited = b.limited.wrapping_add(1);
        if udp && self.slip > 0 && b.limited.is_multiple_of(self.slip) {
            return Decision::Truncate;
        }
        match self.action {
            LimitAction::Refused => Decision::Refuse,
            LimitAction::Drop => Decision::Drop,
        }
    }

    /// Clients with a bucket.
    pub fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).buckets.len())
            .sum()
    }

    /// The `k` busiest clients by query rate over the last second or so.
    /// Sets the limiter's gauges (clients tracked, configured rate, the top `top_k` clients'
    /// rates by rank; never their addresses); called when metrics are scraped.
    pub fn export_gauges(&self, now: Instant) {
        let m = &self.metrics;
        m.clients.set(self.clients() as i64);
        m.configured_qps.set(self.cfg.qps);
        let top = self.top(self.cfg.top_k, now);
        for rank in 1..=self.cfg.top_k.min(100) {
            let qps = top.get(rank - 1).map_or(0.0, |c| c.qps);
            m.set_rank(rank as u16, qps);
        }
    }

    pub fn top(&self, k: usize, now: Instant) -> Vec<ClientRate> {
        let t = now.saturating_duration_since(self.epoch).as_secs_f64();
        let mut all: Vec<(Key, f64)> = Vec::new();
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            for (key, b) in &s.buckets {
                let span = t - b.window_start;
                let rate = if span > 2.0 {
                    0.0
                } else if span >= 1.0 {
                    f64::from(b.window_count) / span
                } else {
                    b.last_rate.max(f64::from(b.window_count))
                };
                if rate > 0.0 {
                    all.push((*key, rate));
                }
            }
        }
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(k);
        all.into_iter()
            .map(|((len, bits), qps)| {
                let client = if len > 0 {
                    format!("{}/{}", std::net::Ipv6Addr::from(bits), len)
                } else {
                    std::net::Ipv4Addr::from(bits as u32).to_string()
                };
                ClientRate { client, qps }
            })
            .collect()
    }
}

/// The address a bucket's key stands for (an IPv6 prefix's first address).
fn key_ip(key: &Key) -> IpAddr {
    match key.0 {
        0 => IpAddr::from(std::net::Ipv4Addr::from(key.1 as u32)),
        _ => IpAddr::from(std::net::Ipv6Addr::from(key.1)),
    }
}

/// The shard of a bucket: the top bits of a multiplicative hash of the whole address, so
/// that IPv6 prefixes (whose low bits are all zero once masked) spread like IPv4 addresses.
fn shard_of(key: &Key) -> usize {
    let folded = (key.1 as u64) ^ ((key.1 >> 64) as u64);
    let h = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top bits of the product depend on every bit of its input.
    (h >> (64 - SHARDS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitOverride;
    use std::time::Duration;

    /// Buckets of /56 and /64 IPv6 prefixes and of IPv4 addresses spread over the shards
    /// (they once all fell in shard 0 for IPv6: one lock, 1/64 of max_clients).
    #[test]
    fn clients_spread_over_the_shards() {
        let spread = |keys: Vec<Key>| {
            let mut seen = std::collections::HashSet::new();
            for k in &keys {
                seen.insert(shard_of(k));
            }
            seen.len()
        };
        let v6 = |len: u8, i: u128| (len, (0x2001_0db8_u128 << 96) | (i << (128 - len)));
        for len in [48u8, 56, 64] {
            let n = spread((0..256).map(|i| v6(len, i)).collect());
            assert!(n >= 48, "/{len}: 256 prefixes in {n} shards");
        }
        let n = spread((0..256u128).map(|i| (0, 0x0a00_0000 | i)).collect());
        assert!(n >= 48, "IPv4: 256 addresses in {n} shards");
    }

    fn cfg() -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            qps: 10.0,
            burst: 5,
            ..Default::default()
        }
    }

    /// The limiter's gauges say "off" when a reload turns rate limiting off: no clients,
    /// no rate, no ranked clients left from before; and its decisions are counted by action.
    #[tokio::test(start_paused = true)]
    async fn gauges_follow_the_limiter_and_say_off_when_it_is_turned_off() {
        let m = GuardMetrics::default();
        let mut r = prometheus_client::registry::Registry::default();
        m.register(&mut r);
        let text = |r: &prometheus_client::registry::Registry| {
            let mut t = String::new();
            prometheus_client::encoding::text::encode(&mut t, r).expect("encode");
            t
        };
        let on = RateLimiter::from_config(&cfg(), None, &m).expect("on");
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..6 {
            on.check(ip, false, now);
        }
        on.export_gauges(now);
        let t = text(&r);
        assert!(t.contains("rate_limit_clients 1\n"), "{t}");
        assert!(t.contains("rate_limit_configured_qps 10.0\n"), "{t}");
        assert!(t.contains("rate_limit_top_client_qps{rank=\"1\"}"), "{t}");
        assert!(
            t.contains("rate_limited_total{action=\"refused\"} 1\n"),
            "{t}"
        );
        let off = RateLimitConfig {
            enabled: false,
            ..cfg()
        };
        assert!(RateLimiter::from_config(&off, Some(&on), &m).is_none());
        let t = text(&r);
        assert!(t.contains("rate_limit_clients 0\n"), "{t}");
        assert!(t.contains("rate_limit_configured_qps 0.0\n"), "{t}");
        assert!(!t.contains("rate_limit_top_client_qps{"), "{t}");
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_qps() {
        let rl = RateLimiter::new(&cfg(), &GuardMetrics::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(rl.check(ip, true, now), Decision::Allow);
        }
        assert_eq!(rl.check(ip, true, now), Decision::Refuse);
        // Another client is not affected.
        assert_eq!(
            rl.check("10.0.0.2".parse().expect("ip"), true, now),
            Decision::Allow
        );
        let later = now + Duration::from_millis(300);
        let allowed = (0..10)
            .filter(|_| rl.check(ip, true, later) == Decision::Allow)
            .count();
        assert_eq!(allowed, 3, "0.3 s at 10 qps refills 3 tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_grouped_by_prefix_and_overrides() {
        let mut c = cfg();
        c.overrides = vec![
            RateLimitOverride::exempt("10.0.0.9/32".parse().expect("cidr")),
            RateLimitOverride::limit("10.0.1.0/24".parse().expect("cidr"), Some(1.0), Some(1)),
        ];
        let rl = RateLimiter::new(&c, &GuardMetrics::default());
        let now = Instant::now();
        for i in 0..5 {
            assert_eq!(
                rl.check(format!("2001:db8::{i}").parse().expect("ip"), false, now),
                Decision::Allow
            );
        }
        assert_eq!(
            rl.check("2001:db8::99".parse().expect("ip"), false, now),
            Decision::Refuse,
            "same /64 shares a bucket"
        );
        assert_eq!(
            rl.check("2001:db8:0:1::1".parse().expect("ip"), false, now),
            Decision::Allow
        );
        for _ in 0..100 {
            assert_eq!(
                rl.check("10.0.0.9".parse().expect("ip"), true, now),
                Decision::Allow
            );
        }
        assert_eq!(
            rl.check("10.0.1.7".parse().expect("ip"), true, now),
            Decision::Allow
        );
        assert_eq!(
            rl.check("10.0.1.7".parse().expect("ip"), true, now),
            Decision::Refuse
        );
    }

    /// Kubernetes gives each node one /64 of pod addresses: a pod's /128 override must be
    /// a bucket of its own, not shared with every pod of its node.
    #[tokio::test(start_paused = true)]
    async fn an_ipv6_override_longer_than_the_prefix_gets_its_own_bucket() {
        let mut c = cfg();
        c.overrides = vec![RateLimitOverride::limit(
            "2001:db8::7/128".parse().expect("cidr"),
            Some(10.0),
            Some(3),
        )];
        let rl = RateLimiter::new(&c, &GuardMetrics::default());
        let now = Instant::now();
        let pod: IpAddr = "2001:db8::7".parse().expect("ip");
        let neighbour: IpAddr = "2001:db8::8".parse().expect("ip");
        // The neighbours of the /64 use up their shared bucket...
        for _ in 0..5 {
            assert_eq!(rl.check(neighbour, false, now), Decision::Allow);
        }
        assert_eq!(rl.check(neighbour, false, now), Decision::Refuse);
        // ...and the pod with its own override still has all of its own.
        for _ in 0..3 {
            assert_eq!(rl.check(pod, false, now), Decision::Allow);
        }
        assert_eq!(rl.check(pod, false, now), Decision::Refuse);
        // A /128 key whose low bits are zero is not the /64's key.
        let mut c = cfg();
        c.overrides = vec![RateLimitOverride::limit(
            "2001:db8:1::/128".parse().expect("cidr"),
            None,
            Some(2),
        )];
        let rl = RateLimiter::new(&c, &GuardMetrics::default());
        for _ in 0..5 {
            rl.check("2001:db8:1::9".parse().expect("ip"), false, now);
        }
        assert_eq!(
            rl.check("2001:db8:1::".parse().expect("ip"), false, now),
            Decision::Allow
        );
        let top = rl.top(2, now);
        assert!(
            top.iter().any(|t| t.client == "2001:db8:1::/128"),
            "{top:?}"
        );
        assert!(top.iter().any(|t| t.client == "2001:db8:1::/64"), "{top:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slip_and_drop() {
        let mut c = cfg();
        c.action = LimitAction::Drop;
        c.slip = 2;
        let rl = RateLimiter::new(&c, &GuardMetrics::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..5 {
            rl.check(ip, true, now);
        }
        let d: Vec<Decision> = (0..4).map(|_| rl.check(ip, true, now)).collect();
        assert_eq!(
            d,
            vec![
                Decision::Drop,
                Decision::Truncate,
                Decision::Drop,
                Decision::Truncate
            ]
        );
        assert_eq!(rl.check(ip, false, now), Decision::Drop, "no slip over TCP");
    }

    #[tokio::test(start_paused = true)]
    async fn table_is_bounded_and_top_k() {
        let mut c = cfg();
        c.max_clients = 128;
        let rl = RateLimiter::new(&c, &GuardMetrics::default());
        let now = Instant::now();
        for i in 0..10_000u32 {
            rl.check(IpAddr::V4((0x0a00_0000 + i).into()), true, now);
        }
        assert!(rl.clients() <= 128 + SHARDS, "bounded: {}", rl.clients());
        for _ in 0..50 {
            rl.check("192.0.2.1".parse().expect("ip"), true, now);
        }
        let top = rl.top(3, now);
        assert_eq!(top[0].client, "192.0.2.1");
        assert!(top.len() <= 3);
    }
}
