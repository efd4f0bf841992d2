//! A group built from its config section: one [`Exchange`] per server (TLS setup verified
//! here, so a bad CA file or pin refuses the config), the query options the group's servers
//! get, and the group's metric handles.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::stats::UpstreamMetrics as Metrics;
use crate::config::{PrivacyConfig, Protocol, UpstreamGroup, UpstreamServer};
use crate::dns::message::UpstreamQueryOptions;

use super::https::HttpsUpstream;
use super::plain::PlainUpstream;
use super::pool::Endpoint;
use super::quic::QuicUpstream;
use super::tls::TlsUpstream;
use super::{tls_config, ConnOptions, Exchange, Group, UpstreamStats};

/// How long a write of queries to a TLS connection may block before the connection is
/// given up (a server that stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A server of a group could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("upstream {label}: {source}")]
pub struct BuildError {
    pub label: String,
    #[source]
    pub source: tls_config::TlsConfigError,
}

impl Group {
    /// Builds the group `g` and opens its first connections. `ca_file` is the global
    /// `tls.ca_file`; `privacy` decides ECS stripping and padding (TLS-only groups pad).
    pub fn from_config(
        g: &UpstreamGroup,
        ca_file: Option<&Path>,
        privacy: &PrivacyConfig,
        metrics: &Metrics,
    ) -> Result<Arc<Group>, BuildError> {
        let upstreams = g
            .servers
            .iter()
            .map(|s| upstream(g, s, ca_file, metrics))
            .collect::<Result<Vec<_>, _>>()?;
        // Padding (RFC 8467) for every encrypted transport; edns-tcp-keepalive only over
        // DoT (RFC 9250 forbids it over QUIC; HTTP/2 has its own connection management).
        let encrypted = g.servers.iter().all(|s| s.protocol.is_encrypted());
        let dot = g.servers.iter().all(|s| s.protocol == Protocol::Tls);
        let qopts = UpstreamQueryOptions {
            strip_ecs: privacy.strip_ecs,
            padding_block: if encrypted { privacy.padding_block } else { 0 },
            keepalive: dot,
        };
        let group = Group::new(
            g.name.clone(),
            g.policy,
            g.timeout.get(),
            upstreams,
            qopts,
            metrics,
        );
        group.warm();
        Ok(group)
    }
}

fn upstream(
    g: &UpstreamGroup,
    s: &UpstreamServer,
    ca_file: Option<&Path>,
    metrics: &Metrics,
) -> Result<Arc<dyn Exchange>, BuildError> {
    let label = s.label();
    let stats = UpstreamStats::new(metrics, &g.name, &label);
    let setup = || {
        tls_config::build(s, ca_file).map_err(|source| BuildError {
            label: label.clone(),
            source,
        })
    };
    let opts = ConnOptions {
        pool_size: s.pool_size,
        idle_timeout: s.idle_timeout.get(),
        max_age: s.max_connection_age.get(),
        connect_timeout: s.connect_timeout.get(),
        // Queries outstanding and nothing heard for twice the group's timeout (at least
        // 4 s): the connection is dead.
        stall_timeout: g.timeout.get().max(Duration::from_secs(2)) * 2,
        write_timeout: WRITE_TIMEOUT,
    };
    let other = |e: String| BuildError {
        label: label.clone(),
        source: tls_config::TlsConfigError::Setup(e),
    };
    // What the pooled transports are built for (plain DNS keeps no pool).
    let server = |stats| Endpoint {
        label: label.clone(),
        addr: s.address,
        opts,
        stats,
    };
    let up: Arc<dyn Exchange> = match s.protocol {
        Protocol::Https => {
            HttpsUpstream::new(server(stats), setup()?, s.doh_path()).map_err(other)?
        }
        Protocol::Quic => QuicUpstream::new(server(stats), setup()?).map_err(other)?,
        Protocol::Tls => TlsUpstream::new(server(stats), setup()?),
        Protocol::Plain => PlainUpstream::new(label.clone(), s.address, s.force_tcp, stats),
    };
    Ok(up)
}
