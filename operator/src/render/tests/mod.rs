use std::collections::BTreeMap;
use std::net::IpAddr;

use dot_proxy_config::{
    BlockAction, BlockList, Config, Policy, PolicyConfig, RewriteRule, StaticRule,
};

use super::*;
use crate::render::annotations::{BURST, EXEMPT, GROUP, QPS};
use crate::resource::{DotProxyConfig, DotProxyConfigSpec};

const EXAMPLE: &str = include_str!("../../../examples/dotproxyconfig.yaml");

fn example() -> DotProxyConfigSpec {
    let r: DotProxyConfig = serde_saphyr::from_str(EXAMPLE).expect("example parses");
    r.spec
}

fn spec_from(yaml: &str) -> DotProxyConfigSpec {
    serde_saphyr::from_str(yaml).expect("spec parses")
}

const MINIMAL: &str = "
upstreamGroups:
  - name: public
    servers:
      - address: 1.1.1.1
        tlsName: cloudflare-dns.com
    grantedTo:
      namespaces: [apps]
  - name: cluster
    servers:
      - address: 10.96.0.10
        protocol: plain
    grantedTo:
      namespaces: [apps]
zones:
  - zone: .
    group: public
  - zone: cluster.local
    group: cluster
target:
  overrideShards: 4
rateLimit:
  enabled: true
annotationGrants:
  rateLimitExempt:
    namespaces: [apps]
  rateAboveDefault:
    namespaces: [apps]
";

fn pod(name: &str, node: &str, ips: &[&str], ann: &[(&str, &str)]) -> PodInfo {
    PodInfo::scheduled("apps", name, node, ips, ann)
}

/// Pod `p{i}` on node `node-{i % nodes}`, with one address.
fn numbered(i: usize, nodes: usize, ip: &str, ann: &[(&str, &str)]) -> PodInfo {
    pod(&format!("p{i}"), &format!("node-{}", i % nodes), &[ip], ann)
}

fn no_nodes() -> NodeLabels {
    BTreeMap::new()
}

fn no_ns() -> NamespaceLabels {
    BTreeMap::new()
}

/// The entries rendered for `node`, which must have some.
fn entries(r: &Rendered, node: &str) -> NodeOverrides {
    let e = node_overrides(r, node).expect("parses");
    e.unwrap_or_else(|| panic!("{node} present"))
}

fn cidr(s: &str) -> dot_proxy_config::Cidr {
    s.parse().expect("cidr")
}

/// A rate-limit entry of `cidr` (not an exemption).
fn limit(c: &str, qps: Option<f64>, burst: Option<u32>) -> RateLimitOverride {
    RateLimitOverride::limit(cidr(c), qps, burst)
}

