//! What each upstream server counts: its metric handles, resolved once when the server is
//! built (`dot_proxy_upstream_*`: queries, durations, connections open, opened and resumed,
//! health, certificate expiry, plain-DNS retransmits, errors by kind), shared by every
//! transport, the pool, the connect backoff and the group.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{ByLabel, UpstreamErrorKind, UpstreamErrorLabels, UpstreamLabels};

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
    pub fn new(m: &crate::metrics::Metrics, group: &str, upstream: &str) -> Self {
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
