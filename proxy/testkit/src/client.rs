//! DNS clients: queries built with hickory-proto, sent over UDP or framed over TCP, and
//! bounded load generators.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dot_proxy::test_util;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub use dot_proxy::test_util::option_codes;

/// Builds a query message (RD set), with an OPT record of `(UDP size, DO bit)` when given.
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
    let edns = edns.map(|(size, dnssec_ok)| test_util::edns(size, dnssec_ok, false));
    test_util::query(id, name, qtype, edns)
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

/// `n` clients at once, client `i` asking `name(i)` (A, over UDP); every answer's response
/// code must be `want` (`what` says why).
pub async fn concurrently_expect(
    addr: SocketAddr,
    n: usize,
    name: impl Fn(usize) -> String,
    want: ResponseCode,
    what: &str,
) {
    concurrently(n, |i| {
        let (name, what) = (name(i), what.to_string());
        async move {
            let m = udp(addr, &name, RecordType::A).await;
            assert_eq!(m.metadata.response_code, want, "{what}: {name}");
        }
    })
    .await;
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

/// Asks `name` over UDP; fails unless the answer's response code is `want`.
pub async fn assert_rcode(addr: SocketAddr, name: &str, qtype: RecordType, want: ResponseCode) {
    let m = udp(addr, name, qtype).await;
    assert_eq!(m.metadata.response_code, want, "{name} {qtype}");
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

/// `port` on 127.0.0.1.
pub fn on(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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
            // Every answer in, or 2 s for the last ones.
            crate::wait::within(Duration::from_secs(2), || async {
                answered.lock().expect("lock").0.len() >= per_sock as usize
            })
            .await;
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
