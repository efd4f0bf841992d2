//! Annotations as privileges (issue 27): which namespaces' pods may use which annotation.
//!
//! | annotation | needs |
//! | --- | --- |
//! | `rate-limit-exempt: "true"` | `spec.annotationGrants.rateLimitExempt` |
//! | `qps` above `rateLimit.qps`, `burst` above `rateLimit.burst` | `spec.annotationGrants.rateAboveDefault` |
//! | `qps`, `burst` at or below the default | nothing: it only limits the pod itself |
//! | `upstream-group: NAME` | group NAME's `grantedTo` |
//!
//! Every grant is empty by default: nothing privileged is allowed until the resource says
//! who may. A refused annotation is dropped on its own (the pod keeps the default for it)
//! and reported, so the pod gets a Warning Event.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Expression, Selector, SelectorExt};

use super::annotations::{AnnotationProblem, PodRequest, BURST, EXEMPT, GROUP, QPS};
use crate::resource::{DotProxyConfigSpec, NamespaceGrant, NamespaceSelector, SelectorOperator};

/// A [`NamespaceGrant`] ready to evaluate: the names, and the parsed selector.
#[derive(Clone, Debug, Default)]
pub struct Grant {
    names: BTreeSet<String>,
    selector: Option<Selector>,
}

impl Grant {
    /// `field` names the grant in errors (`spec.annotationGrants.rateLimitExempt`).
    pub fn new(g: &NamespaceGrant, field: &str) -> Result<Grant, String> {
        let selector = match &g.namespace_selector {
            None => None,
            Some(s) => Some(selector(s, &format!("{field}.namespaceSelector"))?),
        };
        Ok(Grant {
            names: g.namespaces.iter().cloned().collect(),
            selector,
        })
    }

    /// True when `namespace` is named, or its labels match the selector. A namespace whose
    /// labels are not known has none: only a name or the empty selector (`{}`) takes it.
    pub fn allows(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.names.contains(namespace)
            || self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(labels.unwrap_or(&NONE)))
    }
}

/// The selector as kube evaluates it. `In` and `NotIn` need values, `Exists` and
/// `DoesNotExist` take none (as the API server requires of a label selector).
fn selector(s: &NamespaceSelector, field: &str) -> Result<Selector, String> {
    let mut exprs: Vec<Expression> = s
        .match_labels
        .iter()
        .map(|(k, v)| Expression::Equal(k.clone(), v.clone()))
        .collect();
    for (i, r) in s.match_expressions.iter().enumerate() {
        let values: BTreeSet<String> = r.values.iter().cloned().collect();
        let needs_values = matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if needs_values == values.is_empty() {
            let want = if needs_values {
                "at least one value"
            } else {
                "no values"
            };
            return Err(format!(
                "{field}.matchExpressions[{i}].values: {:?} takes {want}",
                r.operator
            ));
        }
        let key = r.key.clone();
        exprs.push(match r.operator {
            SelectorOperator::In => Expression::In(key, values),
            SelectorOperator::NotIn => Expression::NotIn(key, values),
            SelectorOperator::Exists => Expression::Exists(key),
            SelectorOperator::DoesNotExist => Expression::DoesNotExist(key),
        });
    }
    Ok(exprs.into_iter().collect())
}

/// Every grant of one resource, and the defaults a rate is compared with.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    exempt: Grant,
    raise: Grant,
    groups: BTreeMap<String, Grant>,
    default_qps: f64,
    default_burst: u32,
}

const EXEMPT_FIELD: &str = "spec.annotationGrants.rateLimitExempt";
const RAISE_FIELD: &str = "spec.annotationGrants.rateAboveDefault";

