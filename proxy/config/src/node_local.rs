//! The `node_local` section: the node-local address (dummy interface and NOTRACK
//! rules) that `dot-proxy node-local` sets up.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Errors};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeLocalConfig {
    pub enabled: bool,
    /// Name of the dummy interface holding the addresses.
    #[cfg_attr(
        feature = "schema",
        schemars(
            length(min = limits::INTERFACE_LEN.min, max = limits::INTERFACE_LEN.max),
            regex(pattern = r"^[A-Za-z0-9_.-]+$")
        )
    )]
    pub interface: String,
    /// Link-local addresses pods send DNS to (IPv4 and/or IPv6).
    #[cfg_attr(
        feature = "schema",
        schemars(length(max = limits::NODE_LOCAL_ADDRESSES.max), inner(length(max = 45)))
    )]
    pub addresses: Vec<std::net::IpAddr>,
    /// DNS port on those addresses.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 65535)))]
    pub port: u16,
    /// Conntrack bypass rules: `auto` (nftables if available, else iptables), `nftables`,
    /// `iptables`, or `none`.
    pub firewall: Firewall,
}

impl Default for NodeLocalConfig {
    fn default() -> Self {
        NodeLocalConfig {
            enabled: false,
            interface: "dot-proxy0".into(),
            addresses: vec![std::net::IpAddr::from([169, 254, 20, 10])],
            port: 53,
            firewall: Firewall::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Firewall {
    #[default]
    Auto,
    Nftables,
    Iptables,
    None,
}

impl NodeLocalConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        e.length(
            "addresses",
            self.addresses.len(),
            limits::NODE_LOCAL_ADDRESSES,
        );
        if self.enabled && self.addresses.is_empty() {
            e.field("addresses", "at least one address is required when enabled");
        }
        if !limits::INTERFACE_LEN.contains(self.interface.len() as u64)
            || !self
                .interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            e.field(
                "interface",
                "must be 1-15 characters of letters, digits, '-', '_' or '.'",
            );
        }
        if self.port == 0 {
            e.field("port", "must not be 0");
        }
    }
}
