//! `X-Forwarded-*` handling. A caller's forwarding headers are believed (and
//! appended to) only when the peer is a configured trusted proxy; otherwise
//! they are replaced, so a caller cannot forge its origin.

use http::header::{HeaderMap, HeaderValue};
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare IP is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has an invalid prefix length"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";
const XFH: &str = "x-forwarded-host";

/// The address a request came from: the TCP peer, unless the peer is a
/// trusted proxy, in which case the nearest address in `X-Forwarded-For`
/// that is not itself a trusted proxy (read right to left, the way the
/// proxies appended it). Anything unparseable in the chain stops the walk
/// at the last address believed: a caller cannot make itself look like
/// someone else by writing garbage.
pub fn client_address(peer: IpAddr, h: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
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

/// Sets the forwarding headers for a request from `peer` to an upstream.
pub fn apply(h: &mut HeaderMap, peer: IpAddr, trusted: bool, host: Option<&HeaderValue>) {
    // RFC 7239 `Forwarded` is never produced by valet; a caller's copy would
    // contradict the X-Forwarded-* headers it sets, so it goes.
    h.remove("forwarded");
    let peer_s = peer.to_string();
    if trusted {
        let chain: Vec<&str> = h
            .get_all(XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut v = chain.join(", ");
        if !v.is_empty() {
            v.push_str(", ");
        }
        v.push_str(&peer_s);
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(XFF, v);
        }
        if !h.contains_key(XFP) {
            h.insert(XFP, HeaderValue::from_static("https"));
        }
        if !h.contains_key(XFH) {
            if let Some(host) = host {
                h.insert(XFH, host.clone());
            }
        }
    } else {
        h.insert(
            XFF,
            HeaderValue::from_str(&peer_s).expect("an IP is a valid header value"),
        );
        h.insert(XFP, HeaderValue::from_static("https"));
        match host {
            Some(host) => {
                h.insert(XFH, host.clone());
            }
            None => {
                h.remove(XFH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_believed_only_through_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
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

    #[test]
    fn cidr_matching() {
        let n: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn untrusted_chain_is_replaced_trusted_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "6.6.6.6".parse().unwrap());
        h.insert(XFP, "http".parse().unwrap());
        h.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        let mut t = h.clone();
        apply(&mut h, "1.2.3.4".parse().unwrap(), false, None);
        assert_eq!(h[XFF], "1.2.3.4");
        assert_eq!(h[XFP], "https");
        assert!(!h.contains_key("forwarded"));
        apply(&mut t, "1.2.3.4".parse().unwrap(), true, None);
        assert_eq!(t[XFF], "6.6.6.6, 1.2.3.4");
        assert_eq!(t[XFP], "http");
    }
}
