//! The example resource, end to end: it parses into the Rust type, renders, and the proxy's
//! own loader (the code behind `dot-proxy check-config` and the override-shard merge) accepts
//! the files laid out as the chart mounts them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dot_proxy_config::{Config, Policy, Protocol};
use dot_proxy_operator::cluster::{NodeLabels, PodInfo};
use dot_proxy_operator::render::{render, Rendered};

use crate::support::{example, temp_dir};
use dot_proxy_operator::render::annotations::{BURST, EXEMPT, GROUP, QPS};

fn pods() -> Vec<PodInfo> {
    let pod = |name: &str, node: &str, ips: &[&str], ann: &[(&str, &str)]| {
        PodInfo::scheduled("shop", name, node, ips, ann)
    };
    vec![
        pod(
            "crawler",
            "node-1",
            &["10.244.1.4", "fd00:10:244:1::4"],
            &[(QPS, "1000"), (BURST, "2000")],
        ),
        // The example grants exemption to the namespace monitoring only.
        PodInfo::scheduled(
            "monitoring",
            "resolver-test",
            "node-1",
            &["10.244.1.5"],
            &[(EXEMPT, "true")],
        ),
        pod(
            "payments",
            "node-2",
            &["10.244.2.9"],
            &[(GROUP, "cloudflare")],
        ),
        pod("typo", "node-2", &["10.244.2.10"], &[(GROUP, "cloudfare")]),
    ]
}

/// Writes config.yaml and the shards where the chart mounts them: the config in one
/// directory, the shards in `overrides.dir`, which is pointed at the temp copy.
fn lay_out(r: &Rendered) -> (PathBuf, PathBuf) {
    let dir = temp_dir("example");
    let overrides = dir.join("overrides");
    std::fs::create_dir_all(&overrides).expect("mkdir");
    for s in &r.shards {
        std::fs::write(overrides.join(&s.key), &s.data).expect("write shard");
    }
    let mut cfg = Config::from_yaml(&r.config.data).expect("parses");
    assert_eq!(
        cfg.overrides.dir.as_deref(),
        Some(std::path::Path::new("/etc/dot-proxy/overrides"))
    );
    cfg.overrides.dir = Some(overrides.clone());
    let path = dir.join("config.yaml");
    std::fs::write(&path, &r.config.data).expect("write config");
    let relocated = dir.join("config-relocated.yaml");
    std::fs::write(&relocated, cfg.to_yaml().expect("yaml")).expect("write relocated config");
    (path, relocated)
}

#[test]
fn the_example_parses_into_the_rust_type() {
    let d = example();
    assert_eq!(d.metadata.name.as_deref(), Some("default"));
    let s = &d.spec;
    let public = &s.upstream_groups[0];
    assert_eq!(public.policy, Policy::Fastest);
    let servers: Vec<_> = public
        .servers
        .iter()
        .map(|v| (v.address.to_string(), v.tls_name.as_deref()))
        .collect();
    assert_eq!(
        servers,
        [
            ("1.1.1.1:853".to_string(), Some("cloudflare-dns.com")),
            ("1.0.0.1:853".to_string(), Some("cloudflare-dns.com")),
            ("8.8.8.8:853".to_string(), Some("dns.google")),
            ("8.8.4.4:853".to_string(), Some("dns.google")),
        ]
    );
    let cluster = s
        .upstream_groups
        .iter()
        .find(|g| g.name == "cluster")
        .expect("cluster group");
    assert_eq!(cluster.servers[0].address.to_string(), "10.96.0.10:53");
    assert_eq!(cluster.servers[0].protocol, Protocol::Plain);
    let zones: BTreeMap<_, _> = s
        .zones
        .iter()
        .map(|z| (z.zone.as_str(), z.group.as_str()))
        .collect();
    assert_eq!(zones["."], "public");
    assert_eq!(zones["cluster.local"], "cluster");
    assert_eq!(zones["10.in-addr.arpa"], "cluster");
    assert_eq!(zones["d.f.ip6.arpa"], "cluster");
}

#[test]
fn the_example_renders_into_files_the_proxy_loads() {
    let d = example();
    // shop is labelled for a high rate and for the cloudflare group (the example grants
    // both by namespace selector).
    let labels: BTreeMap<String, String> = [
        ("dns.dot-proxy.io/rate", "high"),
        ("dns.dot-proxy.io/upstream-cloudflare", "granted"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let namespaces = BTreeMap::from([("shop".to_string(), labels)]);
    let r = render("default", &d.spec, &pods(), &NodeLabels::new(), &namespaces).expect("renders");
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].message.contains("cloudfare"));
    // Without the labels, shop may neither raise its rate nor pick cloudflare.
    let r2 = render(
        "default",
        &d.spec,
        &pods(),
        &NodeLabels::new(),
        &BTreeMap::new(),
    )
    .expect("renders");
    let refused: Vec<_> = r2
        .problems
        .iter()
        .filter(|p| p.reason == "AnnotationNotGranted")
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        refused,
        ["crawler", "crawler", "payments"],
        "{:?}",
        r2.problems
    );

    let (path, relocated) = lay_out(&r);
    // `dot-proxy check-config config.yaml`.
    let cfg = Config::load(&path).expect("check-config accepts the rendered config");
    assert_eq!(
        cfg.overrides.node_name, None,
        "the proxy takes its node name from DOT_PROXY_NODE_NAME"
    );

    // What the proxy does at start and on every reload on node-1 and node-2: merge its own
    // entries from every shard, then validate.
    for (node, limits, groups) in [("node-1", 3, 0), ("node-2", 0, 1), ("node-3", 0, 0)] {
        let mut cfg = Config::load(&relocated).expect("loads");
        cfg.overrides.node_name = Some(node.into());
        dot_proxy_config::merge_overrides(&mut cfg).expect("the proxy reads the shards");
        cfg.validate().expect("and the merged config is valid");
        assert_eq!(cfg.rate_limit.overrides.len(), limits, "{node}");
        assert_eq!(cfg.client_groups.len(), groups, "{node}");
    }
}
