//! What the proxy's config sections need only in Kubernetes: defaults that differ from the
//! standalone proxy's (`limits::kubernetes`), fields the resource does not offer, and CEL
//! rules (`x-kubernetes-validations`) for references between fields, checked at `kubectl
//! apply` time. Everything else (fields, bounds, descriptions) is the proxy's own.

use dot_proxy_config::{
    limits, CacheConfig, DnstapConfig, FilterAaaaConfig, LogConfig, LogFormat, NodeLocalConfig,
    PolicyConfig, PrivacyConfig, Protocol, RateLimitConfig, SearchCompletionConfig, UpstreamGroup,
    ZoneRoute,
};
use serde_json::{json, Map, Value};

use super::camel::Section;

fn rules(schema: &mut Map<String, Value>, rules: Value) {
    schema.insert("x-kubernetes-validations".into(), rules);
}

/// `cache.maxBytes` is `limits::kubernetes::CACHE_MAX_BYTES`: one node cache serves every
/// pod of the node.
impl Section for CacheConfig {
    fn k8s_default() -> Self {
        CacheConfig {
            max_bytes: limits::kubernetes::CACHE_MAX_BYTES,
            ..CacheConfig::default()
        }
    }
    fn patch(schema: &mut Map<String, Value>) {
        rules(
            schema,
            json!([{ "rule": "self.minTtl <= self.maxTtl", "message": "minTtl must not be above maxTtl" }]),
        );
    }
}

/// `rateLimit.ipv6Prefix` is `limits::kubernetes::RATE_IPV6_PREFIX` (each node has one /64
/// of pod addresses); per-client overrides come from pod annotations, not the resource.
impl Section for RateLimitConfig {
    fn k8s_default() -> Self {
        RateLimitConfig {
            ipv6_prefix: limits::kubernetes::RATE_IPV6_PREFIX,
            ..RateLimitConfig::default()
        }
    }
    const HIDDEN: &'static [&'static str] = &["top_k", "overrides"];
}

impl Section for PrivacyConfig {
    fn k8s_default() -> Self {
        PrivacyConfig::default()
    }
}

/// JSON logs by default: the cluster's log pipeline parses them.
impl Section for LogConfig {
    fn k8s_default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            ..LogConfig::default()
        }
    }
}

impl Section for DnstapConfig {
    fn k8s_default() -> Self {
        DnstapConfig::default()
    }
    fn patch(schema: &mut Map<String, Value>) {
        rules(
            schema,
            json!([{
                "rule": "!self.enabled || (has(self.socket) != has(self.address))",
                "message": "dnstap needs exactly one of socket and address when enabled"
            }]),
        );
    }
}

impl Section for SearchCompletionConfig {
    fn k8s_default() -> Self {
        SearchCompletionConfig::default()
    }
    fn patch(schema: &mut Map<String, Value>) {
        rules(
            schema,
            json!([
                {
                    "rule": "self.types.all(t, t in ['A', 'AAAA', 'HTTPS', 'SVCB', 'SRV', 'TXT', 'MX', 'CNAME'])",
                    "message": "searchCompletion types must be among A, AAAA, HTTPS, SVCB, SRV, TXT, MX, CNAME"
                },
                {
                    "rule": "!self.enabled || size(self.types) > 0",
                    "message": "searchCompletion needs at least one type when enabled"
                }
            ]),
        );
    }
}

impl Section for FilterAaaaConfig {
    fn k8s_default() -> Self {
        FilterAaaaConfig::default()
    }
}

/// `zones`: a list in the resource, merged by `zone` (`x-kubernetes-list-type: map`).
impl Section for Vec<ZoneRoute> {
    fn k8s_default() -> Self {
        Vec::new()
    }
    fn patch(schema: &mut Map<String, Value>) {
        schema.insert("minItems".into(), limits::ZONES.min.into());
        schema.insert("maxItems".into(), limits::ZONES.max.into());
        list_map(schema, "zone");
    }
}

/// On by default: the node-local address is what pods are pointed at.
impl Section for NodeLocalConfig {
    fn k8s_default() -> Self {
        NodeLocalConfig {
            enabled: true,
            ..NodeLocalConfig::default()
        }
    }
    fn patch(schema: &mut Map<String, Value>) {
        // Addresses are plain strings to the API server (the proxy parses them).
        let items = schema
            .get_mut("properties")
            .and_then(|p| p.pointer_mut("/addresses/items"))
            .and_then(Value::as_object_mut);
        if let Some(items) = items {
            items.remove("format");
        }
    }
}

