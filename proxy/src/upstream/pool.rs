//! The connection pool of the encrypted transports (DoT, DoH, DoQ), generic over a
//! [`Connector`]: what a transport knows is how to open one verified connection and drive it
//! (its framing); what every transport needs around that is here, once.
//!
//! - **Slots**: `pool_size` long-lived connections; each query takes the next slot's
//!   connection when it is usable, else any usable one (and the empty slot is filled in the
//!   background), else opens one on its slot. One connect per slot at a time: queries that
//!   find a slot connecting wait for that connect and share its connection.
//! - **Connect under backoff** ([`ConnectBackoff`]): after a failed connect, new ones to the
//!   server are refused for a short while, so a dead server costs one connect per interval.
//! - **Warm-up**: the first connection is opened ahead of need, and a connection that was in
//!   use lately is replaced ahead of need when it ends (closed by the server, aged, dark).
//! - **Lifetime**: a connection closes when the server has had no query for `idle_timeout`,
//!   and at `max_connection_age` it takes no new query, its queries in flight finish (within
//!   the stall timeout) and it closes (certificates are verified again on the next one).
//! - **Dark connections**: a connection that has queries waiting each time it is looked at
//!   (every quarter of the stall timeout) and receives nothing at all meanwhile (not a
//!   byte, frame, PING acknowledgement or datagram: [`Connection::received`]) for the stall
//!   timeout is gone dark (a path that drops everything, a server that froze): it is closed,
//!   its queries are retried on a fresh connection, and `timeout` is counted.
//! - **Retries** ([`Pool::attempts`]): a query that got nothing back on a connection that
//!   failed under it ([`Failure::Retry`]) is sent again on a fresh one, a few times at most.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout, Instant};

use bytes::Bytes;

use super::backoff::ConnectBackoff;
use super::stats::UpstreamErrorKind;
use super::stats::UpstreamStats;
use super::{Exchange, ExchangeFuture, Failure, UpstreamError};
use crate::dnstap::proto::SocketProtocol;

/// How long a connection asked to close may take to end before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ConnOptions {
    pub pool_size: usize,
    pub idle_timeout: Duration,
    pub max_age: Duration,
    pub connect_timeout: Duration,
    /// A connection with queries waiting and nothing received for this long is dark.
    pub stall_timeout: Duration,
    pub write_timeout: Duration,
}

/// One open connection of a transport, as the pool sees it.
pub(crate) trait Connection: Send + Sync + 'static {
    /// Can carry another query (not closed, not closing).
    fn usable(&self) -> bool;
    /// Grows with whatever the server sends (bytes, frames, datagrams): a sign of life.
    fn received(&self) -> u64;
    /// Asks the connection to end: its [`Opened::run`] returns soon after, and queries still
    /// on it fail (and are retried on a fresh connection).
    fn close(&self);
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// No query for the idle timeout (ours, or the server's own: RFC 7828, QUIC).
    Idle,
    /// Opened but never used before it idled out.
    Unused,
    /// At its maximum age.
    Aged,
    /// Closed by the server.
    PeerClosed,
    /// A read or write failed.
    Error,
    /// Queries waiting and nothing received for the stall timeout.
    Dark,
}

/// A connection just opened, and the future that drives it.
pub(crate) struct Opened<C> {
    pub conn: C,
    /// Runs the connection (reads, writes, the protocol's own timers) until it ends, and says
    /// why; spawned by the pool, which counts it open meanwhile.
    pub run: BoxFuture<'static, End>,
}

/// How a transport opens a connection to its server.
pub(crate) trait Connector: Send + Sync + 'static {
    type Conn: Connection;
    /// The transport as query logs name it.
    const PROTOCOL: SocketProtocol;
    /// Opens one connection, verified, within the connect timeout; counts it opened.
    fn connect(&self) -> impl Future<Output = Result<Opened<Self::Conn>, UpstreamError>> + Send;
}

/// A connection in a slot, with what the pool tracks of it.
pub(crate) struct Pooled<C> {
    conn: C,
    retired: AtomicBool,
    /// Queries on it now (leases alive).
    inflight: AtomicUsize,
    /// Signalled when `inflight` leaves or reaches 0.
    changed: Notify,
}

