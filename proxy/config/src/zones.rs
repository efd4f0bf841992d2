//! The `zones` section (which group answers a zone), `client_groups` (which group answers
//! a client) and the zone-name rules every section uses.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use crate::patterns;
#[cfg(feature = "schema")]
use schemars::JsonSchema;

use crate::{limits, Cidr, Errors, FieldPath, Message, UpstreamGroup};

/// Which group answers a zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ZoneRoute {
    /// A domain (`cluster.local`, `10.in-addr.arpa`) or `.` for everything else.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 254), regex(pattern = patterns::ZONE)))]
    pub zone: String,
    /// Name of the upstream group that answers this zone.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 63)))]
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientGroup {
    /// Client address or prefix, e.g. `10.244.1.7/32`.
    pub cidr: Cidr,
    /// Upstream group that answers every query from these clients.
    pub group: String,
}

/// `zones`: names valid and routed once, each to a group that exists, plain DNS for `.`
/// only with `allow_plain_default`, and a route for `.`.
pub(crate) fn check_routes(
    zones: &[ZoneRoute],
    groups: &[UpstreamGroup],
    allow_plain_default: bool,
    e: &mut Errors,
) {
    if zones.len() as u64 > limits::ZONES.max {
        e.here(format!("at most {} zone routes", limits::ZONES.max));
    }
    let mut has_root = false;
    for (zi, z) in zones.iter().enumerate() {
        let mut e = e.index(zi);
        let norm = match normalize_zone(&z.zone) {
            Ok(n) => n,
            Err(m) => {
                e.field("zone", m);
                continue;
            }
        };
        if zones[..zi]
            .iter()
            .any(|o| normalize_zone(&o.zone).ok().as_deref() == Some(&norm))
        {
            e.field("zone", format!("zone {:?} is routed twice", z.zone));
        }
        match groups.iter().find(|g| g.name == z.group) {
            None => e.field("group", format!("no upstream group named {:?}", z.group)),
            Some(g) if norm == "." => {
                has_root = true;
                if g.is_plain() && !allow_plain_default {
                    e.field(
                        "group",
                        Message::from(format!(
                            "group {:?} has plain-DNS servers and serves \".\"; set ",
                            g.name
                        ))
                        .field(FieldPath::from("allow_plain_default"))
                        .text(": true to allow unencrypted default forwarding"),
                    );
                }
            }
            Some(_) => {}
        }
    }
    if !has_root {
        e.here("a route for \".\" (the default) is required");
    }
}

/// [`normalize_zone`], refusing `.` (`what` says why).
pub(crate) fn normalize_name(name: &str, what: &str) -> Result<String, String> {
    match normalize_zone(name)? {
        n if n == "." => Err(format!("must not be \".\"{what}")),
        n => Ok(n),
    }
}

/// Lower-cases a zone name and strips the trailing dot; `.` stays `.`.
pub fn normalize_zone(zone: &str) -> Result<String, String> {
    let z = zone.trim();
    if z == "." {
        return Ok(".".into());
    }
    let z = z.strip_suffix('.').unwrap_or(z).to_ascii_lowercase();
    if z.is_empty() {
        return Err("must not be empty (use \".\" for the default route)".into());
    }
    if z.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in z.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{zone:?} has an empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{zone:?} has a character not allowed in a domain name"
            ));
        }
    }
    Ok(z)
}
