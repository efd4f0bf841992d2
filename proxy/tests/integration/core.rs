//! The proxy core: UDP/TCP in, pipelined DoT out, input validation.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn udp_and_tcp_answers_and_nxdomain() {
    let (_up, p) = start_with(|_| {}).await;
    let m = p.ask("www.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        a_records(&m),
        vec!["192.0.2.1".parse::<std::net::Ipv4Addr>().expect("ip")]
    );
    let m = tcp(p.addr, "tcp.example.test.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    let m = p.ask("nx1.example.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1, "SOA kept in the authority section");
    let m = tcp(p.addr, "nx2.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn ipv6_listener() {
    let up = Upstream::start().await;
    let mut cfg = config_for(vec![up.server()]);
    cfg.listen = vec!["[::1]:0".parse().expect("addr")];
    let Ok(server) = dot_proxy::server::Server::start(cfg).await else {
        crate::skip::skip("ipv6_listener", "no IPv6 loopback here");
        return;
    };
    let addr = server.listen_addrs()[0];
    let sock = tokio::net::UdpSocket::bind("[::1]:0")
        .await
        .expect("bind v6");
    sock.send_to(&query(7, "v6.example.test.", RecordType::A, None), addr)
        .await
        .expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("answer")
        .expect("recv");
    assert_eq!(
        a_records(&Message::from_vec(&buf[..n]).expect("parse")).len(),
        1
    );
}

