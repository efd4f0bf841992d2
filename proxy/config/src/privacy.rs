//! The `privacy` section: ECS stripping and query padding.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Errors};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Remove EDNS Client Subnet from queries before they leave the node.
    pub strip_ecs: bool,
    /// Pad queries sent over TLS to a multiple of this many bytes (RFC 7830/8467); 0 = off.
    #[cfg_attr(feature = "schema", schemars(range(min = limits::PADDING_BLOCK.min, max = limits::PADDING_BLOCK.max)))]
    pub padding_block: u16,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            strip_ecs: true,
            padding_block: 128,
        }
    }
}

impl PrivacyConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        e.range(
            "padding_block",
            self.padding_block.into(),
            limits::PADDING_BLOCK,
        );
    }
}
