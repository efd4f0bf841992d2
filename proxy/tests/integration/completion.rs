//! Search-path completion and AAAA filtering through a real proxy: a stand-in cluster DNS
//! (plain UDP, in process) serving `cluster.local` and a host search domain, the DoT
//! upstream for everything else, and the pod table filled as the pod watch fills it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::support::*;
use dot_proxy::config::{Config, Dur, Policy, UpstreamGroup, UpstreamServer, ZoneRoute};

/// A cluster DNS: A records for `names`, NODATA for their other types and for the names
/// above them, NXDOMAIN (SOA minimum 5 s) for everything else in its zones. Counts queries.
pub struct ClusterDns {
    pub addr: SocketAddr,
    pub queries: AtomicUsize,
    pub asked: Mutex<Vec<String>>,
}

pub const ZONES: [&str; 2] = ["cluster.local", "corp.internal"];

/// The records of the stand-in: services, a headless service's pod, a host-domain name.
pub const RECORDS: [(&str, [u8; 4]); 5] = [
    ("web.team-a.svc.cluster.local.", [10, 96, 0, 10]),
    ("db.other.svc.cluster.local.", [10, 96, 0, 11]),
    ("web-0.web.team-a.svc.cluster.local.", [10, 244, 0, 7]),
    ("kubernetes.default.svc.cluster.local.", [10, 96, 0, 1]),
    ("intranet.corp.internal.", [10, 50, 0, 1]),
];

impl ClusterDns {
    pub async fn start() -> Arc<ClusterDns> {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let me = Arc::new(ClusterDns {
            addr: sock.local_addr().expect("addr"),
            queries: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
        });
        let dns = me.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                dns.queries.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = dns.answer(&buf[..n]) {
                    let _ = sock.send_to(&r, peer).await;
                }
            }
        });
        me
    }

    pub fn answer(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let q = Message::from_vec(raw).ok()?;
        let query = q.queries.first()?.clone();
        let name = query.name().to_lowercase().to_ascii();
        self.asked
            .lock()
            .expect("lock")
            .push(format!("{name} {}", query.query_type()));
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = q.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.authoritative = true;
        m.add_query(query.clone());
        if q.edns.is_some() {
            m.set_edns(Edns::new());
        }
        let zone = ZONES
            .iter()
            .find(|z| name == format!("{z}.") || name.ends_with(&format!(".{z}.")))?;
        let apex = Name::from_ascii(format!("{zone}.")).ok()?;
        let soa = Record::from_rdata(
            apex.clone(),
            5,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.dns.").ok()?,
                Name::from_ascii("hostmaster.").ok()?,
                1,
                7200,
                1800,
                86400,
                5,
            )),
        );
        let exact = RECORDS.iter().find(|(n, _)| *n == name);
        let above = RECORDS
            .iter()
            .any(|(n, _)| n.ends_with(&format!(".{name}")));
        match exact {
            Some((_, ip)) if query.query_type() == RecordType::A => {
                m.add_answer(Record::from_rdata(
                    query.name().clone(),
                    30,
                    RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
                ));
            }
            Some(_) => {
                m.add_authority(soa);
            }
            None if above || name == apex.to_ascii() => {
                m.add_authority(soa);
            }
            None => {
                m.metadata.response_code = ResponseCode::NXDomain;
                m.add_authority(soa);
            }
        }
        m.to_vec().ok()
    }
}

/// The proxy's config: the DoT upstream for `.`, the stand-in for its zones, completion on
/// with `corp.internal` as the node's search domain.
pub fn completion_config(up: &Upstream, cluster: SocketAddr, on: bool) -> Config {
    let mut c = config_for(vec![up.server()]);
    c.upstream_groups.push(UpstreamGroup {
        name: "cluster".into(),
        policy: Policy::Failover,
        timeout: Dur::secs(1),
        servers: vec![UpstreamServer::plain(cluster)],
    });
    for z in ZONES {
        c.zones.push(ZoneRoute {
            zone: z.into(),
            group: "cluster".into(),
        });
    }
    c.kubernetes.enabled = true;
    c.kubernetes.node_name = Some("node-a".into());
    // No API server here: the test fills the pod table itself.
    c.kubernetes.kubeconfig = Some("/nonexistent/kubeconfig".into());
    c.search_completion.enabled = on;
    c.search_completion.host_search_domains = vec!["corp.internal".into()];
    c
}

fn pods(entries: &[(&str, &str)]) -> HashMap<IpAddr, Arc<str>> {
    entries
        .iter()
        .map(|(ip, ns)| (ip.parse().expect("ip"), Arc::from(*ns)))
        .collect()
}

fn cname_target(m: &Message) -> Option<String> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii()),
        _ => None,
    })
}

