//! DNS over TLS (RFC 7858) to one server: a small pool of long-lived connections, each
//! carrying many pipelined queries whose IDs it rewrites so concurrent clients never
//! collide, answers matched back out of order (RFC 7766).
//!
//! A connection is one task that owns the TLS stream: it batches queued queries into one
//! write, reads answers as they come, and ends on idle (the server's edns-tcp-keepalive
//! timeout when shorter than ours), on maximum age (after its in-flight queries finish),
//! on a stall, or when the server closes. Queries in flight on a connection that dies are
//! retried once on another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::{Buf, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls_config::TlsSetup;
use super::UpstreamError;
use crate::dns::wire::{self, header};
use crate::metrics::{ByLabel, UpstreamErrorKind, UpstreamErrorLabels, UpstreamLabels};

/// Most queries in flight on one connection.
const MAX_INFLIGHT: usize = 4096;
/// Most bytes written in one batch.
const WRITE_BATCH: usize = 32 * 1024;
/// Queued queries per connection before senders wait.
const QUEUE: usize = 1024;

#[derive(Clone, Debug)]
pub struct ConnOptions {
    pub pool_size: usize,
    pub idle_timeout: Duration,
    pub max_age: Duration,
    pub connect_timeout: Duration,
    /// A connection with queries outstanding and nothing received for this long is dead.
    pub stall_timeout: Duration,
    pub write_timeout: Duration,
}

/// Metric handles for one upstream, resolved once.
#[derive(Clone, Debug)]
pub struct UpstreamStats {
    pub queries: Counter,
    pub duration: Histogram,
    pub open: Gauge,
    pub opened: Counter,
    pub resumed: Counter,
    pub healthy: Gauge,
    pub cert_expiry: Gauge,
    /// Plain UDP queries sent again after no answer.
    pub retransmits: Counter,
    errors: ByLabel<UpstreamErrorKind>,
}

impl UpstreamStats {
    pub fn new(m: &crate::metrics::Metrics, group: &str, upstream: &str) -> Self {
        let l = UpstreamLabels {
            group: group.to_string(),
            upstream: upstream.to_string(),
        };
        let errors = ByLabel::new(&m.upstream_errors, &UpstreamErrorKind::ALL, |kind| {
            UpstreamErrorLabels {
                group: l.group.clone(),
                upstream: l.upstream.clone(),
                kind,
            }
        });
        UpstreamStats {
            queries: m.upstream_queries.get_or_create_owned(&l),
            duration: m.upstream_duration.get_or_create_owned(&l),
            open: m.upstream_connections_open.get_or_create_owned(&l),
            opened: m.upstream_connections_opened.get_or_create_owned(&l),
            resumed: m.upstream_connections_resumed.get_or_create_owned(&l),
            healthy: m.upstream_healthy.get_or_create_owned(&l),
            cert_expiry: m.upstream_cert_expiry.get_or_create_owned(&l),
            retransmits: m.upstream_retransmits.get_or_create_owned(&l),
            errors,
        }
    }
    pub fn error(&self, kind: UpstreamErrorKind) {
        self.errors.inc(kind);
    }
}

type Reply = oneshot::Sender<Result<Bytes, UpstreamError>>;

struct Request {
    msg: Bytes,
    reply: Reply,
}

struct ConnHandle {
    tx: mpsc::Sender<Request>,
}

impl ConnHandle {
    fn usable(&self) -> bool {
        !self.tx.is_closed()
    }
}

#[derive(Default)]
struct Slot {
    conn: ArcSwapOption<ConnHandle>,
    connecting: tokio::sync::Mutex<()>,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    Idle,
    Aged,
    PeerClosed,
    Error,
    Stalled,
    Unused,
}

pub struct TlsUpstream {
    label: String,
    addr: SocketAddr,
    setup: TlsSetup,
    connector: TlsConnector,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    opts: ConnOptions,
    pub stats: UpstreamStats,
    /// New connects refused for a while after a failed one.
    backoff: super::backoff::ConnectBackoff,
    last_used: AtomicU64,
    epoch: Instant,
}

impl TlsUpstream {
    pub fn new(
        label: String,
        addr: SocketAddr,
        setup: TlsSetup,
        opts: ConnOptions,
        stats: UpstreamStats,
    ) -> Arc<Self> {
        let connector = TlsConnector::from(setup.config.clone());
        let slots = (0..opts.pool_size.max(1))
            .map(|_| Slot::default())
            .collect();
        Arc::new(TlsUpstream {
            label,
            addr,
            setup,
            connector,
            slots,
            next: AtomicUsize::new(0),
            opts,
            stats,
            backoff: Default::default(),
            last_used: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Opens the first connection ahead of need so the first query pays no handshake;
    /// whether it opened.
    pub async fn warm_up(self: &Arc<Self>) -> bool {
        self.slot_connection(0).await.is_ok()
    }

    fn warm_slot(self: &Arc<Self>, i: usize) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let _ = me.slot_connection(i).await;
        });
    }

