//! Live reconfiguration: the config file is watched (its directory, so kubelet's atomic
//! `..data` symlink swap of a mounted ConfigMap is seen), and so are the override shards and
//! the block-list files the config names; everything is re-read on SIGHUP. A new config is
//! loaded ([`crate::load`]: parsed and validated) before anything changes; an invalid one is
//! logged (naming the field), counted, and the last good config keeps running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::cli::Cli;
use crate::config::Config;
use crate::load::{load, Inputs, LoadError};
use crate::server::{Server, StartError};

/// Why a reload changed nothing: the new config could not be loaded, or not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Apply(#[from] StartError),
}

/// Reloads on SIGHUP and when what the config depends on changes, until shutdown.
/// `inputs` are those of the config the server runs (its [`Loaded::inputs`](crate::load::Loaded::inputs)): a change
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
        let result = load(&cli).map_err(ReloadError::from).and_then(|loaded| {
            server.apply(loaded.config)?;
            Ok((loaded.hash, loaded.inputs))
        });
        // Compared next time with what this load read (a refused one: with what was there
        // before it, so the same bad config is not tried at every unrelated event).
        let status = server.config_status();
        status.record(result.is_ok());
        last = match result {
            Ok((hash, inputs)) => {
                status.set_hash(&hash);
                tracing::info!("config reloaded");
                inputs
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; keeping the last good config");
                before
            }
        };
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
