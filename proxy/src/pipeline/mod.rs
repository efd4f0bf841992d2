//! The query path after the listener: guard (validate, rate-limit) -> policy -> cache ->
//! route -> upstream group -> answer. One `Pipeline` is built per config; a reload builds a
//! new one (reusing the cache and unchanged groups) and swaps it in atomically.
//!
//! `handle_fast` runs inline on the listener for everything that needs no upstream (cache
//! hits, errors, limits, policy answers); a miss leaves it as one [`Request`], which
//! `resolve` (the async path) carries to the upstream, with identical concurrent misses
//! coalesced into one upstream query (`cache::Coalescer`).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::budget::Budget;
use crate::cache::{Cache, CacheKey, Coalescer, Lookup, Role};
use crate::clock::Clock;
use crate::completion::{Completion, Outcome as CompletionOutcome};
use crate::dns::message::{self, error_answer, upstream_query, Answer, AnswerKind, BADVERS};
use crate::dns::wire::{self, QueryInfo, Rejection};
use crate::dns::{rcode, rtype};
use crate::dnstap::Tap;
use crate::guard::{Decision, RateLimiter};
use crate::metrics::{DropReason, Transport};
use crate::policy::{Policy, Verdict};
use crate::route::Routes;
use crate::upstream::set::GroupSet;
use crate::upstream::GroupError;

/// What the inline path decided.
// A miss moves its request once, into the task that resolves it; boxing it would add an
// allocation per miss for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Fast {
    /// `out` holds the answer to a query of this type (0 when it did not parse).
    Answered(u16),
    /// Send nothing. The listener counts the packet as dropped for `reason`, and a query
    /// that parsed (`qtype`, dropped by the rate limiter) also as answered `DROPPED`.
    Drop {
        reason: DropReason,
        qtype: Option<u16>,
    },
    /// Needs an upstream: hand the request to [`Pipeline::resolve`].
    Miss(Request),
}

/// A query on its way to an upstream: built once by [`Pipeline::handle_fast`] with what the
/// guard, policy and cache steps found, then moved into the task that resolves it. Nothing
/// is parsed, keyed or policy-checked again after the fast path.
#[derive(Clone)]
pub struct Request {
    /// The client's query, copied once out of the listener's receive buffer.
    pub query: Vec<u8>,
    pub qi: QueryInfo,
    /// Cache and coalescing key (lower-cased name, type, class, DO/CD, route tag).
    pub key: CacheKey,
    /// The query to send instead when a rewrite rule matched: the rewritten query and its
    /// parsed info (the answer is restored to the asked name).
    pub rewrite: Option<(Vec<u8>, QueryInfo)>,
    pub client: IpAddr,
    pub transport: Transport,
    /// Search-path completion applies (`completion`): the length of the asked name's
    /// prefix before the client's namespace label.
    pub complete: Option<usize>,
}

/// EDNS option bytes a kept query may carry (cookies, ECS, padding to a 128-byte block
/// fit many times over); a query with more is kept, and forwarded, without its options.
pub const MAX_KEPT_OPTIONS: usize = 512;

/// What a waiting miss holds besides its query's bytes: its task and future (at most
/// 3 KiB, `a_cache_miss_future_stays_small`), the answer's buffer and the coalescer's entry.
pub const MISS_OVERHEAD: usize = 4096;

impl Request {
    /// The bytes this request holds while it waits (charged to the memory budget).
    pub fn held_bytes(&self) -> usize {
        self.query.len()
            + self.rewrite.as_ref().map_or(0, |(q, _)| q.len())
            + self.key.as_bytes().len()
            + MISS_OVERHEAD
    }
}

/// The query as a miss keeps it: a copy out of the receive buffer, its EDNS options left
/// out when there are more than [`MAX_KEPT_OPTIONS`] bytes of them (the query is a header,
/// a question and at most its OPT record, which comes last: `wire::parse_query`).
fn keep_query(query: &[u8], mut qi: QueryInfo) -> (Vec<u8>, QueryInfo) {
    // The OPT record's fixed part: root owner (1), type, class, TTL, RDLENGTH.
    const OPT_FIXED: usize = 11;
    match qi.edns {
        Some(mut e) if e.end == query.len() && e.end - e.start > OPT_FIXED + MAX_KEPT_OPTIONS => {
            let mut kept = query[..e.start + OPT_FIXED].to_vec();
            let n = kept.len();
            kept[n - 2..].copy_from_slice(&[0, 0]);
            e.end = n;
            e.has_ecs = false;
            e.keepalive = None;
            qi.edns = Some(e);
            (kept, qi)
        }
        _ => (query.to_vec(), qi),
    }
}

