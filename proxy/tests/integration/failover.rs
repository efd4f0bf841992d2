//! Failover within a query and recovery (issue 15): a stalled, black-holed or slow first
//! server costs a query at most its attempt timeout; plain UDP is sent again when lost;
//! the only upstream coming back is used again within a fraction of a second; one slow
//! reply does not take a group's last server out of use.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use dot_proxy::config::{Config, Dur, Policy, UpstreamGroup, UpstreamServer, ZoneRoute};

use crate::support::*;

/// A first upstream that behaves as `behave` sets it, a good one, and a proxy failing over
/// from the first to the good one ([`two_servers`]).
async fn bad_then_good(behave: impl FnOnce(&Behaviour)) -> (Arc<Upstream>, Arc<Upstream>, Proxy) {
    let [bad, good] = Upstream::start_n().await;
    behave(&bad.behaviour);
    let p = Proxy::start(two_servers(bad.server(), &good)).await;
    (bad, good, p)
}

/// Failover over `[first, good]` with the 2 s group timeout, no cache.
fn two_servers(first: UpstreamServer, good: &Upstream) -> Config {
    let mut c = config_for(vec![first, good.server()]);
    c.upstream_groups[0].policy = Policy::Failover;
    c.upstream_groups[0].timeout = Dur::secs(2);
    c.cache.enabled = false;
    c
}

/// Sends `n` distinct queries one after another; each must be answered NOERROR well within
/// the group timeout. Returns the slowest answer's time.
async fn all_answered_quickly(p: &Proxy, prefix: &str, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        let m = p.ask(&format!("{prefix}{i}.example.test.")).await;
        let took = t.elapsed();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{prefix}{i} after {took:?}"
        );
        assert!(
            took < Duration::from_millis(1000),
            "{prefix}{i} took {took:?} (group timeout 2 s)"
        );
        slowest = slowest.max(took);
    }
    slowest
}

fn failovers(metrics: &str, reason: &str) -> f64 {
    metric_with(
        metrics,
        "dot_proxy_group_failovers_total{",
        &format!("reason=\"{reason}\""),
    )
}

#[tokio::test]
async fn a_stalled_first_server_costs_at_most_its_attempt_timeout() {
    let (stalled, good, p) = bad_then_good(|b| b.stall.store(true, Ordering::SeqCst)).await;
    all_answered_quickly(&p, "stall", 12).await;
    assert!(
        stalled.query_count() >= 1,
        "the stalled server was asked first"
    );
    assert_eq!(good.query_count(), 12);
    let metrics = p.metrics().await;
    assert!(failovers(&metrics, "slow") >= 1.0, "{metrics}");
    // Overtaken three times in a row while another server answers: taken out of use.
    assert_eq!(
        metric(&metrics, "dot_proxy_group_healthy_upstreams{"),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_black_holed_first_server_costs_at_most_its_attempt_timeout() {
    // Accepts TCP, never speaks TLS.
    let hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = hole.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let good = Upstream::start().await;
    let mut first = UpstreamServer::tls(addr, "upstream.test");
    first.ca_file = Some(good.pki.ca_file.clone());
    let p = Proxy::start(two_servers(first, &good)).await;
    all_answered_quickly(&p, "hole", 12).await;
    assert_eq!(good.query_count(), 12);
    assert!(failovers(&p.metrics().await, "slow") >= 1.0);
}

#[tokio::test]
async fn a_slow_first_server_costs_at_most_its_attempt_timeout() {
    let (_slow, good, p) = bad_then_good(|b| b.delay_ms.store(1500, Ordering::SeqCst)).await;
    let slowest = all_answered_quickly(&p, "late", 12).await;
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    assert_eq!(
        good.query_count(),
        12,
        "every answer came from the good one"
    );
}

#[tokio::test]
async fn an_erroring_first_server_fails_over_at_once() {
    let (_bad, _good, p) = bad_then_good(|b| b.servfail.store(true, Ordering::SeqCst)).await;
    let slowest = all_answered_quickly(&p, "sf", 5).await;
    assert!(slowest < Duration::from_millis(300), "{slowest:?}");
    assert!(failovers(&p.metrics().await, "servfail") >= 1.0);
}

/// Issue 15: one reply slower than the group timeout must not fail the other queries of
/// the group's only server (Unbound and dnsdist return no SERVFAIL burst there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reply_slower_than_the_timeout_does_not_fail_other_queries() {
    let up = Upstream::start().await;
    up.behaviour.slow_ms.store(1500, Ordering::SeqCst);
    let mut cfg = config_for(vec![up.server()]);
    cfg.upstream_groups[0].timeout = Dur::millis(500);
    cfg.cache.enabled = false;
    let p = Proxy::start(cfg).await;
    let addr = p.addr;
    // A few slow names time out (SERVFAIL, as they must)...
    let slow: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(async move {
                udp(addr, &format!("slow{i}.example.test."), RecordType::A)
                    .await
                    .metadata
                    .response_code
            })
        })
        .collect();
    // ...while every other query, before, during and after, is answered.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    // Like a sleep after each round: a slow round does not bring a burst.
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..60 {
        pace.tick().await;
        let m = udp(addr, &format!("normal{i}.example.test."), RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "normal{i}");
    }
    for s in slow {
        assert_eq!(s.await.expect("join"), ResponseCode::ServFail);
    }
    let metrics = p.metrics().await;
    assert_eq!(metric(&metrics, "dot_proxy_upstream_healthy{"), 1.0);
}

