//! DNS over HTTPS (RFC 8484): each query a POST of `application/dns-message` over HTTP/2
//! (ALPN `h2`), multiplexed as streams on a few long-lived connections (`pool_size`), with
//! message ID 0 on the wire (§4.1) and the caller's ID put back on the answer. The
//! certificate is verified exactly as for DNS over TLS (`tls_config`).
//!
//! hyper's HTTP/2 client (h2 underneath) does the framing, flow control, GOAWAY and stream
//! resets; this module adds what DNS needs: a request that fails before any response (a
//! GOAWAY, a connection lost) is sent once more on a fresh connection; a non-200 status, a
//! wrong content type or a body over 65,535 bytes is an error of that server (counted as
//! `http` or `malformed`), which the group answers by failing over. Cache-Control and other
//! HTTP caching headers are ignored: the DNS TTLs in the answer are what the cache uses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::tls::{handshake, ConnOptions, UpstreamStats};
use super::tls_config::TlsSetup;
use super::{exchange_id_zero, Failure, UpstreamError};
use crate::metrics::UpstreamErrorKind;

const DNS_MESSAGE: &str = "application/dns-message";
/// Largest DNS message (RFC 8484 §6: the body is one message).
const MAX_BODY: usize = 65_535;

struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

#[derive(Default)]
struct Slot {
    conn: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
}

pub struct HttpsUpstream {
    label: String,
    addr: SocketAddr,
    setup: TlsSetup,
    connector: TlsConnector,
    uri: Uri,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    opts: ConnOptions,
    pub stats: UpstreamStats,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last query (idle connections close).
    last_used: Arc<AtomicU64>,
    backoff: super::backoff::ConnectBackoff,
}

