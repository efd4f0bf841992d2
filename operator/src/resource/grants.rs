//! Who may use what: the namespaces granted the privileged pod annotations
//! (`spec.annotationGrants`) and an upstream group (`grantedTo`). Kubernetes only.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

impl NamespaceGrant {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.namespace_selector.is_none()
    }
}

/// `spec.annotationGrants`: one namespace grant per privileged annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AnnotationGrantsSpec {
    /// `dns.dot-proxy.io/rate-limit-exempt: "true"` (no limit at all).
    pub rate_limit_exempt: NamespaceGrant,
    /// `dns.dot-proxy.io/qps` above `rateLimit.qps`, or `dns.dot-proxy.io/burst` above
    /// `rateLimit.burst`. A rate at or below the default needs no grant: it only limits the
    /// pod itself.
    pub rate_above_default: NamespaceGrant,
}

/// The namespaces granted something: those named in `namespaces`, and those whose labels
/// match `namespaceSelector` (a standard label selector; `{}` selects every namespace).
/// Empty (the default): no namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceGrant {
    /// Namespace names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Namespaces whose labels match (`matchLabels`, `matchExpressions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

/// A label selector on namespaces, as Kubernetes writes one (`matchLabels` and
/// `matchExpressions`, all of which must match; `{}` matches every namespace), with bounds
/// on every list and string so the API server's CEL cost estimate stays bounded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NamespaceSelector {
    /// Labels the namespace must carry, with these values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: SelectorOperator,
    /// For `In` and `NotIn` (at least one); empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}
