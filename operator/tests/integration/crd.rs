//! The CRD: generated from the Rust types, and every committed copy equal to it.

use std::collections::BTreeSet;

use dot_proxy_operator::resource::{crd_yaml, DotProxyConfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::support::repo_root;

const CHART_COPY: &str = "charts/dot-proxy/crds/dotproxyconfigs.yaml";
const MANIFEST_COPY: &str = "manifests/00-crd.yaml";

fn regenerate_hint() -> String {
    format!("regenerate with: cargo run -p dot-proxy-operator -- crd > {CHART_COPY}")
}

#[test]
fn committed_copies_equal_the_generated_crd() {
    let generated = crd_yaml().expect("CRD serializes");
    let chart = std::fs::read_to_string(repo_root().join(CHART_COPY)).expect("chart copy present");
    assert!(
        chart == generated,
        "{CHART_COPY} differs from `dot-proxy-operator crd`; {}",
        regenerate_hint()
    );
    // manifests/ is assembled from the chart by its own script, which puts its own comment
    // header on top; below that header it must be the same document.
    if let Ok(manifest) = std::fs::read_to_string(repo_root().join(MANIFEST_COPY)) {
        assert!(
            without_leading_comments(&manifest) == without_leading_comments(&generated),
            "{MANIFEST_COPY} differs from `dot-proxy-operator crd`; {} and re-run the script that copies it",
            regenerate_hint()
        );
    }
}

/// The CRD pinned byte for byte: a change to any section type (the proxy's own, through
/// `Camel`) shows here as a diff to review. `UPDATE_GOLDEN=1` rewrites the file.
#[test]
fn the_crd_matches_its_golden_file() {
    const GOLDEN: &str = "operator/tests/golden/crd.yaml";
    let generated = crd_yaml().expect("CRD serializes");
    let path = repo_root().join(GOLDEN);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).expect("golden file written");
    }
    let golden = std::fs::read_to_string(&path).expect("golden file present");
    assert!(
        golden == generated,
        "{GOLDEN} differs from the generated CRD; review the change, then run with UPDATE_GOLDEN=1"
    );
}

fn without_leading_comments(text: &str) -> &str {
    let mut rest = text;
    while rest.starts_with('#') {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest
}

#[test]
fn the_yaml_reads_back_as_the_same_crd() {
    let yaml = crd_yaml().expect("CRD serializes");
    let parsed: CustomResourceDefinition =
        serde_saphyr::from_str(&yaml).expect("parses into k8s-openapi's type");
    assert_eq!(
        parsed,
        DotProxyConfig::crd(),
        "YAML folding or quoting changed something"
    );
}

fn schema() -> JSONSchemaProps {
    let crd = DotProxyConfig::crd();
    assert_eq!(crd.spec.versions.len(), 1);
    let v = &crd.spec.versions[0];
    v.schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.clone())
        .expect("schema")
}

/// The schema at `path`: property names, `[]` for a list's items.
fn prop<'a>(s: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    let mut cur = s;
    for p in path {
        cur = match *p {
            "[]" => match &cur.items {
                Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s)) => s,
                other => panic!("no items schema at {p}: {other:?}"),
            },
            name => cur.properties.as_ref().and_then(|m| m.get(name)).unwrap_or_else(|| panic!("no property {name}")),
        };
    }
    cur
}

