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

use super::batch::{RecvBatch, SendBatch};
use super::Miss;
use super::QueryCounters;
use crate::metrics::{DropReason, Transport};
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
    let mut io = Io {
        local: sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        rb: RecvBatch::default(),
        sb: SendBatch::default(),
        pending: Arc::new(Semaphore::new(MAX_PENDING)),
    };
    loop {
        tokio::select! {
            biased;
            // First, so that a socket that is always readable (a flood) cannot hide it.
            _ = stop.cancelled() => break,
            r = sock.readable() => if r.is_err() { continue },
        }
        io.serve_ready(&sock, &pipeline, &counters, &tracker).await;
    }
    // Draining: another process bound to the same address (SO_REUSEPORT) takes new
    // traffic once this socket closes. Until then, keep answering what reaches it, and close
    // only when no query of ours is in flight and the socket is empty, so nothing queued in
    // its buffer is lost. Bounded by the shutdown grace period.
    let deadline = tokio::time::Instant::now() + drain_limit;
    loop {
        io.serve_ready(&sock, &pipeline, &counters, &tracker).await;
        if io.pending.available_permits() == MAX_PENDING || tokio::time::Instant::now() >= deadline
        {
            break;
        }
        tokio::select! {
            _ = sock.readable() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
    }
}

struct Io {
    /// This socket's address (for query logs).
    local: SocketAddr,
    rb: RecvBatch,
    sb: SendBatch,
    pending: Arc<Semaphore>,
}

impl Io {
    /// Answers everything queued on the socket, a batch at a time, until it is empty.
    async fn serve_ready(
        &mut self,
        sock: &Arc<UdpSocket>,
        pipeline: &Arc<ArcSwap<Pipeline>>,
        counters: &QueryCounters,
        tracker: &TaskTracker,
    ) {
        let mut errors = 0;
        loop {
            let n = match self.rb.try_recv(sock) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep going a little.
                    tracing::trace!(error = %e, "udp recv");
                    errors += 1;
                    if errors > 4 {
                        break;
                    }
                    continue;
                }
            };
            let p = pipeline.load_full();
            // One clock read for the whole batch: the datagrams arrived together, and the
            // cache ages their answers by the same instant.
            let start = Instant::now();
            let now = p.clock.at(start);
            for i in 0..n {
                let Some((query, peer)) = self.rb.datagram(i) else {
                    continue;
                };
                match p.handle_fast(query, peer.ip(), Transport::udp, now, self.sb.next_buf()) {
                    Fast::Answered(qtype) => {
                        super::answered(counters, &p, peer.ip(), qtype, self.sb.next_buf());
                        if let Some(tap) = &p.tap {
                            let arrived = crate::clock::arrived(start);
                            let answer = self.sb.next_buf();
                            tap.client(query, answer, peer, self.local, Transport::udp, arrived);
                        }
                        self.sb.push(peer);
                        if self.sb.is_full() {
                            self.sb.flush(sock, counters, start).await;
                        }
                    }
                    Fast::Drop { reason, qtype } => {
                        super::dropped(counters, &p, peer.ip(), reason, qtype)
                    }
                    Fast::Miss(req) => {
                        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
                            counters.dropped(DropReason::overloaded, None);
                            continue;
                        };
                        let Some(charge) = p.admit(&req, self.sb.next_buf()) else {
                            // Shed (the memory budget's inflight share is full): REFUSED.
                            super::answered(
                                counters,
                                &p,
                                peer.ip(),
                                req.qi.qtype,
                                self.sb.next_buf(),
                            );
                            self.sb.push(peer);
                            if self.sb.is_full() {
                                self.sb.flush(sock, counters, start).await;
                            }
                            continue;
                        };
                        let sock = sock.clone();
                        let miss = Miss {
                            pipeline: p.clone(),
                            req,
                            peer,
                            local: self.local,
                            start,
                            permit,
                            charge,
                        };
                        miss.spawn(tracker, counters.clone(), move |out| async move {
                            send(&sock, &out, peer).await;
                        });
                    }
                }
            }
            self.sb.flush(sock, counters, start).await;
            // A short batch emptied the socket (and cleared its readiness): wait again.
            if n < super::batch::BATCH {
                break;
            }
            // Full batches one after another (a flood): give way when this task's budget
            // is spent, so the worker's other tasks (misses, upstream connections, timers)
            // still run. Nothing is consumed while batches are short.
            tokio::task::consume_budget().await;
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

/// Binds one socket per worker thread on `addr` (SO_REUSEPORT spreads the load).
pub fn bind_all(addr: SocketAddr, n: usize) -> std::io::Result<Vec<Arc<UdpSocket>>> {
    (0..n.max(1))
        .map(|_| super::bind_udp(addr).map(Arc::new))
        .collect()
}
