//! Test-only hooks (feature `fuzzing`, off in the production build): what the test kit
//! (`proxy/testkit`, crate `dot-proxy-testkit`), its fuzz harness and the property tests
//! need from inside the crate. Everything else they use is public.

use std::sync::Arc;

use crate::config::Config;
use crate::kubernetes::PodTable;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::upstream::Group;

/// A pipeline built from `cfg` with `groups` standing for `cfg.upstream_groups` (same
/// order), and the pod table its search-path completion reads: how tests and this harness
/// drive `Pipeline::handle_fast` and `Pipeline::resolve` with fake upstreams and no
/// sockets. Its clock is its own. The one place besides `server.rs` that assembles a
/// `Pipeline`.
pub fn pipeline(
    cfg: &Config,
    groups: Vec<Arc<Group>>,
    metrics: Arc<Metrics>,
) -> (Arc<Pipeline>, Arc<PodTable>) {
    let pods = Arc::new(PodTable::default());
    let completion_metrics = crate::completion::CompletionMetrics::default();
    let budget = Arc::new(crate::budget::Budget::from_config(&cfg.memory));
    let names: Vec<&str> = cfg
        .upstream_groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    let policy = crate::policy::Policy::new(&cfg.policy).expect("policy of a test config");
    let cache = cfg.cache.enabled.then(|| {
        let c = crate::config::CacheConfig {
            max_bytes: budget.cache_bytes(cfg.cache.max_bytes),
            ..cfg.cache.clone()
        };
        Arc::new(crate::cache::Cache::new(
            &c,
            metrics.cache_evictions.clone(),
        ))
    });
    let p = Pipeline {
        limiter: (cfg.rate_limit.enabled)
            .then(|| Arc::new(crate::guard::RateLimiter::new(&cfg.rate_limit))),
        cache,
        routes: crate::route::Routes::from_config(cfg, &names),
        policy: (!policy.is_empty()).then(|| Arc::new(policy)),
        lists_identity: Vec::new(),
        groups,
        strip_ecs: cfg.privacy.strip_ecs,
        metrics,
        clock: Arc::default(),
        coalescer: Default::default(),
        tap: None,
        completion: crate::completion::Completion::from_config(
            &cfg.search_completion,
            &pods,
            &completion_metrics,
        )
        .map(Arc::new),
        filter_aaaa: crate::route::ZoneSet::new(&cfg.filter_aaaa.zones),
        budget,
    };
    (Arc::new(p), pods)
}
