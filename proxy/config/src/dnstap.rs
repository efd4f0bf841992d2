//! The `dnstap` section: query logging as dnstap over Frame Streams to a collector.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Errors};

/// Query logging with dnstap (protobuf messages over Frame Streams), off by default.
/// Query names are in every message by nature; client addresses are cut to a prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct DnstapConfig {
    pub enabled: bool,
    /// The collector's Unix socket (e.g. `/var/run/dnstap/dnstap.sock`). Exactly one of
    /// `socket` and `address` when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = limits::DNSTAP_SOCKET_LEN.min, max = limits::DNSTAP_SOCKET_LEN.max)))]
    pub socket: Option<PathBuf>,
    /// The collector's TCP address (`IP:PORT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 64)))]
    pub address: Option<SocketAddr>,
    /// The `identity` of every message; empty: the host name.
    #[cfg_attr(feature = "schema", schemars(length(max = limits::DNSTAP_TEXT_LEN.max)))]
    pub identity: String,
    /// The `version` of every message; empty: `dot-proxy <version>`.
    #[cfg_attr(feature = "schema", schemars(length(max = limits::DNSTAP_TEXT_LEN.max)))]
    pub version: String,
    /// What pods asked (CLIENT_QUERY).
    pub client_query: bool,
    /// What pods got (CLIENT_RESPONSE); cache hits are client responses without a
    /// forwarder pair.
    pub client_response: bool,
    /// What went upstream (FORWARDER_QUERY), with the server's address and transport.
    pub forwarder_query: bool,
    /// What came back from upstream (FORWARDER_RESPONSE).
    pub forwarder_response: bool,
    /// Client IPv4 addresses are cut to this prefix (32: the full address; 0: no address).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::DNSTAP_IPV4_PREFIX.min, max = limits::DNSTAP_IPV4_PREFIX.max)))]
    pub client_ipv4_prefix: u8,
    /// Client IPv6 addresses are cut to this prefix (128: the full address; 0: none).
    #[cfg_attr(feature = "schema", schemars(range(min = limits::DNSTAP_IPV6_PREFIX.min, max = limits::DNSTAP_IPV6_PREFIX.max)))]
    pub client_ipv6_prefix: u8,
    /// Log only exchanges whose response is SERVFAIL, REFUSED or NXDOMAIN.
    pub only_errors: bool,
    /// Share of client queries logged (with their forwarder messages), 0 < rate <= 1.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::DNSTAP_SAMPLE_RATE.min, max = limits::DNSTAP_SAMPLE_RATE.max), extend("exclusiveMinimum" = true)))]
    pub sample_rate: f64,
    /// Exchanges (a query and its response: two messages) waiting for the collector at
    /// most; past that, messages are dropped and counted (`dot_proxy_dnstap_dropped_total`),
    /// never queries.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::DNSTAP_QUEUE.min, max = limits::DNSTAP_QUEUE.max)))]
    pub queue_size: usize,
}

impl Default for DnstapConfig {
    fn default() -> Self {
        DnstapConfig {
            enabled: false,
            socket: None,
            address: None,
            identity: String::new(),
            version: String::new(),
            client_query: true,
            client_response: true,
            forwarder_query: true,
            forwarder_response: true,
            client_ipv4_prefix: 24,
            client_ipv6_prefix: 56,
            only_errors: false,
            sample_rate: 1.0,
            queue_size: 10_000,
        }
    }
}

impl DnstapConfig {
    /// `Config::validate`, for this section.
    pub(crate) fn check(&self, e: &mut Errors) {
        e.range(
            "client_ipv4_prefix",
            u64::from(self.client_ipv4_prefix),
            limits::DNSTAP_IPV4_PREFIX,
        );
        e.range(
            "client_ipv6_prefix",
            u64::from(self.client_ipv6_prefix),
            limits::DNSTAP_IPV6_PREFIX,
        );
        e.range("queue_size", self.queue_size as u64, limits::DNSTAP_QUEUE);
        if let Some(m) = limits::DNSTAP_SAMPLE_RATE.check(self.sample_rate) {
            e.field("sample_rate", m);
        } else if self.sample_rate == 0.0 {
            e.field(
                "sample_rate",
                "must be above 0 (set enabled: false to log nothing)",
            );
        }
        if self.enabled && self.socket.is_some() == self.address.is_some() {
            e.here("set exactly one of socket (a Unix socket path) and address (IP:PORT)");
        }
        if let Some(p) = &self.socket {
            if !p.is_absolute() {
                e.field(
                    "socket",
                    format!("{} must be an absolute path", p.display()),
                );
            }
        }
        if let Some(p) = &self.socket {
            e.length("socket", p.as_os_str().len(), limits::DNSTAP_SOCKET_LEN);
        }
        e.length("identity", self.identity.len(), limits::DNSTAP_TEXT_LEN);
        e.length("version", self.version.len(), limits::DNSTAP_TEXT_LEN);
    }
}
