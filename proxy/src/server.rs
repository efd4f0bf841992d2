//! Assembly of a running proxy: the pipeline built from a config ([`Pipeline::from_config`]),
//! the listeners bound ([`crate::listener::bind`]), the admin server, reloads applied
//! atomically, and the drain at shutdown. Each part builds itself and keeps its own
//! metrics; this module only puts them together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::clock::Clock;
use crate::config::Config;
use crate::listener::tcp::{ConnTable, TcpLimits};
use crate::listener::ListenerMetrics;
use crate::load::ConfigStatus;
use crate::metrics::Transport;
use crate::pipeline::{Pipeline, Shared};

pub use crate::pipeline::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
}

pub struct Server {
    registry: Registry,
    shared: Shared,
    listener_metrics: ListenerMetrics,
    config_status: ConfigStatus,
    pipeline: Arc<ArcSwap<Pipeline>>,
    tcp_limits: Arc<ArcSwap<TcpLimits>>,
    conn_table: Arc<ConnTable>,
    config: ArcSwap<Config>,
    /// Held while a config is applied: one reload at a time.
    applying: Mutex<()>,
    /// The stop token of each listen address's listeners.
    listeners: Mutex<HashMap<SocketAddr, CancellationToken>>,
    admin_listener: Mutex<Option<(SocketAddr, CancellationToken)>>,
    /// The admin accept loop, awaited at shutdown so its socket is closed before draining.
    admin_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled on shutdown: listeners stop accepting.
    pub stop: CancellationToken,
    /// Every task serving a query: shutdown waits for them.
    pub tracker: TaskTracker,
    workers: usize,
    /// The config the process started with: settings that cannot change while it runs
    /// are compared with it.
    started: Config,
    pub clock: Arc<Clock>,
}

/// Longest wait for the default group's first connection before the admin port is bound
/// anyway (an unreachable upstream must not keep metrics and liveness away).
const WARM_LIMIT: Duration = Duration::from_secs(3);

/// A setting read only when the process starts: its name, and whether two configs differ
/// in it.
type RestartOnly = (&'static str, fn(&Config, &Config) -> bool);

/// Settings read only when the process starts. The connection table's size is fixed when
/// it is made.
const RESTART_ONLY: [RestartOnly; 6] = [
    ("workers", |a, b| a.workers != b.workers),
    ("shutdown_grace", |a, b| {
        a.shutdown_grace != b.shutdown_grace
    }),
    ("overrides.dir", |a, b| a.overrides.dir != b.overrides.dir),
    ("overrides.node_name", |a, b| {
        a.overrides.node_name != b.overrides.node_name
    }),
    ("kubernetes", |a, b| a.kubernetes != b.kubernetes),
    ("tcp.max_connections", |a, b| {
        a.tcp.max_connections != b.tcp.max_connections
    }),
];

/// The restart-only settings in which two configs differ, by name.
fn restart_only(a: &Config, b: &Config) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|(_, differ)| differ(a, b))
        .map(|(name, _)| *name)
        .collect()
}

impl Server {
    /// Builds everything from a validated config and binds every listener.
    pub async fn start(cfg: Config) -> Result<Arc<Server>, StartError> {
        let mut registry = crate::metrics::registry();
        let shared = Shared::new(&cfg, &mut registry);
        let listener_metrics = ListenerMetrics::default();
        listener_metrics.register(&mut registry);
        let config_status = ConfigStatus::default();
        let names: Vec<&str> = RESTART_ONLY.iter().map(|(n, _)| *n).collect();
        config_status.register(&mut registry, &names);
        let watch_metrics = crate::kubernetes::WatchMetrics::default();
        watch_metrics.register(&mut registry);
        let pipeline = Pipeline::from_config(&cfg, None, &shared)?;
        pipeline.attach_tap();
        let server = Arc::new(Server {
            registry,
            clock: shared.clock.clone(),
            listener_metrics,
            config_status,
            pipeline: Arc::new(ArcSwap::from_pointee(pipeline)),
            tcp_limits: Arc::new(ArcSwap::from_pointee(TcpLimits::from(&cfg.tcp))),
            conn_table: ConnTable::new(cfg.tcp.max_connections),
            config: ArcSwap::from_pointee(cfg.clone()),
            applying: Mutex::new(()),
            listeners: Mutex::new(HashMap::new()),
            admin_listener: Mutex::new(None),
            admin_task: Mutex::new(None),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            workers: effective_workers(cfg.workers),
            started: cfg.clone(),
            shared,
        });
        if cfg.kubernetes.enabled {
            if let Some(node) = cfg.kubernetes.node(cfg.overrides.node_name.as_deref()) {
                tokio::spawn(crate::kubernetes::run(
                    cfg.kubernetes.clone(),
                    node.to_string(),
                    server.shared.pods.clone(),
                    watch_metrics,
                    server.stop.clone(),
                ));
            }
        }
        for addr in &cfg.listen {
            server.bind_listener(*addr)?;
        }
        // The admin port (readiness probe, metrics) is shared with the other process during
        // a surge upgrade: bind it only once this one can answer DNS, with listeners bound
        // and the group serving "." warmed, so a probe answered here is answered by a
        // process that serves.
        server.pipeline.load_full().warmed(WARM_LIMIT).await;
        if let Some(addr) = cfg.admin.listen {
            server.bind_admin(addr)?;
        }
        server.start_background();
        server.config_status.record(true);
        // The hash of the config as YAML; `main` replaces it with the file's hash.
        server
            .config_status
            .set_hash(&crate::load::config_hash(&server.config.load()));
        Ok(server)
    }