type Outcome = Result<Arc<Answer>, GroupError>;

mod build;

use build::AnswerSources;
pub use build::{BuildError, Shared};

pub struct Pipeline {
    pub(crate) limiter: Option<Arc<RateLimiter>>,
    pub(crate) cache: Option<Arc<Cache>>,
    /// Which group answers: per-client groups, then zones (`route`).
    pub(crate) routes: Routes,
    /// Static answers, block lists, rewrites, `filter_aaaa`.
    pub(crate) policy: Arc<Policy>,
    pub(crate) groups: GroupSet,
    pub(crate) strip_ecs: bool,
    pub(crate) clock: Arc<Clock>,
    pub(crate) coalescer: Coalescer<Outcome>,
    /// Query logging (dnstap), when on.
    pub(crate) tap: Option<Arc<Tap>>,
    /// Search-path completion, when on.
    pub(crate) completion: Option<Arc<Completion>>,
    /// The memory budget: a miss is charged to its `inflight` share while it waits.
    pub(crate) budget: Arc<Budget>,
    /// Queries counted by the client pod's namespace, when on.
    pub(crate) attribution: Option<crate::kubernetes::namespaces::Attribution>,
    /// What decided where and how the cache's answers were fetched.
    sources: AnswerSources,
}

impl Pipeline {
    /// Counts an answered query by its client's namespace
    /// (`dot_proxy_namespace_queries_total`), when that is on and the client is a pod of
    /// this node.
    #[inline]
    pub fn attribute(&self, client: IpAddr, rcode: crate::metrics::Rcode) {
        if let Some(a) = &self.attribution {
            a.count(client, rcode);
        }
    }

    /// The clock `handle_fast`'s `now` is read from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Readiness: the group serving `.` (every name no other zone claims, nearly all of a
    /// pod's traffic) has a usable server. A down group for another zone (the cluster DNS
    /// during its own rollout, say) does not make the node's proxy unready: restarting or
    /// holding back the proxy would not bring that group back, and every other name still
    /// resolves. Per-group health is `dot_proxy_group_healthy_upstreams`.
    pub fn ready(&self) -> Result<(), String> {
        let Some(g) = self.groups.get(self.routes.default_group()) else {
            return Err("no group serves \".\"".into());
        };
        if g.any_up() {
            Ok(())
        } else {
            Err(format!(
                "no usable server in group {:?}, which serves \".\"",
                g.name
            ))
        }
    }

