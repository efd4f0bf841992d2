//! Test fixtures: certificates made in the test (rcgen), a real in-process DNS-over-TLS
//! upstream (tokio-rustls + hickory-proto) whose answers, TTLs, delays and connection
//! behaviour the test controls, a proxy started in-process on loopback port 0, and plain
//! UDP/TCP DNS clients.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;

pub use clap::Parser;
use dot_proxy::config::{Config, Dur, UpstreamServer};
use dot_proxy::server::Server;

/// A CA and a server certificate for `upstream.test` / 127.0.0.1, made fresh per test.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    /// The CA's own certificate.
    pub ca_der: Vec<u8>,
    pub ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dot-proxy test CA");
        let ca_cert = params.self_signed(&ca_key).expect("ca cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        let ca = rcgen::Issuer::new(params, ca_key);
        let (cert_der, key_der) = Self::issue(&ca, &["upstream.test", "127.0.0.1"]);
        Pki {
            dir,
            ca_file,
            cert_der,
            key_der,
            ca_der: ca_cert.der().to_vec(),
            ca,
        }
    }

    /// A new leaf (new key) for the given names, signed by this CA.
    pub fn issue(
        ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
        names: &[&str],
    ) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut sans = Vec::new();
        for n in names {
            sans.push(match IpAddr::from_str(n) {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*n).try_into().expect("dns name")),
            });
        }
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, ca).expect("leaf");
        (cert.der().to_vec(), key.serialize_der())
    }

    pub fn spki_pin(&self) -> dot_proxy::config::SpkiPin {
        dot_proxy::upstream::tls_config::spki_pin_of(&self.cert_der)
            .expect("pin")
            .parse()
            .expect("pin")
    }
}

/// How the upstream behaves; every field can change while it runs.
#[derive(Default)]
pub struct Behaviour {
    /// Delay before each answer, ms.
    pub delay_ms: AtomicU64,
    /// Accept connections but never answer.
    pub stall: AtomicBool,
    /// Close a connection after this many ms without a query (0 = never).
    pub idle_close_ms: AtomicU64,
    /// Close each connection after answering this many queries (0 = never).
    pub close_after: AtomicUsize,
    /// TTL of positive answers.
    pub ttl: AtomicU32,
    /// Answer SERVFAIL to everything.
    pub servfail: AtomicBool,
    /// edns-tcp-keepalive timeout to announce, in 100 ms units (0 = none).
    pub keepalive_units: AtomicU32,
    /// Set AA=1 on every answer, as an authoritative server would.
    pub authoritative: AtomicBool,
    /// Extra delay, ms, of answers to names whose first label starts with `slow`.
    pub slow_ms: AtomicU64,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub queries: AtomicUsize,
    pub connections: AtomicUsize,
    /// Raw query bytes as received (after the length prefix).
    pub raw: Mutex<Vec<Vec<u8>>>,
    pub behaviour: Behaviour,
    pub acceptor: Mutex<TlsAcceptor>,
    pub pki: Pki,
    /// TLS handshakes that resumed an earlier session.
    pub resumed: AtomicUsize,
    /// The accept loop, aborted (its listener closed) during an outage.
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Bumped to drop every open connection at once.
    kill: tokio::sync::watch::Sender<u64>,
}

fn acceptor(cert: &[u8], key: &[u8]) -> TlsAcceptor {
    chain_acceptor(&[cert.to_vec()], key)
}

/// A TLS acceptor presenting `chain` (leaf first, then whatever else the server sends).
fn chain_acceptor(chain: &[Vec<u8>], key: &[u8]) -> TlsAcceptor {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        chain
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
            .collect(),
        rustls::pki_types::PrivateKeyDer::try_from(key.to_vec()).expect("key"),
    )
    .expect("server config");
    TlsAcceptor::from(Arc::new(cfg))
}

impl Upstream {
    pub async fn start() -> Arc<Upstream> {
        Self::start_with(Pki::new()).await
    }

