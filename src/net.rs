//! Addresses: trusted networks (CIDRs, with `ipnet`) and which address a
//! request came from. Shared by the proxy (forwarding headers) and the
//! token endpoints (throttling by source).

use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

/// The header both this module and the proxy read and write.
pub const XFF: &str = "x-forwarded-for";

/// A network such as `10.0.0.0/8` or `::1/128`; a bare address is a /32 or
/// /128. Host bits are dropped (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not an IP address or CIDR such as 10.0.0.0/8");
    match t.parse::<IpNet>() {
        Ok(n) => Ok(n.trunc()),
        Err(_) if !t.contains('/') => t.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad()),
        Err(_) => Err(
            match t.split_once('/').map(|(ip, _)| ip.parse::<IpAddr>()) {
                Some(Ok(_)) => format!("`{s}` has an invalid prefix length"),
                _ => bad(),
            },
        ),
    }
}

/// Whether `ip` is in one of `nets`; an IPv4-mapped IPv6 address counts as
/// the IPv4 address it carries.
pub fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// The address a request came from: the TCP peer, unless the peer is a
/// trusted proxy, in which case the nearest address in `X-Forwarded-For`
/// that is not itself a trusted proxy (read right to left, the way the
/// proxies appended it). Anything unparseable in the chain stops the walk
/// at the last address believed: a caller cannot make itself look like
/// someone else by writing garbage.
pub fn client_address(peer: IpAddr, h: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| in_any(trusted, ip);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&HeaderValue> = h.get_all(XFF).iter().collect();
    for v in values.iter().rev() {
        let Ok(v) = v.to_str() else { return client };
        for hop in v.rsplit(',') {
            let Some(ip) = hop_address(hop.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or one with a port as some load
/// balancers write it (`192.0.2.1:5678`, `[2001:db8::1]:443`).
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let n = [parse_cidr("10.0.0.0/8").unwrap()];
        assert!(in_any(&n, "10.1.2.3".parse().unwrap()));
        assert!(!in_any(&n, "11.0.0.1".parse().unwrap()));
        assert!(in_any(&n, "::ffff:10.0.0.1".parse().unwrap()));
        let one = [parse_cidr("::1").unwrap()];
        assert!(in_any(&one, "::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33")
            .unwrap_err()
            .contains("prefix length"));
        assert!(parse_cidr("nope").is_err());
        let all = [parse_cidr("0.0.0.0/0").unwrap()];
        assert!(in_any(&all, "8.8.8.8".parse().unwrap()));
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn the_client_address_is_believed_only_through_trusted_proxies() {
        let trusted = vec![parse_cidr("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for x in v {
                h.append(XFF, x.parse().unwrap());
            }
            h
        };
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("8.8.8.8"), &with(&["1.2.3.4"]), &trusted),
            ip("8.8.8.8")
        );
        // Through a trusted proxy: the nearest untrusted hop, not the leftmost
        // (which the caller wrote).
        let h = with(&["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("1.2.3.4"));
        // Garbage stops the walk at the last believed hop.
        let h = with(&["1.2.3.4, bogus, 10.0.0.9"]);
        assert_eq!(client_address(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.9"));
        // Ports, as some load balancers add them, are not garbage.
        let h = with(&["192.0.2.1:5678, [2001:db8::1]:443"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &h, &trusted),
            ip("2001:db8::1")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }
}
