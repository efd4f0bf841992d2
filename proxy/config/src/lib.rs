//! The proxy's configuration schema: defined once here, read from YAML by the proxy and
//! rendered by the operator from these same types.
//!
//! Loading is two steps: parse (serde, unknown fields refused) and [`Config::validate`],
//! which collects every semantic error with the path of the field at fault.

/// Serde for a type written as a string: `Display` out, `FromStr` in (the parse error,
/// after `$what`, is the message), and with the `schema` feature a string JSON schema.
macro_rules! string_type {
    ($ty:ty, $what:literal, $schema_name:literal, $schema:tt) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse::<$ty>()
                    .map_err(|m| serde::de::Error::custom(format!("{}{m}", $what)))
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $schema_name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

pub mod cidr;
mod dnstap;
mod duration;
mod kubernetes;
pub mod limits;
mod memory;
mod overrides;
mod upstream_url;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cidr::Cidr;
pub use dnstap::DnstapConfig;
pub use duration::{Dur, DurationError};
pub use kubernetes::{
    completion_type, FilterAaaaConfig, KubernetesConfig, SearchCompletionConfig, COMPLETION_TYPES,
};
pub use memory::{MemoryConfig, Shares as MemoryShares, FALLBACK_LIMIT as MEMORY_FALLBACK_LIMIT};
pub use overrides::{merge_overrides, own_overrides};
pub use upstream_url::{parse_server_address, parse_upstream_url, UpstreamUrlError};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The whole proxy configuration (one YAML document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to serve plain DNS on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// Runtime worker threads; 0 means one per CPU the process may run on.
    pub workers: usize,
    pub log: LogConfig,
    pub admin: AdminConfig,
    /// Defaults applied to every TLS upstream.
    pub tls: TlsDefaults,
    /// Named groups of upstream servers.
    pub upstream_groups: Vec<UpstreamGroup>,
    /// Zone routing: longest matching suffix wins; `.` is the default route.
    pub zones: Vec<ZoneRoute>,
    /// Allow a plain-DNS group to serve the `.` zone. Off by default: everything not
    /// explicitly routed elsewhere goes over TLS.
    pub allow_plain_default: bool,
    pub cache: CacheConfig,
    pub tcp: TcpConfig,
    pub rate_limit: RateLimitConfig,
    pub privacy: PrivacyConfig,
    /// Per-client upstream group choices (most specific prefix wins), checked before zone
    /// routing. The operator writes one /32 or /128 entry per annotated pod.
    pub client_groups: Vec<ClientGroup>,
    /// Per-node overrides written by the operator into sharded ConfigMaps.
    pub overrides: OverridesConfig,
    /// The node-local address (dummy interface and NOTRACK rules), set up by
    /// `dot-proxy node-local`, which runs apart from the serving process.
    pub node_local: NodeLocalConfig,
    /// Local policy: static answers, blocking and rewriting, applied before the cache and
    /// the zone router (docs/policy.md).
    pub policy: PolicyConfig,
    /// Query logging with dnstap to a collector (docs/dnstap.md). Off by default.
    pub dnstap: DnstapConfig,
    /// The API server: the pods of this node (docs/search-completion.md). Off by default.
    pub kubernetes: KubernetesConfig,
    /// Search-path completion at the node (docs/search-completion.md). Off by default.
    pub search_completion: SearchCompletionConfig,
    /// AAAA answered with NODATA in these zones (IPv4-only clusters). Empty by default.
    pub filter_aaaa: FilterAaaaConfig,
    /// The memory budget (docs/security.md): the cgroup's limit unless set.
    pub memory: MemoryConfig,
    /// How long in-flight queries may take to finish after SIGTERM.
    pub shutdown_grace: Dur,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            workers: 0,
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            tls: TlsDefaults::default(),
            upstream_groups: vec![UpstreamGroup {
                name: DEFAULT_GROUP.to_string(),
                policy: Policy::Failover,
                timeout: Dur::secs(2),
                servers: vec![
                    UpstreamServer::tls(
                        SocketAddr::from(([1, 1, 1, 1], 853)),
                        "cloudflare-dns.com",
                    ),
                    UpstreamServer::tls(
                        SocketAddr::from(([1, 0, 0, 1], 853)),
                        "cloudflare-dns.com",
                    ),
                ],
            }],
            zones: vec![ZoneRoute {
                zone: ".".into(),
                group: DEFAULT_GROUP.into(),
            }],
            allow_plain_default: false,
            cache: CacheConfig::default(),
            tcp: TcpConfig::default(),
            rate_limit: RateLimitConfig::default(),
            privacy: PrivacyConfig::default(),
            client_groups: Vec::new(),
            overrides: OverridesConfig::default(),
            node_local: NodeLocalConfig::default(),
            policy: PolicyConfig::default(),
            dnstap: DnstapConfig::default(),
            memory: MemoryConfig::default(),
            kubernetes: KubernetesConfig::default(),
            search_completion: SearchCompletionConfig::default(),
            filter_aaaa: FilterAaaaConfig::default(),
            shutdown_grace: Dur::secs(5),
        }
    }
}

