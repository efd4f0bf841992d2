//! `dot-proxy`: thin entry point. Load config (exit 64 with one line if it is bad), start,
//! wait for SIGTERM/SIGINT, drain within the grace period, exit 0.

use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: under cache churn (answers of many sizes stored
/// and evicted while TLS frames come and go) glibc kept about four times the cache's size
/// resident; mimalloc returns freed pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

use clap::Parser;
use dot_proxy::cli::{Cli, Command};
use dot_proxy::config::Config;
use dot_proxy::load::{load, Loaded};
use dot_proxy::server::{effective_workers, Server};

/// A bad flag or config (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    // Transparent huge pages off for this process, before the first allocation: the
    // allocator's regions may be backed by 2 MiB pages, and the kernel then zeroes 2 MiB at
    // the first touch of each, stalling the worker for milliseconds (in the cache-miss
    // benchmark these were the slowest answers) and growing the resident size in 2 MiB
    // steps. A kernel without the prctl leaves things as they were.
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0; every usage error exits 64 (EX_USAGE), as
        // a bad config does, instead of clap's 2.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match &cli.command {
        Some(Command::CheckConfig { file }) => {
            // Checked as the proxy would load it: with the same flags and DOT_PROXY_*
            // variables (a node name, say) and this node's override entries.
            let file = file.clone();
            let mut cli = cli;
            cli.config = Some(file.clone());
            return match load(&cli) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::NodeLocal(args)) => {
            // A container probe: judge the heartbeat, touch nothing, need no config.
            if let (Some(check), Some(path)) = (args.check, &args.status_file) {
                return match dot_proxy::netsetup::status::check(path, args.max_age.get(), check) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("dot-proxy node-local --check: {e}");
                        ExitCode::from(1)
                    }
                };
            }
            let cfg = match load(&cli).map(|l| l.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dot-proxy node-local: invalid configuration: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            dot_proxy::logging::init(&cfg.log);
            return dot_proxy::netsetup::main(cfg, args.clone());
        }
        Some(Command::PrintConfig) => {
            return match Config::default().to_yaml() {
                Ok(y) => {
                    print!("{y}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dot-proxy print-config: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    let loaded = match load(&cli) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dot-proxy: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    dot_proxy::logging::init(&loaded.config.log);
    let workers = effective_workers(loaded.config.workers);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dot-proxy: cannot start runtime: {e}");
            return ExitCode::from(71);
        }
    };
    rt.block_on(run(Arc::new(cli), loaded))
}

async fn run(cli: Arc<Cli>, loaded: Loaded) -> ExitCode {
    let Loaded {
        config,
        hash,
        inputs,
    } = loaded;
    let grace = config.shutdown_grace.get();
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(71);
        }
    };
    server.set_config_hash(&hash);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config_hash = %hash, "dot-proxy started");
    tokio::spawn(dot_proxy::reload::run(server.clone(), cli, inputs));
    wait_for_stop().await;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new queries accepted, finishing those in flight"
    );
    server.shutdown(grace).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
