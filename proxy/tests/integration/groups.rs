//! Upstream groups: policies, health, failover and recovery, zone routing, pinning, padding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::{TcpListener, UdpSocket};

use dot_proxy::config::{Dur, Policy, UpstreamServer};

use crate::support::*;

fn group_config(policy: Policy, servers: Vec<UpstreamServer>) -> dot_proxy::config::Config {
    let mut c = config_for(servers);
    c.upstream_groups[0].policy = policy;
    c.upstream_groups[0].timeout = Dur::millis(800);
    c.cache.enabled = false;
    c
}

/// A group of a slow upstream (answering after `delay_ms`) and a fast one, under `policy`.
async fn slow_and_fast(policy: Policy, delay_ms: u64) -> (Arc<Upstream>, Arc<Upstream>, Proxy) {
    let [slow, fast] = Upstream::start_n().await;
    slow.behaviour.delay_ms.store(delay_ms, Ordering::SeqCst);
    let p = Proxy::start(group_config(policy, vec![slow.server(), fast.server()])).await;
    (slow, fast, p)
}

/// Asks `name`; fails unless it is answered NOERROR within `limit`.
async fn answered_within(p: &Proxy, name: &str, limit: Duration, what: &str) {
    let t = Instant::now();
    p.assert_rcode(name, ResponseCode::NoError).await;
    let took = t.elapsed();
    assert!(took < limit, "{what}: took {took:?}");
}

/// A TLS server address where nothing listens.
fn dead_server() -> UpstreamServer {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let mut s = UpstreamServer::tls(addr, "upstream.test");
    // The CA files must outlive the proxy: leak the test PKI.
    s.ca_file = Some(Box::leak(Box::new(Pki::new())).ca_file.clone());
    s
}

#[tokio::test]
async fn failover_skips_a_dead_server_within_one_timeout() {
    let good = Upstream::start().await;
    let p = Proxy::start(group_config(
        Policy::Failover,
        vec![dead_server(), good.server()],
    ))
    .await;
    let what = "failed over within one query timeout";
    answered_within(&p, "fo1.example.test.", Duration::from_millis(800), what).await;
    for i in 0..10 {
        p.assert_rcode(&format!("fo-{i}.example.test."), ResponseCode::NoError)
            .await;
    }
    assert_eq!(good.query_count(), 11);
    // The dead one is marked down.
    p.assert_metrics(&[("dot_proxy_group_healthy_upstreams{", "", 1.0)])
        .await;
}

#[tokio::test]
async fn failover_prefers_the_first_server() {
    let [a, b] = Upstream::start_n().await;
    let p = Proxy::start(group_config(Policy::Failover, vec![a.server(), b.server()])).await;
    for i in 0..10 {
        p.ask(&format!("first{i}.example.test.")).await;
    }
    assert_eq!((a.query_count(), b.query_count()), (10, 0));
}

#[tokio::test]
async fn round_robin_spreads_queries() {
    let [a, b, c] = Upstream::start_n().await;
    let p = Proxy::start(group_config(
        Policy::RoundRobin,
        vec![a.server(), b.server(), c.server()],
    ))
    .await;
    for i in 0..30 {
        p.ask(&format!("rr{i}.example.test.")).await;
    }
    assert_eq!(
        (a.query_count(), b.query_count(), c.query_count()),
        (10, 10, 10)
    );
}

#[tokio::test]
async fn fastest_prefers_the_fast_server_and_keeps_probing_the_slow_one() {
    let (slow, fast, p) = slow_and_fast(Policy::Fastest, 60).await;
    for i in 0..80 {
        p.ask(&format!("fast{i}.example.test.")).await;
    }
    let (s, f) = (slow.query_count(), fast.query_count());
    assert!(f > 60, "fast server carries most: slow {s}, fast {f}");
    assert!(s >= 2, "slow server still measured now and then: {s}");
}

#[tokio::test]
async fn race_answers_at_the_speed_of_the_faster_server() {
    let (slow, fast, p) = slow_and_fast(Policy::Race, 400).await;
    for i in 0..5 {
        let name = format!("race{i}.example.test.");
        answered_within(&p, &name, Duration::from_millis(250), "race").await;
    }
    assert_eq!(fast.query_count(), 5);
    assert_eq!(slow.query_count(), 5, "both asked every time");
}

