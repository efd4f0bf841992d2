//! The pod watch against a mocked API server (tower-test), and its folding as a pure
//! function.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

use super::*;

fn pod(ns: &str, name: &str, ips: &[&str], host_network: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
            "resourceVersion": "5", "labels": {"app": "x"},
            "managedFields": [{"manager": "kubelet"}]},
        "spec": {"nodeName": "node-a", "hostNetwork": host_network,
            "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ips.first().copied().unwrap_or(""),
            "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
    })
}

fn decode(v: Value) -> PodAddresses {
    serde_json::from_value(v).expect("pod")
}

/// A pod of the node, not on the host network, with one address, as the watch decodes it.
fn running(ns: &str, name: &str, ip: &str) -> PodAddresses {
    decode(pod(ns, name, &[ip], false))
}

#[test]
fn folds_events_into_ip_to_namespace() {
    let mut s = PodState::default();
    assert!(!s.apply(watcher::Event::Init));
    assert!(!s.apply(watcher::Event::InitApply(decode(pod(
        "team-a",
        "web-0",
        &["10.1.0.5", "fd00::5"],
        false
    )))));
    assert!(!s.apply(watcher::Event::InitApply(decode(pod(
        "kube-system",
        "proxy",
        &["192.168.0.10"],
        true
    )))));
    assert!(
        s.apply(watcher::Event::InitDone),
        "first listing is a change"
    );
    let t = s.table();
    assert_eq!(t.len(), 2, "host-network pod left out: {t:?}");
    assert_eq!(
        t[&"10.1.0.5".parse::<IpAddr>().expect("ip")]
            .namespace
            .as_ref(),
        "team-a"
    );
    assert_eq!(
        t[&"fd00::5".parse::<IpAddr>().expect("ip")]
            .namespace
            .as_ref(),
        "team-a"
    );

    // Same pod again: no change. A new pod: change. Deleted: change.
    assert!(!s.apply(watcher::Event::Apply(decode(pod(
        "team-a",
        "web-0",
        &["fd00::5", "10.1.0.5"],
        false
    )))));
    assert!(s.apply(watcher::Event::Apply(running(
        "team-b", "api-0", "10.1.0.6"
    ))));
    assert_eq!(s.table().len(), 3);
    let mut done = pod("team-b", "api-0", &["10.1.0.6"], false);
    done["status"]["phase"] = json!("Succeeded");
    assert!(
        s.apply(watcher::Event::Apply(decode(done))),
        "finished pod removed"
    );
    assert_eq!(s.table().len(), 2);
    assert!(s.apply(watcher::Event::Delete(decode(pod(
        "team-a",
        "web-0",
        &[],
        false
    )))));
    assert!(s.table().is_empty());

    // A pod without an IP yet is not kept; it is once it has one.
    assert!(!s.apply(watcher::Event::Apply(decode(pod(
        "team-c",
        "new",
        &[],
        false
    )))));
    assert!(s.apply(watcher::Event::Apply(running("team-c", "new", "10.1.0.9"))));
    // A relist that finds the same pods is no change.
    s.apply(watcher::Event::Init);
    s.apply(watcher::Event::InitApply(running(
        "team-c", "new", "10.1.0.9",
    )));
    assert!(!s.apply(watcher::Event::InitDone));
}

/// A fake API server for `GET /api/v1/pods`: the list, then one watch answered with
/// `events`; later watches are held open (as a quiet API server does). `fail` answers
/// every request with 500 once set.
struct FakeApi {
    selectors: Arc<std::sync::Mutex<Vec<String>>>,
}

fn fake_api(list: Vec<Value>, events: Vec<Value>, fail_after_list: bool) -> (Client, FakeApi) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let selectors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = selectors.clone();
    tokio::spawn(async move {
        let mut events = Some(events);
        let mut held = Vec::new();
        let mut listed = false;
        while let Some((req, respond)) = handle.next_request().await {
            let uri = req.uri().to_string();
            assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
            seen.lock().expect("lock").push(uri.clone());
            let ok = |body: Vec<u8>| {
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("response")
            };
            if fail_after_list && listed {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "InternalError", "code": 500});
                respond.send_response(
                    Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Body::from(serde_json::to_vec(&status).expect("json")))
                        .expect("response"),
                );
            } else if uri.contains("watch=true") {
                match events.take() {
                    Some(evs) => {
                        let mut body = Vec::new();
                        for e in evs {
                            body.extend(serde_json::to_vec(&e).expect("json"));
                            body.push(b'\n');
                        }
                        respond.send_response(ok(body));
                    }
                    None => held.push(respond),
                }
            } else {
                listed = true;
                let l = json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "10"}, "items": list.clone()});
                respond.send_response(ok(serde_json::to_vec(&l).expect("json")));
            }
        }
    });
    (Client::new(service, "default"), FakeApi { selectors })
}

/// Whether `f` turns true within `limit`, polled by the test kit's one loop.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    dot_proxy_testkit::within(limit, || std::future::ready(f())).await
}

/// The pod watch of `node-a` through `client`, filling a table of its own.
fn follow_node_a(client: Client) -> (Arc<PodTable>, WatchMetrics, tokio::task::JoinHandle<()>) {
    let table = Arc::new(PodTable::default());
    let metrics = WatchMetrics::default();
    let events = watcher(Api::<PodAddresses>::all(client), watch_config("node-a"));
    let (t, m) = (table.clone(), metrics.clone());
    let task = tokio::spawn(async move { follow(events, &t, &m).await });
    (table, metrics, task)
}

