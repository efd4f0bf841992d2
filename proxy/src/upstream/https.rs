//! DNS over HTTPS (RFC 8484): each query a POST of `application/dns-message` over HTTP/2
//! (ALPN `h2`), multiplexed as streams on a few long-lived connections (`pool_size`, kept by
//! `pool`), with message ID 0 on the wire (§4.1) and the caller's ID put back on the answer.
//! The certificate is verified exactly as for DNS over TLS (`tls_config`).
//!
//! hyper's HTTP/2 client (h2 underneath) does the framing, flow control, GOAWAY and stream
//! resets; this module adds what DNS needs: a request that fails before any response (a
//! GOAWAY, a connection lost) is sent once more on a fresh connection; a non-200 status, a
//! wrong content type or a body over 65,535 bytes is an error of that server (counted as
//! `http` or `malformed`), which the group answers by failing over. Cache-Control and other
//! HTTP caching headers are ignored: the DNS TTLs in the answer are what the cache uses.
//!
//! Copies: the query's `Bytes` is the request body as it is (h2 copies a small DATA frame
//! into its write buffer, as DoT's write batch does); the answer is the body's `Bytes` as
//! h2 read it, not copied.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::pool::{Connector, End, Endpoint, Opened, Pool, Sender, StreamConn, Transport};
use super::stats::UpstreamErrorKind;
use super::tls::TlsDialer;
use super::tls_config::TlsSetup;
use super::{exchange_id_zero, Failure, UpstreamError};
use crate::dnstap::proto::SocketProtocol;

const DNS_MESSAGE: &str = "application/dns-message";
/// Largest DNS message (RFC 8484 §6: the body is one message).
const MAX_BODY: usize = 65_535;
/// Tries of one query: once more on a fresh connection when nothing came back.
const TRIES: usize = 2;

/// One HTTP/2 connection, as the pool holds it.
pub(crate) type DohConn = StreamConn<SendRequest<Full<Bytes>>>;

impl Sender for SendRequest<Full<Bytes>> {
    fn gone(&self) -> bool {
        self.is_closed()
    }
}

/// Opens verified HTTP/2 connections to one server.
pub(crate) struct DohConnector {
    dialer: TlsDialer,
    uri: Uri,
}

impl Connector for DohConnector {
    const PROTOCOL: SocketProtocol = SocketProtocol::Doh;
    type Conn = DohConn;
    async fn connect(&self) -> Result<Opened<DohConn>, UpstreamError> {
        let (io, signals) = self.dialer.dial().await?;
        if io.get_ref().get_ref().1.alpn_protocol() != Some(b"h2") {
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
            // A sign of life while requests are open: after a second with nothing received,
            // a PING, whose acknowledgement counts as received (so a server slow to answer
            // is not taken for a dark connection by the pool); no acknowledgement within
            // the rest of the stall timeout, and the connection ends, its requests are
            // retried on a fresh one. No PINGs while idle: servers limit those.
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(1)))
            .keep_alive_timeout(
                self.dialer
                    .opts
                    .stall_timeout
                    .saturating_sub(Duration::from_secs(1))
                    .max(Duration::from_secs(1)),
            )
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(format!("HTTP/2 handshake: {e}")))?;
        let task = signals.clone();
        Ok(Opened {
            conn: StreamConn { sender, signals },
            run: Box::pin(async move {
                // Dropping the connection (the pool closed it) ends it.
                tokio::select! {
                    r = connection => match r {
                        Ok(()) => End::PeerClosed,
                        Err(e) => {
                            tracing::debug!(error = %e, "HTTP/2 connection ended");
                            End::Error
                        }
                    },
                    _ = task.closing() => End::Idle,
                }
            }),
        })
    }
}

pub struct HttpsUpstream {
    pool: Arc<Pool<DohConnector>>,
}

impl HttpsUpstream {
    /// `setup` must offer ALPN `h2` (`tls_config::build` does for HTTPS servers).
    pub fn new(
        server: Endpoint,
        setup: TlsSetup,
        path: &str,
    ) -> Result<Arc<HttpsUpstream>, String> {
        let addr = server.addr;
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
        let connector = DohConnector {
            dialer: TlsDialer::new(addr, setup, &server.opts, &server.stats),
            uri,
        };
        Ok(Arc::new(HttpsUpstream {
            pool: Pool::new(server, connector),
        }))
    }

    async fn send(&self, conn: &DohConn, body: Bytes) -> Result<Bytes, Failure> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.pool.connector().uri.clone())
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
            self.pool.stats().error(UpstreamErrorKind::http);
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
            self.pool.stats().error(UpstreamErrorKind::http);
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
                self.pool.stats().error(if too_big {
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
}

impl Transport for HttpsUpstream {
    type Connector = DohConnector;
    fn pool(&self) -> &Arc<Pool<DohConnector>> {
        &self.pool
    }

    /// Sends one query (ID 0 on the wire) and returns the answer with `msg`'s ID.
    async fn send_query(&self, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        exchange_id_zero(msg, self.pool.stats(), |body| {
            self.pool.attempts(TRIES, move |conn| {
                let body = body.clone();
                async move { self.send(&conn, body).await }
            })
        })
        .await
    }
}
