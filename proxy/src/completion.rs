//! Search-path completion (docs/search-completion.md): a pod with `ndots:5` asks
//! `api.github.com.<ns>.svc.cluster.local` first, then every other search domain, then the
//! bare name, for A and AAAA each. For a client whose namespace is known from the pod
//! watch, a query under its own first search domain that is NXDOMAIN is completed here:
//! the rest of its search list is walked (each step through the policy, the cache and zone
//! routing like any query) and the first step that is not NXDOMAIN is answered as a CNAME
//! from the asked name to the found one, with its records. The client stops searching.
//!
//! What decides (this module): whether a query is eligible and which names the walk asks.
//! What walks (the pipeline): each step is answered as a query of its own.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{RData, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::SearchCompletionConfig;
use crate::kubernetes::{PodSearch, PodTable};
use crate::route::zone_to_wire;

/// How a completion ended, for `dot_proxy_search_completions_total{result}`.
#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// A later step existed: answered with a CNAME to it.
    completed,
    /// Every step was NXDOMAIN: answered NXDOMAIN, as without completion.
    nxdomain,
    /// A step failed (SERVFAIL, REFUSED, timeout): the asked name's own answer was sent,
    /// and the client walks its search list itself.
    abandoned,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::completed, Outcome::nxdomain, Outcome::abandoned];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub result: Outcome,
}

/// Completion's own metrics: no names, no namespaces.
#[derive(Clone)]
pub struct CompletionMetrics {
    completions: Family<OutcomeLabels, Counter>,
    /// `completions`' handles, resolved once: counting is an atomic add.
    outcomes: crate::metrics::ByLabel<Outcome>,
    /// Search-list names asked by the walk (the asked name itself not counted).
    pub steps: Counter,
    /// Queries the clients did not have to send: for a completion at step k, the k names
    /// before the found one, which the client would otherwise have asked one by one.
    pub saved: Counter,
}

impl Default for CompletionMetrics {
    fn default() -> Self {
        let completions = Family::default();
        let outcomes = crate::metrics::ByLabel::new(&completions, &Outcome::ALL, |result| {
            OutcomeLabels { result }
        });
        CompletionMetrics {
            completions,
            outcomes,
            steps: Counter::default(),
            saved: Counter::default(),
        }
    }
}

impl CompletionMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "search_completions",
            "Queries under a client's own first search domain that were NXDOMAIN and were completed at the node, by result",
            self.completions.clone(),
        );
        r.register(
            "search_completion_steps",
            "Search-list names asked while completing (each through the cache and zone routing)",
            self.steps.clone(),
        );
        r.register(
            "search_completion_queries_saved",
            "Client queries made unnecessary by completed answers (the search-list names the client no longer asks)",
            self.saved.clone(),
        );
    }

    pub fn outcome(&self, o: Outcome) {
        self.outcomes.inc(o);
    }
}

/// Built from `search_completion` when enabled.
pub struct Completion {
    /// `svc.<domain>.` in lower-case wire format.
    svc: Vec<u8>,
    /// `<domain>.`
    domain: Vec<u8>,
    host: Vec<Vec<u8>>,
    types: Vec<u16>,
    pods: Arc<PodTable>,
    pub metrics: CompletionMetrics,
}

impl Completion {
    pub fn from_config(
        cfg: &SearchCompletionConfig,
        pods: &Arc<PodTable>,
        metrics: &CompletionMetrics,
    ) -> Option<Completion> {
        if !cfg.enabled {
            return None;
        }
        let norm = |d: &str| crate::config::normalize_zone(d).ok();
        let domain = norm(&cfg.cluster_domain)?;
        Some(Completion {
            svc: zone_to_wire(&format!("svc.{domain}")),
            domain: zone_to_wire(&domain),
            host: cfg
                .host_search_domains
                .iter()
                .filter_map(|d| norm(d))
                .map(|d| zone_to_wire(&d))
                .collect(),
            types: cfg.type_codes(),
            pods: pods.clone(),
            metrics: metrics.clone(),
        })
    }

