//! A group of upstreams with a selection policy, failover within a query, and health.
//!
//! Failover within a query: the query goes to the first server in the policy's order
//! (`race`: the first two at once). When no answer comes within that server's attempt
//! timeout (SRTT + 4·RTTVAR of its answers, at least 100 ms, at most half the group
//! timeout, 400 ms before any answer), the same query also goes to the next server, and so
//! on; the first good answer wins and the others are dropped. An error or a SERVFAIL moves
//! on to the next server at once (a SERVFAIL is kept in case nobody does better). So a
//! stalled, black-holed or very slow server costs a query at most its attempt timeout.
//!
//! Health: connection and TLS failures mark a server down at once. Timeouts, answers a
//! later server overtook, and a high SERVFAIL share mark it down after a few in a row, but
//! never while it is the last usable server of its group: a slow answer is not an outage.
//! A down server gets no queries while another is usable; after a backoff (doubling from
//! 500 ms up to a minute) an active probe (`localhost. A`) must answer within half the
//! group timeout before it carries queries again. When every server is down, queries still
//! go to all of them in the policy's order (each transport limits how often it tries to
//! connect), any good answer brings its server back at once, and the probe runs on every
//! tick regardless of backoff: recovery is not delayed by the backoff.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{FusedFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::{sleep_until, Instant};

use super::rtt::Rtt;
use super::stats::{
    FailoverLabels, FailoverReason, GroupLabels, UpstreamErrorKind, UpstreamMetrics,
};
use super::{Exchange, UpstreamError};
use crate::config::Policy;
use crate::dns::message::{upstream_query, UpstreamQueryOptions};
use crate::dns::wire::{self, header};
use crate::dns::{rcode, rtype};
use crate::metrics::ByLabel;

const FAILURES_TO_DOWN: u32 = 3;
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// SERVFAIL share (per mille, smoothed) above which a server is marked down.
const SERVFAIL_DOWN_PERMILLE: u64 = 900;
/// One query in this many goes to a non-fastest server under `fastest`, to keep measuring.
const EXPLORE_EVERY: usize = 16;
/// Bounds of one attempt's timeout before the next server is asked too.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);
const INITIAL_ATTEMPT: Duration = Duration::from_millis(400);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupError {
    #[error("the group has no servers")]
    AllDown,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("upstream failed: {0}")]
    Failed(#[source] UpstreamError),
    /// The upstream answered SERVFAIL while the cache holds an expired answer in its
    /// serve-stale window: that answer is served instead (RFC 8767).
    #[error("upstream answered SERVFAIL; serving the stale answer")]
    StaleIsBetter,
}

/// Health of one server, shared with the prober.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    /// 0 = up; otherwise ms since the group epoch until which it is left alone.
    down_until_ms: AtomicU64,
    backoff_ms: AtomicU64,
    rtt: Rtt,
    /// Smoothed SERVFAIL share, per mille.
    servfail_pm: AtomicU64,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) == 0
    }
    pub fn rtt(&self) -> &Rtt {
        &self.rtt
    }
}

pub struct Member {
    pub upstream: Arc<dyn Exchange>,
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
    /// Failover counters, resolved once.
    failovers: ByLabel<FailoverReason>,
    /// Query logging of what goes upstream (dnstap); set by each pipeline built with
    /// this group, since a reload may keep the group and change the tap.
    tap: arc_swap::ArcSwapOption<crate::dnstap::Tap>,
    /// Members whose warm-up (`warm`) has not ended.
    warming: AtomicUsize,
}

/// What one attempt ended with.
type Attempt = (usize, Result<Bytes, GroupError>);

