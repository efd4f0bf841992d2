//! Command-line flags. Every flag can also come from a `DOT_PROXY_*` environment variable;
//! flags override the config file. This contract is what ../shared/bench plugs in through
//! CANDIDATE_CMD: keep it stable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{parse_upstream_url, Config, LogFormat, UpstreamGroup, DEFAULT_GROUP};

#[derive(Debug, Parser)]
#[command(
    name = "dot-proxy",
    version,
    about = "Node-local DNS proxy: plain DNS in (UDP, TCP), DNS-over-TLS out, with a cache"
)]
pub struct Cli {
    /// YAML config file (see docs/configuration.md). Without it, built-in defaults apply.
    #[arg(short, long, env = "DOT_PROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Address to serve DNS on, UDP and TCP (repeatable; IPv6 as [::1]:53).
    #[arg(short, long, env = "DOT_PROXY_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Upstream for the default zone (repeatable, tried in order): tls://IP[:PORT]#TLS-NAME
    /// (DNS over TLS, port 853), https://IP[:PORT][/PATH]#TLS-NAME (DNS over HTTPS, port 443,
    /// path /dns-query) or quic://IP[:PORT]#TLS-NAME (DNS over QUIC, port 853).
    #[arg(short, long, env = "DOT_PROXY_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,

    /// PEM file of CA certificates to verify upstreams with, instead of the system roots.
    #[arg(long, env = "DOT_PROXY_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Address of the metrics and health HTTP server ("off" to disable).
    #[arg(long, env = "DOT_PROXY_ADMIN_LISTEN", alias = "metrics-listen")]
    pub admin_listen: Option<String>,

    /// Worker threads (0 = one per available CPU).
    #[arg(long, env = "DOT_PROXY_WORKERS")]
    pub workers: Option<usize>,

    /// Log filter, e.g. info, debug, dot_proxy=debug. Query names only appear at debug.
    #[arg(long, env = "DOT_PROXY_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format.
    #[arg(long, env = "DOT_PROXY_LOG_FORMAT", value_parser = parse_log_format, value_name = "text|json")]
    pub log_format: Option<LogFormat>,

    /// This node's name, to pick its entries from the override shards (`overrides.dir`).
    #[arg(long, env = "DOT_PROXY_NODE_NAME")]
    pub node_name: Option<String>,

    /// Turn the answer cache off.
    #[arg(long, env = "DOT_PROXY_NO_CACHE")]
    pub no_cache: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file: exit 0 if good, 1 with a message naming the bad field.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the built-in default config as YAML.
    PrintConfig,
    /// Set up the node-local address (dummy interface, conntrack bypass rules) from the
    /// config's `node_local` section, keep it while the proxy runs, clean up on exit. Needs
    /// CAP_NET_ADMIN; runs apart from the serving process (docs/node-local.md).
    NodeLocal(crate::netsetup::NodeLocalArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--upstream: {0}")]
    Upstream(String),
    #[error("--admin-listen: {0:?} is not an address or \"off\"")]
    Admin(String),
}

impl Cli {
    /// Applies the flags on top of a config (file or defaults).
    pub fn apply(&self, cfg: &mut Config) -> Result<(), FlagError> {
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        if !self.upstream.is_empty() {
            let servers = self
                .upstream
                .iter()
                .map(|u| parse_upstream_url(u).map_err(|e| FlagError::Upstream(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            // The flags replace the servers of the group that answers ".".
            let root_group = cfg
                .zones
                .iter()
                .find(|z| z.zone.trim() == ".")
                .map(|z| z.group.clone())
                .unwrap_or_else(|| DEFAULT_GROUP.to_string());
            match cfg
                .upstream_groups
                .iter_mut()
                .find(|g| g.name == root_group)
            {
                Some(g) => g.servers = servers,
                None => cfg.upstream_groups.push(UpstreamGroup {
                    name: root_group,
                    policy: Default::default(),
                    timeout: crate::config::Dur::secs(2),
                    servers,
                }),
            }
        }
        if let Some(ca) = &self.tls_ca_file {
            cfg.tls.ca_file = Some(ca.clone());
        }
        if let Some(a) = &self.admin_listen {
            cfg.admin.listen = match a.as_str() {
                "off" | "none" | "" => None,
                s => Some(s.parse().map_err(|_| FlagError::Admin(s.to_string()))?),
            };
        }
        if let Some(w) = self.workers {
            cfg.workers = w;
        }
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
        if let Some(f) = self.log_format {
            cfg.log.format = f;
        }
        if let Some(n) = &self.node_name {
            cfg.overrides.node_name = Some(n.clone());
        }
        if self.no_cache {
            cfg.cache.enabled = false;
        }
        Ok(())
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}
