//! The `overrides` section and the per-node overrides, read from the shard files the operator writes: only this node's
//! entries, from only its own shard when the shard count is known.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{ClientGroup, Config, RateLimitOverride};

/// Where per-node overrides come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct OverridesConfig {
    /// Directory of `*.yaml` files, each an [`OverridesFile`] (node name -> overrides).
    /// Watched and reloaded like the config file.
    pub dir: Option<PathBuf>,
    /// This node's name (the chart sets it from the downward API through
    /// `DOT_PROXY_NODE_NAME`). Entries for other nodes are ignored.
    pub node_name: Option<String>,
    /// How many shard files the operator spreads nodes over (it writes this). With it, the
    /// proxy reads only its own node's shard, `shard-<fnv1a64(node) % shards>.yaml`;
    /// without it, every `*.yaml` in `dir`. Either way only this node's entries count:
    /// another node's change neither reloads nor re-reads anything here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a (Fowler–Noll–Vo): for each byte, XOR it into the hash, then multiply by the
/// FNV prime (wrapping), starting from the offset basis. Stable across runs, versions and
/// platforms, unlike `std`'s seeded hasher: the operator and every proxy agree on it.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard a node's overrides go to; `shards` is at least 1 (0 is treated as 1).
pub fn shard_of(node_name: &str, shards: u32) -> u32 {
    let n = u64::from(shards.max(1));
    // The remainder is below `shards`, so it fits back into a u32.
    (fnv1a64(node_name.as_bytes()) % n) as u32
}

/// The file name of shard `i` (the one key of its ConfigMap).
pub fn shard_key(i: u32) -> String {
    format!("shard-{i}.yaml")
}

/// Overrides for the pods of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct NodeOverrides {
    pub rate_limits: Vec<RateLimitOverride>,
    pub client_groups: Vec<ClientGroup>,
}

/// One override file: node name -> that node's overrides.
pub type OverridesFile = std::collections::BTreeMap<String, NodeOverrides>;

/// Adds this node's entries from the override shards (`overrides.dir`, written by the
/// operator) to the rate-limit overrides and client groups. A missing directory is empty:
/// the operator may not have written it yet.
///
/// Per-pod entries never make the node's config invalid: the operator writes the shards
/// after the config, so for a while they may name a group the config no longer has (or has
/// made plain), and an older operator wrote entries for plain groups. Entries the config
/// cannot use (a client group naming no group, or a plain-DNS one without
/// `allow_plain_default`; a rate that is not a number above 0, a burst of 0) are left out;
/// their number is returned.
pub fn merge_overrides(cfg: &mut Config) -> Result<usize, String> {
    let Some(mine) = own_overrides(&cfg.overrides)? else {
        return Ok(0);
    };
    let before = mine.client_groups.len() + mine.rate_limits.len();
    let groups: Vec<ClientGroup> = mine
        .client_groups
        .into_iter()
        .filter(|c| cfg.client_group_usable(&c.group).is_ok())
        .collect();
    let limits: Vec<RateLimitOverride> = mine
        .rate_limits
        .into_iter()
        .filter(|o| o.problems().next().is_none())
        .collect();
    let skipped = before - groups.len() - limits.len();
    cfg.rate_limit.overrides.extend(limits);
    cfg.client_groups.extend(groups);
    Ok(skipped)
}

/// The shard files that may hold this node's entries: its own shard when the shard count
/// is known, else every `*.yaml` in the directory.
fn shard_files(o: &OverridesConfig) -> Vec<PathBuf> {
    let (Some(dir), Some(node)) = (&o.dir, &o.node_name) else {
        return Vec::new();
    };
    if let Some(n) = o.shards {
        return vec![dir.join(shard_key(shard_of(node, n)))];
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// This node's entries in the override shards (`None` without a directory, a node name,
/// or entries).
pub fn own_overrides(o: &OverridesConfig) -> Result<Option<NodeOverrides>, String> {
    let Some(node) = &o.node_name else {
        return Ok(None);
    };
    let mut found: Option<NodeOverrides> = None;
    for f in shard_files(o) {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            // The operator may not have written this shard yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", f.display())),
        };
        if text.trim().is_empty() {
            continue;
        }
        let mut shard: OverridesFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        if let Some(mine) = shard.remove(node) {
            let all = found.get_or_insert_with(NodeOverrides::default);
            all.rate_limits.extend(mine.rate_limits);
            all.client_groups.extend(mine.client_groups);
        }
    }
    Ok(found)
}
