//! Upstream servers and the groups that choose among them.
//!
//! `group` holds the selection policies and health tracking; `tls` the pooled, pipelined
//! DNS-over-TLS connections; `plain` the UDP/TCP client for zones allowed plain DNS;
//! `tls_config` the certificate verification (CA, name, SPKI pins).

pub mod group;
pub mod plain;
pub mod tls;
pub mod tls_config;

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
}

/// One upstream server, TLS or plain.
#[derive(Clone)]
pub enum Upstream {
    Tls(Arc<tls::TlsUpstream>),
    Plain(Arc<plain::PlainUpstream>),
}

impl Upstream {
    pub async fn query(&self, msg: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        match self {
            Upstream::Tls(u) => u.query(msg).await,
            Upstream::Plain(u) => u.query(msg).await,
        }
    }
    pub fn label(&self) -> &str {
        match self {
            Upstream::Tls(u) => u.label(),
            Upstream::Plain(u) => u.label(),
        }
    }
    pub fn stats(&self) -> &tls::UpstreamStats {
        match self {
            Upstream::Tls(u) => &u.stats,
            Upstream::Plain(u) => &u.stats,
        }
    }
    pub fn is_tls(&self) -> bool {
        matches!(self, Upstream::Tls(_))
    }
    pub fn warm(&self) {
        if let Upstream::Tls(u) = self {
            u.warm();
        }
    }
}