    /// The walk for a query of `qtype` for `name` (lower-cased wire format) from `client`,
    /// when it is eligible: a completed type, no DNSSEC answer asked for (a synthesized
    /// CNAME is unsigned), the client a pod of this node, and the name under that pod's
    /// own first search domain (`<ns>.svc.<domain>` with `dnsPolicy: ClusterFirst`, the
    /// first of `dnsConfig.searches` with `None`) with at least one label before it.
    /// Returns the length of the name's prefix (the bytes before that domain).
    pub fn walk(&self, name: &[u8], qtype: u16, do_bit: bool, client: IpAddr) -> Option<usize> {
        if do_bit || !self.types.contains(&qtype) {
            return None;
        }
        let pod = self.pods.pod(client)?;
        match &pod.dns.search {
            PodSearch::Cluster { .. } => {
                if !name.ends_with(&self.svc) {
                    return None;
                }
                // The namespace label, the one just before `svc.<domain>`.
                let svc_at = name.len() - self.svc.len();
                let ns_at = label_before(name, svc_at)?;
                let ns_label = name.get(ns_at + 1..svc_at)?;
                (pod.namespace.as_bytes() == ns_label).then_some(ns_at)
            }
            PodSearch::Own(searches) => {
                let first = searches.first()?;
                if name.len() <= first.len() || !name.ends_with(first) {
                    return None;
                }
                let at = name.len() - first.len();
                // `at` must start a label, with one before it.
                (at > 0 && starts_label(name, at)).then_some(at)
            }
            PodSearch::Node => None,
        }
    }

    /// The rest of `client`'s search list after its first domain, in order, as the pod's
    /// stub resolver would try them for `name` whose first `prefix` bytes it typed:
    /// `svc.<domain>`, `<domain>`, each host search domain, then the pod's own
    /// `dnsConfig.searches` (ClusterFirst; or just the pod's searches with `dnsPolicy:
    /// None`), at most 32 domains in all; then the bare name, unless it has `ndots` dots or
    /// more (the stub tried it first, and does not again).
    pub fn suffixes_for(&self, client: IpAddr, name: &[u8], prefix: usize) -> Vec<Vec<u8>> {
        let dns = self.pods.pod(client).map(|p| p.dns).unwrap_or_default();
        let mut v: Vec<Vec<u8>> = match &dns.search {
            PodSearch::Cluster { extra } => {
                let mut v = vec![self.svc.clone(), self.domain.clone()];
                for d in self.host.iter().chain(extra) {
                    if !v.contains(d) {
                        v.push(d.clone());
                    }
                }
                v.truncate(31);
                v
            }
            PodSearch::Own(searches) => searches.iter().skip(1).take(31).cloned().collect(),
            PodSearch::Node => Vec::new(),
        };
        let dots = labels(name.get(..prefix).unwrap_or_default()).saturating_sub(1);
        if dots < usize::from(dns.ndots) {
            v.push(vec![0]);
        }
        v
    }
}

/// The offset of the label that ends at `end` in the wire name `name`, when `end` is a
/// label boundary and that label is not the first.
fn label_before(name: &[u8], end: usize) -> Option<usize> {
    let (mut at, mut prev) = (0usize, None);
    while at < end {
        let len = usize::from(*name.get(at)?);
        if len == 0 {
            return None;
        }
        prev = Some(at);
        at += 1 + len;
    }
    prev.filter(|&p| at == end && p > 0)
}

/// Whether a label of the wire name `name` starts at `at`.
fn starts_label(name: &[u8], at: usize) -> bool {
    let mut i = 0usize;
    while i < at {
        match name.get(i) {
            Some(&len) if len > 0 => i += 1 + usize::from(len),
            _ => return false,
        }
    }
    i == at
}

/// How many labels a run of wire-format labels holds.
fn labels(wire: &[u8]) -> usize {
    let (mut at, mut n) = (0usize, 0usize);
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        n += 1;
        at += 1 + usize::from(len);
    }
    n
}

