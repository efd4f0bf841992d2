//! A generated cluster the size the operator must handle: 5,000 nodes, 150,000 pods, 20,000
//! of them annotated (a quarter dual-stack). Prints the figures quoted in docs/operator.md
//! (`cargo test -p dot-proxy-operator --release --test integration scale -- --nocapture`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use dot_proxy_config::Config;
use dot_proxy_operator::cluster::{
    ClusterState, NodeLabels, PodIpLite, PodLite, PodLiteSpec, PodLiteStatus,
};
use dot_proxy_operator::render::{parse_shard, render, MAX_SHARD_BYTES};
use kube::api::ObjectMeta;
use kube::runtime::watcher::Event;

use crate::support::{example, temp_dir};

const NODES: u32 = 5_000;
const PODS: u32 = 150_000;
const ANNOTATED: u32 = 20_000;

fn node_name(i: u32) -> String {
    format!(
        "ip-10-{}-{}-{}.eu-west-1.compute.internal",
        i / 65_536,
        (i / 256) % 256,
        i % 256
    )
}

/// Pod `i`: on node `i % NODES`, the `k = i / NODES`th of its 30 pods. Pods with `k` in
/// {0, 1, 15, 16} are annotated (4 per node, 20,000 in all), one of each kind; the fourth
/// kind is dual-stack.
fn pod(i: u32) -> PodLite {
    let v4 = Ipv4Addr::from(0x0a40_0000 + i);
    let mut ips = vec![PodIpLite { ip: v4.to_string() }];
    let mut annotations = BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        format!("app-{}", i % 300),
    )]);
    let k = i / NODES;
    if k % 15 < 2 {
        let kind = (k / 15) * 2 + k % 15;
        let set: &[(&str, &str)] = match kind {
            0 => &[
                ("dns.dot-proxy.io/qps", "50"),
                ("dns.dot-proxy.io/burst", "100"),
            ],
            1 => &[("dns.dot-proxy.io/rate-limit-exempt", "true")],
            2 => &[("dns.dot-proxy.io/upstream-group", "cloudflare")],
            _ => &[
                ("dns.dot-proxy.io/upstream-group", "public"),
                ("dns.dot-proxy.io/qps", "12.5"),
            ],
        };
        annotations.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if kind == 3 {
            ips.push(PodIpLite {
                ip: Ipv6Addr::from(0xfd00_0010_0244_0000_0000_0000_0000_0000u128 + u128::from(i))
                    .to_string(),
            });
        }
    }
    PodLite {
        metadata: ObjectMeta {
            name: Some(format!("pod-{i}")),
            namespace: Some(format!("ns-{}", i % 200)),
            uid: Some(format!("00000000-0000-0000-0000-{i:012}")),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: PodLiteSpec {
            node_name: Some(node_name(i % NODES)),
            host_network: Some(false),
        },
        status: PodLiteStatus {
            phase: Some("Running".into()),
            pod_ip: Some(v4.to_string()),
            pod_ips: Some(ips),
        },
    }
}

#[test]
fn five_thousand_nodes_150k_pods_20k_annotated() {
    // The watch side: 150,000 pods folded in, only the annotated ones kept.
    let started = Instant::now();
    let mut state = ClusterState::default();
    state.apply_pod(Event::Init);
    for i in 0..PODS {
        state.apply_pod(Event::InitApply(pod(i)));
    }
    state.apply_pod(Event::InitDone);
    let ingest = started.elapsed();
    let snapshot = state.snapshot();
    assert_eq!(snapshot.pods.len(), ANNOTATED as usize);
    let dual = snapshot.pods.iter().filter(|p| p.ips.len() == 2).count();

    // The render.
    // Every namespace granted everything: the annotations below all apply.
    let mut spec = example().spec;
    let all = dot_proxy_operator::resource::NamespaceGrant {
        namespaces: Vec::new(),
        namespace_selector: Some(Default::default()),
    };
    spec.annotation_grants.rate_limit_exempt = all.clone();
    spec.annotation_grants.rate_above_default = all.clone();
    for g in &mut spec.upstream_groups {
        g.granted_to = all.clone();
    }
    let nodes = NodeLabels::new();
    let render_all = || {
        let (pods, namespaces) = (&snapshot.pods, &snapshot.namespaces);
        render("default", &spec, pods, &nodes, namespaces).expect("renders")
    };
    let started = Instant::now();
    let r = render_all();
    let took = started.elapsed();

    let s = &r.stats;
    assert_eq!(s.annotated_pods, ANNOTATED as usize);
    assert_eq!(s.pods_applied, ANNOTATED as usize);
    // Per node: one pod of each kind; the dual-stack one has a limit and a group on two IPs.
    assert_eq!(s.entries, 35_000);
    assert_eq!(dual, 5_000);
    assert!(r.problems.is_empty());
    assert_eq!(r.shards.len(), 8);
    let sizes: Vec<usize> = r.shards.iter().map(|c| c.data.len()).collect();
    let (min, max) = (
        sizes.iter().copied().min().unwrap_or(0),
        sizes.iter().copied().max().unwrap_or(0),
    );
    assert!(max <= MAX_SHARD_BYTES, "largest shard {max} bytes");
    assert!(max < 1024 * 1024 - 4096, "room for metadata under 1 MiB");
    let per_pod = s.total_shard_bytes as f64 / f64::from(ANNOTATED);
    let capacity = (MAX_SHARD_BYTES as f64 * 8.0 / per_pod) as u64;

    println!("scale: {NODES} nodes, {PODS} pods, {ANNOTATED} annotated ({dual} dual-stack)");
    println!(
        "scale: watch fold of {PODS} pods: {ingest:?}; kept {} pods",
        snapshot.pods.len()
    );
    println!(
        "scale: render: {took:?}; {} entries on {} nodes",
        s.entries, s.nodes
    );
    println!("scale: config.yaml {} bytes", r.config.data.len());
    println!("scale: shards (8): total {} bytes, smallest {min}, largest {max} (limit {MAX_SHARD_BYTES})", s.total_shard_bytes);
    println!(
        "scale: {per_pod:.0} bytes per annotated pod: 8 shards hold about {capacity} such pods"
    );

    // Debug builds (the default `cargo test`) are several times slower than release.
    let budget = if cfg!(debug_assertions) {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(1)
    };
    assert!(took < budget, "render took {took:?}");

    // A node's proxy reads its entries back from its shard with the proxy's own code.
    let dir = temp_dir("scale");
    for c in &r.shards {
        std::fs::write(dir.join(&c.key), &c.data).expect("write shard");
    }
    let mut base = Config::from_yaml(&r.config.data).expect("config parses");
    base.overrides.dir = Some(dir.clone());
    for n in [0, 1, 2_499, 4_999] {
        let mut cfg = base.clone();
        cfg.overrides.node_name = Some(node_name(n));
        dot_proxy_config::merge_overrides(&mut cfg).expect("shards load");
        cfg.validate().expect("valid");
        assert_eq!(
            cfg.rate_limit.overrides.len() + cfg.client_groups.len(),
            7,
            "node {n}"
        );
    }
    let total: usize = r
        .shards
        .iter()
        .map(|c| parse_shard(&c.data).expect("parses").len())
        .sum();
    assert_eq!(total, NODES as usize);
    let _ = std::fs::remove_dir_all(&dir);

    // Determinism: an identical cluster renders identically.
    let again = render_all();
    assert_eq!(again.overrides_hash, r.overrides_hash);
}