    /// Validates, rate-limits and answers from the cache when it can. `now` is
    /// `self.clock`'s time when the query arrived (read once per batch by the listeners).
    pub fn handle_fast(
        self: &Arc<Self>,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Fast {
        let qi = match wire::parse_query(query) {
            Ok(qi) => qi,
            Err(Rejection::Drop) => {
                let reason = if query.len() < wire::HEADER_LEN {
                    DropReason::too_short
                } else {
                    DropReason::response
                };
                return Fast::Drop {
                    reason,
                    qtype: None,
                };
            }
            Err(Rejection::Answer {
                rcode,
                question_end,
            }) => {
                error_answer(query, question_end, rcode, None, out);
                return Fast::Answered(0);
            }
            Err(Rejection::BadVersion { question_end }) => {
                let e = wire::Edns::default();
                error_answer(query, Some(question_end), BADVERS, Some(&e), out);
                return Fast::Answered(0);
            }
        };
        if let Some(rl) = &self.limiter {
            let udp = transport == Transport::udp;
            let mut answer =
                |rc| error_answer(query, Some(qi.question_end), rc, qi.edns.as_ref(), out);
            match rl.check(client, udp, now) {
                Decision::Allow => {}
                Decision::Refuse => {
                    answer(rcode::REFUSED);
                    return Fast::Answered(qi.qtype);
                }
                Decision::Drop => {
                    return Fast::Drop {
                        reason: DropReason::rate_limited,
                        qtype: Some(qi.qtype),
                    }
                }
                Decision::Truncate => {
                    answer(rcode::NOERROR);
                    if out.len() >= 4 {
                        out[2] |= 0x02;
                    }
                    return Fast::Answered(qi.qtype);
                }
            }
        }
        self.answer_parsed(query, qi, client, transport, now, out, true)
    }

    /// The policy and cache steps of [`handle_fast`](Self::handle_fast), for a parsed query
    /// past the guard; also how each step of a search-path completion is answered (with
    /// `may_complete` false).
    #[allow(clippy::too_many_arguments)]
    fn answer_parsed(
        self: &Arc<Self>,
        query: &[u8],
        qi: QueryInfo,
        client: IpAddr,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
        may_complete: bool,
    ) -> Fast {
        // One key serves both steps: its lower-cased name is what the policy matches.
        let key = CacheKey::new(query, &qi, self.routes.tag(client));
        let mut rewrite_to = None;
        let policy = &self.policy;
        if !policy.passes_all() {
            let answered = match policy.check(key.name()) {
                Verdict::Pass => None,
                Verdict::Rewrite { strip, to } => {
                    rewrite_to = Some((strip, to));
                    None
                }
                Verdict::Static(rule) => Some(crate::policy::static_answer(
                    query,
                    &qi,
                    rule,
                    max_len(transport, &qi),
                    out,
                )),
                Verdict::Block(action) => {
                    Some(crate::policy::block_answer(query, &qi, action, out))
                }
            };
            if let Some(ok) = answered {
                if !ok {
                    message::servfail(query, &qi, out);
                }
                return Fast::Answered(qi.qtype);
            }
            if policy.filters_aaaa(qi.qtype, key.name()) {
                error_answer(
                    query,
                    Some(qi.question_end),
                    rcode::NOERROR,
                    qi.edns.as_ref(),
                    out,
                );
                return Fast::Answered(qi.qtype);
            }
        }
        let complete = match (&self.completion, &rewrite_to) {
            (Some(c), None) if may_complete => c.walk(key.name(), qi.qtype, qi.do_bit(), client),
            _ => None,
        };
        if let Some(cache) = self.cache_for(&qi) {
            let found = if complete.is_some() {
                cache.lookup_before_completion(key.as_bytes(), now)
            } else {
                cache.lookup(key.as_bytes(), now)
            };
            match found {
                // A cached NXDOMAIN for a name completion applies to is where the walk
                // starts: the async path answers it (and counts the hit). A prefetch this
                // lookup granted (and marked on the entry) still runs.
                Lookup::Fresh { entry, prefetch }
                    if complete.is_some() && entry.stored().rcode() == rcode::NXDOMAIN =>
                {
                    if prefetch {
                        let req =
                            self.request(query, qi, key.clone(), None, client, transport, None);
                        self.refresh(req, entry);
                    }
                }
                Lookup::Fresh { entry, prefetch } => {
                    entry.stored().render(
                        query,
                        &qi,
                        entry.age_secs(now),
                        None,
                        max_len(transport, &qi),
                        out,
                    );
                    if prefetch {
                        let req = self.request(query, qi, key, rewrite_to, client, transport, None);
                        self.refresh(req, entry);
                    }
                    return Fast::Answered(qi.qtype);
                }
                // A query completion applies to is looked up again, and counted, by its
                // first step on the async path.
                Lookup::Stale(_) | Lookup::Miss => {}
            }
        }
        Fast::Miss(self.request(query, qi, key, rewrite_to, client, transport, complete))
    }

    /// The request a miss (or a refresh) carries on; the rewritten query is built here, once.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        query: &[u8],
        qi: QueryInfo,
        key: CacheKey,
        rewrite_to: Option<(usize, &[u8])>,
        client: IpAddr,
        transport: Transport,
        complete: Option<usize>,
    ) -> Request {
        let (query, qi) = keep_query(query, qi);
        let rewrite = rewrite_to.and_then(|(strip, to)| {
            crate::policy::rewrite_query(&query, &qi, key.name(), strip, to)
        });
        Request {
            query,
            qi,
            key,
            rewrite,
            client,
            transport,
            complete,
        }
    }

    /// Admits a miss to wait for its upstream: its bytes charged to the memory budget's
    /// `inflight` share. When the share is full the newest miss is shed: `None`, with
    /// REFUSED for the client in `out` (a stub resolver asks its next server).
    pub fn admit(&self, req: &Request, out: &mut Vec<u8>) -> Option<crate::budget::Charge> {
        let charge = self.budget.inflight.try_charge(req.held_bytes());
        if charge.is_none() {
            error_answer(
                &req.query,
                Some(req.qi.question_end),
                rcode::REFUSED,
                req.qi.edns.as_ref(),
                out,
            );
        }
        charge
    }

