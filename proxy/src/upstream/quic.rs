//! DNS over QUIC (RFC 9250): ALPN `doq`, one bidirectional stream per query carrying the
//! message with its 2-byte length prefix and ID 0 (§4.2.1), the caller's ID put back on the
//! answer; one connection (a pool of one slot: streams multiplex) reused for every query
//! until it is idle for `idle_timeout` (also negotiated as QUIC's idle timeout), older than
//! `max_connection_age`, gone dark (the pool's detection: queries waiting and not a datagram
//! received for the stall timeout), or lost. 0-RTT is never used: early data could be
//! replayed, and a node-local proxy keeps its connection open anyway. The certificate is
//! verified exactly as for DNS over TLS (`tls_config`).
//!
//! A stream that cannot be opened, written or read because the connection is gone is tried
//! once more on a fresh connection; a reset stream, a truncated answer or one longer than
//! its prefix says fails this attempt, and the group fails over.
//!
//! Copies: none of ours on the way out (the prefix and the query's `Bytes` are handed to
//! quinn as two chunks; quinn copies them into packets as it encrypts them); the answer is
//! the stream's chunk as quinn received it, sliced past its prefix, copied only when it came
//! in several chunks.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;

use super::pool::{ConnOptions, Connection, Connector, End, Endpoint, Opened, Pool, Transport};
use super::stats::UpstreamErrorKind;
use super::stats::UpstreamStats;
use super::tls_config::TlsSetup;
use super::{exchange_id_zero, Failure, UpstreamError};
use crate::dnstap::proto::SocketProtocol;

/// RFC 9250 §8.4: DOQ_NO_ERROR, used when closing an idle or aged connection.
const DOQ_NO_ERROR: u32 = 0;
/// Tries of one query: once more on a fresh connection when the connection was gone.
const TRIES: usize = 2;
/// Most bytes of an answer with its prefix.
const MAX_ANSWER: usize = 65_537;

/// One QUIC connection, as the pool holds it.
pub(crate) struct DoqConn {
    conn: quinn::Connection,
}

impl Connection for DoqConn {
    fn usable(&self) -> bool {
        self.conn.close_reason().is_none()
    }
    fn received(&self) -> u64 {
        // Any datagram: answers, and the ACKs of a server alive but slow to answer.
        self.conn.stats().udp_rx.datagrams
    }
    fn close(&self) {
        self.conn.close(DOQ_NO_ERROR.into(), b"");
    }
}

/// Opens verified QUIC connections to one server, all from one UDP socket.
pub(crate) struct DoqConnector {
    addr: SocketAddr,
    server_name: String,
    setup: TlsSetup,
    client: quinn::ClientConfig,
    /// Made on first use (it needs the runtime), one UDP socket for every connection.
    endpoint: ArcSwapOption<quinn::Endpoint>,
    opts: ConnOptions,
    stats: UpstreamStats,
}

pub struct QuicUpstream {
    pool: Arc<Pool<DoqConnector>>,
}

impl QuicUpstream {
    /// `setup` must offer ALPN `doq` (`tls_config::build` does for QUIC servers).
    pub fn new(server: Endpoint, setup: TlsSetup) -> Result<Arc<QuicUpstream>, String> {
        let crypto = QuicClientConfig::try_from(setup.config.clone())
            .map_err(|e| format!("QUIC needs TLS 1.3: {e}"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(quinn::IdleTimeout::try_from(server.opts.idle_timeout).ok())
            // The server opens no streams (RFC 9250 §4.2): neither kind is allowed, so a
            // server cannot make us hold stream state or receive windows.
            .max_concurrent_uni_streams(0u8.into())
            .max_concurrent_bidi_streams(0u8.into());
        client.transport_config(Arc::new(transport));
        let server_name = match &setup.server_name {
            rustls_pki_types::ServerName::DnsName(n) => n.as_ref().to_string(),
            other => other.to_str().into_owned(),
        };
        // One connection: its streams carry every query at once.
        let opts = ConnOptions {
            pool_size: 1,
            ..server.opts
        };
        let connector = DoqConnector {
            addr: server.addr,
            server_name,
            setup,
            client,
            endpoint: ArcSwapOption::empty(),
            opts: opts.clone(),
            stats: server.stats.clone(),
        };
        Ok(Arc::new(QuicUpstream {
            pool: Pool::new(Endpoint { opts, ..server }, connector),
        }))
    }

    async fn exchange(
        &self,
        conn: &quinn::Connection,
        mut wire: [Bytes; 2],
    ) -> Result<Bytes, Failure> {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|_| Failure::Retry(UpstreamError::Closed))?;
        send.write_all_chunks(&mut wire)
            .await
            .map_err(|_| Failure::Retry(UpstreamError::Closed))?;
        // The query is complete: STREAM FIN (RFC 9250 §4.2).
        let _ = send.finish();
        let data = read_answer(&mut recv).await.map_err(|e| match e {
            // The connection went away under the stream (lost, closed as dark): nothing
            // came back on it.
            Read::Lost => Failure::Retry(UpstreamError::Closed),
            Read::Reset => {
                self.pool.stats().error(UpstreamErrorKind::closed);
                Failure::Final(UpstreamError::Closed)
            }
            Read::TooLong => {
                self.pool.stats().error(UpstreamErrorKind::malformed);
                Failure::Final(UpstreamError::Malformed)
            }
        })?;
        let len = data
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        match len {
            Some(n) if n >= 2 && data.len() == n + 2 => Ok(data.slice(2..)),
            _ => {
                self.pool.stats().error(UpstreamErrorKind::malformed);
                Err(Failure::Final(UpstreamError::Malformed))
            }
        }
    }
}

impl Transport for QuicUpstream {
    type Connector = DoqConnector;
    fn pool(&self) -> &Arc<Pool<DoqConnector>> {
        &self.pool
    }

