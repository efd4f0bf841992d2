//! Assembly of a running proxy: builds the pipeline from a config, binds listeners, runs
//! the admin server, applies reloads atomically, and drains on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::budget::Budget;
use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::{Config, UpstreamGroup};
use crate::guard::RateLimiter;
use crate::listener::tcp::{ConnTable, TcpLimits};
use crate::metrics::{Metrics, ReloadLabels, ReloadResult, Transport};
use crate::pipeline::Pipeline;
use crate::policy::Policy;
use crate::route::Routes;
use crate::upstream::Group;

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

/// A part of the query path could not be built from its config section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::build::BuildError),
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
}

/// A group built from config, kept so a reload with the same settings reuses it (and its
/// open connections).
struct BuiltGroup {
    cfg: UpstreamGroup,
    ca: Option<PathBuf>,
    /// Which versions of its CA files (the global one and the servers' own) it was built
    /// with: a bundle rotated in place builds the group again at the next reload.
    ca_files: Vec<u8>,
    privacy: crate::config::PrivacyConfig,
    group: Arc<Group>,
}

struct ListenerSet {
    stop: CancellationToken,
}

pub struct Server {
    pub metrics: Arc<Metrics>,
    registry: Registry,
    pipeline: Arc<ArcSwap<Pipeline>>,
    tcp_limits: Arc<ArcSwap<TcpLimits>>,
    conn_table: Arc<ConnTable>,
    config: ArcSwap<Config>,
    groups: Mutex<Vec<BuiltGroup>>,
    listeners: Mutex<HashMap<SocketAddr, ListenerSet>>,
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
    /// This node's pods (filled by the pod watch when `kubernetes.enabled` at start).
    pods: Arc<crate::kubernetes::PodTable>,
    completion_metrics: crate::completion::CompletionMetrics,
    /// The memory budget every part that grows with client input charges.
    budget: Arc<Budget>,
}

/// Longest wait for the default group's first connection before the admin port is bound
/// anyway (an unreachable upstream must not keep metrics and liveness away).
const WARM_LIMIT: Duration = Duration::from_secs(3);

/// Settings read only when the process starts, by name, with whether they differ between
/// two configs.
fn restart_only(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if a.workers != b.workers {
        v.push("workers");
    }
    if a.shutdown_grace != b.shutdown_grace {
        v.push("shutdown_grace");
    }
    if a.overrides.dir != b.overrides.dir {
        v.push("overrides.dir");
    }
    if a.overrides.node_name != b.overrides.node_name {
        v.push("overrides.node_name");
    }
    if a.kubernetes != b.kubernetes {
        v.push("kubernetes");
    }
    // The connection table's size is fixed when it is made.
    if a.tcp.max_connections != b.tcp.max_connections {
        v.push("tcp.max_connections");
    }
    v
}

