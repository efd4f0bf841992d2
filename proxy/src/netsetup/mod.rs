//! The node-local address: a dummy interface holding the link-local address(es) pods send
//! DNS to, and rules that let that traffic skip connection tracking. Runs as
//! `dot-proxy node-local`, apart from the serving process (it alone needs CAP_NET_ADMIN).
//! See docs/node-local.md.
//!
//! What it does, in order:
//! 1. makes sure the interface exists, is up and holds every address ([`link`]);
//! 2. asks the proxy on each address whether it answers ([`probe`]), and installs the
//!    NOTRACK rules for the addresses that answer, only then ([`firewall`]);
//! 3. keeps probing: rules go when the proxy stops answering and come back when it
//!    answers again; rules and interface are checked now and then and repaired;
//! 4. on SIGTERM removes the rules, unless another instance runs ([`presence`]). The
//!    interface and its addresses stay: with nothing listening, the kernel refuses
//!    queries to a local address at once, so resolvers move to their next nameserver.
//!
//! Beside that it sets `net.ipv4.tcp_migrate_req=1` in the host's network namespace when
//! it may, and warns when it cannot ([`sysctl`]): a proxy's SIGTERM handover then loses
//! no TCP connection.

pub mod firewall;
pub mod health;
pub mod link;
pub mod presence;
pub mod probe;
pub mod status;
pub mod sysctl;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{Config, Dur, NodeLocalConfig};
use firewall::{Backend, FirewallError};
use health::{Change, Health};
use link::{LinkError, Netlink};
use presence::Presence;
use status::StatusFile;

/// Flags of `dot-proxy node-local`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeLocalArgs {
    /// Set up, then exit (no watching, no cleanup): for an init container or a test. The
    /// rules are installed only for addresses the proxy already answers on (see --wait).
    #[arg(long, conflicts_with = "cleanup")]
    pub once: bool,
    /// Remove what a previous run left behind (rules; the interface too with --remove-interface), then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// With --cleanup: also delete the interface and its addresses. Pods still listing the
    /// address then wait for a timeout instead of being refused at once.
    #[arg(long, requires = "cleanup")]
    pub remove_interface: bool,
    /// How often to ask the proxy whether it answers on each address.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub probe_interval: Dur,
    /// How long a probe waits for the answer.
    #[arg(long, default_value = "500ms", value_name = "DURATION")]
    pub probe_timeout: Dur,
    /// Unanswered probes in a row after which an address loses its NOTRACK rules.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub unhealthy_after: u32,
    /// How often to check that the rules and the interface are still as set up, and repair them.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub verify_interval: Dur,
    /// With --once: how long to wait for the proxy to answer before installing the rules.
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub wait: Dur,
    /// Heartbeat file written on every turn of the watch loop, for the container's probes.
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<std::path::PathBuf>,
    /// Probe mode: judge the heartbeat in --status-file and exit 0 (live, or ready) or 1,
    /// without touching anything. `live` fails when the loop is stuck; `ready` also until
    /// setup has settled.
    #[arg(long, value_enum, requires = "status_file", value_name = "live|ready")]
    pub check: Option<status::Check>,
    /// With --check: the oldest heartbeat that still counts as live.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub max_age: Dur,
}

/// Everything that can stop the subcommand.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("another `dot-proxy node-local` runs for interface {0} ({1} instance(s)); stop it before --cleanup")]
    InUse(String, usize),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SetupError {
    /// sysexits(3) codes: 64 usage, 69 a tool missing, 75 try again later, 77 no
    /// permission, 71 any other system error.
    fn exit_code(&self) -> u8 {
        match self {
            SetupError::Usage(_) => 64,
            SetupError::Link(e) if e.is_permission() => 77,
            SetupError::Firewall(e) if e.is_permission() => 77,
            SetupError::Firewall(FirewallError::Missing { .. } | FirewallError::Unusable(_)) => 69,
            SetupError::InUse(..) => 75,
            _ => 71,
        }
    }
}

