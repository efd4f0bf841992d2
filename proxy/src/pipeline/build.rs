//! Building a pipeline from a config: what every pipeline of a process shares
//! ([`Shared`]), and the reuse rule of each part across a reload (each part's own
//! `from_config` with the running part as `previous`).

use std::sync::Arc;

use crate::budget::Budget;
use crate::cache::{Cache, CacheMetrics, Coalescer};
use crate::clock::Clock;
use crate::completion::{Completion, CompletionMetrics};
use crate::config::Config;
use crate::dnstap::{Tap, TapMetrics};
use crate::guard::{GuardMetrics, RateLimiter};
use crate::kubernetes::namespaces::{Attribution, NamespaceQueries};
use crate::kubernetes::PodTable;
use crate::policy::{Policy, PolicyMetrics};
use crate::route::Routes;
use crate::upstream::set::GroupSet;
use crate::upstream::{Group, UpstreamMetrics};

use super::Pipeline;

/// What every pipeline of a process shares, whatever its config: the clock, the pod
/// table, the memory budget, and each part's metrics (registered once, kept by every part
/// a reload builds).
pub struct Shared {
    pub clock: Arc<Clock>,
    pub pods: Arc<PodTable>,
    pub budget: Arc<Budget>,
    pub upstream: Arc<UpstreamMetrics>,
    pub cache: CacheMetrics,
    pub guard: GuardMetrics,
    pub policy: PolicyMetrics,
    pub tap: TapMetrics,
    pub completion: CompletionMetrics,
    pub namespaces: Arc<NamespaceQueries>,
}

impl Shared {
    /// Made with the memory budget of `cfg`; every part's metrics registered in `r`.
    pub fn new(cfg: &Config, r: &mut prometheus_client::registry::Registry) -> Shared {
        let shared = Shared {
            clock: Arc::new(Clock::default()),
            pods: Arc::new(PodTable::default()),
            budget: Arc::new(Budget::from_config(&cfg.memory)),
            upstream: Arc::new(UpstreamMetrics::default()),
            cache: CacheMetrics::default(),
            guard: GuardMetrics::default(),
            policy: PolicyMetrics::default(),
            tap: TapMetrics::default(),
            completion: CompletionMetrics::default(),
            namespaces: Arc::new(NamespaceQueries::default()),
        };
        shared.upstream.register(r);
        shared.cache.register(r);
        shared.guard.register(r);
        shared.policy.register(r);
        shared.tap.register(r);
        shared.completion.register(r);
        shared.budget.register(r);
        shared.namespaces.register(r);
        shared
    }
}

/// A part of the query path could not be built from its config section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::build::BuildError),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
}

/// What decides where and how answers are fetched: the groups in their order (a client's
/// own group is keyed by its position), zone routes, rewrites and AAAA filtering. Cached
/// answers are kept across a reload only while these are unchanged.
#[derive(PartialEq)]
pub(super) struct AnswerSources {
    groups: Vec<String>,
    zones: Vec<crate::config::ZoneRoute>,
    rewrites: Vec<crate::config::RewriteRule>,
    filter_aaaa: crate::config::FilterAaaaConfig,
}

impl AnswerSources {
    fn of(cfg: &Config) -> AnswerSources {
        AnswerSources {
            groups: cfg.upstream_groups.iter().map(|g| g.name.clone()).collect(),
            zones: cfg.zones.clone(),
            rewrites: cfg.policy.rewrites.clone(),
            filter_aaaa: cfg.filter_aaaa.clone(),
        }
    }
}

impl Pipeline {
    /// Builds the pipeline of a validated config. `previous` is the running one, when a
    /// reload builds this: each part keeps what it can of it by its own rule (the cache its
    /// contents, the limiter its buckets, the policy its block lists, the tap its collector
    /// connection, the groups their connections). Nothing is swapped in here: on error the
    /// running pipeline is untouched.
    pub fn from_config(
        cfg: &Config,
        previous: Option<&Pipeline>,
        shared: &Shared,
    ) -> Result<Pipeline, BuildError> {
        let groups = GroupSet::from_config(cfg, previous.map(|p| &p.groups), &shared.upstream)?;
        Pipeline::with_groups(cfg, groups, previous, shared)
    }

    /// [`from_config`](Self::from_config) with the groups already built (the test kit's
    /// fake servers stand for a config's groups this way).
    pub fn with_groups(
        cfg: &Config,
        groups: GroupSet,
        previous: Option<&Pipeline>,
        shared: &Shared,
    ) -> Result<Pipeline, BuildError> {
        let policy = Policy::from_config(
            &cfg.policy,
            &cfg.filter_aaaa.zones,
            previous.map(|p| &p.policy),
            &shared.policy,
        )?;
        shared.budget.update(&cfg.memory);
        // Its size is capped by its share of the memory budget.
        let cache_cfg = crate::config::CacheConfig {
            max_bytes: shared.budget.cache_bytes(cfg.cache.max_bytes),
            ..cfg.cache.clone()
        };
        let sources = AnswerSources::of(cfg);
        let cache = Cache::from_config(
            &cache_cfg,
            previous.and_then(|p| p.cache.as_ref()),
            previous.is_some_and(|p| p.sources == sources),
            &shared.cache,
        );
        let limiter = RateLimiter::from_config(
            &cfg.rate_limit,
            previous.and_then(|p| p.limiter.as_ref()),
            &shared.guard,
        );
        let tap = Tap::from_config(
            &cfg.dnstap,
            previous.and_then(|p| p.tap.as_ref()),
            &shared.tap,
            &shared.budget.dnstap,
        );
        let completion =
            Completion::from_config(&cfg.search_completion, &shared.pods, &shared.completion);
        // Counting by namespace needs the pod watch.
        let k = &cfg.kubernetes;
        let top = if k.enabled { k.namespace_metrics } else { 0 };
        shared.namespaces.set_top(top);
        let attribution = (top > 0).then(|| Attribution {
            pods: shared.pods.clone(),
            queries: shared.namespaces.clone(),
        });
        Ok(Pipeline {
            limiter,
            coalescer: cache
                .as_ref()
                .map_or_else(Coalescer::default, |c| c.coalescer()),
            cache,
            routes: Routes::from_config(cfg, &groups.names()),
            policy,
            groups,
            strip_ecs: cfg.privacy.strip_ecs,
            clock: shared.clock.clone(),
            tap,
            completion: completion.map(Arc::new),
            budget: shared.budget.clone(),
            attribution,
            sources,
        })
    }

    /// Hands this pipeline's query log to its groups (which log forwarded queries). Done
    /// when it is swapped in, not when built: the groups may be the running pipeline's too.
    pub fn attach_tap(&self) {
        for g in self.groups.groups() {
            g.set_tap(self.tap.clone());
        }
    }

    /// The groups, in config order.
    pub fn groups(&self) -> &[Arc<Group>] {
        self.groups.groups()
    }

    /// Waits until the group serving "." is warm (see [`GroupSet::warmed`]).
    pub async fn warmed(&self, floor: std::time::Duration) {
        self.groups.warmed(self.routes.default_group(), floor).await;
    }

    /// Gauges that are read, not counted: each part sets its own; called at scrape time.
    pub fn export_gauges(&self) {
        if let Some(c) = &self.cache {
            c.export_gauges();
        }
        if let Some(rl) = &self.limiter {
            rl.export_gauges(self.clock.now());
        }
    }
}
