//! Local policy, applied before the cache and the zone router, in this order:
//! 1. static answers (exact names, or `*.suffix` wildcards), like a hosts file;
//! 2. block lists (a listed name blocks itself and everything below it): NXDOMAIN, REFUSED
//!    or a null address;
//! 3. rewrites: the query goes upstream as another name and the answer comes back under
//!    the name the client asked for.
//!
//! Matching is on lower-cased wire-format names, so it is case-insensitive and exact about
//! label boundaries (`ample.com` never matches `example.com`). Block lists are sorted arrays
//! of 64-bit keyed hashes of names: 8 bytes a name, and a lookup is one hash and a binary
//! search per label of the query name.

mod blocklist;
mod metrics;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData, Record};
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{BlockAction, PolicyConfig, StaticRule};
use crate::dns::rtype;
use crate::dns::wire::{QueryInfo, HEADER_LEN};
use crate::route::zone_to_wire;

pub use blocklist::BlockSet;
pub use metrics::{PolicyKind, PolicyMetrics};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{field}: {message}")]
    Rule { field: String, message: String },
}

/// What the policy says about a query name.
#[derive(Debug)]
pub enum Verdict<'a> {
    Pass,
    Static(&'a StaticRule),
    Block(BlockAction),
    /// Send upstream with the name's `strip` trailing bytes replaced by `to` (wire form).
    Rewrite {
        strip: usize,
        to: &'a [u8],
    },
}

#[derive(Default)]
pub struct Policy {
    exact: HashMap<Box<[u8]>, StaticRule>,
    wildcard: HashMap<Box<[u8]>, StaticRule>,
    blocks: BlockSet,
    rewrites_exact: HashMap<Box<[u8]>, Box<[u8]>>,
    rewrites_suffix: HashMap<Box<[u8]>, Box<[u8]>>,
    /// No rule at all: the query path skips the policy step.
    empty: bool,
    /// `filter_aaaa`: zones whose AAAA queries are answered NODATA (None when there are none).
    filter_aaaa: Option<crate::route::ZoneSet>,
    /// What it was built from: a reload with the same section and list files keeps it.
    cfg: PolicyConfig,
    filter_zones: Vec<String>,
    lists_identity: Vec<u8>,
    metrics: PolicyMetrics,
}

fn wire(name: &str) -> Box<[u8]> {
    let n = crate::config::normalize_zone(name).unwrap_or_else(|_| ".".into());
    zone_to_wire(&n).into_boxed_slice()
}

/// The label boundaries of a wire name: offsets of each suffix, longest first.
fn suffixes(name: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let len = *name.get(at)? as usize;
        if len == 0 {
            return None;
        }
        let here = at;
        at += 1 + len;
        Some(here)
    })
}

/// The block-list files a policy reads, sorted, without duplicates.
pub fn list_files(cfg: &PolicyConfig) -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = cfg
        .blocklists
        .iter()
        .filter_map(|b| b.file.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What tells versions of files (block lists, CA bundles) apart without reading them: device, inode,
/// size and modification time of each (a kubelet swap gives a file a new inode). A list
/// can be tens of megabytes: a reload re-reads the lists only when this or the policy
/// settings change.
pub fn files_identity(files: &[std::path::PathBuf]) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for path in files {
        match std::fs::metadata(path) {
            Ok(m) => {
                for x in [
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime() as u64,
                    m.mtime_nsec() as u64,
                ] {
                    out.extend(x.to_le_bytes());
                }
            }
            Err(_) => out.extend(b"missing"),
        }
    }
    out
}

impl Policy {
    /// The policy a new config gets: `previous` (the running pipeline's) while its section,
    /// its `filter_aaaa` zones and its list files are unchanged (block lists can be large:
    /// their files are re-read only then); else built anew, and counted as a load.
    pub fn from_config(
        cfg: &PolicyConfig,
        filter_aaaa: &[String],
        previous: Option<&Arc<Policy>>,
        metrics: &PolicyMetrics,
    ) -> Result<Arc<Policy>, PolicyError> {
        let lists_identity = files_identity(&list_files(cfg));
        if let Some(p) = previous.filter(|p| {
            p.cfg == *cfg && p.filter_zones == filter_aaaa && p.lists_identity == lists_identity
        }) {
            return Ok(p.clone());
        }
        let mut policy = Policy::new(cfg)?;
        policy.filter_aaaa = crate::route::ZoneSet::new(filter_aaaa);
        policy.filter_zones = filter_aaaa.to_vec();
        policy.lists_identity = lists_identity;
        policy.metrics = metrics.clone();
        policy.empty = policy.is_empty() && policy.filter_aaaa.is_none();
        metrics.loads.inc();
        metrics.blocked_names.set(policy.blocked_names() as i64);
        if policy.blocked_names() > 0 {
            tracing::info!(
                names = policy.blocked_names(),
                bytes = policy.blocklist_bytes(),
                "block lists loaded"
            );
        }
        Ok(Arc::new(policy))
    }

