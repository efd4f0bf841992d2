//! The operator's view of the cluster: annotated pods and node labels, kept small, published
//! as debounced snapshots.
//!
//! Pods are watched with a field selector that leaves out finished pods, and decoded into
//! [`PodLite`] (metadata, node name, host network, pod IPs: the rest of each object is skipped
//! while parsing), then reduced at once to [`PodInfo`], and only pods carrying a
//! `dns.dot-proxy.io/` annotation are kept. A metadata-only watch cannot be used for pods,
//! because the node name and the IPs are not metadata. Nodes are watched metadata-only (the
//! labels are all `target.nodeSelector` needs), and so are namespaces (their labels are what
//! the grants' `namespaceSelector`s match, issue 27).

mod debounce;
mod pod;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use debounce::Debouncer;
pub use pod::{pods_from_text, PodInfo, PodIpLite, PodKey, PodLite, PodLiteSpec, PodLiteStatus};

use crate::metrics::Metrics;

/// Node name -> that node's labels.
pub type NodeLabels = BTreeMap<String, BTreeMap<String, String>>;
/// Namespace name -> that namespace's labels (for the grants' namespace selectors).
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// What rendering sees of the cluster at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Both watches have listed everything at least once. Until then nothing is written: an
    /// empty pod list would wipe every node's overrides.
    pub synced: bool,
    /// Annotated pods, sorted by namespace and name.
    pub pods: Vec<PodInfo>,
    pub nodes: NodeLabels,
    pub namespaces: NamespaceLabels,
}

/// Watch events folded into the current set of annotated pods and node labels.
#[derive(Debug, Default)]
pub struct ClusterState {
    pods: BTreeMap<PodKey, PodInfo>,
    pods_relist: Option<BTreeMap<PodKey, PodInfo>>,
    pods_synced: bool,
    nodes: LabelView,
    namespaces: LabelView,
}

/// The labels of one kind of object (nodes, namespaces) by name, from a metadata-only watch.
#[derive(Debug, Default)]
struct LabelView {
    current: BTreeMap<String, BTreeMap<String, String>>,
    relist: Option<BTreeMap<String, BTreeMap<String, String>>>,
    synced: bool,
}

impl LabelView {
    /// Applies one watch event; true when an object appeared, went, or changed labels.
    fn apply<K>(&mut self, event: watcher::Event<PartialObjectMeta<K>>) -> bool {
        fn upsert<K>(
            map: &mut BTreeMap<String, BTreeMap<String, String>>,
            o: PartialObjectMeta<K>,
        ) -> bool {
            let name = o.metadata.name.unwrap_or_default();
            let labels = o.metadata.labels.unwrap_or_default();
            map.insert(name, labels.clone()).as_ref() != Some(&labels)
        }
        match event {
            watcher::Event::Apply(o) => upsert(&mut self.current, o),
            watcher::Event::Delete(o) => self
                .current
                .remove(&o.metadata.name.unwrap_or_default())
                .is_some(),
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                upsert(self.relist.get_or_insert_with(BTreeMap::new), o);
                false
            }
            watcher::Event::InitDone => {
                let relisted = self.relist.take().unwrap_or_default();
                let changed = relisted != self.current || !self.synced;
                self.current = relisted;
                self.synced = true;
                changed
            }
        }
    }
}

impl ClusterState {
    /// Applies one pod watch event; true when what rendering sees has changed.
    pub fn apply_pod(&mut self, event: watcher::Event<PodLite>) -> bool {
        match event {
            watcher::Event::Apply(pod) => upsert_pod(&mut self.pods, &pod),
            watcher::Event::Delete(pod) => {
                let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                self.pods.remove(&key).is_some()
            }
            watcher::Event::Init => {
                self.pods_relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                upsert_pod(self.pods_relist.get_or_insert_with(BTreeMap::new), &pod);
                false
            }
            watcher::Event::InitDone => {
                let relisted = self.pods_relist.take().unwrap_or_default();
                let changed = relisted != self.pods || !self.pods_synced;
                self.pods = relisted;
                self.pods_synced = true;
                changed
            }
        }
    }

    /// Applies one node (metadata) watch event; true when a node appeared, went, or changed labels.
    pub fn apply_node(&mut self, event: watcher::Event<PartialObjectMeta<Node>>) -> bool {
        self.nodes.apply(event)
    }

