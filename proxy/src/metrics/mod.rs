//! Prometheus metrics, all under the `dot_proxy_` prefix. Each part of the proxy declares
//! and registers its own (`CacheMetrics`, `GuardMetrics`, `PolicyMetrics`, `TapMetrics`,
//! `ListenerMetrics`, `CompletionMetrics`, `UpstreamMetrics`, `ConfigStatus`, ...); this module holds the
//! registry, the label values the query path shares (transport, query type, response code,
//! drop reason) and [`ByLabel`]. Label values are enums
//! or come from the config (upstream and group names): no query name or client address is
//! ever a label. Hot-path counters are resolved to handles once, so counting is an atomic
//! add.

use prometheus_client::encoding::EncodeLabelValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod exposition;
mod process;

pub use exposition::{encode, to_prometheus_text};
use process::ProcessCollector;

pub const PREFIX: &str = "dot_proxy";

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Transport {
    udp,
    tcp,
}

/// Query types with their own label value; everything else is OTHER.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum QType {
    A,
    AAAA,
    CNAME,
    HTTPS,
    MX,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    DS,
    DNSKEY,
    ANY,
    OTHER,
}

impl QType {
    pub const ALL: [QType; 14] = [
        QType::A,
        QType::AAAA,
        QType::CNAME,
        QType::HTTPS,
        QType::MX,
        QType::NS,
        QType::PTR,
        QType::SOA,
        QType::SRV,
        QType::TXT,
        QType::DS,
        QType::DNSKEY,
        QType::ANY,
        QType::OTHER,
    ];
    pub fn from_u16(t: u16) -> QType {
        use crate::dns::rtype as r;
        match t {
            r::A => QType::A,
            r::AAAA => QType::AAAA,
            r::CNAME => QType::CNAME,
            r::HTTPS => QType::HTTPS,
            r::MX => QType::MX,
            r::NS => QType::NS,
            r::PTR => QType::PTR,
            r::SOA => QType::SOA,
            r::SRV => QType::SRV,
            r::TXT => QType::TXT,
            r::DS => QType::DS,
            r::DNSKEY => QType::DNSKEY,
            r::ANY => QType::ANY,
            _ => QType::OTHER,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Rcode {
    NOERROR,
    FORMERR,
    SERVFAIL,
    NXDOMAIN,
    NOTIMP,
    REFUSED,
    OTHER,
    /// No answer was sent (dropped by a rate limit).
    DROPPED,
}

impl Rcode {
    pub const ALL: [Rcode; 8] = [
        Rcode::NOERROR,
        Rcode::FORMERR,
        Rcode::SERVFAIL,
        Rcode::NXDOMAIN,
        Rcode::NOTIMP,
        Rcode::REFUSED,
        Rcode::OTHER,
        Rcode::DROPPED,
    ];
    pub fn from_u8(r: u8) -> Rcode {
        match r {
            0 => Rcode::NOERROR,
            1 => Rcode::FORMERR,
            2 => Rcode::SERVFAIL,
            3 => Rcode::NXDOMAIN,
            4 => Rcode::NOTIMP,
            5 => Rcode::REFUSED,
            _ => Rcode::OTHER,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    too_short,
    response,
    rate_limited,
    overloaded,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::too_short,
        DropReason::response,
        DropReason::rate_limited,
        DropReason::overloaded,
    ];
}

/// Counter handles of a family with one enum label, resolved once for every value, so that
/// counting on a path a flood controls (drops, rate-limit refusals, policy hits) is an
/// atomic add instead of a lock and a hash per query.
#[derive(Clone, Debug)]
pub struct ByLabel<V> {
    entries: Vec<(V, Counter)>,
}

impl<V: Copy + PartialEq> ByLabel<V> {
    pub fn new<L>(family: &Family<L, Counter>, values: &[V], label: impl Fn(V) -> L) -> Self
    where
        L: Clone + std::hash::Hash + Eq,
    {
        ByLabel {
            entries: values
                .iter()
                .map(|&v| (v, family.get_or_create_owned(&label(v))))
                .collect(),
        }
    }

    pub fn inc(&self, v: V) {
        if let Some((_, c)) = self.entries.iter().find(|(k, _)| *k == v) {
            c.inc();
        }
    }
}

pub fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ]
    .into_iter()
}

/// A registry with the `dot_proxy_` prefix, the build information and the process's own
/// metrics (CPU, memory, file descriptors); every part of the proxy registers its metrics
/// in it (`register` beside each part's code).
pub fn registry() -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    // A gauge fixed at 1 rather than an OpenMetrics `info`, which the Prometheus text
    // parser (and so `promtool check metrics`) does not know.
    let build: Family<Vec<(String, String)>, Gauge> = Family::default();
    build
        .get_or_create(&vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )])
        .set(1);
    r.register("build_info", "Build information", build);
    r.register_collector(Box::new(ProcessCollector));
    r.register_collector(Box::new(
        crate::netsetup::sysctl::MigrateReqCollector::default(),
    ));
    r
}
