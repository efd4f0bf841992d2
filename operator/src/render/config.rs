//! `DotProxyConfigSpec` -> the proxy's own `Config`, checked by the proxy's own `validate()`.

use std::net::SocketAddr;
use std::path::PathBuf;

use dot_proxy_config::{
    AdminConfig, Config, FieldPath, KubernetesConfig, OverridesConfig, PathSegment, PolicyConfig,
};

use crate::resource::{camel_case, Camel, DotProxyConfigSpec, Section};
use crate::OVERRIDES_DIR;

/// Builds the proxy config a spec describes. Per-pod overrides are not in it (they go to the
/// shards); `overrides.dir` points at where the chart mounts those.
///
/// Errors name the resource field (`spec.upstreamGroups[0].servers[1].tlsName: ...`), both for
/// values that could not be read and for what the proxy's `Config::validate()` reports.
pub fn proxy_config(spec: &DotProxyConfigSpec) -> Result<Config, Vec<String>> {
    let mut errs = Vec::new();
    report(&mut errs, "cache", &spec.cache);
    report(&mut errs, "rateLimit", &spec.rate_limit);
    report(&mut errs, "privacy", &spec.privacy);
    report(&mut errs, "log", &spec.log);
    report(&mut errs, "dnstap", &spec.dnstap);
    report(&mut errs, "searchCompletion", &spec.search_completion);
    report(&mut errs, "filterAaaa", &spec.filter_aaaa);
    report(&mut errs, "zones", &spec.zones);
    report(&mut errs, "nodeLocal", &spec.node_local);
    report(&mut errs, "policy", &spec.policy);
    for (i, g) in spec.upstream_groups.iter().enumerate() {
        report(&mut errs, &format!("upstreamGroups[{i}]"), &g.group);
    }

    let listen = spec
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|_| {
                    errs.push(format!(
                        "spec.listen[{i}]: {a:?} is not IP:PORT (IPv6 as [addr]:port)"
                    ))
                })
                .ok()
        })
        .collect();
    let admin_listen = match spec.admin_listen.trim() {
        "" => None,
        a => a
            .parse::<SocketAddr>()
            .map_err(|_| {
                errs.push(format!(
                    "spec.adminListen: {a:?} is not IP:PORT (or empty to turn it off)"
                ))
            })
            .ok(),
    };

    let config = Config {
        listen,
        log: (*spec.log).clone(),
        admin: AdminConfig {
            listen: admin_listen,
        },
        upstream_groups: spec
            .upstream_groups
            .iter()
            .map(|g| (*g.group).clone())
            .collect(),
        zones: (*spec.zones).clone(),
        allow_plain_default: spec.allow_plain_default,
        cache: (*spec.cache).clone(),
        rate_limit: (*spec.rate_limit).clone(),
        privacy: (*spec.privacy).clone(),
        client_groups: Vec::new(),
        overrides: OverridesConfig {
            dir: Some(PathBuf::from(OVERRIDES_DIR)),
            node_name: None,
            shards: Some(spec.target.override_shards.max(1)),
        },
        node_local: (*spec.node_local).clone(),
        policy: (*spec.policy).clone(),
        dnstap: (*spec.dnstap).clone(),
        // Completion needs the pod watch; the node's name comes from each proxy's
        // environment (DOT_PROXY_NODE_NAME), its credentials from its service account.
        kubernetes: KubernetesConfig {
            enabled: spec.search_completion.enabled,
            ..KubernetesConfig::default()
        },
        search_completion: (*spec.search_completion).clone(),
        filter_aaaa: (*spec.filter_aaaa).clone(),
        ..Config::default()
    };

    if let Err(e) = config.validate() {
        for fe in e.0 {
            let proxy_field = fe.field();
            let message = fe.message.naming(spec_path);
            if on_the_proxys_filesystem(&proxy_field, &message)
                || supplied_on_the_node(&proxy_field)
            {
                continue;
            }
            // A field already reported (a value that could not be read, so left out) would
            // only be reported again in the proxy's words.
            let field = spec_path(&fe.path);
            if !errs.iter().any(|m| reports(m, &field)) {
                let rule = policy_rule(&spec.policy, &proxy_field).unwrap_or_default();
                errs.push(format!("{field}: {message}{rule}"));
            }
        }
    }
    if errs.is_empty() {
        Ok(config)
    } else {
        Err(errs)
    }
}