    /// Sends one query on a stream of its own and returns the answer with `msg`'s ID.
    async fn send_query(&self, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        let Ok(len) = u16::try_from(msg.len()) else {
            return Err(UpstreamError::Malformed);
        };
        // RFC 9250 §4.2: the message with its 2-byte length prefix, sent as two chunks.
        let prefix = Bytes::copy_from_slice(&len.to_be_bytes());
        exchange_id_zero(msg, self.pool.stats(), |wire| {
            self.pool.attempts(TRIES, move |conn| {
                let chunks = [prefix.clone(), wire.clone()];
                async move { self.exchange(&conn.conn, chunks).await }
            })
        })
        .await
    }
}

enum Read {
    Lost,
    Reset,
    TooLong,
}

/// The stream's data up to its FIN: the first chunk as quinn received it when it is the
/// whole answer (the usual case), else the chunks joined.
async fn read_answer(recv: &mut quinn::RecvStream) -> Result<Bytes, Read> {
    let read_error = |e: quinn::ReadError| match e {
        quinn::ReadError::ConnectionLost(_) | quinn::ReadError::ClosedStream => Read::Lost,
        _ => Read::Reset,
    };
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(chunk) = recv
        .read_chunk(MAX_ANSWER, true)
        .await
        .map_err(read_error)?
    {
        match (&mut joined, first.take()) {
            (Some(j), _) => j.extend_from_slice(&chunk.bytes),
            (None, None) => first = Some(chunk.bytes),
            (None, Some(f)) => {
                let mut j = BytesMut::with_capacity(f.len() + chunk.bytes.len());
                j.extend_from_slice(&f);
                j.extend_from_slice(&chunk.bytes);
                joined = Some(j);
            }
        }
        let so_far = joined
            .as_ref()
            .map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len);
        if so_far > MAX_ANSWER {
            return Err(Read::TooLong);
        }
    }
    Ok(joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze))
}

impl DoqConnector {
    fn endpoint(&self) -> Result<Arc<quinn::Endpoint>, UpstreamError> {
        if let Some(e) = self.endpoint.load_full() {
            return Ok(e);
        }
        let bind = if self.addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let e = Arc::new(
            quinn::Endpoint::client(bind)
                .map_err(|e| UpstreamError::Connect(format!("QUIC socket: {e}")))?,
        );
        self.endpoint.store(Some(e.clone()));
        Ok(e)
    }
}

impl Connector for DoqConnector {
    const PROTOCOL: SocketProtocol = SocketProtocol::Doq;
    type Conn = DoqConn;
    async fn connect(&self) -> Result<Opened<DoqConn>, UpstreamError> {
        let endpoint = self.endpoint()?;
        let connecting = endpoint
            .connect_with(self.client.clone(), self.addr, &self.server_name)
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(self.opts.connect_timeout, connecting)
            .await
            .map_err(|_| UpstreamError::Connect("QUIC handshake timed out".into()))?
            .map_err(|e| match e {
                quinn::ConnectionError::TransportError(t) => UpstreamError::Tls(t.to_string()),
                other => UpstreamError::Connect(other.to_string()),
            })?;
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        if alpn.as_deref() != Some(b"doq") {
            conn.close(DOQ_NO_ERROR.into(), b"");
            return Err(UpstreamError::Tls(
                "the server did not agree to DNS over QUIC (ALPN doq)".into(),
            ));
        }
        self.stats.opened.inc();
        let t = self.setup.cert_not_after.load(Ordering::Relaxed);
        if t > 0 {
            self.stats.cert_expiry.set(t);
        }
        let watch = conn.clone();
        Ok(Opened {
            conn: DoqConn { conn },
            run: Box::pin(async move {
                match watch.closed().await {
                    quinn::ConnectionError::TimedOut | quinn::ConnectionError::LocallyClosed => {
                        End::Idle
                    }
                    quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::ConnectionClosed(_) => End::PeerClosed,
                    _ => End::Error,
                }
            }),
        })
    }
}
