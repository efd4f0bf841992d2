//! The `--upstream` flag form: `tls://IP:PORT#tls-name` or `udp://IP:PORT`.

use std::net::SocketAddr;

use super::{Protocol, UpstreamServer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid upstream {0:?}: expected tls://IP[:PORT]#NAME, https://IP[:PORT][/PATH]#NAME, quic://IP[:PORT]#NAME (IPv6 in brackets) or udp://IP[:PORT]"
)]
pub struct UpstreamUrlError(pub String);

pub fn parse_upstream_url(s: &str) -> Result<UpstreamServer, UpstreamUrlError> {
    let bad = || UpstreamUrlError(s.to_string());
    let (scheme, rest) = s.split_once("://").unwrap_or(("tls", s));
    let (addr, name) = match rest.split_once('#') {
        Some((a, n)) => (a, Some(n)),
        None => (rest, None),
    };
    let protocol = match scheme {
        "tls" => Protocol::Tls,
        "https" => Protocol::Https,
        "quic" => Protocol::Quic,
        "udp" | "dns" | "plain" => Protocol::Plain,
        _ => return Err(bad()),
    };
    // https://IP:PORT/path: the path starts at the first '/' after the address (an IPv6
    // address is in brackets, so it has none).
    let (addr, path) = match (protocol, addr.find('/')) {
        (Protocol::Https, Some(i)) => (&addr[..i], Some(&addr[i..])),
        _ => (addr, None),
    };
    let address = parse_server_address(addr, protocol.default_port()).ok_or_else(bad)?;
    if protocol.is_encrypted() {
        let name = name.filter(|n| !n.is_empty()).ok_or_else(bad)?;
        let mut s = UpstreamServer::encrypted(protocol, address, name);
        s.path = path.map(str::to_string);
        Ok(s)
    } else {
        if name.is_some() {
            return Err(bad());
        }
        Ok(UpstreamServer::plain(address))
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (IPv6 with or without brackets) on `default_port`.
pub fn parse_server_address(s: &str, default_port: u16) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    ip.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doh_and_doq_forms() {
        let u = parse_upstream_url("https://1.1.1.1/dns-query#cloudflare-dns.com").expect("valid");
        assert_eq!((u.protocol, u.address.port()), (Protocol::Https, 443));
        assert_eq!(u.path.as_deref(), Some("/dns-query"));
        let u =
            parse_upstream_url("https://[2606:4700::1111]:8443#one.one.one.one").expect("valid");
        assert_eq!((u.address.port(), u.doh_path()), (8443, "/dns-query"));
        let u = parse_upstream_url("quic://94.140.14.14#dns.adguard-dns.com").expect("valid");
        assert_eq!((u.protocol, u.address.port()), (Protocol::Quic, 853));
        assert!(parse_upstream_url("quic://1.1.1.1").is_err(), "no name");
        assert!(parse_upstream_url("https://1.1.1.1/x").is_err(), "no name");
    }

    #[test]
    fn forms() {
        let u = parse_upstream_url("tls://127.0.0.53:853#upstream.test").expect("valid");
        assert_eq!(u.address, "127.0.0.53:853".parse().expect("addr"));
        assert_eq!(u.tls_name.as_deref(), Some("upstream.test"));
        let u = parse_upstream_url("tls://[::1]:8853#x.test").expect("valid");
        assert_eq!(u.address, "[::1]:8853".parse().expect("addr"));
        let u = parse_upstream_url("tls://[2606:4700::1111]#one.one.one.one").expect("valid");
        assert_eq!(u.address.port(), 853);
        let u = parse_upstream_url("1.1.1.1#cloudflare-dns.com").expect("valid");
        assert_eq!(u.address.port(), 853);
        assert_eq!(
            parse_server_address("2606:4700::1111", 853),
            Some("[2606:4700::1111]:853".parse().expect("addr"))
        );
        assert_eq!(parse_server_address("1.1.1.999:853", 853), None);
        let u = parse_upstream_url("udp://10.96.0.10").expect("valid");
        assert_eq!((u.protocol, u.address.port()), (Protocol::Plain, 53));
        for bad in [
            "tls://1.1.1.1:853",
            "tls://host.example:853#x",
            "http://1.1.1.1#x",
            "udp://1.1.1.1#x",
            "tls://[::1:853#x",
        ] {
            assert!(parse_upstream_url(bad).is_err(), "{bad}");
        }
    }
}
