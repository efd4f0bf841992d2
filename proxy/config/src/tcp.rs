//! The `tcp` section: limits of the client-facing TCP listener.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{Dur, Errors};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Most client TCP connections open at once.
    pub max_connections: usize,
    /// Most TCP connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// Close a client connection with no query for this long.
    pub idle_timeout: Dur,
    /// A started frame (length prefix and message) must arrive within this long.
    pub frame_timeout: Dur,
    /// Most queries one connection may have in flight.
    pub max_inflight_per_connection: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            max_connections_per_client: 64,
            idle_timeout: Dur::secs(10),
            frame_timeout: Dur::secs(2),
            max_inflight_per_connection: 256,
        }
    }
}

impl TcpConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        for (field, v) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
            (
                "max_inflight_per_connection",
                self.max_inflight_per_connection,
            ),
        ] {
            if v == 0 {
                e.field(field, "must be at least 1");
            }
        }
        for (field, v) in [
            ("idle_timeout", self.idle_timeout),
            ("frame_timeout", self.frame_timeout),
        ] {
            if v.get().is_zero() {
                e.field(field, "must be above 0");
            }
        }
    }
}
