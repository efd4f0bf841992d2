//! What the proxy's config sections need only in Kubernetes: defaults that differ from the
//! standalone proxy's (`limits::kubernetes`), fields the resource does not offer, and CEL
//! rules (`x-kubernetes-validations`) for references between fields, checked at `kubectl
//! apply` time. Everything else (fields, bounds, descriptions) is the proxy's own.

use dot_proxy_config::{
    limits, CacheConfig, DnstapConfig, FilterAaaaConfig, LogConfig, LogFormat, NodeLocalConfig,
    PrivacyConfig, RateLimitConfig, SearchCompletionConfig, ZoneRoute,
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

/// A list whose items are merged by `key` by server-side apply.
fn list_map(schema: &mut Map<String, Value>, key: &str) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), json!([key]));
}