fn invalid_messages(r: Result<Rendered, Invalid>) -> Vec<String> {
    match r {
        Err(Invalid::Spec(m)) => m,
        other => panic!("expected Invalid::Spec, got {other:?}"),
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dot-proxy-operator-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn minimal_spec_renders_a_config_the_proxy_loads() {
    let r = render("default", &spec_from(MINIMAL), &[], &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(r.config.name, "dot-proxy-config");
    assert_eq!(r.config.key, "config.yaml");
    let cfg = Config::from_yaml(&r.config.data).expect("proxy parses it");
    cfg.validate().expect("proxy validates it");
    assert_eq!(cfg.listen, vec!["169.254.20.10:53".parse().expect("addr")]);
    assert_eq!(
        cfg.overrides.dir.as_deref(),
        Some(std::path::Path::new("/etc/dot-proxy/overrides"))
    );
    assert_eq!(cfg.overrides.node_name, None);
    assert_eq!(cfg.upstream_groups[0].servers[0].address.port(), 853);
    assert_eq!(cfg.upstream_groups[1].servers[0].address.port(), 53);
    assert!(cfg.client_groups.is_empty() && cfg.rate_limit.overrides.is_empty());
    assert!(cfg.node_local.enabled);

    // The same check as `dot-proxy check-config FILE`.
    let path = temp_path("minimal.yaml");
    std::fs::write(&path, &r.config.data).expect("write");
    Config::load(&path).expect("check-config accepts it");

    // Always every shard, even with no pod at all.
    assert_eq!(r.shards.len(), 4);
    for (i, s) in r.shards.iter().enumerate() {
        assert_eq!(s.name, format!("dot-proxy-config-overrides-{i}"));
        assert_eq!(s.key, format!("shard-{i}.yaml"));
        assert!(parse_shard(&s.data).expect("shard parses").is_empty());
    }
}

#[test]
fn force_tcp_renders_for_plain_servers_and_is_refused_for_tls() {
    let yaml = MINIMAL.replace("protocol: plain", "protocol: plain\n        forceTcp: true");
    let r = render("default", &spec_from(&yaml), &[], &no_nodes(), &no_ns()).expect("renders");
    let cfg = Config::from_yaml(&r.config.data).expect("proxy parses it");
    cfg.validate().expect("proxy validates it");
    assert!(cfg.upstream_groups[1].servers[0].force_tcp);
    assert!(!cfg.upstream_groups[0].servers[0].force_tcp);
    let yaml = MINIMAL.replace(
        "tlsName: cloudflare-dns.com",
        "tlsName: cloudflare-dns.com\n        forceTcp: true",
    );
    let msgs = invalid_messages(render(
        "default",
        &spec_from(&yaml),
        &[],
        &no_nodes(),
        &no_ns(),
    ));
    assert!(
        msgs.iter()
            .any(|m| m.contains("spec.upstreamGroups[0].servers[0].forceTcp")),
        "{msgs:?}"
    );
}

#[test]
fn the_example_renders_and_loads() {
    let spec = example();
    assert_eq!(spec.upstream_groups.len(), 3);
    assert_eq!(spec.upstream_groups[0].policy, Policy::Fastest);
    let r = render("default", &spec, &[], &no_nodes(), &no_ns()).expect("example renders");
    let path = temp_path("example.yaml");
    std::fs::write(&path, &r.config.data).expect("write");
    let cfg = Config::load(&path).expect("check-config accepts the example");
    let public = &cfg.upstream_groups[0];
    let names: Vec<_> = public.servers.iter().map(|s| s.label()).collect();
    assert_eq!(
        names,
        [
            "tls://1.1.1.1:853#cloudflare-dns.com",
            "tls://1.0.0.1:853#cloudflare-dns.com",
            "tls://8.8.8.8:853#dns.google",
            "tls://8.8.4.4:853#dns.google"
        ]
    );
    let route = |zone: &str, group: &str| dot_proxy_config::ZoneRoute {
        zone: zone.into(),
        group: group.into(),
    };
    assert_eq!(
        cfg.zones,
        [
            route(".", "public"),
            route("cluster.local", "cluster"),
            route("10.in-addr.arpa", "cluster"),
            route("d.f.ip6.arpa", "cluster"),
        ]
    );
    assert!(cfg.rate_limit.enabled);
    assert!(!cfg.allow_plain_default);
    let p = &cfg.policy;
    assert_eq!(
        (p.static_answers.len(), p.blocklists.len(), p.rewrites.len()),
        (3, 1, 1)
    );
}

#[test]
fn policy_renders_every_rule_kind() {
    let list = temp_path("malware.hosts");
    std::fs::write(&list, "0.0.0.0 malware.example\n").expect("write list");
    let yaml = format!(
        "{MINIMAL}policy:
  staticAnswers:
    - name: registry.corp.internal
      ttl: 60
      a: [10.20.0.5, 10.20.0.6]
      aaaa: [\"fd00:20::5\"]
      txt: [\"v=spf1 -all\"]
    - name: \"*.preview.corp.internal\"
      a: [10.20.0.9]
    - name: old-api.corp.internal
      cname: api.corp.internal
  blocklists:
    - name: telemetry
      names: [telemetry.vendor.example]
      action: null_address
    - name: malware
      file: {}
    - name: both
      names: [ads.example]
      file: {}
      action: refused
  rewrites:
    - from: legacy.example.com
      to: www.example.net
    - from: svc.old-cluster.local
      to: svc.cluster.local
      suffix: true
",
        list.display(),
        list.display()
    );
    let r = render("default", &spec_from(&yaml), &[], &no_nodes(), &no_ns()).expect("renders");
    let path = temp_path("policy.yaml");
    std::fs::write(&path, &r.config.data).expect("write");
    let cfg = Config::load(&path).expect("check-config accepts the policy");
    let ip = |s: &str| -> std::net::Ipv4Addr { s.parse().expect("ip") };
    let want = PolicyConfig {
        static_answers: vec![
            StaticRule {
                name: "registry.corp.internal".into(),
                ttl: 60,
                a: vec![ip("10.20.0.5"), ip("10.20.0.6")],
                aaaa: vec!["fd00:20::5".parse().expect("ip")],
                cname: None,
                txt: vec!["v=spf1 -all".into()],
            },
            StaticRule {
                name: "*.preview.corp.internal".into(),
                ttl: 300,
                a: vec![ip("10.20.0.9")],
                aaaa: vec![],
                cname: None,
                txt: vec![],
            },
            StaticRule {
                name: "old-api.corp.internal".into(),
                ttl: 300,
                a: vec![],
                aaaa: vec![],
                cname: Some("api.corp.internal".into()),
                txt: vec![],
            },
        ],
        blocklists: vec![
            BlockList {
                name: "telemetry".into(),
                names: vec!["telemetry.vendor.example".into()],
                file: None,
                action: BlockAction::NullAddress,
            },
            BlockList {
                name: "malware".into(),
                names: vec![],
                file: Some(list.clone()),
                action: BlockAction::Nxdomain,
            },
            BlockList {
                name: "both".into(),
                names: vec!["ads.example".into()],
                file: Some(list.clone()),
                action: BlockAction::Refused,
            },
        ],
        rewrites: vec![
            RewriteRule {
                from: "legacy.example.com".into(),
                to: "www.example.net".into(),
                suffix: false,
            },
            RewriteRule {
                from: "svc.old-cluster.local".into(),
                to: "svc.cluster.local".into(),
                suffix: true,
            },
        ],
    };
    assert_eq!(cfg.policy, want);

    // A list file is on the proxies' filesystem, which the operator does not see: a path
    // missing here still renders (the proxy reports it when it loads the config).
    let mut spec = spec_from(&yaml);
    spec.policy.blocklists[1].file = Some("/etc/dot-proxy/lists/not-here.hosts".into());
    let r = render("default", &spec, &[], &no_nodes(), &no_ns()).expect("renders");
    let cfg = Config::from_yaml(&r.config.data).expect("parses");
    assert_eq!(
        cfg.policy.blocklists[1].file.as_deref(),
        Some(std::path::Path::new("/etc/dot-proxy/lists/not-here.hosts"))
    );

    // No policy: none in the config either.
    let r = render("default", &spec_from(MINIMAL), &[], &no_nodes(), &no_ns()).expect("renders");
    let cfg = Config::from_yaml(&r.config.data).expect("parses");
    assert_eq!(cfg.policy, PolicyConfig::default());
}

#[test]
fn invalid_policy_rules_are_invalid_with_the_rule_named() {
    let yaml = format!(
        "{MINIMAL}policy:
  staticAnswers:
    - name: ok.corp.internal
      a: [10.0.0.1]
    - name: both.corp.internal
      a: [10.0.0.2]
      cname: api.corp.internal
    - name: bad-address.corp.internal
      a: [10.0.0.256]
      aaaa: [\"fd00::1\", \"not-v6\"]
    - name: bad..name
      txt: [hello]
    - name: empty.corp.internal
  blocklists:
    - name: ads
      names: [ads.example, \"bad..name\"]
      action: drop
    - name: relative
      file: lists/ads.hosts
    - name: nothing
  rewrites:
    - from: legacy.example.com
      to: \".\"
"
    );
    let spec = spec_from(&yaml);
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    // Values that cannot be read come first (left out, the rest kept), then the proxy's own
    // checks of what is left.
    let want = [
        "spec.policy.blocklists[0].action: \"drop\" is not a valid value (expected nxdomain, refused, null_address)",
        "spec.policy.staticAnswers[2].a[0]: \"10.0.0.256\" is not a valid value: invalid IPv4 address syntax",
        "spec.policy.staticAnswers[2].aaaa[1]: \"not-v6\" is not a valid value: invalid IPv6 address syntax",
        "spec.policy.staticAnswers[1].cname: a CNAME excludes other records at the same name (rule \"both.corp.internal\")",
        "spec.policy.staticAnswers[3].name: \"bad..name\" has an empty or over-long label (rule \"bad..name\")",
        "spec.policy.staticAnswers[4]: needs at least one of a, aaaa, cname, txt (rule \"empty.corp.internal\")",
        "spec.policy.blocklists[0].names[1]: \"bad..name\" has an empty or over-long label (rule \"ads\")",
        "spec.policy.blocklists[1].file: \"lists/ads.hosts\" must be an absolute path (rule \"relative\")",
        "spec.policy.blocklists[2]: needs names or a file (rule \"nothing\")",
        "spec.policy.rewrites[0].to: must not be \".\" (rule \"legacy.example.com\")",
    ];
    assert_eq!(m, want, "{m:#?}");
    // Fixed, the proxy's own checks name the same rules.
    let fixed = spec_from(
        &yaml
            .replace("10.0.0.256", "10.0.0.3")
            .replace("\"not-v6\"", "\"fd00::2\"")
            .replace("action: drop", "action: nxdomain")
            .replace("file: lists/", "file: /etc/dot-proxy/lists/"),
    );
    let m = invalid_messages(render("default", &fixed, &[], &no_nodes(), &no_ns()));
    let rest: Vec<&str> = want[3..]
        .iter()
        .copied()
        .filter(|w| !w.contains(".file:"))
        .collect();
    assert_eq!(m, rest, "{m:#?}");
}

#[test]
fn hash_is_sha256_of_the_data_and_follows_content() {
    let spec = spec_from(MINIMAL);
    let a = render("default", &spec, &[], &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(a.config.hash, sha256_hex(a.config.data.as_bytes()));
    assert_eq!(a.config.hash.len(), 64);
    let b = render("default", &spec, &[], &no_nodes(), &no_ns()).expect("renders");
    assert_eq!(a, b, "rendering is deterministic");
    let mut changed = spec.clone();
    changed.cache.max_ttl = 600;
    let c = render("default", &changed, &[], &no_nodes(), &no_ns()).expect("renders");
    assert_ne!(a.config.hash, c.config.hash);
    assert_eq!(a.overrides_hash, c.overrides_hash, "no pod changed");
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn bad_addresses_are_invalid_with_the_field_named() {
    let mut spec = spec_from(&MINIMAL.replace("address: 1.1.1.1\n", "address: 1.1.1.999:853\n"));
    spec.listen = vec!["169.254.20.10".into()];
    spec.node_local = serde_json::from_str(r#"{"addresses": ["not-an-ip"]}"#).expect("parses");
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    let joined = m.join("\n");
    assert!(
        joined.contains(
            "spec.upstreamGroups[0].servers[0].address: \"1.1.1.999:853\" is not a valid value"
        ),
        "{joined}"
    );
    assert!(
        joined.contains("spec.listen[0]: \"169.254.20.10\" is not IP:PORT"),
        "{joined}"
    );
    assert!(joined.contains("spec.nodeLocal.addresses[0]"), "{joined}");
    // The group whose only server was refused is not reported a second time.
    assert!(!joined.contains("at least one server"), "{joined}");
}

#[test]
fn unknown_enum_values_are_invalid() {
    let yaml = MINIMAL.replace(
        "  - name: public\n",
        "  - name: public\n    policy: random\n",
    );
    let spec = spec_from(&yaml);
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    assert_eq!(
        m,
        ["spec.upstreamGroups[0].policy: \"random\" is not a valid value (expected failover, round_robin, fastest, race)"]
    );
    // Past the schema, as a file given to `render` can be: kept, and named.
    let mut spec = spec_from(&MINIMAL.replace(
        "  - name: public\n",
        "  - name: public\n    timeout: 2 sec\n",
    ));
    spec.rate_limit = serde_json::from_value(serde_json::json!({"action": "tarpit"}))
        .expect("a bad value still parses");
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m.contains(
            &"spec.rateLimit.action: \"tarpit\" is not a valid value (expected refused, drop)"
                .to_string()
        ),
        "{m:?}"
    );
}

#[test]
fn pins_must_be_base64_sha256() {
    let good = "YLh1dUR9y6Kja30RrAn7JKnbQG/uEtLMkBgFF2Fuihg=";
    let mut spec = spec_from(&MINIMAL.replace(
        "tlsName: cloudflare-dns.com\n",
        &format!("tlsName: cloudflare-dns.com\n        spkiPins: [{good}, \"not base64!\", AAAAAAAAAAAAAAAAAAAAAA==]\n"),
    ));
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m[0].starts_with("spec.upstreamGroups[0].servers[0].spkiPins[1]: \"not base64!\" is not a valid value: invalid SPKI pin: not valid base64"),
        "{m:?}"
    );
    assert!(
        m[1].starts_with("spec.upstreamGroups[0].servers[0].spkiPins[2]: \"AAAAAAAAAAAAAAAAAAAAAA==\" is not a valid value: invalid SPKI pin: decodes to 16 bytes"),
        "{m:?}"
    );
    spec.upstream_groups[0].servers[0].spki_pins = vec![good.parse().expect("pin")];
    render("default", &spec, &[], &no_nodes(), &no_ns()).expect("a valid pin renders");
}

#[test]
fn plain_dns_for_the_root_zone_needs_the_opt_in() {
    let mut spec = spec_from(MINIMAL);
    spec.zones[0].group = "cluster".into();
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("spec.zones[0].group: group \"cluster\" has plain-DNS servers"),
        "{m:?}"
    );
    assert!(m[0].contains("spec.allowPlainDefault: true"), "{m:?}");
    spec.allow_plain_default = true;
    let r = render("default", &spec, &[], &no_nodes(), &no_ns()).expect("allowed with the opt-in");
    assert!(
        Config::from_yaml(&r.config.data)
            .expect("parses")
            .allow_plain_default
    );
}

#[test]
fn zone_references_and_the_default_route_are_checked() {
    let mut spec = spec_from(MINIMAL);
    spec.zones[1].group = "nowhere".into();
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    assert_eq!(
        m,
        ["spec.zones[1].group: no upstream group named \"nowhere\""]
    );
    let mut spec = spec_from(MINIMAL);
    spec.zones.remove(0);
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    assert_eq!(
        m,
        ["spec.zones: a route for \".\" (the default) is required"]
    );
    let long = "x".repeat(64);
    let m = invalid_messages(render(
        &long,
        &spec_from(MINIMAL),
        &[],
        &no_nodes(),
        &no_ns(),
    ));
    assert!(m[0].starts_with("metadata.name"), "{m:?}");
}

#[test]
fn ranges_the_schema_should_catch_are_still_checked() {
    let mut spec = spec_from(MINIMAL);
    spec.cache.min_ttl = 100;
    spec.cache.max_ttl = 10;
    spec.rate_limit.ipv6_prefix = 0;
    spec.upstream_groups[0].servers[0].pool_size = 0;
    let m = invalid_messages(render("default", &spec, &[], &no_nodes(), &no_ns()));
    let joined = m.join("\n");
    assert!(
        joined.contains("spec.cache.minTtl: 100 is above spec.cache.maxTtl (10)"),
        "{joined}"
    );
    assert!(joined.contains("spec.rateLimit.ipv6Prefix"), "{joined}");
    assert!(
        joined.contains("spec.upstreamGroups[0].servers[0].poolSize"),
        "{joined}"
    );
}

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

    let a = entries(&r, "node-a");
    assert_eq!(
        a.rate_limits,
        [
            limit("10.244.1.5/32", Some(50.0), Some(100)),
            RateLimitOverride::exempt(cidr("10.244.1.6/32")),
            limit("fd00:10:244::5/128", Some(50.0), Some(100)),
        ]
    );
    assert!(a.client_groups.is_empty());
    let b = entries(&r, "node-b");
    let client = |c: &str, group: &str| ClientGroup {
        cidr: cidr(c),
        group: group.into(),
    };
    assert_eq!(
        b.client_groups,
        [
            client("10.244.2.7/32", "cluster"),
            client("10.244.2.8/32", "public")
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
            numbered(i, 17, &ip, ann)
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
    fn on_a(name: &str, ip: &str, ann: &[(&str, &str)]) -> PodInfo {
        pod(name, "node-a", &[ip], ann)
    }
    let pods = vec![
        on_a("good", "10.244.1.5", &[(QPS, "50")]),
        on_a("bad-qps", "10.244.1.6", &[(QPS, "lots"), (BURST, "9")]),
        on_a("bad-group", "10.244.1.7", &[(GROUP, "secret-resolvers")]),
        on_a("bad-exempt", "10.244.1.8", &[(EXEMPT, "yes please")]),
        // Every name of this pod would go out as plain DNS, and allowPlainDefault is off.
        on_a(
            "plain-group",
            "10.244.1.9",
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
        .map(|i| numbered(i, 8, &format!("10.244.0.{}", i + 10), &[(QPS, "10")]))
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
        .map(|i| numbered(i, 3, &format!("10.3.0.{}", 200 - i), &[(QPS, "3")]))
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
        pod("limited", "node-1", &["10.1.0.5"], &[(QPS, "50")]),
        pod("routed", "node-1", &["10.1.0.6"], &[(GROUP, "public")]),
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
    // The exempt pod asked for nothing else: no entry at all. The greedy pod keeps its
    // burst of 20 (below the default 400) and loses its qps (above the default 200).
    assert_eq!(e.rate_limits, [limit("10.1.0.6/32", None, Some(20))]);
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
    let e = entries(&r, "node-1");
    assert_eq!(
        e.rate_limits,
        [
            RateLimitOverride::exempt(cidr("10.1.0.5/32")),
            limit("10.1.0.6/32", Some(1_000_000.0), Some(20)),
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