    fn cache_for(&self, qi: &QueryInfo) -> Option<&Arc<Cache>> {
        // A query keeping its ECS option may get an answer only for its subnet.
        let ecs_kept = !self.strip_ecs && qi.edns.is_some_and(|e| e.has_ecs);
        self.cache.as_ref().filter(|_| !ecs_kept)
    }

    /// The async path for a query `handle_fast` could not answer. Always produces an answer.
    pub async fn resolve(self: &Arc<Self>, req: &Request, out: &mut Vec<u8>) {
        match (req.complete, &self.completion) {
            // Boxed: the walk holds two nested lookups, and inline it would double the size
            // of every miss's task, which is copied when the task is spawned.
            (Some(prefix), Some(c)) => Box::pin(self.complete(req, prefix, c, out)).await,
            _ => self.resolve_one(req, out).await,
        }
    }

    /// Answers one query of a completion (the asked name, or a search-list name) as a
    /// client's query would be answered: policy, cache, then upstream.
    async fn answer_step(
        self: &Arc<Self>,
        query: &[u8],
        qi: QueryInfo,
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) {
        let now = self.clock.now();
        match self.answer_parsed(query, qi, client, transport, now, out, false) {
            Fast::Answered(_) => {}
            Fast::Miss(step) => self.resolve_one(&step, out).await,
            Fast::Drop { .. } => message::servfail(query, &qi, out),
        }
    }

    /// Search-path completion (`completion`): the asked name first; only if it is
    /// NXDOMAIN, the rest of the client's search list, each name answered as a query of
    /// its own, until one is not NXDOMAIN.
    async fn complete(
        self: &Arc<Self>,
        req: &Request,
        prefix: usize,
        c: &Completion,
        out: &mut Vec<u8>,
    ) {
        self.answer_step(&req.query, req.qi, req.client, req.transport, out)
            .await;
        if wire::header::rcode(out) != rcode::NXDOMAIN {
            return;
        }
        let negative_ttl = |b: &[u8]| {
            wire::parse_response(b)
                .ok()
                .and_then(|i| i.negative_ttl)
                .unwrap_or(0)
        };
        let mut cap = negative_ttl(out);
        let name = req.key.name();
        let mut step = Vec::with_capacity(512);
        for (k, suffix) in c.suffixes_for(req.client, name, prefix).iter().enumerate() {
            let strip = name.len().saturating_sub(prefix);
            // A name over 255 bytes is one the client cannot ask either: skipped.
            let Some((q, qi)) =
                crate::policy::rewrite_query(&req.query, &req.qi, name, strip, suffix)
            else {
                continue;
            };
            // Each step is a query the client did not send: it takes a token from the
            // client's bucket like one, and without one the walk ends here.
            if let Some(rl) = &self.limiter {
                if rl.check(req.client, false, self.clock.now()) != Decision::Allow {
                    c.metrics.outcome(CompletionOutcome::abandoned);
                    return;
                }
            }
            c.metrics.steps.inc();
            self.answer_step(&q, qi, req.client, Transport::tcp, &mut step)
                .await;
            match wire::header::rcode(&step) {
                rcode::NXDOMAIN => cap = cap.min(negative_ttl(&step)),
                rcode::NOERROR => {
                    let max = max_len(req.transport, &req.qi);
                    match crate::completion::synthesize(&req.query, &step, cap, max) {
                        Some(answer) => {
                            *out = answer;
                            c.metrics.outcome(CompletionOutcome::completed);
                            c.metrics.saved.inc_by(k as u64 + 1);
                        }
                        None => c.metrics.outcome(CompletionOutcome::abandoned),
                    }
                    return;
                }
                // A failing step says nothing about the names after it: the asked
                // name's own NXDOMAIN goes back, and the client walks the list itself.
                _ => {
                    c.metrics.outcome(CompletionOutcome::abandoned);
                    return;
                }
            }
        }
        c.metrics.outcome(CompletionOutcome::nxdomain);
    }

