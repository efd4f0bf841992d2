//! The pods of this node, from the API server: pod IP -> namespace, for search-path
//! completion (docs/search-completion.md).
//!
//! One watch per proxy, on `pods` with the field selector `spec.nodeName=<node>` (and
//! finished pods left out), so the API server sends each node only its own pods' changes:
//! not ConfigMaps, which would carry every pod's churn to every node. Each pod is decoded
//! into [`PodAddresses`] (metadata, host network, phase, IPs; the rest of the object is
//! skipped while parsing) and reduced at once to its namespace and IPs. Host-network pods
//! are left out: their address is the node's, shared by every such pod.
//!
//! The API server being away never affects answering: the table is swapped in whole after
//! each change, the last one stays while the watch retries, and a pod not (yet) in it just
//! gets no completion.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::KubernetesConfig;

pub mod namespaces;

/// A pod as the watch decodes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, Resource)]
#[resource(inherit = "Pod")]
pub struct PodAddresses {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodAddressesSpec,
    #[serde(default)]
    pub status: PodAddressesStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodAddressesSpec {
    pub host_network: Option<bool>,
    pub dns_policy: Option<String>,
    pub dns_config: Option<PodDnsConfig>,
}

/// `spec.dnsConfig`: what completion needs of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PodDnsConfig {
    pub searches: Option<Vec<String>>,
    pub options: Option<Vec<PodDnsOption>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PodDnsOption {
    pub name: String,
    pub value: Option<String>,
}

/// How a pod's stub resolver searches, from its spec (`dnsPolicy`, `dnsConfig`), as the
/// kubelet writes its resolv.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodSearch {
    /// `ClusterFirst` (the default): `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`, the
    /// node's search domains, then `dnsConfig.searches` (here, in wire form).
    Cluster { extra: Vec<Vec<u8>> },
    /// `None`: `dnsConfig.searches` only (wire form), in order.
    Own(Vec<Vec<u8>>),
    /// `Default`: the node's resolv.conf, no cluster domains: never completed.
    Node,
}

/// A pod's resolver settings completion follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDns {
    pub search: PodSearch,
    /// A name with at least this many dots is tried as it is first (and not again after
    /// the search list): `dnsConfig`'s `ndots`, else 5 (the kubelet's) with ClusterFirst,
    /// 1 (the stub resolver's) with None.
    pub ndots: u8,
}

impl Default for PodDns {
    fn default() -> Self {
        PodDns {
            search: PodSearch::Cluster { extra: Vec::new() },
            ndots: 5,
        }
    }
}

impl PodDns {
    /// From a pod's spec; at most 32 search domains, as Kubernetes allows.
    pub fn of(spec: &PodAddressesSpec) -> PodDns {
        let cfg = spec.dns_config.as_ref();
        let searches: Vec<Vec<u8>> = cfg
            .and_then(|c| c.searches.as_ref())
            .map(|s| {
                s.iter()
                    .filter_map(|d| crate::config::normalize_zone(d).ok())
                    .filter(|d| d != ".")
                    .take(32)
                    .map(|d| crate::route::zone_to_wire(&d))
                    .collect()
            })
            .unwrap_or_default();
        let ndots = cfg
            .and_then(|c| c.options.as_ref())
            .and_then(|o| o.iter().rev().find(|o| o.name == "ndots"))
            .and_then(|o| o.value.as_deref()?.trim().parse::<u8>().ok())
            .map(|n| n.min(15));
        match spec.dns_policy.as_deref() {
            Some("None") => PodDns {
                search: PodSearch::Own(searches),
                ndots: ndots.unwrap_or(1),
            },
            Some("Default") => PodDns {
                search: PodSearch::Node,
                ndots: ndots.unwrap_or(1),
            },
            _ => PodDns {
                search: PodSearch::Cluster { extra: searches },
                ndots: ndots.unwrap_or(5),
            },
        }
    }
}

/// What the table knows of one pod address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: Arc<str>,
    pub dns: Arc<PodDns>,
}

pub use crate::config::pod::{PodIp, PodStatus as PodAddressesStatus};

/// Pod IP -> namespace and resolver settings, as last known. Read on the query path (one
/// atomic load), replaced whole by the watch.
#[derive(Default)]
pub struct PodTable {
    by_ip: ArcSwap<HashMap<IpAddr, PodInfo>>,
}

