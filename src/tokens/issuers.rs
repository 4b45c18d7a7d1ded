//! Trusted external issuers (`tokens.issuers`): the company's identity
//! provider (Keycloak, Okta, Entra ID, Auth0, Hydra...), whose access tokens
//! valet validates beside its own. Each issuer says where its keys come
//! from and what its tokens look like: accepted `typ` headers, required
//! claims, where the client id and the scopes are, and its clock skew.
//!
//! Whatever the shape, an issuer's ID tokens and refresh tokens are never
//! access tokens: a token with a `nonce`, an `at_hash` or a `c_hash` (OpenID
//! Connect ID tokens), or a `typ` claim other than `Bearer` (Keycloak marks
//! `ID`, `Refresh`, `Logout`) is refused, whatever the issuer accepts as a
//! header `typ`.

use super::jwks::RemoteSource;
use super::keys::LoadedKey;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// One trusted issuer, compiled.
#[derive(Debug)]
pub struct TrustedIssuer {
    /// What routes call it in `auth.issuers` (defaults to the issuer URL).
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub keys: KeySource,
    /// Accepted `aud` values (defaults to `tokens.audiences`).
    pub audiences: Vec<String>,
    /// Accepted header `typ` values, lower-case, without `application/`.
    pub token_types: Vec<String>,
    /// Claims that must be present, beyond `iss`, `aud` and `exp`.
    pub required_claims: Vec<String>,
    /// Where the client id is: the first of these claims present.
    pub client_id_claims: Vec<String>,
    /// Where the scopes are: every one of these claims present (a string of
    /// space-separated scopes, or a list of strings).
    pub scope_claims: Vec<String>,
    pub clock_skew: Duration,
}

#[derive(Debug)]
pub enum KeySource {
    Files(Vec<Arc<LoadedKey>>),
    Remote(RemoteSource),
}

/// Why a token that verified is still not an access token.
pub fn not_an_access_token(claims: &Map<String, Value>) -> bool {
    ["nonce", "at_hash", "c_hash"]
        .iter()
        .any(|c| claims.contains_key(*c))
        || claims
            .get("typ")
            .is_some_and(|t| !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")))
}

/// A header `typ` as compared: lower-case, without `application/`.
pub fn normalize_type(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

/// The value at `path`: the claim of that exact name, else a dotted path
/// into nested objects (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// A claim as scopes: a space-separated string or a list of strings. A
/// list item with spaces is split too, as the upstream will read the
/// space-joined header.
pub fn words(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => s.split_ascii_whitespace().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_ascii_whitespace)
            .collect(),
        _ => Vec::new(),
    }
}

/// A claim as a header value's text: strings as they are, numbers and
/// booleans printed, lists of those joined with `,` (a list with an item
/// holding a `,` has none: it would read as two); objects have none.
pub fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::Array(_) | Value::Object(_) | Value::Null => None,
                x => header_text(x).filter(|t| !t.contains(',')),
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Value::Object(_) | Value::Null => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn id_and_refresh_tokens_are_told_apart() {
        assert!(!not_an_access_token(&m(
            serde_json::json!({"typ": "Bearer"})
        )));
        assert!(!not_an_access_token(&m(serde_json::json!({"sub": "a"}))));
        for c in [
            serde_json::json!({"typ": "ID"}),
            serde_json::json!({"typ": "Refresh"}),
            serde_json::json!({"typ": 3}),
            serde_json::json!({"nonce": "n"}),
            serde_json::json!({"at_hash": "h"}),
            serde_json::json!({"c_hash": "h"}),
        ] {
            assert!(not_an_access_token(&m(c.clone())), "{c}");
        }
    }

    #[test]
    fn claims_are_found_by_name_then_by_path() {
        let c = m(serde_json::json!({
            "realm_access": {"roles": ["a", "b"]}, "scp": "read write", "x.y": 1
        }));
        assert_eq!(words(claim(&c, "realm_access.roles").unwrap()), ["a", "b"]);
        assert_eq!(words(claim(&c, "scp").unwrap()), ["read", "write"]);
        assert_eq!(claim(&c, "x.y"), Some(&serde_json::json!(1)));
        assert_eq!(claim(&c, "realm_access.nope"), None);
        assert_eq!(
            header_text(&serde_json::json!(["a", 1, true])).unwrap(),
            "a,1,true"
        );
        assert_eq!(header_text(&serde_json::json!({"a": 1})), None);
        assert_eq!(header_text(&serde_json::json!(["a,b", "c"])), None);
        assert_eq!(
            words(&serde_json::json!(["/Team admin", "x"])),
            ["/Team", "admin", "x"]
        );
        assert_eq!(normalize_type("application/AT+JWT"), "at+jwt");
        assert_eq!(normalize_type("JWT"), "jwt");
    }
}
