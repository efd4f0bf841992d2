//! DNS over HTTPS and DNS over QUIC upstreams against in-process servers (hyper's HTTP/2
//! server and quinn, both on rustls) that the test controls: answers, verification, and
//! servers that misbehave in each way RFC 8484 and RFC 9250 leave open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::support::*;
use dot_proxy::config::{Config, Protocol, UpstreamServer};

/// How a test server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Good = 0,
    /// HTTP 500 (DoH) to every query.
    Status500,
    /// 200 with `content-type: text/html` (DoH).
    WrongType,
    /// A body of 70,000 bytes (DoH).
    Oversize,
    /// The DNS message cut in half (DoH body, DoQ stream).
    Truncated,
    /// The stream reset instead of an answer (DoH RST_STREAM, DoQ RESET_STREAM).
    Reset,
    /// GOAWAY after every second request on a connection (DoH).
    GoawayEvery2,
    /// A length prefix that does not match the message (DoQ).
    BadLength,
    /// Never answers (the stream stays open).
    Stall,
}

pub struct EncServer {
    pub addr: SocketAddr,
    pub pki: Pki,
    pub queries: AtomicUsize,
    pub connections: AtomicUsize,
    /// DoQ: streams the server could open towards the proxy (RFC 9250 servers open none,
    /// and the proxy allows none).
    pub server_opened: AtomicUsize,
    /// Message IDs as they arrived on the wire.
    pub ids: Mutex<Vec<u16>>,
    mode: AtomicU8,
    pub behaviour: Behaviour,
    /// DoH: the connections open now stop being served at all (no frame read, no PING
    /// acknowledged, the TCP connection left open): a path that went dark.
    pub freeze: tokio::sync::Notify,
    /// DoH: the connections open now are closed at once, their streams unanswered.
    pub close_all: tokio::sync::Notify,
}

impl EncServer {
    fn new(addr: SocketAddr, pki: Pki, mode: Mode) -> EncServer {
        EncServer {
            addr,
            pki,
            queries: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            server_opened: AtomicUsize::new(0),
            ids: Mutex::new(Vec::new()),
            mode: AtomicU8::new(mode as u8),
            behaviour: Behaviour {
                ttl: AtomicU32::new(300),
                ..Default::default()
            },
            freeze: tokio::sync::Notify::new(),
            close_all: tokio::sync::Notify::new(),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Status500,
            2 => Mode::WrongType,
            3 => Mode::Oversize,
            4 => Mode::Truncated,
            5 => Mode::Reset,
            6 => Mode::GoawayEvery2,
            7 => Mode::BadLength,
            8 => Mode::Stall,
            _ => Mode::Good,
        }
    }

    /// Records the query and answers it from the test zone.
    fn answer(&self, raw: &[u8]) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if raw.len() >= 2 {
            self.ids
                .lock()
                .expect("lock")
                .push(u16::from_be_bytes([raw[0], raw[1]]));
        }
        zone_answer(&self.behaviour, raw)
    }

    pub fn server(&self, protocol: Protocol) -> UpstreamServer {
        let mut s = UpstreamServer::encrypted(protocol, self.addr, "upstream.test");
        s.ca_file = Some(self.pki.ca_file.clone());
        s
    }

    fn tls_config(&self, alpn: &[u8]) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(
                self.pki.cert_der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::try_from(self.pki.key_der.clone()).expect("key"),
        )
        .expect("server config");
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg
    }
}

// ------------------------------------------------------------------ DoH

pub async fn doh_server(mode: Mode) -> Arc<EncServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let me = Arc::new(EncServer::new(
        listener.local_addr().expect("addr"),
        Pki::new(),
        mode,
    ));
    let acceptor = TlsAcceptor::from(Arc::new(me.tls_config(b"h2")));
    let server = me.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            server.connections.fetch_add(1, Ordering::SeqCst);
            let _ = tcp.set_nodelay(true);
            let (acceptor, server) = (acceptor.clone(), server.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                serve_h2(server, tls).await;
            });
        }
    });
    me
}

