//! `DotProxyConfig` (`dns.dot-proxy.io/v1alpha1`): what the proxies on the nodes should run.
//!
//! Field names are camelCase (the Kubernetes convention); the render module converts a spec
//! into the proxy's own `dot_proxy_config::Config` (snake_case YAML). Whole sections that read
//! the same in both (cache, rate limit, privacy, log, dnstap, search completion, AAAA
//! filtering, zones, node-local, policy, each upstream group) are the proxy's own types
//! wrapped in [`Camel`]. What stays here is what differs in Kubernetes: grants, shards,
//! target, the listen addresses as strings.
//!
//! The schema refuses at `kubectl apply` time what it can: required fields, enums, ranges,
//! lengths, and CEL rules (`x-kubernetes-validations`) for references between fields. Whatever
//! passes still goes through the proxy's `Config::validate()` before anything is written.

use std::collections::BTreeMap;

use dot_proxy_config::{
    CacheConfig, DnstapConfig, FilterAaaaConfig, LogConfig, NodeLocalConfig, PolicyConfig,
    PrivacyConfig, RateLimitConfig, SearchCompletionConfig, UpstreamGroup, ZoneRoute,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::camel::Camel;
use super::status::DotProxyConfigStatus;

/// Most shards a resource may use (`target.overrideShards` and `target.maxOverrideShards`
/// stop here; the chart's Role names this many).
pub const MAX_OVERRIDE_SHARDS: u32 = 64;

/// Configuration of the node-local DNS proxies: upstream groups reached over TLS, zone routes,
/// cache, rate limits, and which ConfigMaps the proxies read.
// The repeated `type_`/`priority` keys belong to separate `printcolumn(...)` entries.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dns.dot-proxy.io",
    version = "v1alpha1",
    kind = "DotProxyConfig",
    plural = "dotproxyconfigs",
    shortname = "dpc",
    namespaced,
    status = "DotProxyConfigStatus",
    derive = "PartialEq",
    doc = "Configuration of the node-local DNS-over-TLS proxies (dot-proxy), rendered by dot-proxy-operator into ConfigMaps.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "ConfigMap", type_ = "string", json_path = ".status.configMap"),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        description = "Pods whose annotation overrides are applied",
        json_path = ".status.podOverrides"
    ),
    printcolumn(
        name = "Hash",
        type_ = "string",
        priority = 1,
        description = "SHA-256 of config.yaml",
        json_path = ".status.configHash"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// `remote = "Self"`: the derived (strict) serde is `DotProxyConfigSpec::{serialize,
// deserialize}`; the trait impls (unknown.rs) decode leniently around it.
#[serde(rename_all = "camelCase", deny_unknown_fields, remote = "Self")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.zones.exists(z, z.zone == '.')",
        "message": "zones must route \".\" (every name not routed elsewhere) to a group"
    },
    {
        "rule": "self.zones.all(z, self.upstreamGroups.exists(g, g.name == z.group))",
        "message": "every zones[].group must name one of upstreamGroups"
    },
    {
        "rule": "(has(self.allowPlainDefault) && self.allowPlainDefault) || !self.zones.exists(z, z.zone == '.' && self.upstreamGroups.exists(g, g.name == z.group && g.servers.exists(s, has(s.protocol) && s.protocol == 'plain')))",
        "message": "the group serving \".\" has plain-DNS servers; set allowPlainDefault: true to forward unencrypted by default"
    }
]))]
pub struct DotProxyConfigSpec {
    /// Addresses the proxies serve plain DNS on (UDP and TCP), as `IP:PORT`
    /// (IPv6 in brackets: `[fd00::10]:53`).
    #[serde(default = "default_listen")]
    #[schemars(length(min = 1, max = 8), inner(length(max = 64)))]
    pub listen: Vec<String>,

    /// Named groups of upstream resolvers.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub upstream_groups: Vec<UpstreamGroupSpec>,

    /// Zone routing: the longest matching suffix wins; `.` is the default route and is required.
    pub zones: Camel<Vec<ZoneRoute>>,

    /// Allow the group that serves `.` to contain plain-DNS servers. Off by default, so that
    /// everything not explicitly routed to an in-cluster resolver leaves the node encrypted.
    #[serde(default)]
    pub allow_plain_default: bool,

    #[serde(default)]
    pub cache: Camel<CacheConfig>,

    /// Default per-client rate limit; pods can be given their own with annotations.
    #[serde(default)]
    pub rate_limit: Camel<RateLimitConfig>,

    #[serde(default)]
    pub privacy: Camel<PrivacyConfig>,

    /// Local policy: static answers, block lists and rewrites, applied by every proxy before
    /// its cache and zone routing (docs/policy.md).
    #[serde(default)]
    pub policy: Camel<PolicyConfig>,

    /// The node-local address: a dummy interface holding a link-local IP and conntrack
    /// bypass rules, set up on every node.
    #[serde(default)]
    pub node_local: Camel<NodeLocalConfig>,

    #[serde(default)]
    pub log: Camel<LogConfig>,

    /// Query logging with dnstap to a collector (Vector, fluent-bit, dnstap tools). Off by
    /// default. Query names are in every message; client addresses are cut to a prefix.
    #[serde(default)]
    pub dnstap: Camel<DnstapConfig>,

