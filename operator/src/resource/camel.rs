//! [`Camel`]: a section of the proxy's own config, offered in the resource with camelCase
//! field names, so the operator keeps no second copy of the schema.
//!
//! The proxy's types (`dot_proxy_config`) are snake_case and stay so: a serde rename behind
//! a cargo feature would reach the proxy too when the workspace builds both (features are
//! unified). Instead this wrapper works on the JSON: its schema is the section's schemars
//! schema with the names of struct properties (never map keys) turned camelCase, and
//! (de)serializing renames the keys of struct objects, guided by that schema, then uses the
//! section's own serde. Bounds (`minimum`, `maxLength`, patterns) are written once on the
//! proxy's fields and so reach both the CRD and the proxy's `validate()`.
//!
//! What a section needs only in Kubernetes is its [`Section`] impl: defaults that differ
//! from the standalone proxy's, proxy fields the resource does not offer, and CEL rules.

use std::any::TypeId;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A proxy config section as the resource offers it.
pub trait Section:
    Serialize + DeserializeOwned + JsonSchema + Clone + PartialEq + fmt::Debug + 'static
{
    /// The value when the resource leaves the section (or a field of it) out.
    fn k8s_default() -> Self;
    /// Proxy fields that the resource does not offer, as paths in the proxy's names
    /// (`ca_file`, `servers.[].ca_file`: `[]` is a list's items).
    const HIDDEN: &'static [&'static str] = &[];
    /// Kubernetes-only shorthands, rewritten into the proxy's form (proxy names) before
    /// decoding.
    fn prepare(_value: &mut Value) {}
    /// Kubernetes-only additions to the (camelCase) schema: CEL rules, a description.
    fn patch(_schema: &mut Map<String, Value>) {}
}

/// A section `T` with camelCase keys. A value the schema refuses but that gets past it (an
/// object stored under an older CRD, a file given to `dot-proxy-operator render`) still
/// parses: the faulty values are left out (the rest kept) and [`Camel::problems`] names
/// each, so rendering reports an Invalid condition instead of one bad object breaking the
/// watch.
#[derive(Clone, Debug, PartialEq)]
pub struct Camel<T> {
    value: T,
    /// What was written, and each (camelCase, relative) field at fault with the reason.
    invalid: Option<(Value, Vec<(String, String)>)>,
}

impl<T: Section> Camel<T> {
    pub fn new(value: T) -> Self {
        Camel {
            value,
            invalid: None,
        }
    }

    /// The fields that could not be read (relative to the section, camelCase; empty for the
    /// section itself) and why.
    pub fn problems(&self) -> impl Iterator<Item = (&str, &str)> {
        self.invalid
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(f, m)| (f.as_str(), m.as_str())))
    }
}

impl<T: Section> Default for Camel<T> {
    fn default() -> Self {
        Camel::new(T::k8s_default())
    }
}

impl<T> std::ops::Deref for Camel<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A value changed in code is what it holds: what was written, and its problems, are
/// dropped.
impl<T> std::ops::DerefMut for Camel<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.invalid = None;
        &mut self.value
    }
}

impl<T: Section> From<T> for Camel<T> {
    fn from(value: T) -> Self {
        Camel::new(value)
    }
}

/// The section's schema as the proxy writes it (snake_case), every subschema inline, less
/// the [`Section::HIDDEN`] fields; generated once per type.
fn proxy_schema<T: Section>() -> &'static Value {
    static SCHEMAS: OnceLock<Mutex<HashMap<TypeId, &'static Value>>> = OnceLock::new();
    let mut schemas = SCHEMAS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    schemas.entry(TypeId::of::<T>()).or_insert_with(|| {
        let mut generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .into_generator();
        let mut schema = Value::from(T::json_schema(&mut generator));
        hide::<T>(&mut schema);
        Box::leak(Box::new(schema))
    })
}

/// Removes the [`Section::HIDDEN`] properties from a (snake_case) schema.
fn hide<T: Section>(schema: &mut Value) {
    for path in T::HIDDEN {
        let mut at = Some(&mut *schema);
        let steps: Vec<&str> = path.split('.').collect();
        let (last, parents) = steps.split_last().unwrap_or((&"", &[]));
        for step in parents {
            at = at.and_then(|s| {
                if *step == "[]" {
                    elements_mut(s)
                } else {
                    properties_mut(s).and_then(|p| p.get_mut(*step))
                }
            });
        }
        if let Some(props) = at.and_then(properties_mut) {
            props.remove(*last);
        }
    }
}

