//! The JWT bearer grant (RFC 7523 §2.1, §3), to the letter:
//! the signature is by a key registered for the assertion's `iss`, with the
//! algorithm pinned by that key; `aud` names valet (its issuer or its token
//! endpoint); `exp` is required and not absurdly far ahead; `nbf` and `iat`
//! are respected with the clock skew; the subject is present; and the
//! assertion's `jti` is single-use until the assertion expires (recorded in
//! the durable revocation store, so it holds across restarts and replicas).

use super::error::OAuthError;
use super::state::record_assertion_use;
use super::Call;
use crate::credentials::{Client, JwtBearer};
use crate::tokens::jose::{self, HeaderRefusal};
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

/// A verified assertion, mapped to valet's terms.
pub struct Mapped {
    pub subject: String,
    /// The subject prefix of the issuer that asserted it ("" for none).
    pub prefix: String,
    pub claims: Map<String, Value>,
    /// Scopes the assertion grants (None: no scopes claim configured).
    pub scopes: Option<Vec<String>>,
}

fn invalid(why: &str) -> OAuthError {
    OAuthError::InvalidGrant(format!("the assertion is invalid: {why}"))
}

/// The `iss` of an assertion, read before its signature is checked: it only
/// selects which keys to try.
fn peek_issuer(assertion: &str) -> Option<String> {
    use base64::Engine;
    let payload = assertion.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

pub async fn verify(c: Call<'_>, client: &Client) -> Result<Mapped, OAuthError> {
    let jb: &JwtBearer = client.jwt_bearer.as_ref().ok_or_else(|| {
        OAuthError::UnauthorizedClient("this client has no trusted assertion issuers".into())
    })?;
    let assertion = c.form.require("assertion")?;
    let header = jose::header(assertion).map_err(|r| match r {
        HeaderRefusal::Critical => {
            invalid("it names critical header extensions (crit), which valet does not understand")
        }
        _ => invalid("malformed, or an algorithm valet does not accept"),
    })?;
    let iss = peek_issuer(assertion).ok_or_else(|| invalid("no issuer"))?;
    let issuer = jb
        .issuers
        .iter()
        .find(|i| i.issuer == iss)
        .ok_or_else(|| invalid("the issuer is not trusted by this client"))?;
    let tokens = &c.snap.config.tokens;
    let skew = tokens.clock_skew.as_secs();
    // RFC 7523 §3 item 3: the audience identifies the authorization server.
    let token_endpoint = c.token_endpoint();
    let mut claims: Option<Map<String, Value>> = None;
    let mut last = invalid("no key of the issuer matches the assertion's algorithm");
    for k in issuer
        .keys
        .iter()
        .filter(|k| k.algorithm == header.alg)
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
    {
        let mut v = jsonwebtoken::Validation::new(k.algorithm);
        v.set_issuer(&[&iss]);
        v.set_audience(&[tokens.issuer.as_str(), token_endpoint.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = skew;
        v.validate_nbf = true;
        match jsonwebtoken::decode::<Map<String, Value>>(assertion, &k.key, &v) {
            Ok(d) => {
                claims = Some(d.claims);
                break;
            }
            Err(e) => {
                last = match e.kind() {
                    ErrorKind::InvalidSignature => invalid("bad signature"),
                    ErrorKind::ExpiredSignature => invalid("expired"),
                    ErrorKind::ImmatureSignature => invalid("not yet valid"),
                    ErrorKind::InvalidAudience => {
                        invalid("the audience is not this authorization server")
                    }
                    ErrorKind::MissingRequiredClaim(c) => {
                        invalid(&format!("the {c} claim is required"))
                    }
                    _ => invalid("malformed claims"),
                };
                if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                    break;
                }
            }
        }
    }
    let claims = claims.ok_or(last)?;
    let int = |k: &str| claims.get(k).and_then(Value::as_i64);
    let exp = int("exp").ok_or_else(|| invalid("exp must be a number"))?;
    if exp - c.now > (jb.max_lifetime.as_secs() + skew) as i64 {
        return Err(invalid("exp is too far in the future"));
    }
    if claims.contains_key("iat") && int("iat").is_none_or(|iat| iat > c.now + skew as i64) {
        return Err(invalid("iat is in the future"));
    }
    let subject = claims
        .get(&jb.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(&format!(
                "the {} claim (the subject) is required",
                jb.subject_claim
            ))
        })?;
    let subject = format!("{}{subject}", issuer.subject_prefix);
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("a jti is required, so that the assertion can be used once"))?;
    // Issued before the state store's contents go back: whether it was used
    // is not known any more.
    if claims
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat < c.app.revocations.store().generation_since())
    {
        return Err(invalid(
            "it was issued before the state store was reset and cannot be known unused",
        ));
    }
    // Replay: one use per (issuer, jti) until the assertion expires.
    let fresh = record_assertion_use(c.app, "assertion", &iss, jti, exp + skew as i64).await?;
    if !fresh {
        return Err(invalid("it was already used"));
    }
    let mut mapped = Map::new();
    for (out, from) in &jb.claims {
        if let Some(v) = claims.get(from) {
            mapped.insert(out.clone(), v.clone());
        }
    }
    let scopes = jb.scopes_claim.as_ref().map(|c| match claims.get(c) {
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    });
    Ok(Mapped {
        subject,
        prefix: issuer.subject_prefix.clone(),
        claims: mapped,
        scopes,
    })
}
