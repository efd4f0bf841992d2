use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::*;

type Events<K> = mpsc::UnboundedSender<Result<Event<K>, watcher::Error>>;

fn pod(name: &str, node: &str, ip: &str, annotations: &[(&str, &str)]) -> PodLite {
    PodLite {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: PodLiteSpec {
            node_name: Some(node.into()),
            host_network: None,
        },
        status: PodLiteStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: None,
        },
    }
}

fn node(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Node> {
    let mut meta = PartialObjectMeta::<Node>::default();
    meta.metadata.name = Some(name.into());
    meta.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    meta
}

const QPS: (&str, &str) = ("dns.dot-proxy.io/qps", "10");

#[test]
fn state_keeps_only_annotated_pods_and_reports_real_changes() {
    let mut s = ClusterState::default();
    assert!(!s.apply_pod(Event::Init));
    assert!(!s.apply_pod(Event::InitApply(pod("a", "n1", "10.0.0.1", &[QPS]))));
    assert!(!s.apply_pod(Event::InitApply(pod("b", "n1", "10.0.0.2", &[]))));
    assert!(s.apply_pod(Event::InitDone), "first listing is a change");
    assert!(!s.synced(), "nodes not listed yet");
    assert!(s.apply_node(Event::InitDone));
    assert!(!s.synced(), "namespaces not listed yet");
    assert!(s.apply_namespace(Event::InitDone));
    assert!(s.synced());
    assert_eq!(s.snapshot().pods.len(), 1);

    // The same pod again (e.g. a readiness flip): nothing rendering sees.
    assert!(!s.apply_pod(Event::Apply(pod("a", "n1", "10.0.0.1", &[QPS]))));
    // An unannotated pod: ignored.
    assert!(!s.apply_pod(Event::Apply(pod("c", "n2", "10.0.0.3", &[]))));
    // New IP: a change.
    assert!(s.apply_pod(Event::Apply(pod("a", "n1", "10.0.0.9", &[QPS]))));
    // Annotation removed: the pod is dropped.
    assert!(s.apply_pod(Event::Apply(pod("a", "n1", "10.0.0.9", &[]))));
    assert!(s.snapshot().pods.is_empty());
    assert!(s.apply_pod(Event::Apply(pod("a", "n1", "10.0.0.9", &[QPS]))));
    assert!(s.apply_pod(Event::Delete(pod("a", "n1", "10.0.0.9", &[QPS]))));
    assert!(!s.apply_pod(Event::Delete(pod("zz", "n1", "10.0.0.9", &[QPS]))));

    // A relist that finds what we had is not a change; one that lost a pod is.
    assert!(s.apply_pod(Event::Apply(pod("a", "n1", "10.0.0.1", &[QPS]))));
    s.apply_pod(Event::Init);
    s.apply_pod(Event::InitApply(pod("a", "n1", "10.0.0.1", &[QPS])));
    assert!(!s.apply_pod(Event::InitDone));
    s.apply_pod(Event::Init);
    assert!(s.apply_pod(Event::InitDone));

    assert!(s.apply_node(Event::Apply(node("n1", &[("pool", "a")]))));
    assert!(!s.apply_node(Event::Apply(node("n1", &[("pool", "a")]))));
    assert!(s.apply_node(Event::Apply(node("n1", &[("pool", "b")]))));
    let want: BTreeMap<String, String> = [("pool".to_string(), "b".to_string())].into();
    assert_eq!(s.snapshot().nodes.get("n1"), Some(&want));
    assert!(s.apply_node(Event::Delete(node("n1", &[]))));
}

struct Harness {
    pods: Events<PodLite>,
    nodes: Events<PartialObjectMeta<Node>>,
    namespaces: Events<PartialObjectMeta<Namespace>>,
    rx: watch::Receiver<Arc<Snapshot>>,
    task: tokio::task::JoinHandle<()>,
}

fn start(quiet: Duration) -> Harness {
    let (pods, pod_rx) = mpsc::unbounded();
    let (nodes, node_rx) = mpsc::unbounded();
    let (namespaces, ns_rx) = mpsc::unbounded();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let metrics = Arc::new(Metrics::default());
    let task = tokio::spawn(follow(pod_rx, node_rx, ns_rx, quiet, tx, metrics));
    Harness {
        pods,
        nodes,
        namespaces,
        rx,
        task,
    }
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Sends `events` to a watch, in order.
fn send<K>(watch: &Events<K>, events: impl IntoIterator<Item = Event<K>>) {
    for e in events {
        watch.unbounded_send(Ok(e)).expect("send");
    }
}

/// Lets the follower take in what was sent, then `d` pass.
async fn settle_then_wait(d: Duration) {
    settle().await;
    tokio::time::sleep(d).await;
}

impl Harness {
    /// Every watch synced (empty), and the first snapshot taken.
    async fn synced(&mut self) {
        send(&self.pods, [Event::Init, Event::InitDone]);
        send(&self.nodes, [Event::Init, Event::InitDone]);
        send(&self.namespaces, [Event::Init, Event::InitDone]);
        settle_then_wait(Duration::from_secs(3)).await;
        assert!(self.rx.has_changed().expect("open"));
        self.rx.borrow_and_update();
    }

    fn changed(&self) -> bool {
        self.rx.has_changed().expect("open")
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_published_before_every_watch_syncs() {
    let mut h = start(Duration::from_secs(2));
    send(
        &h.pods,
        [
            Event::Init,
            Event::InitApply(pod("a", "n1", "10.0.0.1", &[QPS])),
            Event::InitDone,
        ],
    );
    settle_then_wait(Duration::from_secs(60)).await;
    assert!(!h.changed(), "published before the node watch synced");

    send(&h.nodes, [Event::Init, Event::InitDone]);
    settle_then_wait(Duration::from_secs(60)).await;
    assert!(!h.changed(), "published before the namespace watch synced");
    let ns = PartialObjectMeta::<Namespace> {
        metadata: ObjectMeta {
            name: Some("apps".into()),
            labels: Some([("team".to_string(), "a".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    send(
        &h.namespaces,
        [Event::Init, Event::InitApply(ns), Event::InitDone],
    );
    settle_then_wait(Duration::from_millis(2100)).await;
    assert!(h.changed());
    let snap = h.rx.borrow_and_update().clone();
    assert!(snap.synced);
    assert_eq!(snap.pods.len(), 1);
    assert_eq!(snap.namespaces["apps"]["team"], "a");
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_churn_is_published_once() {
    let mut h = start(Duration::from_secs(2));
    h.synced().await;

    // 300 pods created 10 ms apart: 3 s of churn.
    for i in 0..300u32 {
        let ip = format!("10.1.{}.{}", i / 250, i % 250);
        send(
            &h.pods,
            [Event::Apply(pod(&format!("p{i}"), "n1", &ip, &[QPS]))],
        );
        settle_then_wait(Duration::from_millis(10)).await;
        assert!(!h.changed(), "published mid-burst at pod {i}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(h.changed());
    assert_eq!(h.rx.borrow_and_update().pods.len(), 300);

    // Events that change nothing rendering sees publish nothing.
    send(&h.pods, [Event::Apply(pod("p0", "n1", "10.1.0.0", &[QPS]))]);
    settle_then_wait(Duration::from_secs(10)).await;
    assert!(!h.changed());
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn steady_churn_still_publishes_within_the_ceiling() {
    let mut h = start(Duration::from_secs(2));
    h.synced().await;
    // One change per second for 40 s: never 2 s of quiet, yet a publish at most 10 s after
    // the first unpublished change (about every 11 s).
    let mut publishes = 0;
    for i in 0..40u32 {
        let ip = format!("10.2.0.{i}");
        send(
            &h.pods,
            [Event::Apply(pod(&format!("p{i}"), "n1", &ip, &[QPS]))],
        );
        settle_then_wait(Duration::from_secs(1)).await;
        if h.changed() {
            h.rx.borrow_and_update();
            publishes += 1;
        }
    }
    assert_eq!(publishes, 3, "publishes in 40 s");
    h.task.abort();
}
