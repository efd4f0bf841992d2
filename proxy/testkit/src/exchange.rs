//! Pipelines without sockets: fake servers behind the `Exchange` trait, answering from the
//! test zone ([`zone_answer`]) with delays that follow tokio's clock, so tests run under
//! `#[tokio::test(start_paused = true)]`; groups of them; and a [`Rig`], a pipeline over
//! such groups that a test asks as a listener would (`handle_fast`, then `resolve`).
//!
//! Each is built in one function here ([`FakeServer::new`], [`group`], [`Rig::start`]):
//! when the proxy's constructors change, this file changes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use dot_proxy::config::{Config, UpstreamGroup};
use dot_proxy::dns::message::UpstreamQueryOptions;
use dot_proxy::kubernetes::PodTable;
use dot_proxy::metrics::Transport;
use dot_proxy::pipeline::{Fast, Pipeline, Shared};
use dot_proxy::upstream::UpstreamMetrics as Metrics;
use dot_proxy::upstream::{Exchange, ExchangeFuture, Group, UpstreamError, UpstreamStats};

use crate::client::query;
use crate::dot::{zone_answer, Behaviour};

/// One fake server: answers from the test zone as its [`Behaviour`] says (delay, stall,
/// SERVFAIL, TTL), or refuses at once while `down`. Counts and keeps what it was sent.
pub struct FakeServer {
    label: String,
    stats: UpstreamStats,
    pub behaviour: Behaviour,
    /// Fails every query at once, as a server refusing connections.
    pub down: AtomicBool,
    pub calls: AtomicUsize,
    /// The queries as sent (ID included).
    pub sent: Mutex<Vec<Vec<u8>>>,
}

impl FakeServer {
    pub fn new(label: &str, metrics: &Metrics, group: &str) -> Arc<FakeServer> {
        Arc::new(FakeServer {
            label: label.into(),
            stats: UpstreamStats::new(metrics, group, label),
            behaviour: Behaviour {
                ttl: AtomicU32::new(300),
                ..Default::default()
            },
            down: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            sent: Mutex::new(Vec::new()),
        })
    }

    pub fn query_count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Exchange for FakeServer {
    fn query<'a>(&'a self, msg: &'a Bytes) -> ExchangeFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sent.lock().expect("lock").push(msg.to_vec());
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(UpstreamError::Connect("refused".into()));
            }
            if self.behaviour.stall.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let delay = self.behaviour.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            zone_answer(&self.behaviour, msg)
                .map(Bytes::from)
                .ok_or(UpstreamError::Malformed)
        })
    }
    fn label(&self) -> &str {
        &self.label
    }
    fn stats(&self) -> &UpstreamStats {
        &self.stats
    }
}

/// The group `g` (its name, policy and timeout) over `servers` instead of its own.
pub fn group(g: &UpstreamGroup, servers: &[Arc<FakeServer>], metrics: &Metrics) -> Arc<Group> {
    let upstreams = servers
        .iter()
        .map(|s| Arc::clone(s) as Arc<dyn Exchange>)
        .collect();
    Group::new(
        g.name.clone(),
        g.policy,
        g.timeout.get(),
        upstreams,
        UpstreamQueryOptions::default(),
        metrics,
    )
}

/// A pipeline built from a config whose groups are fake servers.
pub struct Rig {
    pub pipeline: Arc<Pipeline>,
    /// The upstream servers' and groups' metrics.
    pub metrics: Arc<Metrics>,
    /// What the pipeline shares: each part's metrics (`shared.cache`, ...), its clock.
    pub shared: Shared,
    pub pods: Arc<PodTable>,
    /// The fake servers of each group of the config, in its order.
    pub servers: Vec<Vec<Arc<FakeServer>>>,
}

/// The client address a [`Rig`]'s queries come from unless a test says otherwise.
pub const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

impl Rig {
    /// The default test config (one group, `.`) with `change` applied, each group served
    /// by `per_group` fake servers named `<group>-<i>`.
    pub fn start(per_group: usize, change: impl FnOnce(&mut Config)) -> Rig {
        let mut cfg = Config::default();
        cfg.rate_limit.enabled = false;
        change(&mut cfg);
        let metrics = Arc::new(Metrics::default());
        let servers: Vec<Vec<Arc<FakeServer>>> = cfg
            .upstream_groups
            .iter()
            .map(|g| {
                (0..per_group)
                    .map(|i| FakeServer::new(&format!("{}-{i}", g.name), &metrics, &g.name))
                    .collect()
            })
            .collect();
        let groups = cfg
            .upstream_groups
            .iter()
            .zip(&servers)
            .map(|(g, s)| group(g, s, &metrics))
            .collect();
        let (pipeline, shared) = dot_proxy::fuzzing::pipeline(&cfg, groups, metrics.clone());
        Rig {
            pipeline,
            metrics,
            pods: shared.pods.clone(),
            shared,
            servers,
        }
    }

    /// The first server of the first group.
    pub fn up(&self) -> &Arc<FakeServer> {
        &self.servers[0][0]
    }

    /// Asks `name` as a UDP client at [`CLIENT`] would: the answer, parsed.
    pub async fn ask(&self, name: &str, qtype: RecordType) -> Message {
        self.ask_from(CLIENT, name, qtype).await
    }

    pub async fn ask_from(&self, client: IpAddr, name: &str, qtype: RecordType) -> Message {
        let id = rand::random();
        let raw = self
            .ask_raw(client, &query(id, name, qtype, Some((1232, false))))
            .await
            .expect("an answer");
        let m = Message::from_vec(&raw).expect("answer parses");
        assert_eq!(m.metadata.id, id);
        m
    }

    /// Sends raw bytes through the pipeline; None when it drops them.
    pub async fn ask_raw(&self, client: IpAddr, q: &[u8]) -> Option<Vec<u8>> {
        let p = &self.pipeline;
        let mut out = Vec::new();
        match p.handle_fast(q, client, Transport::udp, p.clock().now(), &mut out) {
            Fast::Drop { .. } => return None,
            Fast::Answered(_) => {}
            Fast::Miss(req) => p.resolve(&req, &mut out).await,
        }
        Some(out)
    }

    /// Moves the proxy's clock and tokio's (paused) clock forward, and lets the tasks
    /// that became due (refreshes) run.
    pub async fn advance(&self, d: Duration) {
        tokio::time::advance(d).await;
        settle().await;
    }
}

/// Lets every task that can run, run (background refreshes spawned by the pipeline):
/// under paused time, each yield lets the runtime advance through ready work.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}
