//! The node-local address: a dummy interface holding the link-local address(es) pods send
//! DNS to, and rules that let that traffic skip connection tracking. Runs as
//! `dot-proxy node-local`, apart from the serving process (it alone needs CAP_NET_ADMIN).
//! See docs/node-local.md.

use std::process::ExitCode;

use crate::config::Config;

/// Flags of `dot-proxy node-local`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeLocalArgs {
    /// Set up, then exit (no waiting, no cleanup): for an init container or a test.
    #[arg(long)]
    pub once: bool,
    /// Remove what a previous run left behind (rules; the interface too with --remove-interface), then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Entry point of the subcommand.
pub fn main(cfg: Config, args: NodeLocalArgs) -> ExitCode {
    let _ = (&cfg, &args);
    eprintln!("dot-proxy node-local: not implemented yet");
    ExitCode::from(70)
}
