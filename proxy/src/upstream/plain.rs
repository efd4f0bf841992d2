//! Plain DNS to one server, for zones whose config allows it (in-cluster DNS).
//!
//! UDP: each query from a fresh socket on a random port (the kernel's ephemeral range),
//! with a random ID, connected to the server so the kernel drops datagrams from any other
//! address; an answer counts only with the same ID and question, so a pod on the node
//! cannot poison the node's cache by spoofing kube-dns. With no answer within the
//! retransmit interval (SRTT + 4·RTTVAR of this server, 100 ms to 1 s, 250 ms before any
//! answer) the same query is sent again; the caller's deadline bounds the whole. Truncated
//! answers are asked again over TCP. `force_tcp` asks over TCP only.
//!
//! A socket per query in flight: at most [`MAX_SOCKETS`] at once per server, so a server
//! that drops every datagram cannot make the proxy hold thousands of descriptors (a
//! common limit is 1,024 for the whole process); past it a query fails at once as
//! `overloaded` (the group fails over, or answers stale or SERVFAIL).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::rtt::Rtt;
use super::stats::UpstreamStats;
use super::UpstreamError;
use crate::dns::wire::{self, header};

const INITIAL_RETRANSMIT: Duration = Duration::from_millis(250);
const MIN_RETRANSMIT: Duration = Duration::from_millis(100);
const MAX_RETRANSMIT: Duration = Duration::from_secs(1);
/// Sockets (UDP, or TCP connections) open at once to one server: at a round trip of a
/// millisecond, enough for 500,000 queries a second; at 100 ms, 5,000.
pub const MAX_SOCKETS: usize = 512;

pub struct PlainUpstream {
    label: String,
    addr: SocketAddr,
    force_tcp: bool,
    rtt: Rtt,
    pub stats: UpstreamStats,
    sockets: tokio::sync::Semaphore,
}