impl PodTable {
    /// The namespace of the pod with this address, if it is one of this node's.
    pub fn namespace_of(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.pod(ip).map(|p| p.namespace)
    }

    /// Calls `f` with the namespace of the pod with this address, if it is one of this
    /// node's (no copy: the query path's lookup).
    #[inline]
    pub fn with_namespace(&self, ip: IpAddr, f: impl FnOnce(&str)) {
        let table = self.by_ip.load();
        if table.is_empty() {
            return;
        }
        if let Some(p) = table.get(&ip.to_canonical()) {
            f(&p.namespace);
        }
    }

    /// The pod with this address, if it is one of this node's.
    pub fn pod(&self, ip: IpAddr) -> Option<PodInfo> {
        self.by_ip.load().get(&ip.to_canonical()).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_ip.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the table with pods of these namespaces, each with the default resolver
    /// settings (ClusterFirst, ndots 5): tests.
    pub fn replace(&self, table: HashMap<IpAddr, Arc<str>>) {
        let dns = Arc::new(PodDns::default());
        self.replace_pods(
            table
                .into_iter()
                .map(|(ip, namespace)| {
                    (
                        ip,
                        PodInfo {
                            namespace,
                            dns: dns.clone(),
                        },
                    )
                })
                .collect(),
        );
    }

    /// Replaces the table (the watch).
    pub fn replace_pods(&self, table: HashMap<IpAddr, PodInfo>) {
        self.by_ip.store(Arc::new(table));
    }
}

/// The watch's own metrics.
#[derive(Clone, Default)]
pub struct WatchMetrics {
    pub pod_ips: Gauge,
    pub synced: Gauge,
    pub events: Counter,
    pub errors: Counter,
}

impl WatchMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "kubernetes_pod_ips",
            "Pod IPs of this node known from the pod watch (host-network pods left out)",
            self.pod_ips.clone(),
        );
        r.register(
            "kubernetes_pod_watch_synced",
            "1 once the pod watch has listed this node's pods (0 before, or while it is not configured)",
            self.synced.clone(),
        );
        r.register(
            "kubernetes_pod_watch_events",
            "Pod watch events received",
            self.events.clone(),
        );
        r.register(
            "kubernetes_pod_watch_errors",
            "Pod watch failures (API server unreachable, refused, or sent something unreadable); the last known pods are kept",
            self.errors.clone(),
        );
    }
}

/// A pod reduced to what completion uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodEntry {
    namespace: Arc<str>,
    dns: Arc<PodDns>,
    ips: Vec<IpAddr>,
}

/// Watch events folded into this node's pods.
#[derive(Default)]
pub struct PodState {
    pods: HashMap<(String, String), PodEntry>,
    /// Pods listed since the last `Init`, replacing `pods` at `InitDone`.
    relist: Option<HashMap<(String, String), PodEntry>>,
    synced: bool,
    /// One allocation per namespace name, shared by its pods.
    namespaces: HashMap<String, Arc<str>>,
}

