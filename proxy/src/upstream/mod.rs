//! Upstream servers and the groups that choose among them.
//!
//! `build` makes a group from its config section; `group` holds the selection policies, failover within a query and health tracking;
//! `tls` the pooled, pipelined DNS-over-TLS connections; `https` DNS over HTTPS (HTTP/2);
//! `quic` DNS over QUIC; `plain` the UDP/TCP client for
//! zones allowed plain DNS; `tls_config` the certificate verification (CA, name, SPKI
//! pins); `rtt` the smoothed round-trip time each attempt's timeout comes from.

pub mod backoff;
pub mod build;
pub mod group;
pub mod https;
pub mod plain;
pub mod quic;
pub mod rtt;
pub mod set;
pub mod tls;
pub mod tls_config;

use std::future::Future;

use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;

pub use group::{Group, GroupError};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("connection closed before the answer")]
    Closed,
    #[error("malformed answer")]
    Malformed,
    #[error("too many queries in flight")]
    Overloaded,
    #[error("timed out")]
    Timeout,
    #[error("HTTP error: {0}")]
    Http(String),
}

/// How one request of a multiplexed transport (DoH, DoQ) failed.
pub(crate) enum Failure {
    /// Nothing came back on this connection (closed, GOAWAY, refused or unopenable
    /// stream): worth one more try on a fresh connection.
    Retry(UpstreamError),
    /// The server answered badly: this attempt fails and the group moves on.
    Final(UpstreamError),
}

/// What DoH and DoQ share around one query: counted and timed, sent with message ID 0
/// (RFC 8484 §4.1, RFC 9250 §4.2.1), tried once more on a fresh connection when nothing
/// came back, and answered with the caller's ID. `attempt(wire, fresh)` sends `wire` (the
/// query with ID 0) on the current connection, or a new one when `fresh`, and drops a
/// connection that failed with [`Failure::Retry`].
pub(crate) async fn exchange_id_zero<F, Fut>(
    msg: &Bytes,
    stats: &tls::UpstreamStats,
    mut attempt: F,
) -> Result<Bytes, UpstreamError>
where
    F: FnMut(Bytes, bool) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, Failure>>,
{
    if msg.len() < 2 {
        return Err(UpstreamError::Malformed);
    }
    let id = [msg[0], msg[1]];
    let mut zeroed = msg.to_vec();
    zeroed[0] = 0;
    zeroed[1] = 0;
    let zeroed = Bytes::from(zeroed);
    stats.queries.inc();
    let start = tokio::time::Instant::now();
    let mut fresh = false;
    loop {
        match attempt(zeroed.clone(), fresh).await {
            Ok(mut answer) if answer.len() >= 2 => {
                stats.duration.observe(start.elapsed().as_secs_f64());
                answer[0] = id[0];
                answer[1] = id[1];
                return Ok(Bytes::from(answer));
            }
            Ok(_) => {
                stats.error(crate::metrics::UpstreamErrorKind::malformed);
                return Err(UpstreamError::Malformed);
            }
            Err(Failure::Retry(e)) if fresh => {
                stats.error(crate::metrics::UpstreamErrorKind::closed);
                return Err(e);
            }
            Err(Failure::Retry(_)) => fresh = true,
            Err(Failure::Final(e)) => return Err(e),
        }
    }
}

/// A future answer from an [`Exchange`].
pub type ExchangeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Bytes, UpstreamError>> + Send + 'a>>;

/// Any other way of asking one server: what a group needs of it. The built-in transports
/// are variants of [`Upstream`]; this lets a group carry others (the group's unit tests use
/// a fake server with paused time).
pub trait Exchange: Send + Sync {
    /// Sends one query and returns the raw answer; the caller bounds the time.
    fn query<'a>(&'a self, msg: &'a Bytes) -> ExchangeFuture<'a>;
    fn label(&self) -> &str;
    fn stats(&self) -> &tls::UpstreamStats;
}

/// One upstream server, TLS or plain.
#[derive(Clone)]
pub enum Upstream {
    Tls(Arc<tls::TlsUpstream>),
    Https(Arc<https::HttpsUpstream>),
    Quic(Arc<quic::QuicUpstream>),
    Plain(Arc<plain::PlainUpstream>),
    Other(Arc<dyn Exchange>),
}

impl Upstream {
    /// Sends one query; `msg` is shared, not copied, by every attempt that carries it.
    pub async fn query(&self, msg: &Bytes) -> Result<Bytes, UpstreamError> {
        match self {
            Upstream::Tls(u) => u.query(msg).await,
            Upstream::Https(u) => u.query(msg).await,
            Upstream::Quic(u) => u.query(msg).await,
            Upstream::Plain(u) => u.query(msg).await,
            Upstream::Other(u) => u.query(msg).await,
        }
    }
    pub fn label(&self) -> &str {
        match self {
            Upstream::Tls(u) => u.label(),
            Upstream::Https(u) => u.label(),
            Upstream::Quic(u) => u.label(),
            Upstream::Plain(u) => u.label(),
            Upstream::Other(u) => u.label(),
        }
    }
    pub fn stats(&self) -> &tls::UpstreamStats {
        match self {
            Upstream::Tls(u) => &u.stats,
            Upstream::Https(u) => &u.stats,
            Upstream::Quic(u) => &u.stats,
            Upstream::Plain(u) => &u.stats,
            Upstream::Other(u) => u.stats(),
        }
    }
    /// The server's address and transport as query logs name them (None for a test fake).
    pub fn tap_identity(
        &self,
    ) -> Option<(std::net::SocketAddr, crate::dnstap::proto::SocketProtocol)> {
        use crate::dnstap::proto::SocketProtocol;
        match self {
            Upstream::Tls(u) => Some((u.address(), SocketProtocol::Dot)),
            Upstream::Https(u) => Some((u.address(), SocketProtocol::Doh)),
            Upstream::Quic(u) => Some((u.address(), SocketProtocol::Doq)),
            Upstream::Plain(u) => Some((
                u.address(),
                if u.force_tcp() {
                    SocketProtocol::Tcp
                } else {
                    SocketProtocol::Udp
                },
            )),
            Upstream::Other(_) => None,
        }
    }
    /// Encrypted (TLS, HTTPS or QUIC).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            Upstream::Tls(_) | Upstream::Https(_) | Upstream::Quic(_)
        )
    }
    /// Opens the first connection ahead of need: whether it opened (a transport that
    /// connects per query, plain DNS or a test fake, has nothing to open).
    pub async fn warm_up(&self) -> bool {
        match self {
            Upstream::Tls(u) => u.warm_up().await,
            Upstream::Https(u) => u.warm_up().await,
            Upstream::Quic(u) => u.warm_up().await,
            Upstream::Plain(_) | Upstream::Other(_) => true,
        }
    }
    /// Has a live connection (a transport that connects per query always has).
    pub fn live(&self) -> bool {
        match self {
            Upstream::Tls(u) => u.live_connections() > 0,
            Upstream::Https(u) => u.live_connections() > 0,
            Upstream::Quic(u) => u.live_connections() > 0,
            Upstream::Plain(_) | Upstream::Other(_) => true,
        }
    }
}
