//! DNS over HTTPS and DNS over QUIC upstreams against in-process servers (the test kit's
//! `enc` servers) that the test controls: answers, verification, and servers that
//! misbehave in each way RFC 8484 and RFC 9250 leave open.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::enc::{doh_server, doq_server, enc_server, EncServer, Mode};
use crate::support::*;
use dot_proxy::config::{Config, Protocol, UpstreamServer};
use std::net::SocketAddr;
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
    let m = p.ask("www.example.test.").await;
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
        let server = enc_server(protocol, Mode::Good).await;
        let p = answers_through(protocol, &server).await;
        // Many at once: multiplexed, each answered under its own ID.
        let name = |i| format!("host{i}.example.test.");
        concurrently_expect(p.addr, 50, name, ResponseCode::NoError, "many at once").await;
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
        let m = p.ask("www.example.test.").await;
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
        let server = enc_server(protocol, Mode::Good).await;
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
            let m = p.ask("www.example.test.").await;
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
        let bad = enc_server(protocol, mode).await;
        let good = doh_server(Mode::Good).await;
        let mut cfg = group_of(vec![bad.server(protocol), good.server(Protocol::Https)]);
        cfg.upstream_groups[0].timeout = dot_proxy::config::Dur::secs(2);
        let p = Proxy::start(cfg).await;
        let what = format!("{protocol:?} {mode:?}: every query answered by the good server");
        let name = |i| format!("q{i}.example.test.");
        concurrently_expect(p.addr, 20, name, ResponseCode::NoError, &what).await;
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
        let name = |i| format!("r{round}-{i}.example.test.");
        concurrently_expect(p.addr, 10, name, ResponseCode::NoError, "after GOAWAY").await;
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
            let name = |i| format!("d{round}-{i}.example.test.");
            concurrently_expect(p.addr, 20, name, ResponseCode::ServFail, "dead server").await;
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
/// A DoH server and a proxy with one connection to it, so that every query goes to it.
async fn one_doh_connection() -> (Arc<EncServer>, Proxy) {
    let server = doh_server(Mode::Good).await;
    let mut one = server.server(Protocol::Https);
    one.pool_size = 1;
    let p = Proxy::start(group_of(vec![one])).await;
    (server, p)
}

#[tokio::test]
async fn a_doh_connection_that_goes_dark_is_replaced() {
    let (server, p) = one_doh_connection().await;
    p.assert_rcode("lit.example.test.", ResponseCode::NoError)
        .await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    server.freeze.notify_waiters();
    let started = std::time::Instant::now();
    // Asked again and again (a query may die with the dark connection) until answered.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let answered = within(std::time::Duration::from_secs(10), || async {
        let i = tries.fetch_add(1, Ordering::SeqCst);
        let m = p.ask(&format!("dark{i}.example.test.")).await;
        m.metadata.response_code == ResponseCode::NoError
    })
    .await;
    assert!(
        answered,
        "no answer {:?} after the connection went dark",
        started.elapsed()
    );
    assert_eq!(server.connection_count(), 2, "a new connection");
}

/// When a DoH connection dies with many queries on it, their retries share one new
/// connection: the first retry opens it and the others find it, instead of each opening
/// its own, one after another, under the slot's lock (which would push the later ones past
/// the group's timeout).
#[tokio::test]
async fn retries_after_a_dead_doh_connection_share_one_new_connection() {
    let (server, p) = one_doh_connection().await;
    p.assert_rcode("first.example.test.", ResponseCode::NoError)
        .await;
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
    until(
        "eight queries held on the connection",
        std::time::Duration::from_secs(5),
        || async { server.queries.load(Ordering::SeqCst) >= 9 },
    )
    .await;
    server.set_mode(Mode::Good);
    server.close_all.notify_waiters();
    for t in pending {
        let m = t.await.expect("client");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    assert_eq!(
        server.connection_count(),
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
    until(
        "the server has tried to open its streams",
        std::time::Duration::from_secs(5),
        || async { server.server_tried.load(Ordering::SeqCst) >= 1 },
    )
    .await;
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
    p.assert_rcode("lit.example.test.", ResponseCode::NoError)
        .await;
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
        let m = p.ask(&format!("dark{i}.example.test.")).await;
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
        server.connection_count(),
        2,
        "the dark connection was replaced by a new one"
    );
    let text = p.metrics().await;
    assert!(
        metric_with(&text, "dot_proxy_upstream_errors_total", "kind=\"timeout\"") >= 1.0,
        "the dark connection is counted as a timeout\n{text}"
    );
}
