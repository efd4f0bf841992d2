//! What the operator reports back on a `DotProxyConfig`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most paths `status.unknownFields` lists, and the longest one (the rest is cut).
pub const MAX_UNKNOWN_FIELDS: usize = 64;
pub const MAX_UNKNOWN_FIELD_LEN: usize = 512;

/// Condition type: the current spec is rendered and written.
pub const READY: &str = "Ready";
/// Condition type: the current spec (or the overrides it produces) cannot be rendered; the
/// message says why. The last good ConfigMaps stay as they were.
pub const INVALID: &str = "Invalid";
/// Condition type: some pods carry annotations that have no effect with the current spec
/// (rate-limit annotations while `rateLimit.enabled` is false); the message says how many
/// and what to change. Each such pod also gets one Warning Event.
pub const ANNOTATIONS_IGNORED: &str = "AnnotationsIgnored";

/// Condition type: some pods' overrides were left out because their shard was full even at
/// `target.maxOverrideShards`; the message says how many and names the first ones. The main
/// ConfigMap and every other entry are written regardless.
pub const OVERRIDES_TRUNCATED: &str = "OverridesTruncated";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DotProxyConfigStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The release whose operator acts on this resource (the `dns.dot-proxy.io/release`
    /// label, or the first release to claim an unlabeled resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,

    /// `Ready` and `Invalid`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The main ConfigMap last written (key `config.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,

    /// SHA-256 (hex) of the `config.yaml` last written; the same value is the ConfigMap's
    /// `dns.dot-proxy.io/config-hash` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,

    /// The override shard ConfigMaps last written, in shard order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_config_maps: Vec<String>,

    /// SHA-256 (hex) over the shard hashes, in shard order: one fingerprint of every override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides_hash: Option<String>,

    /// Pods whose annotation overrides are in the shards.
    #[serde(default)]
    pub pod_overrides: u32,

    /// Pods with at least one annotation value that was ignored (each got a Warning Event).
    #[serde(default)]
    pub pods_with_invalid_annotations: u32,

    /// Pods with at least one annotation their namespace is not granted
    /// (`spec.annotationGrants`, an upstream group's `grantedTo`): refused, each pod got a
    /// Warning Event `AnnotationNotGranted`.
    #[serde(default)]
    pub pods_with_refused_annotations: u32,

    /// Size in bytes of the largest shard (limit: 900 KiB).
    #[serde(default)]
    pub largest_shard_bytes: u64,

    /// Pods whose overrides were left out because their shard was full (see the
    /// `OverridesTruncated` condition).
    #[serde(default)]
    pub overrides_truncated: u32,

    /// Fields of the spec this operator does not know, as paths (`spec.cache.newSetting`):
    /// written for a newer CRD than the operator's (after a rollback, say). They are ignored;
    /// everything else is applied. Upgrade the operator, or remove them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_UNKNOWN_FIELDS), inner(length(max = MAX_UNKNOWN_FIELD_LEN)))]
    pub unknown_fields: Vec<String>,
}
