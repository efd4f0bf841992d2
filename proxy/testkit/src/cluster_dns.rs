//! A stand-in cluster DNS for the search-completion tests (in process, plain UDP), and the
//! proxy config those tests share.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::dot::{soa, Upstream};
use crate::proxy::config_for;
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
                dns.queries
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
        let soa = soa(&apex, 5, 5);
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