/// The name of the group that `--upstream` flags fill.
pub const DEFAULT_GROUP: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `dot_proxy=debug,info`. Query names appear only at debug.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format (text or json)")),
        }
    }
}

/// A pin: the SHA-256 of a SubjectPublicKeyInfo, written in base64 (RFC 7858 section 4.2).
/// Parsed when the config is read; kept with the text it was written as, so a config
/// reads back the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpkiPin {
    text: String,
    sha256: [u8; 32],
}

impl SpkiPin {
    /// The digest the server's key must match.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
}

impl std::str::FromStr for SpkiPin {
    type Err = String;
    fn from_str(s: &str) -> Result<SpkiPin, String> {
        Ok(SpkiPin {
            sha256: decode_pin(s)?,
            text: s.trim().to_string(),
        })
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

string_type!(SpkiPin, "invalid SPKI pin: ", "SpkiPin", {
    "type": "string",
    "description": "Base64 SHA-256 of a SubjectPublicKeyInfo (44 characters ending in '=')."
});

/// Decodes a base64 SHA-256 SPKI pin; the error names what is wrong.
pub fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(pin.trim())
        .map_err(|e| format!("not valid base64: {e}"))?;
    raw.as_slice()
        .try_into()
        .map_err(|_| format!("decodes to {} bytes; a SHA-256 pin has 32", raw.len()))
}

/// Whether `name` can be a TLS server name: an IP address, or a DNS name (labels of 1 to
/// 63 letters, digits, `-` or `_`, not starting or ending with `-`; at most 253
/// characters; one trailing dot allowed), as TLS libraries accept.
pub fn valid_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-numeric last label would read as a (bad) IP address.
        && !n
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the HTTP server for /metrics, /healthz and /readyz; `null` turns it off.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9253))),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TlsDefaults {
    /// PEM file of CA certificates that replaces the system roots for every TLS upstream
    /// that has no `ca_file` of its own.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroup {
    pub name: String,
    #[serde(default)]
    pub policy: Policy,
    /// Time to wait for an answer before the client gets SERVFAIL (or a stale answer).
    #[serde(default = "default_query_timeout")]
    pub timeout: Dur,
    pub servers: Vec<UpstreamServer>,
}

impl UpstreamGroup {
    /// Whether any of its servers speaks plain DNS (validation keeps a group's servers all
    /// plain or all encrypted).
    pub fn is_plain(&self) -> bool {
        self.servers.iter().any(|s| !s.protocol.is_encrypted())
    }
}

/// Most upstream groups in one config: a client's own group is carried in one byte of the
/// cache key, 0 meaning zone routing.
pub const MAX_UPSTREAM_GROUPS: usize = u8::MAX as usize;

/// Shared with the operator's CRD defaults.
pub fn default_query_timeout() -> Dur {
    Dur::secs(2)
}

/// How a group picks a server for each query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// In order: the first healthy server.
    #[default]
    Failover,
    /// Each healthy server in turn.
    RoundRobin,
    /// The healthy server with the lowest smoothed latency, probing the others now and then.
    Fastest,
    /// Ask two servers at once; the first good answer wins.
    Race,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// DNS over TLS (RFC 7858). Always verified.
    #[default]
    Tls,
    /// Plain DNS over UDP, retried over TCP when truncated. Only for in-cluster zones.
    Plain,
    /// DNS over HTTPS (RFC 8484): POST over HTTP/2, port 443 by default. Verified as TLS.
    Https,
    /// DNS over QUIC (RFC 9250), port 853 by default. Verified as TLS.
    Quic,
}

impl Protocol {
    /// TLS, HTTPS or QUIC: verified, never plaintext.
    pub fn is_encrypted(self) -> bool {
        !matches!(self, Protocol::Plain)
    }

    /// The port a server address without one gets.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Tls | Protocol::Quic => 853,
            Protocol::Plain => 53,
            Protocol::Https => 443,
        }
    }
}

/// The URL path of DNS over HTTPS queries when `path` is not set.
pub const DEFAULT_DOH_PATH: &str = "/dns-query";

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UpstreamServer {
    /// IP address and port, e.g. `1.1.1.1:853` or `[2606:4700::1111]:853`.
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// Name the certificate must be valid for. Required for TLS unless `spki_pins` is set
    /// and `verify_ca` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_name: Option<String>,
    /// Base64 SHA-256 digests of the server's SubjectPublicKeyInfo (RFC 7858 section 4.2).
    /// With pins, the server's key must match one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spki_pins: Vec<SpkiPin>,
    /// Also verify the chain against the CAs (default true). Setting false with pins gives
    /// pin-only authentication.
    #[serde(default = "yes")]
    pub verify_ca: bool,
    /// CA bundle for this server only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Long-lived TLS connections kept to this server.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Close a connection after this long without traffic (the server's own
    /// edns-tcp-keepalive timeout is used when shorter).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Re-open connections at least this often so certificates are verified again.
    #[serde(default = "default_max_age")]
    pub max_connection_age: Dur,
    /// Time allowed for TCP connect plus TLS handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Plain servers only: ask over TCP instead of UDP (as NodeLocal DNSCache forwards to
    /// kube-dns). Off by default: some clouds rate-limit TCP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_tcp: bool,
    /// HTTPS servers only: the URL path queries are POSTed to (default `/dns-query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}
/// Shared with the operator's CRD defaults.
pub fn default_pool_size() -> usize {
    2
}
fn default_idle_timeout() -> Dur {
    Dur::secs(30)
}
fn default_max_age() -> Dur {
    Dur::secs(3600)
}
fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}

