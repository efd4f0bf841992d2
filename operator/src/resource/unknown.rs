//! Decoding a spec written for a newer CRD: fields this build does not know are left out
//! and named (`spec.unknownFields` in the status), so a rolled-back operator keeps
//! reconciling. Everything it does know is decoded as strictly as before; the proxy's own
//! config file stays strict (`deny_unknown_fields`).
//!
//! What is known is what this build's CRD schema has: the JSON is walked along it, so the
//! one list of fields is the Rust types the schema is generated from.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::spec::{DotProxyConfig, DotProxyConfigSpec};

impl Serialize for DotProxyConfigSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DotProxyConfigSpec::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for DotProxyConfigSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        let mut unknown = Vec::new();
        strip(&mut value, spec_schema(), "spec", &mut unknown);
        let mut spec = DotProxyConfigSpec::deserialize(value).map_err(serde::de::Error::custom)?;
        unknown.sort();
        spec.unknown_fields = unknown;
        Ok(spec)
    }
}

/// The CRD's schema of `spec`, as this build generates it.
fn spec_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = DotProxyConfig::crd();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .and_then(|p| p.get("spec"));
        schema
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    })
}

/// Takes out of `value` the object keys `schema` does not have, pushing each one's path.
fn strip(value: &mut Value, schema: &Value, at: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(obj) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                obj.retain(|k, _| {
                    let known = props.contains_key(k);
                    if !known {
                        unknown.push(format!("{at}.{k}"));
                    }
                    known
                });
                for (k, v) in obj.iter_mut() {
                    if let Some(sub) = props.get(k) {
                        strip(v, sub, &format!("{at}.{k}"), unknown);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for (k, v) in obj.iter_mut() {
                    strip(v, sub, &format!("{at}[{k:?}]"), unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    strip(v, sub, &format!("{at}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWER: &str = r#"{
        "upstreamGroups": [{"name": "public", "hedging": {"after": "50ms"},
            "servers": [{"address": "1.1.1.1", "tlsName": "one.one.one.one", "ech": true}]}],
        "zones": [{"zone": ".", "group": "public"}],
        "cache": {"maxTtl": 600, "shards": 16},
        "target": {"overrideShards": 2, "nodeSelector": {"pool": "dns"}},
        "quic": {"listen": ["0.0.0.0:853"]}
    }"#;

    #[test]
    fn unknown_fields_are_left_out_and_named() {
        let spec: DotProxyConfigSpec = serde_json::from_str(NEWER).expect("decodes");
        assert_eq!(
            spec.unknown_fields,
            [
                "spec.cache.shards",
                "spec.quic",
                "spec.upstreamGroups[0].hedging",
                "spec.upstreamGroups[0].servers[0].ech",
            ]
        );
        assert_eq!(spec.cache.max_ttl, 600, "what is known is kept");
        assert_eq!(spec.upstream_groups[0].servers[0].address.port(), 853);
        assert_eq!(
            spec.target.node_selector["pool"], "dns",
            "map keys are data"
        );
        let known: DotProxyConfigSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("json")).expect("decodes");
        assert!(known.unknown_fields.is_empty(), "written back without them");
    }

    #[test]
    fn what_is_known_is_still_checked() {
        let bad = NEWER.replace("\"maxTtl\": 600", "\"maxTtl\": \"ten\"");
        let spec: DotProxyConfigSpec = serde_json::from_str(&bad).expect("decodes");
        assert_eq!(
            spec.cache.problems().map(|p| p.0).collect::<Vec<_>>(),
            ["maxTtl"]
        );
        let no_zones = NEWER.replace("\"zones\"", "\"zonez\"");
        assert!(serde_json::from_str::<DotProxyConfigSpec>(&no_zones).is_err());
    }
}
