//! `dot_proxy_namespace_queries_total`: queries by the client pod's namespace, from the
//! pod watch (a fake API server listing 1,000 pods in 200 namespaces, all on loopback
//! addresses the test's clients send from), bounded to the busiest N namespaces and
//! `other`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::support::*;
use dot_proxy_testkit::kube as fake_api;

const PODS: usize = 1_000;
const NAMESPACES: usize = 200;
const TOP: usize = 20;

fn pod_ip(j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 10, (j / 250) as u8, (j % 250) as u8 + 1))
}

/// One query from `from`, answered.
async fn ask(from: IpAddr, to: SocketAddr, name: &str) {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0))
        .await
        .expect("bind pod address");
    let q = query(rand::random(), name, RecordType::A, None);
    sock.send_to(&q, to).await.expect("send");
    let mut buf = [0u8; 1500];
    tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("answer in time")
        .expect("recv");
}

/// The `dot_proxy_namespace_queries_total` series: namespace -> rcode -> value.
fn series(text: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("dot_proxy_namespace_queries_total{"))
    {
        let label = |k: &str| {
            let at = l.find(&format!("{k}=\"")).expect("label") + k.len() + 2;
            l[at..].split('"').next().expect("value").to_string()
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        out.entry(label("namespace"))
            .or_default()
            .insert(label("rcode"), v);
    }
    out
}

#[tokio::test]
async fn the_busiest_namespaces_are_counted_and_the_rest_is_other() {
    // The fake API server: pod j in namespace ns-(j % 200).
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind api");
    let api_addr = api.local_addr().expect("addr");
    let pods = (0..PODS)
        .map(|j| {
            fake_api::pod(
                &format!("pod-{j}"),
                &format!("ns-{}", j % NAMESPACES),
                "node-a",
                &pod_ip(j).to_string(),
                false,
            )
        })
        .collect();
    tokio::spawn(fake_api::api_server(
        api,
        "node-a".into(),
        fake_api::pod_list(pods),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{api_addr}\"}}}}]\nusers: [{{name: u, user: {{token: test}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .expect("kubeconfig");
    let (_up, p) = start_with(|cfg| {
        cfg.kubernetes.enabled = true;
        cfg.kubernetes.node_name = Some("node-a".into());
        cfg.kubernetes.kubeconfig = Some(kubeconfig);
        cfg.kubernetes.namespace_metrics = TOP;
    })
    .await;
    until("pod watch synced", Duration::from_secs(10), || async {
        metric(&p.metrics().await, "dot_proxy_kubernetes_pod_watch_synced") == 1.0
    })
    .await;

    // Every pod asks once; namespace ns-k for k < 25 asks 2 * (25 - k) more, so the
    // busiest are ns-0, ns-1, ... in that order; one NXDOMAIN from ns-3; one query from a
    // client that is no pod of the node.
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for j in 0..PODS {
        ask(pod_ip(j), p.addr, "ttl100.example.test.").await;
        *want.entry(format!("ns-{}", j % NAMESPACES)).or_default() += 1.0;
    }
    for k in 0..25 {
        for _ in 0..2 * (25 - k) {
            ask(pod_ip(k), p.addr, "ttl100.example.test.").await;
            *want.entry(format!("ns-{k}")).or_default() += 1.0;
        }
    }
    ask(pod_ip(3), p.addr, "nx.example.test.").await;
    ask(
        "127.0.0.1".parse().expect("ip"),
        p.addr,
        "ttl100.example.test.",
    )
    .await;

    let got = series(&p.metrics().await);
    let names: BTreeSet<&String> = got.keys().collect();
    assert_eq!(names.len(), TOP + 1, "N namespaces and other: {names:?}");
    for k in 0..TOP {
        let ns = format!("ns-{k}");
        let extra = if k == 3 { 1.0 } else { 0.0 };
        let total: f64 = got.get(&ns).map_or(0.0, |r| r.values().sum());
        assert_eq!(total, want[&ns] + extra, "{ns}");
    }
    assert_eq!(got["ns-3"].get("NXDOMAIN"), Some(&1.0));
    let all: f64 = got.values().flat_map(|r| r.values()).sum();
    let pods_total: f64 = want.values().sum::<f64>() + 1.0;
    assert_eq!(
        all, pods_total,
        "every pod's query counted once, the stranger's not"
    );
    let other: f64 = got["other"].values().sum();
    let top: f64 = (0..TOP).map(|k| want[&format!("ns-{k}")]).sum::<f64>() + 1.0;
    assert_eq!(other, pods_total - top);
}
