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
        ["tls", "plain"]
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
    assert_eq!(server_rules, Some(4));
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

/// The CEL rules, run by kube's client-side evaluator against the object as the API server
/// would see it: they compile, accept the example, and refuse what they are there to refuse.
#[test]
fn cel_rules_accept_the_example_and_refuse_the_rest() {
    use kube::core::cel::validate_cel;

    let ok = crate::support::example();
    validate_cel(&ok).expect("the example passes every rule");

    let refused = |name: &str, change: &dyn Fn(&mut DotProxyConfig), want: &str| {
        let mut d = crate::support::example();
        change(&mut d);
        let err = validate_cel(&d).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
    };
    refused(
        "no default route",
        &|d| d.spec.zones.retain(|z| z.zone != "."),
        "zones must route",
    );
    refused(
        "dangling group",
        &|d| d.spec.zones[1].group = "nowhere".into(),
        "must name one of upstreamGroups",
    );
    refused(
        "plain for .",
        &|d| d.spec.zones[0].group = "cluster".into(),
        "allowPlainDefault",
    );
    refused(
        "TLS without a name",
        &|d| d.spec.upstream_groups[0].servers[0].tls_name = None,
        "a TLS server needs tlsName",
    );
    refused(
        "plain with a name",
        &|d| d.spec.upstream_groups[2].servers[0].tls_name = Some("x.example".into()),
        "plain servers take no tlsName",
    );
    refused(
        "verifyCa off without pins",
        &|d| d.spec.upstream_groups[0].servers[0].verify_ca = false,
        "verifyCa may be false",
    );
    refused(
        "forceTcp on a TLS server",
        &|d| d.spec.upstream_groups[0].servers[0].force_tcp = true,
        "forceTcp is only for plain servers",
    );
    refused(
        "min above max",
        &|d| d.spec.cache.min_ttl = d.spec.cache.max_ttl + 1,
        "minTtl must not be above maxTtl",
    );

    refused(
        "cname with an address",
        &|d| {
            let r = &mut d.spec.policy.static_answers[2];
            assert!(
                r.cname.is_some(),
                "the example's third static answer is a CNAME"
            );
            r.a = vec!["10.0.0.1".into()];
        },
        "a static answer with cname takes no a, aaaa or txt",
    );
    refused(
        "cname with aaaa",
        &|d| d.spec.policy.static_answers[2].aaaa = vec!["fd00::1".into()],
        "a static answer with cname takes no a, aaaa or txt",
    );
    refused(
        "cname with txt",
        &|d| d.spec.policy.static_answers[2].txt = vec!["hello".into()],
        "a static answer with cname takes no a, aaaa or txt",
    );
    refused(
        "static answer with no record",
        &|d| {
            let r = &mut d.spec.policy.static_answers[0];
            r.a.clear();
            r.aaaa.clear();
            r.txt.clear();
            r.cname = None;
        },
        "a static answer needs at least one of a, aaaa, cname, txt",
    );
    refused(
        "block list with neither names nor file",
        &|d| d.spec.policy.blocklists[0].names.clear(),
        "a block list needs names or a file",
    );

    let mut from_file = crate::support::example();
    let b = &mut from_file.spec.policy.blocklists[0];
    b.names.clear();
    b.file = Some("/etc/dot-proxy/lists/telemetry.hosts".into());
    validate_cel(&from_file).expect("a block list from a file alone");
    let mut alias_only = crate::support::example();
    let r = &mut alias_only.spec.policy.static_answers[0];
    r.a.clear();
    r.cname = Some("registry.example".into());
    validate_cel(&alias_only).expect("an address replaced by an alias");

    let mut opted_in = crate::support::example();
    opted_in.spec.zones[0].group = "cluster".into();
    opted_in.spec.allow_plain_default = true;
    validate_cel(&opted_in).expect("plain for . with the opt-in");
    let mut pinned = crate::support::example();
    let s = &mut pinned.spec.upstream_groups[0].servers[0];
    s.tls_name = None;
    s.verify_ca = false;
    s.spki_pins = vec!["YLh1dUR9y6Kja30RrAn7JKnbQG/uEtLMkBgFF2Fuihg=".into()];
    validate_cel(&pinned).expect("pin-only TLS");
}
