//! The `upstream_groups` section: named groups of upstream servers, each server's
//! protocol, authentication and connection tuning.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use crate::patterns;
#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, valid_server_name, Dur, Errors, SpkiPin};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroup {
    /// Referenced by `zones[].group` and by the `dns.dot-proxy.io/upstream-group` pod annotation.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 63), regex(pattern = patterns::GROUP_NAME)))]
    pub name: String,
    /// `failover` (first healthy server, in order), `round_robin`, `fastest` (lowest smoothed
    /// latency) or `race` (ask two at once).
    #[serde(default)]
    pub policy: Policy,
    /// Time to wait for an answer before the client gets SERVFAIL (or a stale answer).
    #[serde(default = "default_query_timeout")]
    pub timeout: Dur,
    #[cfg_attr(feature = "schema", schemars(length(min = limits::SERVERS.min, max = limits::SERVERS.max)))]
    pub servers: Vec<UpstreamServer>,
}

impl UpstreamGroup {
    /// Whether any of its servers speaks plain DNS (validation keeps a group's servers all
    /// plain or all encrypted).
    pub fn is_plain(&self) -> bool {
        self.servers.iter().any(|s| !s.protocol.is_encrypted())
    }
}

/// Most upstream groups in one config: a client's own group is carried in one byte of the
/// cache key, 0 meaning zone routing.
pub const MAX_UPSTREAM_GROUPS: usize = u8::MAX as usize;

/// Shared with the operator's CRD defaults.
pub fn default_query_timeout() -> Dur {
    Dur::secs(2)
}

/// How a group picks a server for each query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// In order: the first healthy server.
    #[default]
    Failover,
    /// Each healthy server in turn.
    RoundRobin,
    /// The healthy server with the lowest smoothed latency, probing the others now and then.
    Fastest,
    /// Ask two servers at once; the first good answer wins.
    Race,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// DNS over TLS (RFC 7858). Always verified.
    #[default]
    Tls,
    /// Plain DNS over UDP, retried over TCP when truncated. Only for in-cluster zones.
    Plain,
    /// DNS over HTTPS (RFC 8484): POST over HTTP/2, port 443 by default. Verified as TLS.
    Https,
    /// DNS over QUIC (RFC 9250), port 853 by default. Verified as TLS.
    Quic,
}

impl Protocol {
    /// TLS, HTTPS or QUIC: verified, never plaintext.
    pub fn is_encrypted(self) -> bool {
        !matches!(self, Protocol::Plain)
    }

    /// The port a server address without one gets.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Tls | Protocol::Quic => 853,
            Protocol::Plain => 53,
            Protocol::Https => 443,
        }
    }
}

/// The URL path of DNS over HTTPS queries when `path` is not set.
pub const DEFAULT_DOH_PATH: &str = "/dns-query";

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
/// One upstream resolver.
pub struct UpstreamServer {
    /// `IP:PORT` (IPv6 in brackets), e.g. `1.1.1.1:853` or `[2606:4700::1111]:853`. (The
    /// operator's resource also takes a bare IP, for the protocol's default port: 853 for
    /// TLS and QUIC, 443 for HTTPS, 53 for plain.)
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 64), regex(pattern = patterns::SOCKET_ADDRESS)))]
    pub address: SocketAddr,
    /// `tls` (DNS over TLS, RFC 7858), `https` (DNS over HTTPS, RFC 8484, HTTP/2 on port
    /// 443), `quic` (DNS over QUIC, RFC 9250), all three always verified; or `plain` (UDP
    /// with TCP fallback; only for in-cluster resolvers).
    #[serde(default)]
    pub protocol: Protocol,
    /// Name the server's certificate must be valid for, e.g. `cloudflare-dns.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 253)))]
    pub tls_name: Option<String>,
    /// Base64 SHA-256 digests of the server's SubjectPublicKeyInfo (RFC 7858 section 4.2);
    /// with pins the server's key must match one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::SPKI_PINS.max)))]
    pub spki_pins: Vec<SpkiPin>,
    /// Also verify the certificate chain against the CAs. `false` with pins gives pin-only
    /// authentication.
    #[serde(default = "yes")]
    pub verify_ca: bool,
    /// CA bundle for this server only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Long-lived connections each proxy keeps to this server.
    #[serde(default = "default_pool_size")]
    #[cfg_attr(feature = "schema", schemars(range(min = limits::POOL_SIZE.min, max = limits::POOL_SIZE.max)))]
    pub pool_size: usize,
    /// Close a connection after this long without traffic (the server's own
    /// edns-tcp-keepalive timeout is used when shorter).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Re-open connections at least this often, so certificates are verified again.
    #[serde(default = "default_max_age")]
    pub max_connection_age: Dur,
    /// Time allowed for TCP connect plus TLS handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Plain servers only: ask over TCP instead of UDP (as NodeLocal DNSCache forwards to
    /// kube-dns). Off by default: some clouds rate-limit TCP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_tcp: bool,
    /// HTTPS servers only: the URL path queries are POSTed to (default `/dns-query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 256), regex(pattern = r"^/[^ ?#]*$"))
    )]
    pub path: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}
