//! The `policy` section: static answers, block lists and rewrites (docs/policy.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use crate::patterns;
#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::zones::normalize_name;
use crate::{limits, normalize_zone, Errors};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Names answered locally, like a hosts file. Checked first. Names unique.
    #[cfg_attr(feature = "schema", schemars(length(max = limits::STATIC_ANSWERS.max)))]
    pub static_answers: Vec<StaticRule>,
    /// Names answered NXDOMAIN, REFUSED or a null address. Checked second. Names unique.
    #[cfg_attr(feature = "schema", schemars(length(max = limits::BLOCKLISTS.max)))]
    pub blocklists: Vec<BlockList>,
    /// Names sent upstream as another name; the answer goes back under the name asked for.
    /// Checked last. `from` unique.
    #[cfg_attr(feature = "schema", schemars(length(max = limits::REWRITES.max)))]
    pub rewrites: Vec<RewriteRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
/// Records served for a name (A, AAAA, TXT), or an alias (CNAME) for every type.
pub struct StaticRule {
    /// `host.example.com`, or `*.example.com` for every name below it (not the name itself).
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 255), regex(pattern = patterns::WILDCARD_NAME)))]
    pub name: String,
    /// TTL of the answers, seconds.
    #[serde(default = "default_static_ttl")]
    #[cfg_attr(feature = "schema", schemars(range(min = limits::STATIC_TTL.min, max = limits::STATIC_TTL.max)))]
    pub ttl: u32,
    /// IPv4 addresses answered to A queries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::RECORDS.max), inner(length(max = 15), regex(pattern = patterns::IPV4))))]
    pub a: Vec<std::net::Ipv4Addr>,
    /// IPv6 addresses answered to AAAA queries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::RECORDS.max), inner(length(min = 2, max = 45), regex(pattern = patterns::IPV6))))]
    pub aaaa: Vec<std::net::Ipv6Addr>,
    /// An alias answered to every query type; excludes `a`, `aaaa` and `txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 254), regex(pattern = patterns::DOMAIN)))]
    pub cname: Option<String>,
    /// Strings answered to TXT queries, one record each, at most 255 bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(max = limits::RECORDS.max), inner(length(max = 255)))
    )]
    pub txt: Vec<String>,
}

/// Shared with the operator's CRD defaults.
pub fn default_static_ttl() -> u32 {
    300
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
/// Blocked names, inline and/or from a file on the proxy's filesystem.
pub struct BlockList {
    /// A label for the proxies' logs.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 63)))]
    pub name: String,
    /// Blocked names; each blocks itself and every name below it. Long lists belong in a file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = limits::BLOCKED_NAMES.max), inner(length(min = 1, max = 254), regex(pattern = patterns::DOMAIN))))]
    pub names: Vec<String>,
    /// Absolute path, inside the proxy container, of a hosts-format file (`0.0.0.0
    /// ads.example.com`) or one name per line (`#` comments); re-read on every reload. (The
    /// operator cannot see the proxies' files: a missing file shows in the proxies' logs.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))
    )]
    pub file: Option<PathBuf>,
    /// `nxdomain`, `refused`, or `null_address` (0.0.0.0 / :: to A / AAAA, NODATA otherwise).
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
/// A name sent upstream as another.
pub struct RewriteRule {
    /// The name clients ask for.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 254), regex(pattern = patterns::DOMAIN)))]
    pub from: String,
    /// The name sent upstream instead.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 254), regex(pattern = patterns::DOMAIN)))]
    pub to: String,
    /// Also rewrite names below `from`: `a.from` is sent as `a.to`.
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
            if file.is_absolute() {
                e.readable("file", file);
            } else {
                e.field(
                    "file",
                    format!("{:?} must be an absolute path", file.display().to_string()),
                );
            }
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