    pub async fn start_with(pki: Pki) -> Arc<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let up = Arc::new(Upstream {
            addr: listener.local_addr().expect("addr"),
            queries: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            raw: Mutex::new(Vec::new()),
            behaviour: Behaviour {
                ttl: AtomicU32::new(300),
                ..Default::default()
            },
            acceptor: Mutex::new(acceptor(&pki.cert_der, &pki.key_der)),
            pki,
            resumed: AtomicUsize::new(0),
            accept_task: Mutex::new(None),
            kill: tokio::sync::watch::channel(0).0,
        });
        up.spawn_accept(listener);
        up
    }

    fn spawn_accept(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                me.connections.fetch_add(1, Ordering::SeqCst);
                // As DNS servers do: answers written back to back are not held by Nagle.
                let _ = tcp.set_nodelay(true);
                let acc = me.acceptor.lock().expect("lock").clone();
                let me2 = me.clone();
                let mut kill = me.kill.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = async {
                            if let Ok(tls) = acc.accept(tcp).await {
                                if tls.get_ref().1.handshake_kind()
                                    == Some(rustls::HandshakeKind::Resumed)
                                {
                                    me2.resumed.fetch_add(1, Ordering::SeqCst);
                                }
                                me2.serve(tls).await;
                            }
                        } => {}
                        _ = kill.changed() => {}
                    }
                });
            }
        });
        *self.accept_task.lock().expect("lock") = Some(task);
    }

    /// The server goes away: its listening socket closes (connects are refused) and every
    /// open connection is dropped.
    pub fn go_down(&self) {
        if let Some(t) = self.accept_task.lock().expect("lock").take() {
            t.abort();
        }
        self.kill.send_modify(|g| *g += 1);
    }

    /// The server is back on the same address.
    pub async fn come_back(self: &Arc<Self>) {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.spawn_accept(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot bind {} again", self.addr);
    }

    /// Serves a given certificate and key from now on (key rotation).
    pub fn set_cert(&self, cert: &[u8], key: &[u8]) {
        *self.acceptor.lock().expect("lock") = acceptor(cert, key);
    }

    /// Serves a leaf followed by other certificates (an intermediate, or any certificate a
    /// rogue server sends along).
    pub fn set_chain(&self, chain: &[Vec<u8>], key: &[u8]) {
        *self.acceptor.lock().expect("lock") = chain_acceptor(chain, key);
    }

    /// Replaces the server key and certificate (key rotation); returns the new SPKI pin.
    pub fn rotate_key(&self) -> String {
        let (cert, key) = Pki::issue(&self.pki.ca, &["upstream.test", "127.0.0.1"]);
        *self.acceptor.lock().expect("lock") = acceptor(&cert, &key);
        dot_proxy::upstream::tls_config::spki_pin_of(&cert).expect("pin")
    }

    async fn serve(self: Arc<Self>, tls: tokio_rustls::server::TlsStream<TcpStream>) {
        let (mut rd, wr) = tokio::io::split(tls);
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let mut answered = 0usize;
        let mut writes = tokio::task::JoinSet::new();
        loop {
            let idle = self.behaviour.idle_close_ms.load(Ordering::SeqCst);
            let read = async {
                let len = rd.read_u16().await? as usize;
                let mut buf = vec![0u8; len];
                rd.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            let buf = if idle > 0 {
                match tokio::time::timeout(Duration::from_millis(idle), read).await {
                    Ok(Ok(b)) => b,
                    _ => break,
                }
            } else {
                match read.await {
                    Ok(b) => b,
                    Err(_) => break,
                }
            };
            self.queries.fetch_add(1, Ordering::SeqCst);
            self.raw.lock().expect("lock").push(buf.clone());
            if self.behaviour.stall.load(Ordering::SeqCst) {
                continue;
            }
            let Some(resp) = self.answer(&buf) else {
                continue;
            };
            let slow_name = buf.get(13..17) == Some(b"slow".as_slice());
            let delay = self.behaviour.delay_ms.load(Ordering::SeqCst)
                + if slow_name {
                    self.behaviour.slow_ms.load(Ordering::SeqCst)
                } else {
                    0
                };
            let wr2 = wr.clone();
            let write = async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let mut w = wr2.lock().await;
                let mut frame = (resp.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&resp);
                let _ = w.write_all(&frame).await;
                let _ = w.flush().await;
            };
            answered += 1;
            let close_after = self.behaviour.close_after.load(Ordering::SeqCst);
            if close_after > 0 && answered >= close_after {
                writes.spawn(write);
                break;
            }
            // Answers go out as each is ready: out of order when delays differ.
            writes.spawn(write);
        }
        while writes.join_next().await.is_some() {}
        let mut w = wr.lock().await;
        let _ = w.shutdown().await;
    }

    /// [`zone_answer`] with this server's behaviour.
    pub fn answer(&self, raw: &[u8]) -> Option<Vec<u8>> {
        zone_answer(&self.behaviour, raw)
    }

    pub fn server(&self) -> UpstreamServer {
        let mut s = UpstreamServer::tls(self.addr, "upstream.test");
        s.ca_file = Some(self.pki.ca_file.clone());
        s
    }

    /// A plain-DNS (UDP) server on loopback answering from the same synthetic zone;
    /// returns its address and a counter of the queries it got.
    pub async fn plain_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind plain");
        let addr = sock.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let zone = Upstream::start_with(Pki::new()).await;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                c.fetch_add(1, Ordering::SeqCst);
                // Names under cluster.local answer as if under example.test.
                if let Ok(mut m) = Message::from_vec(&buf[..n]) {
                    if let Some(q) = m.queries.first_mut() {
                        let orig = q.name().clone();
                        let text = orig.to_ascii().replace("cluster.local.", "example.test.");
                        q.set_name(Name::from_ascii(&text).expect("name"));
                        if let Some(resp) = m.to_vec().ok().and_then(|raw| zone.answer(&raw)) {
                            if let Ok(mut r) = Message::from_vec(&resp) {
                                for rec in r.answers.iter_mut() {
                                    rec.name = orig.clone();
                                }
                                if let Some(q) = r.queries.first_mut() {
                                    q.set_name(orig.clone());
                                }
                                if let Ok(b) = r.to_vec() {
                                    let _ = sock.send_to(&b, peer).await;
                                }
                            }
                        }
                    }
                }
            }
        });
        (addr, count)
    }

    pub fn query_count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

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
    let loaded = dot_proxy::reload::load(&cli).expect("valid");
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

/// Minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Builds a query message.
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let mut q = Query::new();
    q.set_name(Name::from_ascii(name).expect("name"))
        .set_query_type(qtype)
        .set_query_class(DNSClass::IN);
    m.add_query(q);
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

/// Runs `n` clients at once, client `i` being `client(i)`; fails if any client fails.
pub async fn concurrently<F, Fut>(n: usize, client: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(client(i))).collect();
    for t in tasks {
        t.await.expect("client");
    }
}

/// `clients` clients at once, each asking `per_client` distinct A names under `prefix`
/// over UDP, one after another; every answer must be NOERROR.
pub async fn load_noerror(addr: SocketAddr, prefix: &str, clients: usize, per_client: usize) {
    let prefix = prefix.to_string();
    concurrently(clients, |c| {
        let prefix = prefix.clone();
        async move {
            for i in 0..per_client {
                let m = udp(
                    addr,
                    &format!("{prefix}{c}-{i}.example.test."),
                    RecordType::A,
                )
                .await;
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            }
        }
    })
    .await;
}

/// Sends `msg` over UDP and returns the answer; fails when none comes within 5 s.
pub async fn udp_raw_answer(addr: SocketAddr, msg: Vec<u8>) -> Vec<u8> {
    udp_raw(addr, &msg, Duration::from_secs(5))
        .await
        .expect("answer")
}

/// The EDNS option codes of a message.
pub fn option_codes(m: &Message) -> Vec<u16> {
    m.edns
        .as_ref()
        .expect("edns")
        .options()
        .as_ref()
        .iter()
        .map(|(c, _)| u16::from(*c))
        .collect()
}

