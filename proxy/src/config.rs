//! The configuration schema lives in its own crate, `dot-proxy-config` (proxy/config/):
//! pure data, defaults, validation and YAML, with no runtime dependency, so the operator
//! renders exactly this schema without building the proxy. Re-exported here so the proxy's
//! modules keep reading `crate::config::...`.

pub use dot_proxy_config::*;
