//! The patterns the CRD's schema gives names and addresses (`regex` in the schemars
//! attributes of the section types), declared once: the proxy's own checks
//! (`normalize_zone`, the group name rules, address parsing) are stricter and say why.

/// A domain name: labels of letters, digits, `-` and `_`, an optional final dot.
pub const DOMAIN: &str = r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$";
/// A zone: a domain, or `.` for every name.
pub const ZONE: &str = r"^(\.|[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?)$";
/// A name a rule serves: a domain, or `*.` and a domain for every name below it.
pub const WILDCARD_NAME: &str = r"^(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$";
/// An upstream group's name: lower-case letters, digits, `-` and `_`, alphanumeric at both
/// ends.
pub const GROUP_NAME: &str = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$";
/// `IP` or `IP:PORT`, IPv6 in brackets when a port follows.
pub const SOCKET_ADDRESS: &str = r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+)(:[0-9]{1,5})?$";
/// An IPv4 address (the proxy parses it; this only keeps obvious mistakes out).
pub const IPV4: &str = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$";
/// An IPv6 address (hex digits, colons, and dots for an embedded IPv4 part).
pub const IPV6: &str = r"^[0-9A-Fa-f:.]+$";