impl Server {
    /// Builds everything from a validated config and binds every listener.
    pub async fn start(cfg: Config) -> Result<Arc<Server>, StartError> {
        let (metrics, mut registry) = Metrics::new();
        let workers = effective_workers(cfg.workers);
        let groups = build_groups(&cfg, &[], &metrics)?;
        let clock = Arc::new(Clock::default());
        let pods = Arc::new(crate::kubernetes::PodTable::default());
        let watch_metrics = crate::kubernetes::WatchMetrics::default();
        watch_metrics.register(&mut registry);
        let completion_metrics = crate::completion::CompletionMetrics::default();
        completion_metrics.register(&mut registry);
        let budget = Arc::new(Budget::from_config(&cfg.memory));
        budget.register(&mut registry);
        let shared = Shared {
            metrics: &metrics,
            clock: &clock,
            pods: &pods,
            completion: &completion_metrics,
            budget: &budget,
        };
        let pipeline = build_pipeline(&cfg, &groups, None, &shared)?;
        for g in &pipeline.groups {
            g.set_tap(pipeline.tap.clone());
        }
        let server = Arc::new(Server {
            metrics: metrics.clone(),
            registry,
            pipeline: Arc::new(ArcSwap::from_pointee(pipeline)),
            tcp_limits: Arc::new(ArcSwap::from_pointee(TcpLimits::from(&cfg.tcp))),
            conn_table: ConnTable::new(cfg.tcp.max_connections),
            config: ArcSwap::from_pointee(cfg.clone()),
            groups: Mutex::new(groups),
            listeners: Mutex::new(HashMap::new()),
            admin_listener: Mutex::new(None),
            admin_task: Mutex::new(None),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            workers,
            started: cfg.clone(),
            clock,
            pods: pods.clone(),
            completion_metrics,
            budget,
        });
        if cfg.kubernetes.enabled {
            if let Some(node) = cfg.kubernetes.node(cfg.overrides.node_name.as_deref()) {
                tokio::spawn(crate::kubernetes::run(
                    cfg.kubernetes.clone(),
                    node.to_string(),
                    pods,
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
        // and the group serving "." warmed (a live connection, or every first attempt
        // over), so a probe answered here is answered by a process that serves.
        {
            let p = server.pipeline.load_full();
            if let Some(g) = p.groups.get(p.routes.default_group()) {
                // Long enough for a first connect to end either way.
                let connect = cfg
                    .upstream_groups
                    .iter()
                    .flat_map(|g| &g.servers)
                    .map(|s| s.connect_timeout.get())
                    .max()
                    .unwrap_or_default();
                g.warmed(WARM_LIMIT.max(connect + Duration::from_millis(500)))
                    .await;
            }
        }
        if let Some(addr) = cfg.admin.listen {
            server.bind_admin(addr)?;
        }
        server.start_background();
        metrics
            .config_reloads
            .get_or_create(&ReloadLabels {
                result: ReloadResult::success,
            })
            .inc();
        metrics.config_last_success.set(unix_now());
        metrics.config_last_reload_ok.set(1);
        // The hash of the config as YAML; `main` replaces it with the file's hash.
        server.set_config_hash(&crate::reload::config_hash(&server.config.load()));
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
        &self.pods
    }

    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.load_full()
    }

    fn bind_listener(self: &Arc<Self>, addr: SocketAddr) -> Result<(), StartError> {
        let bind_err = |source| StartError::Bind { addr, source };
        let stop = self.stop.child_token();
        // Port 0 means "any". The kernel may hand a SO_REUSEPORT socket a port that another
        // process of the same user already holds with SO_REUSEPORT (the two would then share
        // its traffic), so a port is first picked with plain sockets, which never share,
        // and then bound with the reuse options. Tried again if taken in between.
        let mut attempt = 0;
        let (sockets, bound, tcp) = loop {
            attempt += 1;
            let want = if addr.port() == 0 {
                SocketAddr::new(
                    addr.ip(),
                    crate::listener::unshared_port(addr).map_err(bind_err)?,
                )
            } else {
                addr
            };
            let bound_both = crate::listener::udp::bind_all(want, self.workers).and_then(|s| {
                let bound = s[0].local_addr()?;
                let tcp = crate::listener::bind_tcp(bound)?;
                Ok((s, bound, tcp))
            });
            match bound_both {
                Ok(b) => break b,
                Err(e) if addr.port() == 0 && attempt < 20 => {
                    tracing::debug!(error = %e, %want, "port taken, trying another");
                }
                Err(source) => return Err(StartError::Bind { addr: want, source }),
            }
        };
        for sock in sockets {
            let counters = self.metrics.query_counters(Transport::udp);
            let grace = self.config.load().shutdown_grace.get();
            self.tracker.spawn(crate::listener::udp::serve(
                sock,
                self.pipeline.clone(),
                counters,
                stop.clone(),
                self.tracker.clone(),
                grace,
            ));
        }
        tokio::spawn(crate::listener::tcp::serve(
            tcp,
            self.pipeline.clone(),
            self.tcp_limits.clone(),
            self.conn_table.clone(),
            self.metrics.query_counters(Transport::tcp),
            stop.clone(),
            self.tracker.clone(),
        ));
        tracing::info!(%bound, "listening on UDP and TCP");
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                if addr.port() == 0 { bound } else { addr },
                ListenerSet { stop },
            );
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
            let groups = s.pipeline.load().groups.clone();
            Some(groups)
        }));
    }

    /// Applies a new validated config: the new pipeline is built first (reusing the cache
    /// and unchanged groups), then swapped in; listeners are added and removed to match.
    /// On error nothing changes.
    pub fn apply(self: &Arc<Self>, cfg: Config) -> Result<(), StartError> {
        let old = self.pipeline.load_full();
        let old_cfg = self.config.load_full();
        let mut groups_guard = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let groups = build_groups(&cfg, &groups_guard, &self.metrics)?;
        self.budget.update(&cfg.memory);
        let shared = Shared {
            metrics: &self.metrics,
            clock: &self.clock,
            pods: &self.pods,
            completion: &self.completion_metrics,
            budget: &self.budget,
        };
        let pipeline = build_pipeline(&cfg, &groups, Some((&old, &old_cfg)), &shared)?;
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
        // The tap goes on the groups only now: they may be the running pipeline's too.
        for g in &pipeline.groups {
            g.set_tap(pipeline.tap.clone());
        }
        self.pipeline.store(Arc::new(pipeline));
        self.tcp_limits.store(Arc::new(TcpLimits::from(&cfg.tcp)));
        *groups_guard = groups;
        if crate::logging::apply(&cfg.log) {
            tracing::info!(level = %cfg.log.level, format = ?cfg.log.format, "log settings applied");
        }
        // Said once per reload that changes one of them; the gauge says how many differ
        // from what this process runs with.
        let pending = restart_only(&self.started, &cfg);
        let changed_now = restart_only(&old_cfg, &cfg);
        if !changed_now.is_empty() {
            tracing::warn!(settings = ?changed_now, "changed settings take effect at restart; the running process keeps its values");
        }
        self.metrics
            .config_restart_pending
            .set(pending.len() as i64);
        self.config.store(Arc::new(cfg));
        Ok(())
    }

    fn close_listener(&self, addr: SocketAddr) {
        if let Some(l) = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr)
        {
            tracing::info!(%addr, "listener closed");
            l.stop.cancel();
        }
    }

    /// Exports the hash of the config now applied (`dot_proxy_config_info{hash}`), replacing
    /// the previous one: always exactly one series.
    pub fn set_config_hash(&self, hash: &str) {
        self.metrics.config_info.clear();
        self.metrics
            .config_info
            .get_or_create(&crate::metrics::ConfigInfoLabels {
                hash: hash.to_string(),
            })
            .set(1);
    }

    /// Records a reload attempt in metrics and logs.
    pub fn record_reload(&self, result: &Result<(), crate::reload::ReloadError>) {
        let r = if result.is_ok() {
            ReloadResult::success
        } else {
            ReloadResult::failure
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result: r })
            .inc();
        match result {
            Ok(()) => {
                self.metrics.config_last_success.set(unix_now());
                self.metrics.config_last_reload_ok.set(1);
                tracing::info!("config reloaded");
            }
            Err(e) => {
                self.metrics.config_last_reload_ok.set(0);
                tracing::error!(error = %e, "config reload refused; keeping the last good config")
            }
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

    /// Gauges that are read, not counted: each part sets its own at scrape time.
    fn refresh_gauges(&self) {
        let p = self.pipeline.load();
        if let Some(c) = &p.cache {
            c.export_gauges(&self.metrics);
        }
        match &p.limiter {
            Some(rl) => rl.export_gauges(
                &self.metrics,
                &self.config.load().rate_limit,
                self.clock.now(),
            ),
            None => {
                self.metrics.rate_limit_configured_qps.set(0.0);
            }
        }
    }
}