    /// Sends one query (any ID; the connection sets its own) and returns the answer with
    /// the ID as sent by the server.
    pub async fn query(self: &Arc<Self>, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        // The frame's length prefix is 16 bits: a longer message would desynchronise the
        // connection for every other query on it.
        if msg.len() > usize::from(u16::MAX) {
            return Err(UpstreamError::Malformed);
        }
        self.last_used
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut last_err = UpstreamError::Closed;
        // A query in flight on a connection that dies is retried on a fresh one (RFC 7766
        // servers may close at any time); the group's deadline bounds the whole.
        for _attempt in 0..3 {
            let conn = self.connection().await?;
            let (tx, rx) = oneshot::channel();
            if conn
                .tx
                .send(Request {
                    msg: msg.clone(),
                    reply: tx,
                })
                .await
                .is_err()
            {
                last_err = UpstreamError::Closed;
                continue;
            }
            match rx.await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(UpstreamError::Closed)) | Err(_) => last_err = UpstreamError::Closed,
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(last_err)
    }

    /// A live connection: the next slot's if it is up; else any live one (and the empty
    /// slot is filled in the background); else a new one.
    async fn connection(self: &Arc<Self>) -> Result<Arc<ConnHandle>, UpstreamError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if let Some(c) = self.slots[start].conn.load_full().filter(|c| c.usable()) {
            return Ok(c);
        }
        for i in 1..n {
            if let Some(c) = self.slots[(start + i) % n]
                .conn
                .load_full()
                .filter(|c| c.usable())
            {
                if self.slots[start].connecting.try_lock().is_ok() {
                    self.warm_slot(start);
                }
                return Ok(c);
            }
        }
        // Boxed: the handshake's state is kilobytes, and inline it would be part of every
        // query's future (copied at each spawn) though almost no query opens a connection.
        Box::pin(self.slot_connection(start)).await
    }

    async fn slot_connection(self: &Arc<Self>, i: usize) -> Result<Arc<ConnHandle>, UpstreamError> {
        let slot = &self.slots[i];
        let _guard = slot.connecting.lock().await;
        if let Some(c) = slot.conn.load_full().filter(|c| c.usable()) {
            return Ok(c);
        }
        self.backoff.check()?;
        match self.connect(i).await {
            Ok(c) => {
                self.backoff.succeeded();
                slot.conn.store(Some(c.clone()));
                Ok(c)
            }
            Err(e) => Err(self.backoff.failed(&self.stats, e)),
        }
    }

    async fn connect(self: &Arc<Self>, slot: usize) -> Result<Arc<ConnHandle>, UpstreamError> {
        let tls = handshake(
            self.addr,
            &self.setup,
            &self.connector,
            self.opts.connect_timeout,
            &self.stats,
        )
        .await?;
        tracing::debug!(upstream = %self.label, slot, "upstream connection open");
        let (tx, rx) = mpsc::channel(QUEUE);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.stats.open.inc();
            let reason = run_connection(tls, rx, &me.opts, &me.stats).await;
            me.stats.open.dec();
            tracing::debug!(upstream = %me.label, slot, ?reason, "upstream connection closed");
            // Re-open ahead of need when the connection was in use lately.
            let used_ms = me.last_used.load(Ordering::Relaxed);
            let recently = me.epoch.elapsed().as_millis() as u64 <= used_ms + 60_000;
            if matches!(
                reason,
                EndReason::Aged | EndReason::PeerClosed | EndReason::Error | EndReason::Stalled
            ) && recently
            {
                me.warm_slot(slot);
            }
        });
        Ok(Arc::new(ConnHandle { tx }))
    }

    /// Number of slots with a live connection.
    pub fn live_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.conn.load().as_ref().is_some_and(|c| c.usable()))
            .count()
    }
}

struct Pending {
    reply: Reply,
    sent: Instant,
}

/// TCP connect and TLS handshake within `limit`, verified by `setup` (DoT, and DoH under
/// its HTTP/2): counts the connection, its resumption and the certificate's expiry.
pub(crate) async fn handshake(
    addr: SocketAddr,
    setup: &TlsSetup,
    connector: &TlsConnector,
    limit: Duration,
    stats: &UpstreamStats,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let deadline = Instant::now() + limit;
    let tcp = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::Connect("connect timed out".into()))?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout_at(deadline, connector.connect(setup.server_name.clone(), tcp))
        .await
        .map_err(|_| UpstreamError::Tls("handshake timed out".into()))?
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    stats.opened.inc();
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        stats.resumed.inc();
    }
    let t = setup.cert_not_after.load(Ordering::Relaxed);
    if t > 0 {
        stats.cert_expiry.set(t);
    }
    Ok(tls)
}

