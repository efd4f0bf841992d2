//! The Kubernetes-aware sections: `kubernetes` (the node's pods, watched from the API
//! server), `search_completion` (the search list walked at the node) and `filter_aaaa`
//! (AAAA answered with NODATA for IPv4-only clusters). docs/search-completion.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, normalize_zone, Errors};

/// The API server connection. Off by default; `search_completion` needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch the pods scheduled on this node (`spec.nodeName`), keeping pod IP ->
    /// namespace. Host-network pods are skipped: their IP is the node's.
    pub enabled: bool,
    /// This node's name; unset: `overrides.node_name` (`--node-name`,
    /// `DOT_PROXY_NODE_NAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// A kubeconfig file; unset: the in-cluster service account, else `$KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Export `dot_proxy_namespace_queries_total` for this many of the busiest namespaces
    /// of the node's pods (the rest as `other`); 0 turns it off. Needs `enabled`.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::NAMESPACE_METRICS.min, max = limits::NAMESPACE_METRICS.max)))]
    pub namespace_metrics: usize,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            node_name: None,
            kubeconfig: None,
            namespace_metrics: 20,
        }
    }
}

/// Search-path completion: for a pod whose namespace is known, a query under its own
/// first search domain that is NXDOMAIN is completed at the node by walking the rest of
/// the pod's search list, answered as a CNAME to the first name that exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SearchCompletionConfig {
    pub enabled: bool,
    /// The cluster domain: pods search `<namespace>.svc.<domain>`, `svc.<domain>`,
    /// `<domain>`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 253)))]
    pub cluster_domain: String,
    /// The node's own search domains, which kubelet appends to every pod's list, in order.
    #[cfg_attr(
        feature = "schema",
        schemars(length(max = limits::COMPLETION_HOST_DOMAINS.max), inner(length(min = 1, max = 253)))
    )]
    pub host_search_domains: Vec<String>,
    /// Query types completed (names: A, AAAA, HTTPS, SVCB, SRV, TXT, MX, CNAME).
    #[cfg_attr(
        feature = "schema",
        schemars(length(max = limits::COMPLETION_TYPES.max), inner(length(min = 1, max = 8)))
    )]
    pub types: Vec<String>,
}

impl Default for SearchCompletionConfig {
    fn default() -> Self {
        SearchCompletionConfig {
            enabled: false,
            cluster_domain: "cluster.local".into(),
            host_search_domains: Vec::new(),
            types: vec!["A".into(), "AAAA".into()],
        }
    }
}

/// Answers AAAA with NODATA, and removes `ipv6hint` from HTTPS and SVCB answers, for names
/// in these zones (`.`: every name). For clusters without IPv6, whose pods otherwise wait
/// for AAAA answers they cannot use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct FilterAaaaConfig {
    /// Zones (`.`: every name).
    #[cfg_attr(
        feature = "schema",
        schemars(length(max = limits::FILTER_AAAA_ZONES.max), inner(length(min = 1, max = 253)))
    )]
    pub zones: Vec<String>,
}

/// The query types `search_completion.types` may name.
pub const COMPLETION_TYPES: &[(&str, u16)] = &[
    ("A", 1),
    ("AAAA", 28),
    ("HTTPS", 65),
    ("SVCB", 64),
    ("SRV", 33),
    ("TXT", 16),
    ("MX", 15),
    ("CNAME", 5),
];

/// The type code of a name in [`COMPLETION_TYPES`] (any letter case).
pub fn completion_type(name: &str) -> Option<u16> {
    COMPLETION_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|&(_, c)| c)
}

impl SearchCompletionConfig {
    /// The type codes of `types` (unknown names left out: validation refuses them).
    pub fn type_codes(&self) -> Vec<u16> {
        self.types
            .iter()
            .filter_map(|t| completion_type(t))
            .collect()
    }

    pub(crate) fn check(&self, kubernetes: &KubernetesConfig, e: &mut Errors) {
        if self.enabled && !kubernetes.enabled {
            e.field("enabled", "needs kubernetes.enabled: true (completion knows a client's namespace from the pod watch)",
            );
        }
        match normalize_zone(&self.cluster_domain) {
            Ok(z) if z == "." => e.field("cluster_domain", "must be a domain, not \".\""),
            Ok(_) => {}
            Err(m) => e.field("cluster_domain", m),
        }
        if self.host_search_domains.len() as u64 > limits::COMPLETION_HOST_DOMAINS.max {
            e.field(
                "host_search_domains",
                "at most 29 (Kubernetes allows a pod 32 search domains, 3 of them the cluster's)",
            );
        }
        for (i, d) in self.host_search_domains.iter().enumerate() {
            match normalize_zone(d) {
                Ok(z) if z == "." => e
                    .at("host_search_domains")
                    .index(i)
                    .here("must be a domain, not \".\""),
                Ok(_) => {}
                Err(m) => e.at("host_search_domains").index(i).here(m),
            }
        }
        e.length("types", self.types.len(), limits::COMPLETION_TYPES);
        if self.enabled && self.types.is_empty() {
            e.field("types", "at least one type (or enabled: false)");
        }
        for (i, t) in self.types.iter().enumerate() {
            if completion_type(t).is_none() {
                let known: Vec<&str> = COMPLETION_TYPES.iter().map(|(n, _)| *n).collect();
                e.at("types")
                    .index(i)
                    .here(format!("{t:?} is not one of {}", known.join(", ")));
            }
        }
    }
}

impl KubernetesConfig {
    pub(crate) fn check(&self, overrides_node: Option<&str>, e: &mut Errors) {
        e.range(
            "namespace_metrics",
            self.namespace_metrics as u64,
            limits::NAMESPACE_METRICS,
        );
        if let Some(n) = &self.node_name {
            if n.trim().is_empty() || n.len() > 253 {
                e.field("node_name", "must be a node name (1 to 253 characters)");
            }
        }
        if self.enabled && self.node_name.is_none() && overrides_node.is_none() {
            e.field("node_name", "needed when kubernetes.enabled (or overrides.node_name, --node-name, DOT_PROXY_NODE_NAME)",
            );
        }
    }

    /// The node whose pods are watched.
    pub fn node<'a>(&'a self, overrides_node: Option<&'a str>) -> Option<&'a str> {
        self.node_name.as_deref().or(overrides_node)
    }
}

impl FilterAaaaConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        e.length("zones", self.zones.len(), limits::FILTER_AAAA_ZONES);
        for (i, z) in self.zones.iter().enumerate() {
            if let Err(m) = normalize_zone(z) {
                e.at("zones").index(i).here(m);
            }
        }
    }
}
