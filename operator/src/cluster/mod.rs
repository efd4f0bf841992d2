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
    pods: View<PodKey, PodInfo>,
    nodes: View<String, BTreeMap<String, String>>,
    namespaces: View<String, BTreeMap<String, String>>,
}

/// What one watch has shown: a map changed in place by `Apply` and `Delete`, and replaced
/// whole by a relist (`Init`, `InitApply`s, `InitDone`).
#[derive(Debug)]
struct View<K, V> {
    current: BTreeMap<K, V>,
    relist: Option<BTreeMap<K, V>>,
    synced: bool,
}

impl<K, V> Default for View<K, V> {
    fn default() -> Self {
        View {
            current: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Ord, V: PartialEq> View<K, V> {
    /// Applies one watch event; true when the map changed. `upsert` puts an object in a map
    /// (or takes it out) and says whether that changed it; `key` names a deleted object.
    fn apply<O>(
        &mut self,
        event: watcher::Event<O>,
        upsert: fn(&mut BTreeMap<K, V>, O) -> bool,
        key: fn(&O) -> K,
    ) -> bool {
        match event {
            watcher::Event::Apply(o) => upsert(&mut self.current, o),
            watcher::Event::Delete(o) => self.current.remove(&key(&o)).is_some(),
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

/// The labels of an object from a metadata-only watch (nodes, namespaces), by name.
fn upsert_labels<K>(
    map: &mut BTreeMap<String, BTreeMap<String, String>>,
    o: PartialObjectMeta<K>,
) -> bool {
    let name = o.metadata.name.unwrap_or_default();
    let labels = o.metadata.labels.unwrap_or_default();
    map.insert(name, labels.clone()).as_ref() != Some(&labels)
}

fn object_name<K>(o: &PartialObjectMeta<K>) -> String {
    o.metadata.name.clone().unwrap_or_default()
}

impl ClusterState {
    /// Applies one pod watch event; true when what rendering sees has changed.
    pub fn apply_pod(&mut self, event: watcher::Event<PodLite>) -> bool {
        self.pods.apply(event, upsert_pod, pod_key)
    }

    /// Applies one node (metadata) watch event; true when a node appeared, went, or changed labels.
    pub fn apply_node(&mut self, event: watcher::Event<PartialObjectMeta<Node>>) -> bool {
        self.nodes.apply(event, upsert_labels, object_name)
    }

    /// Applies one namespace (metadata) watch event; true when a namespace appeared, went,
    /// or changed labels.
    pub fn apply_namespace(&mut self, event: watcher::Event<PartialObjectMeta<Namespace>>) -> bool {
        self.namespaces.apply(event, upsert_labels, object_name)
    }

    pub fn synced(&self) -> bool {
        self.pods.synced && self.nodes.synced && self.namespaces.synced
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            synced: self.synced(),
            pods: self.pods.current.values().cloned().collect(),
            nodes: self.nodes.current.clone(),
            namespaces: self.namespaces.current.clone(),
        }
    }
}

fn pod_key(pod: &PodLite) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

fn upsert_pod(pods: &mut BTreeMap<PodKey, PodInfo>, pod: PodLite) -> bool {
    let key = pod_key(&pod);
    match PodInfo::from_lite(&pod) {
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
        let changed = tokio::select! {
            ev = pods.next() => watch_event(ev, |e| state.apply_pod(e), ("pods", "pod"), &metrics),
            ev = nodes.next() => watch_event(ev, |e| state.apply_node(e), ("nodes", "node"), &metrics),
            ev = namespaces.next() => {
                watch_event(ev, |e| state.apply_namespace(e), ("namespaces", "namespace"), &metrics)
            }
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
                Some(false)
            }
        };
        match changed {
            Some(true) => debouncer.changed(tokio::time::Instant::now()),
            Some(false) => {}
            None => return,
        }
    }
}

/// What a watch's next item did: `Some(true)` when it changed the state, `None` when the
/// stream ended. An error is counted and logged (`watch` is the metric's label, `kind` the
/// log's word); the watcher retries by itself.
fn watch_event<K>(
    ev: Option<Result<watcher::Event<K>, watcher::Error>>,
    apply: impl FnOnce(watcher::Event<K>) -> bool,
    (watch, kind): (&'static str, &str),
    metrics: &Metrics,
) -> Option<bool> {
    match ev? {
        Ok(ev) => Some(apply(ev)),
        Err(error) => {
            metrics.watch_error(watch);
            warn!(%error, "{kind} watch failed; retrying");
            Some(false)
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
