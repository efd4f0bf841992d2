//! Rendering, as pure functions: a resource and the annotated pods -> the ConfigMap contents.
//!
//! Nothing here talks to the API server, so every case (valid, invalid, each annotation, the
//! 1 MiB limit, a 20,000-pod cluster) is a plain unit test.

pub mod annotations;
mod config;
pub mod grants;
pub mod shards;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use dot_proxy_config::{
    Cidr, ClientGroup, NodeOverrides, OverridesFile, Protocol, RateLimitOverride,
};
use sha2::{Digest, Sha256};

pub use annotations::{AnnotationProblem, PodRequest};
pub use config::{proxy_config, spec_path};
pub use grants::{Grant, Grants};
pub use shards::{
    fnv1a64, shard_key, shard_name, shard_of, PodEntries, MAX_OVERRIDE_SHARDS, MAX_SHARD_BYTES,
};

use crate::cluster::{NamespaceLabels, NodeLabels, PodInfo};
use crate::resource::DotProxyConfigSpec;
use crate::CONFIG_KEY;

/// The data of one ConfigMap to write: a single key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapContent {
    pub name: String,
    pub key: String,
    pub data: String,
    /// SHA-256 (hex) of `data`; also the `dns.dot-proxy.io/config-hash` annotation.
    pub hash: String,
}

impl ConfigMapContent {
    pub fn new(name: String, key: String, data: String) -> Self {
        let hash = sha256_hex(data.as_bytes());
        ConfigMapContent {
            name,
            key,
            data,
            hash,
        }
    }
}

/// The Warning Event on a pod with rate-limit annotations while rate limiting is off.
pub const RATE_LIMIT_DISABLED_MESSAGE: &str = "rate-limit annotations have no effect: spec.rateLimit.enabled is false in the DotProxyConfig (the chart's default; set config.rateLimit.enabled: true)";

/// Event reason on pods whose annotation values were ignored (invalid, or of no effect).
pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
/// Event reason on pods whose annotations their namespace is not granted.
pub const ANNOTATION_NOT_GRANTED: &str = "AnnotationNotGranted";

/// A pod whose annotations were (partly) ignored, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub message: String,
    /// The Event reason: [`INVALID_ANNOTATION`] or [`ANNOTATION_NOT_GRANTED`].
    pub reason: &'static str,
}

/// Figures about one render, for status, metrics and the scale test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Annotated pods looked at.
    pub annotated_pods: usize,
    /// Pods with at least one entry in a shard.
    pub pods_applied: usize,
    /// Pods not on a node matching `target.nodeSelector`.
    pub pods_not_selected: usize,
    /// Pods without a node or an IP yet.
    pub pods_pending: usize,
    /// Rate-limit entries plus client-group entries, over all shards.
    pub entries: usize,
    /// Pods with rate-limit annotations while `rateLimit.enabled` is false (no effect).
    pub rate_limit_annotations_ignored: usize,
    /// Nodes with at least one override.
    pub nodes: usize,
    pub largest_shard_bytes: usize,
    pub total_shard_bytes: usize,
    /// Pods left out because their shard was full at the largest shard count.
    pub overrides_truncated: usize,
}

/// Everything one resource renders to.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The main ConfigMap (key `config.yaml`).
    pub config: ConfigMapContent,
    /// All `target.overrideShards` shards, in order, empty ones included.
    pub shards: Vec<ConfigMapContent>,
    /// SHA-256 (hex) over the shard hashes in order.
    pub overrides_hash: String,
    pub problems: Vec<PodProblem>,
    /// `namespace/name` of the pods left out of a full shard, in name order.
    pub truncated: Vec<String>,
    pub stats: RenderStats,
}

/// Why a resource renders to nothing (the last good ConfigMaps stay).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// The spec itself is wrong; each message names its field.
    #[error("{}", .0.join("; "))]
    Spec(Vec<String>),
    /// A shard could not be serialized (never for its size: overrides that do not fit are
    /// left out instead, see [`shards::layout`]).
    #[error("{0}")]
    OverridesTooLarge(String),
}