pub fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// The struct properties of a schema, looking through `anyOf`/`oneOf`/`allOf` (optional
/// structs).
pub(super) fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    if let Some(p) = schema.get("properties").and_then(Value::as_object) {
        return Some(p);
    }
    ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_array))
        .flatten()
        .find_map(properties)
}

/// The schema of a list's items or a map's values.
pub(super) fn elements(schema: &Value) -> Option<&Value> {
    let direct = schema
        .get("items")
        .or_else(|| schema.get("additionalProperties").filter(|v| v.is_object()));
    direct.or_else(|| {
        ["anyOf", "oneOf", "allOf"]
            .iter()
            .filter_map(|k| schema.get(*k).and_then(Value::as_array))
            .flatten()
            .find_map(elements)
    })
}

fn properties_mut(schema: &mut Value) -> Option<&mut Map<String, Value>> {
    if schema.get("properties").is_some_and(Value::is_object) {
        return schema.get_mut("properties").and_then(Value::as_object_mut);
    }
    branches_mut(schema).find_map(properties_mut)
}

fn elements_mut(schema: &mut Value) -> Option<&mut Value> {
    if schema.get("items").is_some() {
        return schema.get_mut("items");
    }
    branches_mut(schema).find_map(elements_mut)
}

/// The `anyOf`/`oneOf`/`allOf` branches of a schema (an optional struct has two).
fn branches_mut(schema: &mut Value) -> impl Iterator<Item = &mut Value> {
    schema
        .as_object_mut()
        .into_iter()
        .flat_map(|o| o.iter_mut())
        .filter(|(k, _)| ["anyOf", "oneOf", "allOf"].contains(&k.as_str()))
        .filter_map(|(_, v)| v.as_array_mut())
        .flatten()
}

/// Renames the keys of struct objects in `value` (guided by `schema`): to camelCase when
/// `to_camel` (dropping fields the resource does not offer), back to the proxy's names
/// otherwise, where a key that names no field (a snake_case one included) is an error. Map
/// keys are kept. (A resource's spec meets this only after the keys its CRD schema does not
/// have were taken out and listed: `resource/unknown.rs`.)
fn rename(value: &mut Value, schema: &Value, to_camel: bool) -> Result<(), String> {
    match value {
        Value::Object(obj) => {
            if let Some(props) = properties(schema) {
                let old = std::mem::take(obj);
                for (k, mut v) in old {
                    let found = props.iter().find(|(name, _)| {
                        if to_camel {
                            *name == &k
                        } else {
                            camel_case(name) == k
                        }
                    });
                    let Some((name, sub)) = found else {
                        if to_camel {
                            continue;
                        }
                        return Err(format!("unknown field `{k}`"));
                    };
                    rename(&mut v, sub, to_camel)?;
                    let key = if to_camel {
                        camel_case(name)
                    } else {
                        name.clone()
                    };
                    obj.insert(key, v);
                }
            } else if let Some(sub) = elements(schema) {
                for v in obj.values_mut() {
                    rename(v, sub, to_camel)?;
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = elements(schema) {
                for v in items {
                    rename(v, sub, to_camel)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The schema with camelCase property names (and `required`, and object `default`s).
fn camel_schema(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        let old = std::mem::take(props);
        for (k, mut v) in old {
            camel_schema(&mut v);
            props.insert(camel_case(&k), v);
        }
    }
    if let Some(Value::Array(req)) = obj.get_mut("required") {
        for r in req {
            if let Some(s) = r.as_str() {
                *r = Value::String(camel_case(s));
            }
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = obj.get_mut(k) {
            camel_schema(v);
        }
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(vs)) = obj.get_mut(k) {
            vs.iter_mut().for_each(camel_schema);
        }
    }
}

/// Sets the `default` of every property that has one to the value in `defaults` (camelCase
/// keys), so the CRD shows the Kubernetes defaults.
fn set_defaults(schema: &mut Value, defaults: &Value) {
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        for (k, sub) in props.iter_mut() {
            let Some(d) = defaults.get(k) else { continue };
            if let Some(slot) = sub.get_mut("default") {
                *slot = d.clone();
            }
            set_defaults(sub, d);
        }
    }
}

/// `over` laid on `base`, struct objects merged key by key (guided by `schema`); maps and
/// lists replaced whole.
fn merge(base: &mut Value, over: Value, schema: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) if properties(schema).is_some() => {
            let props = properties(schema).cloned().unwrap_or_default();
            for (k, v) in o {
                match (b.get_mut(&k), props.get(&k)) {
                    (Some(slot), Some(sub)) => merge(slot, v, sub),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, over) => *slot = over,
    }
}

/// The path (proxy keys and list indices) to the value whose removal lets decoding get
/// further (`further` is given the value and the removed step), as deep as one goes.
fn locate(
    root: &Value,
    at: &[PathStep],
    further: &dyn Fn(&Value, &PathStep) -> bool,
) -> Option<Vec<PathStep>> {
    let steps: Vec<PathStep> = match walk(root, at)? {
        Value::Object(o) => o.keys().cloned().map(PathStep::Key).collect(),
        Value::Array(a) => (0..a.len()).map(PathStep::Index).collect(),
        _ => return None,
    };
    let child = |step: &PathStep| {
        let mut p = at.to_vec();
        p.push(step.clone());
        p
    };
    if let Some(step) = steps
        .iter()
        .find(|step| further(&without(root, &child(step)), step))
    {
        let p = child(step);
        return Some(locate(root, &p, further).unwrap_or(p));
    }
    // No one removal helps here: the fault may be inside a field that cannot be left out.
    steps
        .iter()
        .find_map(|step| locate(root, &child(step), further))
}

/// `root` without the value at `path`.
fn without(root: &Value, path: &[PathStep]) -> Value {
    let mut v = root.clone();
    if let Some((last, parent)) = path.split_last() {
        match (walk_mut(&mut v, parent), last) {
            (Some(Value::Object(o)), PathStep::Key(k)) => {
                o.remove(k);
            }
            (Some(Value::Array(a)), PathStep::Index(i)) if *i < a.len() => {
                a.remove(*i);
            }
            _ => {}
        }
    }
    v
}

#[derive(Clone, Debug, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn walk<'a>(v: &'a Value, path: &[PathStep]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, s| match s {
        PathStep::Key(k) => v.get(k),
        PathStep::Index(i) => v.get(i),
    })
}

fn walk_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        PathStep::Key(k) => v.get_mut(k),
        PathStep::Index(i) => v.get_mut(i),
    })
}

