//! The proxy under test, started in-process on loopback port 0, and the configs tests
//! start it with.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use dot_proxy::config::{Config, Dur, UpstreamServer};
use dot_proxy::server::Server;

use crate::client::free_port;
use crate::dot::{Behaviour, Upstream};
use crate::metrics::{http_get, metric_with};

/// A config for tests: listens on 127.0.0.1:0, admin on 127.0.0.1:0, one group.
/// An upstream and a proxy forwarding to it, with `change` applied to the config first.
pub async fn start_with(change: impl FnOnce(&mut Config)) -> (Arc<Upstream>, Proxy) {
    let up = Upstream::start().await;
    let mut cfg = config_for(vec![up.server()]);
    change(&mut cfg);
    let p = Proxy::start(cfg).await;
    (up, p)
}

/// An upstream that behaves as `behave` sets it from the start, and a proxy forwarding to
/// it with the test config.
pub async fn start_behaving(behave: impl FnOnce(&Behaviour)) -> (Arc<Upstream>, Proxy) {
    let up = Upstream::start().await;
    behave(&up.behaviour);
    let p = Proxy::start(config_for(vec![up.server()])).await;
    (up, p)
}

/// What the tests of a proxy run from a config file start from: an upstream, a directory
/// for the file, and a free port (see [`free_port`]) for the proxy to listen on.
pub async fn site() -> (Arc<Upstream>, tempfile::TempDir, u16) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    (up, dir, free_port())
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

    /// The config this proxy runs, fit for a reload ([`Proxy::keep_addresses`]).
    pub fn config_for_reload(&self) -> Config {
        let mut cfg = (*self.server.current_config()).clone();
        self.keep_addresses(&mut cfg);
        cfg
    }

    /// An A query for `name` over UDP: the answer.
    pub async fn ask(&self, name: &str) -> hickory_proto::op::Message {
        crate::client::udp(self.addr, name, hickory_proto::rr::RecordType::A).await
    }

    /// Asks `name` (A, over UDP); fails unless the answer's response code is `want`.
    pub async fn assert_rcode(&self, name: &str, want: hickory_proto::op::ResponseCode) {
        let m = self.ask(name).await;
        assert_eq!(m.metadata.response_code, want, "{name}");
    }

    pub async fn metrics(&self) -> String {
        http_get(self.server.admin_addr().expect("admin"), "/metrics")
            .await
            .1
    }

    /// Fails unless, for each `(prefix, label, value)`, the samples of `prefix` with `label`
    /// (as [`metric_with`] sums them; `""` for all) are `value` now, showing the whole
    /// scrape. Returns the scrape.
    pub async fn assert_metrics(&self, want: &[(&str, &str, f64)]) -> String {
        let text = self.metrics().await;
        for &(prefix, label, value) in want {
            assert_eq!(
                metric_with(&text, prefix, label),
                value,
                "{prefix} {label}\n{text}"
            );
        }
        text
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
