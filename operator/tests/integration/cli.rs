//! The binary's `crd` and `render` commands.

use std::process::Command;

use dot_proxy_config::Config;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::support::{example_path, repo_root, temp_dir};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dot-proxy-operator"))
}

#[test]
fn crd_prints_the_committed_crd() {
    let out = bin().arg("crd").output().expect("runs");
    assert!(out.status.success());
    let chart = std::fs::read(repo_root().join("charts/dot-proxy/crds/dotproxyconfigs.yaml"))
        .expect("chart copy");
    assert!(
        out.stdout == chart,
        "`dot-proxy-operator crd` and the chart's copy differ"
    );
}

#[test]
fn render_prints_configmaps_and_warns_about_pods() {
    let dir = temp_dir("cli");
    let pods = dir.join("pods.json");
    std::fs::write(
        &pods,
        r#"{"apiVersion":"v1","kind":"List","items":[
          {"metadata":{"name":"api","namespace":"shop","uid":"u1","annotations":{"dns.dot-proxy.io/qps":"25"}},
           "spec":{"nodeName":"node-1","containers":[{"name":"c","image":"x"}]},
           "status":{"phase":"Running","podIP":"10.244.1.7","podIPs":[{"ip":"10.244.1.7"}]}},
          {"metadata":{"name":"bad","namespace":"shop","uid":"u2","annotations":{"dns.dot-proxy.io/burst":"-1"}},
           "spec":{"nodeName":"node-1"},"status":{"phase":"Running","podIP":"10.244.1.8"}},
          {"metadata":{"name":"plain","namespace":"shop","uid":"u3"},"spec":{"nodeName":"node-1"},
           "status":{"phase":"Running","podIP":"10.244.1.9"}}]}"#,
    )
    .expect("write pods");
    let out = render(&example_path(), &["--pods".as_ref(), pods.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: shop/bad: dns.dot-proxy.io/burst=\"-1\" ignored"),
        "{stderr}"
    );

    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let maps: Vec<ConfigMap> = stdout
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).expect("each document is a ConfigMap"))
        .collect();
    assert_eq!(maps.len(), 9, "config + 8 shards");
    let main = &maps[0];
    assert_eq!(main.metadata.name.as_deref(), Some("dot-proxy-config"));
    assert_eq!(main.metadata.namespace.as_deref(), Some("dot-proxy"));
    let data = main.data.as_ref().expect("data");
    let path = dir.join("config.yaml");
    std::fs::write(&path, &data["config.yaml"]).expect("write");
    Config::load(&path).expect("check-config accepts the printed config");
    let entries: usize = maps[1..]
        .iter()
        .map(|m| {
            let (_, text) = m
                .data
                .as_ref()
                .and_then(|d| d.iter().next())
                .expect("one key");
            dot_proxy_operator::render::parse_shard(text)
                .expect("shard")
                .values()
                .map(|o| o.rate_limits.len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(entries, 1);
}

/// `render --resource file` with more arguments.
fn render(file: &std::path::Path, more: &[&std::ffi::OsStr]) -> std::process::Output {
    bin()
        .args(["render", "--resource"])
        .arg(file)
        .args(more)
        .output()
        .expect("runs")
}

/// Fails unless `render --resource file` fails saying each of `says`.
fn assert_render_refuses(file: &std::path::Path, says: &[&str]) {
    let out = render(file, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for s in says {
        assert!(stderr.contains(s), "{s}: {stderr}");
    }
}

#[test]
fn render_refuses_an_invalid_resource_with_the_field_named() {
    let dir = temp_dir("cli-invalid");
    let text = std::fs::read_to_string(example_path())
        .expect("example")
        .replace(
            "    - zone: .\n      group: public",
            "    - zone: .\n      group: cluster",
        );
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, text).expect("write");
    assert_render_refuses(&bad, &["spec.zones[0].group", "allowPlainDefault"]);

    let typo = dir.join("typo.yaml");
    std::fs::write(&typo, "apiVersion: dns.dot-proxy.io/v1alpha1\nkind: DotProxyConfig\nmetadata: {name: x}\nspec:\n  upstreamGroup: []\n  zones: []\n")
        .expect("write");
    // Unknown fields are named.
    assert_render_refuses(&typo, &["upstreamGroup"]);
}

/// A field this operator's CRD does not have (a newer CRD's, or a typo of an optional one)
/// is left out with a warning naming it, as the running operator does (status.unknownFields),
/// and the rest renders.
#[test]
fn render_warns_about_fields_it_does_not_know() {
    let dir = temp_dir("cli-unknown");
    let text = std::fs::read_to_string(example_path())
        .expect("example")
        .replacen("spec:\n", "spec:\n  hedging: {after: 50ms}\n", 1);
    let newer = dir.join("newer.yaml");
    std::fs::write(&newer, text).expect("write");
    let out = render(&newer, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("spec.hedging: unknown field, ignored (not in this operator's CRD)"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.yaml"));
}
