//! The JOSE header of a compact JWS, read once for every token valet
//! verifies (its own, trusted issuers', JWT-bearer assertions).

use jsonwebtoken::Header;

/// Why a JOSE header is refused before any key is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRefusal {
    /// Not base64url JSON, or not a header.
    Malformed,
    /// An algorithm valet never accepts (`none`, anything unknown).
    Algorithm,
    /// A `crit` member: RFC 7515 §4.1.11 requires rejecting a JWS whose
    /// listed extensions are not all understood, and valet understands
    /// none, so any `crit` (even empty, null or naming registered
    /// parameters, all of which the RFC forbids producers to send) is refused.
    Critical,
}

/// The header of `token`, or why it is refused.
pub fn header(token: &str) -> Result<Header, HeaderRefusal> {
    use base64::Engine;
    // Exactly three segments, as jsonwebtoken reads them; the header is the
    // first.
    let mut parts = token.split('.');
    let (Some(raw), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeaderRefusal::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| HeaderRefusal::Malformed)?;
    // Member presence is read from the JSON itself: jsonwebtoken maps
    // `"crit": null` to no `crit` at all.
    let members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| HeaderRefusal::Malformed)?;
    if members.contains_key("crit") {
        return Err(HeaderRefusal::Critical);
    }
    match jsonwebtoken::decode_header(token) {
        Ok(h) => Ok(h),
        Err(_) if members.get("alg").is_some_and(|a| a.is_string()) => {
            Err(HeaderRefusal::Algorithm)
        }
        Err(_) => Err(HeaderRefusal::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn token(header: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", e(header), e("{}"))
    }

    #[test]
    fn crit_is_refused_in_every_shape() {
        for h in [
            r#"{"alg":"EdDSA","crit":["http://example.invalid/x"],"http://example.invalid/x":true}"#,
            r#"{"alg":"EdDSA","crit":["exp"]}"#,
            r#"{"alg":"EdDSA","crit":[]}"#,
            r#"{"alg":"EdDSA","crit":null}"#,
            r#"{"alg":"EdDSA","crit":"b64"}"#,
            r#"{"alg":"none","crit":["b64"]}"#,
        ] {
            assert_eq!(
                header(&token(h)).unwrap_err(),
                HeaderRefusal::Critical,
                "{h}"
            );
        }
    }

    #[test]
    fn other_headers() {
        assert!(header(&token(r#"{"alg":"EdDSA","kid":"k","typ":"at+jwt"}"#)).is_ok());
        assert_eq!(
            header(&token(r#"{"alg":"none"}"#)).unwrap_err(),
            HeaderRefusal::Algorithm
        );
        assert_eq!(
            header(&token(r#"{"kid":"k"}"#)).unwrap_err(),
            HeaderRefusal::Malformed
        );
        assert_eq!(header("!!.e30.").unwrap_err(), HeaderRefusal::Malformed);
        assert_eq!(header("").unwrap_err(), HeaderRefusal::Malformed);
        let four = format!("{}.x", token(r#"{"alg":"EdDSA"}"#));
        assert_eq!(header(&four).unwrap_err(), HeaderRefusal::Malformed);
    }
}