impl Group {
    pub fn new(
        name: String,
        policy: Policy,
        timeout: Duration,
        upstreams: Vec<Arc<dyn Exchange>>,
        query_opts: UpstreamQueryOptions,
        metrics: &UpstreamMetrics,
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
        let healthy_gauge = metrics
            .group_healthy_upstreams
            .get_or_create_owned(&GroupLabels {
                group: name.clone(),
            });
        healthy_gauge.set(members.len() as i64);
        let failovers = ByLabel::new(&metrics.group_failovers, &FailoverReason::ALL, |reason| {
            FailoverLabels {
                group: name.clone(),
                reason,
            }
        });
        Arc::new(Group {
            name,
            policy,
            timeout,
            members,
            rr: AtomicUsize::new(0),
            epoch: Instant::now(),
            query_opts,
            healthy_gauge,
            failovers,
            tap: Default::default(),
            warming: AtomicUsize::new(0),
        })
    }

    /// Logs this group's upstream exchanges to `tap` from now on (None: stop).
    pub fn set_tap(&self, tap: Option<Arc<crate::dnstap::Tap>>) {
        self.tap.store(tap);
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

    /// How long to wait for member `i` before asking the next server too.
    pub fn attempt_timeout(&self, i: usize) -> Duration {
        self.members[i]
            .health
            .rtt
            .timeout(INITIAL_ATTEMPT, MIN_ATTEMPT, self.timeout / 2)
    }

    /// Sends a query built by `dns::message::upstream_query` and returns the raw answer.
    pub async fn query(&self, msg: &Bytes) -> Result<Bytes, GroupError> {
        let deadline = Instant::now() + self.timeout;
        let order = self.order();
        if order.is_empty() {
            return Err(GroupError::AllDown);
        }
        let at_once = if self.policy == Policy::Race { 2 } else { 1 };
        self.hedged(&order, at_once, msg, deadline).await
    }

    /// Members in the order the policy wants them tried: the usable ones, or every member
    /// when none is (a down server still gets the queries then, and any good answer brings
    /// it back).
    fn order(&self) -> Vec<usize> {
        let up: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].health.is_up())
            .collect();
        let candidates = if up.is_empty() {
            (0..self.members.len()).collect()
        } else {
            up
        };
        if candidates.len() <= 1 {
            return candidates;
        }
        match self.policy {
            Policy::Failover => candidates,
            Policy::RoundRobin => {
                let k = self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len();
                candidates[k..]
                    .iter()
                    .chain(&candidates[..k])
                    .copied()
                    .collect()
            }
            Policy::Fastest | Policy::Race => {
                let mut v = candidates;
                v.sort_by_key(|&i| self.members[i].health.rtt.srtt_us());
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

    /// Asks `order[..at_once]` at once, then each next server when the newest attempt's
    /// timeout passes or an attempt fails; the first good answer wins. Late answers are
    /// dropped with their futures.
    ///
    /// The first attempt runs pinned in this future; a set of futures (allocated) is made
    /// only when a second server is asked. Most queries are one attempt that answers in
    /// time, and building and dropping the set for each of them was 5% of a cache miss.
    async fn hedged(
        &self,
        order: &[usize],
        at_once: usize,
        msg: &Bytes,
        deadline: Instant,
    ) -> Result<Bytes, GroupError> {
        let mut first = std::pin::pin!(self.tagged(order[0], msg, deadline).fuse());
        let mut hedge_at = (Instant::now() + self.attempt_timeout(order[0])).min(deadline);
        let mut launched = 1;
        let mut pending = None;
        // Servers whose attempt timeout passed while they still had the query.
        let mut overtaken: Vec<usize> = Vec::new();
        let mut fallback = None;
        let mut last = GroupError::Timeout;
        let launch = |pending: &mut Option<FuturesUnordered<_>>, launched: &mut usize| {
            let i = order[*launched];
            *launched += 1;
            pending
                .get_or_insert_with(FuturesUnordered::new)
                .push(self.tagged(i, msg, deadline));
            (Instant::now() + self.attempt_timeout(i)).min(deadline)
        };
        while launched < at_once.min(order.len()) {
            hedge_at = launch(&mut pending, &mut launched);
        }
        loop {
            let waiting = !first.is_terminated()
                || pending
                    .as_ref()
                    .is_some_and(|p: &FuturesUnordered<_>| !p.is_empty());
            if !waiting {
                if launched == order.len() || Instant::now() >= deadline {
                    break;
                }
                hedge_at = launch(&mut pending, &mut launched);
            }
            let (i, r) = tokio::select! {
                biased;
                r = &mut first, if !first.is_terminated() => r,
                Some(r) = async {
                    match pending.as_mut() {
                        Some(p) => p.next().await,
                        None => None,
                    }
                } => r,
                // Nobody is asked at the deadline: the query is over then.
                _ = sleep_until(hedge_at), if launched < order.len() && hedge_at < deadline => {
                    overtaken.push(order[launched - 1]);
                    self.failovers.inc(FailoverReason::slow);
                    hedge_at = launch(&mut pending, &mut launched);
                    continue;
                }
                else => break,
            };
            overtaken.retain(|&j| j != i);
            match r {
                Ok(resp) if header::rcode(&resp) != rcode::SERVFAIL => {
                    // Still silent after their timeout while another answered.
                    for j in overtaken {
                        self.record_failure(j, false);
                    }
                    return Ok(resp);
                }
                Ok(resp) => {
                    fallback = Some(resp);
                    if launched < order.len() && Instant::now() < deadline {
                        self.failovers.inc(FailoverReason::servfail);
                        hedge_at = launch(&mut pending, &mut launched);
                    }
                }
                Err(e) => {
                    last = e;
                    if launched < order.len() && Instant::now() < deadline {
                        self.failovers.inc(FailoverReason::error);
                        hedge_at = launch(&mut pending, &mut launched);
                    }
                }
            }
        }
        fallback.ok_or(last)
    }

    async fn tagged(&self, i: usize, msg: &Bytes, deadline: Instant) -> Attempt {
        (i, self.attempt(i, msg, deadline).await)
    }

    async fn attempt(&self, i: usize, msg: &Bytes, deadline: Instant) -> Result<Bytes, GroupError> {
        let m = &self.members[i];
        let start = Instant::now();
        let result = tokio::time::timeout_at(deadline, m.upstream.query(msg)).await;
        if let Some(tap) = self.tap.load().as_ref() {
            if let Some((addr, protocol)) = m.upstream.tap_identity() {
                let answer = result.as_ref().ok().and_then(|r| r.as_ref().ok());
                tap.forwarder(msg, answer, addr, protocol, crate::clock::arrived(start));
            }
        }
        match result {
            // A cut or garbled answer is this server's failure: the query moves on.
            Ok(Ok(resp)) if wire::is_answer_to(&resp, msg) => {
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
        h.rtt.observe(rtt);
        let pm = h.servfail_pm.load(Ordering::Relaxed);
        let new_pm = (pm * 15 + if servfail { 1000 } else { 0 }) / 16;
        h.servfail_pm.store(new_pm, Ordering::Relaxed);
        if servfail {
            self.members[i]
                .upstream
                .stats()
                .error(UpstreamErrorKind::servfail);
            if new_pm > SERVFAIL_DOWN_PERMILLE && self.other_usable(i) {
                self.mark_down(i);
            }
        } else {
            h.failures.store(0, Ordering::Relaxed);
            if !h.is_up() {
                // Every server was down and this one answered: back at once.
                self.mark_up(i);
            }
        }
    }

    /// A failed attempt. `hard` (connect or TLS failure): down at once. Otherwise down
    /// after a few in a row, and only while another server is usable.
    fn record_failure(&self, i: usize, hard: bool) {
        let h = &self.members[i].health;
        let n = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if hard || (n >= FAILURES_TO_DOWN && self.other_usable(i)) {
            self.mark_down(i);
        }
    }

    fn other_usable(&self, i: usize) -> bool {
        self.members
            .iter()
            .enumerate()
            .any(|(j, m)| j != i && m.health.is_up())
    }

    /// Takes an up server out of use for its backoff (no-op when already down: only a
    /// failed probe lengthens the backoff).
    fn mark_down(&self, i: usize) {
        let m = &self.members[i];
        let h = &m.health;
        let backoff = Duration::from_millis(h.backoff_ms.load(Ordering::Relaxed))
            .clamp(MIN_BACKOFF, MAX_BACKOFF);
        let until = self.now_ms() + backoff.as_millis() as u64;
        if h.down_until_ms
            .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            h.backoff_ms
                .store(backoff.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(group = %self.name, upstream = %m.upstream.label(), backoff_ms = backoff.as_millis() as u64, "upstream marked down");
            m.upstream.stats().healthy.set(0);
            self.update_gauge();
        }
    }

    /// A failed probe: the server stays down for twice as long as before.
    fn probe_failed(&self, i: usize) {
        let h = &self.members[i].health;
        let backoff = Duration::from_millis(h.backoff_ms.load(Ordering::Relaxed))
            .mul_f64(2.0)
            .clamp(MIN_BACKOFF, MAX_BACKOFF);
        h.backoff_ms
            .store(backoff.as_millis() as u64, Ordering::Relaxed);
        let until = self.now_ms() + backoff.as_millis() as u64;
        let _ = h
            .down_until_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v != 0).then_some(until)
            });
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

    /// Probes every down member whose backoff has passed (every down member when none is
    /// usable); an answer within half the group timeout brings it back.
    pub async fn probe_down_members(&self) {
        let now = self.now_ms();
        let none_up = !self.any_up();
        let probe = Bytes::from(probe_query(&self.query_opts));
        let mut futs = FuturesUnordered::new();
        for (i, m) in self.members.iter().enumerate() {
            let until = m.health.down_until_ms.load(Ordering::Relaxed);
            if until != 0 && (none_up || until <= now) {
                let probe = probe.clone();
                futs.push(async move {
                    let start = Instant::now();
                    let r = tokio::time::timeout(self.timeout, m.upstream.query(&probe)).await;
                    (i, r, start.elapsed())
                });
            }
        }
        while let Some((i, r, took)) = futs.next().await {
            match r {
                // Any well-formed answer shows the server is reachable and its TLS identity
                // checks out; how well it resolves is judged on real traffic. One slower
                // than half the group timeout would only cost queries their attempt time.
                Ok(Ok(resp))
                    if resp.len() >= wire::HEADER_LEN
                        && header::is_response(&resp)
                        && took <= self.timeout / 2 =>
                {
                    self.members[i].health.rtt.reset();
                    self.members[i].health.rtt.observe(took);
                    self.mark_up(i)
                }
                _ => self.probe_failed(i),
            }
        }
    }

    /// Waits, at most `limit`, until a member has a live connection or every member's
    /// warm-up has ended (a plain member needs none): what "upstreams warmed" means before
    /// the admin port (and so the readiness probe) is bound. A member whose warm-up failed
    /// is down by then, so readiness says so from the first probe.
    pub async fn warmed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let live = self.members.iter().any(|m| m.upstream.live());
            if live || self.warming.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts connections ahead of need. A member whose first connection cannot be opened
    /// is marked down at once, as a query's connect failure marks it (and the prober takes
    /// it back when it answers): readiness and `dot_proxy_upstream_healthy` reflect the
    /// warm-up, not only client queries.
    pub fn warm(self: &Arc<Self>) {
        self.warming.store(self.members.len(), Ordering::Release);
        for i in 0..self.members.len() {
            let g = Arc::clone(self);
            tokio::spawn(async move {
                if !g.members[i].upstream.warm_up().await {
                    g.mark_down(i);
                }
                g.warming.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

/// How often down servers are looked at for a probe (each has its own backoff).
pub const PROBE_TICK: Duration = Duration::from_millis(500);

/// Probes the down servers of the groups `groups()` returns, every [`PROBE_TICK`], until it
/// returns `None` (the proxy stopped or is gone).
pub async fn probe_loop<F>(groups: F)
where
    F: Fn() -> Option<Vec<Arc<Group>>>,
{
    let mut tick = tokio::time::interval(PROBE_TICK);
    loop {
        tick.tick().await;
        let Some(groups) = groups() else { break };
        futures::future::join_all(groups.iter().map(|g| g.probe_down_members())).await;
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

#[cfg(test)]
mod tests;