impl Invalid {
    /// Short CamelCase reason for the condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Spec(_) => "InvalidSpec",
            Invalid::OverridesTooLarge(_) => "OverridesTooLarge",
        }
    }
}

/// Longest resource name: it becomes a label value, and those stop at 63 characters.
pub const MAX_NAME_LEN: usize = 63;

/// Renders one resource. `pods` need not be sorted; the output does not depend on their order.
/// `nodes` are for `target.nodeSelector`, `namespaces` for the grants' namespace selectors.
pub fn render<'a>(
    name: &str,
    spec: &DotProxyConfigSpec,
    pods: impl IntoIterator<Item = &'a PodInfo>,
    nodes: &NodeLabels,
    namespaces: &NamespaceLabels,
) -> Result<Rendered, Invalid> {
    let mut errs = Vec::new();
    if name.len() > MAX_NAME_LEN {
        errs.push(format!("metadata.name: must be at most {MAX_NAME_LEN} characters (it is used as a label value)"));
    }
    let proxy = match proxy_config(spec) {
        Ok(c) => Some(c),
        Err(e) => {
            errs.extend(e);
            None
        }
    };
    let grants = match Grants::from_spec(spec) {
        Ok(g) => Some(g),
        Err(e) => {
            errs.extend(e);
            None
        }
    };
    let (Some(mut proxy), Some(grants), true) = (proxy, grants, errs.is_empty()) else {
        return Err(Invalid::Spec(errs));
    };
    let cm_name = spec.target.config_map_name.clone();
    let group_usable = |g: &str| {
        match spec.upstream_groups.iter().find(|x| x.name == g) {
        None => Err("no upstream group of that name in this DotProxyConfig".to_string()),
        // The pod's own group answers every name it asks: plain DNS there is a plain
        // default for the pod, allowed only with the same opt-in as for ".".
        Some(x)
            if !spec.allow_plain_default
                && x.servers
                    .iter()
                    .any(|s| s.protocol == Protocol::Plain) =>
        {
            Err(format!(
                "group {g:?} is plain DNS and would answer every name the pod asks; allowPlainDefault is off"
            ))
        }
        Some(_) => Ok(()),
    }
    };
    let mut entries: Vec<PodEntries> = Vec::new();
    let mut stats = RenderStats::default();
    let mut problems = Vec::new();
    let mut seen_ips: HashSet<IpAddr> = HashSet::new();

    let mut pods: Vec<&PodInfo> = pods.into_iter().collect();
    pods.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for pod in pods {
        stats.annotated_pods += 1;
        let Some(node) = pod.node_name.as_deref() else {
            stats.pods_pending += 1;
            continue;
        };
        if !node_selected(&spec.target.node_selector, nodes.get(node)) {
            stats.pods_not_selected += 1;
            continue;
        }
        let (mut req, mut found) = annotations::parse(&pod.annotations, group_usable);
        found.extend(grants.enforce(&mut req, &pod.namespace, namespaces.get(&pod.namespace)));
        for p in found {
            let reason = if p.not_granted {
                ANNOTATION_NOT_GRANTED
            } else {
                INVALID_ANNOTATION
            };
            problems.push(PodProblem {
                reason,
                ..problem(pod, p.to_string())
            });
        }
        if pod.host_network {
            problems.push(problem(
                pod,
                "pod uses hostNetwork: its addresses are the node's, shared with every host-network client, so its dns.dot-proxy.io annotations are ignored".into(),
            ));
            continue;
        }
        if pod.ips.is_empty() {
            stats.pods_pending += 1;
            continue;
        }
        if req.has_rate_limit() && !spec.rate_limit.enabled {
            // Kept in the shard (it applies the moment limiting is switched on), but said.
            stats.rate_limit_annotations_ignored += 1;
            problems.push(problem(pod, RATE_LIMIT_DISABLED_MESSAGE.into()));
        }
        if !req.has_rate_limit() && req.group.is_none() {
            continue;
        }
        let mut e = PodEntries {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: node.to_string(),
            rate_limits: Vec::new(),
            client_groups: Vec::new(),
        };
        for ip in &pod.ips {
            // An address already claimed by a pod earlier in name order (a stale pod not yet
            // gone): first one wins, so the output is deterministic.
            if !seen_ips.insert(*ip) {
                continue;
            }
            let cidr = host_cidr(*ip);
            if req.has_rate_limit() {
                e.rate_limits.push(RateLimitOverride {
                    cidr,
                    qps: req.qps,
                    burst: req.burst,
                    exempt: req.exempt,
                });
            }
            if let Some(group) = &req.group {
                e.client_groups.push(ClientGroup {
                    cidr,
                    group: group.clone(),
                });
            }
        }
        if !e.is_empty() {
            entries.push(e);
        }
    }

    // Overrides never make the render fail: the shard count grows up to what the proxies
    // mount, and what still does not fit is left out and counted.
    let base = spec.target.override_shards.max(1);
    let max = spec
        .target
        .max_override_shards
        .unwrap_or(base)
        .clamp(base, MAX_OVERRIDE_SHARDS);
    let layout =
        shards::layout(&entries, base, max, MAX_SHARD_BYTES).map_err(Invalid::OverridesTooLarge)?;
    let mut left_out = layout.left_out.iter().peekable();
    let mut truncated = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        if left_out.next_if_eq(&&k).is_some() {
            truncated.push(format!("{}/{}", e.namespace, e.name));
            continue;
        }
        stats.pods_applied += 1;
        stats.entries += e.len();
    }
    stats.overrides_truncated = truncated.len();
    stats.nodes = layout.nodes.iter().sum();

    // The proxies find their node's shard with the count actually used.
    proxy.overrides.shards = Some(layout.count);
    let yaml = proxy
        .to_yaml()
        .map_err(|e| Invalid::Spec(vec![format!("spec: {e}")]))?;
    let config = ConfigMapContent::new(cm_name.clone(), CONFIG_KEY.into(), yaml);
    if config.data.len() > MAX_SHARD_BYTES {
        return Err(Invalid::Spec(vec![format!(
            "spec: config.yaml would be {} bytes, over the {MAX_SHARD_BYTES}-byte limit",
            config.data.len()
        )]));
    }

    let mut shards = Vec::with_capacity(layout.files.len());
    for (i, data) in layout.files.into_iter().enumerate() {
        // `i` is below the shard count, a u32.
        let idx = i as u32;
        stats.largest_shard_bytes = stats.largest_shard_bytes.max(data.len());
        stats.total_shard_bytes += data.len();
        shards.push(ConfigMapContent::new(
            shard_name(&cm_name, idx),
            shard_key(idx),
            data,
        ));
    }
    let mut h = Sha256::new();
    for s in &shards {
        h.update(s.hash.as_bytes());
    }
    let overrides_hash = hex(&h.finalize());
    Ok(Rendered {
        config,
        shards,
        overrides_hash,
        problems,
        truncated,
        stats,
    })
}

fn problem(pod: &PodInfo, message: String) -> PodProblem {
    PodProblem {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        message,
        reason: INVALID_ANNOTATION,
    }
}

/// Every selector label must be on the node; an empty selector takes every node, and a node
/// not (yet) known matches only the empty selector.
fn node_selected(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if selector.is_empty() {
        return true;
    }
    labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
}

fn host_cidr(ip: IpAddr) -> Cidr {
    Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 })
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses a shard's content back (what the proxy does with each file in `overrides.dir`).
pub fn parse_shard(data: &str) -> Result<OverridesFile, String> {
    serde_saphyr::from_str(data).map_err(|e| e.to_string())
}

/// Every entry of a node's overrides, for tests and `render` output checks.
pub fn node_overrides<'a>(
    rendered: &'a Rendered,
    node: &str,
) -> Result<Option<NodeOverrides>, String> {
    let shard: &'a ConfigMapContent = match rendered
        .shards
        .get(shard_of(node, rendered.shards.len() as u32) as usize)
    {
        Some(s) => s,
        None => return Ok(None),
    };
    Ok(parse_shard(&shard.data)?.remove(node))
}

#[cfg(test)]
mod tests;