async fn run_connection(
    mut stream: TlsStream<TcpStream>,
    mut rx: mpsc::Receiver<Request>,
    opts: &ConnOptions,
    stats: &UpstreamStats,
) -> EndReason {
    let mut inflight: HashMap<u16, Pending> = HashMap::new();
    let mut next_id: u16 = rand::random();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(WRITE_BATCH + 1024);
    let born = Instant::now();
    let mut last_activity = born;
    let mut last_recv = born;
    let mut idle_timeout = opts.idle_timeout;
    let mut closing = false;
    let mut used = false;

    let reason = loop {
        if closing && inflight.is_empty() {
            break EndReason::Aged;
        }
        let idle_at = last_activity + idle_timeout;
        let age_at = born + opts.max_age;
        let stall_at = last_recv + opts.stall_timeout;
        tokio::select! {
            biased;
            r = stream.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) => break EndReason::PeerClosed,
                    Err(_) => break EndReason::Error,
                    Ok(_) => {}
                }
                let now = Instant::now();
                last_recv = now;
                last_activity = now;
                while rbuf.len() >= 2 {
                    let len = u16::from_be_bytes([rbuf[0], rbuf[1]]) as usize;
                    if rbuf.len() < 2 + len {
                        break;
                    }
                    rbuf.advance(2);
                    let frame = rbuf.split_to(len).freeze();
                    if frame.len() < wire::HEADER_LEN {
                        continue;
                    }
                    // RFC 7828: the server may send its timeout on any answer, and change
                    // it; the latest one counts, never above our own idle timeout.
                    if let Some(t) = server_keepalive(&frame) {
                        idle_timeout = opts.idle_timeout.min(t);
                    }
                    if let Some(p) = inflight.remove(&header::id(&frame)) {
                        stats.duration.observe(now.duration_since(p.sent).as_secs_f64());
                        let _ = p.reply.send(Ok(frame));
                    }
                }
            }
            req = rx.recv(), if !closing && inflight.len() < MAX_INFLIGHT => {
                let Some(req) = req else { closing = true; continue };
                used = true;
                let was_empty = inflight.is_empty();
                wbuf.clear();
                let now = Instant::now();
                let mut next = Some(req);
                while let Some(req) = next.take() {
                    if req.reply.is_closed() {
                        // The client gave up before we sent it.
                    } else if let Some(id) = free_id(&inflight, &mut next_id) {
                        let len = req.msg.len() as u16;
                        let start = wbuf.len();
                        wbuf.extend_from_slice(&len.to_be_bytes());
                        wbuf.extend_from_slice(&req.msg);
                        header::set_id(&mut wbuf[start + 2..], id);
                        inflight.insert(id, Pending { reply: req.reply, sent: now });
                        stats.queries.inc();
                    } else {
                        let _ = req.reply.send(Err(UpstreamError::Overloaded));
                    }
                    if wbuf.len() < WRITE_BATCH && inflight.len() < MAX_INFLIGHT {
                        next = rx.try_recv().ok();
                    }
                }
                if !wbuf.is_empty() {
                    let write = async {
                        stream.write_all(&wbuf).await?;
                        stream.flush().await
                    };
                    match timeout(opts.write_timeout, write).await {
                        Ok(Ok(())) => {}
                        _ => break EndReason::Error,
                    }
                }
                last_activity = Instant::now();
                if was_empty {
                    last_recv = last_activity;
                }
            }
            _ = sleep_until(idle_at), if inflight.is_empty() => {
                break if used { EndReason::Idle } else { EndReason::Unused };
            }
            _ = sleep_until(age_at), if !closing => {
                closing = true;
                rx.close();
            }
            _ = sleep_until(stall_at), if !inflight.is_empty() => {
                stats.error(UpstreamErrorKind::timeout);
                break EndReason::Stalled;
            }
        }
    };
    // Queries not answered here are retried by their senders on another connection.
    rx.close();
    for (_, p) in inflight.drain() {
        let _ = p.reply.send(Err(UpstreamError::Closed));
    }
    while let Ok(r) = rx.try_recv() {
        let _ = r.reply.send(Err(UpstreamError::Closed));
    }
    if reason == EndReason::PeerClosed || reason == EndReason::Error {
        stats.error(UpstreamErrorKind::closed);
    }
    if matches!(
        reason,
        EndReason::Idle | EndReason::Aged | EndReason::Unused
    ) {
        let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
    }
    reason
}

fn free_id(inflight: &HashMap<u16, Pending>, next: &mut u16) -> Option<u16> {
    for _ in 0..=MAX_INFLIGHT {
        let id = *next;
        *next = next.wrapping_add(1);
        if !inflight.contains_key(&id) {
            return Some(id);
        }
    }
    None
}

/// The server's edns-tcp-keepalive timeout (RFC 7828), if its answer carries one.
fn server_keepalive(resp: &[u8]) -> Option<Duration> {
    let units = wire::response_keepalive(resp)?;
    // Close a little before the server would.
    Some(
        Duration::from_millis(u64::from(units) * 100)
            .mul_f64(0.9)
            .max(Duration::from_millis(100)),
    )
}
