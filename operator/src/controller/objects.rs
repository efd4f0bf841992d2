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

/// ConfigMaps written earlier for this resource that the current render no longer produces
/// (a renamed target, fewer shards). Only those this resource controls are returned.
pub fn stale<'a>(
    dpc: &DotProxyConfig,
    existing: &'a [ConfigMap],
    desired: &[String],
) -> Vec<&'a ConfigMap> {
    let uid = dpc.uid();
    existing
        .iter()
        .filter(|cm| !desired.contains(&cm.name_any()))
        .filter(|cm| {
            uid.is_some()
                && cm
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
        })
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

    #[test]
    fn objects_carry_labels_hash_and_owner() {
        let d = dpc();
        let content = ConfigMapContent::new(
            "dot-proxy-config".into(),
            "config.yaml".into(),
            "listen: []\n".into(),
        );
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
    fn stale_maps_are_only_our_own() {
        let d = dpc();
        let content = ConfigMapContent::new(
            "dot-proxy-config-overrides-9".into(),
            "shard-9.yaml".into(),
            "{}\n".into(),
        );
        let ours = config_map(&d, &content, Role::Overrides);
        let mut foreign = ours.clone();
        foreign.metadata.owner_references = None;
        let existing = [ours, foreign];
        let s = stale(&d, &existing, &["dot-proxy-config".into()]);
        assert_eq!(s.len(), 1);
        assert!(s[0].owner_references().len() == 1);
        assert!(stale(&d, &existing, &["dot-proxy-config-overrides-9".into()]).is_empty());
    }
}
