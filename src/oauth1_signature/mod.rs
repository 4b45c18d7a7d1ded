//! RFC 5849 §3: signature base strings, parameter normalization, and the
//! HMAC-SHA1, HMAC-SHA256 and PLAINTEXT signature methods, plus the
//! `Authorization: OAuth ...` header. Checked against published vectors
//! (tests/data/oauth1-vectors.json).

pub mod rsa_sha1;

/// An access token and its secret, in memory (RFC 5849 §2.3 token credentials).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: String,
    pub secret: crate::credentials::Secret,
}

use std::fmt::Write;
use std::sync::Arc;

/// A consumer's signing identity at one provider (RFC 5849 §3.1): its key,
/// its shared secret or RSA private key, and the realm it signs for.
#[derive(Debug)]
pub struct Consumer {
    pub key: String,
    /// Empty for RSA-SHA1, which signs with `rsa_key`.
    pub secret: crate::credentials::Secret,
    pub method: SignatureMethod,
    pub rsa_key: Option<Arc<rsa_sha1::RsaSha1Key>>,
    pub realm: Option<String>,
}

impl Consumer {
    /// The `Authorization` header value for `method url`, signed with
    /// `token` (token, secret) if any. `extra` are further protocol
    /// parameters (`oauth_callback`, `oauth_verifier`); `params` are the
    /// request's own, decoded (query, then an urlencoded form body).
    pub fn authorization(
        &self,
        token: Option<(&str, &str)>,
        extra: &[(&str, &str)],
        method: &str,
        url: &str,
        mut params: Vec<(String, String)>,
    ) -> Result<String, SignError> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let mut oauth: Vec<(String, String)> = Vec::with_capacity(8 + extra.len());
        oauth.push(("oauth_consumer_key".into(), self.key.clone()));
        // 128 random bits: unpredictable, and unique per request in practice.
        oauth.push(("oauth_nonce".into(), crate::credentials::random_id()));
        oauth.push(("oauth_signature_method".into(), self.method.as_str().into()));
        oauth.push(("oauth_timestamp".into(), timestamp));
        if let Some((t, _)) = token {
            oauth.push(("oauth_token".into(), t.into()));
        }
        oauth.push(("oauth_version".into(), "1.0".into()));
        for (k, v) in extra {
            oauth.push(((*k).into(), (*v).into()));
        }
        params.extend(oauth.iter().cloned());
        let base = base_string(method, url, &params)?;
        let sig = match &self.rsa_key {
            Some(k) => sign_rsa_sha1(k, &base),
            None => sign(
                self.method,
                &base,
                // Checked to be UTF-8 when the config is compiled.
                std::str::from_utf8(self.secret.expose()).unwrap_or(""),
                token.map_or("", |(_, s)| s),
            ),
        };
        oauth.push(("oauth_signature".into(), sig));
        oauth.sort();
        Ok(authorization_header(self.realm.as_deref(), &oauth))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMethod {
    HmacSha1,
    HmacSha256,
    Plaintext,
    /// Signed with a private key, not shared secrets: see `oauth1::rsa_sha1`.
    RsaSha1,
}

impl SignatureMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HMAC-SHA1" => Some(SignatureMethod::HmacSha1),
            "HMAC-SHA256" => Some(SignatureMethod::HmacSha256),
            "PLAINTEXT" => Some(SignatureMethod::Plaintext),
            "RSA-SHA1" => Some(SignatureMethod::RsaSha1),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha1 => "HMAC-SHA1",
            SignatureMethod::HmacSha256 => "HMAC-SHA256",
            SignatureMethod::Plaintext => "PLAINTEXT",
            SignatureMethod::RsaSha1 => "RSA-SHA1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the URL is not absolute (scheme and host are required)")]
    NotAbsolute,
    #[error("the URL scheme must be http or https")]
    Scheme,
}

/// RFC 5849 §3.6: every byte except the unreserved characters
/// (`ALPHA DIGIT - . _ ~`) is `%XX`, upper-case hex.
const OAUTH_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// RFC 5849 §3.6 percent-encoding.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    encode_into(&mut out, s);
    out
}

/// [`encode`], appending to `out`.
pub fn encode_into(out: &mut String, s: &str) {
    out.extend(percent_encoding::utf8_percent_encode(s, OAUTH_ENCODE));
}

/// RFC 5849 §3.4.1.2: scheme and host lower-cased, the default port dropped,
/// no query or fragment.
pub fn base_string_uri(url: &str) -> Result<String, SignError> {
    let uri: http::Uri = url.parse().map_err(|_| SignError::NotAbsolute)?;
    let scheme = uri
        .scheme_str()
        .ok_or(SignError::NotAbsolute)?
        .to_ascii_lowercase();
    let authority = uri.authority().ok_or(SignError::NotAbsolute)?;
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(SignError::Scheme),
    };
    // Found by fuzzing: `http::Uri` takes authorities such as `:1` (no
    // host) or `,,[,::1]:8`, whose base string URI is no URL at all.
    crate::request_target::parse_host(authority.as_str().as_bytes())
        .map_err(|_| SignError::NotAbsolute)?;
    let host = authority.host().to_ascii_lowercase();
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    Ok(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    })
}

