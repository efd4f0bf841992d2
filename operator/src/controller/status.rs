//! The status a reconcile writes, computed as a pure function of the old status and the outcome.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::render::{Invalid, Rendered};
use crate::resource::{
    DotProxyConfigStatus, ANNOTATIONS_IGNORED, INVALID, OVERRIDES_TRUNCATED, READY,
};

/// Longest condition message written (the API allows 32 KiB; a status should stay readable).
const MAX_MESSAGE: usize = 2048;

/// What one reconcile found.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// Rendered and written; `invalid_pods` pods had annotation values ignored, and
    /// `refused_pods` pods had annotations their namespace is not granted.
    Applied {
        rendered: &'a Rendered,
        invalid_pods: u32,
        refused_pods: u32,
    },
    /// Not rendered; the ConfigMaps were left as they were.
    Invalid(&'a Invalid),
    /// Rendered, but writing a ConfigMap failed (the API server's error, with the name).
    WriteFailed(&'a str),
    /// Rendered, but a ConfigMap it would write belongs to someone else (the message says
    /// which and whose): nothing was written.
    NotOwned(&'a str),
}

/// The status to write. Conditions whose status, reason and message are unchanged keep their
/// `lastTransitionTime`, so an unchanged outcome yields a status equal to `old`, and the
/// reconcile then writes nothing.
pub fn desired(
    old: Option<&DotProxyConfigStatus>,
    generation: Option<i64>,
    outcome: Outcome<'_>,
    now: &Time,
) -> DotProxyConfigStatus {
    let mut st = old.cloned().unwrap_or_default();
    st.observed_generation = generation;
    let (ready, invalid) = match outcome {
        Outcome::Applied {
            rendered,
            invalid_pods,
            refused_pods,
        } => {
            st.config_map = Some(rendered.config.name.clone());
            st.config_hash = Some(rendered.config.hash.clone());
            st.override_config_maps = rendered.shards.iter().map(|s| s.name.clone()).collect();
            st.overrides_hash = Some(rendered.overrides_hash.clone());
            st.pod_overrides = u32::try_from(rendered.stats.pods_applied).unwrap_or(u32::MAX);
            st.pods_with_invalid_annotations = invalid_pods;
            st.pods_with_refused_annotations = refused_pods;
            st.largest_shard_bytes = rendered.stats.largest_shard_bytes as u64;
            st.overrides_truncated =
                u32::try_from(rendered.stats.overrides_truncated).unwrap_or(u32::MAX);
            (
                (
                    "True",
                    "Rendered",
                    format!(
                        "config {} written to {}",
                        short(&rendered.config.hash),
                        rendered.config.name
                    ),
                ),
                ("False", "Valid", String::new()),
            )
        }
        Outcome::Invalid(e) => {
            let kept = match &st.config_hash {
                Some(h) => format!("the proxies keep the last good config ({})", short(h)),
                None => "nothing has been written yet".to_string(),
            };
            (
                (
                    "False",
                    e.reason(),
                    format!("current spec not applied, {kept}; see the Invalid condition"),
                ),
                ("True", e.reason(), e.to_string()),
            )
        }
        // The ConfigMaps written before the failing one stand (the main config is written
        // first): which config the proxies run is not known here, so none is named.
        Outcome::WriteFailed(error) => (
            ("False", "WriteFailed", format!("{error}; retrying")),
            ("False", "Valid", String::new()),
        ),
        Outcome::NotOwned(why) => (
            ("False", "ConfigMapNotOwned", why.to_string()),
            ("False", "Valid", String::new()),
        ),
    };
    let old_conditions = std::mem::take(&mut st.conditions);
    let ignored = match outcome {
        Outcome::Applied { rendered, .. } => Some(ignored_condition(rendered)),
        // Not rendered or not written: what the last render found still holds.
        Outcome::Invalid(_) | Outcome::WriteFailed(_) | Outcome::NotOwned(_) => old_conditions
            .iter()
            .find(|c| c.type_ == ANNOTATIONS_IGNORED)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())),
    }
    .unwrap_or_else(|| ("False".into(), "None".into(), String::new()));
    let truncated = match outcome {
        Outcome::Applied { rendered, .. } => Some(truncated_condition(rendered)),
        Outcome::Invalid(_) | Outcome::WriteFailed(_) | Outcome::NotOwned(_) => old_conditions
            .iter()
            .find(|c| c.type_ == OVERRIDES_TRUNCATED)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())),
    }
    .unwrap_or_else(|| ("False".into(), "AllFit".into(), String::new()));
    st.conditions = vec![
        condition(&old_conditions, READY, ready, generation, now),
        condition(&old_conditions, INVALID, invalid, generation, now),
        condition(
            &old_conditions,
            ANNOTATIONS_IGNORED,
            (&ignored.0, &ignored.1, ignored.2.clone()),
            generation,
            now,
        ),
        condition(
            &old_conditions,
            OVERRIDES_TRUNCATED,
            (&truncated.0, &truncated.1, truncated.2.clone()),
            generation,
            now,
        ),
    ];
    st
}

/// `AnnotationsIgnored`: True while pods carry annotations the spec makes ineffective.
fn ignored_condition(r: &Rendered) -> (String, String, String) {
    match r.stats.rate_limit_annotations_ignored {
        0 => ("False".into(), "None".into(), String::new()),
        n => (
            "True".into(),
            "RateLimitDisabled".into(),
            format!(
                "{n} pod(s) have dns.dot-proxy.io rate-limit annotations, but spec.rateLimit.enabled is false, so they have no effect; set it to true to apply them (each such pod has a Warning Event)"
            ),
        ),
    }
}