/// One upstream group (the resource's `upstreamGroups[]` adds `grantedTo`). A server's
/// address may be a bare IP, for its protocol's default port; the servers' own CA files are
/// not offered (the proxies' filesystem is the chart's).
impl Section for UpstreamGroup {
    /// The proxy's defaults for every field that has one (a new field needs nothing here).
    fn k8s_default() -> Self {
        serde_json::from_value(json!({"name": "", "servers": []}))
            .expect("a group needs only a name and servers")
    }
    const HIDDEN: &'static [&'static str] = &["servers.[].ca_file"];
    fn prepare(value: &mut Value) {
        let servers = value.get_mut("servers").and_then(Value::as_array_mut);
        for s in servers.into_iter().flatten() {
            let protocol = s.get("protocol").cloned().unwrap_or(Value::Null);
            let port = serde_json::from_value::<Protocol>(protocol)
                .unwrap_or_default()
                .default_port();
            let Some(Value::String(address)) = s.get_mut("address") else {
                continue;
            };
            if let Some(a) = dot_proxy_config::parse_server_address(address, port) {
                *address = a.to_string();
            }
        }
    }
    fn patch(schema: &mut Map<String, Value>) {
        rules(
            schema,
            json!([{
                "rule": "self.servers.all(s, has(s.protocol) && s.protocol == 'plain') || self.servers.all(s, !has(s.protocol) || s.protocol != 'plain')",
                "message": "a group's servers are all plain DNS or all encrypted: a plain server beside an encrypted one would get its queries in clear text when it fails"
            }]),
        );
        let plain = "has(self.protocol) && self.protocol == 'plain'";
        let pins = "has(self.spkiPins) && size(self.spkiPins) > 0";
        if let Some(server) = item(schema, "servers") {
            rules(
                server,
                json!([
                    {
                        "rule": "!has(self.protocol) || self.protocol != 'plain' || (!has(self.tlsName) && (!has(self.spkiPins) || size(self.spkiPins) == 0))",
                        "message": "plain servers take no tlsName or spkiPins"
                    },
                    {
                        "rule": format!("({plain}) || has(self.tlsName) || ({pins} && has(self.verifyCa) && !self.verifyCa)"),
                        "message": "a TLS server needs tlsName (the name its certificate must be valid for), or spkiPins with verifyCa: false"
                    },
                    {
                        "rule": format!("!has(self.verifyCa) || self.verifyCa || ({pins})"),
                        "message": "verifyCa may be false only when spkiPins are set"
                    },
                    {
                        "rule": format!("!has(self.forceTcp) || !self.forceTcp || ({plain})"),
                        "message": "forceTcp is only for plain servers"
                    },
                    {
                        "rule": "!has(self.path) || (has(self.protocol) && self.protocol == 'https')",
                        "message": "path is only for https servers"
                    }
                ]),
            );
        }
    }
}

/// Static answers, block lists and rewrites: lists merged by their names, with CEL rules
/// for what a rule must hold.
impl Section for PolicyConfig {
    fn k8s_default() -> Self {
        PolicyConfig::default()
    }
    fn patch(schema: &mut Map<String, Value>) {
        for (list, key) in [
            ("staticAnswers", "name"),
            ("blocklists", "name"),
            ("rewrites", "from"),
        ] {
            if let Some(list) = property(schema, list) {
                list_map(list, key);
            }
        }
        if let Some(answer) = item(schema, "staticAnswers") {
            for ip in ["a", "aaaa"] {
                // Addresses are plain strings to the API server (the proxy parses them).
                if let Some(Value::Object(items)) = answer
                    .get_mut("properties")
                    .and_then(|p| p.pointer_mut(&format!("/{ip}/items")))
                {
                    items.remove("format");
                }
            }
            rules(
                answer,
                json!([
                    {
                        "rule": "!has(self.cname) || ((!has(self.a) || size(self.a) == 0) && (!has(self.aaaa) || size(self.aaaa) == 0) && (!has(self.txt) || size(self.txt) == 0))",
                        "message": "a static answer with cname takes no a, aaaa or txt (a CNAME excludes other records at its name)"
                    },
                    {
                        "rule": "has(self.cname) || (has(self.a) && size(self.a) > 0) || (has(self.aaaa) && size(self.aaaa) > 0) || (has(self.txt) && size(self.txt) > 0)",
                        "message": "a static answer needs at least one of a, aaaa, cname, txt"
                    }
                ]),
            );
        }
        if let Some(blocklist) = item(schema, "blocklists") {
            rules(
                blocklist,
                json!([{
                    "rule": "(has(self.names) && size(self.names) > 0) || has(self.file)",
                    "message": "a block list needs names or a file"
                }]),
            );
        }
    }
}

/// The (camelCase) property `name` of an object schema.
fn property<'a>(
    schema: &'a mut Map<String, Value>,
    name: &str,
) -> Option<&'a mut Map<String, Value>> {
    schema.get_mut("properties")?.get_mut(name)?.as_object_mut()
}

/// The items' schema of the list property `name`.
fn item<'a>(schema: &'a mut Map<String, Value>, name: &str) -> Option<&'a mut Map<String, Value>> {
    property(schema, name)?.get_mut("items")?.as_object_mut()
}

/// A list whose items are merged by `key` by server-side apply.
fn list_map(schema: &mut Map<String, Value>, key: &str) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), json!([key]));
}
