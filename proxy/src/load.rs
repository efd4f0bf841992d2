//! Loading a config: the file (or the built-in defaults), the flags and `DOT_PROXY_*`
//! variables, this node's override entries, then validation; the hash the operator and
//! the metrics name it by; and what the load read ([`Inputs`]), so a watcher can tell a
//! change from one already applied. Used at start, by `check-config` and by every reload.
//! [`ConfigStatus`] is what the metrics say of the config in use.

use std::path::PathBuf;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::cli::Cli;
use crate::config::{merge_overrides, own_overrides, Config};

/// Why a config could not be loaded; each says which file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: crate::config::YamlError,
    },
    #[error(transparent)]
    Flags(#[from] crate::cli::FlagError),
    #[error("override shards: {0}")]
    Overrides(String),
    #[error("{}{source}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        #[source]
        source: crate::config::ConfigErrors,
    },
}

/// A config as loaded, and what it was loaded from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The SHA-256 (lower-case hex) of the config file's bytes as read, which is what the
    /// operator writes as the ConfigMap's `dns.dot-proxy.io/config-hash` and the
    /// DotProxyConfig status's `configHash`. Without a file, the hash of the effective
    /// config as YAML.
    pub hash: String,
    /// What the load read; the reloader compares what is there now with it.
    pub inputs: Inputs,
}

/// What a config depends on besides flags: the config file's bytes, this node's own
/// override entries (not the shard files: another node's change must not reload this one)
/// and the block-list files' identities. A load takes them as it reads (the file's very
/// bytes; the entries and identities before it reads the shards and lists), so whatever
/// changes while a proxy starts or applies a reload differs from them afterwards and is
/// applied next: a change is never taken for one already applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs(Vec<u8>);

impl Inputs {
    fn of(file: &[u8], cfg: &Config) -> Inputs {
        let mut v = sha256_hex(file).into_bytes();
        match own_overrides(&cfg.overrides) {
            Ok(mine) => v.extend(format!("{mine:?}").into_bytes()),
            // Unreadable now: the reload reports it.
            Err(e) => v.extend(e.into_bytes()),
        }
        v.extend(crate::policy::files_identity(&crate::policy::list_files(
            &cfg.policy,
        )));
        Inputs(v)
    }

    /// What a reload would read now, with `cfg` (the running config) saying where the
    /// override shards and block lists are.
    pub fn now(cli: &Cli, cfg: &Config) -> Inputs {
        let file = cli
            .config
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        Inputs::of(&file, cfg)
    }
}

/// Reads the config file (or takes the defaults), applies flag overrides and this node's
/// override entries, and validates.
pub fn load(cli: &Cli) -> Result<Loaded, LoadError> {
    let (mut cfg, file) = match &cli.config {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| LoadError::NotText { path: path.clone() })?;
            let cfg = Config::from_yaml(text).map_err(|source| LoadError::Parse {
                path: path.clone(),
                source,
            })?;
            (cfg, Some(bytes))
        }
        None => (Config::default(), None),
    };
    cli.apply(&mut cfg)?;
    let inputs = Inputs::of(file.as_deref().unwrap_or_default(), &cfg);
    let skipped = merge_overrides(&mut cfg).map_err(LoadError::Overrides)?;
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "per-pod override entries this config cannot use (a group it does not have, or a plain-DNS group without allow_plain_default, or an invalid rate) were left out"
        );
    }
    cfg.validate().map_err(|source| LoadError::Invalid {
        path: cli.config.clone(),
        source,
    })?;
    let hash = match &file {
        Some(bytes) => sha256_hex(bytes),
        None => config_hash(&cfg),
    };
    Ok(Loaded {
        config: cfg,
        hash,
        inputs,
    })
}

/// SHA-256 (lower-case hex) of a config written as YAML.
pub fn config_hash(cfg: &Config) -> String {
    // A config that came from YAML writes as YAML; were that ever to fail, its Debug form
    // still tells configs apart.
    let text = cfg.to_yaml().unwrap_or_else(|_| format!("{cfg:?}"));
    sha256_hex(text.as_bytes())
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    success,
    failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigInfoLabels {
    /// SHA-256 (hex) of the config applied.
    hash: String,
}

/// What the metrics say of the config in use: loads and reloads by result, when the last
/// good one came, its hash, and how many of its settings wait for a restart.
#[derive(Clone, Debug, Default)]
pub struct ConfigStatus {
    reloads: Family<ReloadLabels, Counter>,
    info: Family<ConfigInfoLabels, Gauge>,
    restart_pending: Gauge,
    last_success: Gauge,
    last_reload_ok: Gauge,
}

impl ConfigStatus {
    /// `restart_only` names the settings a running process keeps until it restarts.
    pub fn register(&self, r: &mut Registry, restart_only: &[&str]) {
        r.register(
            "config_restart_pending_settings",
            format!(
                "Settings of the applied config that take effect only at restart ({}) and differ from what this process runs with",
                restart_only.join(", ")
            ),
            self.restart_pending.clone(),
        );
        r.register(
            "config_info",
            "The config this proxy applied: one series, 1, labelled with its SHA-256 (of the config file, as the operator's configHash)",
            self.info.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "Unix time of the last config successfully loaded",
            Unit::Seconds,
            self.last_success.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last config load or reload succeeded, 0 while a bad config is refused",
            self.last_reload_ok.clone(),
        );
    }

    /// Counts a load (the first one at start, or a reload) by its result.
    pub fn record(&self, ok: bool) {
        let result = if ok {
            ReloadResult::success
        } else {
            ReloadResult::failure
        };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_success.set(unix_now());
        }
    }

    /// Exports the hash of the config now applied (`dot_proxy_config_info{hash}`), replacing
    /// the previous one: always exactly one series.
    pub fn set_hash(&self, hash: &str) {
        self.info.clear();
        self.info
            .get_or_create(&ConfigInfoLabels {
                hash: hash.to_string(),
            })
            .set(1);
    }

    /// How many settings of the applied config wait for a restart.
    pub fn set_restart_pending(&self, n: usize) {
        self.restart_pending.set(n as i64);
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