/// Entry point of the subcommand.
pub fn main(cfg: Config, args: NodeLocalArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dot-proxy node-local: cannot start runtime: {e}");
            return ExitCode::from(71);
        }
    };
    match rt.block_on(run(&cfg, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = if e.exit_code() == 77 {
                " (needs CAP_NET_ADMIN, and CAP_NET_RAW for iptables-legacy)"
            } else {
                ""
            };
            tracing::error!(error = %e, "node-local setup failed{hint}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cfg: &Config, args: &NodeLocalArgs) -> Result<(), SetupError> {
    let nl = &cfg.node_local;
    if args.probe_interval.get().is_zero() || args.verify_interval.get().is_zero() {
        return Err(SetupError::Usage(
            "--probe-interval and --verify-interval must be above 0".into(),
        ));
    }
    if args.cleanup {
        return cleanup(nl, args.remove_interface).await;
    }
    if !nl.enabled {
        tracing::info!("node_local.enabled is false: no interface, no rules");
        if !args.once {
            wait_for_stop().await?;
        }
        return Ok(());
    }
    warn_unserved(cfg);
    // Registered and listening for SIGTERM before touching anything, so that a stop
    // during setup still cleans up, and another instance sees this one from the start.
    let presence = (!args.once).then(|| Presence::register(&nl.interface));
    // Alive from the start: a setup that hangs (netlink, the xtables lock) stops the beat.
    let mut status = StatusFile::new(args.status_file.clone());
    status.beat(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let netlink = Netlink::connect()?;
    let ensured = netlink.ensure(&nl.interface, &nl.addresses).await?;
    tracing::info!(
        interface = %nl.interface,
        kind = %ensured.kind,
        created = ensured.created,
        added = ?ensured.added,
        addresses = ?nl.addresses,
        "interface ready"
    );
    let migrate = migrate_req(Path::new(sysctl::PROC), None);
    let backend = Backend::choose(nl.firewall).await?;
    match backend {
        Some(b) => tracing::info!(firewall = %b, "NOTRACK rules go in once the proxy answers"),
        None => {
            tracing::warn!(setting = ?nl.firewall, "no NOTRACK rules: DNS to the address goes through conntrack")
        }
    }
    let Some(presence) = presence else {
        return once(nl, args, backend).await;
    };
    watch(nl, args, &netlink, backend, migrate, &mut term, &mut status).await;
    shutdown(nl, backend, &presence).await
}

/// Warns when the proxy is not configured to serve a node-local address: it would never
/// answer there, so the rules would never go in.
fn warn_unserved(cfg: &Config) {
    let nl = &cfg.node_local;
    for ip in &nl.addresses {
        let served = cfg.listen.iter().any(|l| {
            l.port() == nl.port
                && (l.ip() == *ip || (l.ip().is_unspecified() && l.is_ipv4() == ip.is_ipv4()))
        });
        if !served {
            tracing::warn!(address = %ip, port = nl.port, "the proxy's `listen` does not include this address and port");
        }
    }
}

/// Sets `net.ipv4.tcp_migrate_req=1` and logs what came of it: at start (`before` is
/// `None`), and afterwards only when it changed.
fn migrate_req(proc: &Path, before: Option<&sysctl::MigrateReq>) -> sysctl::MigrateReq {
    let now = sysctl::ensure_tcp_migrate_req(proc);
    let changed = match before {
        None => true,
        // Found off again after being on (or the other way): said again.
        Some(b) => b.is_on() != now.is_on() || now == sysctl::MigrateReq::TurnedOn,
    };
    if changed {
        if now.is_on() {
            tracing::info!(sysctl = "net.ipv4.tcp_migrate_req", "{}", now.describe());
        } else {
            tracing::warn!(sysctl = "net.ipv4.tcp_migrate_req", "{}", now.describe());
        }
    }
    now
}

fn targets(nl: &NodeLocalConfig) -> Vec<SocketAddr> {
    nl.addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, nl.port))
        .collect()
}

async fn probe_all(targets: &[SocketAddr], timeout: Duration) -> Vec<probe::Outcome> {
    futures::future::join_all(targets.iter().map(|t| probe::probe(*t, timeout))).await
}

async fn once(
    nl: &NodeLocalConfig,
    args: &NodeLocalArgs,
    backend: Option<Backend>,
) -> Result<(), SetupError> {
    let Some(backend) = backend else {
        return Ok(());
    };
    let targets = targets(nl);
    let deadline = Instant::now() + args.wait.get();
    let answering = loop {
        let out = probe_all(&targets, args.probe_timeout.get()).await;
        let answering: Vec<IpAddr> = targets
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.answered())
            .map(|(t, _)| t.ip())
            .collect();
        if answering.len() == targets.len() || Instant::now() >= deadline {
            break answering;
        }
        tokio::time::sleep(args.probe_interval.get()).await;
    };
    backend.apply(&answering, nl.port).await?;
    tracing::info!(firewall = %backend, answering = ?answering, "NOTRACK rules set for the addresses the proxy answers on");
    Ok(())
}

