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
use crate::config::{Config, OverridesFile};
use crate::server::Server;

/// Loads the file (or defaults) and applies flag overrides, then validates.
pub fn load_effective(cli: &Cli) -> Result<Config, String> {
    let mut cfg = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Config::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    cli.apply(&mut cfg).map_err(|e| e.to_string())?;
    merge_overrides(&mut cfg)?;
    cfg.validate().map_err(|e| match &cli.config {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    })?;
    Ok(cfg)
}

/// Adds this node's entries from the override shards (`overrides.dir`, written by the
/// operator) to the rate-limit overrides and client groups. A missing directory is empty:
/// the operator may not have written it yet.
pub fn merge_overrides(cfg: &mut Config) -> Result<(), String> {
    let (Some(dir), Some(node)) = (cfg.overrides.dir.clone(), cfg.overrides.node_name.clone())
    else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        let mut shard: OverridesFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        if let Some(mine) = shard.remove(&node) {
            cfg.rate_limit.overrides.extend(mine.rate_limits);
            cfg.client_groups.extend(mine.client_groups);
        }
    }
    Ok(())
}

/// Reloads on SIGHUP and when the config file's content changes, until shutdown.
pub async fn run(server: Arc<Server>, cli: Arc<Cli>) {
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
    let snapshot = |lists: &[PathBuf]| {
        let mut v = cli
            .config
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        if let Some(d) = &overrides_dir {
            if let Ok(rd) = std::fs::read_dir(d) {
                let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for f in files {
                    v.extend(std::fs::read(&f).unwrap_or_default());
                }
            }
        }
        for f in lists {
            v.extend(file_identity(f));
        }
        v
    };
    let mut last = snapshot(&lists);
    loop {
        let forced = tokio::select! {
            _ = server.stop.cancelled() => break,
            Some(()) = rx.recv() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        // Let a burst of file events settle (kubelet writes several files, then swaps).
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let now = snapshot(&lists);
        if !forced && now == last {
            continue;
        }
        let result = load_effective(&cli).and_then(|cfg| server.apply(cfg));
        server.record_reload(&result);
        let now_lists = list_files(&server.current_config());
        if now_lists != lists {
            list_watchers = watch_all(&now_lists, &tx);
            lists = now_lists;
        }
        last = snapshot(&lists);
    }
    drop(list_watchers);
}

fn list_files(cfg: &Config) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = cfg
        .policy
        .blocklists
        .iter()
        .filter_map(|b| b.file.clone())
        .collect();
    v.sort();
    v.dedup();
    v
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

/// What tells a file's versions apart without reading it: device, inode, size, mtime.
fn file_identity(path: &Path) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return b"missing".to_vec();
    };
    [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ]
    .iter()
    .flat_map(|x| x.to_le_bytes())
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
