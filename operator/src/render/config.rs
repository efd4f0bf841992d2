//! `DotProxyConfigSpec` -> the proxy's own `Config`, checked by the proxy's own `validate()`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use dot_proxy_config::{
    AdminConfig, BlockList, Config, FieldPath, KubernetesConfig, OverridesConfig, PathSegment,
    PolicyConfig, Protocol, RewriteRule, StaticRule, UpstreamGroup, UpstreamServer,
};

use crate::resource::{camel_case, Checked, DotProxyConfigSpec, PolicySpec, UpstreamServerSpec};
use crate::OVERRIDES_DIR;

/// Builds the proxy config a spec describes. Per-pod overrides are not in it (they go to the
/// shards); `overrides.dir` points at where the chart mounts those.
///
/// Errors name the resource field (`spec.upstreamGroups[0].servers[1].tlsName: ...`), both for
/// what the conversion finds and for what the proxy's `Config::validate()` reports.
pub fn proxy_config(spec: &DotProxyConfigSpec) -> Result<Config, Vec<String>> {
    let mut errs = Vec::new();
    let defaults = Config::default();
    for (section, problem) in [
        ("cache", spec.cache.problem()),
        ("rateLimit", spec.rate_limit.problem()),
        ("privacy", spec.privacy.problem()),
        ("log", spec.log.problem()),
        ("dnstap", spec.dnstap.problem()),
        ("searchCompletion", spec.search_completion.problem()),
        ("filterAaaa", spec.filter_aaaa.problem()),
        ("zones", spec.zones.problem()),
        ("nodeLocal", spec.node_local.problem()),
    ] {
        if let Some((field, message)) = problem {
            let dot = if field.starts_with('[') { "" } else { "." };
            errs.push(format!("spec.{section}{dot}{field}: {message}"));
        }
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

    let mut upstream_groups = Vec::new();
    for (gi, g) in spec.upstream_groups.iter().enumerate() {
        let gp = format!("spec.upstreamGroups[{gi}]");
        let policy = checked(
            &mut errs,
            &format!("{gp}.policy"),
            &g.policy,
            "failover, round_robin, fastest, race",
        );
        let timeout = checked(
            &mut errs,
            &format!("{gp}.timeout"),
            &g.timeout,
            "a duration like 2s or 500ms",
        );
        let servers = g
            .servers
            .iter()
            .enumerate()
            .filter_map(|(si, s)| server(&mut errs, &format!("{gp}.servers[{si}]"), s))
            .collect();
        upstream_groups.push(UpstreamGroup {
            name: g.name.clone(),
            policy: policy.unwrap_or_default(),
            timeout: timeout.unwrap_or(dot_proxy_config::Dur::secs(2)),
            servers,
        });
    }

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

    let policy = policy(&mut errs, &spec.policy);

    let config = Config {
        listen,
        log: (*spec.log).clone(),
        admin: AdminConfig {
            listen: admin_listen,
        },
        upstream_groups,
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
        policy,
        dnstap: (*spec.dnstap).clone(),
        // Completion needs the pod watch; the node's name comes from each proxy's
        // environment (DOT_PROXY_NODE_NAME), its credentials from its service account.
        kubernetes: KubernetesConfig {
            enabled: spec.search_completion.enabled,
            ..KubernetesConfig::default()
        },
        search_completion: (*spec.search_completion).clone(),
        filter_aaaa: (*spec.filter_aaaa).clone(),
        ..defaults
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
            // A field the conversion already reported (an address it could not parse, so
            // left out) would only be reported again in the proxy's words.
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
fn policy_rule(p: &PolicySpec, proxy_field: &str) -> Option<String> {
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

/// The policy rules as the proxy takes them. Addresses that do not parse are reported and
/// left out; everything else is the proxy's to check (names, the CNAME rule, TXT lengths).
fn policy(errs: &mut Vec<String>, p: &PolicySpec) -> PolicyConfig {
    fn addrs<T: FromStr>(
        errs: &mut Vec<String>,
        field: &str,
        rule: &str,
        values: &[String],
        what: &str,
    ) -> Vec<T> {
        values
            .iter()
            .enumerate()
            .filter_map(|(j, v)| {
                v.trim()
                    .parse::<T>()
                    .map_err(|_| {
                        errs.push(format!(
                            "{field}[{j}]: {v:?} is not an {what} address (rule {rule:?})"
                        ))
                    })
                    .ok()
            })
            .collect()
    }

    let static_answers = p
        .static_answers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.policy.staticAnswers[{i}]");
            StaticRule {
                name: r.name.clone(),
                ttl: r.ttl,
                a: addrs::<Ipv4Addr>(errs, &format!("{f}.a"), &r.name, &r.a, "IPv4"),
                aaaa: addrs::<Ipv6Addr>(errs, &format!("{f}.aaaa"), &r.name, &r.aaaa, "IPv6"),
                cname: r.cname.clone(),
                txt: r.txt.clone(),
            }
        })
        .collect();

    let blocklists = p
        .blocklists
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let f = format!("spec.policy.blocklists[{i}]");
            let action = checked(
                errs,
                &format!("{f}.action"),
                &b.action,
                "nxdomain, refused, null_address",
            );
            if let Some(file) = &b.file {
                if !file.starts_with('/') {
                    errs.push(format!(
                        "{f}.file: {file:?} must be an absolute path in the proxy container (rule {:?})",
                        b.name
                    ));
                }
            }
            BlockList {
                name: b.name.clone(),
                names: b.names.clone(),
                file: b.file.as_ref().map(PathBuf::from),
                action: action.unwrap_or_default(),
            }
        })
        .collect();

    let rewrites = p
        .rewrites
        .iter()
        .map(|r| RewriteRule {
            from: r.from.clone(),
            to: r.to.clone(),
            suffix: r.suffix,
        })
        .collect();

    PolicyConfig {
        static_answers,
        blocklists,
        rewrites,
    }
}

