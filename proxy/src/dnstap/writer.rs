//! The writer task: one collector connection at a time (reconnected with backoff), the
//! Frame Streams handshake, and events encoded in batches as dnstap messages, written field
//! by field with prost's encoding primitives.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::proto::{DnstapType, MessageType, SocketFamily, SocketProtocol};
use super::{fstrm, proto, Event, Side, TapMetrics};

/// A write to the collector that takes longer than this gives the connection up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many events are encoded into one write.
const BATCH: usize = 4096;
/// After the first event of a batch, the writer waits this long for more before writing:
/// one write (and one wake-up of the writer) per few hundred messages under load, instead
/// of one per message, which would cost more than the queries themselves.
const GATHER: Duration = Duration::from_millis(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the collector listens.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "dot-proxy".into())
}

/// The fields every message repeats (identity, version), encoded once.
pub(super) struct Header {
    fields: Vec<u8>,
}

impl Header {
    pub(super) fn new(identity: &str, version: &str) -> Header {
        let mut fields = Vec::new();
        for (tag, v) in [(1, identity), (2, version)] {
            encode_key(tag, WireType::LengthDelimited, &mut fields);
            encode_varint(v.len() as u64, &mut fields);
            fields.extend_from_slice(v.as_bytes());
        }
        Header { fields }
    }
}

/// The writer task: connect, handshake, write until the connection fails, back off,
/// again; ends when every `Tap` handle is gone and the queue is drained (or the
/// collector unreachable).
pub(super) async fn run(
    mut rx: mpsc::Receiver<Event>,
    target: Target,
    header: Header,
    stats: TapMetrics,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let ended = match &target {
            Target::Unix(p) => {
                match timeout(fstrm::HANDSHAKE_TIMEOUT, tokio::net::UnixStream::connect(p)).await {
                    Ok(Ok(s)) => Some(session(s, &mut rx, &header, &stats, &mut backoff).await),
                    _ => None,
                }
            }
            Target::Tcp(a) => {
                match timeout(fstrm::HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        Some(session(s, &mut rx, &header, &stats, &mut backoff).await)
                    }
                    _ => None,
                }
            }
        };
        stats.connected.set(0);
        if ended == Some(End::Closed) {
            return;
        }
        if rx.is_closed() {
            // Every handle is gone (a reload changed the section, or shutdown) and the
            // collector is not there: what is still queued is lost.
            let mut lost = 0;
            while let Ok(ev) = rx.try_recv() {
                lost += ev.messages();
            }
            stats.dropped.inc_by(lost);
            return;
        }
        if ended.is_none() {
            tracing::debug!(target = ?target, "dnstap collector unreachable");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[derive(Debug, PartialEq)]
enum End {
    /// Every handle is gone and the queue is written: the task is done.
    Closed,
    /// The connection failed: reconnect.
    Failed,
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    rx: &mut mpsc::Receiver<Event>,
    header: &Header,
    stats: &TapMetrics,
    backoff: &mut Duration,
) -> End {
    if let Err(e) = fstrm::handshake(&mut s, proto::CONTENT_TYPE).await {
        tracing::warn!(error = %e, "dnstap handshake failed");
        return End::Failed;
    }
    stats.connects.inc();
    stats.connected.set(1);
    *backoff = BACKOFF_MIN;
    let (mut rd, mut wr) = tokio::io::split(s);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    // Every handle is gone (reload or shutdown): STOP, and wait a moment
                    // for FINISH.
                    let _ = timeout(WRITE_TIMEOUT, wr.write_all(&fstrm::control(fstrm::STOP, None))).await;
                    let _ = timeout(Duration::from_secs(1), fstrm::read_control(&mut rd, fstrm::FINISH)).await;
                    return End::Closed;
                };
                tokio::time::sleep(GATHER).await;
                buf.clear();
                let mut n = encode(&ev, header, &mut buf);
                let mut events = 1;
                while events < BATCH {
                    let Ok(ev) = rx.try_recv() else { break };
                    n += encode(&ev, header, &mut buf);
                    events += 1;
                }
                match timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await {
                    Ok(Ok(())) => {
                        stats.written.inc_by(n);
                    }
                    _ => {
                        // Stalled or gone: these messages are lost, the connection too.
                        stats.dropped.inc_by(n);
                        tracing::warn!("dnstap collector stopped reading; reconnecting");
                        return End::Failed;
                    }
                }
            }
            r = rd.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return End::Failed,
                // Nothing is expected after START: ignored.
                Ok(_) => {}
            },
        }
    }
}

