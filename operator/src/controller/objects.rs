//! The ConfigMap objects written for a resource, and whether an existing one needs a write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::render::ConfigMapContent;
use crate::resource::DotProxyConfig;
use crate::{CONFIG_LABEL, FIELD_MANAGER, HASH_ANNOTATION, MANAGED_BY_LABEL, ROLE_LABEL};

/// Which of the written ConfigMaps this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Config,
    Overrides,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Config => "config",
            Role::Overrides => "overrides",
        }
    }
}

/// Label selector matching every ConfigMap written for `dpc`.
pub fn selector(dpc: &DotProxyConfig) -> String {
    format!(
        "{MANAGED_BY_LABEL}={FIELD_MANAGER},{CONFIG_LABEL}={}",
        dpc.name_any()
    )
}

/// The full object applied for one rendered ConfigMap: labels, the hash annotation, and an
/// owner reference to the resource (so deleting it deletes them), when it has a uid.
pub fn config_map(dpc: &DotProxyConfig, content: &ConfigMapContent, role: Role) -> ConfigMap {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
        (CONFIG_LABEL.to_string(), dpc.name_any()),
        (ROLE_LABEL.to_string(), role.as_str().to_string()),
    ]);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(content.name.clone()),
            namespace: dpc.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_string(),
                content.hash.clone(),
            )])),
            owner_references: dpc.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            content.key.clone(),
            content.data.clone(),
        )])),
        ..Default::default()
    }
}

/// True when `existing` already holds exactly what `desired` would write: the same single
/// data value (so a hand edit is undone), hash annotation, labels and
/// owner reference. Anything else is written again.
pub fn up_to_date(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    let Some((key, value)) = desired.data.as_ref().and_then(|d| d.iter().next()) else {
        return false;
    };
    let data_same = match &existing.data {
        Some(d) if d.len() == 1 => d.get(key) == Some(value),
        _ => false,
    };
    let annotation_same =
        existing.annotations().get(HASH_ANNOTATION) == desired.annotations().get(HASH_ANNOTATION);
    let labels_same = desired
        .labels()
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    let owner_same = desired.metadata.owner_references.iter().flatten().all(|o| {
        existing
            .owner_references()
            .iter()
            .any(|e| e.uid == o.uid && e.controller == o.controller)
    });
    data_same && annotation_same && labels_same && owner_same && existing.binary_data.is_none()
}

/// Whether a ConfigMap that already exists under a name `dpc` wants to write may be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Its controller owner reference is `dpc`.
    Ours,
    /// No controller owner reference, but written by this operator's field manager for a
    /// resource of this name (a ConfigMap left by an orphaning delete of an earlier
    /// resource, or written before it had a uid): taken over, the write adds the owner
    /// reference.
    Adopt,
    /// Someone else's: never written. The text says whose, for the status.
    NotOurs(String),
}

/// Decides [`Ownership`] of `existing` for `dpc`. The marker is the controller owner
/// reference every write sets (and that garbage collection follows): one ConfigMap has at
/// most one controller, so two resources naming the same ConfigMap cannot both own it.
pub fn ownership(dpc: &DotProxyConfig, existing: &ConfigMap) -> Ownership {
    let uid = dpc.uid();
    if let Some(owner) = existing
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        if uid.as_ref() == Some(&owner.uid) {
            return Ownership::Ours;
        }
        let ns = existing.namespace().unwrap_or_default();
        return Ownership::NotOurs(if owner.kind == DotProxyConfig::kind(&()) {
            format!(
                "it belongs to DotProxyConfig {ns}/{} (uid {})",
                owner.name, owner.uid
            )
        } else {
            format!("it is controlled by {} {ns}/{}", owner.kind, owner.name)
        });
    }
    let ours_by_label = existing.labels().get(MANAGED_BY_LABEL).map(String::as_str)
        == Some(FIELD_MANAGER)
        && existing.labels().get(CONFIG_LABEL) == Some(&dpc.name_any());
    let our_manager = existing
        .managed_fields()
        .iter()
        .any(|f| f.manager.as_deref() == Some(FIELD_MANAGER));
    if ours_by_label && our_manager {
        return Ownership::Adopt;
    }
    let mut managers: Vec<&str> = existing
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.as_deref())
        .collect();
    managers.sort_unstable();
    managers.dedup();
    // The first few names say enough; the list is the API server's, so it is cut (and the
    // message stays well inside the condition's bound, with what to do after it).
    const NAMED: usize = 3;
    let more = managers.len().saturating_sub(NAMED);
    managers.truncate(NAMED);
    Ownership::NotOurs(match (managers.is_empty(), more) {
        (true, _) => "it was not written by dot-proxy-operator for this resource".to_string(),
        (false, 0) => format!(
            "it was not written by dot-proxy-operator for this resource (written by {})",
            managers.join(", ")
        ),
        (false, n) => format!(
            "it was not written by dot-proxy-operator for this resource (written by {} and {n} more)",
            managers.join(", ")
        ),
    })
}

