//! The SAML 2.0 bearer assertion rules of RFC 7522 §3 and the SAML 2.0
//! profiles, applied to the element whose signature verified (and only to
//! its own children, so nothing from a wrapped copy is ever read):
//! `Issuer` is the trusted IdP; a bearer `SubjectConfirmation` names the
//! token endpoint as `Recipient` and is not expired; `Conditions` hold now
//! (with skew) and every `AudienceRestriction` names valet; `NameID` is plain
//! text (a comment inside it is refused rather than read around).

use super::xmldsig::{self, DsigError, SAML_NS};
use crate::revocation::time::parse_rfc3339;
use roxmltree::Node;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamlError {
    #[error("{0}")]
    Signature(#[from] DsigError),
    #[error("the issuer is not the trusted identity provider")]
    Issuer,
    #[error("the assertion has no usable subject: {0}")]
    Subject(&'static str),
    #[error("no bearer subject confirmation for this token endpoint is valid now")]
    Confirmation,
    #[error("the assertion's conditions do not hold now (expired or not yet valid)")]
    Time,
    #[error("the assertion is not meant for this authorization server (audience)")]
    Audience,
    #[error("malformed assertion: {0}")]
    Malformed(&'static str),
}

/// What valet checks an assertion against.
pub struct Expect<'a> {
    pub idp_entity_id: &'a str,
    pub idp_cert_der: &'a [u8],
    /// valet's entity id: must be in every AudienceRestriction.
    pub audience: &'a str,
    /// The token endpoint URL: a bearer confirmation's Recipient.
    pub recipient: &'a str,
    pub now: i64,
    pub skew: i64,
}

/// A verified, valid assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub id: String,
    pub issuer: String,
    pub name_id: String,
    /// Until when the assertion could be replayed: its latest validity bound.
    pub expires_at: i64,
    pub attributes: Vec<(String, Vec<String>)>,
}

fn saml_children<'a, 'i>(
    n: Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| {
        c.is_element() && c.tag_name().namespace() == Some(SAML_NS) && c.tag_name().name() == name
    })
}

fn one<'a, 'i>(n: Node<'a, 'i>, name: &'static str) -> Result<Node<'a, 'i>, SamlError> {
    let mut it = saml_children(n, name);
    let first = it.next().ok_or(SamlError::Malformed(name))?;
    if it.next().is_some() {
        return Err(SamlError::Malformed(name));
    }
    Ok(first)
}

/// The text of an element that must hold nothing but text.
fn plain_text(n: Node<'_, '_>) -> Option<String> {
    if n.children().any(|c| !c.is_text()) {
        return None;
    }
    Some(
        n.children()
            .filter_map(|c| c.text())
            .collect::<String>()
            .trim()
            .to_string(),
    )
}

fn time(n: Node<'_, '_>, attr: &str) -> Result<Option<i64>, SamlError> {
    match n.attribute(attr) {
        None => Ok(None),
        Some(v) => parse_rfc3339(v)
            .map(Some)
            .map_err(|_| SamlError::Malformed("a time")),
    }
}

/// Verifies the signature of `xml` and applies every rule; returns the assertion.
pub fn validate(xml: &str, expect: &Expect<'_>) -> Result<Assertion, SamlError> {
    let doc = xmldsig::parse(xml)?;
    let root = xmldsig::verify(xml, &doc, expect.idp_cert_der)?;
    let (now, skew) = (expect.now, expect.skew);

    let issuer = plain_text(one(root, "Issuer")?).ok_or(SamlError::Issuer)?;
    if issuer != expect.idp_entity_id {
        return Err(SamlError::Issuer);
    }

    let subject = one(root, "Subject")?;
    let name_id = plain_text(
        one(subject, "NameID").map_err(|_| SamlError::Subject("one NameID is required"))?,
    )
    .ok_or(SamlError::Subject(
        "NameID must be plain text (no comments or elements)",
    ))?;
    if name_id.is_empty() {
        return Err(SamlError::Subject("NameID is empty"));
    }
    let mut confirmed_until = None;
    for sc in saml_children(subject, "SubjectConfirmation") {
        if sc.attribute("Method") != Some("urn:oasis:names:tc:SAML:2.0:cm:bearer") {
            continue;
        }
        for data in saml_children(sc, "SubjectConfirmationData") {
            let until = time(data, "NotOnOrAfter")?;
            let ok = data.attribute("Recipient") == Some(expect.recipient)
                && until.is_some_and(|t| now < t + skew)
                && time(data, "NotBefore")?.is_none_or(|t| t <= now + skew);
            if ok {
                confirmed_until = until.max(confirmed_until);
            }
        }
    }
    let confirmed_until = confirmed_until.ok_or(SamlError::Confirmation)?;

    let conditions = one(root, "Conditions")?;
    if time(conditions, "NotBefore")?.is_some_and(|t| now + skew < t) {
        return Err(SamlError::Time);
    }
    let not_after = time(conditions, "NotOnOrAfter")?;
    if not_after.is_some_and(|t| now >= t + skew) {
        return Err(SamlError::Time);
    }
    let restrictions: Vec<Node<'_, '_>> =
        saml_children(conditions, "AudienceRestriction").collect();
    // Every restriction must be satisfied, and there must be one.
    if restrictions.is_empty()
        || !restrictions.iter().all(|r| {
            saml_children(*r, "Audience").any(|a| plain_text(a).as_deref() == Some(expect.audience))
        })
    {
        return Err(SamlError::Audience);
    }

    let mut attributes = Vec::new();
    for statement in saml_children(root, "AttributeStatement") {
        for attr in saml_children(statement, "Attribute") {
            let Some(name) = attr.attribute("Name") else {
                continue;
            };
            let values = saml_children(attr, "AttributeValue")
                .filter_map(plain_text)
                .collect();
            attributes.push((name.to_string(), values));
        }
    }
    Ok(Assertion {
        id: root.attribute("ID").unwrap_or_default().to_string(),
        issuer,
        name_id,
        expires_at: not_after.map_or(confirmed_until, |t| t.max(confirmed_until)),
        attributes,
    })
}