async fn serve_h2(
    server: Arc<EncServer>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) {
    let per_conn = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let (server, per_conn, goaway) = (server.clone(), per_conn.clone(), goaway.clone());
        service_fn(move |req: Request<Incoming>| {
            let (server, per_conn, goaway) = (server.clone(), per_conn.clone(), goaway.clone());
            async move { doh_handle(&server, &per_conn, &goaway, req).await }
        })
    };
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    let mut conn = std::pin::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = goaway.notified() => conn.as_mut().graceful_shutdown(),
            _ = server.close_all.notified() => break,
            _ = server.freeze.notified() => {
                // Kept, never polled again: the socket stays open and silent.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn doh_handle(
    server: &EncServer,
    per_conn: &AtomicUsize,
    goaway: &tokio::sync::Notify,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let reply = |status: u16, ctype: &str, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", ctype)
            // Must not shorten what the cache keeps (RFC 8484 §5.1: TTLs rule).
            .header("cache-control", "max-age=0")
            .body(Full::new(Bytes::from(body)))
            .expect("response"))
    };
    if req.method() != hyper::Method::POST
        || req.uri().path() != "/dns-query"
        || req.headers().get("content-type").map(|v| v.as_bytes())
            != Some(b"application/dns-message")
    {
        return reply(
            415,
            "text/plain",
            b"POST application/dns-message to /dns-query".to_vec(),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .to_bytes();
    let Some(answer) = server.answer(&body) else {
        return reply(400, "text/plain", Vec::new());
    };
    let n = per_conn.fetch_add(1, Ordering::SeqCst) + 1;
    match server.mode() {
        Mode::Status500 => reply(500, "text/plain", b"oops".to_vec()),
        Mode::WrongType => reply(200, "text/html", answer),
        Mode::Oversize => reply(200, "application/dns-message", vec![0u8; 70_000]),
        Mode::Truncated => reply(
            200,
            "application/dns-message",
            answer[..answer.len() / 2].to_vec(),
        ),
        Mode::Reset => Err(std::io::Error::other("reset")),
        Mode::Stall => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            reply(200, "application/dns-message", answer)
        }
        Mode::GoawayEvery2 => {
            if n.is_multiple_of(2) {
                goaway.notify_one();
            }
            reply(200, "application/dns-message", answer)
        }
        _ => reply(200, "application/dns-message", answer),
    }
}

// ------------------------------------------------------------------ DoQ

