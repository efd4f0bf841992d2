//! [`Checked`]: a string-valued proxy type (enum or duration) that keeps what it cannot parse.

use std::borrow::Cow;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value of one of the proxy's string-shaped types (`Policy`, `Protocol`, `Dur`, ...) as
/// written in a resource.
///
/// The CRD schema (the proxy type's own schema) already refuses unknown values at `kubectl
/// apply` time. This wrapper covers what gets past it (an object stored under an older CRD, a
/// file given to `dot-proxy-operator render`): the value is kept as written, so the resource
/// still parses and rendering reports it as an Invalid condition naming the field, instead of
/// one bad object breaking the watch of every other.
#[derive(Clone, Debug, PartialEq)]
pub enum Checked<T> {
    Known(T),
    Unknown(String),
}

impl<T> Checked<T> {
    /// The value, or a message naming what was written.
    pub fn get(&self) -> Result<&T, String> {
        match self {
            Checked::Known(v) => Ok(v),
            Checked::Unknown(raw) => Err(format!("{raw:?} is not a valid value")),
        }
    }
}

impl<T> From<T> for Checked<T> {
    fn from(v: T) -> Self {
        Checked::Known(v)
    }
}

impl<T: Serialize> Serialize for Checked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Checked::Known(v) => v.serialize(s),
            Checked::Unknown(raw) => s.serialize_str(raw),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        match T::deserialize(&value) {
            Ok(v) => Ok(Checked::Known(v)),
            Err(_) => Ok(Checked::Unknown(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })),
        }
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Checked<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

impl<T: fmt::Display> fmt::Display for Checked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checked::Known(v) => v.fmt(f),
            Checked::Unknown(raw) => f.write_str(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dot_proxy_config::{Dur, Policy};

    #[test]
    fn keeps_unknown_values() {
        let p: Checked<Policy> = serde_json::from_str("\"round_robin\"").expect("parses");
        assert_eq!(p, Checked::Known(Policy::RoundRobin));
        let p: Checked<Policy> = serde_json::from_str("\"random\"").expect("parses");
        assert_eq!(p, Checked::Unknown("random".into()));
        assert!(p.get().is_err());
        let d: Checked<Dur> = serde_json::from_str("\"2x\"").expect("parses");
        assert_eq!(d.get(), Err("\"2x\" is not a valid value".into()));
        let d: Checked<Dur> = serde_json::from_str("5").expect("parses");
        assert_eq!(d, Checked::Unknown("5".into()));
    }

    #[test]
    fn serializes_as_written() {
        let p: Checked<Policy> = Policy::Fastest.into();
        assert_eq!(serde_json::to_string(&p).expect("json"), "\"fastest\"");
        let u: Checked<Policy> = Checked::Unknown("random".into());
        assert_eq!(serde_json::to_string(&u).expect("json"), "\"random\"");
    }
}
