//! Rendering the pods' annotations into the override shards.

use super::*;

const QPS: &str = "dns.dot-proxy.io/qps";
const BURST: &str = "dns.dot-proxy.io/burst";
const EXEMPT: &str = "dns.dot-proxy.io/rate-limit-exempt";
const GROUP: &str = "dns.dot-proxy.io/upstream-group";

#[test]
fn annotated_pods_become_host_entries_in_their_nodes_shard() {
    let mut spec = spec_from(MINIMAL);
    // "routed" is sent to the plain cluster group for every name: that needs the opt-in.
    spec.allow_plain_default = true;
    let pods = vec![
        pod(
            "limited",
            "node-a",
            &["10.244.1.5", "fd00:10:244::5"],
            &[(QPS, "50"), (BURST, "100")],
        ),
        pod("exempt", "node-a", &["10.244.1.6"], &[(EXEMPT, "true")]),
        pod("routed", "node-b", &["10.244.2.7"], &[(GROUP, "cluster")]),
        pod(
            "both",
            "node-b",
            &["10.244.2.8"],
            &[(GROUP, "public"), (QPS, "5")],
        ),
        pod("no-op", "node-b", &["10.244.2.9"], &[(EXEMPT, "false")]),
    ];
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.stats.annotated_pods, 5);
    assert_eq!(r.stats.pods_applied, 4);
    assert_eq!(r.stats.entries, 6);
    assert_eq!(r.stats.nodes, 2);

    let a = node_overrides(&r, "node-a")
        .expect("parses")
        .expect("node-a present");
    let cidrs: Vec<_> = a
        .rate_limits
        .iter()
        .map(|o| (o.cidr.to_string(), o.qps, o.burst, o.exempt))
        .collect();
    assert_eq!(
        cidrs,
        [
            ("10.244.1.5/32".to_string(), Some(50.0), Some(100), false),
            ("10.244.1.6/32".to_string(), None, None, true),
            (
                "fd00:10:244::5/128".to_string(),
                Some(50.0),
                Some(100),
                false
            ),
        ]
    );
    assert!(a.client_groups.is_empty());
    let b = node_overrides(&r, "node-b")
        .expect("parses")
        .expect("node-b present");
    let groups: Vec<_> = b
        .client_groups
        .iter()
        .map(|c| (c.cidr.to_string(), c.group.as_str()))
        .collect();
    assert_eq!(
        groups,
        [
            ("10.244.2.7/32".to_string(), "cluster"),
            ("10.244.2.8/32".to_string(), "public")
        ]
    );
    assert_eq!(b.rate_limits.len(), 1);

    // Each node sits in shard fnv1a64(node) % 4, and nowhere else.
    for node in ["node-a", "node-b"] {
        for (i, s) in r.shards.iter().enumerate() {
            let here = parse_shard(&s.data).expect("parses").contains_key(node);
            assert_eq!(
                here,
                i == (fnv1a64(node.as_bytes()) % 4) as usize,
                "{node} in shard {i}"
            );
        }
    }
}

#[test]
fn shard_entries_pass_the_proxys_own_checks() {
    // The proxy validates overrides with the same rules as rate_limit.overrides and
    // client_groups in its config; fold every shard entry into one and validate it.
    let mut spec = example();
    spec.allow_plain_default = true; // pods sent to the plain cluster group
                                     // Grant everything to the pods' namespace (apps): this test is about entry shapes.
    let apps = crate::resource::NamespaceGrant {
        namespaces: vec!["apps".into()],
        namespace_selector: None,
    };
    spec.annotation_grants.rate_limit_exempt = apps.clone();
    for g in &mut spec.upstream_groups {
        g.granted_to = apps.clone();
    }
    let pods: Vec<PodInfo> = (0..200)
        .map(|i| {
            let ip = format!("10.244.{}.{}", i / 200, i % 200 + 2);
            let ann: &[(&str, &str)] = match i % 4 {
                0 => &[(QPS, "20"), (BURST, "40")],
                1 => &[(EXEMPT, "true")],
                2 => &[(GROUP, "cloudflare")],
                _ => &[(GROUP, "cluster"), (QPS, "2.5")],
            };
            pod(&format!("p{i}"), &format!("node-{}", i % 17), &[&ip], ann)
        })
        .collect();
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    let mut cfg = Config::from_yaml(&r.config.data).expect("parses");
    for s in &r.shards {
        for (_, o) in parse_shard(&s.data).expect("parses") {
            cfg.rate_limit.overrides.extend(o.rate_limits);
            cfg.client_groups.extend(o.client_groups);
        }
    }
    assert_eq!(
        cfg.rate_limit.overrides.len() + cfg.client_groups.len(),
        r.stats.entries
    );
    assert_eq!(r.stats.entries, 250);
    cfg.validate().expect("every entry is valid for the proxy");
}