impl<C: Connection> Pooled<C> {
    fn usable(&self) -> bool {
        !self.retired.load(Ordering::Relaxed) && self.conn.usable()
    }
}

/// A connection lent to one query attempt: counted as in flight on it until dropped.
pub(crate) struct Lease<C: Connection> {
    entry: Arc<Pooled<C>>,
}

impl<C: Connection> Lease<C> {
    fn new(entry: Arc<Pooled<C>>) -> Self {
        if entry.inflight.fetch_add(1, Ordering::AcqRel) == 0 {
            entry.changed.notify_one();
        }
        Lease { entry }
    }
}

impl<C: Connection> std::ops::Deref for Lease<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.entry.conn
    }
}

impl<C: Connection> Drop for Lease<C> {
    fn drop(&mut self) {
        if self.entry.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.entry.changed.notify_one();
        }
    }
}

struct Slot<C> {
    conn: ArcSwapOption<Pooled<C>>,
    connecting: tokio::sync::Mutex<()>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot {
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        }
    }
}

pub(crate) struct Pool<K: Connector> {
    label: String,
    addr: SocketAddr,
    connector: K,
    slots: Box<[Slot<K::Conn>]>,
    next: AtomicUsize,
    opts: ConnOptions,
    stats: UpstreamStats,
    backoff: ConnectBackoff,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last query.
    last_used: AtomicU64,
}

/// The server a pooled transport talks to, and how: its label (in logs and metrics), its
/// address, how its connections are kept, and where they are counted. Each transport
/// adds only its connector.
pub struct Endpoint {
    pub label: String,
    pub addr: SocketAddr,
    pub opts: ConnOptions,
    pub stats: UpstreamStats,
}

impl<K: Connector> Pool<K> {
    pub fn new(server: Endpoint, connector: K) -> Arc<Self> {
        let Endpoint {
            label,
            addr,
            opts,
            stats,
        } = server;
        Arc::new(Pool {
            label,
            addr,
            connector,
            slots: (0..opts.pool_size.max(1))
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            opts,
            stats,
            backoff: ConnectBackoff::default(),
            epoch: Instant::now(),
            last_used: AtomicU64::new(0),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }
    /// The server's address.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }
    pub fn stats(&self) -> &UpstreamStats {
        &self.stats
    }
    pub fn connector(&self) -> &K {
        &self.connector
    }

    /// Slots with a usable connection.
    pub fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.conn.load().as_ref().is_some_and(|c| c.usable()))
            .count()
    }

    /// Opens the first connection ahead of need so the first query pays no handshake;
    /// whether it opened.
    pub async fn warm_up(self: &Arc<Self>) -> bool {
        self.slot_connection(0).await.is_ok()
    }

    /// Runs `attempt` on a pooled connection; when it fails with [`Failure::Retry`] (nothing
    /// came back, the connection failed under it) that connection is dropped from the pool
    /// and the attempt runs again on another, `tries` times at most: then the last
    /// `Failure::Retry` is returned. A connect failure is [`Failure::Final`].
    pub async fn attempts<T, F, Fut>(
        self: &Arc<Self>,
        tries: usize,
        mut attempt: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Lease<K::Conn>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.last_used.store(self.now_ms(), Ordering::Relaxed);
        let mut last = UpstreamError::Closed;
        for _ in 0..tries.max(1) {
            let lease = self.lease().await.map_err(Failure::Final)?;
            let entry = Arc::clone(&lease.entry);
            match attempt(lease).await {
                Err(Failure::Retry(e)) => {
                    self.forget(&entry);
                    last = e;
                }
                other => return other,
            }
        }
        Err(Failure::Retry(last))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A usable connection: the next slot's if it is up; else any usable one (and the empty
    /// slot is filled in the background); else a new one on the next slot.
    async fn lease(self: &Arc<Self>) -> Result<Lease<K::Conn>, UpstreamError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if let Some(c) = self.usable_in(start) {
            return Ok(Lease::new(c));
        }
        for i in 1..n {
            if let Some(c) = self.usable_in((start + i) % n) {
                if self.slots[start].connecting.try_lock().is_ok() {
                    self.warm_slot(start);
                }
                return Ok(Lease::new(c));
            }
        }
        // Boxed: the handshake's state is kilobytes, and inline it would be part of every
        // query's future (copied at each spawn) though almost no query opens a connection.
        Box::pin(self.slot_connection(start)).await.map(Lease::new)
    }

