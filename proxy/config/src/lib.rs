//! The proxy's configuration schema: defined once here, read from YAML by the proxy and
//! rendered by the operator from these same types.
//!
//! Loading is two steps: parse (serde, unknown fields refused) and [`Config::validate`],
//! which collects every semantic error with the path of the field at fault.
//!
//! Each section has one home, `<section>.rs`: its type, defaults, bounds (the `limits`
//! constants, also written on the fields for the schema feature) and a check that names
//! fields relative to the section ([`Errors`]); `validate` calls the sections and then the
//! checks that need more than one. This file holds the whole [`Config`] and its loading.

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

mod admin;
mod cache;
pub mod cidr;
mod dnstap;
mod duration;
mod kubernetes;
pub mod limits;
mod log;
mod memory;
mod node_local;
mod overrides;
pub mod path;
pub mod patterns;
pub mod pod;
mod policy;
mod privacy;
mod ratelimit;
mod tcp;
mod tls;
mod upstream;
mod upstream_url;
mod zones;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use admin::AdminConfig;
pub use cache::{CacheConfig, CacheZone, PrefetchConfig};
pub use cidr::Cidr;
pub use dnstap::DnstapConfig;
pub use duration::{Dur, DurationError};
pub use kubernetes::{
    completion_type, FilterAaaaConfig, KubernetesConfig, SearchCompletionConfig, COMPLETION_TYPES,
};
pub use log::{LogConfig, LogFormat};
pub use memory::{MemoryConfig, Shares as MemoryShares, FALLBACK_LIMIT as MEMORY_FALLBACK_LIMIT};
pub use node_local::{Firewall, NodeLocalConfig};
pub use overrides::{
    fnv1a64, merge_overrides, own_overrides, shard_key, shard_of, NodeOverrides, OverridesConfig,
    OverridesFile,
};
pub use path::{ConfigErrors, Errors, FieldError, FieldPath, Message, Part, PathSegment};
pub use policy::{
    default_static_ttl, BlockAction, BlockList, PolicyConfig, RewriteRule, StaticRule,
};
pub use privacy::PrivacyConfig;
pub use ratelimit::{LimitAction, RateLimitConfig, RateLimitOverride};
pub use tcp::TcpConfig;
pub use tls::{decode_pin, valid_server_name, SpkiPin, TlsDefaults};
pub use upstream::{
    default_pool_size, default_query_timeout, Policy, Protocol, UpstreamGroup, UpstreamServer,
    DEFAULT_DOH_PATH, MAX_UPSTREAM_GROUPS,
};
pub use upstream_url::{parse_server_address, parse_upstream_url, UpstreamUrlError};
pub use zones::{normalize_zone, ClientGroup, ZoneRoute};

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

    /// Checks everything that serde cannot: ranges and names (each section checks its own,
    /// naming its fields relative to itself), then what one section says about another.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut out = Vec::new();
        let mut e = Errors::new(&mut out);
        // In the order of the sections in the file, each checking itself, then what one
        // section says about another.
        if self.listen.is_empty() {
            e.field("listen", "at least one listen address is required");
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                e.at("listen").index(i).here(format!("{a} is listed twice"));
            }
        }
        e.range("workers", self.workers as u64, limits::WORKERS);
        self.log.check(&mut e.at("log"));
        self.tls.check(&mut e.at("tls"));
        upstream::check_groups(&self.upstream_groups, &mut e.at("upstream_groups"));
        zones::check_routes(
            &self.zones,
            &self.upstream_groups,
            self.allow_plain_default,
            &mut e.at("zones"),
        );
        self.cache.check(&mut e.at("cache"));
        self.tcp.check(&mut e.at("tcp"));
        self.rate_limit.check(&mut e.at("rate_limit"));
        for (i, c) in self.client_groups.iter().enumerate() {
            if let Err(m) = self.client_group_usable(&c.group) {
                e.at("client_groups").index(i).field("group", m);
            }
        }
        self.node_local.check(&mut e.at("node_local"));
        self.policy.check(&mut e.at("policy"));
        self.privacy.check(&mut e.at("privacy"));
        if self.shutdown_grace.get().as_secs() > 600 {
            e.field("shutdown_grace", "must be at most 10m");
        }
        self.dnstap.check(&mut e.at("dnstap"));
        self.kubernetes
            .check(self.overrides.node_name.as_deref(), &mut e.at("kubernetes"));
        self.search_completion
            .check(&self.kubernetes, &mut e.at("search_completion"));
        self.filter_aaaa.check(&mut e.at("filter_aaaa"));
        self.memory.check(&mut e.at("memory"));
        if let Some(m) = self.memory.cache_share_problem(self.cache.max_bytes) {
            e.at("cache").field("max_bytes", m);
        }

        if out.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(out))
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
}

#[cfg(test)]
mod tests;