#[test]
fn invalid_annotations_are_reported_and_never_break_other_pods() {
    let spec = spec_from(MINIMAL);
    let pods = vec![
        pod("good", "node-a", &["10.244.1.5"], &[(QPS, "50")]),
        pod(
            "bad-qps",
            "node-a",
            &["10.244.1.6"],
            &[(QPS, "lots"), (BURST, "9")],
        ),
        pod(
            "bad-group",
            "node-a",
            &["10.244.1.7"],
            &[(GROUP, "secret-resolvers")],
        ),
        pod(
            "bad-exempt",
            "node-a",
            &["10.244.1.8"],
            &[(EXEMPT, "yes please")],
        ),
        // Every name of this pod would go out as plain DNS, and allowPlainDefault is off.
        pod(
            "plain-group",
            "node-a",
            &["10.244.1.9"],
            &[(GROUP, "cluster"), (QPS, "7")],
        ),
    ];
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("still renders");
    let msgs: Vec<_> = r
        .problems
        .iter()
        .map(|p| (p.name.as_str(), p.uid.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert!(
        msgs[3].0 == "plain-group"
            && msgs[3]
                .2
                .contains("upstream-group=\"cluster\" ignored: group \"cluster\" is plain DNS"),
        "{msgs:?}"
    );
    assert_eq!(msgs[0].0, "bad-exempt");
    assert_eq!(msgs[0].1, "uid-bad-exempt");
    assert!(
        msgs[1]
            .2
            .contains("upstream-group=\"secret-resolvers\" ignored: no upstream group"),
        "{msgs:?}"
    );
    assert!(msgs[2].2.contains("qps=\"lots\" ignored"), "{msgs:?}");
    let a = node_overrides(&r, "node-a")
        .expect("parses")
        .expect("present");
    let got: Vec<_> = a
        .rate_limits
        .iter()
        .map(|o| (o.cidr.to_string(), o.qps, o.burst))
        .collect();
    // The bad pod's valid annotation (burst) still applies.
    assert_eq!(
        got,
        [
            ("10.244.1.5/32".to_string(), Some(50.0), None),
            ("10.244.1.6/32".to_string(), None, Some(9)),
            ("10.244.1.9/32".to_string(), Some(7.0), None)
        ]
    );
    assert!(a.client_groups.is_empty());
}

#[test]
fn pod_removal_and_ip_change_update_only_that_shard() {
    let spec = spec_from(MINIMAL);
    let mut pods: Vec<PodInfo> = (0..40)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("node-{}", i % 8),
                &[&format!("10.244.0.{}", i + 10)],
                &[(QPS, "10")],
            )
        })
        .collect();
    let before = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");

    // Pod p3 goes away.
    let gone = pods.remove(3);
    let after = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    let node = gone.node_name.clone().expect("node");
    let shard = shard_of(&node, 4) as usize;
    for i in 0..4 {
        assert_eq!(before.shards[i] == after.shards[i], i != shard, "shard {i}");
    }
    assert_eq!(before.config, after.config);
    assert_ne!(before.overrides_hash, after.overrides_hash);
    let entries = node_overrides(&after, &node)
        .expect("parses")
        .expect("node still has pods");
    assert!(entries
        .rate_limits
        .iter()
        .all(|o| o.cidr.to_string() != "10.244.0.13/32"));

    // p5 gets a new IP: the old entry goes, the new one comes.
    pods[4].ips = vec!["10.244.9.9".parse().expect("ip")];
    assert_eq!(pods[4].name, "p5");
    let moved = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    let e = node_overrides(&moved, "node-5")
        .expect("parses")
        .expect("present");
    let cidrs: Vec<_> = e.rate_limits.iter().map(|o| o.cidr.to_string()).collect();
    assert!(
        cidrs.contains(&"10.244.9.9/32".to_string())
            && !cidrs.contains(&"10.244.0.15/32".to_string()),
        "{cidrs:?}"
    );

    // The last pod of a node goes: the node's key goes with it.
    let lone = vec![pod("solo", "node-x", &["10.1.1.1"], &[(QPS, "1")])];
    let with = render("default", &spec, &lone, &no_nodes(), &no_ns()).expect("renders");
    assert!(node_overrides(&with, "node-x").expect("parses").is_some());
    let without = render("default", &spec, &[], &no_nodes(), &no_ns()).expect("renders");
    assert!(node_overrides(&without, "node-x")
        .expect("parses")
        .is_none());
}

