//! The TCP listener (RFC 7766): pipelined queries on one connection are answered as each
//! completes, out of order. Limits: total and per-client connections, idle timeout, a
//! deadline for each frame once it has started (slowloris), queries in flight per
//! connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Miss;
use super::QueryCounters;
use crate::config::TcpConfig;
use crate::metrics::Transport;
use crate::pipeline::{Fast, Pipeline};

#[derive(Clone)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub per_client: usize,
    pub idle: Duration,
    pub frame: Duration,
    pub inflight: usize,
}

impl From<&TcpConfig> for TcpLimits {
    fn from(c: &TcpConfig) -> Self {
        TcpLimits {
            max_connections: c.max_connections,
            per_client: c.max_connections_per_client,
            idle: c.idle_timeout.get(),
            frame: c.frame_timeout.get(),
            inflight: c.max_inflight_per_connection,
        }
    }
}

/// Connection counts shared by every TCP listener of the process.
pub struct ConnTable {
    total: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnTable {
    pub fn new(max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            total: Arc::new(Semaphore::new(max)),
            per_client: Mutex::new(HashMap::new()),
        })
    }
}

struct ClientSlot {
    table: Arc<ConnTable>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self
            .table
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<ArcSwap<Pipeline>>,
    limits: Arc<ArcSwap<TcpLimits>>,
    table: Arc<ConnTable>,
    counters: QueryCounters,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        accept(
            stream, peer, &pipeline, &limits, &table, &counters, &stop, &tracker,
        );
    }
    // Connections already queued by the kernel are served rather than reset.
    loop {
        let r = futures::FutureExt::now_or_never(listener.accept());
        match r {
            Some(Ok((stream, peer))) => accept(
                stream, peer, &pipeline, &limits, &table, &counters, &stop, &tracker,
            ),
            _ => break,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    pipeline: &Arc<ArcSwap<Pipeline>>,
    limits: &Arc<ArcSwap<TcpLimits>>,
    table: &Arc<ConnTable>,
    counters: &QueryCounters,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) {
    let l = limits.load_full();
    let Ok(permit) = table.total.clone().try_acquire_owned() else {
        return; // Over the total limit: the connection is closed at once.
    };
    {
        let mut m = table.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer.ip()).or_insert(0);
        if *n >= l.per_client {
            return;
        }
        *n += 1;
    }
    let slot = ClientSlot {
        table: table.clone(),
        ip: peer.ip(),
    };
    // The connection's own buffers, charged to the memory budget's tcp share; when it is
    // full the new connection is closed at once.
    let Some(conn_charge) = pipeline.load().budget.tcp.try_charge(CONNECTION_BYTES) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let p = pipeline.clone();
    let counters = counters.clone();
    let stop = stop.clone();
    let t2 = tracker.clone();
    tracker.spawn(async move {
        let open = counters.tcp_connections().clone();
        open.inc();
        connection(stream, peer, p, &l, counters, stop, t2).await;
        open.dec();
        drop(slot);
        drop(permit);
        drop(conn_charge);
    });
}

/// What a connection holds however it is used: its read and write buffers (8 and 16 KiB),
/// the answer buffer, its tasks.
pub const CONNECTION_BYTES: usize = 32 * 1024;

/// A frame buffer larger than this is given back once its query is handled.
const FRAME_KEEP: usize = 4096;

/// An answer queued for the connection's writer, its bytes charged to the memory budget's
/// tcp share until written.
struct Queued(Vec<u8>, crate::budget::Charge);

