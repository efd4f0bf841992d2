//! Live reconfiguration: the config file is watched (its directory, so kubelet's atomic
//! `..data` symlink swap of a mounted ConfigMap is seen), and so are the override shards and
//! the block-list files the config names; everything is re-read on SIGHUP. A new config is
//! parsed and validated before anything changes; an invalid one is logged (naming the
//! field), counted, and the last good config keeps running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::cli::Cli;
use crate::config::Config;
use crate::server::Server;

/// Why a config could not be loaded or applied; each says which file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
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
    #[error(transparent)]
    Apply(#[from] crate::server::StartError),
}

/// Loads the file (or defaults) and applies flag overrides, then validates.
pub fn load_effective(cli: &Cli) -> Result<Config, ReloadError> {
    load(cli).map(|l| l.config)
}

/// [`load_effective`], with the config's hash (see [`Loaded::hash`]).
pub fn load_effective_with_hash(cli: &Cli) -> Result<(Config, String), ReloadError> {
    load(cli).map(|l| (l.config, l.hash))
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
        v.extend(crate::policy::files_identity(&list_files(cfg)));
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
pub fn load(cli: &Cli) -> Result<Loaded, ReloadError> {
    let (mut cfg, file) = match &cli.config {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| ReloadError::Read {
                path: path.clone(),
                source,
            })?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ReloadError::NotText { path: path.clone() })?;
            let cfg = Config::from_yaml(text).map_err(|source| ReloadError::Parse {
                path: path.clone(),
                source,
            })?;
            (cfg, Some(bytes))
        }
        None => (Config::default(), None),
    };
    cli.apply(&mut cfg)?;
    let inputs = Inputs::of(file.as_deref().unwrap_or_default(), &cfg);
    let skipped = merge_overrides(&mut cfg).map_err(ReloadError::Overrides)?;
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "per-pod override entries this config cannot use (a group it does not have, or a plain-DNS group without allow_plain_default, or an invalid rate) were left out"
        );
    }
    cfg.validate().map_err(|source| ReloadError::Invalid {
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

pub use crate::config::{merge_overrides, own_overrides};

/// Reloads on SIGHUP and when what the config depends on changes, until shutdown.
/// `inputs` are those of the config the server runs (its [`Loaded::inputs`]): a change
/// made while the proxy started is applied at once, though its file event came before
/// this watch.
pub async fn run(server: Arc<Server>, cli: Arc<Cli>, inputs: Inputs) {
    let (tx, mut rx) = mpsc::channel::<()>(8);
    let _watcher = cli.config.as_deref().and_then(|p| watch(p, tx.clone()));
    let overrides_dir = server.current_config().overrides.dir.clone();
    let _watcher2 = overrides_dir
        .as_deref()
        .and_then(|d| watch(&d.join("x.yaml"), tx.clone()));
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // Block-list files: watched where the current config says they are, compared by identity
    // and size (a list can be tens of megabytes; a kubelet swap gives it a new inode).
    let mut lists = list_files(&server.current_config());
    let mut list_watchers = watch_all(&lists, &tx);
    let mut last = inputs;
    // The first look needs no event: the watches above began after the start-up load.
    let mut first = true;
    loop {
        let forced = if std::mem::take(&mut first) {
            false
        } else {
            let forced = tokio::select! {
                _ = server.stop.cancelled() => break,
                Some(()) = rx.recv() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            // Let a burst of file events settle (kubelet writes several files, then swaps).
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            forced
        };
        let before = Inputs::now(&cli, &server.current_config());
        if !forced && before == last {
            continue;
        }
        let result = load(&cli).and_then(|loaded| {
            server.apply(loaded.config)?;
            Ok::<(String, Inputs), ReloadError>((loaded.hash, loaded.inputs))
        });
        // Compared next time with what this load read (a refused one: with what was there
        // before it, so the same bad config is not tried at every unrelated event).
        last = match &result {
            Ok((hash, inputs)) => {
                server.set_config_hash(hash);
                inputs.clone()
            }
            Err(_) => before,
        };
        server.record_reload(&result.map(|_| ()));
        let now_lists = list_files(&server.current_config());
        if now_lists != lists {
            list_watchers = watch_all(&now_lists, &tx);
            lists = now_lists;
        }
    }
    drop(list_watchers);
}

fn list_files(cfg: &Config) -> Vec<PathBuf> {
    crate::policy::list_files(&cfg.policy)
}

/// One watcher per directory holding a block-list file.
fn watch_all(files: &[PathBuf], tx: &mpsc::Sender<()>) -> Vec<notify::RecommendedWatcher> {
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    dirs.iter()
        .filter_map(|d| watch(&d.join("x"), tx.clone()))
        .collect()
}

fn watch(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir: PathBuf = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    match w.watch(&dir, RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
            None
        }
    }
}
