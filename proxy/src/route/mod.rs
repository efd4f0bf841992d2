//! Zone routing: the longest configured zone that is a suffix of the query name (on label
//! boundaries) picks the upstream group; `.` is the default.

use std::collections::HashMap;

use crate::config::normalize_zone;

#[derive(Debug, Clone)]
pub struct Router {
    /// Lower-cased wire-format zone name -> group index.
    zones: HashMap<Box<[u8]>, usize>,
    default: usize,
}

/// Converts a normalized zone (`cluster.local` or `.`) to lower-case wire format.
pub fn zone_to_wire(zone: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if zone != "." {
        for label in zone.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    out
}

impl Router {
    /// `routes` are (zone, group index); validated config guarantees a `.` route.
    pub fn new(routes: &[(String, usize)]) -> Router {
        let mut zones = HashMap::new();
        let mut default = 0;
        for (zone, g) in routes {
            let Ok(z) = normalize_zone(zone) else {
                continue;
            };
            if z == "." {
                default = *g;
            } else {
                zones.insert(zone_to_wire(&z).into_boxed_slice(), *g);
            }
        }
        Router { zones, default }
    }

    /// The group answering `.` (everything no other zone claims).
    pub fn default_group(&self) -> usize {
        self.default
    }

    /// The group for a lower-cased wire-format name.
    pub fn route(&self, name: &[u8]) -> usize {
        if self.zones.is_empty() {
            return self.default;
        }
        let mut at = 0;
        while let Some(&len) = name.get(at) {
            if len == 0 {
                break;
            }
            if let Some(&g) = name.get(at..).and_then(|suffix| self.zones.get(suffix)) {
                return g;
            }
            at += 1 + len as usize;
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_suffix_on_label_boundaries() {
        let r = Router::new(&[
            (".".into(), 0),
            ("cluster.local".into(), 1),
            ("svc.cluster.local.".into(), 2),
            ("Example.COM".into(), 3),
            ("10.in-addr.arpa".into(), 1),
        ]);
        let w = |s: &str| zone_to_wire(s);
        assert_eq!(r.route(&w("a.b.svc.cluster.local")), 2);
        assert_eq!(r.route(&w("pod.cluster.local")), 1);
        assert_eq!(r.route(&w("cluster.local")), 1);
        assert_eq!(r.route(&w("xcluster.local")), 0);
        assert_eq!(r.route(&w("example.com")), 3);
        assert_eq!(r.route(&w("www.example.com")), 3);
        assert_eq!(r.route(&w("ample.com")), 0);
        assert_eq!(r.route(&w("4.3.2.10.in-addr.arpa")), 1);
        assert_eq!(r.route(&w(".")), 0);
        assert_eq!(r.route(&[]), 0);
        assert_eq!(r.route(&[5, b'a']), 0);
    }
}