impl PlainUpstream {
    pub fn new(
        label: String,
        addr: SocketAddr,
        force_tcp: bool,
        stats: UpstreamStats,
    ) -> Arc<Self> {
        Arc::new(PlainUpstream {
            label,
            addr,
            force_tcp,
            rtt: Rtt::default(),
            stats,
            sockets: tokio::sync::Semaphore::new(MAX_SOCKETS),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }
    pub fn force_tcp(&self) -> bool {
        self.force_tcp
    }
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends the query; the caller bounds the time.
    pub async fn query(&self, msg: &[u8]) -> Result<Bytes, UpstreamError> {
        if msg.len() > usize::from(u16::MAX) || msg.len() < wire::HEADER_LEN {
            return Err(UpstreamError::Malformed);
        }
        let Ok(_socket) = self.sockets.try_acquire() else {
            return Err(UpstreamError::Overloaded);
        };
        let start = Instant::now();
        self.stats.queries.inc();
        let id: u16 = rand::random();
        let mut q = msg.to_vec();
        header::set_id(&mut q, id);
        let resp = if self.force_tcp {
            self.tcp(&q, id).await?
        } else {
            let resp = self.udp(&q, id).await?;
            if header::is_truncated(&resp) {
                self.tcp(&q, id).await?
            } else {
                resp
            }
        };
        self.stats.duration.observe(start.elapsed().as_secs_f64());
        Ok(Bytes::from(resp))
    }

    async fn udp(&self, q: &[u8], id: u16) -> Result<Vec<u8>, UpstreamError> {
        let bind: SocketAddr = if self.addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        sock.connect(self.addr)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        // We advertise EDNS_UDP_SIZE (1232); room for servers that send somewhat more.
        // A datagram that fills the buffer may have been cut: ask again over TCP. (A 64 KiB
        // buffer per query in flight cost 20 MiB of RSS at 800 queries in flight.)
        let mut buf = vec![0u8; UDP_ROOM];
        let mut sends = 0u32;
        loop {
            let sent = Instant::now();
            sock.send(q)
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            sends += 1;
            if sends > 1 {
                self.stats.retransmits.inc();
            }
            let wait = self
                .rtt
                .timeout(INITIAL_RETRANSMIT, MIN_RETRANSMIT, MAX_RETRANSMIT)
                .saturating_mul(sends.min(4));
            let resend_at = sent + wait;
            loop {
                let n = match tokio::time::timeout_at(resend_at, sock.recv(&mut buf)).await {
                    Err(_) => break, // send again
                    Ok(Ok(n)) => n,
                    // ICMP port unreachable and the like: the server is not there.
                    Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
                };
                if n >= UDP_ROOM {
                    return self.tcp(q, id).await;
                }
                let r = &buf[..n];
                // Anything not matching our ID and question is ignored (spoofing, stale answers).
                if n >= wire::HEADER_LEN
                    && header::id(r) == id
                    && header::is_response(r)
                    && same_question(q, r)
                {
                    if sends == 1 {
                        // Karn: only answers to a query sent once measure the RTT.
                        self.rtt.observe(sent.elapsed());
                    }
                    return Ok(r.to_vec());
                }
            }
        }
    }

    async fn tcp(&self, q: &[u8], id: u16) -> Result<Vec<u8>, UpstreamError> {
        let mut s = TcpStream::connect(self.addr)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = s.set_nodelay(true);
        let mut frame = Vec::with_capacity(q.len() + 2);
        frame.extend_from_slice(&(q.len() as u16).to_be_bytes());
        frame.extend_from_slice(q);
        s.write_all(&frame)
            .await
            .map_err(|_| UpstreamError::Closed)?;
        let len = s.read_u16().await.map_err(|_| UpstreamError::Closed)? as usize;
        let mut r = vec![0u8; len];
        s.read_exact(&mut r)
            .await
            .map_err(|_| UpstreamError::Closed)?;
        if r.len() < wire::HEADER_LEN
            || header::id(&r) != id
            || !header::is_response(&r)
            || !same_question(q, &r)
        {
            return Err(UpstreamError::Malformed);
        }
        Ok(r)
    }
}

/// Receive buffer for plain UDP answers.
const UDP_ROOM: usize = 4096;

fn same_question(q: &[u8], r: &[u8]) -> bool {
    let qe = wire::skip_plain_name(q, wire::HEADER_LEN).map(|e| e + 4);
    let re = wire::skip_plain_name(r, wire::HEADER_LEN).map(|e| e + 4);
    match (qe, re) {
        (Ok(a), Ok(b)) => {
            matches!((q.get(12..a), r.get(12..b)), (Some(x), Some(y)) if wire::names_equal_ci(x, y))
        }
        _ => false,
    }
}

impl super::Exchange for PlainUpstream {
    fn query<'a>(&'a self, msg: &'a Bytes) -> super::ExchangeFuture<'a> {
        Box::pin(PlainUpstream::query(self, msg))
    }
    fn label(&self) -> &str {
        &self.label
    }
    fn stats(&self) -> &UpstreamStats {
        &self.stats
    }
    fn tap_identity(&self) -> Option<(SocketAddr, crate::dnstap::proto::SocketProtocol)> {
        use crate::dnstap::proto::SocketProtocol;
        let protocol = if self.force_tcp {
            SocketProtocol::Tcp
        } else {
            SocketProtocol::Udp
        };
        Some((self.addr, protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 27: a server that drops every datagram holds at most MAX_SOCKETS sockets of
    /// ours; the queries past them fail at once as overloaded.
    #[tokio::test]
    async fn a_silent_server_holds_a_bounded_number_of_sockets() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let up = PlainUpstream::new(
            "dns://silent".into(),
            addr,
            false,
            UpstreamStats::new(&Default::default(), "g", "dns://silent"),
        );
        let mut q = vec![0u8, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
        q[1] = 7;
        let n = MAX_SOCKETS + 100;
        let results = futures::future::join_all((0..n).map(|_| {
            let up = up.clone();
            let q = q.clone();
            async move { tokio::time::timeout(Duration::from_millis(400), up.query(&q)).await }
        }))
        .await;
        let overloaded = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(UpstreamError::Overloaded))))
            .count();
        let timed_out = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(overloaded, 100, "past the bound: at once");
        assert_eq!(
            timed_out, MAX_SOCKETS,
            "within it: waiting for the silent server"
        );
        drop(silent);
    }
}
