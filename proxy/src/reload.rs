//! Live reconfiguration: the config file is watched (its directory, so kubelet's atomic
//! `..data` symlink swap of a mounted ConfigMap is seen) and re-read on SIGHUP. A new config
//! is parsed and validated before anything changes; an invalid one is logged (naming the
//! field), counted, and the last good config keeps running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::cli::Cli;
use crate::config::Config;
use crate::server::Server;

/// Loads the file (or defaults) and applies flag overrides, then validates.
pub fn load_effective(cli: &Cli) -> Result<Config, String> {
    let mut cfg = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Config::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    cli.apply(&mut cfg).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| match &cli.config {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    })?;
    Ok(cfg)
}

/// Reloads on SIGHUP and when the config file's content changes, until shutdown.
pub async fn run(server: Arc<Server>, cli: Arc<Cli>) {
    let (tx, mut rx) = mpsc::channel::<()>(8);
    let _watcher = cli.config.as_deref().and_then(|p| watch(p, tx.clone()));
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = cli.config.as_deref().and_then(|p| std::fs::read(p).ok());
    loop {
        let forced = tokio::select! {
            _ = server.stop.cancelled() => break,
            Some(()) = rx.recv() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        // Let a burst of file events settle (kubelet writes several files, then swaps).
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let now = cli.config.as_deref().and_then(|p| std::fs::read(p).ok());
        if !forced && now == last {
            continue;
        }
        last = now;
        let result = load_effective(&cli).and_then(|cfg| server.apply(cfg));
        server.record_reload(&result);
    }
}

fn watch(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir: PathBuf = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
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
