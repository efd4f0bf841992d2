//! Decoding a spec written for a newer CRD: fields this build does not know are left out
//! and named (`spec.unknownFields` in the status), so a rolled-back operator keeps
//! reconciling. Everything it does know is decoded as strictly as before; the proxy's own
//! config file stays strict (`deny_unknown_fields`).
//!
//! What is known is what this build's CRD schema has: the JSON is walked along it, so the
//! one list of fields is the Rust types the schema is generated from.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::camel::{elements, properties};
use super::spec::{DotProxyConfig, DotProxyConfigSpec};
use super::status::{MAX_UNKNOWN_FIELDS, MAX_UNKNOWN_FIELD_LEN};

impl Serialize for DotProxyConfigSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DotProxyConfigSpec::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for DotProxyConfigSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        let mut unknown = BTreeSet::new();
        strip(&mut value, spec_schema(), "spec", &mut unknown);
        let mut spec = DotProxyConfigSpec::deserialize(value).map_err(serde::de::Error::custom)?;
        spec.unknown_fields = unknown.into_iter().collect();
        Ok(spec)
    }
}

/// Notes an unknown field's path: each once (list items and map values share one path), at
/// most [`MAX_UNKNOWN_FIELDS`] of them, each cut to [`MAX_UNKNOWN_FIELD_LEN`] bytes, so what
/// the status says is bounded however the object is written.
fn note(unknown: &mut BTreeSet<String>, path: String) {
    if unknown.len() >= MAX_UNKNOWN_FIELDS {
        return;
    }
    let mut path = path;
    if path.len() > MAX_UNKNOWN_FIELD_LEN {
        let mut end = MAX_UNKNOWN_FIELD_LEN;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path.truncate(end);
    }
    unknown.insert(path);
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

/// Takes out of `value` the object keys `schema` does not have, noting each one's path
/// (`[]` for any list item, `[*]` for any map value). The schema is read as the `Camel`
/// sections read it (through `anyOf`/`oneOf`/`allOf`), so both agree on what is known.
fn strip(value: &mut Value, schema: &Value, at: &str, unknown: &mut BTreeSet<String>) {
    // Only objects and lists can hold keys: scalars need no path.
    let nested = |v: &Value| v.is_object() || v.is_array();
    match value {
        Value::Object(obj) => {
            if let Some(props) = properties(schema) {
                obj.retain(|k, v| match props.get(k) {
                    Some(sub) => {
                        if nested(v) {
                            strip(v, sub, &format!("{at}.{k}"), unknown);
                        }
                        true
                    }
                    None => {
                        note(unknown, format!("{at}.{k}"));
                        false
                    }
                });
            } else if let Some(sub) = elements(schema) {
                let at = format!("{at}[*]");
                for v in obj.values_mut().filter(|v| nested(v)) {
                    strip(v, sub, &at, unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = elements(schema) {
                let at = format!("{at}[]");
                for v in items.iter_mut().filter(|v| nested(v)) {
                    strip(v, sub, &at, unknown);
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
                "spec.upstreamGroups[].hedging",
                "spec.upstreamGroups[].servers[].ech",
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

    /// The list is bounded by the fields, not by the data: one path for every list item,
    /// at most 64 paths, each at most 512 bytes.
    #[test]
    fn the_list_of_unknown_fields_is_bounded() {
        let servers: Vec<Value> = (0..65)
            .map(|i| serde_json::json!({"address": format!("10.0.0.{i}"), "tlsName": "x.test", "ech": true}))
            .collect();
        let mut doc: Value = serde_json::from_str(NEWER).expect("json");
        doc["upstreamGroups"][0]["servers"] = Value::Array(servers);
        let spec: DotProxyConfigSpec = serde_json::from_value(doc.clone()).expect("decodes");
        assert_eq!(spec.unknown_fields.len(), 4, "{:?}", spec.unknown_fields);
        assert!(spec
            .unknown_fields
            .contains(&"spec.upstreamGroups[].servers[].ech".to_string()));
        for i in 0..100 {
            doc[format!("newField{i:03}")] = Value::Bool(true);
        }
        doc["a".repeat(2000)] = Value::Bool(true);
        let spec: DotProxyConfigSpec = serde_json::from_value(doc).expect("decodes");
        assert_eq!(spec.unknown_fields.len(), MAX_UNKNOWN_FIELDS);
        assert!(spec
            .unknown_fields
            .iter()
            .all(|p| p.len() <= MAX_UNKNOWN_FIELD_LEN));
        assert!(
            spec.unknown_fields
                .iter()
                .any(|p| p.len() == MAX_UNKNOWN_FIELD_LEN),
            "the long one, cut"
        );
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