/// Timeouts never take a group's last usable server out of use (issue 15: one slow reply
/// is not an outage): while it stalls, queries wait for it; the moment it answers again,
/// so do they, without waiting for a probe or a backoff.
#[tokio::test]
async fn timeouts_never_take_the_last_server_out_of_use() {
    let up = Upstream::start().await;
    let mut cfg = group_config(Policy::Failover, vec![up.server()]);
    cfg.upstream_groups[0].timeout = Dur::millis(400);
    let p = Proxy::start(cfg).await;
    up.behaviour.stall.store(true, Ordering::SeqCst);
    for i in 0..4 {
        p.assert_rcode(&format!("down{i}.example.test."), ResponseCode::ServFail)
            .await;
    }
    // Still in use.
    p.assert_metrics(&[("dot_proxy_upstream_healthy{", "", 1.0)])
        .await;
    let (_, ready) = http_get(p.server.admin_addr().expect("admin"), "/readyz").await;
    assert!(!ready.contains("not ready"), "{ready}");
    up.behaviour.stall.store(false, Ordering::SeqCst);
    let what = "answered the moment the server is back";
    answered_within(&p, "back.example.test.", Duration::from_millis(300), what).await;
}

#[tokio::test]
async fn spki_pins_refuse_a_mismatch_and_accept_a_rotated_key_with_its_pin() {
    let up = Upstream::start().await;
    // A pin of some other key: refused.
    let mut s = up.server();
    s.spki_pins = vec![Pki::new().spki_pin()];
    let p = Proxy::start(group_config(Policy::Failover, vec![s])).await;
    p.assert_rcode("pin1.example.test.", ResponseCode::ServFail)
        .await;
    assert_eq!(up.query_count(), 0);

    // Current pin plus the next key's pin: accepted before and after rotation.
    let up = Upstream::start().await;
    let (next_cert, next_key) = Pki::issue(&up.pki.ca, &["upstream.test", "127.0.0.1"]);
    let next_pin = dot_proxy::upstream::tls_config::spki_pin_of(&next_cert)
        .expect("pin")
        .parse::<dot_proxy::config::SpkiPin>()
        .expect("pin");
    let mut s = up.server();
    s.spki_pins = vec![up.pki.spki_pin(), next_pin.clone()];
    s.max_connection_age = Dur::secs(1);
    let mut cfg = group_config(Policy::Failover, vec![s]);
    cfg.upstream_groups[0].servers[0].idle_timeout = Dur::millis(200);
    let p = Proxy::start(cfg).await;
    p.assert_rcode("pin2.example.test.", ResponseCode::NoError)
        .await;
    up.set_cert(&next_cert, &next_key);
    // Our idle timeout (200 ms) closes the old connection.
    up.wait_closed("the idle connection is closed").await;
    p.assert_rcode("pin3.example.test.", ResponseCode::NoError)
        .await;
    assert!(
        up.connections.load(Ordering::SeqCst) >= 2,
        "a new handshake with the rotated key happened"
    );

    // Pin-only authentication (no CA check): an unknown CA is fine when the pin matches.
    let up = Upstream::start().await;
    let mut s = up.server();
    s.ca_file = Some(Box::leak(Box::new(Pki::new())).ca_file.clone());
    s.spki_pins = vec![up.pki.spki_pin()];
    s.verify_ca = false;
    let p = Proxy::start(group_config(Policy::Failover, vec![s])).await;
    p.assert_rcode("pin4.example.test.", ResponseCode::NoError)
        .await;
}

