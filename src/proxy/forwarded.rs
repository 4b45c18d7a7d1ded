//! `X-Forwarded-*` handling. A caller's forwarding headers are believed (and
//! appended to) only when the peer is a configured trusted proxy; otherwise
//! they are replaced, so a caller cannot forge its origin.

use http::header::{HeaderMap, HeaderValue};
use std::net::IpAddr;

use crate::net::XFF;
const XFP: &str = "x-forwarded-proto";
const XFH: &str = "x-forwarded-host";

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
