//! `dot-proxy-operator`: thin entry point. `crd` and `render` print and exit; `run` serves
//! metrics and health, waits for the leader lease, runs the controller until SIGTERM or the
//! lease is lost, then releases the lease.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use dot_proxy_operator::admin::{self, Health};
use dot_proxy_operator::cli::{render_files, Cli, Command, RunArgs};
use dot_proxy_operator::controller::{self, RunOptions};
use dot_proxy_operator::leader::{self, Lease};
use dot_proxy_operator::metrics::Metrics;
use dot_proxy_operator::resource::crd_yaml;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// EX_USAGE: bad flags or environment.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crd_yaml() {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dot-proxy-operator: cannot print the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Render(args) => match render_files(&args) {
            Ok(out) => {
                for w in &out.warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", out.yaml);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dot-proxy-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            if let Some(Err(e)) = args.release.as_deref().map(controller::valid_release) {
                eprintln!("dot-proxy-operator: --release: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            if let Err(e) = init_logging(&args.log) {
                eprintln!("dot-proxy-operator: --log: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("dot-proxy-operator: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(Stop::Signal) => ExitCode::SUCCESS,
                Ok(Stop::LeaseLost) => ExitCode::FAILURE,
                Err(e) => {
                    error!(error = format!("{e:#}"), "dot-proxy-operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .try_init()
        .map_err(|e| e.to_string())
}

enum Stop {
    Signal,
    LeaseLost,
}

async fn run(args: RunArgs) -> anyhow::Result<Stop> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let (stop_admin, admin_stopped) = watch::channel(false);
    tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        wait_true(admin_stopped),
    ));
    info!(metrics = %args.metrics_addr, "serving /metrics, /healthz, /readyz");

    let mut lease = None;
    if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .context("leader election needs POD_NAMESPACE (or --lease-namespace)")?;
        let identity = args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("dot-proxy-operator-{}", std::process::id()));
        let lease_name = leader::lease_name(args.release.as_deref());
        let mut l = Lease::start(client.clone(), &ns, &lease_name, &identity)
            .await
            .context("cannot start leader election")?;
        // A standby is healthy and ready; it just does not write.
        health.set_ready(true);
        info!(lease = %lease_name, release = ?args.release, namespace = %ns, %identity, "waiting for the leader lease");
        tokio::select! {
            led = leader::until_leading(&mut l.leading) => {
                if !led {
                    anyhow::bail!("the lease manager stopped");
                }
            }
            _ = terminated() => {
                l.release().await;
                let _ = stop_admin.send(true);
                return Ok(Stop::Signal);
            }
        }
        info!(%identity, "leading");
        metrics.set_leader(true);
        health.set_ready(false);
        lease = Some(l);
    } else {
        metrics.set_leader(true);
    }

    // Stop on SIGTERM/SIGINT, or when the lease is lost.
    let (stop_tx, stop_rx) = watch::channel(None::<bool>);
    let mut leading = lease.as_ref().map(|l| l.leading.clone());
    tokio::spawn(async move {
        let lost = async {
            match leading.as_mut() {
                Some(rx) => leader::until_lost(rx).await,
                None => std::future::pending().await,
            }
        };
        let lease_lost = tokio::select! {
            _ = terminated() => false,
            _ = lost => true,
        };
        let _ = stop_tx.send(Some(lease_lost));
    });
    let mut shutdown_rx = stop_rx.clone();
    let shutdown = async move {
        let _ = shutdown_rx.wait_for(Option::is_some).await;
    };
    let opts = RunOptions {
        namespace: args.namespace.clone(),
        release: args.release.clone(),
        debounce: args.debounce.get(),
        stop_grace: controller::STOP_GRACE,
    };
    controller::run(client, opts, metrics.clone(), health, shutdown).await;

    let lease_lost = stop_rx.borrow().unwrap_or(false);
    metrics.set_leader(false);
    if let Some(l) = lease {
        l.release().await;
    }
    let _ = stop_admin.send(true);
    if lease_lost {
        warn!("lost the leader lease; exiting so a restart comes back as a standby");
        Ok(Stop::LeaseLost)
    } else {
        info!("stopped");
        Ok(Stop::Signal)
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