impl Grants {
    /// The grants of `spec`; a selector that does not parse is a spec error naming its field.
    pub fn from_spec(spec: &DotProxyConfigSpec) -> Result<Grants, Vec<String>> {
        let mut errs = Vec::new();
        let mut grant = |g: &NamespaceGrant, field: &str| {
            Grant::new(g, field).unwrap_or_else(|e| {
                errs.push(e);
                Grant::default()
            })
        };
        let exempt = grant(&spec.annotation_grants.rate_limit_exempt, EXEMPT_FIELD);
        let raise = grant(&spec.annotation_grants.rate_above_default, RAISE_FIELD);
        let groups = spec
            .upstream_groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let field = format!("spec.upstreamGroups[{i}].grantedTo");
                (g.name.clone(), grant(&g.granted_to, &field))
            })
            .collect();
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Grants {
            exempt,
            raise,
            groups,
            default_qps: spec.rate_limit.qps,
            default_burst: spec.rate_limit.burst,
        })
    }

    /// Takes out of `req` what the pod's namespace is not granted, one problem per refused
    /// annotation, then drops a rate beside an exemption (an exempt pod has no limit).
    pub fn enforce(
        &self,
        req: &mut PodRequest,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<AnnotationProblem> {
        let mut refused = Vec::new();
        let mut refuse = |key: &str, value: String, field: &str| {
            refused.push(AnnotationProblem {
                key: key.into(),
                value,
                reason: format!("not granted to namespace {namespace:?} ({field})"),
                not_granted: true,
            });
        };
        if req.exempt && !self.exempt.allows(namespace, labels) {
            req.exempt = false;
            refuse(EXEMPT, "true".into(), EXEMPT_FIELD);
        }
        if !req.exempt {
            let may_raise = || self.raise.allows(namespace, labels);
            if let Some(q) = req.qps.filter(|&q| q > self.default_qps) {
                if !may_raise() {
                    req.qps = None;
                    refuse(QPS, q.to_string(), RAISE_FIELD);
                }
            }
            if let Some(b) = req.burst.filter(|&b| b > self.default_burst) {
                if !may_raise() {
                    req.burst = None;
                    refuse(BURST, b.to_string(), RAISE_FIELD);
                }
            }
        }
        if let Some(g) = &req.group {
            if !self
                .groups
                .get(g)
                .is_some_and(|x| x.allows(namespace, labels))
            {
                let field = format!("the grantedTo of upstream group {g:?}");
                refuse(GROUP, g.clone(), &field);
                req.group = None;
            }
        }
        if req.exempt {
            // Exempt clients have no limit at all; their qps and burst would be dead values.
            req.qps = None;
            req.burst = None;
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::annotations::tests::ann as labels;
    use crate::resource::SelectorRequirement;

    fn grant(names: &[&str], selector: Option<NamespaceSelector>) -> Grant {
        let g = NamespaceGrant {
            namespaces: names.iter().map(|s| s.to_string()).collect(),
            namespace_selector: selector,
        };
        Grant::new(&g, "x").expect("parses")
    }

    fn match_labels(pairs: &[(&str, &str)]) -> NamespaceSelector {
        NamespaceSelector {
            match_labels: labels(pairs),
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_grant_allows_no_namespace() {
        let g = grant(&[], None);
        assert!(!g.allows("default", None));
        assert!(!g.allows("kube-system", Some(&labels(&[("a", "b")]))));
    }

    #[test]
    fn names_match_exactly() {
        let g = grant(&["monitoring", "batch"], None);
        assert!(g.allows("monitoring", None));
        assert!(g.allows("batch", Some(&labels(&[]))));
        assert!(!g.allows("monitoring-2", None));
        assert!(!g.allows("Monitoring", None));
    }

    #[test]
    fn selectors_match_namespace_labels() {
        let g = grant(&[], Some(match_labels(&[("team", "infra")])));
        assert!(g.allows("a", Some(&labels(&[("team", "infra"), ("x", "y")]))));
        assert!(!g.allows("b", Some(&labels(&[("team", "web")]))));
        assert!(
            !g.allows("c", None),
            "unknown labels match nothing specific"
        );
        let g = grant(
            &["named"],
            Some(NamespaceSelector {
                match_expressions: vec![SelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::In,
                    values: vec!["batch".into(), "ml".into()],
                }],
                ..Default::default()
            }),
        );
        assert!(g.allows("x", Some(&labels(&[("tier", "ml")]))));
        assert!(!g.allows("x", Some(&labels(&[("tier", "web")]))));
        assert!(g.allows("named", None), "names and selector: either grants");
        // The empty selector selects every namespace, as everywhere in Kubernetes.
        let all = grant(&[], Some(NamespaceSelector::default()));
        assert!(all.allows("anything", None));
    }

    #[test]
    fn a_bad_selector_is_a_spec_error_naming_its_field() {
        let g = NamespaceGrant {
            namespaces: vec![],
            namespace_selector: Some(NamespaceSelector {
                match_expressions: vec![SelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::In,
                    values: vec![],
                }],
                ..Default::default()
            }),
        };
        let e = Grant::new(&g, EXEMPT_FIELD).expect_err("refused");
        assert_eq!(
            e,
            "spec.annotationGrants.rateLimitExempt.namespaceSelector.matchExpressions[0].values: In takes at least one value"
        );
    }

    fn grants(exempt: Grant, raise: Grant, group: Grant) -> Grants {
        Grants {
            exempt,
            raise,
            groups: BTreeMap::from([("tenant-a".to_string(), group)]),
            default_qps: 200.0,
            default_burst: 400,
        }
    }

    #[test]
    fn refused_annotations_are_taken_out_one_by_one() {
        let none = grants(grant(&[], None), grant(&[], None), grant(&[], None));
        // Exemption not granted: the pod's own lower qps still applies.
        let mut r = PodRequest {
            exempt: true,
            qps: Some(5.0),
            ..Default::default()
        };
        let p = none.enforce(&mut r, "apps", None);
        assert_eq!(
            r,
            PodRequest {
                qps: Some(5.0),
                ..Default::default()
            }
        );
        assert_eq!(p.len(), 1);
        assert!(p[0].not_granted);
        assert_eq!(
            p[0].to_string(),
            "dns.dot-proxy.io/rate-limit-exempt=\"true\" ignored: not granted to namespace \"apps\" (spec.annotationGrants.rateLimitExempt)"
        );
        // Above the default: refused per field; at or below: kept.
        let mut r = PodRequest {
            qps: Some(200.5),
            burst: Some(400),
            ..Default::default()
        };
        let p = none.enforce(&mut r, "apps", None);
        assert_eq!((r.qps, r.burst), (None, Some(400)));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, QPS);
        // A group not granted to the namespace, or not granted at all.
        let mut r = PodRequest {
            group: Some("tenant-a".into()),
            ..Default::default()
        };
        let p = none.enforce(&mut r, "apps", None);
        assert_eq!(r.group, None);
        assert!(
            p[0].reason
                .contains("grantedTo of upstream group \"tenant-a\""),
            "{}",
            p[0]
        );
    }

    #[test]
    fn granted_annotations_apply() {
        let g = grants(
            grant(&["monitoring"], None),
            grant(&[], Some(match_labels(&[("rate", "high")]))),
            grant(&["team-a"], None),
        );
        let mut r = PodRequest {
            exempt: true,
            qps: Some(5.0),
            ..Default::default()
        };
        assert!(g.enforce(&mut r, "monitoring", None).is_empty());
        assert_eq!(
            r,
            PodRequest {
                exempt: true,
                ..Default::default()
            },
            "a rate beside an exemption is dropped"
        );
        let high = labels(&[("rate", "high")]);
        let mut r = PodRequest {
            qps: Some(5000.0),
            burst: Some(10_000),
            ..Default::default()
        };
        assert!(g.enforce(&mut r, "batch", Some(&high)).is_empty());
        assert_eq!((r.qps, r.burst), (Some(5000.0), Some(10_000)));
        let mut r = PodRequest {
            group: Some("tenant-a".into()),
            ..Default::default()
        };
        assert!(g.enforce(&mut r, "team-a", None).is_empty());
        assert_eq!(r.group.as_deref(), Some("tenant-a"));
        // Another tenant's group: refused.
        let p = g.enforce(&mut r, "team-b", None);
        assert_eq!((r.group, p.len()), (None, 1));
    }
}