/// `OverridesTruncated`: True while some pods' overrides do not fit their shard.
fn truncated_condition(r: &Rendered) -> (String, String, String) {
    const NAMED: usize = 5;
    match r.truncated.len() {
        0 => ("False".into(), "AllFit".into(), String::new()),
        n => {
            let mut named = r
                .truncated
                .iter()
                .take(NAMED)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if n > NAMED {
                named.push_str(", ...");
            }
            (
                "True".into(),
                "ShardFull".into(),
                format!(
                    "the overrides of {n} pod(s) were left out because their shard would pass {} bytes even with {} shards ({named}); the main ConfigMap and every other entry are written. Raise spec.target.maxOverrideShards (and the chart's operator.maxOverrideShards, which mounts them), or remove annotated pods",
                    crate::render::MAX_SHARD_BYTES,
                    r.shards.len()
                ),
            )
        }
    }
}

fn condition(
    old: &[Condition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let message = clip(message);
    let previous = old.iter().find(|c| c.type_ == type_);
    let unchanged =
        previous.is_some_and(|p| p.status == status && p.reason == reason && p.message == message);
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: match previous {
            Some(p) if unchanged => p.last_transition_time.clone(),
            _ => now.clone(),
        },
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, Invalid};

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn rendered() -> Rendered {
        let d: crate::resource::DotProxyConfig =
            serde_saphyr::from_str(include_str!("../../examples/dotproxyconfig.yaml"))
                .expect("example");
        render(
            "default",
            &d.spec,
            &[],
            &Default::default(),
            &Default::default(),
        )
        .expect("renders")
    }

    #[test]
    fn ready_then_invalid_then_ready_again() {
        let r = rendered();
        let s1 = desired(
            None,
            Some(1),
            Outcome::Applied {
                rendered: &r,
                invalid_pods: 0,
                refused_pods: 0,
            },
            &at(100),
        );
        assert_eq!(s1.observed_generation, Some(1));
        assert_eq!(s1.config_hash.as_deref(), Some(r.config.hash.as_str()));
        assert_eq!(s1.override_config_maps.len(), 8);
        let ready = &s1.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "True", "Rendered")
        );
        assert_eq!(s1.conditions[1].status, "False");

        // Nothing new: the same status, times included.
        let again = desired(
            Some(&s1),
            Some(1),
            Outcome::Applied {
                rendered: &r,
                invalid_pods: 0,
                refused_pods: 0,
            },
            &at(200),
        );
        assert_eq!(again, s1);

        let bad = Invalid::Spec(vec![
            "spec.zones: a route for \".\" (the default) is required".into(),
        ]);
        let s2 = desired(Some(&s1), Some(2), Outcome::Invalid(&bad), &at(300));
        assert_eq!(
            s2.config_hash, s1.config_hash,
            "the last good config is still reported"
        );
        assert_eq!(s2.conditions[0].status, "False");
        assert_eq!(s2.conditions[0].reason, "InvalidSpec");
        assert!(s2.conditions[0].message.contains(&r.config.hash[..12]));
        assert_eq!(s2.conditions[1].status, "True");
        assert_eq!(s2.conditions[1].message, bad.to_string());
        assert_eq!(s2.conditions[1].last_transition_time, at(300));
        assert_eq!(s2.conditions[1].observed_generation, Some(2));

        let s3 = desired(
            Some(&s2),
            Some(3),
            Outcome::Applied {
                rendered: &r,
                invalid_pods: 2,
                refused_pods: 0,
            },
            &at(400),
        );
        assert_eq!(s3.conditions[0].status, "True");
        assert_eq!(s3.conditions[0].last_transition_time, at(400));
        assert_eq!(s3.pods_with_invalid_annotations, 2);
    }

    #[test]
    fn rate_limit_annotations_while_limiting_is_off_are_a_condition() {
        let mut r = rendered();
        let applied = |r: &Rendered, old: Option<&DotProxyConfigStatus>, t| {
            desired(
                old,
                Some(1),
                Outcome::Applied {
                    rendered: r,
                    invalid_pods: 0,
                    refused_pods: 0,
                },
                &at(t),
            )
        };
        let s0 = applied(&r, None, 1);
        let c = &s0.conditions[2];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            (ANNOTATIONS_IGNORED, "False")
        );
        r.stats.rate_limit_annotations_ignored = 3;
        let s1 = applied(&r, Some(&s0), 2);
        let c = &s1.conditions[2];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RateLimitDisabled")
        );
        assert!(c.message.starts_with("3 pod(s)"), "{}", c.message);
        assert!(c.message.contains("spec.rateLimit.enabled"));
        // An invalid spec later: what the last render found still stands.
        let bad = Invalid::Spec(vec!["x".into()]);
        let s2 = desired(Some(&s1), Some(2), Outcome::Invalid(&bad), &at(3));
        let (a, b) = (&s2.conditions[2], &s1.conditions[2]);
        assert_eq!(
            (&a.status, &a.reason, &a.message, &a.last_transition_time),
            (&b.status, &b.reason, &b.message, &b.last_transition_time)
        );
    }

    #[test]
    fn invalid_before_anything_was_written() {
        let bad = Invalid::OverridesTooLarge("x".repeat(5000));
        let s = desired(None, Some(1), Outcome::Invalid(&bad), &at(1));
        assert!(s.config_hash.is_none());
        assert!(s.conditions[0]
            .message
            .contains("nothing has been written yet"));
        assert!(s.conditions[1].message.len() <= MAX_MESSAGE + 3);
    }
}