    fn usable_in(&self, slot: usize) -> Option<Arc<Pooled<K::Conn>>> {
        self.slots[slot].conn.load_full().filter(|c| c.usable())
    }

    fn warm_slot(self: &Arc<Self>, slot: usize) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _ = me.slot_connection(slot).await;
        });
    }

    /// The slot's usable connection, or a new one opened under the slot's lock (a query that
    /// waited for the lock takes the connection the holder opened).
    async fn slot_connection(
        self: &Arc<Self>,
        slot: usize,
    ) -> Result<Arc<Pooled<K::Conn>>, UpstreamError> {
        let s = &self.slots[slot];
        let _guard = s.connecting.lock().await;
        if let Some(c) = self.usable_in(slot) {
            return Ok(c);
        }
        self.backoff.check()?;
        match self.connector.connect().await {
            Ok(opened) => {
                self.backoff.succeeded();
                let entry = Arc::new(Pooled {
                    conn: opened.conn,
                    retired: AtomicBool::new(false),
                    inflight: AtomicUsize::new(0),
                    changed: Notify::new(),
                });
                s.conn.store(Some(Arc::clone(&entry)));
                tracing::debug!(upstream = %self.label, slot, "upstream connection open");
                let me = Arc::clone(self);
                let watched = Arc::clone(&entry);
                tokio::spawn(async move { me.supervise(slot, watched, opened.run).await });
                Ok(entry)
            }
            Err(e) => Err(self.backoff.failed(&self.stats, e)),
        }
    }

    /// Takes a connection that failed a query out of its slot (a newer one stays).
    fn forget(&self, entry: &Arc<Pooled<K::Conn>>) {
        entry.retired.store(true, Ordering::Relaxed);
        for s in self.slots.iter() {
            let current = s.conn.load();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, entry)) {
                s.conn.store(None);
            }
        }
    }

    /// Runs one connection to its end: counted open meanwhile, closed when idle, aged or
    /// dark, and replaced ahead of need when it ends while the server is in use.
    async fn supervise(
        self: Arc<Self>,
        slot: usize,
        entry: Arc<Pooled<K::Conn>>,
        mut run: BoxFuture<'static, End>,
    ) {
        self.stats.open.inc();
        let end = self.watch(&entry, &mut run).await;
        entry.retired.store(true, Ordering::Relaxed);
        self.stats.open.dec();
        tracing::debug!(upstream = %self.label, slot, reason = ?end, "upstream connection closed");
        // Re-open ahead of need when the connection was in use lately.
        let recently = self.now_ms() <= self.last_used.load(Ordering::Relaxed) + 60_000;
        if matches!(end, End::Aged | End::PeerClosed | End::Error | End::Dark) && recently {
            self.warm_slot(slot);
        }
    }

    async fn watch(&self, e: &Pooled<K::Conn>, run: &mut BoxFuture<'static, End>) -> End {
        let born = Instant::now();
        let age_at = born + self.opts.max_age;
        let stall = self.opts.stall_timeout;
        // How often a busy connection is looked at for a sign of life.
        let tick = (stall / 4).max(Duration::from_millis(100));
        // Looks in a row that found queries waiting and nothing received, and the count
        // when they began.
        let mut silent: Option<(u32, u64)> = None;
        loop {
            let busy = e.inflight.load(Ordering::Acquire) > 0;
            if !busy {
                silent = None;
            } else if silent.is_none() {
                silent = Some((0, e.conn.received()));
            }
            let idle_at = self.idle_at(born);
            tokio::select! {
                biased;
                end = &mut *run => return end,
                _ = e.changed.notified(), if !busy => {}
                _ = tokio::time::sleep(tick), if busy => {
                    if let Some((looks, heard)) = silent {
                        if e.conn.received() != heard {
                            // Alive: a new window from now, if queries still wait.
                            silent = None;
                        } else if tick * (looks + 1) >= stall {
                            self.stats.error(UpstreamErrorKind::timeout);
                            return self.close(e, run, End::Dark).await;
                        } else {
                            silent = Some((looks + 1, heard));
                        }
                    }
                }
                _ = sleep_until(idle_at), if !busy => {
                    if Instant::now() >= self.idle_at(born) {
                        return self.close(e, run, End::Idle).await;
                    }
                }
                _ = sleep_until(age_at) => {
                    // No new query on it; those in flight finish first (a dark one is
                    // bounded by the stall timeout).
                    e.retired.store(true, Ordering::Relaxed);
                    let deadline = Instant::now() + stall;
                    while e.inflight.load(Ordering::Acquire) > 0 {
                        tokio::select! {
                            end = &mut *run => return end,
                            _ = e.changed.notified() => {}
                            _ = sleep_until(deadline) => break,
                        }
                    }
                    return self.close(e, run, End::Aged).await;
                }
            }
        }
    }

    /// When a connection born at `born` is idle: `idle_timeout` after the server's last
    /// query (and no sooner than `idle_timeout` after it opened).
    fn idle_at(&self, born: Instant) -> Instant {
        let used = Duration::from_millis(self.last_used.load(Ordering::Relaxed));
        (self.epoch + used + self.opts.idle_timeout).max(born + self.opts.idle_timeout)
    }

    async fn close(&self, e: &Pooled<K::Conn>, run: &mut BoxFuture<'static, End>, why: End) -> End {
        e.retired.store(true, Ordering::Relaxed);
        e.conn.close();
        let _ = timeout(CLOSE_GRACE, run).await;
        why
    }
}

