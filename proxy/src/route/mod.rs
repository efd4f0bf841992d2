//! Routing: which upstream group answers a query. A client with a group of its own
//! (`client_groups`, per-pod overrides) gets that group for every name; otherwise the
//! longest configured zone that is a suffix of the query name (on label boundaries) picks
//! the group, and `.` is the default.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::{normalize_zone, Config};
use crate::guard::cidr::PrefixTable;

/// Both routing steps, built from the config's `zones` and `client_groups`.
#[derive(Debug, Clone)]
pub struct Routes {
    zones: Router,
    /// Clients sent to a group of their own (index into the groups), checked first.
    clients: PrefixTable<usize>,
}

impl Routes {
    /// `groups` are the built groups' names, in the pipeline's order; entries naming no
    /// group are skipped (validation has refused them already).
    pub fn from_config(cfg: &Config, groups: &[&str]) -> Routes {
        let index = |name: &str| groups.iter().position(|g| *g == name);
        let zones: Vec<(String, usize)> = cfg
            .zones
            .iter()
            .filter_map(|z| index(&z.group).map(|i| (z.zone.clone(), i)))
            .collect();
        let mut clients = PrefixTable::default();
        for c in &cfg.client_groups {
            if let Some(i) = index(&c.group) {
                clients.insert(c.cidr, i);
            }
        }
        Routes {
            zones: Router::new(&zones),
            clients,
        }
    }

    /// 0 for zone routing, or 1 + the index of the client's own group. It is part of the
    /// cache key, so clients sent to another group never share its answers.
    pub fn tag(&self, client: IpAddr) -> u8 {
        match self.clients.lookup(client) {
            Some(&g) => u8::try_from(g + 1).unwrap_or(u8::MAX),
            None => 0,
        }
    }

    /// The group for a query with route tag `tag` and lower-cased wire-format `name`.
    pub fn group(&self, tag: u8, name: &[u8]) -> usize {
        match tag {
            0 => self.zones.route(name),
            tag => usize::from(tag) - 1,
        }
    }

    /// The group answering `.`.
    pub fn default_group(&self) -> usize {
        self.zones.default_group()
    }
}

/// A set of zones: whether a name is at or below one of them (`.`: every name).
#[derive(Debug, Clone)]
pub struct ZoneSet(Router);

impl ZoneSet {
    /// `None` when `zones` is empty (or has no valid zone).
    pub fn new(zones: &[String]) -> Option<ZoneSet> {
        let routes: Vec<(String, usize)> = zones.iter().map(|z| (z.clone(), 1)).collect();
        let r = Router::new(&routes);
        (r.default == 1 || !r.zones.is_empty()).then_some(ZoneSet(r))
    }

    /// For a lower-cased wire-format name.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.0.route(name) == 1
    }
}

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

    #[test]
    fn zone_sets() {
        let w = |s: &str| zone_to_wire(s);
        assert!(ZoneSet::new(&[]).is_none());
        let z = ZoneSet::new(&["cluster.local".into(), "Example.org.".into()]).expect("set");
        assert!(z.contains(&w("a.b.cluster.local")));
        assert!(z.contains(&w("example.org")));
        assert!(!z.contains(&w("example.com")));
        assert!(!z.contains(&w(".")));
        let all = ZoneSet::new(&[".".into()]).expect("set");
        assert!(all.contains(&w("example.com")) && all.contains(&w(".")));
    }

    #[test]
    fn a_client_group_wins_over_zones() {
        let cfg: Config = serde_saphyr::from_str(
            "zones: [{zone: ., group: a}, {zone: cluster.local, group: b}]\nclient_groups: [{cidr: 10.0.0.7/32, group: b}, {cidr: 10.1.0.0/16, group: nowhere}]\n",
        )
        .expect("config");
        let r = Routes::from_config(&cfg, &["a", "b"]);
        let name = zone_to_wire("example.com");
        let pod = "10.0.0.7".parse().expect("ip");
        let other = "10.0.0.8".parse().expect("ip");
        assert_eq!(r.tag(other), 0);
        assert_eq!(r.group(r.tag(other), &name), 0);
        assert_eq!(r.tag(pod), 2);
        assert_eq!(r.group(r.tag(pod), &name), 1);
        assert_eq!(
            r.tag("10.1.2.3".parse().expect("ip")),
            0,
            "unknown group skipped"
        );
        assert_eq!(r.default_group(), 0);
    }
}
