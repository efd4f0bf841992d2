//! What the proxy's config sections need only in Kubernetes: defaults that differ from the
//! standalone proxy's (`limits::kubernetes`), fields the resource does not offer, and CEL
//! rules (`x-kubernetes-validations`) for references between fields, checked at `kubectl
//! apply` time. Everything else (fields, bounds, descriptions) is the proxy's own.

use dot_proxy_config::{
    limits, CacheConfig, DnstapConfig, FilterAaaaConfig, LogConfig, LogFormat, PrivacyConfig,
    RateLimitConfig, SearchCompletionConfig,
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