/// The answer to the client's query: a CNAME from the asked name (as the client spelled it)
/// to the found step's name, then that step's answer (`found`, a full response to the
/// step's query with the client's ID and EDNS). The CNAME's TTL is the lowest of the found
/// records' (or its SOA's, for NODATA) and `cap`: the negative TTLs of the names walked
/// past, so that the alias is not kept longer than their non-existence would have been.
/// Truncated (TC, no records) past `max_len`. `None` if either message does not parse.
pub fn synthesize(client_query: &[u8], found: &[u8], cap: u32, max_len: usize) -> Option<Vec<u8>> {
    let mut m = Message::from_vec(found).ok()?;
    let asked = Message::from_vec(client_query).ok()?;
    let asked_name = asked.queries.first()?.name().clone();
    let found_name = m.queries.first()?.name().clone();
    let ttl = m
        .answers
        .iter()
        .map(|r| r.ttl)
        .min()
        .or_else(|| m.authorities.iter().map(|r| r.ttl).min())
        .unwrap_or(0)
        .min(cap);
    m.queries = asked.queries;
    // The CNAME is made here, unsigned: the answer as a whole is not authenticated.
    m.metadata.authentic_data = false;
    m.answers.insert(
        0,
        Record::from_rdata(asked_name, ttl, RData::CNAME(CNAME(found_name))),
    );
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= max_len {
        return Some(bytes);
    }
    m.answers.clear();
    m.authorities.clear();
    m.additionals.clear();
    m.metadata.truncation = true;
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RecordType};
    use std::collections::HashMap;

    fn completion(host: &[&str]) -> (Completion, Arc<PodTable>) {
        let pods = Arc::new(PodTable::default());
        let mut t = HashMap::new();
        t.insert("10.1.0.5".parse().expect("ip"), Arc::from("team-a"));
        pods.replace(t);
        let cfg = SearchCompletionConfig {
            enabled: true,
            host_search_domains: host.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let c = Completion::from_config(&cfg, &pods, &CompletionMetrics::default()).expect("on");
        (c, pods)
    }

    fn names(c: &Completion, prefix: usize, name: &[u8]) -> Vec<String> {
        names_for(c, "10.1.0.5", prefix, name)
    }

    fn names_for(c: &Completion, client: &str, prefix: usize, name: &[u8]) -> Vec<String> {
        c.suffixes_for(client.parse().expect("ip"), name, prefix)
            .iter()
            .map(|s| {
                let mut n = name[..prefix].to_vec();
                n.extend_from_slice(s);
                crate::dns::wire::name_to_string(&n)
            })
            .collect()
    }

    fn message(id: u16, name: &str, rtype: RecordType, answers: usize) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        let n = Name::from_ascii(name).expect("name");
        m.add_query(Query::query(n.clone(), rtype));
        for i in 0..answers {
            m.add_answer(Record::from_rdata(
                n.clone(),
                300 - i as u32,
                RData::A(A::new(10, 0, (i / 256) as u8, i as u8)),
            ));
        }
        m.to_vec().expect("wire")
    }

    #[test]
    fn synthesized_answers_keep_the_askers_spelling_and_fit_its_size() {
        let asked = message(9, "Api.Example.Team-A.svc.cluster.local.", RecordType::A, 0);
        let found = message(9, "api.example.", RecordType::A, 2);
        let out = synthesize(&asked, &found, 30, 512).expect("answer");
        let m = Message::from_vec(&out).expect("parses");
        assert_eq!(m.metadata.id, 9);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "Api.Example.Team-A.svc.cluster.local."
        );
        assert_eq!(m.answers.len(), 3);
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "Api.Example.Team-A.svc.cluster.local."
        );
        assert!(matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "api.example."));
        assert_eq!(m.answers[0].ttl, 30, "capped by the walked NXDOMAINs");
        let out = synthesize(&asked, &found, 3600, 512).expect("answer");
        let m = Message::from_vec(&out).expect("parses");
        assert_eq!(m.answers[0].ttl, 299, "the found records' lowest");

        // Too big for a 512-byte UDP answer: TC, no records, the question kept.
        let big = message(9, "api.example.", RecordType::A, 60);
        let out = synthesize(&asked, &big, 30, 512).expect("answer");
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).expect("parses");
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        let out = synthesize(&asked, &big, 30, 65_535).expect("answer over TCP");
        assert_eq!(Message::from_vec(&out).expect("parses").answers.len(), 61);

        // Issue 27: the synthesized CNAME is unsigned: never AD, even when the found
        // answer had it (the client asked with AD set, RFC 6840 5.7).
        let mut signed = Message::from_vec(&found).expect("parses");
        signed.metadata.authentic_data = true;
        let signed = signed.to_vec().expect("wire");
        for found in [&signed, &big] {
            let out = synthesize(&asked, found, 30, 512).expect("answer");
            let m = Message::from_vec(&out).expect("parses");
            assert!(!m.metadata.authentic_data);
        }

        assert!(synthesize(b"junk", &found, 30, 512).is_none());
        assert!(synthesize(&asked, b"junk", 30, 512).is_none());
    }

    #[test]
    fn only_the_clients_own_first_search_domain_is_completed() {
        let (c, _) = completion(&["corp.example"]);
        let pod: IpAddr = "10.1.0.5".parse().expect("ip");
        let other: IpAddr = "10.1.0.6".parse().expect("ip");
        let w = |n: &str| zone_to_wire(n);
        let n = w("api.github.com.team-a.svc.cluster.local");
        let walk = c.walk(&n, 1, false, pod).expect("eligible");
        assert_eq!(
            names(&c, walk, &n),
            [
                "api.github.com.svc.cluster.local.",
                "api.github.com.cluster.local.",
                "api.github.com.corp.example.",
                "api.github.com."
            ]
        );
        assert!(c.walk(&n, 28, false, pod).is_some(), "AAAA");
        assert!(c.walk(&n, 16, false, pod).is_none(), "TXT not configured");
        assert!(c.walk(&n, 1, true, pod).is_none(), "DO bit");
        assert!(c.walk(&n, 1, false, other).is_none(), "unknown client");
        let foreign = w("api.github.com.team-b.svc.cluster.local");
        assert!(
            c.walk(&foreign, 1, false, pod).is_none(),
            "another namespace's domain"
        );
        let bare = w("team-a.svc.cluster.local");
        assert!(
            c.walk(&bare, 1, false, pod).is_none(),
            "nothing before the namespace"
        );
        assert!(c.walk(&w("svc.cluster.local"), 1, false, pod).is_none());
        assert!(c.walk(&w("x.svc.cluster.local"), 1, false, pod).is_none());
        assert!(c
            .walk(&w("a.team-a.svc.other.local"), 1, false, pod)
            .is_none());
        assert!(c
            .walk(&w("a.xteam-a.svc.cluster.local"), 1, false, pod)
            .is_none());
        assert!(c.walk(&[3, b'a'], 1, false, pod).is_none(), "broken name");
    }

    /// Issue 27: the walk follows the pod's own resolver settings from its spec: its
    /// `dnsConfig.searches` after the cluster's (ClusterFirst), only its own (None, where the
    /// first of them is the domain completed), and its `ndots` (a name with as many dots
    /// was tried as it is first, so the bare name is not asked again).
    #[test]
    fn the_walk_follows_the_pods_own_search_list_and_ndots() {
        use crate::kubernetes::{PodDns, PodInfo};
        let (c, pods) = completion(&["corp.example"]);
        let w = |n: &str| zone_to_wire(n);
        let info = |ns: &str, search, ndots| PodInfo {
            namespace: Arc::from(ns),
            dns: Arc::new(PodDns { search, ndots }),
        };
        let mut t = HashMap::new();
        // ClusterFirst with an extra search domain and ndots 2.
        t.insert(
            "10.1.0.5".parse().expect("ip"),
            info(
                "team-a",
                PodSearch::Cluster {
                    extra: vec![w("extra.example"), w("corp.example")],
                },
                2,
            ),
        );
        // dnsPolicy None with its own list.
        t.insert(
            "10.1.0.7".parse().expect("ip"),
            info(
                "team-b",
                PodSearch::Own(vec![w("a.internal"), w("b.internal")]),
                1,
            ),
        );
        // dnsPolicy Default: the node's resolver, never completed.
        t.insert(
            "10.1.0.8".parse().expect("ip"),
            info("team-c", PodSearch::Node, 5),
        );
        pods.replace_pods(t);
        let (a, b, d): (IpAddr, IpAddr, IpAddr) = (
            "10.1.0.5".parse().expect("ip"),
            "10.1.0.7".parse().expect("ip"),
            "10.1.0.8".parse().expect("ip"),
        );
        // Two dots, ndots 2: the bare name was tried first, and is not asked again.
        let n = w("api.github.com.team-a.svc.cluster.local");
        let walk = c.walk(&n, 1, false, a).expect("eligible");
        assert_eq!(
            names_for(&c, "10.1.0.5", walk, &n),
            [
                "api.github.com.svc.cluster.local.",
                "api.github.com.cluster.local.",
                "api.github.com.corp.example.",
                "api.github.com.extra.example.",
            ],
            "the pod's extra domain after the node's, the duplicate once, no bare name"
        );
        // One dot: under ndots, so the bare name comes last.
        let n = w("db.prod.team-a.svc.cluster.local");
        let walk = c.walk(&n, 1, false, a).expect("eligible");
        assert_eq!(
            names_for(&c, "10.1.0.5", walk, &n)
                .last()
                .map(String::as_str),
            Some("db.prod.")
        );
        // dnsPolicy None: its first search domain is the one completed, its second next.
        let n = w("db.a.internal");
        let walk = c.walk(&n, 1, false, b).expect("eligible");
        assert_eq!(
            names_for(&c, "10.1.0.7", walk, &n),
            ["db.b.internal.", "db."]
        );
        let n = w("api.github.com.a.internal");
        let walk = c.walk(&n, 1, false, b).expect("eligible");
        assert_eq!(
            names_for(&c, "10.1.0.7", walk, &n),
            ["api.github.com.b.internal."],
            "two dots, ndots 1: the bare name was tried first"
        );
        assert!(
            c.walk(&w("x.team-b.svc.cluster.local"), 1, false, b)
                .is_none(),
            "not its first domain"
        );
        assert!(
            c.walk(&w("a.internal"), 1, false, b).is_none(),
            "nothing before it"
        );
        assert!(
            c.walk(&w("xa.internal"), 1, false, b).is_none(),
            "not a label boundary"
        );
        assert!(
            c.walk(&w("x.team-c.svc.cluster.local"), 1, false, d)
                .is_none(),
            "dnsPolicy Default"
        );
    }
}