fn checked<T: Clone>(
    errs: &mut Vec<String>,
    field: &str,
    v: &Checked<T>,
    expected: &str,
) -> Option<T> {
    match v.get() {
        Ok(v) => Some(v.clone()),
        Err(m) => {
            errs.push(format!("{field}: {m} (expected {expected})"));
            None
        }
    }
}

fn server(errs: &mut Vec<String>, sp: &str, s: &UpstreamServerSpec) -> Option<UpstreamServer> {
    let protocol = checked(
        errs,
        &format!("{sp}.protocol"),
        &s.protocol,
        "tls, https, quic, plain",
    )?;
    let default_port = protocol.default_port();
    let Some(address) = dot_proxy_config::parse_server_address(&s.address, default_port) else {
        errs.push(format!(
            "{sp}.address: {:?} is not an IP address or IP:PORT (IPv6 as [addr]:port)",
            s.address
        ));
        return None;
    };
    let base = match protocol {
        Protocol::Plain => UpstreamServer::plain(address),
        p => UpstreamServer::encrypted(p, address, ""),
    };
    let mut dur = |name: &str, v: &Option<Checked<dot_proxy_config::Dur>>, default| match v {
        None => default,
        Some(c) => {
            checked(errs, &format!("{sp}.{name}"), c, "a duration like 30s").unwrap_or(default)
        }
    };
    Some(UpstreamServer {
        idle_timeout: dur("idleTimeout", &s.idle_timeout, base.idle_timeout),
        max_connection_age: dur(
            "maxConnectionAge",
            &s.max_connection_age,
            base.max_connection_age,
        ),
        connect_timeout: dur("connectTimeout", &s.connect_timeout, base.connect_timeout),
        tls_name: s.tls_name.clone(),
        spki_pins: s
            .spki_pins
            .iter()
            .enumerate()
            .filter_map(|(pi, p)| {
                p.parse()
                    .map_err(|m| errs.push(format!("{sp}.spkiPins[{pi}]: {m}")))
                    .ok()
            })
            .collect(),
        verify_ca: s.verify_ca,
        pool_size: s.pool_size as usize,
        force_tcp: s.force_tcp,
        path: s.path.clone(),
        ..base
    })
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

    #[test]
    fn server_addresses() {
        assert_eq!(
            dot_proxy_config::parse_server_address("1.1.1.1", 853),
            Some("1.1.1.1:853".parse().expect("addr"))
        );
        assert_eq!(
            dot_proxy_config::parse_server_address("1.1.1.1:8853", 853),
            Some("1.1.1.1:8853".parse().expect("addr"))
        );
        assert_eq!(
            dot_proxy_config::parse_server_address("[2606:4700::1111]", 853),
            Some("[2606:4700::1111]:853".parse().expect("addr"))
        );
        assert_eq!(
            dot_proxy_config::parse_server_address("2606:4700::1111", 853),
            Some("[2606:4700::1111]:853".parse().expect("addr"))
        );
        assert_eq!(
            dot_proxy_config::parse_server_address("10.96.0.10", 53),
            Some("10.96.0.10:53".parse().expect("addr"))
        );
        assert_eq!(
            dot_proxy_config::parse_server_address("1.1.1.999:853", 853),
            None
        );
        assert_eq!(
            dot_proxy_config::parse_server_address("dns.google:853", 853),
            None
        );
    }
}