#[tokio::test]
async fn pipelined_tcp_queries_answered_out_of_order_and_matched() {
    let (up, p) = start_with(|_| {}).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    // 150 distinct names on one connection, written back to back.
    let mut batch = Vec::new();
    for i in 0..150u16 {
        let q = query(
            1000 + i,
            &format!("p{i}.example.test."),
            RecordType::A,
            None,
        );
        batch.extend_from_slice(&(q.len() as u16).to_be_bytes());
        batch.extend_from_slice(&q);
    }
    tokio::io::AsyncWriteExt::write_all(&mut s, &batch)
        .await
        .expect("write");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..150 {
        let m = Message::from_vec(&tcp_recv(&mut s).await.expect("answer")).expect("parse");
        let i = m.metadata.id - 1000;
        assert_eq!(
            m.queries[0].name().to_ascii(),
            format!("p{i}.example.test."),
            "answer matched to its query"
        );
        assert_eq!(a_records(&m).len(), 1);
        assert!(seen.insert(i));
    }
    assert_eq!(seen.len(), 150);
    // Few upstream connections, no handshake per query.
    assert!(
        up.connections.load(Ordering::SeqCst) <= 2,
        "connections: {}",
        up.connections.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn concurrent_clients_with_the_same_id_get_their_own_answers() {
    let (_up, p) = start_behaving(|b| b.delay_ms.store(20, Ordering::SeqCst)).await;
    let addr = p.addr;
    concurrently(50, |i| async move {
        let name = format!("same{i}.example.test.");
        let r = udp_raw(
            addr,
            &query(4242, &name, RecordType::A, None),
            Duration::from_secs(5),
        )
        .await
        .expect("answer");
        let m = Message::from_vec(&r).expect("parse");
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.queries[0].name().to_ascii(), name);
        assert_eq!(a_records(&m).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn upstream_closing_idle_connections_loses_no_query() {
    let (up, p) = start_behaving(|b| b.idle_close_ms.store(150, Ordering::SeqCst)).await;
    for round in 0..6 {
        for i in 0..5 {
            let name = format!("idle{round}-{i}.example.test.");
            let m = p.ask(&name).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(a_records(&m).len(), 1);
        }
        // Past the upstream's idle timeout: it closes the connections this round used (the
        // proxy may open new ones meanwhile), and the next query must not fail.
        up.wait_closed("the upstream closes its idle connections")
            .await;
    }
}

#[tokio::test]
async fn upstream_closing_after_each_answer_loses_no_query() {
    // A server that closes right after answering: queries in flight on the dying
    // connection are retried once on a fresh one.
    let (up, p) = start_behaving(|b| b.close_after.store(5, Ordering::SeqCst)).await;
    load_noerror(p.addr, "churn", 10, 4).await;
    assert!(
        up.connections.load(Ordering::SeqCst) >= 8,
        "the server really closed connections"
    );
}

#[tokio::test]
async fn edns_keepalive_from_the_server_shortens_our_idle_timeout() {
    let (up, p) = start_behaving(|b| b.keepalive_units.store(3, Ordering::SeqCst)).await; // 300 ms
    p.ask("ka.example.test.").await;
    // The query carried the keepalive option (RFC 7828, client side).
    let raw = up
        .raw
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("query seen");
    let m = Message::from_vec(&raw).expect("parse");
    let opts = m.edns.as_ref().expect("edns").options();
    assert!(
        opts.as_ref().iter().any(|(c, _)| u16::from(*c) == 11),
        "edns-tcp-keepalive requested"
    );
    closed_within_800ms(&p, "").await;
    // And the next query works on a fresh connection.
    assert_eq!(a_records(&p.ask("ka2.example.test.").await).len(), 1);
}

/// RFC 7828: the server's timeout counts on every answer, not only a connection's first.
#[tokio::test]
async fn edns_keepalive_on_a_later_answer_is_honoured() {
    let up = Upstream::start().await;
    let mut s = up.server();
    s.pool_size = 1;
    let p = Proxy::start(config_for(vec![s])).await;
    p.ask("ka-first.example.test.").await;
    // The first answer carried no keepalive; the second, on the same connection, 300 ms.
    up.behaviour.keepalive_units.store(3, Ordering::SeqCst);
    p.ask("ka-second.example.test.").await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one connection");
    closed_within_800ms(&p, " (default idle timeout is 30 s)").await;
}

/// The proxy closes its upstream connections within 800 ms from now: a server's keepalive
/// timeout of 300 ms was honoured.
async fn closed_within_800ms(p: &Proxy, note: &str) {
    let open = "dot_proxy_upstream_connections_open{";
    let metrics = wait_metric_zero(&p.server, open, Duration::from_millis(800)).await;
    assert_eq!(
        metric(&metrics, "dot_proxy_upstream_connections_open{"),
        0.0,
        "closed by us before the server's timeout{note}:\n{metrics}"
    );
}

#[tokio::test]
async fn wrong_certificate_name_gives_servfail_and_no_plaintext() {
    let up = Upstream::start().await;
    let mut s = up.server();
    s.tls_name = Some("wrong.test".into());
    let p = Proxy::start(config_for(vec![s])).await;
    p.assert_rcode("www.example.test.", ResponseCode::ServFail)
        .await;
    assert_eq!(up.query_count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn unrelated_ca_gives_servfail() {
    let up = Upstream::start().await;
    let other = Pki::new();
    let mut s = up.server();
    s.ca_file = Some(other.ca_file.clone());
    let p = Proxy::start(config_for(vec![s])).await;
    p.assert_rcode("www.example.test.", ResponseCode::ServFail)
        .await;
    assert_eq!(up.query_count(), 0);
}

#[tokio::test]
async fn stalled_upstream_gives_servfail_within_the_timeout() {
    let up = Upstream::start().await;
    up.behaviour.stall.store(true, Ordering::SeqCst);
    let mut cfg = config_for(vec![up.server()]);
    cfg.upstream_groups[0].timeout = dot_proxy::config::Dur::millis(500);
    let p = Proxy::start(cfg).await;
    let t = Instant::now();
    p.assert_rcode("stall.example.test.", ResponseCode::ServFail)
        .await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let (_up, p) = start_with(|_| {}).await;
    // No EDNS: 512 bytes at most.
    let big = |id, edns| {
        udp_raw_answer(
            p.addr,
            query(id, "big.example.test.", RecordType::TXT, edns),
        )
    };
    let r = big(9, None).await;
    assert!(r.len() <= 512);
    let m = Message::from_vec(&r).expect("parse");
    assert!(m.metadata.truncation, "TC=1");
    assert!(m.answers.is_empty());
    // EDNS 1232: still too big (about 3 KB).
    let r = big(10, Some((1232, false))).await;
    assert!(r.len() <= 1232);
    assert!(Message::from_vec(&r).expect("parse").metadata.truncation);
    // EDNS 4096: fits.
    let r = big(11, Some((4096, false))).await;
    let m = Message::from_vec(&r).expect("parse");
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 12);
    // TCP: whole.
    let m = tcp(p.addr, "big.example.test.", RecordType::TXT).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 12);
}

#[tokio::test]
async fn malformed_input_is_dropped_or_refused_without_harm() {
    let (up, p) = start_with(|_| {}).await;
    let wait = Duration::from_millis(300);
    // Shorter than a header: dropped.
    assert!(udp_raw(p.addr, &[1, 2, 3], wait).await.is_none());
    assert!(udp_raw(p.addr, &[], wait).await.is_none());
    // QR=1: dropped.
    let mut resp = query(5, "x.example.test.", RecordType::A, None);
    resp[2] |= 0x80;
    assert!(udp_raw(p.addr, &resp, wait).await.is_none());
    // A question that does not parse: FORMERR, same ID.
    let mut bad = query(6, "x.example.test.", RecordType::A, None);
    bad.truncate(bad.len() - 3);
    let r = udp_raw(p.addr, &bad, wait).await.expect("formerr");
    assert_eq!((r[0], r[1], r[3] & 0xF), (0, 6, 1));
    // Label length pointing past the end.
    let mut bad = vec![0, 8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a'];
    let r = udp_raw(p.addr, &bad, wait).await.expect("formerr");
    assert_eq!(r[3] & 0xF, 1);
    bad.clear();
    // QDCOUNT 0 and 2: FORMERR.
    let mut q0 = query(12, "x.example.test.", RecordType::A, None);
    q0[5] = 0;
    assert_eq!(
        udp_raw(p.addr, &q0, wait).await.expect("formerr")[3] & 0xF,
        1
    );
    let mut q2 = query(13, "x.example.test.", RecordType::A, None);
    q2[5] = 2;
    assert_eq!(
        udp_raw(p.addr, &q2, wait).await.expect("formerr")[3] & 0xF,
        1
    );
    // Opcode other than QUERY: NOTIMP.
    let mut upd = query(14, "x.example.test.", RecordType::A, None);
    upd[2] |= 5 << 3;
    let r = udp_raw(p.addr, &upd, wait).await.expect("notimp");
    assert_eq!(r[3] & 0xF, 4);
    // Compression pointer loop in the question: FORMERR.
    let lp = vec![0, 15, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
    assert_eq!(
        udp_raw(p.addr, &lp, wait).await.expect("formerr")[3] & 0xF,
        1
    );
    // Trailing garbage: FORMERR.
    let mut tr = query(16, "x.example.test.", RecordType::A, None);
    tr.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        udp_raw(p.addr, &tr, wait).await.expect("formerr")[3] & 0xF,
        1
    );
    // EDNS version 1: BADVERS.
    let mut v1 = query(17, "x.example.test.", RecordType::A, Some((1232, false)));
    let n = v1.len();
    v1[n - 5] = 1; // OPT TTL: ext-rcode, version, flags
    let r = Message::from_vec(&udp_raw(p.addr, &v1, wait).await.expect("badvers")).expect("parse");
    assert_eq!(u16::from(r.metadata.response_code), 16);
    // TCP: a zero-length frame and garbage do not crash the connection handler or others.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    tcp_send(&mut s, &[]).await;
    tcp_send(&mut s, &[0xff; 40]).await;
    let _ = tcp_recv(&mut s).await;
    // After all that, the proxy still answers others.
    let m = p.ask("still.example.test.").await;
    assert_eq!(a_records(&m).len(), 1);
    assert_eq!(up.query_count(), 1, "nothing malformed was forwarded");
}

#[tokio::test]
async fn tcp_slowloris_is_cut_off_and_idle_connections_closed() {
    let (_up, p) = start_with(|cfg| {
        cfg.tcp.frame_timeout = dot_proxy::config::Dur::millis(300);
        cfg.tcp.idle_timeout = dot_proxy::config::Dur::millis(500);
    })
    .await;
    // Half a frame, then silence: closed after the frame timeout.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0, 40, 1, 2])
        .await
        .expect("write");
    let t = Instant::now();
    closed_by_proxy(&mut s).await;
    assert!(t.elapsed() < Duration::from_millis(1500));
    // An idle connection is closed after the idle timeout.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    closed_by_proxy(&mut s).await;
}

/// Waits (3 s at most) for the proxy to close `s` without sending anything.
async fn closed_by_proxy(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(s, &mut b),
    )
    .await
    .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
}

#[tokio::test]
async fn connection_pool_stays_small_under_load() {
    let (up, p) = start_with(|_| {}).await;
    load_noerror(p.addr, "load", 20, 25).await;
    let conns = up.connections.load(Ordering::SeqCst);
    assert!(conns <= 2, "pool size is 2, opened {conns}");
    let metrics = p.metrics().await;
    assert!(metric(&metrics, "dot_proxy_upstream_connections_opened_total{") <= 2.0);
}

#[tokio::test]
async fn client_groups_and_node_overrides_route_a_client_elsewhere() {
    let [a, b] = Upstream::start_n().await;
    let mut cfg = config_for(vec![a.server()]);
    cfg.upstream_groups.push(dot_proxy::config::UpstreamGroup {
        name: "special".into(),
        policy: Default::default(),
        timeout: dot_proxy::config::Dur::secs(1),
        servers: vec![b.server()],
    });
    // The override shard for this node sends 127.0.0.1 to the "special" group.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("shard-3.yaml"),
        "node-a:\n  client_groups:\n  - {cidr: 127.0.0.1/32, group: special}\n  rate_limits: []\nnode-b:\n  client_groups:\n  - {cidr: 127.0.0.1/32, group: nope}\n",
    )
    .expect("write shard");
    cfg.overrides.dir = Some(dir.path().to_path_buf());
    cfg.overrides.node_name = Some("node-a".into());
    dot_proxy::config::merge_overrides(&mut cfg).expect("merge");
    assert_eq!(cfg.client_groups.len(), 1, "only this node's entries");
    let p = Proxy::start(cfg).await;
    p.ask("who.example.test.").await;
    assert_eq!(
        (a.query_count(), b.query_count()),
        (0, 1),
        "127.0.0.1 uses its own group"
    );
}

/// Every cache miss is a task of its own, and a task's future is copied into place when it
/// is spawned and again when it finishes. The rare paths (opening a connection, search-path
/// completion) are boxed so that they do not make every miss's future large: 9,248 bytes
/// before (the handshake's state and the completion walk inline), 1,784 after.
#[tokio::test]
async fn a_cache_miss_future_stays_small() {
    use dot_proxy::metrics::Transport;
    use dot_proxy::pipeline::Fast;
    let (_up, p) = start_with(|_| {}).await;
    let pipeline = p.server.pipeline();
    let q = query(7, "size.example.test.", RecordType::A, None);
    let mut out = Vec::new();
    let client = std::net::IpAddr::from([127, 0, 0, 1]);
    let now = pipeline.clock().now();
    let Fast::Miss(req) = pipeline.handle_fast(&q, client, Transport::udp, now, &mut out) else {
        panic!("the first query for a name is a miss");
    };
    let size = std::mem::size_of_val(&pipeline.resolve(&req, &mut out));
    assert!(size <= 3072, "a miss's future is {size} bytes");
    // And it still answers.
    pipeline.resolve(&req, &mut out).await;
    assert_eq!(dot_proxy::dns::wire::header::id(&out), 7);
}

/// The proxy turns transparent huge pages off for itself: with them, the first touch of a
/// fresh allocator region made the kernel zero 2 MiB while the worker waited (6 ms in the
/// cache-miss latency benchmark, its slowest answers), and the resident size grew in
/// 2 MiB steps.
#[test]
fn the_proxy_process_runs_without_transparent_huge_pages() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dot-proxy"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--upstream", "tls://127.0.0.1:9#upstream.test"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dot-proxy");
    let status = format!("/proc/{}/status", child.id());
    let mut seen = None;
    within_blocking(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        seen = text
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string());
        seen.as_deref() == Some("0")
    });
    let _ = child.kill();
    let _ = child.wait();
    match seen.as_deref() {
        Some(v) => assert_eq!(v, "0", "THP_enabled in {status}"),
        None => crate::skip::skip(
            "the_proxy_process_runs_without_transparent_huge_pages",
            "this kernel shows no THP_enabled in /proc/PID/status",
        ),
    }
}

/// Bursts of cached names around the receive batch's size (32 datagrams per `recvmmsg`):
/// a batch short of 32 clears the socket's readiness without a further `recvmmsg`, so
/// datagrams that arrive after such a batch, a full batch followed by a short one, and
/// bursts of several batches must all be answered, each exactly once.
#[tokio::test]
async fn udp_bursts_around_the_batch_size_are_all_answered() {
    let (_up, p) = start_with(|c| c.workers = 1).await;
    let names: Vec<String> = (0..4).map(|i| format!("burst{i}.example.test.")).collect();
    for n in &names {
        p.assert_rcode(n, ResponseCode::NoError).await;
    }
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut id: u16 = 0;
    for burst in [1usize, 31, 32, 33, 1, 64, 65, 2, 97, 31, 1] {
        let first = id;
        for i in 0..burst {
            let q = query(id, &names[i % names.len()], RecordType::A, None);
            client.send_to(&q, p.addr).await.expect("send");
            id += 1;
        }
        let mut seen = vec![false; burst];
        let mut buf = [0u8; 512];
        for _ in 0..burst {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("burst of {burst}: an answer missing"))
                .expect("recv");
            let m = Message::from_vec(&buf[..n]).expect("answer parses");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            let k = usize::from(m.metadata.id.wrapping_sub(first));
            assert!(
                k < burst && !seen[k],
                "burst of {burst}: unexpected id {}",
                m.metadata.id
            );
            seen[k] = true;
        }
        // A pause between bursts: the proxy goes back to waiting after each.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Datagrams already queued when the receive loop starts (as after a handover, or when the
/// worker was busy): a full batch of junk and three batches' worth of queries behind it
/// must all be answered. A full batch of 32 does not clear the socket's readiness, so the
/// loop reads again at once; were it cleared, the datagrams past the first batch would
/// wait for a new arrival that may never come.
#[tokio::test]
async fn datagrams_queued_before_the_receive_loop_runs_are_all_answered() {
    use dot_proxy::metrics::Transport;
    let (_up, p) = start_with(|c| c.workers = 1).await;
    let name = "queued.example.test.";
    p.ask(name).await;
    let sock = std::sync::Arc::new(
        dot_proxy::listener::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind"),
    );
    let addr = sock.local_addr().expect("addr");
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // First a full batch of datagrams too short to be DNS, which are dropped: no answer
    // goes out for them, so no write event could stand in for the readiness that the loop
    // needs to read on.
    for _ in 0..32 {
        client.send_to(b"\0\x01\x02", addr).await.expect("send");
    }
    const QUEUED: u16 = 70;
    for id in 0..QUEUED {
        let q = query(id, name, RecordType::A, None);
        client.send_to(&q, addr).await.expect("send");
    }
    let metrics = dot_proxy::listener::ListenerMetrics::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let serving = tokio::spawn(dot_proxy::listener::udp::serve(
        sock,
        std::sync::Arc::new(arc_swap::ArcSwap::new(p.server.pipeline())),
        metrics.counters(Transport::udp),
        stop.clone(),
        tracker,
        Duration::from_millis(100),
    ));
    let mut seen = vec![false; usize::from(QUEUED)];
    let mut buf = [0u8; 512];
    for _ in 0..QUEUED {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("every queued query is answered")
            .expect("recv");
        let m = Message::from_vec(&buf[..n]).expect("answer parses");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let k = usize::from(m.metadata.id);
        assert!(k < seen.len() && !seen[k], "unexpected id {k}");
        seen[k] = true;
    }
    stop.cancel();
    serving.await.expect("the loop ends");
}

/// A flood that keeps every receive batch full must not keep the worker to itself: with one
/// runtime thread (the proxy's and this test's), a cache miss, its upstream exchange and
/// this test's own timer all need the receive loop to give way now and then.
#[tokio::test(flavor = "current_thread")]
async fn a_udp_flood_does_not_starve_the_other_tasks_of_its_worker() {
    let (_up, p) = start_with(|c| c.workers = 1).await;
    p.ask("hot.example.test.").await;
    let addr = p.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    // Cache hits as fast as one thread sends them, for at most 8 s; answers are not read.
    let flood = std::thread::spawn(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let q = query(9, "hot.example.test.", RecordType::A, None);
        let t = std::time::Instant::now();
        let mut sent = 0u64;
        while !flooding.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(8) {
            for _ in 0..256 {
                if s.send_to(&q, addr).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    // Timed from here: this task's own wake-up from the sleep also needs the loop to give way.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The socket's queue is full: a datagram may be dropped by the kernel, so the probe
    // asks again every 200 ms, as a stub resolver would.
    let probe = query(10, "miss-under-flood.example.test.", RecordType::A, None);
    let answered = tokio::time::timeout(Duration::from_secs(3), async {
        for _ in 0..15 {
            if let Some(a) = udp_raw(addr, &probe, Duration::from_millis(200)).await {
                return Some(a);
            }
        }
        None
    })
    .await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().expect("flood thread");
    assert!(sent > 0);
    assert!(
        matches!(answered, Ok(Some(_))) && waited < Duration::from_millis(3300),
        "a cache miss during the flood was answered after {waited:?} ({} datagrams sent)",
        sent
    );
}

/// A TCP connection that has sent nothing when shutdown starts is closed after a short
/// wait (long enough for a query already on the wire), not held for the whole idle
/// timeout: one such client must not make every shutdown run to its grace period.
#[tokio::test]
async fn a_silent_tcp_connection_does_not_hold_shutdown_to_its_grace() {
    let (_up, p) = start_with(|_| {}).await;
    let _silent = TcpStream::connect(p.addr).await.expect("connect");
    // Accepted and waiting for its first frame.
    wait_metric(&p.server, "dot_proxy_tcp_connections", "", 1.0).await;
    let started = Instant::now();
    p.server.shutdown(Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "shutdown took {took:?} (idle timeout 10 s, grace 8 s)"
    );
}
