//! `DotProxyConfig` (`dns.dot-proxy.io/v1alpha1`): what the proxies on the nodes should run.
//!
//! Field names are camelCase (the Kubernetes convention); the render module converts a spec
//! into the proxy's own `dot_proxy_config::Config` (snake_case YAML). Whole sections that read
//! the same in both (cache, rate limit, privacy, log, dnstap, search completion, AAAA
//! filtering, zones, node-local) are the proxy's own types wrapped in [`Camel`]; where a single proxy type fits
//! (policies, protocols, durations, actions) it is reused, wrapped in [`Checked`]. What stays
//! here is what differs in Kubernetes: grants, shards, target, list-map shapes, CEL rules.
//!
//! The schema refuses at `kubectl apply` time what it can: required fields, enums, ranges,
//! lengths, and CEL rules (`x-kubernetes-validations`) for references between fields. Whatever
//! passes still goes through the proxy's `Config::validate()` before anything is written.

use std::collections::BTreeMap;

use dot_proxy_config::{
    limits, BlockAction, CacheConfig, DnstapConfig, Dur, FilterAaaaConfig, LogConfig,
    NodeLocalConfig, Policy, PrivacyConfig, Protocol, RateLimitConfig, SearchCompletionConfig,
    ZoneRoute,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::camel::Camel;
use super::checked::Checked;
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    pub policy: PolicySpec,

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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.servers.all(s, has(s.protocol) && s.protocol == 'plain') || self.servers.all(s, !has(s.protocol) || s.protocol != 'plain')",
        "message": "a group's servers are all plain DNS or all encrypted: a plain server beside an encrypted one would get its queries in clear text when it fails"
    }
]))]
pub struct UpstreamGroupSpec {
    /// Referenced by `zones[].group` and by the `dns.dot-proxy.io/upstream-group` pod annotation.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    )]
    pub name: String,

    /// `failover` (first healthy server, in order), `round_robin`, `fastest` (lowest smoothed
    /// latency) or `race` (ask two at once).
    #[serde(default = "default_policy")]
    pub policy: Checked<Policy>,

    /// Time to wait for an answer before the client gets SERVFAIL (or a stale answer).
    #[serde(default = "default_timeout")]
    pub timeout: Checked<Dur>,

    #[schemars(length(min = 1, max = 8))]
    pub servers: Vec<UpstreamServerSpec>,

    /// The namespaces whose pods may pick this group with the
    /// `dns.dot-proxy.io/upstream-group` annotation. Empty (the default): none; zone routes
    /// need no grant.
    #[serde(default, skip_serializing_if = "NamespaceGrant::is_empty")]
    pub granted_to: NamespaceGrant,
}

fn default_policy() -> Checked<Policy> {
    Checked::Known(Policy::default())
}

fn default_timeout() -> Checked<Dur> {
    Checked::Known(dot_proxy_config::default_query_timeout())
}

/// One upstream resolver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.protocol) || self.protocol != 'plain' || (!has(self.tlsName) && (!has(self.spkiPins) || size(self.spkiPins) == 0))",
        "message": "plain servers take no tlsName or spkiPins"
    },
    {
        "rule": "(has(self.protocol) && self.protocol == 'plain') || has(self.tlsName) || (has(self.spkiPins) && size(self.spkiPins) > 0 && has(self.verifyCa) && !self.verifyCa)",
        "message": "a TLS server needs tlsName (the name its certificate must be valid for), or spkiPins with verifyCa: false"
    },
    {
        "rule": "!has(self.verifyCa) || self.verifyCa || (has(self.spkiPins) && size(self.spkiPins) > 0)",
        "message": "verifyCa may be false only when spkiPins are set"
    },
    {
        "rule": "!has(self.forceTcp) || !self.forceTcp || (has(self.protocol) && self.protocol == 'plain')",
        "message": "forceTcp is only for plain servers"
    },
    {
        "rule": "!has(self.path) || (has(self.protocol) && self.protocol == 'https')",
        "message": "path is only for https servers"
    }
]))]
pub struct UpstreamServerSpec {
    /// `IP:PORT` (IPv6 in brackets), or a bare IP for the protocol's default port
    /// (853 for TLS and QUIC, 443 for HTTPS, 53 for plain).
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+)(:[0-9]{1,5})?$")
    )]
    pub address: String,

    /// `tls` (DNS over TLS, RFC 7858), `https` (DNS over HTTPS, RFC 8484, HTTP/2 on port
    /// 443), `quic` (DNS over QUIC, RFC 9250), all three always verified; or `plain` (UDP
    /// with TCP fallback; only for in-cluster resolvers).
    #[serde(default = "default_protocol")]
    pub protocol: Checked<Protocol>,

    /// Name the server's certificate must be valid for, e.g. `cloudflare-dns.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_name: Option<String>,

    /// Base64 SHA-256 digests of the server's SubjectPublicKeyInfo (RFC 7858 section 4.2);
    /// with pins the server's key must match one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(regex(pattern = r"^[A-Za-z0-9+/]{43}=$")))]
    pub spki_pins: Vec<String>,

    /// Also verify the certificate chain against the system CAs. `false` with pins gives
    /// pin-only authentication.
    #[serde(default = "yes")]
    pub verify_ca: bool,

    /// Long-lived TLS connections each proxy keeps to this server.
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = limits::POOL_SIZE.min, max = limits::POOL_SIZE.max))]
    pub pool_size: u32,

    /// Close a connection after this long without traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Checked<Dur>>,

    /// Re-open connections at least this often, so certificates are verified again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<Checked<Dur>>,

    /// Time allowed for TCP connect plus TLS handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Checked<Dur>>,

    /// Plain servers only: ask over TCP instead of UDP (as NodeLocal DNSCache forwards to
    /// kube-dns). Off by default: some clouds rate-limit TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_tcp: bool,

    /// HTTPS servers only: the URL path queries are POSTed to (default `/dns-query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[^ ?#]*$"))]
    pub path: Option<String>,
}

