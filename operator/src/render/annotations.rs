//! Pod annotations: what a pod asks for, and what of it is ignored.
//!
//! | annotation | value |
//! | --- | --- |
//! | `dns.dot-proxy.io/qps` | a number above 0 (at most 1,000,000): the pod's sustained queries per second |
//! | `dns.dot-proxy.io/burst` | a whole number from 1 to 10,000,000: the pod's bucket size |
//! | `dns.dot-proxy.io/rate-limit-exempt` | `true` or `false` |
//! | `dns.dot-proxy.io/upstream-group` | the name of one of the resource's `upstreamGroups` |
//!
//! Exemption, a rate above the default and a group are privileges the resource grants per
//! namespace (`grants`).
//!
//! An invalid value is ignored on its own (the pod's other annotations still apply) and
//! reported, so the controller can put a Warning Event on the pod. Which namespaces may use
//! a valid value is the next step (`grants`).

use std::collections::BTreeMap;

use crate::ANNOTATION_PREFIX;

pub const QPS: &str = "dns.dot-proxy.io/qps";
pub const BURST: &str = "dns.dot-proxy.io/burst";
pub const EXEMPT: &str = "dns.dot-proxy.io/rate-limit-exempt";
pub const GROUP: &str = "dns.dot-proxy.io/upstream-group";

const MAX_QPS: f64 = 1_000_000.0;
const MAX_BURST: u32 = 10_000_000;

/// What a pod's valid annotations ask for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodRequest {
    pub qps: Option<f64>,
    pub burst: Option<u32>,
    pub exempt: bool,
    pub group: Option<String>,
}

impl PodRequest {
    /// True when the pod has its own rate limit (or exemption).
    pub fn has_rate_limit(&self) -> bool {
        self.exempt || self.qps.is_some() || self.burst.is_some()
    }
}

/// One ignored annotation and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationProblem {
    pub key: String,
    pub value: String,
    pub reason: String,
    /// Valid, but the pod's namespace is not granted it (see `grants`); else invalid.
    pub not_granted: bool,
}

impl std::fmt::Display for AnnotationProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={:?} ignored: {}",
            self.key,
            truncate(&self.value, 64),
            self.reason
        )
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses the `dns.dot-proxy.io/` annotations of one pod. `group_usable` tells whether a
/// pod may be sent to the upstream group of that name, or why not.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    group_usable: impl Fn(&str) -> Result<(), String>,
) -> (PodRequest, Vec<AnnotationProblem>) {
    let mut req = PodRequest::default();
    let mut problems = Vec::new();
    for (key, raw) in annotations
        .iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
    {
        let value = raw.trim();
        let result = match key.as_str() {
            QPS => parse_qps(value).map(|q| req.qps = Some(q)),
            BURST => parse_burst(value).map(|b| req.burst = Some(b)),
            EXEMPT => parse_bool(value).map(|e| req.exempt = e),
            GROUP => group_usable(value).map(|()| req.group = Some(value.to_string())),
            _ => Err(format!(
                "unknown annotation (known: {QPS}, {BURST}, {EXEMPT}, {GROUP})"
            )),
        };
        if let Err(reason) = result {
            problems.push(AnnotationProblem {
                key: key.clone(),
                value: raw.clone(),
                reason,
                not_granted: false,
            });
        }
    }
    // A qps or burst beside an exemption is kept here: it applies if the exemption is not
    // granted (`Grants::enforce` drops it when the exemption stands).
    (req, problems)
}

fn parse_qps(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(q) if q.is_finite() && q > 0.0 && q <= MAX_QPS => Ok(q),
        _ => Err(format!("must be a number above 0 and at most {MAX_QPS}")),
    }
}

fn parse_burst(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(b) if (1..=MAX_BURST).contains(&b) => Ok(b),
        _ => Err(format!("must be a whole number from 1 to {MAX_BURST}")),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be \"true\" or \"false\"".into()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A string map (annotations, labels) from pairs; the grants' tests use it too.
    pub(in crate::render) fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn groups(name: &str) -> Result<(), String> {
        if matches!(name, "default" | "internal") {
            Ok(())
        } else {
            Err("no upstream group of that name in this DotProxyConfig".into())
        }
    }

    #[test]
    fn valid_values() {
        let (r, p) = parse(
            &ann(&[(QPS, "12.5"), (BURST, "40"), (GROUP, "internal")]),
            groups,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            r,
            PodRequest {
                qps: Some(12.5),
                burst: Some(40),
                exempt: false,
                group: Some("internal".into())
            }
        );
        assert!(r.has_rate_limit());
        let (r, p) = parse(&ann(&[(EXEMPT, "true"), (QPS, "5")]), groups);
        assert!(p.is_empty());
        assert_eq!(
            r,
            PodRequest {
                exempt: true,
                qps: Some(5.0),
                ..Default::default()
            }
        );
        let (r, _) = parse(&ann(&[(EXEMPT, "false")]), groups);
        assert!(!r.has_rate_limit());
        let (r, p) = parse(&ann(&[(QPS, " 7 ")]), groups);
        assert!(p.is_empty());
        assert_eq!(r.qps, Some(7.0));
    }

    #[test]
    fn invalid_values_are_ignored_one_by_one() {
        let (r, p) = parse(
            &ann(&[
                (QPS, "fast"),
                (BURST, "10"),
                (EXEMPT, "yes"),
                (GROUP, "nope"),
                ("dns.dot-proxy.io/qsp", "1"),
                ("unrelated.io/x", "y"),
            ]),
            groups,
        );
        assert_eq!(
            r,
            PodRequest {
                burst: Some(10),
                ..Default::default()
            }
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "dns.dot-proxy.io/qps",
                "dns.dot-proxy.io/qsp",
                EXEMPT,
                GROUP
            ]
        );
        for bad in ["0", "-1", "NaN", "inf", "1e9", ""] {
            assert_eq!(parse(&ann(&[(QPS, bad)]), groups).1.len(), 1, "qps {bad}");
        }
        for bad in ["0", "1.5", "-3", "99999999999", "ten"] {
            assert_eq!(
                parse(&ann(&[(BURST, bad)]), groups).1.len(),
                1,
                "burst {bad}"
            );
        }
        for bad in ["True", "1", "on", ""] {
            assert_eq!(
                parse(&ann(&[(EXEMPT, bad)]), groups).1.len(),
                1,
                "exempt {bad}"
            );
        }
        let msg = p[0].to_string();
        assert!(
            msg.contains("dns.dot-proxy.io/qps=\"fast\" ignored"),
            "{msg}"
        );
    }
}