pub async fn doq_server(mode: Mode) -> Arc<EncServer> {
    let pki = Pki::new();
    let holder = EncServer::new("127.0.0.1:0".parse().expect("addr"), pki, mode);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(holder.tls_config(b"doq"))
        .expect("QUIC server config");
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("QUIC endpoint");
    let me = Arc::new(EncServer {
        addr: endpoint.local_addr().expect("addr"),
        ..holder
    });
    let server = me.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else {
                    return;
                };
                server.connections.fetch_add(1, Ordering::SeqCst);
                // A hostile server would open streams of its own: try both kinds.
                {
                    let (server, conn) = (server.clone(), conn.clone());
                    tokio::spawn(async move {
                        let wait = std::time::Duration::from_millis(300);
                        if let Ok(Ok(_)) = tokio::time::timeout(wait, conn.open_bi()).await {
                            server.server_opened.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(Ok(_)) = tokio::time::timeout(wait, conn.open_uni()).await {
                            server.server_opened.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let server = server.clone();
                    tokio::spawn(async move {
                        let Ok(q) = recv.read_to_end(65_537).await else {
                            return;
                        };
                        let len = q
                            .get(..2)
                            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                        if len != Some(q.len().saturating_sub(2)) {
                            let _ = send.reset(1u8.into());
                            return;
                        }
                        let Some(answer) = server.answer(&q[2..]) else {
                            let _ = send.reset(1u8.into());
                            return;
                        };
                        let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                        match server.mode() {
                            Mode::Reset => {
                                let _ = send.reset(2u8.into());
                                return;
                            }
                            Mode::Truncated => out.extend_from_slice(&answer[..answer.len() / 2]),
                            Mode::Stall => {
                                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                                return;
                            }
                            Mode::BadLength => {
                                out = ((answer.len() + 7) as u16).to_be_bytes().to_vec();
                                out.extend_from_slice(&answer);
                            }
                            _ => out.extend_from_slice(&answer),
                        }
                        let _ = send.write_all(&out).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    me
}

// ------------------------------------------------------------------ tests

/// `dot_proxy_upstream_errors_total` of one server and kind.
fn upstream_errors(text: &str, label: &str, kind: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("dot_proxy_upstream_errors_total")
                && l.contains(&format!("upstream=\"{label}\""))
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn group_of(servers: Vec<UpstreamServer>) -> Config {
    config_for(servers)
}

async fn answers_through(protocol: Protocol, server: &EncServer) -> Proxy {
    let p = Proxy::start(group_of(vec![server.server(protocol)])).await;
    let m = udp(p.addr, "www.example.test.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{protocol:?}"
    );
    assert_eq!(a_records(&m), vec![std::net::Ipv4Addr::new(192, 0, 2, 1)]);
    p
}

#[tokio::test]
async fn doh_and_doq_answer_with_id_zero_on_one_connection() {
    for protocol in [Protocol::Https, Protocol::Quic] {
        let server = match protocol {
            Protocol::Https => doh_server(Mode::Good).await,
            _ => doq_server(Mode::Good).await,
        };
        let p = answers_through(protocol, &server).await;
        // Many at once: multiplexed, each answered under its own ID.
        concurrently(50, |i| {
            let addr = p.addr;
            async move {
                let m = udp(addr, &format!("host{i}.example.test."), RecordType::A).await;
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            }
        })
        .await;
        assert!(
            server.ids.lock().expect("lock").iter().all(|&id| id == 0),
            "{protocol:?}: ID 0 on the wire (RFC 8484 4.1, RFC 9250 4.2.1)"
        );
        let conns = server.connections.load(Ordering::SeqCst);
        assert!(
            conns <= 2,
            "{protocol:?}: {conns} connections for 51 queries"
        );
        // The answer's TTLs rule the cache, whatever Cache-Control said.
        let before = server.queries.load(Ordering::SeqCst);
        let m = udp(p.addr, "www.example.test.", RecordType::A).await;
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            server.queries.load(Ordering::SeqCst),
            before,
            "{protocol:?}: cached"
        );
        let text = p.metrics().await;
        let label = server.server(protocol).label();
        assert!(
            text.contains(&format!("upstream=\"{label}\"")),
            "{protocol:?}: metrics name the server with its scheme: {label}"
        );
    }
}

#[tokio::test]
async fn doh_and_doq_verify_like_dot() {
    for protocol in [Protocol::Https, Protocol::Quic] {
        let server = match protocol {
            Protocol::Https => doh_server(Mode::Good).await,
            _ => doq_server(Mode::Good).await,
        };
        let other = Pki::new();
        let mut wrong_name = server.server(protocol);
        wrong_name.tls_name = Some("other.test".into());
        let mut wrong_ca = server.server(protocol);
        wrong_ca.ca_file = Some(other.ca_file.clone());
        let mut wrong_pin = server.server(protocol);
        wrong_pin.spki_pins = vec![other.spki_pin()];
        let mut right_pin_only = server.server(protocol);
        right_pin_only.spki_pins = vec![server.pki.spki_pin()];
        right_pin_only.verify_ca = false;
        right_pin_only.tls_name = None;
        for (what, s, ok) in [
            ("wrong name", wrong_name, false),
            ("wrong CA", wrong_ca, false),
            ("wrong pin", wrong_pin, false),
            ("the server's own pin, no CA", right_pin_only, true),
        ] {
            let mut cfg = group_of(vec![s]);
            cfg.upstream_groups[0].timeout = dot_proxy::config::Dur::millis(800);
            let p = Proxy::start(cfg).await;
            let m = udp(p.addr, "www.example.test.", RecordType::A).await;
            let want = if ok {
                ResponseCode::NoError
            } else {
                ResponseCode::ServFail
            };
            assert_eq!(m.metadata.response_code, want, "{protocol:?} {what}");
            if !ok {
                let text = p.metrics().await;
                assert!(
                    metric_with(&text, "dot_proxy_upstream_errors_total", "kind=\"tls\"") >= 1.0,
                    "{protocol:?} {what}: counted as a TLS failure\n{text}"
                );
            }
        }
    }
}

#[tokio::test]
async fn misbehaving_servers_fail_over_and_lose_no_query() {
    let cases = [
        (Protocol::Https, Mode::Status500, "http"),
        (Protocol::Https, Mode::WrongType, "http"),
        (Protocol::Https, Mode::Oversize, "malformed"),
        (Protocol::Https, Mode::Truncated, "malformed"),
        (Protocol::Https, Mode::Reset, "closed"),
        // A server that stalls (the answer never comes: also what a flow-control window
        // that never opens looks like to the client) is overtaken by the next one.
        (Protocol::Https, Mode::Stall, "slow"),
        (Protocol::Quic, Mode::Stall, "slow"),
        (Protocol::Quic, Mode::Truncated, "malformed"),
        (Protocol::Quic, Mode::BadLength, "malformed"),
        (Protocol::Quic, Mode::Reset, "closed"),
    ];
    for (protocol, mode, kind) in cases {
        let bad = match protocol {
            Protocol::Https => doh_server(mode).await,
            _ => doq_server(mode).await,
        };
        let good = doh_server(Mode::Good).await;
        let mut cfg = group_of(vec![bad.server(protocol), good.server(Protocol::Https)]);
        cfg.upstream_groups[0].timeout = dot_proxy::config::Dur::secs(2);
        let p = Proxy::start(cfg).await;
        concurrently(20, |i| {
            let addr = p.addr;
            async move {
                let m = udp(addr, &format!("q{i}.example.test."), RecordType::A).await;
                assert_eq!(
                    m.metadata.response_code,
                    ResponseCode::NoError,
                    "{protocol:?} {mode:?}: every query answered by the good server"
                );
            }
        })
        .await;
        let text = p.metrics().await;
        let label = bad.server(protocol).label();
        let errors: f64 = if kind == "slow" {
            metric_with(&text, "dot_proxy_group_failovers_total", "reason=\"slow\"")
        } else {
            upstream_errors(&text, &label, kind)
        };
        assert!(
            errors >= 1.0,
            "{protocol:?} {mode:?}: {kind} counted\n{text}"
        );
        {
            assert!(
                bad.queries.load(Ordering::SeqCst) >= 1,
                "{protocol:?} {mode:?}: the bad server was asked"
            );
        }
    }
}

#[tokio::test]
async fn doh_goaway_moves_queries_to_a_fresh_connection() {
    let server = doh_server(Mode::GoawayEvery2).await;
    let p = Proxy::start(group_of(vec![server.server(Protocol::Https)])).await;
    for round in 0..3 {
        concurrently(10, |i| {
            let addr = p.addr;
            async move {
                let m = udp(addr, &format!("r{round}-{i}.example.test."), RecordType::A).await;
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            }
        })
        .await;
    }
    assert!(
        server.connections.load(Ordering::SeqCst) >= 2,
        "GOAWAYs made the proxy open new connections"
    );
}

#[test]
fn a_raw_answer_is_what_dns_parses() {
    // The test zone answers what the proxy sends (guard against a fixture drifting).
    let q = query(7, "www.example.test.", RecordType::A, None);
    let a = zone_answer(&Behaviour::default(), &q).expect("answer");
    assert_eq!(Message::from_vec(&a).expect("parses").metadata.id, 7);
}

#[tokio::test]
async fn a_dead_doh_or_doq_server_is_not_reconnected_for_every_query() {
    // The group's only server is gone: every query is still tried on it (a group whose
    // servers are all down keeps asking them), but connects are spaced by the backoff.
    for protocol in [Protocol::Https, Protocol::Quic] {
        let pki = Pki::new();
        let dead_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut dead = UpstreamServer::encrypted(protocol, dead_addr, "upstream.test");
        dead.ca_file = Some(pki.ca_file.clone());
        dead.connect_timeout = dot_proxy::config::Dur::millis(300);
        let label = dead.label();
        let p = Proxy::start(group_of(vec![dead])).await;
        for round in 0..4 {
            concurrently(20, |i| {
                let addr = p.addr;
                async move {
                    let m = udp(addr, &format!("d{round}-{i}.example.test."), RecordType::A).await;
                    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
                }
            })
            .await;
        }
        let text = p.metrics().await;
        let connects = upstream_errors(&text, &label, "connect");
        assert!(
            (1.0..=10.0).contains(&connects),
            "{protocol:?}: {connects} failed connects for 80 queries (backoff, then marked down)"
        );
    }
}

/// A DoH connection that goes dark (open, but nothing comes back, not even PING acks) is
/// found dead and replaced while queries are outstanding, within seconds, not left in use
/// until the kernel gives up on it or `max_connection_age`.
#[tokio::test]
async fn a_doh_connection_that_goes_dark_is_replaced() {
    let server = doh_server(Mode::Good).await;
    // One connection, so that every query goes to it.
    let mut one = server.server(Protocol::Https);
    one.pool_size = 1;
    let p = Proxy::start(group_of(vec![one])).await;
    let m = udp(p.addr, "lit.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    server.freeze.notify_waiters();
    let started = std::time::Instant::now();
    let mut answered = false;
    for i in 0..40 {
        let m = udp(p.addr, &format!("dark{i}.example.test."), RecordType::A).await;
        if m.metadata.response_code == ResponseCode::NoError {
            answered = true;
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        answered,
        "no answer {:?} after the connection went dark",
        started.elapsed()
    );
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        2,
        "a new connection"
    );
}

/// When a DoH connection dies with many queries on it, their retries share one new
/// connection: the first retry opens it and the others find it, instead of each opening
/// its own, one after another, under the slot's lock (which would push the later ones past
/// the group's timeout).
#[tokio::test]
async fn retries_after_a_dead_doh_connection_share_one_new_connection() {
    let server = doh_server(Mode::Good).await;
    let mut one = server.server(Protocol::Https);
    one.pool_size = 1;
    let p = Proxy::start(group_of(vec![one])).await;
    let m = udp(p.addr, "first.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // Eight queries held open on the connection, then the connection closed under them.
    server.set_mode(Mode::Stall);
    let addr = p.addr;
    let pending: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(async move {
                udp(addr, &format!("held{i}.example.test."), RecordType::A).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.set_mode(Mode::Good);
    server.close_all.notify_waiters();
    for t in pending {
        let m = t.await.expect("client");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        2,
        "one new connection for all the retries"
    );
}

/// Issue 33: readiness reflects the warm-up of every encrypted transport. With the only
/// upstream unreachable, `/readyz` is 503 from the first probe and the server counts as
/// down, before any client query; with it reachable, 200 without any client query.
#[tokio::test]
async fn readiness_follows_the_warm_up_without_a_client_query() {
    for protocol in [Protocol::Tls, Protocol::Https, Protocol::Quic] {
        // A TCP and UDP port where nothing listens.
        let addr = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let a = t.local_addr().expect("addr");
            let _u = std::net::UdpSocket::bind(a).expect("bind udp");
            a
        };
        let pki = Box::leak(Box::new(Pki::new()));
        let mut s = UpstreamServer::encrypted(protocol, addr, "upstream.test");
        s.ca_file = Some(pki.ca_file.clone());
        s.connect_timeout = dot_proxy::config::Dur::millis(500);
        let p = Proxy::start(group_of(vec![s])).await;
        let admin = p.server.admin_addr().expect("admin");
        let (code, body) = http_get(admin, "/readyz").await;
        assert_eq!(code, 503, "{protocol:?}: {body}");
        let metrics = p.metrics().await;
        assert_eq!(
            metric(&metrics, "dot_proxy_upstream_healthy{"),
            0.0,
            "{protocol:?}: {metrics}"
        );
    }
    for protocol in [Protocol::Tls, Protocol::Https, Protocol::Quic] {
        let (server, _dot);
        let s = match protocol {
            Protocol::Tls => {
                _dot = Upstream::start().await;
                _dot.server()
            }
            Protocol::Https => {
                server = doh_server(Mode::Good).await;
                server.server(protocol)
            }
            _ => {
                server = doq_server(Mode::Good).await;
                server.server(protocol)
            }
        };
        let p = Proxy::start(group_of(vec![s])).await;
        let (code, body) = http_get(p.server.admin_addr().expect("admin"), "/readyz").await;
        assert_eq!(code, 200, "{protocol:?}: {body}");
    }
}

/// Issue 27: a DoQ server can open no stream towards the proxy, of either kind (RFC 9250
/// servers open none; quinn's default let a server open 100 bidirectional streams, each
/// with a receive window the proxy would hold).
#[tokio::test]
async fn a_doq_server_cannot_open_streams() {
    let server = doq_server(Mode::Good).await;
    let _p = answers_through(Protocol::Quic, &server).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(server.connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(server.server_opened.load(Ordering::SeqCst), 0);
}

/// A UDP relay in front of a server whose path can go dark: while frozen, every datagram,
/// either way, is dropped.
struct DarkPath {
    addr: SocketAddr,
    frozen_until: Mutex<Option<std::time::Instant>>,
}

impl DarkPath {
    async fn start(server: SocketAddr) -> Arc<DarkPath> {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        back.connect(server).await.expect("connect");
        let me = Arc::new(DarkPath {
            addr: front.local_addr().expect("addr"),
            frozen_until: Mutex::new(None),
        });
        let path = me.clone();
        tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, peer)) = front.recv_from(&mut up) => {
                        client = Some(peer);
                        if !path.frozen() {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if let (Some(c), false) = (client, path.frozen()) {
                            let _ = front.send_to(&down[..n], c).await;
                        }
                    }
                }
            }
        });
        me
    }

    fn frozen(&self) -> bool {
        self.frozen_until
            .lock()
            .expect("lock")
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    fn freeze_for(&self, d: std::time::Duration) {
        *self.frozen_until.lock().expect("lock") = Some(std::time::Instant::now() + d);
    }
}

/// A DoQ connection that goes dark (the path drops every datagram, ACKs included) is found
/// dead by the pool while queries wait on it (stall timeout: 4 s here) and replaced, as a
/// DoH one is. Without that, QUIC would keep it until its idle timeout (30 s), and the path
/// coming back after 6 s would find the old connection still in use.
#[tokio::test]
async fn a_doq_connection_that_goes_dark_is_replaced() {
    let server = doq_server(Mode::Good).await;
    let path = DarkPath::start(server.addr).await;
    let mut s = server.server(Protocol::Quic);
    s.address = path.addr;
    let p = Proxy::start(group_of(vec![s])).await;
    let m = udp(p.addr, "lit.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    path.freeze_for(std::time::Duration::from_secs(6));
    // Steady traffic, as a node sends: queries keep waiting on the connection.
    let traffic = {
        let addr = p.addr;
        tokio::spawn(async move {
            for i in 0.. {
                tokio::spawn(async move {
                    udp(addr, &format!("bg{i}.example.test."), RecordType::A).await
                });
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let mut answered = false;
    for i in 0..80 {
        let m = udp(p.addr, &format!("dark{i}.example.test."), RecordType::A).await;
        if m.metadata.response_code == ResponseCode::NoError && !path.frozen() {
            answered = true;
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(15) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    traffic.abort();
    assert!(
        answered,
        "no answer {:?} after the path went dark",
        started.elapsed()
    );
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        2,
        "the dark connection was replaced by a new one"
    );
    let text = p.metrics().await;
    assert!(
        metric_with(&text, "dot_proxy_upstream_errors_total", "kind=\"timeout\"") >= 1.0,
        "the dark connection is counted as a timeout\n{text}"
    );
}