#[test]
fn output_does_not_depend_on_pod_order() {
    let spec = spec_from(MINIMAL);
    let mut pods: Vec<PodInfo> = (0..50)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("node-{}", i % 3),
                &[&format!("10.3.0.{}", 200 - i)],
                &[(QPS, "3")],
            )
        })
        .collect();
    let a = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    pods.reverse();
    let b = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(a, b);
}

#[test]
fn node_selector_pending_pods_host_network_and_duplicate_ips() {
    let mut spec = spec_from(MINIMAL);
    spec.target.node_selector =
        [("dns.dot-proxy.io/enabled".to_string(), "true".to_string())].into();
    let mut nodes = NodeLabels::new();
    nodes.insert("in".into(), spec.target.node_selector.clone());
    nodes.insert(
        "out".into(),
        [("pool".to_string(), "gpu".to_string())].into(),
    );
    let mut host = pod("host", "in", &["192.168.0.10"], &[(EXEMPT, "true")]);
    host.host_network = true;
    let mut unscheduled = pod("unscheduled", "in", &[], &[(QPS, "5")]);
    unscheduled.node_name = None;
    let pods = vec![
        pod("a-first", "in", &["10.9.0.1"], &[(QPS, "5")]),
        pod("b-stale", "in", &["10.9.0.1"], &[(QPS, "7")]),
        pod("elsewhere", "out", &["10.9.0.2"], &[(QPS, "5")]),
        pod("unknown-node", "gone", &["10.9.0.3"], &[(QPS, "5")]),
        pod("starting", "in", &[], &[(QPS, "5")]),
        unscheduled,
        host,
    ];
    let r = render("default", &spec, &pods, &nodes, &no_ns()).expect("renders");
    assert_eq!(r.stats.pods_not_selected, 2);
    assert_eq!(r.stats.pods_pending, 2);
    assert_eq!(r.stats.pods_applied, 1);
    assert_eq!(r.problems.len(), 1);
    assert!(r.problems[0].message.contains("hostNetwork"));
    let e = node_overrides(&r, "in").expect("parses").expect("present");
    let got: Vec<_> = e
        .rate_limits
        .iter()
        .map(|o| (o.cidr.to_string(), o.qps))
        .collect();
    assert_eq!(got, [("10.9.0.1/32".to_string(), Some(5.0))]);
    assert!(node_overrides(&r, "out").expect("parses").is_none());
}

/// Issue 16: rate-limit annotations while `rateLimit.enabled` is false do nothing; the pod
/// is reported (a Warning Event, once) and counted for the AnnotationsIgnored condition.
#[test]
fn rate_limit_annotations_while_limiting_is_off_are_reported() {
    let pods = [
        pod(
            "limited",
            "node-1",
            &["10.1.0.5"],
            &[("dns.dot-proxy.io/qps", "50")],
        ),
        pod(
            "routed",
            "node-1",
            &["10.1.0.6"],
            &[("dns.dot-proxy.io/upstream-group", "public")],
        ),
    ];
    let mut spec = spec_from(MINIMAL);
    spec.rate_limit.enabled = false;
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(r.stats.rate_limit_annotations_ignored, 1);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].name, "limited");
    assert_eq!(r.problems[0].message, RATE_LIMIT_DISABLED_MESSAGE);
    // With limiting on: nothing to report.
    let spec = spec_from(MINIMAL);
    assert!(spec.rate_limit.enabled);
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(r.stats.rate_limit_annotations_ignored, 0);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

/// Issue 27, part 3: pods that overflow a shard must not stop the main ConfigMap. Every
/// node hashes to the one shard; the main config still renders, the overflow is left out
/// and counted.
#[test]
fn a_shard_overflow_still_renders_the_main_config() {
    let mut spec = spec_from(MINIMAL);
    spec.allow_plain_default = true;
    spec.target.override_shards = 1;
    let pods: Vec<PodInfo> = (0..12_000u32)
        .map(|i| {
            let ip = IpAddr::from([10, 200, (i / 250) as u8, (i % 250) as u8]).to_string();
            pod(
                &format!("p{i:05}"),
                &format!("node-{}", i % 100),
                &[&ip],
                &[(QPS, "10"), (BURST, "20"), (GROUP, "cluster")],
            )
        })
        .collect();
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns())
        .expect("the main config renders even when the overrides overflow");
    let cfg = Config::from_yaml(&r.config.data).expect("the proxy parses the main config");
    assert_eq!(
        cfg.overrides.shards,
        Some(1),
        "no growth without maxOverrideShards"
    );
    assert_eq!(r.shards.len(), 1);
    assert!(r.stats.largest_shard_bytes <= MAX_SHARD_BYTES);
    // Some pods are left out, counted and named; the rest are in.
    let cut = r.stats.overrides_truncated;
    assert!(cut > 0 && cut < 12_000, "{cut}");
    assert_eq!(r.truncated.len(), cut);
    assert_eq!(r.stats.pods_applied + cut, 12_000);
    // One namespace: fair share leaves out its last pods in name order.
    let mut want: Vec<String> = (12_000 - cut as u32..12_000)
        .map(|i| format!("apps/p{i:05}"))
        .collect();
    want.sort();
    assert_eq!(r.truncated, want);
    // Deterministic.
    assert_eq!(
        render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders"),
        r
    );

    // Allowed to grow: two shards hold everything, and config.yaml says so.
    spec.target.max_override_shards = Some(8);
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(r.stats.overrides_truncated, 0);
    assert_eq!(r.stats.pods_applied, 12_000);
    assert_eq!(r.shards.len(), 2);
    assert_eq!(r.shards[1].name, "dot-proxy-config-overrides-1");
    let cfg = Config::from_yaml(&r.config.data).expect("parses");
    assert_eq!(cfg.overrides.shards, Some(2));
    assert!(node_overrides(&r, "node-7").expect("parses").is_some());
}

