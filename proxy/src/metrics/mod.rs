//! Prometheus metrics, all under the `dot_proxy_` prefix. Label values are enums or come
//! from the config (upstream and group names): no query name or client address is ever a
//! label. Hot-path counters are resolved to handles once, so counting is an atomic add.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub transport: Transport,
    pub qtype: QType,
    pub rcode: Rcode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: Transport,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigInfoLabels {
    /// SHA-256 (hex) of the config applied.
    pub hash: String,
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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    success,
    failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

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
pub struct LimitedLabels {
    pub action: LimitedAction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RankLabels {
    pub rank: u16,
}

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
pub struct PolicyLabels {
    pub rule: PolicyKind,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: DropReason,
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

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ]
    .into_iter()
}

/// Every metric of the proxy. Cheap to share (`Arc<Metrics>`).
#[derive(Debug)]
pub struct Metrics {
    pub queries: Family<QueryLabels, Counter>,
    pub query_duration: Family<TransportLabels, Histogram>,
    pub dropped: Family<DropLabels, Counter>,
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
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_stale: Counter,
    pub cache_prefetches: Counter,
    pub cache_evictions: Counter,
    pub cache_inserts: Counter,
    pub cache_coalesced: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub rate_limited: Family<LimitedLabels, Counter>,
    pub rate_limit_clients: Gauge,
    pub rate_limit_top_qps: Family<RankLabels, Gauge<f64, AtomicU64>>,
    pub rate_limit_configured_qps: Gauge<f64, AtomicU64>,
    pub policy_actions: Family<PolicyLabels, Counter>,
    /// Resolved handles of `dropped`, `rate_limited` and `policy_actions`.
    pub drops: ByLabel<DropReason>,
    pub limited: ByLabel<LimitedAction>,
    pub policy_hits: ByLabel<PolicyKind>,
    pub blocklist_loads: Counter,
    pub dnstap_messages: Counter,
    pub dnstap_dropped: Counter,
    pub dnstap_connected: Gauge,
    pub dnstap_connects: Counter,
    pub blocked_names: Gauge,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_info: Family<ConfigInfoLabels, Gauge>,
    pub config_restart_pending: Gauge,
    pub config_last_success: Gauge,
    pub config_last_reload_ok: Gauge,
    pub tcp_connections: Gauge,
    pub inflight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let dropped: Family<DropLabels, Counter> = Family::default();
        let rate_limited: Family<LimitedLabels, Counter> = Family::default();
        let policy_actions: Family<PolicyLabels, Counter> = Family::default();
        let drops = ByLabel::new(&dropped, &DropReason::ALL, |reason| DropLabels { reason });
        let limited = ByLabel::new(&rate_limited, &LimitedAction::ALL, |action| LimitedLabels {
            action,
        });
        let policy_hits = ByLabel::new(&policy_actions, &PolicyKind::ALL, |rule| PolicyLabels {
            rule,
        });
        Metrics {
            drops,
            limited,
            policy_hits,
            queries: Family::default(),
            query_duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            dropped,
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
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_stale: Counter::default(),
            cache_prefetches: Counter::default(),
            cache_evictions: Counter::default(),
            cache_inserts: Counter::default(),
            cache_coalesced: Counter::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            rate_limited,
            rate_limit_clients: Gauge::default(),
            rate_limit_top_qps: Family::default(),
            rate_limit_configured_qps: Gauge::default(),
            blocklist_loads: Counter::default(),
            dnstap_messages: Counter::default(),
            dnstap_dropped: Counter::default(),
            dnstap_connected: Gauge::default(),
            dnstap_connects: Counter::default(),
            blocked_names: Gauge::default(),
            policy_actions,
            config_restart_pending: Gauge::default(),
            config_info: Family::default(),
            config_reloads: Family::default(),
            config_last_success: Gauge::default(),
            config_last_reload_ok: Gauge::default(),
            tcp_connections: Gauge::default(),
            inflight: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and a registry that exposes them.
    pub fn new() -> (Arc<Metrics>, Registry) {
        let m = Arc::new(Metrics::default());
        let mut reg = Registry::with_prefix(PREFIX);
        m.register(&mut reg);
        (m, reg)
    }

    fn register(&self, r: &mut Registry) {
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
        r.register(
            "cache_hits",
            "Queries answered from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Cacheable queries not found fresh in the cache",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_stale_answers",
            "Expired answers served because upstreams failed (RFC 8767)",
            self.cache_stale.clone(),
        );
        r.register(
            "cache_prefetches",
            "Background refreshes: of hot names before they expire, and of answers just served stale",
            self.cache_prefetches.clone(),
        );
        r.register(
            "cache_evictions",
            "Answers evicted to stay within the cache bounds",
            self.cache_evictions.clone(),
        );
        r.register(
            "cache_inserts",
            "Answers stored in the cache",
            self.cache_inserts.clone(),
        );
        r.register(
            "cache_coalesced",
            "Queries that waited for an identical query already in flight",
            self.cache_coalesced.clone(),
        );
        r.register(
            "cache_entries",
            "Answers in the cache",
            self.cache_entries.clone(),
        );
        r.register_with_unit(
            "cache",
            "Memory held by cached answers",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register(
            "rate_limited",
            "Queries over their client's rate limit, by action taken",
            self.rate_limited.clone(),
        );
        r.register(
            "rate_limit_clients",
            "Clients with a rate-limit bucket",
            self.rate_limit_clients.clone(),
        );
        r.register(
            "rate_limit_top_client_qps",
            "Query rate of the busiest clients, by rank (1 = busiest)",
            self.rate_limit_top_qps.clone(),
        );
        r.register(
            "rate_limit_configured_qps",
            "Default per-client rate limit (0 when off)",
            self.rate_limit_configured_qps.clone(),
        );
        r.register(
            "dnstap_messages",
            "dnstap messages written to the collector",
            self.dnstap_messages.clone(),
        );
        r.register(
            "dnstap_dropped",
            "dnstap messages dropped (queue full, collector slow, stalled or gone); queries are never held back",
            self.dnstap_dropped.clone(),
        );
        r.register(
            "dnstap_connected",
            "1 while a dnstap collector connection is up (handshake done)",
            self.dnstap_connected.clone(),
        );
        r.register(
            "dnstap_connects",
            "dnstap collector connections established (handshake done)",
            self.dnstap_connects.clone(),
        );
        r.register(
            "policy_blocklist_loads",
            "Times the block lists were (re)built from their files; a reload that changes neither the lists nor the policy reuses them",
            self.blocklist_loads.clone(),
        );
        r.register(
            "policy_blocked_names",
            "Names in the block lists now in use",
            self.blocked_names.clone(),
        );
        r.register(
            "policy_actions",
            "Queries matched by a local policy rule, by rule kind",
            self.policy_actions.clone(),
        );
        r.register(
            "config_restart_pending_settings",
            "Settings of the applied config that take effect only at restart (workers, shutdown_grace, overrides.dir, overrides.node_name, kubernetes, tcp.max_connections) and differ from what this process runs with",
            self.config_restart_pending.clone(),
        );
        r.register(
            "config_info",
            "The config this proxy applied: one series, 1, labelled with its SHA-256 (of the config file, as the operator's configHash)",
            self.config_info.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            self.config_reloads.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "Unix time of the last config successfully loaded",
            Unit::Seconds,
            self.config_last_success.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last config load or reload succeeded, 0 while a bad config is refused",
            self.config_last_reload_ok.clone(),
        );
        r.register(
            "tcp_connections",
            "Client TCP connections open",
            self.tcp_connections.clone(),
        );
        r.register(
            "inflight_queries",
            "Client queries waiting for an upstream",
            self.inflight.clone(),
        );
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
    }

    /// Pre-resolved counters for every (transport, qtype, rcode), so the hot path does no
    /// map lookup.
    pub fn query_counters(&self, t: Transport) -> QueryCounters {
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
        }
    }
}

/// Counter handles for one transport. Cloned for every query that waits for an upstream,
/// so the table of handles is shared: a clone is one reference count, not one per
/// (qtype, rcode) pair (cloning and dropping the table was 9% of a cache miss's CPU).
#[derive(Clone, Debug)]
pub struct QueryCounters {
    counters: Arc<[Box<[Counter]>]>,
    pub duration: Histogram,
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
}
