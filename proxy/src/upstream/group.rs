//! A group of upstreams with a selection policy and health tracking.
//!
//! Passive health: connection and TLS failures mark a server down at once; timeouts and a
//! high SERVFAIL ratio after a few in a row. A down server is left alone for a backoff that
//! doubles up to a minute, then an active probe (`. NS`) must succeed before it carries
//! queries again. When every server is down the group fails at once instead of timing out.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::{Upstream, UpstreamError};
use crate::config::Policy;
use crate::dns::message::{upstream_query, UpstreamQueryOptions};
use crate::dns::wire::{self, header};
use crate::dns::{rcode, rtype};
use crate::metrics::UpstreamErrorKind;

const FAILURES_TO_DOWN: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// SERVFAIL share (per mille, smoothed) above which a server is marked down.
const SERVFAIL_DOWN_PERMILLE: u64 = 900;
/// One query in this many goes to a non-fastest server under `fastest`, to keep measuring.
const EXPLORE_EVERY: usize = 16;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GroupError {
    #[error("every upstream of the group is down")]
    AllDown,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("upstream failed: {0}")]
    Failed(UpstreamError),
}

/// Health of one server, shared with the prober.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    /// 0 = up; otherwise ms since the group epoch until which it is left alone.
    down_until_ms: AtomicU64,
    backoff_ms: AtomicU64,
    /// Smoothed latency in microseconds (0 = unknown).
    srtt_us: AtomicU64,
    /// Smoothed SERVFAIL share, per mille.
    servfail_pm: AtomicU64,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) == 0
    }
}

pub struct Member {
    pub upstream: Upstream,
    pub health: Health,
}