/// Encodes the messages of one event as data frames; returns how many.
pub(super) fn encode(ev: &Event, header: &Header, out: &mut Vec<u8>) -> u64 {
    let (qt, rt) = match ev.side {
        Side::Client => (MessageType::ClientQuery, MessageType::ClientResponse),
        Side::Forwarder => (MessageType::ForwarderQuery, MessageType::ForwarderResponse),
    };
    let fields = Fields {
        kind: qt,
        protocol: ev.protocol,
        client: ev.client,
        server: ev.server,
        query_time: split_time(ev.query_time),
        response_time: None,
        query: None,
        response: None,
    };
    let mut n = 0;
    if let Some(q) = ev.part(&ev.query) {
        frame(
            header,
            &Fields {
                query: Some(q),
                ..fields
            },
            out,
        );
        n += 1;
    }
    if let Some(r) = ev.part(&ev.response) {
        let f = Fields {
            kind: rt,
            response_time: Some(split_time(ev.response_time)),
            response: Some(r),
            ..fields
        };
        frame(header, &f, out);
        n += 1;
    }
    n
}

/// One dnstap `Message`, written field by field with prost's encoding primitives (the
/// derived structs in `proto` are the schema's reference and what the tests decode with):
/// no intermediate struct, no reference counting, nothing allocated.
#[derive(Clone, Copy)]
struct Fields<'a> {
    kind: MessageType,
    protocol: SocketProtocol,
    client: Option<(IpAddr, u16)>,
    server: SocketAddr,
    query_time: (u64, u32),
    response_time: Option<(u64, u32)>,
    query: Option<&'a [u8]>,
    response: Option<&'a [u8]>,
}

fn ip_octets(ip: IpAddr) -> ([u8; 16], usize) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

impl Fields<'_> {
    /// Calls `emit` for each field: (tag, value).
    fn each(&self, mut emit: impl FnMut(u32, Value<'_>)) {
        emit(1, Value::Varint(self.kind as u64));
        let family = match self.server {
            SocketAddr::V4(_) => SocketFamily::Inet,
            SocketAddr::V6(_) => SocketFamily::Inet6,
        };
        emit(2, Value::Varint(family as u64));
        emit(3, Value::Varint(self.protocol as u64));
        if let Some((ip, _)) = self.client {
            let (b, n) = ip_octets(ip);
            emit(4, Value::Bytes(&b[..n]));
        }
        let (b, n) = ip_octets(self.server.ip());
        emit(5, Value::Bytes(&b[..n]));
        if let Some((_, port)) = self.client {
            emit(6, Value::Varint(port.into()));
        }
        emit(7, Value::Varint(self.server.port().into()));
        emit(8, Value::Varint(self.query_time.0));
        emit(9, Value::Fixed32(self.query_time.1));
        if let Some(q) = self.query {
            emit(10, Value::Bytes(q));
        }
        if let Some((s, ns)) = self.response_time {
            emit(12, Value::Varint(s));
            emit(13, Value::Fixed32(ns));
        }
        if let Some(r) = self.response {
            emit(14, Value::Bytes(r));
        }
    }

    fn encoded_len(&self) -> usize {
        let mut len = 0;
        self.each(|tag, v| len += key_len(tag) + v.len());
        len
    }

    fn write(&self, out: &mut Vec<u8>) {
        self.each(|tag, v| v.write(tag, out));
    }
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Varint(v) => encoded_len_varint(*v),
            Value::Fixed32(_) => 4,
            Value::Bytes(b) => encoded_len_varint(b.len() as u64) + b.len(),
        }
    }

    fn write(&self, tag: u32, out: &mut Vec<u8>) {
        match self {
            Value::Varint(v) => {
                encode_key(tag, WireType::Varint, out);
                encode_varint(*v, out);
            }
            Value::Fixed32(v) => {
                encode_key(tag, WireType::ThirtyTwoBit, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bytes(b) => {
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
        }
    }
}

fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

/// One data frame: a `Dnstap` with the header's fields, the message (tag 14) and the type
/// MESSAGE (tag 15).
fn frame(header: &Header, m: &Fields<'_>, out: &mut Vec<u8>) {
    let mlen = m.encoded_len();
    let total = header.fields.len()
        + key_len(14)
        + encoded_len_varint(mlen as u64)
        + mlen
        + key_len(15)
        + 1;
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&header.fields);
    encode_key(14, WireType::LengthDelimited, out);
    encode_varint(mlen as u64, out);
    m.write(out);
    encode_key(15, WireType::Varint, out);
    encode_varint(DnstapType::Message as u64, out);
}

fn split_time(t: SystemTime) -> (u64, u32) {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()))
}
