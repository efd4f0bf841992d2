//! `spec.target`: which ConfigMaps are written and which nodes' pods get overrides.
//! Kubernetes only.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most shards a resource may use (`target.overrideShards` and `target.maxOverrideShards`
/// stop here; the chart's Role names this many).
pub const MAX_OVERRIDE_SHARDS: u32 = 64;

/// Which proxies this resource configures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TargetSpec {
    /// Name of the main ConfigMap, written in this resource's namespace with key `config.yaml`.
    /// The override shards are `<configMapName>-overrides-<i>`.
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub config_map_name: String,
    /// Number of override shard ConfigMaps. The chart mounts exactly this many, so change both
    /// together. Each node's pod overrides go to shard `fnv1a64(nodeName) % overrideShards`.
    #[schemars(range(min = 1, max = MAX_OVERRIDE_SHARDS))]
    pub override_shards: u32,
    /// Largest shard count the operator may grow to when a shard would pass 900 KiB: it
    /// doubles `overrideShards` up to this (the proxies must mount this many; the chart
    /// does). Unset, or below `overrideShards`: no growth. When a shard still does not fit,
    /// pods are left out of it (fair share by namespace) and counted in the status
    /// (`overridesTruncated`); the main ConfigMap is always written.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_OVERRIDE_SHARDS))]
    pub max_override_shards: Option<u32>,
    /// Only pods on nodes with all these labels get their annotation overrides. Empty: all nodes.
    pub node_selector: BTreeMap<String, String>,
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec {
            config_map_name: "dot-proxy-config".into(),
            override_shards: 8,
            max_override_shards: None,
            node_selector: BTreeMap::new(),
        }
    }
}