/// Queues `answer` for the writer. False when the connection must close: the writer is
/// gone, or the tcp share is full (the client that does not read its answers is the one
/// whose queue grows).
async fn queue(tx: &mpsc::Sender<Queued>, p: &Pipeline, answer: &[u8]) -> bool {
    let Some(charge) = p.budget.tcp.try_charge(answer.len()) else {
        return false;
    };
    tx.send(Queued(answer.to_vec(), charge)).await.is_ok()
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    pipeline: Arc<ArcSwap<Pipeline>>,
    l: &TcpLimits,
    counters: QueryCounters,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(8 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<Queued>(l.inflight.max(1));
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(16 * 1024, wr);
        while let Some(Queued(msg, _charge)) = rx.recv().await {
            let mut ok = write_frame(&mut w, &msg).await;
            while ok {
                match rx.try_recv() {
                    Ok(Queued(m, _charge)) => ok = write_frame(&mut w, &m).await,
                    Err(_) => break,
                }
            }
            if !ok
                || timeout(Duration::from_secs(10), w.flush())
                    .await
                    .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let max_inflight = l.inflight.max(1);
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let mut out = Vec::with_capacity(4096);
    // Grows to the largest frame this client has sent (queries are small): a fixed 64 KiB
    // buffer per connection would cost 64 MiB of memory at 1,000 connections.
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut served = 0u64;
    loop {
        // Idle: waiting for the first byte of the next frame. After shutdown starts, the
        // connection closes once it has nothing in flight and the client has sent nothing
        // more for a moment (RFC 7766: close when idle), so no query it sent is dropped; a
        // connection that has not sent its first query yet gets a second for one already
        // on the wire, not the whole idle timeout (which would hold every shutdown to its
        // grace period).
        let idle = match (stop.is_cancelled(), served) {
            (false, _) => l.idle,
            (true, 0) => l.idle.min(Duration::from_secs(1)),
            (true, _) => l.idle.min(Duration::from_millis(200)),
        };
        let first = tokio::select! {
            biased;
            _ = stop.cancelled(), if !stop.is_cancelled() => continue,
            r = timeout(idle, rd.read_u8()) => match r {
                Ok(Ok(b)) => b,
                Err(_) if stop.is_cancelled() && inflight.available_permits() < max_inflight => continue,
                _ => break,
            },
        };
        // Once a frame has started, all of it must arrive within the frame timeout. A frame
        // larger than the buffer is charged to the memory budget's tcp share while it is
        // held (a full share closes the connection).
        let mut frame_charge = None;
        let frame = timeout(l.frame, async {
            let second = rd.read_u8().await?;
            let len = u16::from_be_bytes([first, second]) as usize;
            if len > buf.capacity() {
                let p = pipeline.load();
                frame_charge = Some(p.budget.tcp.try_charge(len).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::OutOfMemory, "tcp share full")
                })?);
            }
            buf.resize(len, 0);
            rd.read_exact(&mut buf[..len]).await?;
            Ok::<usize, std::io::Error>(len)
        })
        .await;
        let len = match frame {
            Ok(Ok(len)) => len,
            _ => break,
        };
        let query = &buf[..len];
        served += 1;
        let start = Instant::now();
        let p = pipeline.load_full();
        match p.handle_fast(
            query,
            peer.ip(),
            Transport::tcp,
            p.clock.at(start),
            &mut out,
        ) {
            Fast::Answered(qtype) => {
                super::count(&counters, &p, peer.ip(), qtype, &out, start);
                if let Some(tap) = &p.tap {
                    let arrived = crate::clock::arrived(start);
                    tap.client(query, &out, peer, local, Transport::tcp, arrived);
                }
                if !queue(&tx, &p, &out).await {
                    break;
                }
            }
            Fast::Drop { reason, qtype } => super::dropped(&counters, &p, peer.ip(), reason, qtype),
            Fast::Miss(req) => {
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let Some(charge) = p.admit(&req, &mut out) else {
                    // Shed (the memory budget's inflight share is full): REFUSED.
                    super::count(&counters, &p, peer.ip(), req.qi.qtype, &out, start);
                    if !queue(&tx, &p, &out).await {
                        break;
                    }
                    continue;
                };
                let tx = tx.clone();
                let miss = Miss {
                    pipeline: p,
                    req,
                    peer,
                    local,
                    start,
                    permit,
                    charge,
                };
                let tcp = miss.pipeline.budget.tcp.clone();
                miss.spawn(&tracker, counters.clone(), |out| async move {
                    // With the tcp share full the answer is dropped (the client, which is
                    // not reading its answers, times out on it).
                    if let Some(charge) = tcp.try_charge(out.len()) {
                        let _ = tx.send(Queued(out, charge)).await;
                    }
                });
            }
        }
        // A large frame's buffer (and its charge) is given back.
        if buf.capacity() > FRAME_KEEP {
            buf = Vec::with_capacity(512);
        }
        drop(frame_charge);
    }
    // Answers still being resolved are written before the connection closes.
    drop(tx);
    let _ = writer.await;
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> bool {
    let len = (msg.len().min(65_535) as u16).to_be_bytes();
    let fut = async {
        w.write_all(&len).await?;
        w.write_all(&msg[..msg.len().min(65_535)]).await
    };
    matches!(timeout(Duration::from_secs(10), fut).await, Ok(Ok(())))
}
