//! CIDR prefixes and a longest-prefix table that stays cheap with thousands of /32 and /128
//! entries: one hash lookup per distinct prefix length present.

use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address as a 128-bit value (IPv4 mapped into the low 32 bits).
    pub net: u128,
    pub len: u8,
    pub v6: bool,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, l)) => (ip, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr::new(ip, len))
    }

    /// The prefix of `len` bits of `ip`. An IPv4-mapped IPv6 address is the IPv4 one, its
    /// length counted from bit 96 (`::ffff:10.0.0.1/128` is `10.0.0.1/32`).
    pub fn new(ip: IpAddr, len: u8) -> Cidr {
        let (bits, v6) = ip_bits(ip);
        let len = match ip {
            IpAddr::V6(_) if !v6 => len.saturating_sub(96),
            _ => len,
        };
        Cidr {
            net: mask(bits, len, v6),
            len,
            v6,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, v6) = ip_bits(ip);
        v6 == self.v6 && mask(bits, self.len, v6) == self.net
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        Cidr::parse(s)
    }
}

/// Ordered as addresses are: IPv4 before IPv6, then by network, then shorter first.
impl Ord for Cidr {
    fn cmp(&self, other: &Cidr) -> std::cmp::Ordering {
        (self.v6, self.net, self.len).cmp(&(other.v6, other.net, other.len))
    }
}
impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Cidr) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

// Written as `network/length` (host bits cleared: `10.1.2.3/8` reads back as `10.0.0.0/8`).
string_type!(Cidr, "invalid CIDR prefix: ", "Cidr", {
    "type": "string",
    "description": "An IP address or prefix, e.g. \"10.0.0.5/32\" or \"fd00::/64\"."
});

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.net), self.len)
        } else {
            write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(self.net as u32),
                self.len
            )
        }
    }
}

pub fn ip_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), false),
            None => (u128::from(a), true),
        },
    }
}

pub fn mask(bits: u128, len: u8, v6: bool) -> u128 {
    let width = if v6 { 128 } else { 32 };
    let len = u32::from(len.min(width));
    if len == 0 {
        return 0;
    }
    let shift = width as u32 - len;
    let full = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    (bits & full) >> shift << shift
}

/// Longest-prefix-match table.
#[derive(Debug, Clone)]
pub struct PrefixTable<V> {
    /// (v6, prefix length) pairs present, longest first.
    lens: Vec<(bool, u8)>,
    map: HashMap<(bool, u8, u128), V>,
}

impl<V> Default for PrefixTable<V> {
    fn default() -> Self {
        PrefixTable {
            lens: Vec::new(),
            map: HashMap::new(),
        }
    }
}

impl<V> PrefixTable<V> {
    pub fn insert(&mut self, c: Cidr, v: V) {
        if !self.lens.contains(&(c.v6, c.len)) {
            self.lens.push((c.v6, c.len));
            self.lens.sort_by_key(|l| std::cmp::Reverse(l.1));
        }
        self.map.insert((c.v6, c.len, c.net), v);
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        if self.map.is_empty() {
            return None;
        }
        let (bits, v6) = ip_bits(ip);
        self.lens
            .iter()
            .filter(|(f, _)| *f == v6)
            .find_map(|&(_, len)| self.map.get(&(v6, len, mask(bits, len, v6))))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let c = Cidr::parse("10.1.2.3/8").expect("valid");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("fd00::/64")
            .expect("v6")
            .contains("fd00::1".parse().expect("ip")));
        assert_eq!(Cidr::parse("1.2.3.4").expect("host").len, 32);
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.1/128")
                .expect("mapped")
                .to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(
            Cidr::parse("10.1.2.3/8").expect("host bits").to_string(),
            "10.0.0.0/8"
        );
        for bad in ["", "1.2.3.4/33", "fd00::/129", "x/8", "1.2.3/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::default();
        t.insert(Cidr::parse("10.0.0.0/8").expect("c"), 1);
        t.insert(Cidr::parse("10.1.0.0/16").expect("c"), 2);
        t.insert(Cidr::parse("10.1.2.3/32").expect("c"), 3);
        t.insert(Cidr::parse("::/0").expect("c"), 4);
        assert_eq!(t.lookup("10.1.2.3".parse().expect("ip")), Some(&3));
        assert_eq!(t.lookup("10.1.9.9".parse().expect("ip")), Some(&2));
        assert_eq!(t.lookup("10.9.9.9".parse().expect("ip")), Some(&1));
        assert_eq!(t.lookup("11.0.0.1".parse().expect("ip")), None);
        assert_eq!(t.lookup("2001:db8::1".parse().expect("ip")), Some(&4));
        assert_eq!(t.lookup("::ffff:10.1.2.3".parse().expect("ip")), Some(&3));
        for i in 0..5000u32 {
            t.insert(
                Cidr::new(std::net::IpAddr::V4((0x0a02_0000 + i).into()), 32),
                5,
            );
        }
        assert_eq!(t.lookup("10.2.0.7".parse().expect("ip")), Some(&5));
    }
}