/// Probes, installs and removes rules until SIGTERM or SIGINT. Errors here are logged and
/// retried: the process stays up while anything can still be repaired.
async fn watch(
    nl: &NodeLocalConfig,
    args: &NodeLocalArgs,
    netlink: &Netlink,
    backend: Option<Backend>,
    mut migrate: sysctl::MigrateReq,
    term: &mut tokio::signal::unix::Signal,
    status: &mut StatusFile,
) {
    const RETRY: Duration = Duration::from_secs(5);
    let targets = targets(nl);
    let mut health = Health::new(&nl.addresses, args.unhealthy_after);
    // None: not known yet; a killed predecessor may have left rules, which are harmless
    // and kept until the probes decide.
    let mut installed: Option<Vec<IpAddr>> = None;
    let mut retry_at: Option<Instant> = None;
    let verify_every = args.verify_interval.get();
    let mut next_verify = Instant::now() + verify_every;
    let mut tick = tokio::time::interval(args.probe_interval.get());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                return;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping");
                return;
            }
        }
        // Settled: the rules reflect the probes (or there are no rules to manage).
        status.beat(backend.is_none() || installed.is_some());
        let outcomes = probe_all(&targets, args.probe_timeout.get()).await;
        for (i, o) in outcomes.iter().enumerate() {
            match health.record(i, o.answered()) {
                Some(Change::Up(ip)) => {
                    tracing::info!(address = %ip, port = nl.port, "the proxy answers")
                }
                Some(Change::Down(ip)) => tracing::warn!(
                    address = %ip,
                    port = nl.port,
                    last = ?o,
                    "the proxy stopped answering; the address stays so that queries are refused at once"
                ),
                None => {}
            }
        }
        let now = Instant::now();
        let verify_due = now >= next_verify;
        if verify_due {
            next_verify = now + verify_every;
            // Someone may have turned it off again (a node tuning agent).
            migrate = migrate_req(Path::new(sysctl::PROC), Some(&migrate));
            match netlink.ensure(&nl.interface, &nl.addresses).await {
                Ok(e) if e.created || e.brought_up || !e.added.is_empty() => tracing::warn!(
                    interface = %nl.interface,
                    created = e.created,
                    brought_up = e.brought_up,
                    added = ?e.added,
                    "the interface had changed; restored"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot check the interface"),
            }
        }
        let Some(backend) = backend else { continue };
        let desired = health.answering();
        if installed.is_none() && desired.is_empty() && !health.decided() {
            continue;
        }
        let mut needed = installed.as_ref() != Some(&desired);
        if !needed && verify_due {
            match backend.verify(&desired, nl.port).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(firewall = %backend, "the NOTRACK rules were changed by someone else; restoring");
                    needed = true;
                }
                Err(e) => tracing::error!(error = %e, "cannot check the NOTRACK rules"),
            }
        }
        if !needed || retry_at.is_some_and(|t| now < t) {
            continue;
        }
        match backend.apply(&desired, nl.port).await {
            Ok(()) => {
                if desired.is_empty() && installed.is_none() {
                    tracing::info!(firewall = %backend, "the proxy does not answer yet: no NOTRACK rules (any left by an earlier run are gone)");
                } else if desired.is_empty() {
                    tracing::info!(firewall = %backend, "NOTRACK rules removed: no address answers");
                } else {
                    tracing::info!(firewall = %backend, addresses = ?desired, "NOTRACK rules installed");
                }
                installed = Some(desired);
                retry_at = None;
            }
            Err(e) => {
                tracing::error!(error = %e, firewall = %backend, "cannot update the NOTRACK rules; retrying");
                retry_at = Some(now + RETRY);
            }
        }
    }
}

async fn shutdown(
    nl: &NodeLocalConfig,
    backend: Option<Backend>,
    presence: &Presence,
) -> Result<(), SetupError> {
    let others = presence.others();
    if others > 0 {
        tracing::info!(others, interface = %nl.interface, "another node-local instance runs: leaving the rules and the address to it");
        return Ok(());
    }
    if let Some(b) = backend {
        b.remove().await?;
        tracing::info!(firewall = %b, "NOTRACK rules removed");
    }
    tracing::info!(
        interface = %nl.interface,
        "interface and addresses left in place: with no proxy, queries to them are refused at once (`dot-proxy node-local --cleanup --remove-interface` deletes them)"
    );
    Ok(())
}

async fn cleanup(nl: &NodeLocalConfig, remove_interface: bool) -> Result<(), SetupError> {
    let others = Presence::observer(&nl.interface).others();
    if others > 0 {
        return Err(SetupError::InUse(nl.interface.clone(), others));
    }
    let cleaned = firewall::remove_everywhere().await?;
    if cleaned.is_empty() {
        tracing::info!("no NOTRACK rules found");
    } else {
        tracing::info!(removed = ?cleaned, "NOTRACK rules removed");
    }
    if remove_interface {
        let netlink = Netlink::connect()?;
        if netlink.remove(&nl.interface).await? {
            tracing::info!(interface = %nl.interface, "interface deleted");
        } else {
            tracing::info!(interface = %nl.interface, "no such interface");
        }
    }
    Ok(())
}

async fn wait_for_stop() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
