//! Client-facing sockets: UDP and TCP on every listen address. Sockets set SO_REUSEPORT
//! so a second proxy process can bind the same addresses during an upgrade.

pub mod batch;
mod metrics;
pub mod tcp;
pub mod udp;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::dns::wire::header;
use crate::metrics::{QType, Rcode};
use crate::pipeline::{Pipeline, Request};
pub use metrics::{ListenerMetrics, QueryCounters};

/// Counts an answered query (by type and code, and by the client's namespace when that
/// is on) and the time it took since `start`.
pub(crate) fn count(
    counters: &QueryCounters,
    p: &Pipeline,
    client: IpAddr,
    qtype: u16,
    answer: &[u8],
    start: Instant,
) {
    answered(counters, p, client, qtype, answer);
    counters.duration.observe(start.elapsed().as_secs_f64());
}

/// Counts an answered query by type and code, and by the client's namespace.
#[inline]
pub(crate) fn answered(
    counters: &QueryCounters,
    p: &Pipeline,
    client: IpAddr,
    qtype: u16,
    answer: &[u8],
) {
    let rcode = Rcode::from_u8(header::rcode(answer));
    counters.count(QType::from_u16(qtype), rcode);
    p.attribute(client, rcode);
}

/// Counts a client packet not answered; one that parsed as a query is also counted as
/// answered `DROPPED`, by type and by the client's namespace.
pub(crate) fn dropped(
    counters: &QueryCounters,
    p: &Pipeline,
    client: IpAddr,
    reason: crate::metrics::DropReason,
    qtype: Option<u16>,
) {
    counters.dropped(reason, qtype);
    if qtype.is_some() {
        p.attribute(client, Rcode::DROPPED);
    }
}

/// A query the fast path could not answer: resolved in a task of its own (tracked, so a
/// drain waits for it), counted, and its answer handed to `deliver`. `permit` bounds how
/// many of a listener's queries wait for upstreams at once; it is released at the end.
pub(crate) struct Miss {
    pub pipeline: Arc<Pipeline>,
    pub req: Request,
    /// The client and the listener's own address (for query logs).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub start: Instant,
    pub permit: OwnedSemaphorePermit,
    /// Its bytes, charged to the memory budget (`Pipeline::admit`) until it is answered.
    pub charge: crate::budget::Charge,
}

impl Miss {
    pub(crate) fn spawn<F, Fut>(self, tracker: &TaskTracker, counters: QueryCounters, deliver: F)
    where
        F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        tracker.spawn(async move {
            let m = self;
            let p = &m.pipeline;
            let mut out = Vec::with_capacity(512);
            counters.inflight().inc();
            p.resolve(&m.req, &mut out).await;
            counters.inflight().dec();
            count(&counters, p, m.peer.ip(), m.req.qi.qtype, &out, m.start);
            if let Some(tap) = &p.tap {
                let arrived = crate::clock::arrived(m.start);
                tap.client(
                    &m.req.query,
                    &out,
                    m.peer,
                    m.local,
                    m.req.transport,
                    arrived,
                );
            }
            deliver(out).await;
            drop(m.permit);
            drop(m.charge);
        });
    }
}

fn base_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // The node-local address may not exist yet when the proxy starts (the node-local
    // container creates it): bind anyway, traffic flows once it appears.
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        let _ = if addr.is_ipv6() {
            s.set_freebind_v6(true)
        } else {
            s.set_freebind_v4(true)
        };
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The sockets of one listen address: a UDP socket per worker and a TCP listener, on the
/// same port.
pub struct Bound {
    pub udp: Vec<Arc<tokio::net::UdpSocket>>,
    pub tcp: tokio::net::TcpListener,
    /// The address bound (its port picked when `addr`'s was 0).
    pub addr: SocketAddr,
}

/// Binds UDP (one socket per worker) and TCP on `addr`. Port 0 means "any". The kernel
/// may hand a SO_REUSEPORT socket a port that another process of the same user already
/// holds with SO_REUSEPORT (the two would then share its traffic), so a port is first
/// picked with plain sockets, which never share, and then bound with the reuse options;
/// tried again if taken in between. An error names the address tried.
pub fn bind(addr: SocketAddr, workers: usize) -> Result<Bound, (SocketAddr, std::io::Error)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let want = if addr.port() == 0 {
            SocketAddr::new(addr.ip(), unshared_port(addr).map_err(|e| (addr, e))?)
        } else {
            addr
        };
        let both = udp::bind_all(want, workers).and_then(|udp| {
            let addr = udp[0].local_addr()?;
            let tcp = bind_tcp(addr)?;
            Ok(Bound { udp, tcp, addr })
        });
        match both {
            Ok(b) => return Ok(b),
            Err(e) if addr.port() == 0 && attempt < 20 => {
                tracing::debug!(error = %e, %want, "port taken, trying another");
            }
            Err(e) => return Err((want, e)),
        }
    }
}

/// A port free for both UDP and TCP on `addr`'s IP, found with plain sockets (no reuse
/// options), which the kernel never places on a port another socket holds.
pub fn unshared_port(addr: SocketAddr) -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// Binds a UDP socket with SO_REUSEPORT and large buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let s = base_socket(addr, Type::DGRAM, Protocol::UDP)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// Binds a TCP listener with SO_REUSEPORT.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = base_socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}