pub struct Group {
    pub name: String,
    policy: Policy,
    timeout: Duration,
    members: Vec<Member>,
    rr: AtomicUsize,
    epoch: Instant,
    query_opts: UpstreamQueryOptions,
    healthy_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Group {
    pub fn new(
        name: String,
        policy: Policy,
        timeout: Duration,
        upstreams: Vec<Upstream>,
        query_opts: UpstreamQueryOptions,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Group> {
        let members: Vec<Member> = upstreams
            .into_iter()
            .map(|upstream| Member {
                upstream,
                health: Health::default(),
            })
            .collect();
        for m in &members {
            m.upstream.stats().healthy.set(1);
        }
        let healthy_gauge =
            metrics
                .group_healthy_upstreams
                .get_or_create_owned(&crate::metrics::GroupLabels {
                    group: name.clone(),
                });
        healthy_gauge.set(members.len() as i64);
        Arc::new(Group {
            name,
            policy,
            timeout,
            members,
            rr: AtomicUsize::new(0),
            epoch: Instant::now(),
            query_opts,
            healthy_gauge,
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    pub fn query_options(&self) -> UpstreamQueryOptions {
        self.query_opts
    }
    /// True when at least one member is usable.
    pub fn any_up(&self) -> bool {
        self.members.iter().any(|m| m.health.is_up())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Sends a query built by `dns::message::upstream_query` and returns the raw answer.
    pub async fn query(&self, msg: &[u8]) -> Result<Vec<u8>, GroupError> {
        let deadline = Instant::now() + self.timeout;
        let order = self.order();
        if order.is_empty() {
            return Err(GroupError::AllDown);
        }
        match self.policy {
            Policy::Race if order.len() > 1 => self.race(&order[..2], msg, deadline).await,
            _ => self.in_turn(&order, msg, deadline).await,
        }
    }

    /// Healthy members in the order the policy wants them tried.
    fn order(&self) -> Vec<usize> {
        let up: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].health.is_up())
            .collect();
        if up.len() <= 1 {
            return up;
        }
        match self.policy {
            Policy::Failover => up,
            Policy::RoundRobin => {
                let k = self.rr.fetch_add(1, Ordering::Relaxed) % up.len();
                up[k..].iter().chain(&up[..k]).copied().collect()
            }
            Policy::Fastest | Policy::Race => {
                let mut v = up;
                v.sort_by_key(|&i| self.members[i].health.srtt_us.load(Ordering::Relaxed));
                let n = self.rr.fetch_add(1, Ordering::Relaxed);
                if self.policy == Policy::Fastest && n % EXPLORE_EVERY == EXPLORE_EVERY - 1 {
                    // Now and then try another, so a recovered or improved server is noticed.
                    let k = 1 + (n / EXPLORE_EVERY) % (v.len() - 1);
                    v.swap(0, k);
                }
                v
            }
        }
    }

    async fn in_turn(
        &self,
        order: &[usize],
        msg: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, GroupError> {
        let mut last = GroupError::Timeout;
        for (n, &i) in order.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.attempt(i, msg, deadline).await {
                Ok(r) if header::rcode(&r) == rcode::SERVFAIL && n + 1 < order.len() => {
                    // Try the next server; keep this answer if none does better.
                    if let Ok(better) = Box::pin(self.in_turn(&order[n + 1..], msg, deadline)).await
                    {
                        return Ok(better);
                    }
                    return Ok(r);
                }
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn race(
        &self,
        two: &[usize],
        msg: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, GroupError> {
        let mut futs: FuturesUnordered<_> = two
            .iter()
            .map(|&i| self.attempt(i, msg, deadline))
            .collect();
        let mut fallback = None;
        let mut last = GroupError::Timeout;
        while let Some(r) = futs.next().await {
            match r {
                Ok(resp) if header::rcode(&resp) != rcode::SERVFAIL => return Ok(resp),
                Ok(resp) => fallback = Some(resp),
                Err(e) => last = e,
            }
        }
        fallback.ok_or(last)
    }

    async fn attempt(
        &self,
        i: usize,
        msg: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, GroupError> {
        let m = &self.members[i];
        let start = Instant::now();
        match tokio::time::timeout_at(deadline, m.upstream.query(msg)).await {
            Ok(Ok(resp)) if resp.len() >= wire::HEADER_LEN && header::is_response(&resp) => {
                self.record_success(i, start.elapsed(), header::rcode(&resp) == rcode::SERVFAIL);
                Ok(resp)
            }
            Ok(Ok(_)) => {
                m.upstream.stats().error(UpstreamErrorKind::malformed);
                self.record_failure(i, false);
                Err(GroupError::Failed(UpstreamError::Malformed))
            }
            Ok(Err(e)) => {
                let hard = matches!(e, UpstreamError::Connect(_) | UpstreamError::Tls(_));
                if matches!(e, UpstreamError::Overloaded) {
                    m.upstream.stats().error(UpstreamErrorKind::overloaded);
                }
                self.record_failure(i, hard);
                Err(GroupError::Failed(e))
            }
            Err(_) => {
                m.upstream.stats().error(UpstreamErrorKind::timeout);
                self.record_failure(i, false);
                Err(GroupError::Timeout)
            }
        }
    }

    fn record_success(&self, i: usize, rtt: Duration, servfail: bool) {
        let h = &self.members[i].health;
        let us = rtt.as_micros().min(u64::MAX as u128) as u64;
        let old = h.srtt_us.load(Ordering::Relaxed);
        h.srtt_us.store(
            if old == 0 { us } else { (old * 7 + us) / 8 },
            Ordering::Relaxed,
        );
        let pm = h.servfail_pm.load(Ordering::Relaxed);
        let new_pm = (pm * 15 + if servfail { 1000 } else { 0 }) / 16;
        h.servfail_pm.store(new_pm, Ordering::Relaxed);
        if servfail {
            self.members[i]
                .upstream
                .stats()
                .error(UpstreamErrorKind::servfail);
            if new_pm > SERVFAIL_DOWN_PERMILLE {
                self.mark_down(i);
            }
        } else {
            h.failures.store(0, Ordering::Relaxed);
        }
    }

    fn record_failure(&self, i: usize, hard: bool) {
        let h = &self.members[i].health;
        let n = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if hard || n >= FAILURES_TO_DOWN {
            self.mark_down(i);
        }
    }

    fn mark_down(&self, i: usize) {
        let m = &self.members[i];
        let h = &m.health;
        let backoff = Duration::from_millis(h.backoff_ms.load(Ordering::Relaxed))
            .mul_f64(2.0)
            .clamp(MIN_BACKOFF, MAX_BACKOFF);
        h.backoff_ms
            .store(backoff.as_millis() as u64, Ordering::Relaxed);
        let was_up = h.down_until_ms.swap(
            self.now_ms() + backoff.as_millis() as u64,
            Ordering::Relaxed,
        ) == 0;
        if was_up {
            tracing::warn!(group = %self.name, upstream = %m.upstream.label(), backoff_ms = backoff.as_millis() as u64, "upstream marked down");
            m.upstream.stats().healthy.set(0);
            self.update_gauge();
        }
    }

    fn mark_up(&self, i: usize) {
        let m = &self.members[i];
        m.health.failures.store(0, Ordering::Relaxed);
        m.health.servfail_pm.store(0, Ordering::Relaxed);
        m.health.backoff_ms.store(0, Ordering::Relaxed);
        if m.health.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(group = %self.name, upstream = %m.upstream.label(), "upstream back up");
            m.upstream.stats().healthy.set(1);
            self.update_gauge();
        }
    }

    fn update_gauge(&self) {
        self.healthy_gauge
            .set(self.members.iter().filter(|m| m.health.is_up()).count() as i64);
    }

    /// Probes every down member whose backoff has passed; a good answer brings it back.
    pub async fn probe_down_members(&self) {
        let now = self.now_ms();
        let probe = probe_query(&self.query_opts);
        let mut futs = FuturesUnordered::new();
        for (i, m) in self.members.iter().enumerate() {
            let until = m.health.down_until_ms.load(Ordering::Relaxed);
            if until != 0 && until <= now {
                let probe = probe.clone();
                futs.push(async move {
                    let r = tokio::time::timeout(self.timeout, m.upstream.query(&probe)).await;
                    (i, r)
                });
            }
        }
        while let Some((i, r)) = futs.next().await {
            match r {
                // Any well-formed answer shows the server is reachable and its TLS identity
                // checks out; how well it resolves is judged on real traffic.
                Ok(Ok(resp)) if resp.len() >= wire::HEADER_LEN && header::is_response(&resp) => {
                    self.mark_up(i)
                }
                _ => self.mark_down(i),
            }
        }
    }

    /// Starts connections ahead of need.
    pub fn warm(&self) {
        for m in &self.members {
            m.upstream.warm();
        }
    }
}

/// `localhost. IN A`: resolvers answer it themselves (RFC 6761), without recursion, so the
/// probe measures the server and the path to it, not the Internet behind it.
fn probe_query(o: &UpstreamQueryOptions) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x09localhost\x00");
    q.extend_from_slice(&rtype::A.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let qi = match wire::parse_query(&q) {
        Ok(qi) => qi,
        Err(_) => return q,
    };
    let mut out = Vec::new();
    upstream_query(&q, &qi, o, &mut out);
    out
}