/// The decoded query parameters of `url` (RFC 5849 §3.4.1.3.1: the query is
/// parsed as application/x-www-form-urlencoded).
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// RFC 5849 §3.4.1.3.2: encode names and values, sort by name then value
/// (duplicates kept), join with `=` and `&`.
pub fn normalize(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort_unstable();
    let len = encoded.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = String::with_capacity(len);
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// RFC 5849 §3.4.1: `METHOD&uri&params`. `params` are all that enter the
/// base string: query, form body, and the oauth parameters (never
/// `oauth_signature` or `realm`).
pub fn base_string(
    method: &str,
    url: &str,
    params: &[(String, String)],
) -> Result<String, SignError> {
    let uri = base_string_uri(url)?;
    let params = normalize(params);
    let mut out = String::with_capacity(method.len() + uri.len() * 2 + params.len() * 2);
    encode_into(&mut out, &method.to_ascii_uppercase());
    out.push('&');
    encode_into(&mut out, &uri);
    out.push('&');
    encode_into(&mut out, &params);
    Ok(out)
}

/// RFC 5849 §3.4.2 and §3.4.4: the signature of `base` with the shared
/// secrets (base64, or for PLAINTEXT the key itself). RSA-SHA1 (§3.4.3)
/// signs with a private key instead: [`sign_rsa_sha1`].
pub fn sign(
    method: SignatureMethod,
    base: &str,
    consumer_secret: &str,
    token_secret: &str,
) -> String {
    use base64::Engine;
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    let alg = match method {
        SignatureMethod::Plaintext => return key,
        SignatureMethod::HmacSha1 => aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        SignatureMethod::HmacSha256 => aws_lc_rs::hmac::HMAC_SHA256,
        SignatureMethod::RsaSha1 => {
            unreachable!("RSA-SHA1 signs with a private key (sign_rsa_sha1)")
        }
    };
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(alg, key.as_bytes()),
        base.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// RFC 5849 §3.4.3: the RSA-SHA1 signature of `base`, base64.
pub fn sign_rsa_sha1(key: &rsa_sha1::RsaSha1Key, base: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key.sign(base.as_bytes()))
}

/// RFC 5849 §3.5.1: `OAuth realm="...", name="value", ...`. Names and
/// values are percent-encoded (§3.6); the realm is an RFC 2617 quoted-string.
pub fn authorization_header(realm: Option<&str>, oauth: &[(String, String)]) -> String {
    let mut out = String::from("OAuth ");
    let mut first = true;
    if let Some(r) = realm {
        out.push_str("realm=\"");
        for c in r.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        first = false;
    }
    for (k, v) in oauth {
        if !first {
            out.push_str(", ");
        }
        first = false;
        let _ = write!(out, "{}=\"{}\"", encode(k), encode(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_host_has_no_base_string_uri() {
        // Found by fuzzing (fuzz/corpus/oauth1_params/crash-*).
        assert!(base_string_uri("https://:1/x").is_err());
        assert!(base_string_uri("https://:?;:1]:8443%zz").is_err());
        assert!(base_string_uri("https://,,[,::1]:8/p").is_err());
        assert!(base_string_uri("https://u@h/p").is_err());
    }

    #[test]
    fn base_string_uris_are_normalized() {
        assert_eq!(
            base_string_uri("HTTP://EXAMPLE.com:80/r%20v/X?id=123").unwrap(),
            "http://example.com/r%20v/X"
        );
        assert_eq!(
            base_string_uri("https://www.example.net:8080/?q=1").unwrap(),
            "https://www.example.net:8080/"
        );
        assert_eq!(
            base_string_uri("https://example.net:443").unwrap(),
            "https://example.net/"
        );
        assert_eq!(base_string_uri("/relative"), Err(SignError::NotAbsolute));
        assert_eq!(base_string_uri("ftp://x/"), Err(SignError::Scheme));
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("Ladies + Gentlemen"), "Ladies%20%2B%20Gentlemen");
        assert_eq!(encode("An encoded string!"), "An%20encoded%20string%21");
        assert_eq!(encode("Dogs, Cats & Mice"), "Dogs%2C%20Cats%20%26%20Mice");
        assert_eq!(encode("☃"), "%E2%98%83");
        assert_eq!(encode("-._~"), "-._~");
    }

    #[test]
    fn the_authorization_header_encodes_values() {
        let h = authorization_header(
            Some("Photos \"2\""),
            &[("oauth_signature".into(), "a+b/c=".into())],
        );
        assert_eq!(
            h,
            "OAuth realm=\"Photos \\\"2\\\"\", oauth_signature=\"a%2Bb%2Fc%3D\""
        );
    }
}