/// Shared with the operator's CRD defaults.
pub fn default_pool_size() -> usize {
    2
}
fn default_idle_timeout() -> Dur {
    Dur::secs(30)
}
fn default_max_age() -> Dur {
    Dur::secs(3600)
}
fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}

impl UpstreamServer {
    pub fn tls(address: SocketAddr, name: &str) -> Self {
        UpstreamServer {
            address,
            protocol: Protocol::Tls,
            tls_name: Some(name.to_string()),
            spki_pins: Vec::new(),
            verify_ca: true,
            ca_file: None,
            pool_size: default_pool_size(),
            idle_timeout: default_idle_timeout(),
            max_connection_age: default_max_age(),
            connect_timeout: default_connect_timeout(),
            force_tcp: false,
            path: None,
        }
    }
    /// An encrypted server of `protocol` (TLS, HTTPS or QUIC) verified for `name`.
    pub fn encrypted(protocol: Protocol, address: SocketAddr, name: &str) -> Self {
        UpstreamServer {
            protocol,
            ..Self::tls(address, name)
        }
    }
    /// The URL path of an HTTPS server.
    pub fn doh_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_DOH_PATH)
    }
    pub fn plain(address: SocketAddr) -> Self {
        UpstreamServer {
            protocol: Protocol::Plain,
            tls_name: None,
            ..Self::tls(address, "")
        }
    }
    /// A short label for logs and metrics: `tls://1.1.1.1:853#cloudflare-dns.com`.
    pub fn label(&self) -> String {
        match self.protocol {
            Protocol::Tls => {
                format!(
                    "tls://{}#{}",
                    self.address,
                    self.tls_name.as_deref().unwrap_or("")
                )
            }
            Protocol::Plain if self.force_tcp => format!("tcp://{}", self.address),
            Protocol::Plain => format!("udp://{}", self.address),
            Protocol::Https => format!(
                "https://{}{}#{}",
                self.address,
                self.doh_path(),
                self.tls_name.as_deref().unwrap_or("")
            ),
            Protocol::Quic => format!(
                "quic://{}#{}",
                self.address,
                self.tls_name.as_deref().unwrap_or("")
            ),
        }
    }
}

/// `upstream_groups`: at least one, names unique, and each group's servers.
pub(crate) fn check_groups(groups: &[UpstreamGroup], e: &mut Errors) {
    if groups.is_empty() {
        e.here("at least one upstream group is required");
    }
    // A client's own group is one byte of the cache key (0 = zone routing).
    if groups.len() > MAX_UPSTREAM_GROUPS {
        e.here(format!(
            "{} groups; at most {MAX_UPSTREAM_GROUPS}",
            groups.len()
        ));
    }
    for (gi, g) in groups.iter().enumerate() {
        let mut e = e.index(gi);
        if g.name.is_empty() {
            e.field("name", "must not be empty");
        }
        if groups[..gi].iter().any(|o| o.name == g.name) {
            e.field("name", format!("group {:?} is defined twice", g.name));
        }
        g.check(&mut e);
    }
}

