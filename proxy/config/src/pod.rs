//! What the proxy (its pod watch, for search-path completion) and the operator (pod
//! annotations) both read of a pod's status: its phase and addresses. One reading, so the
//! two agree on which pods count and which addresses they have.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Pods that can still hold an address: the field selector both watches use.
pub const LIVE_PODS_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// The part of a pod's `status` both read; everything else is skipped when it is parsed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIp>>,
}

/// One `status.podIPs` entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodIp {
    #[serde(default)]
    pub ip: String,
}

impl PodStatus {
    /// The pod ran to its end (Succeeded or Failed): its address may be another pod's now.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// `podIPs` (else `podIP`), parsed, IPv4-mapped IPv6 written as IPv4, sorted, without
    /// duplicates; entries that do not parse are left out.
    pub fn ips(&self) -> Vec<IpAddr> {
        let parse = |s: &str| s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        let mut ips: Vec<IpAddr> = match &self.pod_ips {
            Some(list) if !list.is_empty() => list.iter().filter_map(|p| parse(&p.ip)).collect(),
            _ => self.pod_ip.iter().filter_map(|ip| parse(ip)).collect(),
        };
        ips.sort();
        ips.dedup();
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(yaml: &str) -> PodStatus {
        serde_saphyr::from_str(yaml).expect("parses")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn addresses_come_from_pod_ips_else_pod_ip() {
        let s = status(
            "{phase: Running, podIP: 10.0.0.9, podIPs: [{ip: fd00::1}, {ip: ' 10.0.0.1 '}, {ip: x}, {ip: 10.0.0.1}]}",
        );
        assert_eq!(s.ips(), ips(&["10.0.0.1", "fd00::1"]));
        assert!(!s.finished());
        let s = status("{phase: Failed, podIP: '::ffff:10.0.0.2'}");
        assert_eq!(s.ips(), ips(&["10.0.0.2"]));
        assert!(s.finished());
    }
}