/// `path` as the resource writes it (`zones[0].minTtl`), and what the schema expects there.
fn describe(path: &[PathStep], schema: &Value) -> (String, Option<String>) {
    let mut out = String::new();
    let mut cur = Some(schema);
    for s in path {
        match s {
            PathStep::Key(k) => {
                let sub = cur.and_then(properties).and_then(|p| p.get(k));
                let name = if sub.is_some() {
                    camel_case(k)
                } else {
                    k.clone()
                };
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&name);
                cur = sub.or_else(|| cur.and_then(elements));
            }
            PathStep::Index(i) => {
                out.push_str(&format!("[{i}]"));
                cur = cur.and_then(elements);
            }
        }
    }
    // An enum, or (variants with their own docs) one constant per `oneOf` branch.
    let values: Vec<&str> = match cur.and_then(|s| s.get("enum")).and_then(Value::as_array) {
        Some(vs) => vs.iter().filter_map(Value::as_str).collect(),
        None => cur
            .and_then(|s| s.get("oneOf"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|b| match (b.get("const"), b.get("enum")) {
                (Some(c), _) => vec![c],
                (None, Some(Value::Array(vs))) => vs.iter().collect(),
                _ => Vec::new(),
            })
            .filter_map(Value::as_str)
            .collect(),
    };
    (out, (!values.is_empty()).then(|| values.join(", ")))
}

/// `path` (in `cur`, from which the `removed` paths were taken out, in that order) as a
/// path in the value before any was: later list items moved up when one was removed.
fn original(path: &[PathStep], removed: &[Vec<PathStep>]) -> Vec<PathStep> {
    let mut out: Vec<PathStep> = Vec::with_capacity(path.len());
    for step in path {
        let step = match step {
            PathStep::Index(i) => {
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter(|r| r.len() == out.len() + 1 && r.starts_with(&out))
                    .filter_map(|r| match r.last() {
                        Some(PathStep::Index(j)) => Some(*j),
                        _ => None,
                    })
                    .collect();
                gone.sort_unstable();
                let mut i = *i;
                for j in gone {
                    if j <= i {
                        i += 1;
                    }
                }
                PathStep::Index(i)
            }
            key => key.clone(),
        };
        out.push(step);
    }
    out
}

