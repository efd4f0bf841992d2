//! What the listeners count: queries answered by transport, type and response code, the
//! time each took, packets not answered, client TCP connections and queries waiting for
//! an upstream.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{latency_buckets, ByLabel, DropReason, QType, Rcode, Transport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    transport: Transport,
    qtype: QType,
    rcode: Rcode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: Transport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

/// The listeners' metrics; one set per process.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    queries: Family<QueryLabels, Counter>,
    query_duration: Family<TransportLabels, Histogram>,
    dropped: Family<DropLabels, Counter>,
    shared: Arc<Shared>,
}

/// What every transport's handles share.
#[derive(Debug)]
struct Shared {
    drops: ByLabel<DropReason>,
    tcp_connections: Gauge,
    inflight: Gauge,
}

impl Default for ListenerMetrics {
    fn default() -> Self {
        let dropped = Family::default();
        let drops = ByLabel::new(&dropped, &DropReason::ALL, |reason| DropLabels { reason });
        ListenerMetrics {
            queries: Family::default(),
            query_duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            dropped,
            shared: Arc::new(Shared {
                drops,
                tcp_connections: Gauge::default(),
                inflight: Gauge::default(),
            }),
        }
    }
}

impl ListenerMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "queries",
            "Client queries answered, by transport, query type and response code",
            self.queries.clone(),
        );
        r.register_with_unit(
            "query_duration",
            "Time from receiving a client query to sending its answer",
            Unit::Seconds,
            self.query_duration.clone(),
        );
        r.register(
            "dropped_packets",
            "Client packets not answered, by reason",
            self.dropped.clone(),
        );
        r.register(
            "tcp_connections",
            "Client TCP connections open",
            self.shared.tcp_connections.clone(),
        );
        r.register(
            "inflight_queries",
            "Client queries waiting for an upstream",
            self.shared.inflight.clone(),
        );
    }

    /// Pre-resolved counters for every (qtype, rcode) of one transport, so the hot path
    /// does no map lookup.
    pub fn counters(&self, t: Transport) -> QueryCounters {
        let counters = QType::ALL
            .iter()
            .map(|&qtype| {
                Rcode::ALL
                    .iter()
                    .map(|&rcode| {
                        self.queries.get_or_create_owned(&QueryLabels {
                            transport: t,
                            qtype,
                            rcode,
                        })
                    })
                    .collect()
            })
            .collect::<Vec<Box<[Counter]>>>()
            .into();
        QueryCounters {
            counters,
            duration: self
                .query_duration
                .get_or_create_owned(&TransportLabels { transport: t }),
            shared: self.shared.clone(),
        }
    }
}

/// Counter handles for one transport. Cloned for every query that waits for an upstream,
/// so the table of handles is shared: a clone is a few reference counts, not one per
/// (qtype, rcode) pair (cloning and dropping the table was 9% of a cache miss's CPU).
#[derive(Clone, Debug)]
pub struct QueryCounters {
    counters: Arc<[Box<[Counter]>]>,
    pub duration: Histogram,
    shared: Arc<Shared>,
}

impl QueryCounters {
    #[inline]
    pub fn count(&self, qtype: QType, rcode: Rcode) {
        // ALL lists the variants in declaration order, so the discriminant is the index.
        if let Some(c) = self
            .counters
            .get(qtype as usize)
            .and_then(|v| v.get(rcode as usize))
        {
            c.inc();
        }
    }

    /// A client packet not answered; one that parsed as a query of `qtype` is also
    /// counted as a query answered `DROPPED`.
    pub fn dropped(&self, reason: DropReason, qtype: Option<u16>) {
        self.shared.drops.inc(reason);
        if let Some(t) = qtype {
            self.count(QType::from_u16(t), Rcode::DROPPED);
        }
    }

    /// Queries waiting for an upstream.
    pub fn inflight(&self) -> &Gauge {
        &self.shared.inflight
    }

    /// Client TCP connections open.
    pub fn tcp_connections(&self) -> &Gauge {
        &self.shared.tcp_connections
    }
}
