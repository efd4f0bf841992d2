use std::collections::BTreeMap;
use std::net::IpAddr;

use dot_proxy_config::{
    BlockAction, BlockList, Config, Policy, PolicyConfig, RewriteRule, StaticRule,
};

use super::*;
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

fn no_nodes() -> NodeLabels {
    BTreeMap::new()
}

fn no_ns() -> NamespaceLabels {
    BTreeMap::new()
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
    let zones: Vec<_> = cfg
        .zones
        .iter()
        .map(|z| (z.zone.as_str(), z.group.as_str()))
        .collect();
    assert_eq!(
        zones,
        [
            (".", "public"),
            ("cluster.local", "cluster"),
            ("10.in-addr.arpa", "cluster"),
            ("d.f.ip6.arpa", "cluster")
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

mod pods;