impl<T: Section> Serialize for Camel<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some((raw, _)) = &self.invalid {
            return raw.serialize(s);
        }
        let mut v = serde_json::to_value(&self.value).map_err(serde::ser::Error::custom)?;
        rename(&mut v, proxy_schema::<T>(), true).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

impl<'de, T: Section> Deserialize<'de> for Camel<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Value::deserialize(d)?;
        let schema = proxy_schema::<T>();
        let mut input = raw.clone();
        rename(&mut input, schema, false).map_err(serde::de::Error::custom)?;
        T::prepare(&mut input);
        let mut merged =
            serde_json::to_value(T::k8s_default()).map_err(serde::de::Error::custom)?;
        let structured = matches!(input, Value::Object(_) | Value::Array(_));
        merge(&mut merged, input, schema);
        let mut cur = merged.clone();
        let mut problems: Vec<(Vec<PathStep>, String, String)> = Vec::new();
        // What was left out, each as a path in `merged`.
        let mut removed: Vec<Vec<PathStep>> = Vec::new();
        // Each round finds the value decoding stops at, reports it and leaves it out.
        for _ in 0..MAX_PROBLEMS {
            let e = match T::deserialize(&cur) {
                Ok(value) if problems.is_empty() => return Ok(Camel::new(value)),
                Ok(value) => return Ok(Camel::invalid(value, raw, problems)),
                // Wrong shapes are the schema's to refuse, as for any type.
                Err(e) if !structured => return Err(serde::de::Error::custom(e)),
                Err(e) => e.to_string(),
            };
            let further = |v: &Value, step: &PathStep| match T::deserialize(v) {
                Ok(_) => true,
                // Missing fields are reported once the rest of their struct is read: the
                // removed field was the struct's only fault.
                Err(m) => {
                    let m = m.to_string();
                    m != e
                        && (!m.starts_with("missing field")
                            || matches!(step, PathStep::Key(k) if m == format!("missing field `{k}`")))
                }
            };
            let Some(at_now) = locate(&cur, &[], &further) else {
                break;
            };
            let at = original(&at_now, &removed);
            // A container left out because a required field of it was: already reported.
            if !problems.iter().any(|(p, ..)| p.starts_with(&at)) {
                let (field, expected) = describe(&at, schema);
                let message = match (walk(&merged, &at), expected) {
                    (Some(Value::String(w)), Some(x)) => {
                        format!("{w:?} is not a valid value (expected {x})")
                    }
                    (Some(Value::Object(_) | Value::Array(_)) | None, _) => e,
                    (Some(Value::String(w)), None) => format!("{w:?} is not a valid value: {e}"),
                    (Some(w), _) => format!("{w} is not a valid value: {e}"),
                };
                problems.push((at.clone(), field, message));
            }
            cur = without(&cur, &at_now);
            removed.push(at);
        }
        match T::deserialize(&cur) {
            // The last round's value was the last fault.
            Ok(value) => Ok(Camel::invalid(value, raw, problems)),
            // More faults than are named (or nothing left out lets it decode): the section
            // keeps its defaults, and says so.
            Err(e) => {
                problems.push((
                    Vec::new(),
                    String::new(),
                    format!("{e} (and possibly more)"),
                ));
                Ok(Camel::invalid(T::k8s_default(), raw, problems))
            }
        }
    }
}

/// Most faulty values named in one section.
const MAX_PROBLEMS: usize = 16;

impl<T: Section> Camel<T> {
    fn invalid(value: T, raw: Value, problems: Vec<(Vec<PathStep>, String, String)>) -> Self {
        let problems = problems.into_iter().map(|(_, f, m)| (f, m)).collect();
        Camel {
            value,
            invalid: Some((raw, problems)),
        }
    }
}