impl PodState {
    /// Applies one event; true when the table changed (or was listed for the first time).
    pub fn apply(&mut self, event: watcher::Event<PodAddresses>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                let entry = self.reduce(&pod);
                if let (Some(list), Some(key)) = (self.relist.as_mut(), key(&pod)) {
                    if let Some(e) = entry {
                        list.insert(key, e);
                    }
                }
                false
            }
            watcher::Event::InitDone => {
                let first = !self.synced;
                self.synced = true;
                let changed = match self.relist.take() {
                    Some(list) if list != self.pods => {
                        self.pods = list;
                        true
                    }
                    _ => first,
                };
                self.forget_unused_namespaces();
                changed
            }
            watcher::Event::Apply(pod) => {
                let Some(k) = key(&pod) else {
                    return false;
                };
                match self.reduce(&pod) {
                    Some(e) => self.pods.insert(k, e.clone()) != Some(e),
                    None => self.pods.remove(&k).is_some(),
                }
            }
            watcher::Event::Delete(pod) => {
                let removed = key(&pod).is_some_and(|k| self.pods.remove(&k).is_some());
                if removed {
                    self.forget_unused_namespaces();
                }
                removed
            }
        }
    }

    /// Drops the names no pod refers to any more (the map's own reference is the only
    /// one left). Namespaces on one node are few: a pass over them per deleted pod.
    fn forget_unused_namespaces(&mut self) {
        self.namespaces.retain(|_, n| Arc::strong_count(n) > 1);
    }

    /// How many namespace names are kept.
    #[cfg(test)]
    fn interned_namespaces(&self) -> usize {
        self.namespaces.len()
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Pod IP -> the pod.
    pub fn table(&self) -> HashMap<IpAddr, PodInfo> {
        let mut t = HashMap::with_capacity(self.pods.len() * 2);
        for e in self.pods.values() {
            for ip in &e.ips {
                t.insert(
                    *ip,
                    PodInfo {
                        namespace: e.namespace.clone(),
                        dns: e.dns.clone(),
                    },
                );
            }
        }
        t
    }

    /// `None` for pods completion cannot use: host network, finished, or without an IP yet.
    fn reduce(&mut self, pod: &PodAddresses) -> Option<PodEntry> {
        if pod.spec.host_network.unwrap_or(false) || pod.status.finished() {
            return None;
        }
        let ns = pod
            .metadata
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())?;
        let ips = pod.status.ips();
        if ips.is_empty() {
            return None;
        }
        let namespace = self
            .namespaces
            .entry(ns.to_string())
            .or_insert_with(|| Arc::from(ns))
            .clone();
        Some(PodEntry {
            namespace,
            dns: Arc::new(PodDns::of(&pod.spec)),
            ips,
        })
    }
}

fn key(pod: &PodAddresses) -> Option<(String, String)> {
    Some((
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone()?,
    ))
}

/// The watch's field selector: this node's pods, finished ones left out (they have given
/// their IPs back, and another pod may have one now).
pub fn field_selector(node: &str) -> String {
    format!(
        "spec.nodeName={node},{}",
        crate::config::pod::LIVE_PODS_SELECTOR
    )
}

/// The watch: this node's pods. Lists are served from the API server's watch cache
/// (resourceVersion=0, which indexes pods by spec.nodeName) rather than read from etcd: a
/// DaemonSet rollout on thousands of nodes must not be thousands of quorum reads of every
/// pod. Unpaged: kube leaves resourceVersion=0 out of a list with a page size (a paged
/// list is a quorum read), and the watch cache ignores a limit anyway; one node's pods
/// are a small list.
pub fn watch_config(node: &str) -> watcher::Config {
    let mut c = watcher::Config::default()
        .fields(&field_selector(node))
        .any_semantic();
    c.page_size = None;
    c
}

/// A client for the API server: `kubeconfig` if set, else in-cluster, else `$KUBECONFIG`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Runs the watch until `stop`: builds a client (retried with backoff while the API
/// server's address or credentials are not available), then follows the node's pods.
pub async fn run(
    cfg: KubernetesConfig,
    node: String,
    table: Arc<PodTable>,
    metrics: WatchMetrics,
    stop: CancellationToken,
) {
    let mut wait = Duration::from_secs(1);
    let client = loop {
        match client(cfg.kubeconfig.as_deref()).await {
            Ok(c) => break c,
            Err(error) => {
                metrics.errors.inc();
                tracing::warn!(%error, retry_in = ?wait, "no Kubernetes API client for the pod watch");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    };
    let events = watcher(Api::<PodAddresses>::all(client), watch_config(&node)).default_backoff();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = follow(events, &table, &metrics) => {}
    }
}

/// The event loop of [`run`], over any event stream (tests feed their own).
pub async fn follow(
    events: impl Stream<Item = Result<watcher::Event<PodAddresses>, watcher::Error>>,
    table: &PodTable,
    metrics: &WatchMetrics,
) {
    let mut events = std::pin::pin!(events);
    let mut state = PodState::default();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                metrics.events.inc();
                let was_synced = state.synced();
                if state.apply(ev) && state.synced() {
                    let t = state.table();
                    metrics.pod_ips.set(t.len() as i64);
                    table.replace_pods(t);
                }
                if !was_synced && state.synced() {
                    metrics.synced.set(1);
                    tracing::info!(pod_ips = table.len(), "pod watch synced");
                }
            }
            Err(error) => {
                metrics.errors.inc();
                tracing::warn!(%error, "pod watch failed; keeping the last known pods and retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests;