    /// Builds the rules of a policy section, reading block-list files. Errors name the rule.
    pub fn new(cfg: &PolicyConfig) -> Result<Policy, PolicyError> {
        let mut p = Policy {
            cfg: cfg.clone(),
            ..Policy::default()
        };
        for r in &cfg.static_answers {
            match r.name.strip_prefix("*.") {
                Some(suffix) => p.wildcard.insert(wire(suffix), r.clone()),
                None => p.exact.insert(wire(&r.name), r.clone()),
            };
        }
        for (i, b) in cfg.blocklists.iter().enumerate() {
            for n in &b.names {
                p.blocks.insert(&wire(n), b.action);
            }
            if let Some(file) = &b.file {
                let text = std::fs::read_to_string(file).map_err(|e| PolicyError::Rule {
                    field: format!("policy.blocklists[{i}].file"),
                    message: format!("cannot read {}: {e}", file.display()),
                })?;
                let skipped = p.blocks.load_list(&text, b.action);
                if skipped > 0 {
                    tracing::warn!(list = %b.name, skipped, "block list lines that are not names were skipped");
                }
            }
        }
        p.blocks.finish();
        for r in &cfg.rewrites {
            let (from, to) = (wire(&r.from), wire(&r.to));
            if r.suffix {
                p.rewrites_suffix.insert(from, to);
            } else {
                p.rewrites_exact.insert(from, to);
            }
        }
        Ok(p)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.blocks.is_empty()
            && self.rewrites_exact.is_empty()
            && self.rewrites_suffix.is_empty()
    }

    /// Blocked names held.
    pub fn blocked_names(&self) -> usize {
        self.blocks.len()
    }
    /// Bytes held by the block lists.
    pub fn blocklist_bytes(&self) -> usize {
        self.blocks.memory()
    }

    /// Whether no rule applies to any name (the query path skips this step).
    pub fn passes_all(&self) -> bool {
        self.empty
    }

    /// Looks a lower-cased wire-format name up, counting a match by its kind.
    pub fn check(&self, name: &[u8]) -> Verdict<'_> {
        let v = self.rule_for(name);
        let kind = match v {
            Verdict::Pass => return v,
            Verdict::Static(_) => PolicyKind::static_answer,
            Verdict::Block(_) => PolicyKind::block,
            Verdict::Rewrite { .. } => PolicyKind::rewrite,
        };
        self.metrics.hits.inc(kind);
        v
    }

    /// A query of `qtype` for a lower-cased wire-format name is answered NODATA because its
    /// zone is IPv4-only (`filter_aaaa`); counted.
    pub fn filters_aaaa(&self, qtype: u16, name: &[u8]) -> bool {
        let hit = qtype == rtype::AAAA && self.ipv4_only(name);
        if hit {
            self.metrics.hits.inc(PolicyKind::filter_aaaa);
        }
        hit
    }

    /// The name is in a `filter_aaaa` zone (its HTTPS and SVCB answers lose `ipv6hint`).
    pub fn ipv4_only(&self, name: &[u8]) -> bool {
        self.filter_aaaa.as_ref().is_some_and(|z| z.contains(name))
    }

    fn rule_for(&self, name: &[u8]) -> Verdict<'_> {
        if let Some(r) = self.exact.get(name) {
            return Verdict::Static(r);
        }
        if !self.wildcard.is_empty() {
            // The longest wildcard below which the name sits (not the name itself).
            for at in suffixes(name).skip(1) {
                if let Some(r) = self.wildcard.get(&name[at..]) {
                    return Verdict::Static(r);
                }
            }
        }
        if let Some(action) = self.blocks.matches(name) {
            return Verdict::Block(action);
        }
        if let Some(to) = self.rewrites_exact.get(name) {
            return Verdict::Rewrite {
                strip: name.len(),
                to,
            };
        }
        if !self.rewrites_suffix.is_empty() {
            for at in suffixes(name) {
                if let Some(to) = self.rewrites_suffix.get(&name[at..]) {
                    return Verdict::Rewrite {
                        strip: name.len() - at,
                        to,
                    };
                }
            }
        }
        Verdict::Pass
    }
}