    /// [`resolve`](Self::resolve) for one name: coalesced with identical misses, answered
    /// stale or SERVFAIL when the upstream fails.
    async fn resolve_one(self: &Arc<Self>, req: &Request, out: &mut Vec<u8>) {
        let Request {
            query,
            qi,
            key,
            transport,
            ..
        } = req;
        let outcome = if self.cache_for(qi).is_some() {
            match self
                .coalescer
                .join(key.as_bytes(), Err(GroupError::Timeout))
            {
                Role::Follower(rx) => rx.await.unwrap_or(Err(GroupError::Timeout)),
                Role::Leader(turn) => {
                    let outcome = self.fetch(req).await;
                    turn.finish(&outcome);
                    outcome
                }
            }
        } else {
            self.fetch(req).await
        };
        let max = max_len(*transport, qi);
        match outcome {
            Ok(answer) => answer.stored().render(query, qi, 0, None, max, out),
            Err(e) => {
                let now = self.clock.now();
                let stale = self
                    .cache_for(qi)
                    .and_then(|c| c.stale(key.as_bytes(), now).map(|s| (c, s)));
                if let Some((cache, (entry, refresh))) = stale {
                    entry
                        .stored()
                        .render(query, qi, 0, Some(cache.config().stale_ttl), max, out);
                    if refresh {
                        self.refresh(req.clone(), entry);
                    }
                } else {
                    tracing::debug!(error = %e, "answering SERVFAIL");
                    message::servfail(query, qi, out);
                }
            }
        }
    }

    /// Asks the zone's group and caches the answer.
    async fn fetch(&self, req: &Request) -> Outcome {
        let Request {
            query,
            qi,
            key,
            rewrite,
            ..
        } = req;
        // Rules apply before routing: a rewritten query goes by the name it is sent as
        // (lower-cased: the rule's target after the asked name's lower-cased prefix).
        let sent_name = match rewrite {
            Some((q, qi)) => q.get(wire::HEADER_LEN..qi.qname_end).unwrap_or(key.name()),
            None => key.name(),
        };
        let index = self.routes.group(key.route_tag(), sent_name);
        let group = self.groups.at(index);
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(name = %wire::name_to_string(key.name()), qtype = qi.qtype, group = %group.name, "forwarding");
        }
        // The one message built for upstreams; every attempt and hedge shares it.
        let mut msg = Vec::with_capacity(query.len() + 160);
        let resp = match rewrite {
            Some((new_query, new_qi)) => {
                upstream_query(new_query, new_qi, &group.query_options(), &mut msg);
                let resp = group.query(&Bytes::from(msg)).await?;
                Bytes::from(crate::policy::restore_answer(&resp, query).ok_or(
                    GroupError::Failed(crate::upstream::UpstreamError::Malformed),
                )?)
            }
            None => {
                upstream_query(query, qi, &group.query_options(), &mut msg);
                group.query(&Bytes::from(msg)).await?
            }
        };
        // IPv4-only zones: no address hints a client cannot use.
        let resp = if matches!(qi.qtype, rtype::SVCB | rtype::HTTPS)
            && self.policy.ipv4_only(key.name())
        {
            crate::dns::svcb::without_ipv6_hints(&resp).map_or(resp, Bytes::from)
        } else {
            resp
        };
        let policy = self
            .cache
            .as_ref()
            .map(|c| *c.ttl_policy_for(key.name()))
            .unwrap_or_default();
        let answer = Arc::new(
            Answer::from_upstream(&resp, query, qi, &policy)
                .map_err(|_| GroupError::Failed(crate::upstream::UpstreamError::Malformed))?,
        );
        if let Some(cache) = self.cache_for(qi) {
            // Keep the last good answer (cache.prefer_positive): an NXDOMAIN or NODATA for
            // a name whose positive answer is cached, within the window, is put aside.
            if answer.kind() == AnswerKind::Negative
                && cache.keeps_positive(key.as_bytes(), self.clock.now())
            {
                return Err(GroupError::StaleIsBetter);
            }
            // A SERVFAIL is a failure to resolve: an answer still fresh (a prefetch's
            // refresh failed) or expired but in its serve-stale window (RFC 8767) is
            // better, and must not be overwritten by it.
            if answer.kind() == AnswerKind::ServFail
                && cache.holds_answer(key.as_bytes(), self.clock.now())
            {
                return Err(GroupError::StaleIsBetter);
            }
            cache.insert(key.as_bytes(), &answer, self.clock.now());
        }
        Ok(answer)
    }

    /// Refreshes a cached name in the background (prefetch, or after serving stale).
    fn refresh(self: &Arc<Self>, req: Request, entry: crate::cache::Entry) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Role::Leader(turn) = me
                .coalescer
                .join(req.key.as_bytes(), Err(GroupError::Timeout))
            {
                let outcome = me.fetch(&req).await;
                turn.finish(&outcome);
            }
            entry.end_refresh();
        });
    }
}

pub fn max_len(transport: Transport, qi: &QueryInfo) -> usize {
    match transport {
        Transport::udp => qi.max_udp_size(),
        Transport::tcp => 65_535,
    }
}