/// ConfigMaps written earlier for this resource that the current render no longer produces
/// (a renamed target, fewer shards). Only those this resource controls are returned.
pub fn stale<'a>(
    dpc: &DotProxyConfig,
    existing: &'a [ConfigMap],
    desired: &[String],
) -> Vec<&'a ConfigMap> {
    existing
        .iter()
        .filter(|cm| !desired.contains(&cm.name_any()))
        .filter(|cm| ownership(dpc, cm) == Ownership::Ours)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ConfigMapContent;

    fn dpc() -> DotProxyConfig {
        let mut d: DotProxyConfig =
            serde_saphyr::from_str(include_str!("../../examples/dotproxyconfig.yaml"))
                .expect("example");
        d.metadata.uid = Some("uid-1".into());
        d
    }

    /// The content of a ConfigMap `name` holding `body` under `key`.
    fn content(name: &str, key: &str, body: &str) -> ConfigMapContent {
        ConfigMapContent::new(name.into(), key.into(), body.into())
    }

    #[test]
    fn objects_carry_labels_hash_and_owner() {
        let d = dpc();
        let content = content("dot-proxy-config", "config.yaml", "listen: []\n");
        let cm = config_map(&d, &content, Role::Config);
        assert_eq!(cm.metadata.namespace.as_deref(), Some("dot-proxy"));
        assert_eq!(cm.annotations().get(HASH_ANNOTATION), Some(&content.hash));
        assert_eq!(
            cm.labels().get(ROLE_LABEL).map(String::as_str),
            Some("config")
        );
        let owner = &cm.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("DotProxyConfig", "default", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            selector(&d),
            "app.kubernetes.io/managed-by=dot-proxy-operator,dns.dot-proxy.io/config=default"
        );

        assert!(up_to_date(&cm, &cm));
        let mut edited = cm.clone();
        edited.data = Some(BTreeMap::from([(
            "config.yaml".into(),
            "listen: [1]\n".into(),
        )]));
        assert!(
            !up_to_date(&edited, &cm),
            "a hand edit of the data is undone"
        );
        let mut unowned = cm.clone();
        unowned.metadata.owner_references = None;
        assert!(!up_to_date(&unowned, &cm));
        let mut extra_key = cm.clone();
        extra_key
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert("other".into(), "x".into());
        assert!(!up_to_date(&extra_key, &cm));
    }

    #[test]
    fn ownership_follows_the_controller_reference_then_the_field_manager() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let d = dpc();
        let ours = config_map(
            &d,
            &content("dot-proxy-config", "config.yaml", "listen: []\n"),
            Role::Config,
        );
        assert_eq!(ownership(&d, &ours), Ownership::Ours);

        // The same name, recreated (another uid): the old one's until collected.
        let mut recreated = d.clone();
        recreated.metadata.uid = Some("uid-2".into());
        match ownership(&recreated, &ours) {
            Ownership::NotOurs(why) => assert_eq!(
                why,
                "it belongs to DotProxyConfig dot-proxy/default (uid uid-1)"
            ),
            other => panic!("{other:?}"),
        }

        let manager = |m: &str| ManagedFieldsEntry {
            manager: Some(m.into()),
            operation: Some("Apply".into()),
            ..Default::default()
        };
        let mut orphan = ours.clone();
        orphan.metadata.owner_references = None;
        orphan.metadata.managed_fields = Some(vec![manager(FIELD_MANAGER)]);
        assert_eq!(ownership(&recreated, &orphan), Ownership::Adopt);
        // Our labels but written by someone else (kubectl apply of a rendered file):
        // not ours to take.
        orphan.metadata.managed_fields = Some(vec![manager("kubectl"), manager("kubectl")]);
        match ownership(&d, &orphan) {
            Ownership::NotOurs(why) => assert!(why.ends_with("(written by kubectl)"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Many writers: three named, the rest counted.
        let many: Vec<String> = (0..100).map(|i| format!("agent-{i:03}")).collect();
        orphan.metadata.managed_fields = Some(many.iter().map(|m| manager(m)).collect());
        match ownership(&d, &orphan) {
            Ownership::NotOurs(why) => assert!(
                why.ends_with("(written by agent-000, agent-001, agent-002 and 97 more)"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // Our manager but another resource's label: not adopted by this one.
        let mut other = ours.clone();
        other.metadata.owner_references = None;
        other.metadata.managed_fields = Some(vec![manager(FIELD_MANAGER)]);
        other
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(CONFIG_LABEL.into(), "other".into());
        assert!(matches!(ownership(&d, &other), Ownership::NotOurs(_)));
        // Controlled by something else entirely.
        let mut helm = ours.clone();
        if let Some(o) = helm.metadata.owner_references.as_mut() {
            o[0].kind = "HelmRelease".into();
            o[0].name = "web".into();
            o[0].uid = "uid-9".into();
        }
        match ownership(&d, &helm) {
            Ownership::NotOurs(why) => {
                assert_eq!(why, "it is controlled by HelmRelease dot-proxy/web")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_maps_are_only_our_own() {
        let d = dpc();
        let ours = config_map(
            &d,
            &content("dot-proxy-config-overrides-9", "shard-9.yaml", "{}\n"),
            Role::Overrides,
        );
        let mut foreign = ours.clone();
        foreign.metadata.owner_references = None;
        let existing = [ours, foreign];
        let s = stale(&d, &existing, &["dot-proxy-config".into()]);
        assert_eq!(s.len(), 1);
        assert!(s[0].owner_references().len() == 1);
        assert!(stale(&d, &existing, &["dot-proxy-config-overrides-9".into()]).is_empty());
    }
}
