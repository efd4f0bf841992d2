//! The proxy under test, started in-process on loopback port 0, and the configs tests
//! start it with.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use dot_proxy::config::{Config, Dur, UpstreamServer};
use dot_proxy::server::Server;

use crate::dot::Upstream;
use crate::metrics::http_get;

/// A config for tests: listens on 127.0.0.1:0, admin on 127.0.0.1:0, one group.
/// An upstream and a proxy forwarding to it, with `change` applied to the config first.
pub async fn start_with(change: impl FnOnce(&mut Config)) -> (Arc<Upstream>, Proxy) {
    let up = Upstream::start().await;
    let mut cfg = config_for(vec![up.server()]);
    change(&mut cfg);
    let p = Proxy::start(cfg).await;
    (up, p)
}

pub fn config_for(servers: Vec<UpstreamServer>) -> Config {
    let mut c = Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        workers: 2,
        ..Config::default()
    };
    c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    c.upstream_groups[0].servers = servers;
    c.upstream_groups[0].timeout = Dur::millis(1500);
    c.log.level = "warn".into();
    c
}

pub struct Proxy {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
}

impl Proxy {
    pub async fn start(cfg: Config) -> Proxy {
        cfg.validate().expect("valid test config");
        let server = Server::start(cfg).await.expect("proxy starts");
        let addr = server.listen_addrs()[0];
        Proxy { server, addr }
    }

    /// `cfg` made fit for a reload of this proxy: the addresses it bound at start (port 0
    /// in a config would ask for new ones, and close the ones the test talks to).
    pub fn keep_addresses(&self, cfg: &mut Config) {
        cfg.listen = vec![self.addr];
        cfg.admin.listen = self.server.admin_addr();
    }

    pub async fn metrics(&self) -> String {
        http_get(self.server.admin_addr().expect("admin"), "/metrics")
            .await
            .1
    }
}

/// A proxy started as `main` starts it, from command-line arguments (after `dot-proxy`):
/// the effective config and its hash, with the reload task watching its files.
pub async fn start_reloading(args: &[&str]) -> Arc<Server> {
    let cli =
        dot_proxy::cli::Cli::parse_from(std::iter::once("dot-proxy").chain(args.iter().copied()));
    let loaded = dot_proxy::load::load(&cli).expect("valid");
    let (cfg, hash) = (loaded.config, loaded.hash);
    let server = Server::start(cfg).await.expect("start");
    server.set_config_hash(&hash);
    tokio::spawn(dot_proxy::reload::run(
        server.clone(),
        Arc::new(cli),
        loaded.inputs,
    ));
    server
}
