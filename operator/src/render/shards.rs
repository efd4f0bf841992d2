//! Spreading per-node overrides over a fixed number of ConfigMaps.
//!
//! A ConfigMap holds at most 1 MiB, and 20,000 annotated pods do not fit in one. Each node's
//! overrides go, whole, to shard `fnv1a64(node name) % shards`: the hash is stable across
//! runs, versions and platforms (unlike `std`'s randomly seeded hasher), so a node's entries
//! stay in the same shard and a pod change rewrites only that one ConfigMap.
//!
//! Overrides never stop the render (issue 27): when a shard would pass [`MAX_SHARD_BYTES`],
//! the shard count doubles, up to `target.maxOverrideShards` (what the proxies mount); if a
//! shard still overflows at that count, pods are left out of it in a fixed order (see
//! [`removal_order`]) until it fits, and they are counted.

/// Largest shard content accepted: 900 KiB, leaving room under the API server's 1 MiB for
/// the object's metadata.
pub const MAX_SHARD_BYTES: usize = 900 * 1024;

pub use crate::resource::MAX_OVERRIDE_SHARDS;

// One definition, shared with the proxy, which finds its own shard with it.
pub use dot_proxy_config::{fnv1a64, shard_key, shard_of};

use std::collections::{BTreeMap, BinaryHeap};

use dot_proxy_config::{ClientGroup, OverridesFile, RateLimitOverride};

/// One pod's entries, as rendered (its node, namespace and name, and what goes into its
/// node's overrides).
#[derive(Clone, Debug, PartialEq)]
pub struct PodEntries {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub rate_limits: Vec<RateLimitOverride>,
    pub client_groups: Vec<ClientGroup>,
}