/// Issue 15: three one-second outages of the only upstream under steady load; after each
/// return, answers resume within 1.5 s (every query sent 1.5 s after the return is
/// answered), while the backoff would have kept it out for longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_resume_within_1500ms_after_each_outage_of_the_only_upstream() {
    let (up, p) = start_with(|cfg| {
        cfg.upstream_groups[0].timeout = Dur::secs(2);
        cfg.cache.enabled = false;
    })
    .await;

    const QPS: u64 = 400;
    const LOAD: Duration = Duration::from_millis(12500);
    let total = (QPS * LOAD.as_millis() as u64 / 1000) as usize;
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let answers: Arc<Mutex<HashMap<u16, u8>>> = Arc::default();
    let (rs, ra) = (sock.clone(), answers.clone());
    let recv = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = rs.recv(&mut buf).await {
            if n >= 12 {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                ra.lock().expect("lock").insert(id, buf[3] & 0xF);
            }
        }
    });
    sock.connect(p.addr).await.expect("connect");
    let start = Instant::now();
    let s2 = sock.clone();
    let sender = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(total);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / QPS));
        for i in 0..total {
            tick.tick().await;
            let q = query(
                i as u16,
                &format!("o{i}.example.test."),
                RecordType::A,
                None,
            );
            sent.push(start.elapsed());
            let _ = s2.send(&q).await;
        }
        sent
    });
    // Outages: down at 1.5 s, 5.0 s, 8.5 s, each for one second.
    let mut windows = Vec::new();
    for down_at in [1500u64, 5000, 8500] {
        tokio::time::sleep_until((start + Duration::from_millis(down_at)).into()).await;
        let down = start.elapsed();
        up.go_down();
        tokio::time::sleep(Duration::from_secs(1)).await;
        up.come_back().await;
        windows.push((down, start.elapsed()));
    }
    let sent = sender.await.expect("sender");
    // The last answers come in (at most 2.5 s; an unanswered query is judged below).
    within(Duration::from_millis(2500), || async {
        answers.lock().expect("lock").len() >= sent.len()
    })
    .await;
    recv.abort();
    let answers = answers.lock().expect("lock").clone();
    let rcode = |i: usize| answers.get(&(i as u16)).copied();

    // Before the first outage, and from 1.5 s after each return until the next outage:
    // every query answered NOERROR.
    let mut checked = 0;
    for (k, &(down, back)) in windows.iter().enumerate() {
        let next_down = windows.get(k + 1).map_or(LOAD, |w| w.0);
        let mut failed_in_outage = 0;
        for (i, &t) in sent.iter().enumerate() {
            if (k == 0 && t > Duration::from_millis(300) && t + Duration::from_millis(200) < down)
                || (t >= back + Duration::from_millis(1500)
                    && t + Duration::from_millis(200) < next_down)
            {
                assert_eq!(
                    rcode(i),
                    Some(0),
                    "query sent at {t:?} (outage {k}: {down:?}..{back:?})"
                );
                checked += 1;
            }
            if t > down + Duration::from_millis(100) && t < back {
                failed_in_outage += usize::from(rcode(i) != Some(0));
            }
        }
        assert!(failed_in_outage > 0, "outage {k} was real");
        let resumed = sent
            .iter()
            .enumerate()
            .find(|&(i, &t)| t >= back && rcode(i) == Some(0))
            .map(|(_, &t)| t - back);
        eprintln!("outage {k}: answers resumed {resumed:?} after the return");
        assert!(
            resumed.is_some_and(|r| r < Duration::from_millis(1500)),
            "outage {k}: resumed {resumed:?} after the return"
        );
    }
    assert!(checked > total / 4, "checked {checked} of {total}");
}