impl HttpsUpstream {
    /// `setup` must offer ALPN `h2` (`tls_config::build` does for HTTPS servers).
    pub fn new(
        label: String,
        addr: SocketAddr,
        setup: TlsSetup,
        path: &str,
        opts: ConnOptions,
        stats: UpstreamStats,
    ) -> Result<Arc<HttpsUpstream>, String> {
        let host = match &setup.server_name {
            rustls_pki_types::ServerName::DnsName(n) => n.as_ref().to_string(),
            _ => match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            },
        };
        let authority = if addr.port() == 443 {
            host
        } else {
            format!("{host}:{}", addr.port())
        };
        let uri: Uri = format!("https://{authority}{path}")
            .parse()
            .map_err(|e| format!("URL https://{authority}{path}: {e}"))?;
        let connector = TlsConnector::from(setup.config.clone());
        Ok(Arc::new(HttpsUpstream {
            label,
            addr,
            setup,
            connector,
            uri,
            slots: (0..opts.pool_size.max(1))
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            opts,
            stats,
            epoch: Instant::now(),
            last_used: Arc::new(AtomicU64::new(0)),
            backoff: Default::default(),
        }))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now.
    pub fn live_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.conn
                    .load()
                    .as_ref()
                    .is_some_and(|c| !c.sender.is_closed())
            })
            .count()
    }

    /// Opens the first connection ahead of need; whether it opened.
    pub async fn warm_up(self: &Arc<Self>) -> bool {
        self.conn(0, false).await.is_ok()
    }

    /// Sends one query (ID 0 on the wire) and returns the answer with `msg`'s ID.
    pub async fn query(self: &Arc<Self>, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        self.last_used
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        exchange_id_zero(msg, &self.stats, |body, fresh| async move {
            let conn = self.conn(slot, fresh).await.map_err(Failure::Final)?;
            let r = self.send(&conn, body).await;
            if matches!(r, Err(Failure::Retry(_))) {
                self.forget(slot, &conn);
            }
            r.map(|b| b.to_vec())
        })
        .await
    }

    async fn send(&self, conn: &Conn, body: Bytes) -> Result<Bytes, Failure> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, DNS_MESSAGE)
            .header(ACCEPT, DNS_MESSAGE)
            .body(Full::new(body))
            .map_err(|_| Failure::Final(UpstreamError::Malformed))?;
        let mut sender = conn.sender.clone();
        sender
            .ready()
            .await
            .map_err(|_| Failure::Retry(UpstreamError::Closed))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| Failure::Retry(UpstreamError::Closed))?;
        if resp.status() != StatusCode::OK {
            self.stats.error(UpstreamErrorKind::http);
            return Err(Failure::Final(UpstreamError::Http(format!(
                "status {}",
                resp.status().as_u16()
            ))));
        }
        let type_ok = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(DNS_MESSAGE));
        if !type_ok {
            self.stats.error(UpstreamErrorKind::http);
            return Err(Failure::Final(UpstreamError::Http(
                "content type is not application/dns-message".into(),
            )));
        }
        // A reset stream or a body past one DNS message fails this server's attempt.
        match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) => {
                let too_big = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                self.stats.error(if too_big {
                    UpstreamErrorKind::malformed
                } else {
                    UpstreamErrorKind::closed
                });
                Err(Failure::Final(if too_big {
                    UpstreamError::Malformed
                } else {
                    UpstreamError::Closed
                }))
            }
        }
    }

    /// The slot's connection, opened if there is none (or `fresh` asks for a new one).
    async fn conn(self: &Arc<Self>, slot: usize, fresh: bool) -> Result<Arc<Conn>, UpstreamError> {
        let s = &self.slots[slot];
        if !fresh {
            if let Some(c) = s.conn.load_full().filter(|c| !c.sender.is_closed()) {
                return Ok(c);
            }
        }
        let _guard = s.connecting.lock().await;
        // A retry (`fresh`) has already forgotten the connection that failed it: one found
        // here is newer, opened by another retry while this one waited for the lock.
        if let Some(c) = s.conn.load_full().filter(|c| !c.sender.is_closed()) {
            return Ok(c);
        }
        self.backoff.check()?;
        // Boxed: see TlsUpstream::connection (the handshake state stays out of each query).
        match Box::pin(self.connect()).await {
            Ok(c) => {
                self.backoff.succeeded();
                s.conn.store(Some(c.clone()));
                Ok(c)
            }
            Err(e) => Err(self.backoff.failed(&self.stats, e)),
        }
    }

    fn forget(&self, slot: usize, conn: &Arc<Conn>) {
        let s = &self.slots[slot];
        let current = s.conn.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            s.conn.store(None);
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Arc<Conn>, UpstreamError> {
        let tls = handshake(
            self.addr,
            &self.setup,
            &self.connector,
            self.opts.connect_timeout,
            &self.stats,
        )
        .await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(UpstreamError::Tls(
                "the server did not agree to HTTP/2 (ALPN h2)".into(),
            ));
        }
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            // Answers are small: no need for the large default windows, and a server that
            // floods frames is bounded by them.
            .initial_stream_window_size(MAX_BODY as u32 + 1)
            .initial_connection_window_size(1 << 20)
            .max_header_list_size(16 * 1024)
            // A connection gone dark (open, silent) is found by PING, as DoT finds one by
            // its stall timer: after a second with nothing received while requests are
            // open, a PING; no acknowledgement within the rest of the stall timeout, and
            // the connection ends, its requests fail over and the next ones get a fresh
            // connection. No PINGs while idle: servers limit those.
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(1)))
            .keep_alive_timeout(
                self.opts
                    .stall_timeout
                    .saturating_sub(Duration::from_secs(1))
                    .max(Duration::from_secs(1)),
            )
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| UpstreamError::Connect(format!("HTTP/2 handshake: {e}")))?;
        let stats = self.stats.clone();
        let (idle, max_age) = (self.opts.idle_timeout, self.opts.max_age);
        let (epoch, last_used) = (self.epoch, self.last_used.clone());
        let label = self.label.clone();
        tokio::spawn(async move {
            stats.open.inc();
            let born = Instant::now();
            let mut connection = std::pin::pin!(connection);
            // The connection ends when the server closes it, when it has been idle for
            // `idle_timeout`, or at `max_connection_age` (certificates verified again).
            loop {
                let used = Duration::from_millis(last_used.load(Ordering::Relaxed));
                let idle_at = (epoch + used + idle).max(born + idle);
                let until = idle_at.min(born + max_age);
                tokio::select! {
                    r = &mut connection => {
                        if let Err(e) = r {
                            tracing::debug!(upstream = %label, error = %e, "HTTP/2 connection ended");
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(until) => {
                        let used = Duration::from_millis(last_used.load(Ordering::Relaxed));
                        let now = Instant::now();
                        if now >= born + max_age || now >= epoch + used + idle {
                            break;
                        }
                    }
                }
            }
            stats.open.dec();
        });
        Ok(Arc::new(Conn { sender }))
    }
}