impl PodEntries {
    pub fn len(&self) -> usize {
        self.rate_limits.len() + self.client_groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shards of one render: their serialized files, and which pods were left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The shard count used (written to `config.yaml` as `overrides.shards`).
    pub count: u32,
    /// Shard `i`'s `shard-<i>.yaml`, for every `i < count`.
    pub files: Vec<String>,
    /// Nodes with at least one entry, per shard.
    pub nodes: Vec<usize>,
    /// Indices (into the entries given) of pods left out because their shard was full,
    /// sorted.
    pub left_out: Vec<usize>,
}

/// The shard counts tried, in order: `base`, doubled while below `max`, then `max`.
/// Doubling splits each shard in two (`h % 2n` is `h % n` or that plus `n`), so growing
/// moves half of each shard's nodes and no node between the old shards.
pub fn candidates(base: u32, max: u32) -> Vec<u32> {
    let base = base.max(1);
    let max = max.max(base);
    let mut out = vec![base];
    let mut n = base;
    while n < max {
        n = n.saturating_mul(2).min(max);
        out.push(n);
    }
    out
}

/// Lays `entries` out over the fewest shards of [`candidates`] in which every shard fits
/// `limit` bytes; at the largest count, pods are left out of a shard still too large, in
/// [`removal_order`], until it fits. Never fails for size.
pub fn layout(entries: &[PodEntries], base: u32, max: u32, limit: usize) -> Result<Layout, String> {
    let counts = candidates(base, max);
    let last = counts.len() - 1;
    for (ci, &count) in counts.iter().enumerate() {
        let members = members(entries, count);
        let mut files = Vec::with_capacity(members.len());
        let mut nodes = Vec::with_capacity(members.len());
        let mut left_out = Vec::new();
        let mut fits = true;
        for (i, m) in members.iter().enumerate() {
            let (file, n) = serialize(entries, m, |_| true, i)?;
            if file.len() <= limit {
                files.push(file);
                nodes.push(n);
                continue;
            }
            fits = false;
            if ci < last {
                break;
            }
            // The largest count and still too large: leave out the fewest pods, in the
            // fixed order, that make the shard fit (a binary search over that order: the
            // shard only shrinks as more are left out, and with all left out it is `{}`).
            let order = removal_order(entries, m);
            let (mut lo, mut hi) = (order.len().min(1), order.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let out: std::collections::HashSet<usize> = order[..mid].iter().copied().collect();
                let (f, _) = serialize(entries, m, |k| !out.contains(&k), i)?;
                if f.len() <= limit {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let out: std::collections::HashSet<usize> = order[..lo].iter().copied().collect();
            let (f, n) = serialize(entries, m, |k| !out.contains(&k), i)?;
            files.push(f);
            nodes.push(n);
            left_out.extend(out);
        }
        if fits || ci == last {
            left_out.sort_unstable();
            return Ok(Layout {
                count,
                files,
                nodes,
                left_out,
            });
        }
    }
    unreachable!("candidates() is never empty")
}

/// The entries of each shard, as indices, for `count` shards.
fn members(entries: &[PodEntries], count: u32) -> Vec<Vec<usize>> {
    let mut m = vec![Vec::new(); count as usize];
    for (k, e) in entries.iter().enumerate() {
        if let Some(v) = m.get_mut(shard_of(&e.node, count) as usize) {
            v.push(k);
        }
    }
    m
}

/// The shard file of `members` (those `keep` keeps), and its number of nodes.
fn serialize(
    entries: &[PodEntries],
    members: &[usize],
    keep: impl Fn(usize) -> bool,
    shard: usize,
) -> Result<(String, usize), String> {
    let mut file: OverridesFile = BTreeMap::new();
    for &k in members.iter().filter(|&&k| keep(k)) {
        let Some(e) = entries.get(k) else { continue };
        if e.is_empty() {
            continue;
        }
        let o = file.entry(e.node.clone()).or_default();
        o.rate_limits.extend(e.rate_limits.iter().cloned());
        o.client_groups.extend(e.client_groups.iter().cloned());
    }
    for o in file.values_mut() {
        o.rate_limits.sort_by_key(|r| r.cidr);
        o.client_groups.sort_by_key(|c| c.cidr);
    }
    let text = serde_saphyr::to_string(&file)
        .map_err(|e| format!("cannot serialize shard {shard}: {e}"))?;
    Ok((text, file.len()))
}

/// The order in which pods are left out of a full shard: fair share by namespace. Each step
/// takes one pod from the namespace with the most pods still in the shard (on a tie, the
/// namespace last in name order), namely that namespace's last pod in name order. A
/// namespace that floods a shard loses its own pods first; a namespace with a few pods
/// keeps them until every namespace is down to as few. Deterministic: it depends only on
/// the pods' namespaces and names.
pub fn removal_order(entries: &[PodEntries], members: &[usize]) -> Vec<usize> {
    let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &k in members {
        if let Some(e) = entries.get(k) {
            by_ns.entry(e.namespace.as_str()).or_default().push(k);
        }
    }
    for v in by_ns.values_mut() {
        v.sort_by(|a, b| entries[*a].name.cmp(&entries[*b].name));
    }
    let mut heap: BinaryHeap<(usize, &str)> = by_ns.iter().map(|(ns, v)| (v.len(), *ns)).collect();
    let mut order = Vec::with_capacity(members.len());
    while let Some((n, ns)) = heap.pop() {
        let Some(pod) = by_ns.get_mut(ns).and_then(Vec::pop) else {
            continue;
        };
        order.push(pod);
        if n > 1 {
            heap.push((n - 1, ns));
        }
    }
    order
}

/// Name of shard `i` of the main ConfigMap `config_map`.
pub fn shard_name(config_map: &str, i: u32) -> String {
    format!("{config_map}-overrides-{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ns: &str, name: &str, node: &str, last: u8) -> PodEntries {
        PodEntries {
            namespace: ns.into(),
            name: name.into(),
            node: node.into(),
            rate_limits: vec![RateLimitOverride {
                cidr: dot_proxy_config::Cidr::new([10, 0, 0, last].into(), 32),
                qps: Some(5.0),
                burst: None,
                exempt: false,
            }],
            client_groups: Vec::new(),
        }
    }

    #[test]
    fn candidates_double_up_to_the_maximum() {
        assert_eq!(candidates(8, 8), [8]);
        assert_eq!(
            candidates(8, 4),
            [8],
            "a maximum below the base is the base"
        );
        assert_eq!(candidates(8, 64), [8, 16, 32, 64]);
        assert_eq!(candidates(8, 20), [8, 16, 20]);
        assert_eq!(candidates(0, 1), [1]);
    }

    #[test]
    fn removal_is_fair_share_by_namespace() {
        let e = vec![
            entry("a", "a-1", "n", 1),
            entry("a", "a-2", "n", 2),
            entry("a", "a-3", "n", 3),
            entry("b", "b-1", "n", 4),
            entry("c", "c-1", "n", 5),
        ];
        let order = removal_order(&e, &[0, 1, 2, 3, 4]);
        let names: Vec<&str> = order.iter().map(|&k| e[k].name.as_str()).collect();
        // a has 3: it loses a-3, then a-2; then a, b, c have one each: the last name first.
        assert_eq!(names, ["a-3", "a-2", "c-1", "b-1", "a-1"]);
    }

    #[test]
    fn a_full_shard_grows_then_leaves_pods_out() {
        let e: Vec<PodEntries> = (0..40u8)
            .map(|i| {
                entry(
                    if i < 30 { "flood" } else { "quiet" },
                    &format!("p{i:02}"),
                    &format!("node-{i}"),
                    i,
                )
            })
            .collect();
        let (one, _) = serialize(&e, &(0..40).collect::<Vec<_>>(), |_| true, 0).expect("yaml");
        // Fits in one shard: no growth, nothing left out.
        let l = layout(&e, 1, 4, one.len()).expect("layout");
        assert_eq!((l.count, l.left_out.len()), (1, 0));
        // Too large for one: grows to two, then four, before leaving anything out.
        let l = layout(&e, 1, 4, one.len() * 2 / 3).expect("layout");
        assert!(
            l.count > 1 && l.left_out.is_empty(),
            "{:?}",
            (l.count, &l.left_out)
        );
        // No growth allowed: the flooding namespace loses pods, the quiet one keeps all.
        let l = layout(&e, 1, 1, one.len() / 2).expect("layout");
        assert_eq!(l.count, 1);
        assert!(!l.left_out.is_empty());
        assert!(l.files[0].len() <= one.len() / 2);
        assert!(
            l.left_out.iter().all(|&k| e[k].namespace == "flood"),
            "{:?}",
            l.left_out
        );
        // Deterministic.
        assert_eq!(layout(&e, 1, 1, one.len() / 2).expect("layout"), l);
    }

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