    /// Addresses the DNS listeners are bound to.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(a, _)| *a)
    }

    pub fn current_config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// This node's pods as the completion step sees them: filled by the pod watch (tests
    /// fill it themselves).
    pub fn pods(&self) -> &Arc<crate::kubernetes::PodTable> {
        &self.shared.pods
    }

    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.load_full()
    }

    /// What the metrics say of the config in use (the reloader records its attempts here).
    pub fn config_status(&self) -> &ConfigStatus {
        &self.config_status
    }

    /// Exports the hash of the config now applied (`dot_proxy_config_info{hash}`).
    pub fn set_config_hash(&self, hash: &str) {
        self.config_status.set_hash(hash);
    }

    fn bind_listener(self: &Arc<Self>, addr: SocketAddr) -> Result<(), StartError> {
        let bound = crate::listener::bind(addr, self.workers)
            .map_err(|(addr, source)| StartError::Bind { addr, source })?;
        let stop = self.stop.child_token();
        let grace = self.config.load().shutdown_grace.get();
        for sock in bound.udp {
            self.tracker.spawn(crate::listener::udp::serve(
                sock,
                self.pipeline.clone(),
                self.listener_metrics.counters(Transport::udp),
                stop.clone(),
                self.tracker.clone(),
                grace,
            ));
        }
        // Tracked like the UDP loops: the drain must wait for the accept loop's last pass
        // (the connections the kernel had already queued), or the process could exit between
        // the stop and that pass spawning their tasks, closing them unanswered.
        self.tracker.spawn(crate::listener::tcp::serve(
            bound.tcp,
            self.pipeline.clone(),
            self.tcp_limits.clone(),
            self.conn_table.clone(),
            self.listener_metrics.counters(Transport::tcp),
            stop.clone(),
            self.tracker.clone(),
        ));
        tracing::info!(bound = %bound.addr, "listening on UDP and TCP");
        let key = if addr.port() == 0 { bound.addr } else { addr };
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, stop);
        Ok(())
    }

    fn bind_admin(self: &Arc<Self>, addr: SocketAddr) -> Result<(), StartError> {
        let l =
            crate::listener::bind_tcp(addr).map_err(|source| StartError::Bind { addr, source })?;
        self.serve_admin(l, addr);
        Ok(())
    }

    /// Serves the admin endpoints on a bound listener (replacing any earlier one's slot).
    fn serve_admin(self: &Arc<Self>, l: tokio::net::TcpListener, addr: SocketAddr) {
        let bound = l.local_addr().unwrap_or(addr);
        let stop = self.stop.child_token();
        let state: Arc<dyn AdminState> = self.clone();
        let task = tokio::spawn(crate::admin::serve(l, state, stop.clone()));
        *self.admin_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        tracing::info!(%bound, "admin server (metrics, health) listening");
        *self
            .admin_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((bound, stop));
    }

    fn start_background(self: &Arc<Self>) {
        // Health probes of down upstreams, over whichever groups the current pipeline has.
        let weak = Arc::downgrade(self);
        tokio::spawn(crate::upstream::group::probe_loop(move || {
            let s = weak.upgrade().filter(|s| !s.stop.is_cancelled())?;
            let groups = s.pipeline.load().groups().to_vec();
            Some(groups)
        }));
    }

    /// Applies a new validated config: the new pipeline is built first (each part keeping
    /// what it can of the running one), then swapped in; listeners are added and removed
    /// to match. On error nothing changes.
    pub fn apply(self: &Arc<Self>, cfg: Config) -> Result<(), StartError> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.pipeline.load_full();
        let old_cfg = self.config.load_full();
        let pipeline = Pipeline::from_config(&cfg, Some(&old), &self.shared)?;
        // Addresses first, so a bind failure leaves everything as it was: the admin server's
        // new address, then the listeners.
        let new_admin = match cfg.admin.listen {
            Some(addr) if old_cfg.admin.listen != cfg.admin.listen => Some((
                crate::listener::bind_tcp(addr)
                    .map_err(|source| StartError::Bind { addr, source })?,
                addr,
            )),
            _ => None,
        };
        let current: Vec<SocketAddr> = self.listen_addrs();
        let mut added = Vec::new();
        for addr in cfg.listen.iter().filter(|a| !current.contains(a)) {
            if let Err(e) = self.bind_listener(*addr) {
                for a in added {
                    self.close_listener(a);
                }
                return Err(e);
            }
            added.push(*addr);
        }
        for addr in current.iter().filter(|a| !cfg.listen.contains(a)) {
            self.close_listener(*addr);
        }
        if old_cfg.admin.listen != cfg.admin.listen {
            self.release_admin();
            if let Some((l, addr)) = new_admin {
                self.serve_admin(l, addr);
            }
        }
        pipeline.attach_tap();
        self.pipeline.store(Arc::new(pipeline));
        self.tcp_limits.store(Arc::new(TcpLimits::from(&cfg.tcp)));
        if crate::logging::apply(&cfg.log) {
            tracing::info!(level = %cfg.log.level, format = ?cfg.log.format, "log settings applied");
        }
        // Said once per reload that changes one of them; the gauge says how many differ
        // from what this process runs with.
        let changed_now = restart_only(&old_cfg, &cfg);
        if !changed_now.is_empty() {
            tracing::warn!(settings = ?changed_now, "changed settings take effect at restart; the running process keeps its values");
        }
        self.config_status
            .set_restart_pending(restart_only(&self.started, &cfg).len());
        self.config.store(Arc::new(cfg));
        Ok(())
    }

    fn close_listener(&self, addr: SocketAddr) {
        if let Some(stop) = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr)
        {
            tracing::info!(%addr, "listener closed");
            stop.cancel();
        }
    }

    /// Tells the admin server to stop accepting (its socket closes as its loop ends).
    fn release_admin(&self) {
        if let Some((_, stop)) = self
            .admin_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            stop.cancel();
        }
    }

    /// Stops accepting, lets in-flight queries finish within `grace`, then returns.
    pub async fn shutdown(&self, grace: Duration) {
        // The shared admin port goes first: from now on probes reach the other process of a
        // surge upgrade, never this one while it drains.
        self.release_admin();
        let admin = self
            .admin_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over with queries still in flight");
        }
    }
}