    /// Applies one namespace (metadata) watch event; true when a namespace appeared, went,
    /// or changed labels.
    pub fn apply_namespace(&mut self, event: watcher::Event<PartialObjectMeta<Namespace>>) -> bool {
        self.namespaces.apply(event)
    }

    pub fn synced(&self) -> bool {
        self.pods_synced && self.nodes.synced && self.namespaces.synced
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            synced: self.synced(),
            pods: self.pods.values().cloned().collect(),
            nodes: self.nodes.current.clone(),
            namespaces: self.namespaces.current.clone(),
        }
    }
}

fn upsert_pod(pods: &mut BTreeMap<PodKey, PodInfo>, pod: &PodLite) -> bool {
    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
    match PodInfo::from_lite(pod) {
        Some(info) => pods.insert(key, info.clone()).as_ref() != Some(&info),
        None => pods.remove(&key).is_some(),
    }
}

/// Field selector of the pod watch: finished pods have given their IPs back.
pub const POD_FIELD_SELECTOR: &str = dot_proxy_config::pod::LIVE_PODS_SELECTOR;

/// Runs the pod, node and namespace watches until `tx` has no receivers, publishing a
/// snapshot when all have synced and then at most once per debounce window.
pub async fn run(
    client: Client,
    quiet: Duration,
    tx: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
) {
    let pod_config = watcher::Config::default()
        .fields(POD_FIELD_SELECTOR)
        .page_size(500);
    let pods = watcher(Api::<PodLite>::all(client.clone()), pod_config).default_backoff();
    // `Api<PartialObjectMeta<_>>` makes metadata-only requests.
    let nodes = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let namespaces = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    follow(pods, nodes, namespaces, quiet, tx, metrics).await;
}

/// The event loop of [`run`], over any three event streams (tests feed their own).
pub async fn follow(
    pods: impl Stream<Item = Result<watcher::Event<PodLite>, watcher::Error>>,
    nodes: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<Node>>, watcher::Error>>,
    namespaces: impl Stream<Item = Result<watcher::Event<PartialObjectMeta<Namespace>>, watcher::Error>>,
    quiet: Duration,
    tx: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
) {
    let mut pods = std::pin::pin!(pods);
    let mut nodes = std::pin::pin!(nodes);
    let mut namespaces = std::pin::pin!(namespaces);
    let mut state = ClusterState::default();
    let mut debouncer = Debouncer::new(quiet, quiet * 5);
    let mut announced = false;
    loop {
        // Changes stay pending until both watches have listed everything once.
        let deadline = if state.synced() {
            debouncer.deadline()
        } else {
            None
        };
        tokio::select! {
            ev = pods.next() => match ev {
                Some(Ok(ev)) => {
                    if state.apply_pod(ev) {
                        debouncer.changed(tokio::time::Instant::now());
                    }
                }
                Some(Err(error)) => {
                    metrics.watch_error("pods");
                    warn!(%error, "pod watch failed; retrying");
                }
                None => return,
            },
            ev = nodes.next() => match ev {
                Some(Ok(ev)) => {
                    if state.apply_node(ev) {
                        debouncer.changed(tokio::time::Instant::now());
                    }
                }
                Some(Err(error)) => {
                    metrics.watch_error("nodes");
                    warn!(%error, "node watch failed; retrying");
                }
                None => return,
            },
            ev = namespaces.next() => match ev {
                Some(Ok(ev)) => {
                    if state.apply_namespace(ev) {
                        debouncer.changed(tokio::time::Instant::now());
                    }
                }
                Some(Err(error)) => {
                    metrics.watch_error("namespaces");
                    warn!(%error, "namespace watch failed; retrying");
                }
                None => return,
            },
            _ = sleep_until(deadline) => {
                debouncer.reset();
                let snapshot = state.snapshot();
                metrics.set_annotated_pods(snapshot.pods.len());
                if !announced {
                    info!(pods = snapshot.pods.len(), nodes = snapshot.nodes.len(), "pod and node watches synced");
                    announced = true;
                } else {
                    debug!(pods = snapshot.pods.len(), "publishing cluster snapshot");
                }
                metrics.snapshot_published();
                tx.send_replace(Arc::new(snapshot));
                if tx.is_closed() {
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One `()` per published snapshot: the trigger that makes the controller reconcile every
/// resource after pod churn.
pub fn changes(rx: watch::Receiver<Arc<Snapshot>>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

#[cfg(test)]
mod tests;