/// A plain-DNS server for `cluster.local`: answers A 10.0.0.1 from the name asked. With
/// `drop_first`, the first copy of each question is dropped; with `spoof`, each answer is
/// preceded by forgeries (the right ID from another port, a wrong ID, a wrong question).
/// Also serves TCP on the same port. Counts UDP and TCP queries.
struct PlainServer {
    addr: SocketAddr,
    udp_queries: Arc<Mutex<usize>>,
    tcp_queries: Arc<Mutex<usize>>,
}

fn cluster_answer(raw: &[u8], fake: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(raw).ok()?;
    let query = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.add_query(query.clone());
    let last = if fake { 66 } else { 1 };
    m.add_answer(Record::from_rdata(
        query.name().clone(),
        30,
        RData::A(A::new(10, 0, 0, last)),
    ));
    m.to_vec().ok()
}

async fn plain_server(drop_first: bool, spoof: bool) -> PlainServer {
    // UDP and TCP on one port: a port free for UDP may be taken for TCP (another test's
    // connection), so try a few.
    let mut bound = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = udp.local_addr().expect("addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            bound = Some((Arc::new(udp), tcp, addr));
            break;
        }
    }
    let (sock, tcp, addr) = bound.expect("a port free for UDP and TCP");
    let udp_queries: Arc<Mutex<usize>> = Arc::default();
    let tcp_queries: Arc<Mutex<usize>> = Arc::default();
    let count = udp_queries.clone();
    tokio::spawn(async move {
        let forger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut seen = HashSet::new();
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            *count.lock().expect("lock") += 1;
            let raw = buf[..n].to_vec();
            let question = raw.get(12..).unwrap_or(&[]).to_vec();
            if drop_first && seen.insert(question) {
                continue;
            }
            if spoof {
                if let Some(f) = cluster_answer(&raw, true) {
                    let _ = forger.send_to(&f, peer).await; // right ID, wrong source
                    let mut wrong_id = f.clone();
                    wrong_id[0] ^= 0x55;
                    let _ = sock.send_to(&wrong_id, peer).await;
                    if let Ok(mut other) = Message::from_vec(&f) {
                        if let Some(q) = other.queries.first_mut() {
                            q.set_name(
                                hickory_proto::rr::Name::from_ascii("evil.cluster.local.")
                                    .expect("name"),
                            );
                        }
                        if let Ok(b) = other.to_vec() {
                            let _ = sock.send_to(&b, peer).await; // wrong question
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Some(a) = cluster_answer(&raw, false) {
                let _ = sock.send_to(&a, peer).await;
            }
        }
    });
    let count = tcp_queries.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut q = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut q).await.is_err() {
                        break;
                    }
                    *count.lock().expect("lock") += 1;
                    if let Some(a) = cluster_answer(&q, false) {
                        let mut frame = (a.len() as u16).to_be_bytes().to_vec();
                        frame.extend_from_slice(&a);
                        if s.write_all(&frame).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    PlainServer {
        addr,
        udp_queries,
        tcp_queries,
    }
}

/// What the stand-in kube-dns answers for a name it knows.
const SVC_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 1);

/// A DoT upstream for everything, and a proxy that sends `cluster.local` to `plain`.
async fn cluster_proxy(plain: UpstreamServer) -> (Arc<Upstream>, Proxy) {
    let tls = Upstream::start().await;
    let mut cfg = config_for(vec![tls.server()]);
    cfg.cache.enabled = false;
    cfg.upstream_groups.push(UpstreamGroup {
        name: "cluster".into(),
        policy: Policy::Failover,
        timeout: Dur::secs(2),
        servers: vec![plain],
    });
    cfg.zones.push(ZoneRoute {
        zone: "cluster.local".into(),
        group: "cluster".into(),
    });
    let p = Proxy::start(cfg).await;
    (tls, p)
}

#[tokio::test]
async fn plain_udp_lost_on_the_way_is_sent_again_within_the_timeout() {
    let kube_dns = plain_server(true, false).await;
    let (_tls, p) = cluster_proxy(UpstreamServer::plain(kube_dns.addr)).await;
    for i in 0..5 {
        let t = Instant::now();
        let m = p.ask(&format!("svc{i}.ns.svc.cluster.local.")).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![SVC_IP]);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        *kube_dns.udp_queries.lock().expect("lock"),
        10,
        "each sent twice"
    );
    assert!(metric(&p.metrics().await, "dot_proxy_upstream_retransmits_total{") >= 5.0);
}