/// A pin of a CA key counts only for a chain that key signed: a rogue server presenting its
/// own leaf for the right name (signed by an unrelated CA) plus a copy of the pinned CA's
/// public certificate is refused, with and without CA verification.
#[tokio::test]
async fn a_pinned_ca_certificate_sent_along_with_a_rogue_leaf_is_refused() {
    let pinned = Pki::new();
    let rogue_ca = Pki::new();
    let ca_pin = dot_proxy::upstream::tls_config::spki_pin_of(&pinned.ca_der)
        .expect("pin")
        .parse::<dot_proxy::config::SpkiPin>()
        .expect("pin");
    // Both CAs trusted, as in a system store.
    let both = pinned.dir.path().join("both.pem");
    let pem = std::fs::read_to_string(&pinned.ca_file).expect("pem")
        + &std::fs::read_to_string(&rogue_ca.ca_file).expect("pem");
    std::fs::write(&both, pem).expect("write");

    let rogue = Upstream::start().await;
    let (leaf, key) = Pki::issue(&rogue_ca.ca, &["upstream.test", "127.0.0.1"]);
    rogue.set_chain(&[leaf, pinned.ca_der.clone()], &key);
    let genuine = Upstream::start().await;
    let (leaf, key) = Pki::issue(&pinned.ca, &["upstream.test", "127.0.0.1"]);
    genuine.set_chain(&[leaf, pinned.ca_der.clone()], &key);

    for verify_ca in [false, true] {
        for (up, want) in [
            (&rogue, ResponseCode::ServFail),
            (&genuine, ResponseCode::NoError),
        ] {
            let mut s = up.server();
            s.verify_ca = verify_ca;
            s.ca_file = Some(both.clone());
            s.spki_pins = vec![ca_pin.clone()];
            let p = Proxy::start(group_config(Policy::Failover, vec![s])).await;
            for n in 0..3 {
                let name = format!("rogue{n}-{verify_ca}.example.test.");
                let m = p.ask(&name).await;
                assert_eq!(m.metadata.response_code, want, "verify_ca={verify_ca}");
            }
            if want == ResponseCode::ServFail {
                assert_eq!(
                    up.query_count(),
                    0,
                    "no query ever reaches the rogue server"
                );
                let tls_errors = metric_with(
                    &p.metrics().await,
                    "dot_proxy_upstream_errors_total{",
                    "kind=\"tls\"",
                );
                assert!(tls_errors >= 1.0, "the refused handshake is counted");
            }
        }
    }
}

#[tokio::test]
async fn queries_over_tls_are_padded_and_carry_no_client_subnet() {
    let up = Upstream::start().await;
    let p = Proxy::start(group_config(Policy::Failover, vec![up.server()])).await;
    for (i, name) in [
        "a.example.test.",
        "a-much-longer-name-to-change-the-size.example.test.",
    ]
    .iter()
    .enumerate()
    {
        let mut m = Message::from_vec(&query(i as u16, name, RecordType::A, Some((1232, false))))
            .expect("parse");
        if let Some(e) = m.edns.as_mut() {
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                "198.51.100.0".parse().expect("ip"),
                24,
                0,
            )));
        }
        let r = udp_raw(p.addr, &m.to_vec().expect("encode"), Duration::from_secs(2))
            .await
            .expect("answer");
        assert_eq!(
            Message::from_vec(&r).expect("parse").metadata.response_code,
            ResponseCode::NoError
        );
    }
    p.ask("no-edns.example.test.").await;
    let raw = up.raw.lock().expect("lock").clone();
    assert_eq!(raw.len(), 3);
    for q in &raw {
        assert_eq!(q.len() % 128, 0, "padded to a multiple of 128: {}", q.len());
        let m = Message::from_vec(q).expect("parse");
        let codes = option_codes(&m);
        assert!(!codes.contains(&8), "no ECS: {codes:?}");
        assert!(codes.contains(&12), "padding option: {codes:?}");
    }
}

#[tokio::test]
async fn cluster_zone_goes_to_a_plain_upstream_and_nothing_else_does() {
    let tls = Upstream::start().await;
    let (plain_addr, plain_count) = Upstream::plain_server().await;
    let mut cfg = config_for(vec![tls.server()]);
    cfg.upstream_groups.push(dot_proxy::config::UpstreamGroup {
        name: "cluster".into(),
        policy: Policy::Failover,
        timeout: Dur::secs(1),
        servers: vec![UpstreamServer::plain(plain_addr)],
    });
    for z in ["cluster.local", "10.in-addr.arpa"] {
        cfg.zones.push(dot_proxy::config::ZoneRoute {
            zone: z.into(),
            group: "cluster".into(),
        });
    }
    let p = Proxy::start(cfg).await;
    let m = p.ask("svc.ns.svc.cluster.local.").await;
    assert_eq!(a_records(&m).len(), 1);
    assert_eq!(m.queries[0].name().to_ascii(), "svc.ns.svc.cluster.local.");
    let m = tcp(p.addr, "other.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    for name in ["www.example.test.", "notcluster.local.", "xcluster.local."] {
        p.ask(name).await;
    }
    assert_eq!(
        plain_count.load(Ordering::SeqCst),
        2,
        "only cluster.local went to plain DNS"
    );
    assert_eq!(tls.query_count(), 3);
}

