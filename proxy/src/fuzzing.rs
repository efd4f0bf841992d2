//! Test-only hooks (feature `fuzzing`, off in the production build): what the test kit
//! (`proxy/testkit`, crate `dot-proxy-testkit`), its fuzz harness and the property tests
//! need from inside the crate. Everything else they use is public.

use std::sync::Arc;

use crate::config::Config;
use crate::pipeline::{Pipeline, Shared};
use crate::upstream::set::GroupSet;
use crate::upstream::{Group, UpstreamMetrics};

/// A pipeline built from `cfg` as the proxy builds one ([`Pipeline::with_groups`]), with
/// `groups` standing for `cfg.upstream_groups` (same order) and counting on `upstream`,
/// and what it shares (each part's metrics, its own clock, the pod table its search-path
/// completion reads): how tests and the fuzz harness drive `Pipeline::handle_fast` and
/// `Pipeline::resolve` with fake upstreams and no sockets.
pub fn pipeline(
    cfg: &Config,
    groups: Vec<Arc<Group>>,
    upstream: Arc<UpstreamMetrics>,
) -> (Arc<Pipeline>, Shared) {
    let mut registry = crate::metrics::registry();
    let mut shared = Shared::new(cfg, &mut registry);
    shared.upstream = upstream;
    let p = Pipeline::with_groups(cfg, GroupSet::given(cfg, groups), None, &shared)
        .expect("a test config builds");
    p.attach_tap();
    (Arc::new(p), shared)
}