#[test]
fn names_versions_and_columns() {
    let crd = DotProxyConfig::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("dotproxyconfigs.dns.dot-proxy.io")
    );
    assert_eq!(crd.spec.group, "dns.dot-proxy.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "DotProxyConfig");
    assert_eq!(crd.spec.names.plural, "dotproxyconfigs");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["dpc".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(
        (v.name.as_str(), v.served, v.storage),
        ("v1alpha1", true, true)
    );
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        cols,
        [
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("ConfigMap", ".status.configMap"),
            ("Pods", ".status.podOverrides"),
            ("Hash", ".status.configHash"),
            ("Reason", ".status.conditions[?(@.type==\"Ready\")].reason"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

#[test]
fn the_schema_refuses_what_it_can() {
    let s = schema();
    let spec = prop(&s, &["spec"]);
    let required: BTreeSet<_> = spec.required.iter().flatten().map(String::as_str).collect();
    assert_eq!(required, BTreeSet::from(["upstreamGroups", "zones"]));

    let enums = |path: &[&str]| -> Vec<String> {
        prop(&s, path)
            .enum_
            .iter()
            .flatten()
            .map(|v| v.0.as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        enums(&["spec", "upstreamGroups", "[]", "policy"]),
        ["failover", "round_robin", "fastest", "race"]
    );
    assert_eq!(
        enums(&["spec", "upstreamGroups", "[]", "servers", "[]", "protocol"]),
        ["tls", "plain", "https", "quic"]
    );
    assert_eq!(enums(&["spec", "rateLimit", "action"]), ["refused", "drop"]);
    assert_eq!(
        enums(&["spec", "nodeLocal", "firewall"]),
        ["auto", "nftables", "iptables", "none"]
    );
    assert_eq!(
        enums(&["spec", "policy", "blocklists", "[]", "action"]),
        ["nxdomain", "refused", "null_address"]
    );

    let pins = prop(
        &s,
        &[
            "spec",
            "upstreamGroups",
            "[]",
            "servers",
            "[]",
            "spkiPins",
            "[]",
        ],
    );
    assert_eq!(pins.pattern.as_deref(), Some("^[A-Za-z0-9+/]{43}=$"));
    let shards = prop(&s, &["spec", "target", "overrideShards"]);
    assert_eq!((shards.minimum, shards.maximum), (Some(1.0), Some(64.0)));
    let timeout = prop(&s, &["spec", "upstreamGroups", "[]", "timeout"]);
    assert_eq!(timeout.pattern.as_deref(), Some("^[0-9]+(ms|s|m|h|d)$"));

    let rules: Vec<String> = spec
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| r.rule.clone())
        .collect();
    assert_eq!(rules.len(), 3);
    assert!(rules[0].contains("z.zone == '.'"));
    assert!(rules[2].contains("allowPlainDefault"));
    let server_rules = prop(&s, &["spec", "upstreamGroups", "[]", "servers", "[]"])
        .x_kubernetes_validations
        .as_ref()
        .map(Vec::len);
    assert_eq!(server_rules, Some(5));
    let static_rules = prop(&s, &["spec", "policy", "staticAnswers", "[]"])
        .x_kubernetes_validations
        .as_ref()
        .map(Vec::len);
    assert_eq!(static_rules, Some(2));
    let policy = prop(&s, &["spec", "policy"]);
    let limits: Vec<_> = ["staticAnswers", "blocklists", "rewrites"]
        .iter()
        .map(|k| prop(policy, &[k]).max_items)
        .collect();
    assert_eq!(limits, [Some(1024), Some(32), Some(256)]);
    let required =
        |path: &[&str]| -> Vec<String> { prop(&s, path).required.clone().unwrap_or_default() };
    assert_eq!(
        required(&["spec", "policy", "staticAnswers", "[]"]),
        ["name"]
    );
    assert_eq!(required(&["spec", "policy", "blocklists", "[]"]), ["name"]);
    assert_eq!(
        required(&["spec", "policy", "rewrites", "[]"]),
        ["from", "to"]
    );
    for (path, key) in [
        (&["spec", "upstreamGroups"][..], "name"),
        (&["spec", "zones"][..], "zone"),
        (&["spec", "policy", "staticAnswers"][..], "name"),
        (&["spec", "policy", "blocklists"][..], "name"),
        (&["spec", "policy", "rewrites"][..], "from"),
    ] {
        let p = prop(&s, path);
        assert_eq!(p.x_kubernetes_list_type.as_deref(), Some("map"));
        assert_eq!(
            p.x_kubernetes_list_map_keys.as_deref(),
            Some(&[key.to_string()][..])
        );
    }
}

/// The API server estimates the cost of each CEL rule from the bounds of what it walks; an
/// unbounded list or string makes it refuse the CRD. Every list and string under a rule is
/// bounded here.
#[test]
fn everything_cel_walks_is_bounded() {
    fn check(s: &JSONSchemaProps, path: &str, under_rule: bool) {
        let under = under_rule || s.x_kubernetes_validations.is_some();
        match s.type_.as_deref() {
            Some("array") if under => assert!(
                s.max_items.is_some(),
                "{path}: array without maxItems under a CEL rule"
            ),
            Some("string") if under && s.enum_.is_none() && s.pattern.is_none() => {
                assert!(
                    s.max_length.is_some(),
                    "{path}: string without maxLength under a CEL rule"
                )
            }
            _ => {}
        }
        for (k, v) in s.properties.iter().flatten() {
            check(v, &format!("{path}.{k}"), under);
        }
        if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i)) = &s.items {
            check(i, &format!("{path}[]"), under);
        }
    }
    check(prop(&schema(), &["spec"]), "spec", false);
}

type Change = fn(&mut DotProxyConfig);

/// One table of refused and accepted resources, run through both gates a user meets: the
/// CRD's CEL rules (kube's client-side evaluator, as the API server would run them) and the
/// operator's conversion into the proxy's config, which ends in the proxy's own
/// `Config::validate()`. Both must agree on every row.
const REFUSED: &[(&str, Change, &str)] = &[
    (
        "no default route",
        |d| d.spec.zones.retain(|z| z.zone != "."),
        "zones must route",
    ),
    (
        "dangling group",
        |d| d.spec.zones[1].group = "nowhere".into(),
        "must name one of upstreamGroups",
    ),
    (
        "plain for .",
        |d| d.spec.zones[0].group = "cluster".into(),
        "allowPlainDefault",
    ),
    (
        "TLS without a name",
        |d| d.spec.upstream_groups[0].servers[0].tls_name = None,
        "a TLS server needs tlsName",
    ),
    (
        "plain with a name",
        |d| d.spec.upstream_groups[2].servers[0].tls_name = Some("x.example".into()),
        "plain servers take no tlsName",
    ),
    (
        "verifyCa off without pins",
        |d| d.spec.upstream_groups[0].servers[0].verify_ca = false,
        "verifyCa may be false",
    ),
    (
        "forceTcp on a TLS server",
        |d| d.spec.upstream_groups[0].servers[0].force_tcp = true,
        "forceTcp is only for plain servers",
    ),
    (
        "min above max",
        |d| d.spec.cache.min_ttl = d.spec.cache.max_ttl + 1,
        "minTtl must not be above maxTtl",
    ),
    (
        "cname with an address",
        |d| d.spec.policy.static_answers[2].a = vec![std::net::Ipv4Addr::new(10, 0, 0, 1)],
        "a static answer with cname takes no a, aaaa or txt",
    ),
    (
        "cname with aaaa",
        |d| d.spec.policy.static_answers[2].aaaa = vec!["fd00::1".parse().expect("ip")],
        "a static answer with cname takes no a, aaaa or txt",
    ),
    (
        "cname with txt",
        |d| d.spec.policy.static_answers[2].txt = vec!["hello".into()],
        "a static answer with cname takes no a, aaaa or txt",
    ),
    (
        "static answer with no record",
        |d| {
            let r = &mut d.spec.policy.static_answers[0];
            r.a.clear();
            r.aaaa.clear();
            r.txt.clear();
            r.cname = None;
        },
        "a static answer needs at least one of a, aaaa, cname, txt",
    ),
    (
        "block list with neither names nor file",
        |d| d.spec.policy.blocklists[0].names.clear(),
        "a block list needs names or a file",
    ),
    (
        "a TLS server beside a plain one in a group",
        |d| {
            let tls = d.spec.upstream_groups[0].servers[0].clone();
            let cluster = d
                .spec
                .upstream_groups
                .iter_mut()
                .find(|g| g.name == "cluster")
                .expect("the example has a cluster group");
            cluster.servers.push(tls);
        },
        "a group's servers are all plain DNS or all encrypted",
    ),
    (
        "a path on a DoT server",
        |d| d.spec.upstream_groups[0].servers[0].path = Some("/dns-query".into()),
        "path is only for https servers",
    ),
    (
        "DoH without a name",
        |d| {
            let s = &mut d.spec.upstream_groups[0].servers[0];
            s.protocol = dot_proxy_config::Protocol::Https;
            s.tls_name = None;
        },
        "a TLS server needs tlsName",
    ),
    (
        "completion of a type it does not complete",
        |d| d.spec.search_completion.types = vec!["A".into(), "PTR".into()],
        "searchCompletion types must be among",
    ),
    (
        "completion on with no type",
        |d| {
            d.spec.search_completion.enabled = true;
            d.spec.search_completion.types.clear();
        },
        "searchCompletion needs at least one type",
    ),
];

const ACCEPTED: &[(&str, Change)] = &[
    ("the example", |_| {}),
    ("a block list from a file alone", |d| {
        let b = &mut d.spec.policy.blocklists[0];
        b.names.clear();
        b.file = Some("/etc/dot-proxy/lists/telemetry.hosts".into());
    }),
    ("an address replaced by an alias", |d| {
        let r = &mut d.spec.policy.static_answers[0];
        r.a.clear();
        r.cname = Some("registry.example".into());
    }),
    ("plain for . with the opt-in", |d| {
        d.spec.zones[0].group = "cluster".into();
        d.spec.allow_plain_default = true;
    }),
    ("the cluster domain cached briefly", |d| {
        d.spec.cache.zones = vec![dot_proxy_config::CacheZone {
            zone: "cluster.local".into(),
            min_ttl: None,
            max_ttl: Some(30),
            negative_max_ttl: Some(5),
            rotate: None,
        }];
    }),
    ("dnstap to a TCP collector", |d| {
        d.spec.dnstap.enabled = true;
        d.spec.dnstap.address = "10.0.0.5:6000".parse().ok();
    }),
    (
        "dnstap to a Unix socket, off: a collector left configured",
        |d| {
            d.spec.dnstap.socket = Some("/var/run/dnstap/dnstap.sock".into());
        },
    ),
    ("search completion with the nodes' own search domain", |d| {
        d.spec.search_completion.enabled = true;
        d.spec.search_completion.host_search_domains = vec!["corp.example".into()];
    }),
    ("AAAA filtered everywhere", |d| {
        d.spec.filter_aaaa.zones = vec![".".into()];
    }),
    ("DNS over HTTPS on 443 with its own path", |d| {
        let s = &mut d.spec.upstream_groups[0].servers[0];
        s.protocol = dot_proxy_config::Protocol::Https;
        s.address = "1.1.1.1:443".parse().expect("addr");
        s.path = Some("/dns-query".into());
    }),
    ("DNS over QUIC", |d| {
        let s = &mut d.spec.upstream_groups[0].servers[0];
        s.protocol = dot_proxy_config::Protocol::Quic;
    }),
    ("pin-only TLS", |d| {
        let s = &mut d.spec.upstream_groups[0].servers[0];
        s.tls_name = None;
        s.verify_ca = false;
        s.spki_pins = vec!["YLh1dUR9y6Kja30RrAn7JKnbQG/uEtLMkBgFF2Fuihg="
            .parse()
            .expect("pin")];
    }),
];

#[test]
fn cel_rules_and_the_proxys_validation_agree_on_one_table() {
    use dot_proxy_operator::render::proxy_config;
    use kube::core::cel::validate_cel;

    let example = crate::support::example();
    assert!(
        example.spec.policy.static_answers[2].cname.is_some(),
        "the example's third static answer is a CNAME"
    );
    for (name, change, want) in REFUSED {
        let mut d = crate::support::example();
        change(&mut d);
        let err = validate_cel(&d).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: CEL says {err}");
        assert!(
            proxy_config(&d.spec).is_err(),
            "{name}: refused by CEL but accepted by the proxy's validation"
        );
    }
    for (name, change) in ACCEPTED {
        let mut d = crate::support::example();
        change(&mut d);
        validate_cel(&d).unwrap_or_else(|e| panic!("{name}: CEL refuses: {e}"));
        if let Err(e) = proxy_config(&d.spec) {
            panic!("{name}: accepted by CEL, refused by the proxy's validation: {e:?}");
        }
    }
}

/// Numeric bounds come from `dot_proxy_config::limits`, written once on the proxy's fields:
/// every `minimum`/`maximum` in the CRD's spec schema (found by walking it, so a new bound
/// is tested without a new row) is taken by the proxy's validation, and one step past it is
/// refused.
#[test]
fn numeric_bounds_are_the_proxys_own() {
    use dot_proxy_operator::render::proxy_config;
    use serde_json::{json, Value};

    /// (path, minimum, maximum, integer, minimum excluded) of every bounded number under `v`.
    type Bound = (String, f64, f64, bool, bool);
    fn walk(at: &str, v: &Value, out: &mut Vec<Bound>) {
        if let Some(max) = v.get("maximum").and_then(Value::as_f64) {
            let min = v.get("minimum").and_then(Value::as_f64).unwrap_or(f64::MIN);
            let excluded = v["exclusiveMinimum"] == true;
            out.push((at.to_string(), min, max, v["type"] == "integer", excluded));
        }
        for (k, sub) in v
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk(&format!("{at}.{k}"), sub, out);
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{at}.[]"), items, out);
        }
    }
    let spec = serde_json::to_value(schema()).expect("json")["properties"]["spec"].clone();
    let mut bounds = Vec::new();
    walk("spec", &spec, &mut bounds);
    // The operator's own: how many shard ConfigMaps it writes (MAX_OVERRIDE_SHARDS), not a
    // proxy setting.
    bounds.retain(|b| !b.0.starts_with("spec.target."));
    let found: BTreeSet<&str> = bounds.iter().map(|b| b.0.as_str()).collect();
    for must in [
        "spec.cache.maxTtl",
        "spec.cache.zones.[].negativeMaxTtl",
        "spec.rateLimit.qps",
        "spec.upstreamGroups.[].servers.[].poolSize",
        "spec.policy.staticAnswers.[].ttl",
        "spec.dnstap.sampleRate",
    ] {
        assert!(
            found.contains(must),
            "{must} is bounded in the CRD: {found:?}"
        );
    }

    // The example, with a list item wherever a bound sits in an item.
    let mut example = serde_json::to_value(crate::support::example()).expect("json");
    example["spec"]["cache"]["zones"] = json!([{"zone": "cluster.local"}]);
    // minTtl is zeroed so that the cross-field rule does not decide a row.
    example["spec"]["cache"]["minTtl"] = 0.into();
    let accepted = |path: &str, v: Value| -> bool {
        let mut doc = example.clone();
        let mut at = &mut doc;
        for part in path.split('.') {
            at = if part == "[]" {
                &mut at[0]
            } else {
                &mut at[part]
            };
        }
        *at = v;
        // A value the field's type cannot hold is refused by the schema and by parsing alike.
        serde_json::from_value::<DotProxyConfig>(doc).is_ok_and(|d| proxy_config(&d.spec).is_ok())
    };
    for (path, min, max, integer, excluded) in &bounds {
        let (min, max) = (*min, *max);
        let cases: Vec<(Value, bool)> = if *integer {
            let (lo, hi) = (min as i64, max as i64);
            vec![
                (lo.into(), true),
                (hi.into(), true),
                ((hi + 1).into(), false),
                ((lo - 1).into(), false),
            ]
        } else {
            let step = (max.abs() * 1e-3).max(1e-3);
            vec![
                (min.into(), !excluded),
                (max.into(), true),
                ((max + step).into(), false),
                ((min - step).into(), false),
            ]
        };
        for (v, ok) in cases {
            assert_eq!(
                accepted(path, v.clone()),
                ok,
                "{path} = {v} (CRD bounds {min}..={max}): the proxy's validation disagrees"
            );
        }
    }
}

/// Every length bound (`maxLength`/`minLength`, `maxItems`/`minItems`) in the sections that
/// are the proxy's own types is in this table, and the proxy's validation refuses one past
/// it: a bound written only as a schema attribute fails here.
#[test]
fn length_bounds_of_the_proxys_sections_are_the_proxys_own() {
    use dot_proxy_operator::render::proxy_config;
    use serde_json::{json, Value};

    /// A domain name of `n` characters (labels of 62).
    fn domain(n: usize) -> String {
        let mut s: String = "a"
            .repeat(62)
            .chars()
            .chain(['.'])
            .cycle()
            .take(n)
            .collect();
        if s.ends_with('.') {
            s.pop();
            s.push('a');
        }
        s
    }
    fn domains(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}.example")).collect()
    }
    type Make = fn(usize) -> Value;
    // Each row: the bound's path (its first part the section), the section's value with
    // that length, and whether a valid value of the maximum length exists (not for an address).
    let rows: &[(&str, Make, bool)] = &[
        ("log.level", |n| json!({"level": "a".repeat(n)}), true),
        (
            "cache.zones",
            |n| json!({"zones": domains(n).iter().map(|z| json!({"zone": z})).collect::<Vec<_>>()}),
            true,
        ),
        (
            "cache.zones.[].zone",
            |n| json!({"zones": [{"zone": format!("{}.", domain(n.saturating_sub(1)))}]}),
            true,
        ),
        (
            "dnstap.socket",
            |n| json!({"socket": format!("/{}", "a".repeat(n.saturating_sub(1)))[..n]}),
            true,
        ),
        (
            "dnstap.address",
            |n| json!({"address": "1".repeat(n)}),
            false,
        ),
        (
            "dnstap.identity",
            |n| json!({"identity": "a".repeat(n)}),
            true,
        ),
        (
            "dnstap.version",
            |n| json!({"version": "a".repeat(n)}),
            true,
        ),
        (
            "searchCompletion.clusterDomain",
            |n| json!({"clusterDomain": domain(n)}),
            true,
        ),
        (
            "searchCompletion.hostSearchDomains",
            |n| json!({"hostSearchDomains": domains(n)}),
            true,
        ),
        (
            "searchCompletion.hostSearchDomains.[]",
            |n| json!({"hostSearchDomains": [domain(n)]}),
            true,
        ),
        (
            "searchCompletion.types",
            |n| json!({"types": vec!["A"; n]}),
            true,
        ),
        (
            "searchCompletion.types.[]",
            |n| json!({"types": ["A".repeat(n)]}),
            false,
        ),
        ("filterAaaa.zones", |n| json!({"zones": domains(n)}), true),
        (
            "filterAaaa.zones.[]",
            |n| json!({"zones": [domain(n)]}),
            true,
        ),
    ];

    // The bounds the CRD has under those sections: path -> (min, max).
    fn walk(at: &str, v: &Value, out: &mut Vec<(String, u64, u64)>) {
        for (min, max) in [("minLength", "maxLength"), ("minItems", "maxItems")] {
            if let Some(hi) = v.get(max).and_then(Value::as_u64) {
                let lo = v.get(min).and_then(Value::as_u64).unwrap_or(0);
                out.push((at.to_string(), lo, hi));
            }
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                walk(&format!("{at}.{k}"), sub, out);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{at}.[]"), items, out);
        }
    }
    let spec = serde_json::to_value(schema()).expect("json")["properties"]["spec"].clone();
    let mut bounds = Vec::new();
    for section in [
        "cache",
        "rateLimit",
        "privacy",
        "log",
        "dnstap",
        "searchCompletion",
        "filterAaaa",
    ] {
        walk(section, &spec["properties"][section], &mut bounds);
    }
    let listed: BTreeSet<&str> = rows.iter().map(|r| r.0).collect();
    let found: BTreeSet<&str> = bounds.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(
        found, listed,
        "every length bound of the proxy's sections has a row"
    );

    let accepted = |section: &str, value: Value| -> bool {
        let mut doc = serde_json::to_value(crate::support::example()).expect("json");
        doc["spec"][section] = value;
        serde_json::from_value::<DotProxyConfig>(doc).is_ok_and(|d| proxy_config(&d.spec).is_ok())
    };
    for (path, lo, hi) in &bounds {
        let Some((_, make, valid_at_max)) = rows.iter().find(|r| r.0 == path) else {
            continue;
        };
        let section = path.split('.').next().expect("a section");
        let (lo, hi) = (*lo as usize, *hi as usize);
        if *valid_at_max {
            assert!(
                accepted(section, make(hi)),
                "{path}: length {hi} (the CRD's maximum) refused by the proxy"
            );
        }
        assert!(
            !accepted(section, make(hi + 1)),
            "{path}: length {} accepted by the proxy, refused by the CRD",
            hi + 1
        );
        if lo > 0 {
            assert!(
                !accepted(section, make(lo - 1)),
                "{path}: length {} accepted by the proxy, refused by the CRD",
                lo - 1
            );
        }
    }
}