#[tokio::test]
async fn plain_udp_accepts_only_the_answer_from_the_server_with_its_id_and_question() {
    let kube_dns = plain_server(false, true).await;
    let (_tls, p) = cluster_proxy(UpstreamServer::plain(kube_dns.addr)).await;
    for i in 0..5 {
        let m = p.ask(&format!("spoofed{i}.ns.svc.cluster.local.")).await;
        assert_eq!(a_records(&m), vec![SVC_IP], "no forged answer got through");
    }
}

#[tokio::test]
async fn force_tcp_asks_a_plain_server_over_tcp_only() {
    let kube_dns = plain_server(false, false).await;
    let mut s = UpstreamServer::plain(kube_dns.addr);
    s.force_tcp = true;
    let (tls, p) = cluster_proxy(s).await;
    for i in 0..3 {
        let m = p.ask(&format!("tcp{i}.ns.svc.cluster.local.")).await;
        assert_eq!(a_records(&m), vec![SVC_IP]);
    }
    assert_eq!(*kube_dns.tcp_queries.lock().expect("lock"), 3);
    assert_eq!(*kube_dns.udp_queries.lock().expect("lock"), 0);
    // A TLS server does not take the option.
    let mut cfg = config_for(vec![tls.server()]);
    cfg.upstream_groups[0].servers[0].force_tcp = true;
    let e = cfg.validate().expect_err("refused");
    assert!(
        e.to_string()
            .contains("upstream_groups[0].servers[0].force_tcp"),
        "{e}"
    );
}

#[tokio::test]
async fn tls_sessions_are_resumed_on_reconnect() {
    let up = Upstream::start().await;
    // Close each connection after one answer: every query needs a new handshake.
    up.behaviour.close_after.store(1, Ordering::SeqCst);
    let mut s = up.server();
    s.pool_size = 1;
    let mut cfg = config_for(vec![s]);
    cfg.cache.enabled = false;
    let p = Proxy::start(cfg).await;
    for i in 0..4 {
        p.assert_rcode(&format!("resume{i}.example.test."), ResponseCode::NoError)
            .await;
        // The server closed after its one answer, and the proxy has seen it.
        let open = "dot_proxy_upstream_connections_open{";
        wait_metric_zero(&p.server, open, Duration::from_secs(5)).await;
    }
    assert!(up.connections.load(Ordering::SeqCst) >= 3);
    assert!(
        up.resumed.load(Ordering::SeqCst) >= 2,
        "the server saw resumed handshakes: {}",
        up.resumed.load(Ordering::SeqCst)
    );
    let metrics = p.metrics().await;
    assert!(
        metric(&metrics, "dot_proxy_upstream_connections_resumed_total{") >= 2.0,
        "{metrics}"
    );
}
