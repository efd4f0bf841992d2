//! Upstream servers and the groups that choose among them.
//!
//! A query goes down this way: `group` (selection policy, failover and hedging within a
//! query, health and probes; built from its config section by `build`) hands one shared
//! `Bytes` message to a server through the one dispatch mechanism, the [`Exchange`] trait,
//! which every transport implements and a group holds as `Arc<dyn Exchange>`:
//!
//! - `tls`: DNS over TLS, pipelined on pooled connections (framing, ID rewriting);
//! - `https`: DNS over HTTPS, HTTP/2 streams on pooled connections;
//! - `quic`: DNS over QUIC, a stream per query on a pooled connection;
//! - `plain`: plain UDP/TCP for zones allowed it (a socket per query, no pool).
//!
//! Under the three encrypted ones, `pool` keeps the connections (slots, connect under
//! `backoff`, warm-up, idle timeout and maximum age, dark-connection detection, retries on
//! a fresh connection), generic over a connector each transport provides; `tls_config`
//! verifies certificates (CA, name, SPKI pins); `stats` holds each server's metric handles;
//! `rtt` the smoothed round-trip time each attempt's timeout comes from.

pub mod backoff;
pub mod build;
pub mod group;
pub mod https;
pub mod plain;
pub(crate) mod pool;
pub mod quic;
pub mod rtt;
pub mod set;
pub mod stats;
pub mod tls;
pub mod tls_config;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};

pub use group::{Group, GroupError};
pub use pool::ConnOptions;
pub use stats::{UpstreamMetrics, UpstreamStats};

use crate::dnstap::proto::SocketProtocol;

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

/// How one attempt on a pooled connection failed.
pub(crate) enum Failure {
    /// Nothing came back on this connection (closed, GOAWAY, refused or unopenable
    /// stream, lost): worth another try on a fresh connection.
    Retry(UpstreamError),
    /// The server answered badly, or no connection could be opened: this attempt fails and
    /// the group moves on.
    Final(UpstreamError),
}

/// What DoH and DoQ share around one query: counted and timed, sent with message ID 0
/// (RFC 8484 §4.1, RFC 9250 §4.2.1), and answered with the caller's ID. `send(wire)` sends
/// `wire` (the query with ID 0) through the pool, which retries it on a fresh connection
/// when nothing came back.
///
/// No copy when the caller's ID is already 0, as `dns::message::upstream_query` builds
/// every upstream query (and the probe): the message is sent as the `Bytes` it came in, and
/// an answer with ID 0 is returned as it came out of the transport.
pub(crate) async fn exchange_id_zero<F, Fut>(
    msg: &Bytes,
    stats: &UpstreamStats,
    send: F,
) -> Result<Bytes, UpstreamError>
where
    F: FnOnce(Bytes) -> Fut,
    Fut: Future<Output = Result<Bytes, Failure>>,
{
    let Some(id) = msg.get(..2).map(|b| [b[0], b[1]]) else {
        return Err(UpstreamError::Malformed);
    };
    let wire = if id == [0, 0] {
        msg.clone()
    } else {
        let mut zeroed = BytesMut::from(&msg[..]);
        zeroed[..2].fill(0);
        zeroed.freeze()
    };
    stats.queries.inc();
    let start = tokio::time::Instant::now();
    match send(wire).await {
        Ok(answer) if answer.len() >= 2 => {
            stats.duration.observe(start.elapsed().as_secs_f64());
            if answer[..2] == id {
                return Ok(answer);
            }
            // Copied only when the buffer is shared with other data.
            let mut a = answer
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            a[..2].copy_from_slice(&id);
            Ok(a.freeze())
        }
        Ok(_) => {
            stats.error(stats::UpstreamErrorKind::malformed);
            Err(UpstreamError::Malformed)
        }
        Err(Failure::Retry(e)) => {
            stats.error(stats::UpstreamErrorKind::closed);
            Err(e)
        }
        Err(Failure::Final(e)) => Err(e),
    }
}

/// A future answer from an [`Exchange`].
pub type ExchangeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Bytes, UpstreamError>> + Send + 'a>>;

/// One way of asking one server: what a group needs of it. Every transport implements it
/// (`tls`, `https`, `quic`, `plain`), and so do the group's test fakes; a group holds its
/// servers as `Arc<dyn Exchange>`. The cost is one boxed future per upstream query: a cache
/// miss that goes over the network.
pub trait Exchange: Send + Sync {
    /// Sends one query and returns the raw answer; `msg` is shared, not copied, by every
    /// attempt that carries it; the caller bounds the time.
    fn query<'a>(&'a self, msg: &'a Bytes) -> ExchangeFuture<'a>;
    fn label(&self) -> &str;
    fn stats(&self) -> &UpstreamStats;
    /// The server's address and transport as query logs name them (None: not logged, as
    /// for a test fake).
    fn tap_identity(&self) -> Option<(SocketAddr, SocketProtocol)> {
        None
    }
    /// Encrypted (TLS, HTTPS or QUIC).
    fn is_tls(&self) -> bool {
        false
    }
    /// Opens the first connection ahead of need: whether it opened (a transport that
    /// connects per query, plain DNS or a test fake, has nothing to open).
    fn warm_up(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }
    /// Has a live connection (a transport that connects per query always has).
    fn live(&self) -> bool {
        true
    }
}