    /// Search-path completion at the node: a pod's query under its own first search domain
    /// that is NXDOMAIN is completed by the proxy, which walks the rest of the pod's search
    /// list and answers with a CNAME to the first name that exists. Off by default; the
    /// proxies then watch their own node's pods (docs/search-completion.md).
    #[serde(default)]
    pub search_completion: Camel<SearchCompletionConfig>,

    /// AAAA answered with NODATA (and `ipv6hint` removed from HTTPS/SVCB answers) for names
    /// in these zones, for IPv4-only clusters. Empty by default.
    #[serde(default)]
    pub filter_aaaa: Camel<FilterAaaaConfig>,

    /// Address of the proxies' HTTP server for /metrics, /healthz and /readyz; empty turns it
    /// off. The proxies run on the host network, so this is reachable on the node's address.
    #[serde(default = "default_admin_listen")]
    #[schemars(length(max = 64))]
    pub admin_listen: String,

    /// Which ConfigMaps are written and which pods' annotations are applied.
    #[serde(default)]
    pub target: TargetSpec,

    /// Which namespaces' pods may use the privileged annotations: rate-limit exemption and a
    /// rate above `rateLimit`'s. Both are refused everywhere until granted here. (Who may
    /// pick an upstream group is each group's `grantedTo`.)
    #[serde(default)]
    pub annotation_grants: AnnotationGrantsSpec,

    /// Fields of the object this build does not know (written under a newer CRD), as
    /// paths (`spec.cache.newSetting`): left out when decoding, reported in the status.
    #[serde(skip)]
    pub unknown_fields: Vec<String>,
}

impl NamespaceGrant {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.namespace_selector.is_none()
    }
}

/// `spec.annotationGrants`: one namespace grant per privileged annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AnnotationGrantsSpec {
    /// `dns.dot-proxy.io/rate-limit-exempt: "true"` (no limit at all).
    pub rate_limit_exempt: NamespaceGrant,
    /// `dns.dot-proxy.io/qps` above `rateLimit.qps`, or `dns.dot-proxy.io/burst` above
    /// `rateLimit.burst`. A rate at or below the default needs no grant: it only limits the
    /// pod itself.
    pub rate_above_default: NamespaceGrant,
}

/// The namespaces granted something: those named in `namespaces`, and those whose labels
/// match `namespaceSelector` (a standard label selector; `{}` selects every namespace).
/// Empty (the default): no namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceGrant {
    /// Namespace names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Namespaces whose labels match (`matchLabels`, `matchExpressions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

/// A label selector on namespaces, as Kubernetes writes one (`matchLabels` and
/// `matchExpressions`, all of which must match; `{}` matches every namespace), with bounds
/// on every list and string so the API server's CEL cost estimate stays bounded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceSelector {
    /// Labels the namespace must carry, with these values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: SelectorOperator,
    /// For `In` and `NotIn` (at least one); empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

fn default_listen() -> Vec<String> {
    vec!["169.254.20.10:53".into()]
}

fn default_admin_listen() -> String {
    "0.0.0.0:9253".into()
}

/// A named group of upstream servers and how it picks one for each query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamGroupSpec {
    /// The proxy's own group (`name`, `policy`, `timeout`, `servers`).
    #[serde(flatten)]
    pub group: Camel<UpstreamGroup>,

    /// The namespaces whose pods may pick this group with the
    /// `dns.dot-proxy.io/upstream-group` annotation. Empty (the default): none; zone routes
    /// need no grant.
    #[serde(default, skip_serializing_if = "NamespaceGrant::is_empty")]
    pub granted_to: NamespaceGrant,
}

impl std::ops::Deref for UpstreamGroupSpec {
    type Target = UpstreamGroup;
    fn deref(&self) -> &UpstreamGroup {
        &self.group
    }
}

impl std::ops::DerefMut for UpstreamGroupSpec {
    fn deref_mut(&mut self) -> &mut UpstreamGroup {
        &mut self.group
    }
}

/// Which proxies this resource configures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TargetSpec {
    /// Name of the main ConfigMap, written in this resource's namespace with key `config.yaml`.
    /// The override shards are `<configMapName>-overrides-<i>`.
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub config_map_name: String,
    /// Number of override shard ConfigMaps. The chart mounts exactly this many, so change both
    /// together. Each node's pod overrides go to shard `fnv1a64(nodeName) % overrideShards`.
    #[schemars(range(min = 1, max = MAX_OVERRIDE_SHARDS))]
    pub override_shards: u32,
    /// Largest shard count the operator may grow to when a shard would pass 900 KiB: it
    /// doubles `overrideShards` up to this (the proxies must mount this many; the chart
    /// does). Unset, or below `overrideShards`: no growth. When a shard still does not fit,
    /// pods are left out of it (fair share by namespace) and counted in the status
    /// (`overridesTruncated`); the main ConfigMap is always written.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_OVERRIDE_SHARDS))]
    pub max_override_shards: Option<u32>,
    /// Only pods on nodes with all these labels get their annotation overrides. Empty: all nodes.
    pub node_selector: BTreeMap<String, String>,
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec {
            config_map_name: "dot-proxy-config".into(),
            override_shards: 8,
            max_override_shards: None,
            node_selector: BTreeMap::new(),
        }
    }
}
