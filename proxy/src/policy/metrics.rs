//! What the local policy counts: queries matched by each kind of rule, block-list loads
//! and the names the lists hold.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::ByLabel;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PolicyKind {
    rewrite,
    static_answer,
    block,
    /// AAAA answered NODATA in a `filter_aaaa` zone.
    filter_aaaa,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::rewrite,
        PolicyKind::static_answer,
        PolicyKind::block,
        PolicyKind::filter_aaaa,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    rule: PolicyKind,
}

/// The policy's metrics; one set per process, kept by every policy a reload builds.
#[derive(Clone, Debug)]
pub struct PolicyMetrics {
    actions: Family<PolicyLabels, Counter>,
    /// `actions`' handles, resolved once: a flood of blocked names is an atomic add each.
    pub(super) hits: ByLabel<PolicyKind>,
    pub(super) loads: Counter,
    pub(super) blocked_names: Gauge,
}

impl Default for PolicyMetrics {
    fn default() -> Self {
        let actions = Family::default();
        let hits = ByLabel::new(&actions, &PolicyKind::ALL, |rule| PolicyLabels { rule });
        PolicyMetrics {
            actions,
            hits,
            loads: Counter::default(),
            blocked_names: Gauge::default(),
        }
    }
}

impl PolicyMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "policy_blocklist_loads",
            "Times the block lists were (re)built from their files; a reload that changes neither the lists nor the policy reuses them",
            self.loads.clone(),
        );
        r.register(
            "policy_blocked_names",
            "Names in the block lists now in use",
            self.blocked_names.clone(),
        );
        r.register(
            "policy_actions",
            "Queries matched by a local policy rule, by rule kind",
            self.actions.clone(),
        );
    }
}