/// A transport over a pool (DoT, DoH, DoQ): its framing of one query. Everything else a
/// group asks of a server ([`Exchange`]) comes from the pool, once for all three.
pub(crate) trait Transport: Send + Sync {
    type Connector: Connector;
    fn pool(&self) -> &Arc<Pool<Self::Connector>>;
    /// Sends one query through the pool and returns the answer.
    fn send_query<'a>(
        &'a self,
        msg: &'a Bytes,
    ) -> impl Future<Output = Result<Bytes, UpstreamError>> + Send + 'a;
}

impl<T: Transport> Exchange for T {
    fn query<'a>(&'a self, msg: &'a Bytes) -> ExchangeFuture<'a> {
        Box::pin(self.send_query(msg))
    }
    fn label(&self) -> &str {
        self.pool().label()
    }
    fn stats(&self) -> &UpstreamStats {
        self.pool().stats()
    }
    fn tap_identity(&self) -> Option<(SocketAddr, SocketProtocol)> {
        Some((self.pool().address(), <T::Connector as Connector>::PROTOCOL))
    }
    fn is_tls(&self) -> bool {
        true
    }
    fn warm_up(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(self.pool().warm_up())
    }
    fn live(&self) -> bool {
        self.pool().live() > 0
    }
}

/// What the pool needs of a connection over a byte stream (DoT, and DoH under its HTTP/2):
/// the bytes read so far (a sign of life, PING acknowledgements included) and a way to ask
/// the connection's task to end.
#[derive(Clone, Default)]
pub(crate) struct StreamSignals {
    read: Arc<AtomicU64>,
    close: Arc<Notify>,
}

impl StreamSignals {
    pub fn received(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
    pub fn close(&self) {
        self.close.notify_one();
    }
    /// Resolves once the pool asked the connection to end.
    pub async fn closing(&self) {
        self.close.notified().await
    }
}

/// The handle queries are sent to a connection's task on, which knows when the task is gone.
pub(crate) trait Sender: Send + Sync + 'static {
    fn gone(&self) -> bool;
}

/// A connection over a byte stream as the pool holds it (DoT, and DoH under its HTTP/2): the
/// handle its queries go to, and the signals its stream counts.
pub(crate) struct StreamConn<S> {
    pub sender: S,
    pub signals: StreamSignals,
}

impl<S: Sender> Connection for StreamConn<S> {
    fn usable(&self) -> bool {
        !self.sender.gone()
    }
    fn received(&self) -> u64 {
        self.signals.received()
    }
    fn close(&self) {
        self.signals.close();
    }
}

/// A byte stream that counts what it reads into its [`StreamSignals`].
pub(crate) struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> (Self, StreamSignals) {
        let signals = StreamSignals::default();
        let read = Arc::clone(&signals.read);
        (Counted { inner, read }, signals)
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
