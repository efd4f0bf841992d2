//! Where an error is: a structured field path, and the collector each section's check
//! writes its errors into, relative to the section.
//!
//! A path displays as the proxy's YAML keys read (`upstream_groups[0].servers[1].tls_name`),
//! so messages, docs and tests read as they always did; the operator maps the segments onto
//! its resource's own names instead of rewriting strings.

use std::borrow::Cow;
use std::fmt;

use crate::limits::Range;

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// A struct field, by its YAML (snake_case) name.
    Field(Cow<'static, str>),
    /// An element of a list.
    Index(usize),
    /// An entry of a map, by its key (user data, never renamed).
    Key(String),
}

/// The path of a field from the top of the config (or of a section, while it checks itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<PathSegment>);

impl FieldPath {
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    /// This path with `field` appended.
    pub fn field(&self, field: impl Into<Cow<'static, str>>) -> FieldPath {
        self.with(PathSegment::Field(field.into()))
    }

    /// This path with `[i]` appended.
    pub fn index(&self, i: usize) -> FieldPath {
        self.with(PathSegment::Index(i))
    }

    fn with(&self, s: PathSegment) -> FieldPath {
        let mut v = self.0.clone();
        v.push(s);
        FieldPath(v)
    }

    /// Whether the path starts with these fields (indices and keys match any).
    pub fn starts_with_fields(&self, fields: &[&str]) -> bool {
        let mut own = self.0.iter().filter_map(|s| match s {
            PathSegment::Field(f) => Some(f.as_ref()),
            _ => None,
        });
        fields.iter().all(|f| own.next() == Some(*f))
    }
}

impl From<&'static str> for FieldPath {
    fn from(f: &'static str) -> Self {
        FieldPath(vec![PathSegment::Field(f.into())])
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                PathSegment::Field(name) if i == 0 => f.write_str(name)?,
                PathSegment::Field(name) => write!(f, ".{name}")?,
                PathSegment::Index(n) => write!(f, "[{n}]")?,
                PathSegment::Key(k) => write!(f, "[{k:?}]")?,
            }
        }
        Ok(())
    }
}

/// One piece of a [`Message`]: text, or the name of another field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// A field named in the text, from the top of the config (`cache.max_ttl`); whoever
    /// shows the message names it in its own terms (the operator: `spec.cache.maxTtl`).
    Field(FieldPath),
}

/// What is wrong with a field: text that may name other fields by their structured path,
/// so no reader has to rewrite the proxy's words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message(pub Vec<Part>);

impl Message {
    /// `text` appended.
    pub fn text(mut self, text: impl Into<String>) -> Message {
        self.0.push(Part::Text(text.into()));
        self
    }

    /// The field at `path` (from the top of the config) named here.
    pub fn field(mut self, path: FieldPath) -> Message {
        self.0.push(Part::Field(path));
        self
    }

    /// The message with every named field written by `name`.
    pub fn naming(&self, name: impl Fn(&FieldPath) -> String) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(f) => name(f),
            })
            .collect()
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message(vec![Part::Text(s)])
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::from(s.to_owned())
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.naming(ToString::to_string))
    }
}

/// One problem, with the path of its field; displays as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: FieldPath,
    pub message: Message,
}

impl FieldError {
    /// The path as text (`cache.max_ttl`).
    pub fn field(&self) -> String {
        self.path.to_string()
    }
}

/// Every problem found in a config, each with the path of its field.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where a check writes its errors: a list and the path the checked value sits at. A
/// section checks itself through one of these, naming fields relative to itself.
pub struct Errors<'a> {
    at: FieldPath,
    out: &'a mut Vec<FieldError>,
}

impl<'a> Errors<'a> {
    /// A collector at the top of the config.
    pub fn new(out: &'a mut Vec<FieldError>) -> Self {
        Errors {
            at: FieldPath::default(),
            out,
        }
    }

    /// A collector for the field `name` under this one.
    pub fn at(&mut self, name: impl Into<Cow<'static, str>>) -> Errors<'_> {
        Errors {
            at: self.at.field(name),
            out: self.out,
        }
    }

    /// A collector for element `i` of the list this one is at.
    pub fn index(&mut self, i: usize) -> Errors<'_> {
        Errors {
            at: self.at.index(i),
            out: self.out,
        }
    }

    /// An error about the value this collector is at.
    pub fn here(&mut self, message: impl Into<Message>) {
        self.out.push(FieldError {
            path: self.at.clone(),
            message: message.into(),
        });
    }

    /// An error about the field `name` under this one.
    pub fn field(&mut self, name: impl Into<Cow<'static, str>>, message: impl Into<Message>) {
        self.at(name).here(message);
    }

    /// An error about `name` when `v` is outside `range`.
    pub fn range<T: PartialOrd + Copy + fmt::Display>(
        &mut self,
        name: &'static str,
        v: T,
        range: Range<T>,
    ) {
        if let Some(m) = range.check(v) {
            self.field(name, m);
        }
    }

    /// An error about `name` when its length `n` (characters or items) is outside `range`.
    pub fn length(&mut self, name: &'static str, n: usize, range: Range<u64>) {
        if !range.contains(n as u64) {
            self.field(
                name,
                format!("length {n} must be between {} and {}", range.min, range.max),
            );
        }
    }

    /// An error about `name` when `path` cannot be read.
    pub fn readable(&mut self, name: &'static str, path: &std::path::Path) {
        if let Err(e) = std::fs::metadata(path) {
            self.field(name, format!("cannot read {}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_as_yaml_keys() {
        let mut out = Vec::new();
        let mut e = Errors::new(&mut out);
        e.at("upstream_groups")
            .index(0)
            .at("servers")
            .index(1)
            .field("tls_name", "bad");
        e.field("zones", "none");
        let shown: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["upstream_groups[0].servers[1].tls_name: bad", "zones: none"]
        );
        assert!(out[0]
            .path
            .starts_with_fields(&["upstream_groups", "servers"]));
        assert!(!out[0].path.starts_with_fields(&["zones"]));
    }
}
