use super::*;

#[test]
fn default_config_is_valid_and_round_trips() {
    let c = Config::default();
    c.validate().expect("defaults are valid");
    let back = Config::from_yaml(&c.to_yaml().expect("yaml")).expect("parses");
    assert_eq!(back, c);
    assert_eq!(Config::from_yaml("").expect("empty"), c);
}

/// Fails unless `yaml` is refused with errors that say each of `says`.
#[track_caller]
fn assert_refused(yaml: &str, says: &[&str]) {
    let e = errors(yaml);
    assert!(!e.is_empty(), "accepted");
    for s in says {
        assert!(e.contains(s), "{s}: {e}");
    }
}

fn errors(yaml: &str) -> String {
    match Config::from_yaml(yaml) {
        Err(e) => e.to_string(),
        Ok(c) => c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    }
}

#[test]
fn bad_fields_are_named() {
    assert!(errors("listn: []").contains("listn"), "unknown field named");
    // The proxy's own file stays strict (only the operator ignores fields of a newer CRD):
    // unknown fields inside sections are refused and named too.
    assert!(errors("cache:\n  shards: 16\n").contains("shards"));
    let e = errors("upstream_groups:\n- name: d\n  servers:\n  - address: 1.1.1.1:853\n    tls_name: x\n    ech: true\n");
    assert!(e.contains("unknown field `ech`"), "{e}");
    assert!(errors("listen: [nonsense]").contains("listen"));
    assert!(errors("cache:\n  min_ttl: 100\n  max_ttl: 10\n").contains("cache.min_ttl"));
    let e = errors("upstream_groups:\n- name: default\n  servers:\n  - address: 1.1.1.1:853\n");
    assert!(e.contains("upstream_groups[0].servers[0].tls_name"), "{e}");
    let e = errors("upstream_groups:\n- name: default\n  servers:\n  - address: 1.1.1.1:853\n    tls_name: x\n    spki_pins: [abc]\n");
    // Pins are parsed as the YAML is read: the message points at the line and says why.
    assert!(
        e.contains("spki_pins: [abc]") && e.contains("invalid SPKI pin: not valid base64"),
        "{e}"
    );
    let e = errors("zones:\n- zone: cluster.local\n  group: default\n");
    assert!(e.contains("zones") && e.contains("\".\""), "{e}");
    let e = errors("zones:\n- zone: .\n  group: nope\n");
    assert!(e.contains("zones[0].group"), "{e}");
    let e = errors("listen: [127.0.0.1:53]\nlisten: [127.0.0.1:54]\n");
    assert!(e.to_lowercase().contains("duplicate"), "{e}");
    assert!(errors("shutdown_grace: 5 seconds").contains("shutdown_grace"));
    let e = errors("cache:\n  prefer_positive: 2d\n");
    assert!(e.contains("cache.prefer_positive"), "{e}");
    assert_eq!(errors("cache:\n  prefer_positive: 1d\n"), "");
}

#[test]
fn plain_default_route_needs_opt_in() {
    let yaml = "upstream_groups:\n- name: default\n  servers:\n  - address: 10.96.0.10:53\n    protocol: plain\n";
    assert!(errors(yaml).contains("allow_plain_default"));
    let ok = format!("{yaml}allow_plain_default: true\n");
    assert_eq!(errors(&ok), "");
    // Plain DNS for an in-cluster zone is fine.
    let split = "upstream_groups:\n- name: default\n  servers:\n  - {address: 1.1.1.1:853, tls_name: cloudflare-dns.com}\n- name: cluster\n  servers:\n  - {address: 10.96.0.10:53, protocol: plain}\nzones:\n- {zone: ., group: default}\n- {zone: cluster.local, group: cluster}\n";
    assert_eq!(errors(split), "");
}

