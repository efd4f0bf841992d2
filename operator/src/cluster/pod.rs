//! The little the operator keeps about a pod, and the projection it is read from.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};

use crate::ANNOTATION_PREFIX;

/// A pod as the watch decodes it: metadata plus the three fields rendering needs. Everything
/// else in the pod (containers, volumes, conditions...) is skipped while parsing, so a full
/// pod object never exists in the operator's memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, Resource)]
#[resource(inherit = "Pod")]
pub struct PodLite {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodLiteSpec,
    #[serde(default)]
    pub status: PodLiteStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodLiteSpec {
    pub node_name: Option<String>,
    pub host_network: Option<bool>,
}

pub use dot_proxy_config::pod::{PodIp as PodIpLite, PodStatus as PodLiteStatus};

/// An annotated pod, reduced to what rendering uses. Pods without any `dns.dot-proxy.io/`
/// annotation are never kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.nodeName`; `None` until scheduled.
    pub node_name: Option<String>,
    pub host_network: bool,
    /// `status.podIPs` (or `status.podIP`), parsed; unparsable entries are dropped.
    pub ips: Vec<IpAddr>,
    /// Only the `dns.dot-proxy.io/` annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Identifies a pod across updates: namespace and name.
pub type PodKey = (String, String);

impl PodInfo {
    /// A scheduled, non-host-network pod (uid `uid-NAME`): for tests and examples.
    pub fn scheduled(
        namespace: &str,
        name: &str,
        node: &str,
        ips: &[&str],
        annotations: &[(&str, &str)],
    ) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node_name: Some(node.into()),
            host_network: false,
            ips: ips.iter().filter_map(|i| i.parse().ok()).collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn key(&self) -> PodKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// Reduces a pod; `None` when it has none of our annotations or is finished (a pod that
    /// Succeeded or Failed gives its IP back, and another pod may get it).
    pub fn from_lite(pod: &PodLite) -> Option<PodInfo> {
        let annotations: BTreeMap<String, String> = pod
            .metadata
            .annotations
            .as_ref()?
            .iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if annotations.is_empty() {
            return None;
        }
        if pod.status.finished() {
            return None;
        }
        let ips = pod.status.ips();
        Some(PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node_name: pod.spec.node_name.clone().filter(|n| !n.is_empty()),
            host_network: pod.spec.host_network.unwrap_or(false),
            ips,
            annotations,
        })
    }
}

/// Reads pods from a file: a `kubectl get pods -o json` list (or YAML), or a single pod.
pub fn pods_from_text(text: &str) -> Result<Vec<PodInfo>, String> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        items: Vec<PodLite>,
        #[serde(default)]
        kind: Option<String>,
    }
    let list: List = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    let items = if list.kind.as_deref() == Some("Pod") {
        let pod: PodLite = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        vec![pod]
    } else {
        list.items
    };
    Ok(items.iter().filter_map(PodInfo::from_lite).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lite(json: serde_json::Value) -> PodLite {
        serde_json::from_value(json).expect("pod json")
    }

    #[test]
    fn reduces_annotated_pods_only() {
        let pod = lite(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "uid": "u1",
                "annotations": {"dns.dot-proxy.io/qps": "5", "other.io/x": "y"},
                "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "podIPs": [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}, {"ip": "garbage"}]}
        }));
        let info = PodInfo::from_lite(&pod).expect("annotated");
        assert_eq!(
            info.ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("ip"),
                "fd00::1".parse().expect("ip")
            ]
        );
        assert_eq!(info.annotations.len(), 1);
        assert_eq!(info.node_name.as_deref(), Some("n1"));

        let plain = lite(serde_json::json!({"metadata": {"name": "b", "annotations": {"x": "y"}}}));
        assert!(PodInfo::from_lite(&plain).is_none());
        let done = lite(serde_json::json!({
            "metadata": {"name": "c", "annotations": {"dns.dot-proxy.io/qps": "5"}},
            "status": {"phase": "Succeeded", "podIP": "10.0.0.2"}
        }));
        assert!(PodInfo::from_lite(&done).is_none());
    }

    #[test]
    fn reads_pod_lists() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"metadata":{"name":"a","namespace":"ns","annotations":{"dns.dot-proxy.io/rate-limit-exempt":"true"}},
             "spec":{"nodeName":"n1"},"status":{"podIP":"10.1.2.3"}},
            {"metadata":{"name":"b","namespace":"ns"}}]}"#;
        let pods = pods_from_text(text).expect("list");
        assert_eq!(pods.len(), 1);
        let single =
            "kind: Pod\nmetadata:\n  name: a\n  annotations:\n    dns.dot-proxy.io/qps: \"1\"\n";
        assert_eq!(pods_from_text(single).expect("pod").len(), 1);
        assert!(pods_from_text("{not json").is_err());
    }
}