#[tokio::test]
async fn completes_a_pods_search_list_at_the_node() {
    let dns = ClusterDns::start().await;
    let up = Upstream::start().await;
    let p = Proxy::start(completion_config(&up, dns.addr, true)).await;
    p.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));

    // An external name through the pod's first search domain: one answer, a CNAME to
    // the bare name and its address.
    let m = udp(
        p.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "www.example.test.team-a.svc.cluster.local."
    );
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));
    assert_eq!(a_records(&m), vec![std::net::Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(
        m.answers[0].ttl <= 5,
        "CNAME capped by the walked NXDOMAINs' 5 s"
    );
    // The walk asked the stand-in what the client would have: svc.<cd>, <cd>, the host
    // domain, in order.
    let asked = dns.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        [
            "www.example.test.team-a.svc.cluster.local. A",
            "www.example.test.svc.cluster.local. A",
            "www.example.test.cluster.local. A",
            "www.example.test.corp.internal. A",
        ]
    );
    // AAAA: the bare name has no AAAA: a CNAME and NODATA (with the SOA), as the client's
    // own walk would have ended there too.
    let m = udp(
        p.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));
    assert_eq!(m.answers.len(), 1);
    assert!(!m.authorities.is_empty(), "SOA of the NODATA kept");

    // Another namespace's service, and a name in a host search domain.
    let m = udp(p.addr, "db.other.team-a.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        cname_target(&m).as_deref(),
        Some("db.other.svc.cluster.local.")
    );
    assert_eq!(a_records(&m), vec![std::net::Ipv4Addr::new(10, 96, 0, 11)]);
    let m = udp(p.addr, "intranet.team-a.svc.cluster.local.", RecordType::A).await;
    assert_eq!(cname_target(&m).as_deref(), Some("intranet.corp.internal."));

    // Names that exist are answered as they are, without a CNAME.
    for name in [
        "web.team-a.svc.cluster.local.",
        "web-0.web.team-a.svc.cluster.local.",
    ] {
        let m = udp(p.addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(cname_target(&m), None, "{name}");
        assert_eq!(m.answers.len(), 1, "{name}");
    }
    // A name that exists nowhere: NXDOMAIN.
    let m = udp(
        p.addr,
        "nothing-here.team-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let text = p.metrics().await;
    assert_eq!(
        metric_with(
            &text,
            "dot_proxy_search_completions_total",
            "result=\"completed\""
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric_with(
            &text,
            "dot_proxy_search_completions_total",
            "result=\"nxdomain\""
        ),
        1.0
    );
    // www: 4 steps (A), 4 (AAAA); db.other: 1; intranet: 3; nothing-here: 4.
    assert_eq!(
        metric(&text, "dot_proxy_search_completion_steps_total"),
        16.0
    );
    assert_eq!(
        metric(&text, "dot_proxy_search_completion_queries_saved_total"),
        12.0
    );

    // Asked again: every step is a cache hit, the stand-in sees nothing new.
    let before = dns.queries.load(Ordering::SeqCst);
    let m = udp(
        p.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(cname_target(&m).as_deref(), Some("www.example.test."));
    assert_eq!(dns.queries.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn other_clients_and_other_domains_are_answered_as_without_completion() {
    let dns = ClusterDns::start().await;
    let up = Upstream::start().await;
    let p = Proxy::start(completion_config(&up, dns.addr, true)).await;
    let steps = |t: &str| metric(t, "dot_proxy_search_completion_steps_total");

    // Unknown client: no pod has 127.0.0.1.
    p.server.pods().replace(pods(&[("10.1.0.5", "team-a")]));
    let m = udp(
        p.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(steps(&p.metrics().await), 0.0);

    // Known client, but a name under another namespace's domain, a type not completed, a
    // DNSSEC query: as asked.
    p.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));
    let m = udp(
        p.addr,
        "www.example.test.other.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(
        p.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let q = query(
        7,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::A,
        Some((1232, true)),
    );
    let m = Message::from_vec(&udp_raw_answer(p.addr, q).await).expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(steps(&p.metrics().await), 0.0);

    // Off: the pod's own domain is answered as asked.
    let off = Proxy::start(completion_config(&up, dns.addr, false)).await;
    off.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));
    let m = udp(
        off.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn a_failing_step_gives_the_client_its_own_walk_back() {
    // The upstream answers SERVFAIL: the walk reaches the host domain (the stand-in), then
    // the bare name fails: the client gets the asked name's NXDOMAIN and walks itself.
    let dns = ClusterDns::start().await;
    let up = Upstream::start().await;
    up.behaviour.servfail.store(true, Ordering::SeqCst);
    let p = Proxy::start(completion_config(&up, dns.addr, true)).await;
    p.server.pods().replace(pods(&[("127.0.0.1", "team-a")]));
    let m = udp(
        p.addr,
        "www.example.test.team-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.authorities.is_empty(), "the NXDOMAIN's own SOA");
    let text = p.metrics().await;
    assert_eq!(
        metric_with(
            &text,
            "dot_proxy_search_completions_total",
            "result=\"abandoned\""
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn filter_aaaa_answers_nodata_in_its_zones() {
    let dns = ClusterDns::start().await;
    let up = Upstream::start().await;
    let mut cfg = completion_config(&up, dns.addr, false);
    cfg.filter_aaaa.zones = vec!["example.test".into()];
    let p = Proxy::start(cfg).await;
    let before = up.query_count();
    let m = udp(p.addr, "www.example.test.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(up.query_count(), before, "answered at the node");
    // A is untouched, and AAAA outside the zones goes upstream.
    let m = udp(p.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    let m = udp(p.addr, "web.team-a.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(dns
        .asked
        .lock()
        .expect("lock")
        .iter()
        .any(|q| q == "web.team-a.svc.cluster.local. AAAA"));
    let text = p.metrics().await;
    assert_eq!(
        metric_with(
            &text,
            "dot_proxy_policy_actions_total",
            "rule=\"filter_aaaa\""
        ),
        1.0,
        "{text}"
    );
}