impl UpstreamServer {
    pub fn tls(address: SocketAddr, name: &str) -> Self {
        UpstreamServer {
            address,
            protocol: Protocol::Tls,
            tls_name: Some(name.to_string()),
            spki_pins: Vec::new(),
            verify_ca: true,
            ca_file: None,
            pool_size: default_pool_size(),
            idle_timeout: default_idle_timeout(),
            max_connection_age: default_max_age(),
            connect_timeout: default_connect_timeout(),
            force_tcp: false,
            path: None,
        }
    }
    /// An encrypted server of `protocol` (TLS, HTTPS or QUIC) verified for `name`.
    pub fn encrypted(protocol: Protocol, address: SocketAddr, name: &str) -> Self {
        UpstreamServer {
            protocol,
            ..Self::tls(address, name)
        }
    }
    /// The URL path of an HTTPS server.
    pub fn doh_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_DOH_PATH)
    }
    pub fn plain(address: SocketAddr) -> Self {
        UpstreamServer {
            protocol: Protocol::Plain,
            tls_name: None,
            ..Self::tls(address, "")
        }
    }
    /// A short label for logs and metrics: `tls://1.1.1.1:853#cloudflare-dns.com`.
    pub fn label(&self) -> String {
        match self.protocol {
            Protocol::Tls => {
                format!(
                    "tls://{}#{}",
                    self.address,
                    self.tls_name.as_deref().unwrap_or("")
                )
            }
            Protocol::Plain if self.force_tcp => format!("tcp://{}", self.address),
            Protocol::Plain => format!("udp://{}", self.address),
            Protocol::Https => format!(
                "https://{}{}#{}",
                self.address,
                self.doh_path(),
                self.tls_name.as_deref().unwrap_or("")
            ),
            Protocol::Quic => format!(
                "quic://{}#{}",
                self.address,
                self.tls_name.as_deref().unwrap_or("")
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ZoneRoute {
    /// A domain (`cluster.local`) or `.` for everything else.
    pub zone: String,
    /// Name of the upstream group that answers this zone.
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Most answers kept.
    pub max_entries: usize,
    /// Most bytes of answers kept (wire size plus bookkeeping).
    pub max_bytes: u64,
    /// Lower clamp on positive TTLs, seconds.
    pub min_ttl: u32,
    /// Upper clamp on positive TTLs, seconds.
    pub max_ttl: u32,
    /// Upper clamp on negative (NXDOMAIN/NODATA) TTLs, seconds.
    pub negative_max_ttl: u32,
    /// How long a SERVFAIL is kept, seconds (RFC 9520 caps it at 5 minutes; keep it short).
    pub servfail_ttl: u32,
    /// Serve expired answers up to this long after expiry when upstreams fail (RFC 8767);
    /// `0s` turns serve-stale off.
    pub stale_max_age: Dur,
    /// TTL put on stale answers.
    pub stale_ttl: u32,
    pub prefetch: PrefetchConfig,
    /// TTL clamps for names under a zone, overriding the ones above (the longest matching
    /// zone wins), e.g. `cluster.local` capped at 30 s positive and 5 s negative, as
    /// NodeLocal DNSCache does, so a new pod or service is found quickly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<CacheZone>,
}

/// Per-zone TTL clamps (`cache.zones[]`); unset fields keep the cache-wide value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CacheZone {
    /// A domain (`cluster.local`); `.` is not allowed (that is the cache-wide setting).
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_max_ttl: Option<u32>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_entries: 100_000,
            // Unbound's default budget (4 MiB messages + 4 MiB RRsets): about 27,000 typical
            // answers, more than NodeLocal DNSCache keeps (9,984 + 9,984).
            max_bytes: 8 * 1024 * 1024,
            min_ttl: 0,
            max_ttl: 86_400,
            negative_max_ttl: 3_600,
            servfail_ttl: 5,
            stale_max_age: Dur::secs(86_400),
            stale_ttl: 30,
            prefetch: PrefetchConfig::default(),
            zones: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    pub enabled: bool,
    /// A name is hot once it has been asked this many times during its TTL.
    pub min_hits: u32,
    /// At most this many names are kept hot at once (the most asked).
    pub top_n: usize,
    /// Refresh when this fraction of the original TTL is left (0.0–0.5).
    pub remaining_fraction: f64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            min_hits: 5,
            top_n: 1000,
            remaining_fraction: 0.1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Most client TCP connections open at once.
    pub max_connections: usize,
    /// Most TCP connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// Close a client connection with no query for this long.
    pub idle_timeout: Dur,
    /// A started frame (length prefix and message) must arrive within this long.
    pub frame_timeout: Dur,
    /// Most queries one connection may have in flight.
    pub max_inflight_per_connection: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            max_connections_per_client: 64,
            idle_timeout: Dur::secs(10),
            frame_timeout: Dur::secs(2),
            max_inflight_per_connection: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained queries per second per client.
    pub qps: f64,
    /// Bucket size: queries a client may send at once.
    pub burst: u32,
    /// IPv6 clients are grouped by this prefix length.
    pub ipv6_prefix: u8,
    /// What an over-limit query gets: `refused` or `drop`.
    pub action: LimitAction,
    /// Answer every Nth limited UDP query with TC=1 instead (0 = never).
    pub slip: u32,
    /// Client buckets kept at most; idle ones are evicted first.
    pub max_clients: usize,
    /// Size of the top-clients list exported for metrics.
    pub top_k: usize,
    /// Per-CIDR overrides, most specific prefix wins.
    pub overrides: Vec<RateLimitOverride>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            qps: 200.0,
            burst: 400,
            ipv6_prefix: 64,
            action: LimitAction::Refused,
            slip: 0,
            max_clients: 65_536,
            top_k: 10,
            overrides: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitAction {
    #[default]
    Refused,
    Drop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverride {
    /// `10.0.0.5/32`, `fd00::/64`.
    pub cidr: Cidr,
    /// Queries per second; ignored when `exempt`.
    #[serde(default)]
    pub qps: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    /// No limit at all for these clients.
    #[serde(default)]
    pub exempt: bool,
}

impl RateLimitOverride {
    /// What is wrong with it, by field: validation and the merge of per-pod overrides both
    /// ask this.
    pub fn problems(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        let qps = self
            .qps
            .is_some_and(|q| !(q.is_finite() && q > 0.0))
            .then_some(("qps", "must be a number above 0"));
        let burst = (self.burst == Some(0)).then_some(("burst", "must be at least 1"));
        qps.into_iter().chain(burst)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Remove EDNS Client Subnet from queries before they leave the node.
    pub strip_ecs: bool,
    /// Pad queries sent over TLS to a multiple of this many bytes (RFC 7830/8467); 0 = off.
    pub padding_block: u16,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            strip_ecs: true,
            padding_block: 128,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientGroup {
    /// Client address or prefix, e.g. `10.244.1.7/32`.
    pub cidr: Cidr,
    /// Upstream group that answers every query from these clients.
    pub group: String,
}

/// Where per-node overrides come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct OverridesConfig {
    /// Directory of `*.yaml` files, each an [`OverridesFile`] (node name -> overrides).
    /// Watched and reloaded like the config file.
    pub dir: Option<PathBuf>,
    /// This node's name (the chart sets it from the downward API through
    /// `DOT_PROXY_NODE_NAME`). Entries for other nodes are ignored.
    pub node_name: Option<String>,
    /// How many shard files the operator spreads nodes over (it writes this). With it, the
    /// proxy reads only its own node's shard, `shard-<fnv1a64(node) % shards>.yaml`;
    /// without it, every `*.yaml` in `dir`. Either way only this node's entries count:
    /// another node's change neither reloads nor re-reads anything here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a (Fowler–Noll–Vo): for each byte, XOR it into the hash, then multiply by the
/// FNV prime (wrapping), starting from the offset basis. Stable across runs, versions and
/// platforms, unlike `std`'s seeded hasher: the operator and every proxy agree on it.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard a node's overrides go to; `shards` is at least 1 (0 is treated as 1).
pub fn shard_of(node_name: &str, shards: u32) -> u32 {
    let n = u64::from(shards.max(1));
    // The remainder is below `shards`, so it fits back into a u32.
    (fnv1a64(node_name.as_bytes()) % n) as u32
}

/// The file name of shard `i` (the one key of its ConfigMap).
pub fn shard_key(i: u32) -> String {
    format!("shard-{i}.yaml")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeLocalConfig {
    pub enabled: bool,
    /// Name of the dummy interface holding the addresses.
    pub interface: String,
    /// Link-local addresses pods send DNS to (IPv4 and/or IPv6).
    pub addresses: Vec<std::net::IpAddr>,
    /// DNS port on those addresses.
    pub port: u16,
    /// Conntrack bypass rules: `auto` (nftables if available, else iptables), `nftables`,
    /// `iptables`, or `none`.
    pub firewall: Firewall,
}

impl Default for NodeLocalConfig {
    fn default() -> Self {
        NodeLocalConfig {
            enabled: false,
            interface: "dot-proxy0".into(),
            addresses: vec![std::net::IpAddr::from([169, 254, 20, 10])],
            port: 53,
            firewall: Firewall::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Firewall {
    #[default]
    Auto,
    Nftables,
    Iptables,
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Names answered locally, like a hosts file. Checked first.
    pub static_answers: Vec<StaticRule>,
    /// Names answered NXDOMAIN, REFUSED or a null address. Checked second.
    pub blocklists: Vec<BlockList>,
    /// Names sent upstream as another name. Checked last.
    pub rewrites: Vec<RewriteRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticRule {
    /// `host.example.com`, or `*.example.com` for every name below it (not the name itself).
    pub name: String,
    #[serde(default = "default_static_ttl")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub a: Vec<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aaaa: Vec<std::net::Ipv6Addr>,
    /// An alias; excludes `a` and `aaaa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub txt: Vec<String>,
}

/// Shared with the operator's CRD defaults.
pub fn default_static_ttl() -> u32 {
    300
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BlockList {
    /// A label for logs.
    pub name: String,
    /// Blocked names; each blocks itself and every name below it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A file in hosts format (`0.0.0.0 ads.example.com`) or one name per line; `#`
    /// comments. Re-read on every config reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub action: BlockAction,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BlockAction {
    #[default]
    Nxdomain,
    Refused,
    /// A 0.0.0.0 / :: answer to A / AAAA queries, NODATA to other types.
    NullAddress,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RewriteRule {
    /// The name clients ask for.
    pub from: String,
    /// The name sent upstream instead.
    pub to: String,
    /// Also rewrite names below `from` (`a.from` is sent as `a.to`).
    #[serde(default)]
    pub suffix: bool,
}

/// Overrides for the pods of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeOverrides {
    pub rate_limits: Vec<RateLimitOverride>,
    pub client_groups: Vec<ClientGroup>,
}

/// One override file: node name -> that node's overrides.
pub type OverridesFile = std::collections::BTreeMap<String, NodeOverrides>;

/// Reading or writing a config as YAML failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum YamlError {
    /// Not YAML, or not this schema (an unknown field, a wrong type); serde's message names
    /// the field and line.
    #[error("{0}")]
    Parse(String),
    /// The config could not be written as YAML.
    #[error("cannot write the config as YAML: {0}")]
    Write(String),
}

/// Every problem found in a config, each with the path of its field.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {errors}")]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

impl Config {
    /// Parses YAML text (unknown fields and duplicate keys are errors) without validating.
    pub fn from_yaml(text: &str) -> Result<Config, YamlError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| YamlError::Parse(e.to_string()))
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Config::from_yaml(&text).map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|errors| LoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        })?;
        Ok(cfg)
    }

    pub fn to_yaml(&self) -> Result<String, YamlError> {
        serde_saphyr::to_string(self).map_err(|e| YamlError::Write(e.to_string()))
    }

    /// Checks everything that serde cannot: references between sections, ranges, names.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let mut err = |field: String, message: String| errs.push(FieldError { field, message });
        self.check_process(&mut err);
        self.check_upstream_groups(&mut err);
        self.check_zones(&mut err);
        self.check_cache(&mut err);
        self.check_tcp(&mut err);
        self.check_rate_limit(&mut err);
        self.check_client_groups(&mut err);
        self.check_node_local(&mut err);
        self.check_policy(&mut err);
        self.check_privacy_and_shutdown(&mut err);
        self.dnstap.check(&mut err);
        self.kubernetes
            .check(self.overrides.node_name.as_deref(), &mut err);
        self.search_completion.check(&self.kubernetes, &mut err);
        self.filter_aaaa.check(&mut err);
        self.memory.check(self.cache.max_bytes, &mut err);

        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// `validate`, for listen addresses, workers, logs, the default CA file.
    fn check_process(&self, err: &mut impl FnMut(String, String)) {
        if self.listen.is_empty() {
            err(
                "listen".into(),
                "at least one listen address is required".into(),
            );
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                err(format!("listen[{i}]"), format!("{a} is listed twice"));
            }
        }
        if let Some(m) = limits::WORKERS.check(self.workers as u64) {
            err("workers".into(), m);
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            err("log.level".into(), format!("invalid filter: {e}"));
        }
        if let Some(ca) = &self.tls.ca_file {
            check_readable(err, "tls.ca_file", ca);
        }
    }

    /// `validate`, for upstream groups and their servers.
    fn check_upstream_groups(&self, err: &mut impl FnMut(String, String)) {
        if self.upstream_groups.is_empty() {
            err(
                "upstream_groups".into(),
                "at least one upstream group is required".into(),
            );
        }
        // A client's own group is one byte of the cache key (0 = zone routing).
        if self.upstream_groups.len() > MAX_UPSTREAM_GROUPS {
            err(
                "upstream_groups".into(),
                format!(
                    "{} groups; at most {MAX_UPSTREAM_GROUPS}",
                    self.upstream_groups.len()
                ),
            );
        }
        for (gi, g) in self.upstream_groups.iter().enumerate() {
            let gp = format!("upstream_groups[{gi}]");
            if g.name.is_empty() {
                err(format!("{gp}.name"), "must not be empty".into());
            }
            if self.upstream_groups[..gi].iter().any(|o| o.name == g.name) {
                err(
                    format!("{gp}.name"),
                    format!("group {:?} is defined twice", g.name),
                );
            }
            if g.servers.is_empty() {
                err(
                    format!("{gp}.servers"),
                    "at least one server is required".into(),
                );
            }
            if g.timeout.get().is_zero() || g.timeout.get().as_secs() > 60 {
                err(
                    format!("{gp}.timeout"),
                    "must be between 1ms and 60s".into(),
                );
            }
            for (si, s) in g.servers.iter().enumerate() {
                validate_server(err, &format!("{gp}.servers[{si}]"), s);
            }
            // The servers of a group stand in for one another: plain DNS beside an
            // encrypted server would be a clear-text fallback for it.
            if g.servers.iter().any(|s| s.protocol.is_encrypted()) {
                for (si, s) in g.servers.iter().enumerate() {
                    if !s.protocol.is_encrypted() {
                        err(
                            format!("{gp}.servers[{si}].protocol"),
                            format!(
                                "group {:?} has encrypted servers; a plain-DNS server beside them would receive their queries in clear text when they fail: put plain servers in a group of their own",
                                g.name
                            ),
                        );
                    }
                }
            }
        }
    }

    /// `validate`, for zone routes: each names a group, plain DNS only where allowed, a route for `.`.
    fn check_zones(&self, err: &mut impl FnMut(String, String)) {
        let mut has_root = false;
        for (zi, z) in self.zones.iter().enumerate() {
            let zp = format!("zones[{zi}]");
            let norm = match normalize_zone(&z.zone) {
                Ok(n) => n,
                Err(m) => {
                    err(format!("{zp}.zone"), m);
                    continue;
                }
            };
            if self.zones[..zi]
                .iter()
                .any(|o| normalize_zone(&o.zone).ok().as_deref() == Some(&norm))
            {
                err(
                    format!("{zp}.zone"),
                    format!("zone {:?} is routed twice", z.zone),
                );
            }
            let group = self.upstream_groups.iter().find(|g| g.name == z.group);
            match group {
                None => err(
                    format!("{zp}.group"),
                    format!("no upstream group named {:?}", z.group),
                ),
                Some(g) if norm == "." => {
                    has_root = true;
                    if g.is_plain() && !self.allow_plain_default {
                        err(
                            format!("{zp}.group"),
                            format!(
                                "group {:?} has plain-DNS servers and serves \".\"; set allow_plain_default: true to allow unencrypted default forwarding",
                                g.name
                            ),
                        );
                    }
                }
                Some(_) => {}
            }
        }
        if !has_root {
            err(
                "zones".into(),
                "a route for \".\" (the default) is required".into(),
            );
        }
    }

    /// `validate`, for cache bounds and clamps.
    fn check_cache(&self, err: &mut impl FnMut(String, String)) {
        use limits::*;
        let c = &self.cache;
        let mut range = |field: &str, v: u64, r: Range<u64>| {
            if let Some(m) = r.check(v) {
                err(format!("cache.{field}"), m);
            }
        };
        if c.enabled {
            if c.max_entries == 0 {
                range("max_entries", 0, CACHE_MAX_ENTRIES);
            } else {
                range("max_entries", c.max_entries as u64, CACHE_MAX_ENTRIES);
            }
            range("max_bytes", c.max_bytes, CACHE_MAX_BYTES);
        }
        range("min_ttl", c.min_ttl.into(), CACHE_MIN_TTL);
        range("max_ttl", c.max_ttl.into(), CACHE_MAX_TTL);
        range(
            "negative_max_ttl",
            c.negative_max_ttl.into(),
            CACHE_NEGATIVE_MAX_TTL,
        );
        range("servfail_ttl", c.servfail_ttl.into(), CACHE_SERVFAIL_TTL);
        range("stale_ttl", c.stale_ttl.into(), CACHE_STALE_TTL);
        let p = &c.prefetch;
        range("prefetch.min_hits", p.min_hits.into(), PREFETCH_MIN_HITS);
        range("prefetch.top_n", p.top_n as u64, PREFETCH_TOP_N);
        if let Some(m) = PREFETCH_REMAINING_FRACTION.check(p.remaining_fraction) {
            err("cache.prefetch.remaining_fraction".into(), m);
        }
        if c.min_ttl > c.max_ttl {
            err(
                "cache.min_ttl".into(),
                format!("{} is above cache.max_ttl ({})", c.min_ttl, c.max_ttl),
            );
        }
        for (i, z) in c.zones.iter().enumerate() {
            let f = format!("cache.zones[{i}]");
            match normalize_zone(&z.zone) {
                Ok(n) if n == "." => err(
                    format!("{f}.zone"),
                    "must not be \".\" (the cache-wide settings are that)".into(),
                ),
                Ok(n)
                    if c.zones[..i]
                        .iter()
                        .any(|o| normalize_zone(&o.zone).ok().as_ref() == Some(&n)) =>
                {
                    err(format!("{f}.zone"), format!("{n:?} is listed twice"))
                }
                Ok(_) => {}
                Err(m) => err(format!("{f}.zone"), m),
            }
            for (field, v, r) in [
                ("min_ttl", z.min_ttl, CACHE_MIN_TTL),
                ("max_ttl", z.max_ttl, CACHE_MAX_TTL),
                (
                    "negative_max_ttl",
                    z.negative_max_ttl,
                    CACHE_NEGATIVE_MAX_TTL,
                ),
            ] {
                if let Some(m) = v.and_then(|v| r.check(v.into())) {
                    err(format!("{f}.{field}"), m);
                }
            }
            let (min, max) = (
                z.min_ttl.unwrap_or(c.min_ttl),
                z.max_ttl.unwrap_or(c.max_ttl),
            );
            if min > max {
                err(
                    format!("{f}.min_ttl"),
                    format!("{min} is above the zone's max_ttl ({max})"),
                );
            }
        }
    }

    /// `validate`, for TCP listener limits.
    fn check_tcp(&self, err: &mut impl FnMut(String, String)) {
        let t = &self.tcp;
        if t.max_connections == 0 {
            err("tcp.max_connections".into(), "must be at least 1".into());
        }
        if t.max_connections_per_client == 0 {
            err(
                "tcp.max_connections_per_client".into(),
                "must be at least 1".into(),
            );
        }
        if t.idle_timeout.get().is_zero() {
            err("tcp.idle_timeout".into(), "must be above 0".into());
        }
        if t.frame_timeout.get().is_zero() {
            err("tcp.frame_timeout".into(), "must be above 0".into());
        }
        if t.max_inflight_per_connection == 0 {
            err(
                "tcp.max_inflight_per_connection".into(),
                "must be at least 1".into(),
            );
        }
    }

    /// `validate`, for rate limits and their overrides.
    fn check_rate_limit(&self, err: &mut impl FnMut(String, String)) {
        use limits::*;
        let r = &self.rate_limit;
        if let Some(m) = RATE_QPS.check(r.qps) {
            err("rate_limit.qps".into(), m);
        }
        let mut range = |field: &str, v: u64, r: Range<u64>| {
            if let Some(m) = r.check(v) {
                err(format!("rate_limit.{field}"), m);
            }
        };
        range("burst", r.burst.into(), RATE_BURST);
        range("ipv6_prefix", r.ipv6_prefix.into(), RATE_IPV6_PREFIX);
        range("slip", r.slip.into(), RATE_SLIP);
        range("max_clients", r.max_clients as u64, RATE_MAX_CLIENTS);
        for (i, o) in r.overrides.iter().enumerate() {
            for (field, m) in o.problems() {
                err(format!("rate_limit.overrides[{i}].{field}"), m.into());
            }
        }
    }

    /// `validate`, for per-client groups.
    fn check_client_groups(&self, err: &mut impl FnMut(String, String)) {
        for (i, c) in self.client_groups.iter().enumerate() {
            if let Err(m) = self.client_group_usable(&c.group) {
                err(format!("client_groups[{i}].group"), m);
            }
        }
    }

    /// Whether clients may be sent to the group `name` for every name they ask, or why not:
    /// it must exist, and plain DNS there needs the same opt-in as for ".". Validation and
    /// the merge of per-pod overrides both ask this.
    pub fn client_group_usable(&self, name: &str) -> Result<(), String> {
        match self.upstream_groups.iter().find(|g| g.name == name) {
            None => Err(format!("no upstream group named {name:?}")),
            Some(g) if g.is_plain() && !self.allow_plain_default => Err(format!(
                "group {name:?} has plain-DNS servers and would answer every name these clients ask; set allow_plain_default: true to allow unencrypted forwarding for them"
            )),
            Some(_) => Ok(()),
        }
    }

    /// `validate`, for the node-local address setup.
    fn check_node_local(&self, err: &mut impl FnMut(String, String)) {
        let nl = &self.node_local;
        if nl.enabled {
            if nl.addresses.is_empty() {
                err(
                    "node_local.addresses".into(),
                    "at least one address is required when enabled".into(),
                );
            }
            if nl.interface.is_empty()
                || nl.interface.len() > 15
                || !nl
                    .interface
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                err(
                    "node_local.interface".into(),
                    "must be 1-15 characters of letters, digits, '-', '_' or '.'".into(),
                );
            }
            if nl.port == 0 {
                err("node_local.port".into(), "must not be 0".into());
            }
        }
    }

    /// `validate`, for static answers, block lists, rewrites.
    fn check_policy(&self, err: &mut impl FnMut(String, String)) {
        let pol = &self.policy;
        for (i, r) in pol.static_answers.iter().enumerate() {
            let f = format!("policy.static_answers[{i}]");
            let name = r.name.strip_prefix("*.").unwrap_or(&r.name);
            if let Err(m) = normalize_zone(name).and_then(|n| {
                if n == "." {
                    Err("must not be \".\"".to_string())
                } else {
                    Ok(n)
                }
            }) {
                err(format!("{f}.name"), m);
            }
            if let Some(m) = limits::STATIC_TTL.check(r.ttl.into()) {
                err(format!("{f}.ttl"), m);
            }
            if r.a.is_empty() && r.aaaa.is_empty() && r.cname.is_none() && r.txt.is_empty() {
                err(
                    f.clone(),
                    "needs at least one of a, aaaa, cname, txt".into(),
                );
            }
            if let Some(c) = &r.cname {
                if !(r.a.is_empty() && r.aaaa.is_empty() && r.txt.is_empty()) {
                    err(
                        format!("{f}.cname"),
                        "a CNAME excludes other records at the same name".into(),
                    );
                }
                if let Err(m) = normalize_zone(c) {
                    err(format!("{f}.cname"), m);
                }
            }
            if r.txt.iter().any(|t| t.len() > 255) {
                err(
                    format!("{f}.txt"),
                    "each string must be at most 255 bytes".into(),
                );
            }
        }
        for (i, b) in pol.blocklists.iter().enumerate() {
            let f = format!("policy.blocklists[{i}]");
            if b.names.is_empty() && b.file.is_none() {
                err(f.clone(), "needs names or a file".into());
            }
            for (j, n) in b.names.iter().enumerate() {
                if let Err(m) = normalize_zone(n).and_then(|n| {
                    if n == "." {
                        Err("must not be \".\"".to_string())
                    } else {
                        Ok(n)
                    }
                }) {
                    err(format!("{f}.names[{j}]"), m);
                }
            }
            if let Some(file) = &b.file {
                check_readable(err, &format!("{f}.file"), file);
            }
        }
        for (i, r) in pol.rewrites.iter().enumerate() {
            let f = format!("policy.rewrites[{i}]");
            for (field, v) in [("from", &r.from), ("to", &r.to)] {
                if let Err(m) = normalize_zone(v).and_then(|n| {
                    if n == "." {
                        Err("must not be \".\"".to_string())
                    } else {
                        Ok(n)
                    }
                }) {
                    err(format!("{f}.{field}"), m);
                }
            }
        }
    }

    /// `validate`, for padding and shutdown grace.
    fn check_privacy_and_shutdown(&self, err: &mut impl FnMut(String, String)) {
        if let Some(m) = limits::PADDING_BLOCK.check(self.privacy.padding_block.into()) {
            err("privacy.padding_block".into(), m);
        }
        if self.shutdown_grace.get().as_secs() > 600 {
            err("shutdown_grace".into(), "must be at most 10m".into());
        }
    }
}

fn check_readable(err: &mut impl FnMut(String, String), field: &str, path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        err(
            field.to_string(),
            format!("cannot read {}: {e}", path.display()),
        );
    }
}

fn validate_server(err: &mut impl FnMut(String, String), sp: &str, s: &UpstreamServer) {
    if s.address.port() == 0 {
        err(format!("{sp}.address"), "port must not be 0".into());
    }
    if s.address.ip().is_unspecified() {
        err(
            format!("{sp}.address"),
            "must not be an unspecified address".into(),
        );
    }
    if s.path.is_some() && s.protocol != Protocol::Https {
        err(
            format!("{sp}.path"),
            "only for https servers (the URL path of DNS over HTTPS)".into(),
        );
    }
    if let Some(p) = &s.path {
        if !p.starts_with('/')
            || p.len() > 256
            || p.bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
        {
            err(
                format!("{sp}.path"),
                format!("{p:?} must be an absolute URL path (starting with /, no spaces, query or fragment, at most 256 bytes)"),
            );
        }
    }
    match s.protocol {
        Protocol::Tls | Protocol::Https | Protocol::Quic => {
            match s.tls_name.as_deref() {
                Some(n) if !valid_server_name(n) => err(
                    format!("{sp}.tls_name"),
                    format!("{n:?} is not a valid DNS name or IP address"),
                ),
                None | Some("") if s.verify_ca || s.spki_pins.is_empty() => err(
                    format!("{sp}.tls_name"),
                    "required for a TLS, HTTPS or QUIC upstream (the name its certificate must be valid for)"
                        .into(),
                ),
                _ => {}
            }
            if !s.verify_ca && s.spki_pins.is_empty() {
                err(
                    format!("{sp}.verify_ca"),
                    "may be false only when spki_pins are set".into(),
                );
            }
            if let Some(ca) = &s.ca_file {
                check_readable(err, &format!("{sp}.ca_file"), ca);
            }
            if let Some(m) = limits::POOL_SIZE.check(s.pool_size as u64) {
                err(format!("{sp}.pool_size"), m);
            }
            if s.force_tcp {
                err(
                    format!("{sp}.force_tcp"),
                    "only for plain servers (DNS over TLS and HTTPS run over TCP, QUIC over UDP)"
                        .into(),
                );
            }
        }
        Protocol::Plain => {
            if s.tls_name.is_some() || !s.spki_pins.is_empty() || s.ca_file.is_some() {
                err(
                    format!("{sp}.protocol"),
                    "plain servers take no tls_name, spki_pins or ca_file".into(),
                );
            }
        }
    }
    if s.idle_timeout.get().is_zero() {
        err(format!("{sp}.idle_timeout"), "must be above 0".into());
    }
    if s.max_connection_age.get() < std::time::Duration::from_secs(1) {
        err(
            format!("{sp}.max_connection_age"),
            "must be at least 1s".into(),
        );
    }
    if s.connect_timeout.get().is_zero() {
        err(format!("{sp}.connect_timeout"), "must be above 0".into());
    }
}

/// Lower-cases a zone name and strips the trailing dot; `.` stays `.`.
pub fn normalize_zone(zone: &str) -> Result<String, String> {
    let z = zone.trim();
    if z == "." {
        return Ok(".".into());
    }
    let z = z.strip_suffix('.').unwrap_or(z).to_ascii_lowercase();
    if z.is_empty() {
        return Err("must not be empty (use \".\" for the default route)".into());
    }
    if z.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in z.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{zone:?} has an empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{zone:?} has a character not allowed in a domain name"
            ));
        }
    }
    Ok(z)
}

#[cfg(test)]
mod tests;
