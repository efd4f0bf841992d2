//! Datagrams in batches: one `recvmmsg` system call receives up to [`BATCH`] queries and one
//! `sendmmsg` sends their answers, instead of a `recvfrom` and a `sendto` per query. System
//! calls are most of the cost of a cache hit, so this is where UDP throughput comes from.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::metrics::QueryCounters;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Room for one query (queries are small; a larger datagram is cut and then refused as
/// malformed, which is what it is).
const QUERY_ROOM: usize = 4096;

// nix's MultiHeaders holds raw pointers (it is not Send), so it is built for each call
// rather than kept across awaits: a few small allocations per batch, not per datagram.

pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// (length, sender) of each datagram of the last batch.
    pub got: Vec<(usize, SocketAddr)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; QUERY_ROOM]).collect(),
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// Receives what is queued, without waiting; `Err(WouldBlock)` when nothing is.
    ///
    /// A batch short of [`BATCH`] means the socket's queue was emptied (the caller may go
    /// back to waiting for readiness at once): the closure then
    /// reports `WouldBlock` to tokio, which clears the socket's readiness unless a new
    /// readiness event came in meanwhile (tokio compares the event's tick), so nothing that
    /// arrives later is missed, and the caller goes back to waiting without another
    /// `recvmmsg` that would only fail with EAGAIN: one system call less per wake-up, which
    /// at moderate rates is one in four or five.
    pub fn try_recv(&mut self, sock: &UdpSocket) -> std::io::Result<usize> {
        self.got.clear();
        let fd = sock.as_raw_fd();
        let (bufs, got) = (&mut self.bufs, &mut self.got);
        let r = sock.try_io(Interest::READABLE, || {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
            let headers = &mut headers;
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let res = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(std::io::Error::from)?;
            for r in res {
                let addr = r.address.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from(*v4))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6)))
                });
                if let Some(addr) = addr {
                    got.push((r.bytes.min(QUERY_ROOM), addr));
                } else {
                    got.push((0, SocketAddr::from(([0, 0, 0, 0], 0))));
                }
            }
            if got.len() < BATCH {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok(self.got.len()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !self.got.is_empty() => {
                Ok(self.got.len())
            }
            Err(e) => Err(e),
        }
    }

    /// The `i`th datagram of the last batch.
    pub fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, addr) = *self.got.get(i)?;
        Some((self.bufs.get(i)?.get(..len)?, addr))
    }
}

/// Answers waiting to go out in one `sendmmsg`.
pub struct SendBatch {
    outs: Vec<Vec<u8>>,
    addrs: Vec<Option<SockaddrStorage>>,
    peers: Vec<SocketAddr>,
    len: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            outs: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            addrs: Vec::with_capacity(BATCH),
            peers: Vec::with_capacity(BATCH),
            len: 0,
        }
    }
}

impl SendBatch {
    /// The buffer to render the next answer into; `push` commits it.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        let i = self.len.min(BATCH - 1);
        &mut self.outs[i]
    }

    pub fn push(&mut self, peer: SocketAddr) {
        if self.len < BATCH {
            self.addrs.push(Some(SockaddrStorage::from(peer)));
            self.peers.push(peer);
            self.len += 1;
        }
    }

    pub fn is_full(&self) -> bool {
        self.len >= BATCH
    }

    /// Sends everything queued: one `sendmmsg`, then one by one for what it did not take.
    /// Each answer's time in the proxy (from `received` to now: one clock read for the
    /// batch) goes into the duration histogram.
    pub async fn flush(&mut self, sock: &UdpSocket, counters: &QueryCounters, received: Instant) {
        if self.len == 0 {
            return;
        }
        let took = received.elapsed().as_secs_f64();
        for _ in 0..self.len {
            counters.duration.observe(took);
        }
        let fd = sock.as_raw_fd();
        let n = self.len;
        let sent = {
            let (outs, addrs) = (&self.outs, &self.addrs);
            sock.try_io(Interest::WRITABLE, || {
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
                let headers = &mut headers;
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    outs[..n].iter().map(|o| [IoSlice::new(o)]).collect();
                let res = sendmmsg(
                    fd,
                    headers,
                    iovs.iter(),
                    &addrs[..n],
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(std::io::Error::from)?;
                Ok(res.count())
            })
            .unwrap_or(0)
        };
        for i in sent..n {
            let _ = sock.send_to(&self.outs[i], self.peers[i]).await;
        }
        self.len = 0;
        self.addrs.clear();
        self.peers.clear();
    }
}
