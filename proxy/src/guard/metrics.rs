//! What the rate limiter counts: queries over a client's limit by the action taken, and at
//! scrape time the clients it tracks, the configured rate and the busiest clients' rates
//! by rank (never their addresses).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::ByLabel;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LimitedAction {
    refused,
    dropped,
    truncated,
}

impl LimitedAction {
    pub const ALL: [LimitedAction; 3] = [
        LimitedAction::refused,
        LimitedAction::dropped,
        LimitedAction::truncated,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitedLabels {
    action: LimitedAction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RankLabels {
    rank: u16,
}

/// The rate limiter's metrics; one set per process, kept by every limiter a reload builds.
#[derive(Clone, Debug)]
pub struct GuardMetrics {
    rate_limited: Family<LimitedLabels, Counter>,
    /// `rate_limited`'s handles, resolved once: a flood is counted with an atomic add.
    pub(super) limited: ByLabel<LimitedAction>,
    pub(super) clients: Gauge,
    top_qps: Family<RankLabels, Gauge<f64, AtomicU64>>,
    pub(super) configured_qps: Gauge<f64, AtomicU64>,
}

impl Default for GuardMetrics {
    fn default() -> Self {
        let rate_limited = Family::default();
        let limited = ByLabel::new(&rate_limited, &LimitedAction::ALL, |action| LimitedLabels {
            action,
        });
        GuardMetrics {
            rate_limited,
            limited,
            clients: Gauge::default(),
            top_qps: Family::default(),
            configured_qps: Gauge::default(),
        }
    }
}

impl GuardMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "rate_limited",
            "Queries over their client's rate limit, by action taken",
            self.rate_limited.clone(),
        );
        r.register(
            "rate_limit_clients",
            "Clients with a rate-limit bucket",
            self.clients.clone(),
        );
        r.register(
            "rate_limit_top_client_qps",
            "Query rate of the busiest clients, by rank (1 = busiest)",
            self.top_qps.clone(),
        );
        r.register(
            "rate_limit_configured_qps",
            "Default per-client rate limit (0 when off)",
            self.configured_qps.clone(),
        );
    }

    /// Sets the rate of the client at `rank` (1 = busiest).
    pub(super) fn set_rank(&self, rank: u16, qps: f64) {
        self.top_qps.get_or_create(&RankLabels { rank }).set(qps);
    }

    /// No limiter runs: nothing tracked, no rate.
    pub(super) fn off(&self) {
        self.clients.set(0);
        self.configured_qps.set(0.0);
        self.top_qps.clear();
    }
}