#[tokio::test]
async fn watch_lists_and_follows_the_nodes_pods() {
    let (client, api) = fake_api(
        vec![
            pod("team-a", "web-0", &["10.1.0.5"], false),
            pod("kube-system", "cni", &["192.168.0.10"], true),
        ],
        vec![
            json!({"type": "ADDED", "object": pod("team-b", "api-0", &["10.1.0.6"], false)}),
            json!({"type": "DELETED", "object": pod("team-a", "web-0", &["10.1.0.5"], false)}),
            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": "12"}}}),
        ],
        false,
    );
    let (table, metrics, task) = follow_node_a(client);
    let b: IpAddr = "10.1.0.6".parse().expect("ip");
    let a: IpAddr = "10.1.0.5".parse().expect("ip");
    assert!(
        until(Duration::from_secs(5), || table.namespace_of(b).is_some()
            && table.namespace_of(a).is_none())
        .await,
        "table follows the watch"
    );
    assert_eq!(table.namespace_of(b).as_deref(), Some("team-b"));
    assert_eq!(metrics.synced.get(), 1);
    assert_eq!(metrics.pod_ips.get(), 1);
    let sel = api.selectors.lock().expect("lock").clone();
    assert!(
        sel.iter()
            .all(|u| u.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "every request is scoped to the node: {sel:?}"
    );
    // Issue 27: the LIST is read from the API server's watch cache, as the docs say
    // (kube drops resourceVersion=0 from a paged list).
    let list = sel
        .iter()
        .find(|u| !u.contains("watch=true"))
        .expect("a list request");
    assert!(
        list.contains("resourceVersion=0") && !list.contains("limit="),
        "the list is served from the watch cache: {list}"
    );
    task.abort();
}

#[tokio::test]
async fn an_api_server_failing_keeps_the_last_table() {
    let (client, _api) = fake_api(
        vec![pod("team-a", "web-0", &["10.1.0.5"], false)],
        vec![],
        true,
    );
    let (table, metrics, task) = follow_node_a(client);
    let a: IpAddr = "10.1.0.5".parse().expect("ip");
    assert!(until(Duration::from_secs(5), || table.namespace_of(a).is_some()).await);
    assert!(
        until(Duration::from_secs(5), || metrics.errors.get() >= 2).await,
        "watch errors counted"
    );
    assert_eq!(table.namespace_of(a).as_deref(), Some("team-a"), "kept");
    // An IPv4 client seen as a v4-mapped IPv6 address is the same pod.
    assert!(table
        .namespace_of("::ffff:10.1.0.5".parse().expect("ip"))
        .is_some());
    task.abort();
}

/// The namespace names shared by pods are dropped with their last pod: a node that sees a
/// namespace per CI run keeps no trace of the finished ones.
#[test]
fn namespace_names_go_with_their_last_pod() {
    let mut s = PodState::default();
    s.apply(watcher::Event::Init);
    s.apply(watcher::Event::InitDone);
    for i in 0..100 {
        let ns = format!("ci-run-{i}");
        s.apply(watcher::Event::Apply(decode(pod(
            &ns,
            "job",
            &[&format!("10.2.0.{i}")],
            false,
        ))));
        s.apply(watcher::Event::Delete(decode(pod(&ns, "job", &[], false))));
    }
    s.apply(watcher::Event::Apply(running(
        "team-a", "web-0", "10.1.0.5",
    )));
    // A relist that no longer has a pod drops its namespace too.
    s.apply(watcher::Event::Apply(running("gone", "x", "10.1.0.7")));
    s.apply(watcher::Event::Init);
    s.apply(watcher::Event::InitApply(running(
        "team-a", "web-0", "10.1.0.5",
    )));
    s.apply(watcher::Event::InitDone);
    assert_eq!(s.interned_namespaces(), 1);
    assert_eq!(s.table().len(), 1);
}

/// Issue 27: the pod's own resolver settings come from its spec: ClusterFirst (the default)
/// with its extra searches and ndots, None with its own searches (ndots 1 unless set),
/// Default never completed.
#[test]
fn resolver_settings_come_from_the_pod_spec() {
    let w = |d: &str| crate::route::zone_to_wire(d);
    let spec = |v: Value| -> PodAddressesSpec { serde_json::from_value(v).expect("spec") };
    let d = PodDns::of(&spec(json!({})));
    assert_eq!(d, PodDns::default());
    let d = PodDns::of(&spec(json!({"dnsConfig": {
        "searches": ["Corp.Example.", "."],
        "options": [{"name": "ndots", "value": "2"}, {"name": "timeout", "value": "1"}]}})));
    assert_eq!(
        d,
        PodDns {
            search: PodSearch::Cluster {
                extra: vec![w("corp.example")]
            },
            ndots: 2
        }
    );
    let d = PodDns::of(&spec(json!({"dnsPolicy": "None", "dnsConfig": {
        "searches": ["a.example", "b.example"]}})));
    assert_eq!(
        d,
        PodDns {
            search: PodSearch::Own(vec![w("a.example"), w("b.example")]),
            ndots: 1
        }
    );
    let d = PodDns::of(&spec(json!({"dnsPolicy": "Default"})));
    assert_eq!(d.search, PodSearch::Node);
    // Junk values are ignored, never fatal.
    let d = PodDns::of(&spec(json!({"dnsConfig": {
        "searches": ["", "bad..name"], "options": [{"name": "ndots", "value": "many"}]}})));
    assert_eq!(d, PodDns::default());
}
