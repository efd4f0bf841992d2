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

use dot_proxy_config::{
    CacheConfig, DnstapConfig, FilterAaaaConfig, LogConfig, NodeLocalConfig, PolicyConfig,
    PrivacyConfig, RateLimitConfig, SearchCompletionConfig, UpstreamGroup, ZoneRoute,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::camel::Camel;
use super::grants::{AnnotationGrantsSpec, NamespaceGrant};
use super::status::DotProxyConfigStatus;
use super::target::TargetSpec;

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