pub async fn udp_raw(addr: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(msg, addr).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn udp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let id = rand::random();
    let r = udp_raw(
        addr,
        &query(id, name, qtype, Some((1232, false))),
        Duration::from_secs(5),
    )
    .await
    .expect("udp answer");
    let m = Message::from_vec(&r).expect("parse answer");
    assert_eq!(m.metadata.id, id);
    m
}

pub async fn tcp_send(s: &mut TcpStream, msg: &[u8]) {
    let mut f = (msg.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(msg);
    s.write_all(&f).await.expect("tcp write");
}

pub async fn tcp_recv(s: &mut TcpStream) -> Option<Vec<u8>> {
    let len = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
        .await
        .ok()?
        .ok()? as usize;
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).await.ok()?;
    Some(b)
}

pub async fn tcp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let id = rand::random();
    tcp_send(&mut s, &query(id, name, qtype, None)).await;
    let m = Message::from_vec(&tcp_recv(&mut s).await.expect("tcp answer")).expect("parse");
    assert_eq!(m.metadata.id, id);
    m
}

pub fn a_records(m: &Message) -> Vec<std::net::Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Sums the samples of lines starting with `prefix` that also contain `label` (e.g.
/// `kind="tls"`).
pub fn metric_with(text: &str, prefix: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Reads one sample from OpenMetrics text: the first line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A port below the ephemeral range (so no client connection of a load test holds it) that
/// is free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> u16 {
    loop {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadReport {
    pub udp_sent: usize,
    pub udp_answered: usize,
    pub udp_servfail: usize,
    pub tcp_sent: usize,
    pub tcp_answered: usize,
    pub tcp_servfail: usize,
}

/// A bounded load: `udp_qps` UDP queries per second from 4 sockets and `tcp_qps` TCP
/// queries per second (a new connection each), for `secs` seconds, names from `name(i)`.
/// Every query gets 2 s to be answered.
pub async fn load(
    addr: SocketAddr,
    secs: u64,
    udp_qps: u64,
    tcp_qps: u64,
    name: fn(u64) -> String,
) -> LoadReport {
    use std::collections::HashSet;
    let total_udp = udp_qps * secs;
    let total_tcp = tcp_qps * secs;
    let mut udp_tasks = Vec::new();
    for sock_i in 0..4u64 {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let answered = Arc::new(Mutex::new((HashSet::<u16>::new(), 0usize)));
        let (rs, ra) = (sock.clone(), answered.clone());
        let recv = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, _)) = rs.recv_from(&mut buf).await {
                if n >= 12 {
                    let mut a = ra.lock().expect("lock");
                    if a.0.insert(u16::from_be_bytes([buf[0], buf[1]])) && buf[3] & 0xF == 2 {
                        a.1 += 1;
                    }
                }
            }
        });
        let per_sock = total_udp / 4;
        let interval_us = 4_000_000 / udp_qps.max(1);
        udp_tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(interval_us.max(1)));
            for i in 0..per_sock {
                tick.tick().await;
                let q = query(i as u16, &name(sock_i * 1_000_000 + i), RecordType::A, None);
                let _ = sock.send_to(&q, addr).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            recv.abort();
            let a = answered.lock().expect("lock");
            (per_sock as usize, a.0.len(), a.1)
        }));
    }
    let tcp_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / tcp_qps.max(1)));
        let mut handles = Vec::new();
        for i in 0..total_tcp {
            tick.tick().await;
            handles.push(tokio::spawn(async move {
                let q = query(i as u16, &name(9_000_000 + i), RecordType::A, None);
                let fut = async {
                    let mut s = TcpStream::connect(addr).await.ok()?;
                    tcp_send(&mut s, &q).await;
                    tcp_recv(&mut s).await
                };
                tokio::time::timeout(Duration::from_secs(2), fut)
                    .await
                    .ok()
                    .flatten()
            }));
        }
        let mut answered = 0;
        let mut servfail = 0;
        for h in handles {
            if let Ok(Some(r)) = h.await {
                answered += 1;
                if r.len() >= 4 && r[3] & 0xF == 2 {
                    servfail += 1;
                }
            }
        }
        (total_tcp as usize, answered, servfail)
    });
    let mut rep = LoadReport::default();
    for t in udp_tasks {
        let (s, a, f) = t.await.expect("udp load");
        rep.udp_sent += s;
        rep.udp_answered += a;
        rep.udp_servfail += f;
    }
    let (s, a, f) = tcp_task.await.expect("tcp load");
    rep.tcp_sent = s;
    rep.tcp_answered = a;
    rep.tcp_servfail = f;
    rep
}

