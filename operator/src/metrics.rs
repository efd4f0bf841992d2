//! Prometheus metrics, all prefixed `dot_proxy_operator_`. Label values come from enums:
//! no resource, pod or node name is ever a label.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Rendered; the ConfigMaps are (now) up to date.
    Applied,
    /// The resource is invalid; nothing was written but status.
    Invalid,
    /// The cluster view is not synced yet; retried shortly.
    Waiting,
    /// An API call failed.
    Error,
    /// A ConfigMap it would write belongs to someone else; nothing was written but status.
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: ReconcileResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WriteKind {
    Config,
    Overrides,
    Status,
    Delete,
    Event,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: WriteKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WatchKind {
    Pods,
    Nodes,
    Namespaces,
    ConfigMaps,
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: WatchKind,
}

/// Label values in snake_case, as Prometheus users expect.
macro_rules! label_values {
    ($($t:ty { $($v:ident => $s:literal),* $(,)? })*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(<$t>::$v => $s),* })
            }
        }
    )*};
}

label_values! {
    ReconcileResult { Applied => "applied", Invalid => "invalid", Waiting => "waiting", Error => "error", Refused => "refused" }
    WriteKind { Config => "config", Overrides => "overrides", Status => "status", Delete => "delete", Event => "event" }
    WatchKind { Pods => "pods", Nodes => "nodes", Namespaces => "namespaces", ConfigMaps => "configmaps", Other => "other" }
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Counter,
    duration: Histogram,
    writes: Family<WriteLabels, Counter>,
    watch_errors: Family<WatchLabels, Counter>,
    annotated_pods: Gauge,
    snapshots: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dot_proxy_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Counter::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let writes = Family::<WriteLabels, Counter>::default();
        let watch_errors = Family::<WatchLabels, Counter>::default();
        let annotated_pods = Gauge::default();
        let snapshots = Counter::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles of DotProxyConfig resources, by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on an API call (retried with a delay)",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, rendering and API calls included",
            duration.clone(),
        );
        registry.register(
            "writes",
            "Objects written, by kind (ConfigMaps only when their content changed)",
            writes.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch failures (each retried with backoff)",
            watch_errors.clone(),
        );
        registry.register(
            "annotated_pods",
            "Pods carrying a dns.dot-proxy.io/ annotation, in the last published view",
            annotated_pods.clone(),
        );
        registry.register(
            "cluster_snapshots",
            "Debounced views of pods and nodes handed to the controller",
            snapshots.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            watch_errors,
            annotated_pods,
            snapshots,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, result: ReconcileResult, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if result == ReconcileResult::Error {
            self.errors.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    pub fn wrote(&self, kind: WriteKind) {
        self.writes.get_or_create(&WriteLabels { kind }).inc();
    }

    pub fn watch_error(&self, watch: &str) {
        let watch = match watch {
            "pods" => WatchKind::Pods,
            "nodes" => WatchKind::Nodes,
            "namespaces" => WatchKind::Namespaces,
            "configmaps" => WatchKind::ConfigMaps,
            _ => WatchKind::Other,
        };
        self.watch_errors
            .get_or_create(&WatchLabels { watch })
            .inc();
    }

    pub fn set_annotated_pods(&self, n: usize) {
        self.annotated_pods
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn snapshot_published(&self) {
        self.snapshots.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::default();
        m.reconciled(ReconcileResult::Applied, Duration::from_millis(12));
        m.reconciled(ReconcileResult::Error, Duration::from_millis(1));
        m.wrote(WriteKind::Overrides);
        m.watch_error("pods");
        m.set_leader(true);
        let text = m.encode();
        for want in [
            "dot_proxy_operator_reconciles_total{result=\"applied\"} 1",
            "dot_proxy_operator_reconcile_errors_total 1",
            "dot_proxy_operator_reconcile_duration_seconds_count 2",
            "dot_proxy_operator_writes_total{kind=\"overrides\"} 1",
            "dot_proxy_operator_watch_errors_total{watch=\"pods\"} 1",
            "dot_proxy_operator_leader 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