fn default_protocol() -> Checked<Protocol> {
    Checked::Known(Protocol::Tls)
}

fn yes() -> bool {
    true
}

fn default_pool_size() -> u32 {
    u32::try_from(dot_proxy_config::default_pool_size()).unwrap_or(u32::MAX)
}

/// Names the proxies answer, block or rewrite themselves, in that order of precedence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicySpec {
    /// Names answered locally, like a hosts file. Checked first. Names unique.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub static_answers: Vec<StaticAnswerSpec>,

    /// Names answered NXDOMAIN, REFUSED or a null address. Checked second. Names unique.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub blocklists: Vec<BlockListSpec>,

    /// Names sent upstream as another name; the answer goes back under the name asked for.
    /// Checked last. `from` unique.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["from"]))]
    pub rewrites: Vec<RewriteSpec>,
}

/// Records served for a name (A, AAAA, TXT), or an alias (CNAME) for every type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.cname) || ((!has(self.a) || size(self.a) == 0) && (!has(self.aaaa) || size(self.aaaa) == 0) && (!has(self.txt) || size(self.txt) == 0))",
        "message": "a static answer with cname takes no a, aaaa or txt (a CNAME excludes other records at its name)"
    },
    {
        "rule": "has(self.cname) || (has(self.a) && size(self.a) > 0) || (has(self.aaaa) && size(self.aaaa) > 0) || (has(self.txt) && size(self.txt) > 0)",
        "message": "a static answer needs at least one of a, aaaa, cname, txt"
    }
]))]
pub struct StaticAnswerSpec {
    /// `host.example.com`, or `*.example.com` for every name below it (not the name itself).
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")
    )]
    pub name: String,

    /// TTL of the answers, seconds.
    #[serde(default = "default_static_ttl")]
    #[schemars(range(min = limits::STATIC_TTL.min, max = limits::STATIC_TTL.max))]
    pub ttl: u32,

    /// IPv4 addresses answered to A queries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(max = 15), regex(pattern = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"))
    )]
    pub a: Vec<String>,

    /// IPv6 addresses answered to AAAA queries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 2, max = 45), regex(pattern = r"^[0-9A-Fa-f:.]+$"))
    )]
    pub aaaa: Vec<String>,

    /// An alias answered to every query type; excludes `a`, `aaaa` and `txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 254),
        regex(pattern = r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")
    )]
    pub cname: Option<String>,

    /// Strings answered to TXT queries, one record each, at most 255 bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 255)))]
    pub txt: Vec<String>,
}

fn default_static_ttl() -> u32 {
    dot_proxy_config::default_static_ttl()
}

/// Blocked names, inline and/or from a file on the proxy's filesystem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.names) && size(self.names) > 0) || has(self.file)",
        "message": "a block list needs names or a file"
    }
]))]
pub struct BlockListSpec {
    /// A label for the proxies' logs.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Blocked names; each blocks itself and every name below it. Long lists belong in a file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 1024),
        inner(
            length(min = 1, max = 254),
            regex(pattern = r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")
        )
    )]
    pub names: Vec<String>,

    /// Absolute path, inside the proxy container, of a hosts-format file (`0.0.0.0
    /// ads.example.com`) or one name per line; re-read on every reload. The operator cannot
    /// see the proxies' files: a missing file shows in the proxies' logs, not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    pub file: Option<String>,

    /// `nxdomain`, `refused`, or `null_address` (0.0.0.0 / :: to A / AAAA, NODATA otherwise).
    #[serde(default = "default_block_action")]
    pub action: Checked<BlockAction>,
}

fn default_block_action() -> Checked<BlockAction> {
    Checked::Known(BlockAction::Nxdomain)
}

/// A name sent upstream as another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteSpec {
    /// The name clients ask for.
    #[schemars(
        length(min = 1, max = 254),
        regex(pattern = r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")
    )]
    pub from: String,

    /// The name sent upstream instead.
    #[schemars(
        length(min = 1, max = 254),
        regex(pattern = r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")
    )]
    pub to: String,

    /// Also rewrite names below `from`: `a.from` is sent as `a.to`.
    #[serde(default)]
    pub suffix: bool,
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

/// The proxy's own sections as the resource names them (kept for callers of the old names).
pub type CacheSpec = Camel<CacheConfig>;
pub type RateLimitSpec = Camel<RateLimitConfig>;
pub type PrivacySpec = Camel<PrivacyConfig>;
pub type LogSpec = Camel<LogConfig>;
pub type DnstapSpec = Camel<DnstapConfig>;
pub type SearchCompletionSpec = Camel<SearchCompletionConfig>;
pub type FilterAaaaSpec = Camel<FilterAaaaConfig>;
pub type NodeLocalSpec = Camel<NodeLocalConfig>;
pub type ZoneSpec = ZoneRoute;
pub use dot_proxy_config::{CacheZone as CacheZoneSpec, PrefetchConfig as PrefetchSpec};