#[tokio::test]
async fn plain_dns_for_the_default_zone_needs_an_explicit_opt_in() {
    let mut cfg = config_for(vec![UpstreamServer::plain(
        "127.0.0.1:53".parse().expect("addr"),
    )]);
    let e = cfg.validate().expect_err("refused").to_string();
    assert!(e.contains("allow_plain_default"), "{e}");
    cfg.allow_plain_default = true;
    cfg.validate().expect("allowed with the opt-in");
}

/// A plain upstream whose UDP answer is larger than the proxy's receive buffer (and not
/// marked truncated) is asked again over TCP, instead of a cut answer being passed on.
#[tokio::test]
async fn oversized_plain_udp_answer_is_asked_again_over_tcp() {
    // One port for both: a UDP port whose TCP twin is free.
    let mut bound = None;
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = u.local_addr().expect("addr");
        if let Ok(t) = TcpListener::bind(addr).await {
            bound = Some((u, addr, t));
            break;
        }
    }
    let (udp_sock, addr, tcp_listener) = bound.expect("a port free for UDP and TCP");
    let answer = |raw: &[u8], big: bool| -> Option<Vec<u8>> {
        let q = Message::from_vec(raw).ok()?;
        let name = q.queries.first()?.name().clone();
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.recursion_desired = true;
        r.metadata.recursion_available = true;
        r.add_query(q.queries.first()?.clone());
        if big {
            // About 6,000 bytes of TXT records, over UDP, without TC.
            for i in 0..30u8 {
                let text = vec![char::from(b'a' + i % 26).to_string().repeat(200)];
                r.add_answer(Record::from_rdata(
                    name.clone(),
                    60,
                    RData::TXT(TXT::new(text)),
                ));
            }
        } else {
            r.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(A::new(192, 0, 2, 77)),
            ));
        }
        r.to_vec().ok()
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp_sock.recv_from(&mut buf).await {
            if let Some(b) = answer(&buf[..n], true) {
                let _ = udp_sock.send_to(&b, peer).await;
            }
        }
    });
    let tcp_count = Arc::new(AtomicUsize::new(0));
    let c = tcp_count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp_listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                while let Some(q) = tcp_recv(&mut s).await {
                    c.fetch_add(1, Ordering::SeqCst);
                    match answer(&q, false) {
                        Some(b) => tcp_send(&mut s, &b).await,
                        None => break,
                    }
                }
            });
        }
    });
    let mut cfg = config_for(vec![UpstreamServer::plain(addr)]);
    cfg.allow_plain_default = true;
    let p = Proxy::start(cfg).await;
    let m = p.ask("big.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        a_records(&m),
        vec![std::net::Ipv4Addr::new(192, 0, 2, 77)],
        "the TCP answer"
    );
    assert_eq!(tcp_count.load(Ordering::SeqCst), 1);
}

/// Readiness follows the group serving `.`: a down group for another zone leaves the proxy
/// ready (every other name still resolves); the default group down makes it unready, and
/// the body names the group.
#[tokio::test]
async fn readiness_follows_the_group_serving_the_root() {
    let tls = Upstream::start().await;
    let dead_plain = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    let cluster = |cfg: &mut dot_proxy::config::Config| {
        cfg.upstream_groups.push(dot_proxy::config::UpstreamGroup {
            name: "cluster".into(),
            policy: Policy::Failover,
            timeout: Dur::millis(500),
            servers: vec![UpstreamServer::plain(dead_plain)],
        });
        cfg.zones.push(dot_proxy::config::ZoneRoute {
            zone: "cluster.local".into(),
            group: "cluster".into(),
        });
    };
    let mut cfg = group_config(Policy::Failover, vec![tls.server()]);
    cluster(&mut cfg);
    let p = Proxy::start(cfg).await;
    let admin = p.server.admin_addr().expect("admin");
    p.assert_rcode("svc.ns.svc.cluster.local.", ResponseCode::ServFail)
        .await;
    let metrics = p.metrics().await;
    assert_eq!(
        metric_with(
            &metrics,
            "dot_proxy_group_healthy_upstreams{",
            "group=\"cluster\""
        ),
        0.0,
        "{metrics}"
    );
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    let mut cfg = group_config(Policy::Failover, vec![dead_server()]);
    cluster(&mut cfg);
    let p = Proxy::start(cfg).await;
    let admin = p.server.admin_addr().expect("admin");
    p.ask("www.example.test.").await;
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"default\""), "{body}");
}