/// Issue 27, part 2: annotations are privileges. With no grant in the spec, exemption and a
/// rate above the default are refused (the pod stays at the default), a rate below the
/// default is kept, and each refusal is reported.
#[test]
fn ungranted_exemption_and_raised_rate_are_refused() {
    let tenant = |name: &str, ip: &str, ann: &[(&str, &str)]| {
        PodInfo::scheduled("tenant", name, "node-1", &[ip], ann)
    };
    let pods = [
        tenant("exempt", "10.1.0.5", &[(EXEMPT, "true")]),
        tenant("greedy", "10.1.0.6", &[(QPS, "1000000"), (BURST, "20")]),
        tenant("router", "10.1.0.7", &[(GROUP, "public")]),
    ];
    let mut spec = spec_from(MINIMAL);
    let r = render("default", &spec, &pods, &no_nodes(), &no_ns()).expect("renders");
    let e = node_overrides(&r, "node-1")
        .expect("parses")
        .unwrap_or_default();
    let got: Vec<_> = e
        .rate_limits
        .iter()
        .map(|o| (o.cidr.to_string(), o.exempt, o.qps, o.burst))
        .collect();
    // The exempt pod asked for nothing else: no entry at all. The greedy pod keeps its
    // burst of 20 (below the default 400) and loses its qps (above the default 200).
    assert_eq!(got, [("10.1.0.6/32".to_string(), false, None, Some(20))]);
    assert!(e.client_groups.is_empty(), "public is granted to apps only");
    let refused: Vec<_> = r
        .problems
        .iter()
        .map(|p| (p.name.as_str(), p.reason, p.message.as_str()))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    for (p, name) in refused.iter().zip(["exempt", "greedy", "router"]) {
        assert_eq!((p.0, p.1), (name, ANNOTATION_NOT_GRANTED), "{refused:?}");
        assert!(
            p.2.contains("not granted to namespace \"tenant\""),
            "{refused:?}"
        );
    }

    // Granted by namespace labels: everything applies, nothing is reported.
    let sel: crate::resource::NamespaceSelector =
        serde_json::from_value(serde_json::json!({"matchLabels": {"tier": "trusted"}}))
            .expect("selector");
    spec.annotation_grants.rate_limit_exempt.namespace_selector = Some(sel.clone());
    spec.annotation_grants.rate_above_default.namespace_selector = Some(sel.clone());
    spec.upstream_groups[0].granted_to.namespace_selector = Some(sel);
    let ns: NamespaceLabels = [(
        "tenant".to_string(),
        [("tier".to_string(), "trusted".to_string())].into(),
    )]
    .into();
    let r = render("default", &spec, &pods, &no_nodes(), &ns).expect("renders");
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let e = node_overrides(&r, "node-1")
        .expect("parses")
        .expect("entries");
    let got: Vec<_> = e
        .rate_limits
        .iter()
        .map(|o| (o.cidr.to_string(), o.exempt, o.qps, o.burst))
        .collect();
    assert_eq!(
        got,
        [
            ("10.1.0.5/32".to_string(), true, None, None),
            (
                "10.1.0.6/32".to_string(),
                false,
                Some(1_000_000.0),
                Some(20)
            )
        ]
    );
    assert_eq!(e.client_groups.len(), 1);

    // A selector that does not parse makes the resource invalid, naming the field.
    spec.annotation_grants.rate_limit_exempt.namespace_selector = Some(
        serde_json::from_value(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}))
            .expect("selector"),
    );
    let m = invalid_messages(render("default", &spec, &pods, &no_nodes(), &ns));
    assert!(
        m.iter()
            .any(|m| m.starts_with("spec.annotationGrants.rateLimitExempt.namespaceSelector")),
        "{m:?}"
    );
}