impl<T: Section> JsonSchema for Camel<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("Camel{}", T::schema_name()).into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut v = Value::from(T::json_schema(generator));
        hide::<T>(&mut v);
        camel_schema(&mut v);
        if let Ok(defaults) = serde_json::to_value(Camel::new(T::k8s_default())) {
            set_defaults(&mut v, &defaults);
        }
        if let Value::Object(obj) = &mut v {
            T::patch(obj);
        }
        Schema::try_from(v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dot_proxy_config::{limits, CacheConfig, LimitAction, RateLimitConfig};

    #[test]
    fn keys_turn_camel_case_and_back() {
        let c: Camel<CacheConfig> =
            serde_json::from_str(r#"{"maxTtl": 600, "prefetch": {"minHits": 3}}"#).expect("parses");
        assert_eq!((c.max_ttl, c.prefetch.min_hits), (600, 3));
        // Left out: the Kubernetes default, not the standalone proxy's.
        assert_eq!(c.max_bytes, limits::kubernetes::CACHE_MAX_BYTES);
        let back = serde_json::to_value(&c).expect("json");
        assert_eq!(back["maxTtl"], 600);
        assert_eq!(back["prefetch"]["minHits"], 3);
        assert!(back.get("max_ttl").is_none());
    }

    #[test]
    fn snake_case_and_hidden_fields_are_unknown() {
        assert!(serde_json::from_str::<Camel<CacheConfig>>(r#"{"max_ttl": 1}"#).is_err());
        assert!(serde_json::from_str::<Camel<RateLimitConfig>>(r#"{"topK": 1}"#).is_err());
    }

    #[test]
    fn a_bad_value_is_kept_and_named() {
        let r: Camel<RateLimitConfig> =
            serde_json::from_str(r#"{"qps": 5, "action": "tarpit"}"#).expect("still parses");
        assert_eq!(
            r.problems().collect::<Vec<_>>(),
            [(
                "action",
                "\"tarpit\" is not a valid value (expected refused, drop)"
            )]
        );
        assert_eq!(
            (r.action, r.qps),
            (LimitAction::Refused, 5.0),
            "the rest kept"
        );
        assert_eq!(
            serde_json::to_value(&r).expect("json")["action"],
            "tarpit",
            "written back as it was"
        );
        let c: Camel<CacheConfig> =
            serde_json::from_str(r#"{"zones": [{"zone": "a.example", "maxTtl": "x"}]}"#)
                .expect("still parses");
        assert_eq!(
            c.problems().map(|p| p.0).collect::<Vec<_>>(),
            ["zones[0].maxTtl"]
        );
    }

    #[test]
    fn every_bad_value_is_named_and_the_rest_kept() {
        let c: Camel<CacheConfig> = serde_json::from_str(
            r#"{"maxTtl": "x", "prefetch": {"minHits": -1, "topN": 3}, "zones": [{"zone": 5}]}"#,
        )
        .expect("still parses");
        let fields: Vec<_> = c.problems().map(|p| p.0).collect();
        assert_eq!(fields, ["maxTtl", "prefetch.minHits", "zones[0].zone"]);
        assert_eq!(c.prefetch.top_n, 3);
    }

    /// At most MAX_PROBLEMS values are named: with exactly that many the rest is kept; with
    /// more, the section keeps its defaults and says there may be more.
    #[test]
    fn the_named_problems_are_bounded() {
        let zones = |n: usize| {
            let z: Vec<String> = (0..n)
                // Each its own wrong value: equal faults are named together.
                .map(|i| format!(r#"{{"zone": "z{i}.example", "maxTtl": "x{i}"}}"#))
                .collect();
            format!(r#"{{"minTtl": 7, "zones": [{}]}}"#, z.join(","))
        };
        let c: Camel<CacheConfig> =
            serde_json::from_str(&zones(MAX_PROBLEMS)).expect("still parses");
        assert_eq!(
            c.problems().count(),
            MAX_PROBLEMS,
            "{:?}",
            c.problems().collect::<Vec<_>>()
        );
        assert!(c.problems().all(|(f, _)| f.ends_with(".maxTtl")));
        assert_eq!(c.min_ttl, 7, "the rest kept");
        let c: Camel<CacheConfig> =
            serde_json::from_str(&zones(MAX_PROBLEMS + 1)).expect("still parses");
        assert_eq!(c.problems().count(), MAX_PROBLEMS + 1);
        assert!(c
            .problems()
            .last()
            .is_some_and(|(_, m)| m.ends_with("(and possibly more)")));
        assert_eq!(c.min_ttl, CacheConfig::default().min_ttl, "defaults");
    }
}