/// The synthetic zone:
/// - `nx*.example.test` and names outside `example.test`: NXDOMAIN with SOA (TTL 60, minimum 30)
/// - `nodata.example.test`: NOERROR, no answer, SOA
/// - `big.example.test TXT`: an answer of about 3000 bytes
/// - `ttl<N>.example.test`: A with TTL N
/// - other names under `example.test`: A 192.0.2.1 with the behaviour's TTL; AAAA: NODATA
pub fn zone_answer(behaviour: &Behaviour, raw: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(raw).ok()?;
    let query = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = q.metadata.checking_disabled;
    m.metadata.authoritative = behaviour.authoritative.load(Ordering::SeqCst);
    m.add_query(query.clone());
    if let Some(e) = &q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        let units = behaviour.keepalive_units.load(Ordering::SeqCst);
        if units > 0 {
            edns.options_mut()
                .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                    11,
                    (units as u16).to_be_bytes().to_vec(),
                ));
        }
        m.set_edns(edns);
    }
    if behaviour.servfail.load(Ordering::SeqCst) {
        m.metadata.response_code = ResponseCode::ServFail;
        return m.to_vec().ok();
    }
    let name = query.name().to_lowercase();
    let text = name.to_ascii();
    let zone = Name::from_ascii("example.test.").ok()?;
    let soa = Record::from_rdata(
        zone.clone(),
        60,
        RData::SOA(SOA::new(
            Name::from_ascii("ns.example.test.").ok()?,
            Name::from_ascii("admin.example.test.").ok()?,
            1,
            3600,
            600,
            86400,
            30,
        )),
    );
    let first = text.split('.').next().unwrap_or("");
    if !zone.zone_of(&name) || first.starts_with("nx") {
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_authority(soa);
    } else if first == "nodata" {
        m.add_authority(soa);
    } else if first == "big" && query.query_type() == RecordType::TXT {
        for i in 0..12 {
            let s = format!("{i:02}-{}", "x".repeat(240));
            m.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::TXT(TXT::new(vec![s])),
            ));
        }
    } else if query.query_type() == RecordType::A {
        let ttl = first
            .strip_prefix("ttl")
            .and_then(|n| n.parse().ok())
            .unwrap_or(behaviour.ttl.load(Ordering::SeqCst));
        m.add_answer(Record::from_rdata(
            query.name().clone(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
    } else if query.query_type() == RecordType::HTTPS {
        // Both address hints, so filter_aaaa's removal of the IPv6 one can be seen.
        use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamKey, SvcParamValue, SVCB};
        let svcb = SVCB::new(
            1,
            Name::root(),
            vec![
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![A::new(192, 0, 2, 1)])),
                ),
                (
                    SvcParamKey::Ipv6Hint,
                    SvcParamValue::Ipv6Hint(IpHint(vec![hickory_proto::rr::rdata::AAAA::new(
                        0x2001, 0xdb8, 0, 0, 0, 0, 0, 1,
                    )])),
                ),
            ],
        );
        m.add_answer(Record::from_rdata(
            query.name().clone(),
            300,
            RData::HTTPS(hickory_proto::rr::rdata::HTTPS(svcb)),
        ));
    } else {
        m.add_authority(soa);
    }
    m.to_vec().ok()
}
