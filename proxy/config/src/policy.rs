//! The `policy` section: static answers, block lists and rewrites (docs/policy.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::zones::normalize_name;
use crate::{limits, normalize_zone, Errors};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Names answered locally, like a hosts file. Checked first.
    pub static_answers: Vec<StaticRule>,
    /// Names answered NXDOMAIN, REFUSED or a null address. Checked second.
    pub blocklists: Vec<BlockList>,
    /// Names sent upstream as another name. Checked last.
    pub rewrites: Vec<RewriteRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticRule {
    /// `host.example.com`, or `*.example.com` for every name below it (not the name itself).
    pub name: String,
    #[serde(default = "default_static_ttl")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub a: Vec<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aaaa: Vec<std::net::Ipv6Addr>,
    /// An alias; excludes `a` and `aaaa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub txt: Vec<String>,
}

/// Shared with the operator's CRD defaults.
pub fn default_static_ttl() -> u32 {
    300
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BlockList {
    /// A label for logs.
    pub name: String,
    /// Blocked names; each blocks itself and every name below it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A file in hosts format (`0.0.0.0 ads.example.com`) or one name per line; `#`
    /// comments. Re-read on every config reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub action: BlockAction,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BlockAction {
    #[default]
    Nxdomain,
    Refused,
    /// A 0.0.0.0 / :: answer to A / AAAA queries, NODATA to other types.
    NullAddress,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RewriteRule {
    /// The name clients ask for.
    pub from: String,
    /// The name sent upstream instead.
    pub to: String,
    /// Also rewrite names below `from` (`a.from` is sent as `a.to`).
    #[serde(default)]
    pub suffix: bool,
}

impl PolicyConfig {
    pub(crate) fn check(&self, e: &mut Errors) {
        for (i, r) in self.static_answers.iter().enumerate() {
            r.check(&mut e.at("static_answers").index(i));
        }
        for (i, b) in self.blocklists.iter().enumerate() {
            b.check(&mut e.at("blocklists").index(i));
        }
        for (i, r) in self.rewrites.iter().enumerate() {
            r.check(&mut e.at("rewrites").index(i));
        }
    }
}

impl StaticRule {
    pub(crate) fn check(&self, e: &mut Errors) {
        let name = self.name.strip_prefix("*.").unwrap_or(&self.name);
        if let Err(m) = normalize_name(name, "") {
            e.field("name", m);
        }
        e.range("ttl", self.ttl.into(), limits::STATIC_TTL);
        if self.a.is_empty() && self.aaaa.is_empty() && self.cname.is_none() && self.txt.is_empty()
        {
            e.here("needs at least one of a, aaaa, cname, txt");
        }
        if let Some(c) = &self.cname {
            if !(self.a.is_empty() && self.aaaa.is_empty() && self.txt.is_empty()) {
                e.field("cname", "a CNAME excludes other records at the same name");
            }
            if let Err(m) = normalize_zone(c) {
                e.field("cname", m);
            }
        }
        if self.txt.iter().any(|t| t.len() > 255) {
            e.field("txt", "each string must be at most 255 bytes");
        }
    }
}

impl BlockList {
    pub(crate) fn check(&self, e: &mut Errors) {
        if self.names.is_empty() && self.file.is_none() {
            e.here("needs names or a file");
        }
        for (j, n) in self.names.iter().enumerate() {
            if let Err(m) = normalize_name(n, "") {
                e.at("names").index(j).here(m);
            }
        }
        if let Some(file) = &self.file {
            e.readable("file", file);
        }
    }
}

impl RewriteRule {
    pub(crate) fn check(&self, e: &mut Errors) {
        for (field, v) in [("from", &self.from), ("to", &self.to)] {
            if let Err(m) = normalize_name(v, "") {
                e.field(field, m);
            }
        }
    }
}