impl UpstreamGroup {
    /// What one group can check about itself; names are unique across groups
    /// ([`check_groups`]).
    pub(crate) fn check(&self, e: &mut Errors) {
        if self.servers.is_empty() {
            e.field("servers", "at least one server is required");
        }
        if self.timeout.get().is_zero() || self.timeout.get().as_secs() > 60 {
            e.field("timeout", "must be between 1ms and 60s");
        }
        for (si, s) in self.servers.iter().enumerate() {
            s.check(&mut e.at("servers").index(si));
        }
        // The servers of a group stand in for one another: plain DNS beside an
        // encrypted server would be a clear-text fallback for it.
        if self.servers.iter().any(|s| s.protocol.is_encrypted()) {
            for (si, s) in self.servers.iter().enumerate() {
                if !s.protocol.is_encrypted() {
                    e.at("servers").index(si).field(
                        "protocol",
                        format!(
                            "group {:?} has encrypted servers; a plain-DNS server beside them would receive their queries in clear text when they fail: put plain servers in a group of their own",
                            self.name
                        ),
                    );
                }
            }
        }
    }
}

impl UpstreamServer {
    pub(crate) fn check(&self, e: &mut Errors) {
        if self.address.port() == 0 {
            e.field("address", "port must not be 0");
        }
        if self.address.ip().is_unspecified() {
            e.field("address", "must not be an unspecified address");
        }
        if self.path.is_some() && self.protocol != Protocol::Https {
            e.field(
                "path",
                "only for https servers (the URL path of DNS over HTTPS)",
            );
        }
        if let Some(p) = &self.path {
            if !p.starts_with('/')
                || p.len() > 256
                || p.bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
            {
                e.field(
                    "path",
                    format!("{p:?} must be an absolute URL path (starting with /, no spaces, query or fragment, at most 256 bytes)"),
                );
            }
        }
        match self.protocol {
            Protocol::Tls | Protocol::Https | Protocol::Quic => {
                match self.tls_name.as_deref() {
                    Some(n) if !valid_server_name(n) => e.field(
                        "tls_name",
                        format!("{n:?} is not a valid DNS name or IP address"),
                    ),
                    None | Some("") if self.verify_ca || self.spki_pins.is_empty() => e.field(
                        "tls_name",
                        "required for a TLS, HTTPS or QUIC upstream (the name its certificate must be valid for)",
                    ),
                    _ => {}
                }
                if !self.verify_ca && self.spki_pins.is_empty() {
                    e.field("verify_ca", "may be false only when spki_pins are set");
                }
                if let Some(ca) = &self.ca_file {
                    e.readable("ca_file", ca);
                }
                e.range("pool_size", self.pool_size as u64, limits::POOL_SIZE);
                if self.force_tcp {
                    e.field(
                        "force_tcp",
                        "only for plain servers (DNS over TLS and HTTPS run over TCP, QUIC over UDP)",
                    );
                }
            }
            Protocol::Plain => {
                if self.tls_name.is_some() || !self.spki_pins.is_empty() || self.ca_file.is_some() {
                    e.field(
                        "protocol",
                        "plain servers take no tls_name, spki_pins or ca_file",
                    );
                }
            }
        }
        if self.idle_timeout.get().is_zero() {
            e.field("idle_timeout", "must be above 0");
        }
        if self.max_connection_age.get() < std::time::Duration::from_secs(1) {
            e.field("max_connection_age", "must be at least 1s");
        }
        if self.connect_timeout.get().is_zero() {
            e.field("connect_timeout", "must be above 0");
        }
    }
}