#[test]
fn zones_normalize() {
    assert_eq!(
        normalize_zone("Cluster.Local.").expect("ok"),
        "cluster.local"
    );
    assert_eq!(normalize_zone(".").expect("ok"), ".");
    assert!(normalize_zone("a..b").is_err());
    assert!(normalize_zone("").is_err());
}

#[test]
fn server_names_are_checked_as_tls_libraries_do() {
    for ok in [
        "cloudflare-dns.com",
        "dns.google.",
        "upstream.test",
        "a_b.example",
        "1.1.1.1",
        "2606:4700::1111",
        "x",
    ] {
        assert!(valid_server_name(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "bad..name",
        "-lead.example",
        "trail-.example",
        "sp ace.example",
        "300.1.1.1",
        "example.123",
        &"a".repeat(64),
        &format!("{}.com", "a.".repeat(127)),
    ] {
        assert!(!valid_server_name(bad), "{bad}");
    }
}

#[test]
fn pins_decode_to_32_bytes_or_say_why() {
    assert!(decode_pin("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").is_ok());
    assert!(decode_pin("not base64!").is_err());
    let e = decode_pin("AAAA").expect_err("3 bytes");
    assert!(e.contains("3 bytes"), "{e}");
}

#[test]
fn dnstap_needs_one_collector_and_sane_settings() {
    assert!(errors("dnstap:\n  enabled: true\n").contains("dnstap: set exactly one of socket"));
    let both = "dnstap:\n  enabled: true\n  socket: /run/tap.sock\n  address: 127.0.0.1:6000\n";
    assert!(errors(both).contains("exactly one"));
    assert!(errors("dnstap:\n  enabled: true\n  socket: run/tap.sock\n").contains("dnstap.socket"));
    assert!(errors("dnstap:\n  sample_rate: 0\n").contains("dnstap.sample_rate"));
    assert!(errors("dnstap:\n  sample_rate: 1.5\n").contains("dnstap.sample_rate"));
    assert!(errors("dnstap:\n  client_ipv4_prefix: 33\n").contains("dnstap.client_ipv4_prefix"));
    assert!(errors("dnstap:\n  queue_size: 0\n").contains("dnstap.queue_size"));
    assert_eq!(
        errors("dnstap:\n  enabled: true\n  address: 127.0.0.1:6000\n  client_ipv6_prefix: 0\n"),
        ""
    );
    // Off, a collector may stay configured.
    assert_eq!(errors("dnstap:\n  socket: /run/tap.sock\n"), "");
}

#[test]
fn kubernetes_sections_name_their_bad_fields() {
    let e = errors("search_completion:\n  enabled: true\n");
    assert!(
        e.contains("search_completion.enabled") && e.contains("kubernetes.enabled"),
        "{e}"
    );
    let e = errors("kubernetes:\n  enabled: true\n");
    assert!(e.contains("kubernetes.node_name"), "needs a node: {e}");
    assert_eq!(
        errors("kubernetes:\n  enabled: true\n  node_name: node-a\n"),
        ""
    );
    assert_eq!(
        errors("kubernetes:\n  enabled: true\noverrides:\n  node_name: node-a\n"),
        "",
        "the overrides' node name serves"
    );
    assert!(errors("kubernetes:\n  node_name: \"\"\n").contains("kubernetes.node_name"));
    let on = "kubernetes:\n  enabled: true\n  node_name: n\nsearch_completion:\n  enabled: true\n";
    assert_eq!(errors(on), "");
    let e = errors(&format!("{on}  types: [A, PTR]\n"));
    assert!(
        e.contains("search_completion.types[1]") && e.contains("PTR"),
        "{e}"
    );
    assert!(errors(&format!("{on}  types: []\n")).contains("search_completion.types"));
    assert_eq!(
        errors(&format!("{on}  types: [a, aaaa, https]\n")),
        "",
        "any letter case"
    );
    assert!(
        errors(&format!("{on}  cluster_domain: .\n")).contains("search_completion.cluster_domain")
    );
    let e = errors(&format!(
        "{on}  host_search_domains: [corp.example, \"bad domain\"]\n"
    ));
    assert!(
        e.contains("search_completion.host_search_domains[1]"),
        "{e}"
    );
    let many: Vec<String> = (0..30).map(|i| format!("d{i}.example")).collect();
    let e = errors(&format!(
        "{on}  host_search_domains: [{}]\n",
        many.join(", ")
    ));
    assert!(e.contains("search_completion.host_search_domains"), "{e}");
    assert!(
        errors("filter_aaaa:\n  zones: [\"no spaces.example\"]\n").contains("filter_aaaa.zones[0]")
    );
    assert_eq!(errors("filter_aaaa:\n  zones: [., cluster.local]\n"), "");
}

#[test]
fn https_and_quic_servers_are_checked_like_tls() {
    let server = |extra: &str| {
        errors(&format!(
            "upstream_groups:\n- name: default\n  servers:\n  - address: 1.1.1.1:443\n{extra}"
        ))
    };
    for proto in ["https", "quic"] {
        let e = server(&format!("    protocol: {proto}\n"));
        assert!(e.contains("servers[0].tls_name"), "{proto}: {e}");
        assert_eq!(
            server(&format!(
                "    protocol: {proto}\n    tls_name: one.one.one.one\n"
            )),
            ""
        );
        let e = server(&format!(
            "    protocol: {proto}\n    tls_name: x.example\n    force_tcp: true\n"
        ));
        assert!(e.contains("servers[0].force_tcp"), "{proto}: {e}");
    }
    let e = server("    protocol: quic\n    tls_name: x.example\n    path: /dns-query\n");
    assert!(
        e.contains("servers[0].path") && e.contains("only for https"),
        "{e}"
    );
    for bad in ["dns-query", "/a b", "/q?x=1", "/f#x"] {
        let e = server(&format!(
            "    protocol: https\n    tls_name: x.example\n    path: \"{bad}\"\n"
        ));
        assert!(e.contains("servers[0].path"), "{bad}: {e}");
    }
    assert_eq!(
        server("    protocol: https\n    tls_name: x.example\n    path: /resolve\n"),
        ""
    );
}

/// A group's servers answer for one another: a group with an encrypted server and a
/// plain-DNS one would send the encrypted server's queries in clear text whenever it
/// fails over (a refused certificate included). Refused, for every group, naming the
/// plain server.
#[test]
fn a_group_does_not_mix_plain_dns_with_encrypted_servers() {
    let mixed = "upstream_groups:\n- name: default\n  servers:\n  - {address: 1.1.1.1:853, tls_name: cloudflare-dns.com}\n- name: cluster\n  servers:\n  - {address: 10.96.0.11:853, tls_name: dns.cluster}\n  - {address: 10.96.0.10:53, protocol: plain}\nzones:\n- {zone: ., group: default}\n- {zone: cluster.local, group: cluster}\n";
    assert_refused(mixed, &["upstream_groups[1].servers[1].protocol", "plain"]);
    // Also when plain DNS may serve ".": the opt-in is for a plain group, not a fallback.
    let default_mixed = "allow_plain_default: true\nupstream_groups:\n- name: default\n  servers:\n  - {address: 10.96.0.10:53, protocol: plain}\n  - {address: 1.1.1.1:443, protocol: https, tls_name: cloudflare-dns.com}\n";
    assert_refused(default_mixed, &["upstream_groups[0].servers[0].protocol"]);
    // Encrypted protocols mix freely, and so do plain servers among themselves.
    let fine = "upstream_groups:\n- name: default\n  servers:\n  - {address: 1.1.1.1:853, tls_name: cloudflare-dns.com}\n  - {address: 1.1.1.1:443, protocol: https, tls_name: cloudflare-dns.com}\n  - {address: 1.1.1.1:853, protocol: quic, tls_name: cloudflare-dns.com}\n- name: cluster\n  servers:\n  - {address: 10.96.0.10:53, protocol: plain}\n  - {address: 10.96.0.11:53, protocol: plain}\nzones:\n- {zone: ., group: default}\n- {zone: cluster.local, group: cluster}\n";
    assert_eq!(errors(fine), "");
}

/// A client with a group of its own gets that group for every name: a plain-DNS group
/// there is a plain default for that client, and needs the same opt-in as one for ".".
#[test]
fn a_client_group_of_plain_dns_needs_the_plain_default_opt_in() {
    let yaml = "upstream_groups:\n- name: default\n  servers:\n  - {address: 1.1.1.1:853, tls_name: cloudflare-dns.com}\n- name: cluster\n  servers:\n  - {address: 10.96.0.10:53, protocol: plain}\nzones:\n- {zone: ., group: default}\n- {zone: cluster.local, group: cluster}\nclient_groups:\n- {cidr: 10.244.0.0/16, group: cluster}\n";
    assert_refused(yaml, &["client_groups[0].group", "allow_plain_default"]);
    assert_eq!(errors(&format!("{yaml}allow_plain_default: true\n")), "");
    let encrypted = yaml.replace("group: cluster}\n", "group: default}\n");
    assert!(encrypted.ends_with("group: default}\n"));
    assert_eq!(errors(&encrypted), "");
}

/// A client's group is carried in one byte of the cache key (0 = zone routing), so at
/// most 255 groups can be told apart: more are refused rather than folded together.
#[test]
fn at_most_255_upstream_groups() {
    let mut c = Config::default();
    let template = c.upstream_groups[0].clone();
    for i in 1..255 {
        let mut g = template.clone();
        g.name = format!("g{i}");
        c.upstream_groups.push(g);
    }
    assert_eq!(c.upstream_groups.len(), 255);
    c.validate().expect("255 groups are fine");
    let mut g = template;
    g.name = "one-too-many".into();
    c.upstream_groups.push(g);
    let e = c.validate().expect_err("256 are not").to_string();
    assert!(e.contains("upstream_groups") && e.contains("255"), "{e}");
}

/// Per-pod entries from the operator's shards never make the node's config invalid: the
/// shards are written after the config (so for a while they may name a group the config no
/// longer has, or one it made plain), and an older operator wrote entries for plain groups.
/// Entries the config cannot use are left out and counted; the rest apply.
#[test]
fn override_entries_the_config_cannot_use_are_left_out() {
    let dir = std::env::temp_dir().join(format!("dot-proxy-config-ovr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("shard-0.yaml"),
        "node-a:\n  client_groups:\n  - {cidr: 10.244.1.5/32, group: cluster}\n  - {cidr: 10.244.1.6/32, group: renamed-away}\n  - {cidr: 10.244.1.7/32, group: default}\n  rate_limits:\n  - {cidr: 10.244.1.8/32, qps: 0}\n  - {cidr: 10.244.1.9/32, qps: 5}\n",
    )
    .expect("write shard");
    let yaml = format!(
        "upstream_groups:\n- name: default\n  servers:\n  - {{address: 1.1.1.1:853, tls_name: cloudflare-dns.com}}\n- name: cluster\n  servers:\n  - {{address: 10.96.0.10:53, protocol: plain}}\nzones:\n- {{zone: ., group: default}}\n- {{zone: cluster.local, group: cluster}}\noverrides:\n  dir: {}\n  node_name: node-a\n",
        dir.display()
    );
    let mut cfg = Config::from_yaml(&yaml).expect("parses");
    let skipped = merge_overrides(&mut cfg).expect("shards read");
    assert_eq!(skipped, 3, "plain group, unknown group, qps 0");
    assert_eq!(cfg.client_groups.len(), 1);
    assert_eq!(cfg.client_groups[0].group, "default");
    assert_eq!(cfg.rate_limit.overrides.len(), 1);
    cfg.validate().expect("the node's config stays valid");
    let _ = std::fs::remove_dir_all(&dir);
}
