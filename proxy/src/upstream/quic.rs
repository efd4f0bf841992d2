//! DNS over QUIC (RFC 9250): ALPN `doq`, one bidirectional stream per query carrying the
//! message with its 2-byte length prefix and ID 0 (§4.2.1), the caller's ID put back on the
//! answer; one connection reused for every query until it is idle for `idle_timeout`
//! (negotiated as QUIC's idle timeout), older than `max_connection_age`, or lost. 0-RTT is
//! never used: early data could be replayed, and a node-local proxy keeps its connection
//! open anyway. The certificate is verified exactly as for DNS over TLS (`tls_config`).
//!
//! A stream that cannot be opened or written (the connection is gone) is tried once more on
//! a fresh connection; a reset stream, a truncated answer or one longer than its prefix says
//! fails this attempt, and the group fails over.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::time::Instant;

use super::tls::{ConnOptions, UpstreamStats};
use super::tls_config::TlsSetup;
use super::{exchange_id_zero, Failure, UpstreamError};
use crate::metrics::UpstreamErrorKind;

/// RFC 9250 §8.4: DOQ_NO_ERROR, used when closing an idle or aged connection.
const DOQ_NO_ERROR: u32 = 0;

struct Conn {
    conn: quinn::Connection,
    born: Instant,
}

pub struct QuicUpstream {
    label: String,
    addr: SocketAddr,
    server_name: String,
    setup: TlsSetup,
    client: quinn::ClientConfig,
    /// Made on first use (it needs the runtime), one UDP socket for every connection.
    endpoint: ArcSwapOption<quinn::Endpoint>,
    conn: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
    opts: ConnOptions,
    pub stats: UpstreamStats,
    backoff: super::backoff::ConnectBackoff,
}

impl QuicUpstream {
    /// `setup` must offer ALPN `doq` (`tls_config::build` does for QUIC servers).
    pub fn new(
        label: String,
        addr: SocketAddr,
        setup: TlsSetup,
        opts: ConnOptions,
        stats: UpstreamStats,
    ) -> Result<Arc<QuicUpstream>, String> {
        let crypto = QuicClientConfig::try_from(setup.config.clone())
            .map_err(|e| format!("QUIC needs TLS 1.3: {e}"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(quinn::IdleTimeout::try_from(opts.idle_timeout).ok())
            // The server opens no streams (RFC 9250 §4.2): neither kind is allowed, so a
            // server cannot make us hold stream state or receive windows.
            .max_concurrent_uni_streams(0u8.into())
            .max_concurrent_bidi_streams(0u8.into());
        client.transport_config(Arc::new(transport));
        let server_name = match &setup.server_name {
            rustls_pki_types::ServerName::DnsName(n) => n.as_ref().to_string(),
            other => other.to_str().into_owned(),
        };
        Ok(Arc::new(QuicUpstream {
            label,
            addr,
            server_name,
            setup,
            client,
            endpoint: ArcSwapOption::empty(),
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            opts,
            stats,
            backoff: Default::default(),
        }))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now (0 or 1).
    pub fn live_connections(&self) -> usize {
        usize::from(self.conn.load().as_ref().is_some_and(|c| self.usable(c)))
    }

    /// Opens the connection ahead of need; whether it opened.
    pub async fn warm_up(self: &Arc<Self>) -> bool {
        self.conn(false).await.is_ok()
    }

    /// Sends one query on a stream of its own and returns the answer with `msg`'s ID.
    pub async fn query(self: &Arc<Self>, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        if msg.len() > 65_535 {
            return Err(UpstreamError::Malformed);
        }
        exchange_id_zero(msg, &self.stats, |zeroed, fresh| async move {
            let conn = self.conn(fresh).await.map_err(Failure::Final)?;
            // RFC 9250 §4.2: the message with its 2-byte length prefix.
            let mut wire = Vec::with_capacity(zeroed.len() + 2);
            wire.extend_from_slice(&(zeroed.len() as u16).to_be_bytes());
            wire.extend_from_slice(&zeroed);
            let r = self.exchange(&conn.conn, &wire).await;
            if matches!(r, Err(Failure::Retry(_))) {
                self.forget(&conn);
            }
            r
        })
        .await
    }

    async fn exchange(&self, conn: &quinn::Connection, wire: &[u8]) -> Result<Vec<u8>, Failure> {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|_| Failure::Retry(UpstreamError::Closed))?;
        send.write_all(wire)
            .await
            .map_err(|_| Failure::Retry(UpstreamError::Closed))?;
        // The query is complete: STREAM FIN (RFC 9250 §4.2).
        let _ = send.finish();
        let data = recv.read_to_end(65_537).await.map_err(|e| {
            let kind = match e {
                quinn::ReadToEndError::TooLong => UpstreamErrorKind::malformed,
                _ => UpstreamErrorKind::closed,
            };
            self.stats.error(kind);
            Failure::Final(match kind {
                UpstreamErrorKind::malformed => UpstreamError::Malformed,
                _ => UpstreamError::Closed,
            })
        })?;
        let len = data
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        match len {
            Some(n) if n >= 2 && data.len() == n + 2 => Ok(data[2..].to_vec()),
            _ => {
                self.stats.error(UpstreamErrorKind::malformed);
                Err(Failure::Final(UpstreamError::Malformed))
            }
        }
    }

    fn usable(&self, c: &Conn) -> bool {
        c.conn.close_reason().is_none() && c.born.elapsed() < self.opts.max_age
    }

    async fn conn(self: &Arc<Self>, fresh: bool) -> Result<Arc<Conn>, UpstreamError> {
        if !fresh {
            if let Some(c) = self.conn.load_full().filter(|c| self.usable(c)) {
                return Ok(c);
            }
        }
        let _guard = self.connecting.lock().await;
        // A retry (`fresh`) has already forgotten the connection that failed it: one found
        // here is newer, opened by another retry while this one waited for the lock.
        if let Some(c) = self.conn.load_full().filter(|c| self.usable(c)) {
            return Ok(c);
        }
        self.backoff.check()?;
        // Boxed: see TlsUpstream::connection (the handshake state stays out of each query).
        match Box::pin(self.connect()).await {
            Ok(c) => {
                self.backoff.succeeded();
                if let Some(old) = self.conn.swap(Some(c.clone())) {
                    // Queries still on it finish; then it closes.
                    let conn = old.conn.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        conn.close(DOQ_NO_ERROR.into(), b"");
                    });
                }
                Ok(c)
            }
            Err(e) => Err(self.backoff.failed(&self.stats, e)),
        }
    }

    fn forget(&self, conn: &Arc<Conn>) {
        let current = self.conn.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.conn.store(None);
        }
    }

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

    async fn connect(self: &Arc<Self>) -> Result<Arc<Conn>, UpstreamError> {
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
        let stats = self.stats.clone();
        let watch = conn.clone();
        tokio::spawn(async move {
            stats.open.inc();
            let _ = watch.closed().await;
            stats.open.dec();
        });
        Ok(Arc::new(Conn {
            conn,
            born: Instant::now(),
        }))
    }
}