impl AdminState for Server {
    fn metrics_text(&self) -> String {
        self.pipeline.load().export_gauges();
        crate::metrics::encode(&self.registry)
    }
    fn ready(&self) -> Result<(), String> {
        // A Server exists only with a loaded, validated config: nothing to check for that.
        if self.stop.is_cancelled() {
            return Err("shutting down".into());
        }
        self.pipeline.load().ready()
    }
    fn hot_names(&self) -> String {
        match &self.pipeline.load().cache {
            Some(c) => c.hot_names_json(),
            None => "[]\n".into(),
        }
    }
}

pub fn effective_workers(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HELP of `dot_proxy_config_restart_pending_settings` names every setting that
    /// waits for a restart (issue 33: it named four of six).
    #[test]
    fn the_restart_pending_help_names_every_restart_only_setting() {
        let a = Config::default();
        let mut b = Config {
            workers: 7,
            shutdown_grace: crate::config::Dur::secs(99),
            ..Default::default()
        };
        b.overrides.dir = Some("/elsewhere".into());
        b.overrides.node_name = Some("node-x".into());
        b.kubernetes.enabled = !a.kubernetes.enabled;
        b.tcp.max_connections += 1;
        let changed = restart_only(&a, &b);
        assert_eq!(changed.len(), 6, "{changed:?}");
        let mut registry = crate::metrics::registry();
        let names: Vec<&str> = RESTART_ONLY.iter().map(|(n, _)| *n).collect();
        ConfigStatus::default().register(&mut registry, &names);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP dot_proxy_config_restart_pending_settings "))
            .expect("help line");
        for name in changed {
            assert!(help.contains(name), "{name} missing from: {help}");
        }
    }
}
