//! dot-proxy-operator: renders `DotProxyConfig` resources (and the pods that opt in with
//! annotations) into the ConfigMaps the node-local `dot-proxy` reads.
//!
//! The path of a change: [`resource`] (the CRD types) -> [`cluster`] (a cheap view of pods and
//! nodes, debounced) -> [`render`] (pure functions: resource + pods -> ConfigMap contents,
//! using the proxy's own config types and `validate()`) -> [`controller`] (server-side apply
//! of only what changed, status, Events) -> the proxies.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod resource;

/// API group of the resource and prefix of every label and annotation the operator reads or writes.
pub const GROUP: &str = "dns.dot-proxy.io";
/// Prefix of the pod annotations.
pub const ANNOTATION_PREFIX: &str = "dns.dot-proxy.io/";
/// The one field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "dot-proxy-operator";
/// Annotation on every written ConfigMap: SHA-256 (hex) of its one data value.
pub const HASH_ANNOTATION: &str = "dns.dot-proxy.io/config-hash";
/// Label naming the DotProxyConfig a ConfigMap was rendered from.
pub const CONFIG_LABEL: &str = "dns.dot-proxy.io/config";
/// Label telling the main ConfigMap (`config`) from the override shards (`overrides`).
pub const ROLE_LABEL: &str = "dns.dot-proxy.io/role";
/// Label on a DotProxyConfig naming the release whose operator acts on it (see
/// `controller::scope`).
pub const RELEASE_LABEL: &str = "dns.dot-proxy.io/release";
/// Standard label on everything the operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Where the Helm chart mounts the override shards inside the proxy pod.
pub const OVERRIDES_DIR: &str = "/etc/dot-proxy/overrides";
/// Key of the proxy config in the main ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
