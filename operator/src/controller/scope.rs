//! Which DotProxyConfigs an operator acts on, when several releases share a namespace.
//!
//! An operator started with a release name (the chart passes its own) acts on a resource
//! when the resource's label `dns.dot-proxy.io/release` names that release. A resource
//! without the label (made by hand, or before releases were told apart) is taken by the
//! first release that claims it: the claim is the status field `release`, written with the
//! resource's `resourceVersion` as a precondition, so of two operators claiming at once
//! one gets a conflict and leaves it. The label always wins over a claim. An operator
//! started without a release acts on every resource of its namespace (one operator per
//! namespace, as before).

use kube::ResourceExt;

use crate::resource::DotProxyConfig;
use crate::RELEASE_LABEL;

/// What an operator does with one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Its own: labeled for its release, claimed by it, or it has no release.
    Ours,
    /// Unlabeled and unclaimed: claim it, then act.
    Claim,
    /// Another release's: left alone.
    NotOurs,
}

/// Decides [`Scope`] of `dpc` for the operator of `release`.
pub fn scope(dpc: &DotProxyConfig, release: Option<&str>) -> Scope {
    let Some(release) = release else {
        return Scope::Ours;
    };
    if let Some(label) = dpc.labels().get(RELEASE_LABEL) {
        return if label == release {
            Scope::Ours
        } else {
            Scope::NotOurs
        };
    }
    match dpc.status.as_ref().and_then(|s| s.release.as_deref()) {
        None => Scope::Claim,
        Some(r) if r == release => Scope::Ours,
        Some(_) => Scope::NotOurs,
    }
}

/// A valid release name: used as a label value and in the Lease's name, so a DNS label
/// (lower-case letters, digits and `-`, at most 53 characters, as Helm allows).
pub fn valid_release(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 53
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "release {name:?}: must be 1 to 53 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::DotProxyConfigStatus;

    fn dpc(label: Option<&str>, claimed: Option<&str>) -> DotProxyConfig {
        let mut d: DotProxyConfig =
            serde_saphyr::from_str(include_str!("../../examples/dotproxyconfig.yaml"))
                .expect("example");
        if let Some(l) = label {
            d.labels_mut().insert(RELEASE_LABEL.into(), l.into());
        }
        d.status = claimed.map(|r| DotProxyConfigStatus {
            release: Some(r.into()),
            ..Default::default()
        });
        d
    }

    #[test]
    fn the_label_wins_then_the_claim_then_the_first_to_claim() {
        use Scope::*;
        let cases = [
            (None, None, Some("a"), Claim),
            (None, Some("a"), Some("a"), Ours),
            (None, Some("a"), Some("b"), NotOurs),
            (Some("a"), None, Some("a"), Ours),
            (Some("a"), None, Some("b"), NotOurs),
            // Labeled after another release claimed it: the label decides.
            (Some("b"), Some("a"), Some("a"), NotOurs),
            (Some("b"), Some("a"), Some("b"), Ours),
            // No release: every resource, as one operator per namespace did.
            (Some("a"), Some("b"), None, Ours),
            (None, None, None, Ours),
        ];
        for (label, claimed, release, want) in cases {
            assert_eq!(
                scope(&dpc(label, claimed), release),
                want,
                "label {label:?}, claimed {claimed:?}, release {release:?}"
            );
        }
    }

    #[test]
    fn release_names_are_dns_labels() {
        for good in ["dot-proxy", "a", "pool-2", &"x".repeat(53)] {
            assert!(valid_release(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Dot", "a_b", "a.b", &"x".repeat(54)] {
            assert!(valid_release(bad).is_err(), "{bad:?}");
        }
    }
}