impl AdminState for Server {
    fn metrics_text(&self) -> String {
        self.refresh_gauges();
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn effective_workers(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn build_groups(
    cfg: &Config,
    old: &[BuiltGroup],
    metrics: &Metrics,
) -> Result<Vec<BuiltGroup>, BuildError> {
    let mut out = Vec::new();
    for g in &cfg.upstream_groups {
        let ca_paths: Vec<PathBuf> = cfg
            .tls
            .ca_file
            .iter()
            .chain(g.servers.iter().filter_map(|s| s.ca_file.as_ref()))
            .cloned()
            .collect();
        let ca_files = crate::policy::files_identity(&ca_paths);
        if let Some(o) = old.iter().find(|o| {
            o.cfg == *g
                && o.ca == cfg.tls.ca_file
                && o.ca_files == ca_files
                && o.privacy == cfg.privacy
        }) {
            out.push(BuiltGroup {
                cfg: g.clone(),
                ca: o.ca.clone(),
                ca_files,
                privacy: o.privacy.clone(),
                group: o.group.clone(),
            });
            continue;
        }
        let group = Group::from_config(g, cfg.tls.ca_file.as_deref(), &cfg.privacy, metrics)?;
        out.push(BuiltGroup {
            cfg: g.clone(),
            ca: cfg.tls.ca_file.clone(),
            ca_files,
            privacy: cfg.privacy.clone(),
            group,
        });
    }
    Ok(out)
}

/// Whether cached answers fetched under `old` are still what `new` would fetch: the same
/// groups in the same order (a client's own group is keyed by its position), zone routes,
/// rewrites and AAAA filtering.
fn same_answer_sources(old: &Config, new: &Config) -> bool {
    old.upstream_groups.len() == new.upstream_groups.len()
        && old
            .upstream_groups
            .iter()
            .zip(&new.upstream_groups)
            .all(|(a, b)| a.name == b.name)
        && old.zones == new.zones
        && old.policy.rewrites == new.policy.rewrites
        && old.filter_aaaa == new.filter_aaaa
}

/// What every pipeline of a process shares, whatever its config.
struct Shared<'a> {
    metrics: &'a Arc<Metrics>,
    clock: &'a Arc<Clock>,
    pods: &'a Arc<crate::kubernetes::PodTable>,
    completion: &'a crate::completion::CompletionMetrics,
    budget: &'a Arc<Budget>,
}

fn build_pipeline(
    cfg: &Config,
    groups: &[BuiltGroup],
    old: Option<(&Pipeline, &Config)>,
    shared: &Shared<'_>,
) -> Result<Pipeline, BuildError> {
    let (metrics, clock) = (shared.metrics, shared.clock);
    // Block lists can be large: the rules are rebuilt (and their files re-read) only when
    // the policy settings or a list file changed.
    let lists_identity = crate::policy::files_identity(&crate::policy::list_files(&cfg.policy));
    let policy = match old {
        Some((p, oc)) if oc.policy == cfg.policy && p.lists_identity == lists_identity => {
            p.policy.clone()
        }
        _ => {
            let policy = Policy::new(&cfg.policy)?;
            metrics.blocklist_loads.inc();
            metrics.blocked_names.set(policy.blocked_names() as i64);
            if policy.blocked_names() > 0 {
                tracing::info!(
                    names = policy.blocked_names(),
                    bytes = policy.blocklist_bytes(),
                    "block lists loaded"
                );
            }
            (!policy.is_empty()).then(|| Arc::new(policy))
        }
    };
    // The cache is kept across reloads. A change of its size bounds starts it afresh, and
    // so does a change of what decides where and how its answers were fetched: they came
    // by the old routes.
    // Its size is capped by its share of the memory budget.
    let cache_cfg = crate::config::CacheConfig {
        max_bytes: shared.budget.cache_bytes(cfg.cache.max_bytes),
        ..cfg.cache.clone()
    };
    let cache = cfg.cache.enabled.then(|| {
        match old
            .filter(|(_, oc)| same_answer_sources(oc, cfg))
            .and_then(|(p, _)| p.cache.clone())
            .filter(|c| c.compatible(&cache_cfg))
        {
            Some(c) if *c.config() == cache_cfg => c,
            Some(c) => Arc::new(c.with_config(&cache_cfg)),
            None => Arc::new(Cache::new(&cache_cfg, metrics.cache_evictions.clone())),
        }
    });
    // Kept while its section is unchanged; otherwise rebuilt with the running buckets.
    let running = old.and_then(|(p, oc)| Some((p.limiter.clone()?, oc)));
    let limiter = cfg.rate_limit.enabled.then(|| match running {
        Some((l, oc)) if oc.rate_limit == cfg.rate_limit => l,
        Some((l, _)) => Arc::new(RateLimiter::carry_over(&cfg.rate_limit, &l)),
        None => Arc::new(RateLimiter::new(&cfg.rate_limit)),
    });
    let names: Vec<&str> = groups.iter().map(|g| g.cfg.name.as_str()).collect();
    // The tap (and its collector connection) is kept while its section is unchanged.
    let tap = match old.and_then(|(p, _)| p.tap.clone()) {
        Some(t) if *t.config() == cfg.dnstap => Some(t),
        _ => crate::dnstap::Tap::from_config(&cfg.dnstap, metrics, &shared.budget.dnstap),
    };
    Ok(Pipeline {
        limiter,
        cache,
        routes: Routes::from_config(cfg, &names),
        policy,
        lists_identity,
        groups: groups.iter().map(|g| g.group.clone()).collect(),
        strip_ecs: cfg.privacy.strip_ecs,
        metrics: metrics.clone(),
        clock: clock.clone(),
        coalescer: Default::default(),
        tap,
        completion: crate::completion::Completion::from_config(
            &cfg.search_completion,
            shared.pods,
            shared.completion,
        )
        .map(Arc::new),
        filter_aaaa: crate::route::ZoneSet::new(&cfg.filter_aaaa.zones),
        budget: shared.budget.clone(),
    })
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
        let (_, registry) = Metrics::new();
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
