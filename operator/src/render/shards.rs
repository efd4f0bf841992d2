//! Spreading per-node overrides over a fixed number of ConfigMaps.
//!
//! A ConfigMap holds at most 1 MiB, and 20,000 annotated pods do not fit in one. Each node's
//! overrides go, whole, to shard `fnv1a64(node name) % shards`: the hash is stable across
//! runs, versions and platforms (unlike `std`'s randomly seeded hasher), so a node's entries
//! stay in the same shard and a pod change rewrites only that one ConfigMap.

/// Largest shard content accepted: 900 KiB, leaving room under the API server's 1 MiB for
/// the object's metadata.
pub const MAX_SHARD_BYTES: usize = 900 * 1024;

// One definition, shared with the proxy, which finds its own shard with it.
pub use dot_proxy_config::{fnv1a64, shard_key, shard_of};

/// Name of shard `i` of the main ConfigMap `config_map`.
pub fn shard_name(config_map: &str, i: u32) -> String {
    format!("{config_map}-overrides-{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("node-1", 1), 0);
        assert_eq!(shard_of("node-1", 0), 0);
        assert_eq!(shard_of("node-1", 8), shard_of("node-1", 8));
        let mut counts = [0u32; 8];
        for i in 0..5000 {
            counts
                [shard_of(&format!("ip-10-0-{}-{}.ec2.internal", i / 256, i % 256), 8) as usize] +=
                1;
        }
        for c in counts {
            assert!((500..=750).contains(&c), "uneven spread {counts:?}");
        }
        assert_eq!(
            shard_name("dot-proxy-config", 3),
            "dot-proxy-config-overrides-3"
        );
        assert_eq!(shard_key(3), "shard-3.yaml");
    }
}
