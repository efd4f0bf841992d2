//! The UDP listener: cache hits and errors are answered inline in the receive loop; misses
//! go to a task each, bounded in number.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::wire::header;
use crate::metrics::{DropLabels, DropReason, QType, QueryCounters, Rcode, Transport};
use crate::pipeline::{Fast, Pipeline};

/// Most UDP queries waiting for an upstream at once, per socket.
const MAX_PENDING: usize = 16_384;

pub async fn serve(
    sock: Arc<UdpSocket>,
    pipeline: Arc<ArcSwap<Pipeline>>,
    counters: QueryCounters,
    stop: CancellationToken,
    tracker: TaskTracker,
    drain_limit: std::time::Duration,
) {
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        let (n, peer) = tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems; keep going.
                    tracing::trace!(error = %e, "udp recv");
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        handle(
            &sock,
            &pipeline,
            &counters,
            &pending,
            &tracker,
            &buf[..n],
            peer,
            &mut out,
        )
        .await;
    }
    // Draining: another process bound to the same address (SO_REUSEPORT) takes new
    // traffic once this socket closes. Until then, keep answering what reaches it, and close
    // only when no query of ours is in flight and the socket is empty, so nothing queued in
    // its buffer is lost. Bounded by the shutdown grace period.
    let deadline = tokio::time::Instant::now() + drain_limit;
    loop {
        while let Ok((n, peer)) = sock.try_recv_from(&mut buf) {
            handle(
                &sock,
                &pipeline,
                &counters,
                &pending,
                &tracker,
                &buf[..n],
                peer,
                &mut out,
            )
            .await;
        }
        if pending.available_permits() == MAX_PENDING || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = sock.readable() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    sock: &Arc<UdpSocket>,
    pipeline: &Arc<ArcSwap<Pipeline>>,
    counters: &QueryCounters,
    pending: &Arc<Semaphore>,
    tracker: &TaskTracker,
    query: &[u8],
    peer: SocketAddr,
    out: &mut Vec<u8>,
) {
    let start = Instant::now();
    let p = pipeline.load_full();
    match p.handle_fast(query, peer.ip(), Transport::udp, out) {
        Fast::Answered(qtype) => {
            send(sock, out, peer).await;
            count(counters, qtype, out, start);
        }
        Fast::Drop => {}
        Fast::Miss(qi) => {
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                p.metrics
                    .dropped
                    .get_or_create(&DropLabels {
                        reason: DropReason::overloaded,
                    })
                    .inc();
                return;
            };
            let q = query.to_vec();
            let sock = sock.clone();
            let counters = counters.clone();
            tracker.spawn(async move {
                let mut out = Vec::with_capacity(1232);
                p.metrics.inflight.inc();
                p.resolve(&q, &qi, peer.ip(), Transport::udp, &mut out)
                    .await;
                p.metrics.inflight.dec();
                send(&sock, &out, peer).await;
                count(&counters, qi.qtype, &out, start);
                drop(permit);
            });
        }
    }
}

async fn send(sock: &UdpSocket, msg: &[u8], peer: SocketAddr) {
    match sock.try_send_to(msg, peer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let _ = sock.send_to(msg, peer).await;
        }
        Err(e) => tracing::trace!(error = %e, "udp send"),
    }
}

pub(crate) fn count(counters: &QueryCounters, qtype: u16, answer: &[u8], start: Instant) {
    counters.count(
        QType::from_u16(qtype),
        Rcode::from_u8(header::rcode(answer)),
    );
    counters.duration.observe(start.elapsed().as_secs_f64());
}

/// Binds one socket per worker thread on `addr` (SO_REUSEPORT spreads the load).
pub fn bind_all(addr: SocketAddr, n: usize) -> std::io::Result<Vec<Arc<UdpSocket>>> {
    (0..n.max(1))
        .map(|_| super::bind_udp(addr).map(Arc::new))
        .collect()
}