/// The values of section `at` that could not be read.
fn report<T: Section>(errs: &mut Vec<String>, at: &str, section: &Camel<T>) {
    for (field, message) in section.problems() {
        let dot = if field.is_empty() || field.starts_with('[') {
            ""
        } else {
            "."
        };
        errs.push(format!("spec.{at}{dot}{field}: {message}"));
    }
}

/// Whether `message` (`field: ...`) is about `field` or something inside it. `[1]` does not
/// cover `[10]`.
fn reports(message: &str, field: &str) -> bool {
    message
        .strip_prefix(field)
        .is_some_and(|rest| rest.starts_with([':', '.', '[', ' ']))
}

/// A block-list file is read by the proxies, from their own filesystem; the operator cannot
/// see it, so the proxy's "cannot read" check says nothing about the resource. A missing
/// file is reported by the proxy when it loads the config (the last good config stays).
fn on_the_proxys_filesystem(proxy_field: &str, message: &str) -> bool {
    proxy_field.starts_with("policy.blocklists[")
        && proxy_field.ends_with("].file")
        && message.starts_with("cannot read ")
}

/// The node name is each proxy's own (the DaemonSet sets `DOT_PROXY_NODE_NAME`): a rendered
/// config never has it.
fn supplied_on_the_node(proxy_field: &str) -> bool {
    proxy_field == "kubernetes.node_name"
}

/// ` (rule "name")` for a policy field, so that an error in a long list names the rule as
/// well as its index.
fn policy_rule(p: &PolicyConfig, proxy_field: &str) -> Option<String> {
    let index = |rest: &str| -> Option<usize> { rest.split(']').next()?.parse().ok() };
    let label = if let Some(rest) = proxy_field.strip_prefix("policy.static_answers[") {
        &p.static_answers.get(index(rest)?)?.name
    } else if let Some(rest) = proxy_field.strip_prefix("policy.blocklists[") {
        &p.blocklists.get(index(rest)?)?.name
    } else if let Some(rest) = proxy_field.strip_prefix("policy.rewrites[") {
        &p.rewrites.get(index(rest)?)?.from
    } else {
        return None;
    };
    Some(format!(" (rule {label:?})"))
}

/// Settings the resource places elsewhere than the proxy's config does.
const MOVED: &[(&[&str], &str)] = &[(&["admin", "listen"], "adminListen")];

/// Turns a proxy config path (`upstream_groups[0].servers[1].tls_name`) into the resource's
/// (`spec.upstreamGroups[0].servers[1].tlsName`): field names camelCased, map keys and
/// indices kept, and [`MOVED`] settings at their own place.
pub fn spec_path(proxy_field: &FieldPath) -> String {
    let mut segments = proxy_field.segments();
    let mut out = String::from("spec");
    if let Some((from, to)) = MOVED
        .iter()
        .find(|(from, _)| proxy_field.starts_with_fields(from) && segments.len() >= from.len())
    {
        out = format!("spec.{to}");
        segments = &segments[from.len()..];
    }
    for s in segments {
        match s {
            PathSegment::Field(f) => {
                out.push('.');
                out.push_str(&camel_case(f));
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
            PathSegment::Key(k) => out.push_str(&format!("[{k:?}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_resource() {
        let p = |f: &'static str| FieldPath::from(f);
        assert_eq!(
            spec_path(
                &p("upstream_groups")
                    .index(0)
                    .field("servers")
                    .index(1)
                    .field("tls_name")
            ),
            "spec.upstreamGroups[0].servers[1].tlsName"
        );
        assert_eq!(
            spec_path(&p("rate_limit").field("ipv6_prefix")),
            "spec.rateLimit.ipv6Prefix"
        );
        assert_eq!(
            spec_path(&p("cache").field("prefetch").field("remaining_fraction")),
            "spec.cache.prefetch.remainingFraction"
        );
        assert_eq!(spec_path(&p("admin").field("listen")), "spec.adminListen");
        assert_eq!(spec_path(&p("zones")), "spec.zones");
        assert_eq!(
            spec_path(&p("policy").field("static_answers").index(3).field("cname")),
            "spec.policy.staticAnswers[3].cname"
        );
    }

    #[test]
    fn an_index_does_not_cover_a_longer_one() {
        let m = "spec.policy.staticAnswers[10].a[0]: \"x\" is not an IPv4 address";
        assert!(reports(m, "spec.policy.staticAnswers[10]"));
        assert!(reports(m, "spec.policy.staticAnswers[10].a[0]"));
        assert!(!reports(m, "spec.policy.staticAnswers[1]"));
        assert!(!reports(m, "spec.policy.staticAnswers[10].aaaa"));
    }
}
