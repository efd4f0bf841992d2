//! What each upstream server counts: its metric handles, resolved once when the server is
//! built (`dot_proxy_upstream_*`: queries, durations, connections open, opened and resumed,
//! health, certificate expiry, plain-DNS retransmits, errors by kind), shared by every
//! transport, the pool, the connect backoff and the group.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{latency_buckets, ByLabel};

/// Metric handles for one upstream, resolved once.
#[derive(Clone, Debug)]
pub struct UpstreamStats {
    pub queries: Counter,
    pub duration: Histogram,
    pub open: Gauge,
    pub opened: Counter,
    pub resumed: Counter,
    pub healthy: Gauge,
    pub cert_expiry: Gauge,
    /// Plain UDP queries sent again after no answer.
    pub retransmits: Counter,
    errors: ByLabel<UpstreamErrorKind>,
}

impl UpstreamStats {
    pub fn new(m: &UpstreamMetrics, group: &str, upstream: &str) -> Self {
        let l = UpstreamLabels {
            group: group.to_string(),
            upstream: upstream.to_string(),
        };
        let errors = ByLabel::new(&m.upstream_errors, &UpstreamErrorKind::ALL, |kind| {
            UpstreamErrorLabels {
                group: l.group.clone(),
                upstream: l.upstream.clone(),
                kind,
            }
        });
        UpstreamStats {
            queries: m.upstream_queries.get_or_create_owned(&l),
            duration: m.upstream_duration.get_or_create_owned(&l),
            open: m.upstream_connections_open.get_or_create_owned(&l),
            opened: m.upstream_connections_opened.get_or_create_owned(&l),
            resumed: m.upstream_connections_resumed.get_or_create_owned(&l),
            healthy: m.upstream_healthy.get_or_create_owned(&l),
            cert_expiry: m.upstream_cert_expiry.get_or_create_owned(&l),
            retransmits: m.upstream_retransmits.get_or_create_owned(&l),
            errors,
        }
    }
    pub fn error(&self, kind: UpstreamErrorKind) {
        self.errors.inc(kind);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub group: String,
    pub upstream: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamErrorKind {
    timeout,
    connect,
    tls,
    closed,
    malformed,
    servfail,
    overloaded,
    /// DNS over HTTPS: a status other than 200, or a content type other than
    /// application/dns-message.
    http,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 8] = [
        UpstreamErrorKind::timeout,
        UpstreamErrorKind::connect,
        UpstreamErrorKind::tls,
        UpstreamErrorKind::closed,
        UpstreamErrorKind::malformed,
        UpstreamErrorKind::servfail,
        UpstreamErrorKind::overloaded,
        UpstreamErrorKind::http,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub group: String,
    pub upstream: String,
    pub kind: UpstreamErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

/// Why a query was also sent to the next server of its group.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FailoverReason {
    /// No answer within the server's attempt timeout (from its smoothed RTT).
    slow,
    /// The attempt failed (connect, TLS, closed, malformed, overloaded).
    error,
    /// The server answered SERVFAIL.
    servfail,
}

impl FailoverReason {
    pub const ALL: [FailoverReason; 3] = [
        FailoverReason::slow,
        FailoverReason::error,
        FailoverReason::servfail,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub group: String,
    pub reason: FailoverReason,
}

/// The upstreams' and groups' metrics, one set per process. Cheap to share
/// (`Arc<UpstreamMetrics>`); each server resolves its own handles ([`UpstreamStats::new`]).
#[derive(Debug)]
pub struct UpstreamMetrics {
    pub upstream_queries: Family<UpstreamLabels, Counter>,
    pub upstream_duration: Family<UpstreamLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub upstream_connections_open: Family<UpstreamLabels, Gauge>,
    pub upstream_connections_opened: Family<UpstreamLabels, Counter>,
    pub upstream_connections_resumed: Family<UpstreamLabels, Counter>,
    pub upstream_healthy: Family<UpstreamLabels, Gauge>,
    pub upstream_cert_expiry: Family<UpstreamLabels, Gauge>,
    pub group_healthy_upstreams: Family<GroupLabels, Gauge>,
    pub group_failovers: Family<FailoverLabels, Counter>,
    pub upstream_retransmits: Family<UpstreamLabels, Counter>,
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        UpstreamMetrics {
            upstream_queries: Family::default(),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            upstream_errors: Family::default(),
            upstream_connections_open: Family::default(),
            upstream_connections_opened: Family::default(),
            upstream_connections_resumed: Family::default(),
            upstream_healthy: Family::default(),
            upstream_cert_expiry: Family::default(),
            group_healthy_upstreams: Family::default(),
            group_failovers: Family::default(),
            upstream_retransmits: Family::default(),
        }
    }
}

impl UpstreamMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "upstream_queries",
            "Queries sent to each upstream",
            self.upstream_queries.clone(),
        );
        r.register_with_unit(
            "upstream_duration",
            "Upstream round-trip time of answered queries",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures by kind",
            self.upstream_errors.clone(),
        );
        r.register(
            "upstream_connections_open",
            "TLS connections open to each upstream",
            self.upstream_connections_open.clone(),
        );
        r.register(
            "upstream_connections_opened",
            "TLS connections opened to each upstream",
            self.upstream_connections_opened.clone(),
        );
        r.register(
            "upstream_connections_resumed",
            "TLS connections opened with session resumption",
            self.upstream_connections_resumed.clone(),
        );
        r.register(
            "upstream_healthy",
            "1 when the upstream is considered usable, 0 when marked down",
            self.upstream_healthy.clone(),
        );
        r.register_with_unit(
            "upstream_certificate_expiry",
            "Unix time at which the upstream's certificate expires",
            Unit::Seconds,
            self.upstream_cert_expiry.clone(),
        );
        r.register(
            "group_healthy_upstreams",
            "Usable upstreams in each group",
            self.group_healthy_upstreams.clone(),
        );
        r.register(
            "group_failovers",
            "Queries also sent to the next server of the group, by reason (slow: no answer within the attempt timeout)",
            self.group_failovers.clone(),
        );
        r.register(
            "upstream_retransmits",
            "Plain-DNS UDP queries sent again to the same server after no answer",
            self.upstream_retransmits.clone(),
        );
    }
}