fn header_of(query: &[u8], qi: &QueryInfo, rc: ResponseCode) -> Message {
    let mut m = Message::new(qi.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = qi.rd();
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = qi.cd();
    m.metadata.response_code = rc;
    if let Ok(q) = Message::from_vec(query) {
        m.queries = q.queries;
        if let Some(e) = q.edns {
            let mut edns = hickory_proto::op::Edns::new();
            edns.set_max_payload(crate::dns::EDNS_UDP_SIZE);
            edns.set_dnssec_ok(e.flags().dnssec_ok);
            m.set_edns(edns);
        }
    }
    m
}

/// Builds the local answer of a static rule. Other types at the name get NODATA. An answer
/// longer than `max_len` (the client's UDP size) is cut to the question with TC set.
pub fn static_answer(
    query: &[u8],
    qi: &QueryInfo,
    rule: &StaticRule,
    max_len: usize,
    out: &mut Vec<u8>,
) -> bool {
    let mut m = header_of(query, qi, ResponseCode::NoError);
    m.metadata.authoritative = true;
    let Some(owner) = m.queries.first().map(|q| q.name().clone()) else {
        return false;
    };
    let ttl = rule.ttl;
    if let Some(c) = &rule.cname {
        if let Ok(target) = Name::from_ascii(c.trim_end_matches('.').to_string() + ".") {
            m.add_answer(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::CNAME(CNAME(target)),
            ));
        }
    } else {
        match qi.qtype {
            rtype::A => rule.a.iter().for_each(|ip| {
                m.add_answer(Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))));
            }),
            rtype::AAAA => rule.aaaa.iter().for_each(|ip| {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::AAAA(AAAA(*ip)),
                ));
            }),
            rtype::TXT if !rule.txt.is_empty() => {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::TXT(TXT::new(rule.txt.clone())),
                ));
            }
            _ => {}
        }
    }
    if !encode(&m, out) {
        return false;
    }
    if out.len() > max_len {
        m.answers.clear();
        m.metadata.truncation = true;
        return encode(&m, out);
    }
    true
}

/// Builds the answer of a block rule.
pub fn block_answer(query: &[u8], qi: &QueryInfo, action: BlockAction, out: &mut Vec<u8>) -> bool {
    let rc = match action {
        BlockAction::Nxdomain => ResponseCode::NXDomain,
        BlockAction::Refused => ResponseCode::Refused,
        BlockAction::NullAddress => ResponseCode::NoError,
    };
    let mut m = header_of(query, qi, rc);
    if action == BlockAction::NullAddress {
        if let Some(owner) = m.queries.first().map(|q| q.name().clone()) {
            match qi.qtype {
                rtype::A => {
                    m.add_answer(Record::from_rdata(owner, 60, RData::A(A::new(0, 0, 0, 0))));
                }
                rtype::AAAA => {
                    m.add_answer(Record::from_rdata(
                        owner,
                        60,
                        RData::AAAA(AAAA(std::net::Ipv6Addr::UNSPECIFIED)),
                    ));
                }
                _ => {}
            }
        }
    }
    encode(&m, out)
}

fn encode(m: &Message, out: &mut Vec<u8>) -> bool {
    match m.to_vec() {
        Ok(v) => {
            out.clear();
            out.extend_from_slice(&v);
            true
        }
        Err(_) => false,
    }
}

/// The query with its question name replaced: `strip` trailing bytes of the (lower-cased)
/// name become `to`. Returns the new query and its QueryInfo.
pub fn rewrite_query(
    query: &[u8],
    qi: &QueryInfo,
    name: &[u8],
    strip: usize,
    to: &[u8],
) -> Option<(Vec<u8>, QueryInfo)> {
    let keep = name.len().checked_sub(strip)?;
    let mut new_name = name[..keep].to_vec();
    new_name.extend_from_slice(to);
    if new_name.len() > 255 {
        return None;
    }
    let mut q = query.get(..HEADER_LEN)?.to_vec();
    q.extend_from_slice(&new_name);
    q.extend_from_slice(query.get(qi.qname_end..)?);
    let nqi = crate::dns::wire::parse_query(&q).ok()?;
    Some((q, nqi))
}

/// Puts an answer to the rewritten query back under the name the client asked: the
/// question, and every owner name at or below the rewritten name.
pub fn restore_answer(resp: &[u8], client_query: &[u8]) -> Option<Vec<u8>> {
    let mut m = Message::from_vec(resp).ok()?;
    let client = Message::from_vec(client_query).ok()?;
    let asked_name = client.queries.first()?.name().clone();
    let sent_name = m.queries.first()?.name().clone();
    m.queries = client.queries.clone();
    let fix = |r: &mut Record| {
        if r.name == sent_name || r.name.to_lowercase() == sent_name.to_lowercase() {
            r.name = asked_name.clone();
        }
    };
    m.answers.iter_mut().for_each(fix);
    m.to_vec().ok()
}

#[cfg(test)]
mod tests;
