//! DNS over TLS (RFC 7858) to one server: the framing of a pooled connection (`pool` keeps
//! the connections). Each connection carries many pipelined queries whose IDs it rewrites so
//! concurrent clients never collide, answers matched back out of order (RFC 7766).
//!
//! A connection is one task that owns the TLS stream: it batches queued queries into one
//! write (the one copy of a query's bytes on its way out: length prefix, the connection's
//! ID), reads answers as they come (each frozen out of the read buffer, not copied), and
//! ends on idle (the server's edns-tcp-keepalive timeout when shorter than ours), when the
//! server closes, or when the pool closes it (idle, aged, dark). Queries in flight on a
//! connection that dies are retried on another (the pool's retries, three tries in all).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::pool::{
    ConnOptions, Connector, Counted, End, Endpoint, Opened, Pool, Sender, StreamConn,
    StreamSignals, Transport,
};
use super::stats::UpstreamErrorKind;
use super::stats::UpstreamStats;
use super::tls_config::TlsSetup;
use super::{Failure, UpstreamError};
use crate::dns::wire::{self, header};
use crate::dnstap::proto::SocketProtocol;

/// Most queries in flight on one connection.
const MAX_INFLIGHT: usize = 4096;
/// Most bytes written in one batch.
const WRITE_BATCH: usize = 32 * 1024;
/// Queued queries per connection before senders wait.
const QUEUE: usize = 1024;
/// Tries of one query when the connection dies under it (RFC 7766 servers may close at
/// any time); the group's deadline bounds the whole.
const TRIES: usize = 3;

type Reply = oneshot::Sender<Result<Bytes, UpstreamError>>;

pub(crate) struct Request {
    msg: Bytes,
    reply: Reply,
}

/// The pool's handle on one connection task.
pub(crate) type DotConn = StreamConn<mpsc::Sender<Request>>;

impl Sender for mpsc::Sender<Request> {
    fn gone(&self) -> bool {
        self.is_closed()
    }
}

/// TCP connect and TLS handshake to one server, verified by its `TlsSetup`: what DoT
/// connects with, and DoH under its HTTP/2.
pub(crate) struct TlsDialer {
    pub addr: SocketAddr,
    setup: TlsSetup,
    connector: TlsConnector,
    pub opts: ConnOptions,
    pub stats: UpstreamStats,
}

impl TlsDialer {
    pub fn new(
        addr: SocketAddr,
        setup: TlsSetup,
        opts: &ConnOptions,
        stats: &UpstreamStats,
    ) -> Self {
        TlsDialer {
            addr,
            connector: TlsConnector::from(setup.config.clone()),
            setup,
            opts: opts.clone(),
            stats: stats.clone(),
        }
    }

    /// A verified TLS stream within the connect timeout, counting what it reads.
    pub async fn dial(
        &self,
    ) -> Result<(Counted<TlsStream<TcpStream>>, StreamSignals), UpstreamError> {
        let tls = handshake(
            self.addr,
            &self.setup,
            &self.connector,
            self.opts.connect_timeout,
            &self.stats,
        )
        .await?;
        Ok(Counted::new(tls))
    }
}

impl Connector for TlsDialer {
    const PROTOCOL: SocketProtocol = SocketProtocol::Dot;
    type Conn = DotConn;
    async fn connect(&self) -> Result<Opened<DotConn>, UpstreamError> {
        let (stream, signals) = self.dial().await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (opts, stats, task) = (self.opts.clone(), self.stats.clone(), signals.clone());
        Ok(Opened {
            conn: StreamConn {
                sender: tx,
                signals,
            },
            run: Box::pin(async move { run_connection(stream, rx, &opts, &stats, &task).await }),
        })
    }
}

pub struct TlsUpstream {
    pool: Arc<Pool<TlsDialer>>,
}

impl TlsUpstream {
    pub fn new(server: Endpoint, setup: TlsSetup) -> Arc<Self> {
        let dialer = TlsDialer::new(server.addr, setup, &server.opts, &server.stats);
        Arc::new(TlsUpstream {
            pool: Pool::new(server, dialer),
        })
    }
}

impl Transport for TlsUpstream {
    type Connector = TlsDialer;
    fn pool(&self) -> &Arc<Pool<TlsDialer>> {
        &self.pool
    }

    /// Sends one query (any ID; the connection sets its own) and returns the answer with
    /// the ID as sent by the server.
    async fn send_query(&self, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        // The frame's length prefix is 16 bits: a longer message would desynchronise the
        // connection for every other query on it.
        if msg.len() > usize::from(u16::MAX) {
            return Err(UpstreamError::Malformed);
        }
        let r = self
            .pool
            .attempts(TRIES, |conn| async move {
                let (tx, rx) = oneshot::channel();
                let req = Request {
                    msg: msg.clone(),
                    reply: tx,
                };
                if conn.sender.send(req).await.is_err() {
                    return Err(Failure::Retry(UpstreamError::Closed));
                }
                match rx.await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(UpstreamError::Closed)) | Err(_) => {
                        Err(Failure::Retry(UpstreamError::Closed))
                    }
                    Ok(Err(e)) => Err(Failure::Final(e)),
                }
            })
            .await;
        r.map_err(|(Failure::Retry(e) | Failure::Final(e))| e)
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
    mut stream: Counted<TlsStream<TcpStream>>,
    mut rx: mpsc::Receiver<Request>,
    opts: &ConnOptions,
    stats: &UpstreamStats,
    signals: &StreamSignals,
) -> End {
    let mut inflight: HashMap<u16, Pending> = HashMap::new();
    let mut next_id: u16 = rand::random();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(WRITE_BATCH + 1024);
    let mut last_activity = Instant::now();
    let mut idle_timeout = opts.idle_timeout;
    let mut used = false;

    let reason = loop {
        let idle_at = last_activity + idle_timeout;
        tokio::select! {
            biased;
            r = stream.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) => break End::PeerClosed,
                    Err(_) => break End::Error,
                    Ok(_) => {}
                }
                let now = Instant::now();
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
            req = rx.recv(), if inflight.len() < MAX_INFLIGHT => {
                let Some(req) = req else { break End::Idle };
                used = true;
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
                        _ => break End::Error,
                    }
                }
                last_activity = Instant::now();
            }
            _ = sleep_until(idle_at), if inflight.is_empty() => {
                break if used { End::Idle } else { End::Unused };
            }
            // The pool closes it (idle, aged, dark).
            _ = signals.closing() => break End::Idle,
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
    if reason == End::PeerClosed || reason == End::Error {
        stats.error(UpstreamErrorKind::closed);
    }
    if matches!(reason, End::Idle | End::Unused) {
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
