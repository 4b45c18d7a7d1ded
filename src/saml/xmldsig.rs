//! Verification of the one XML signature shape SAML bearer assertions use:
//! the document's root element is the Assertion; it holds exactly one
//! `ds:Signature` child, enveloped, whose single Reference points at the
//! root's own `ID` (an ID no other element repeats); exclusive c14n;
//! RSA-SHA256 over SHA-256. The key is the IdP's configured certificate;
//! any KeyInfo in the document is ignored. On success the caller gets the
//! root element: the element whose signature verified is exactly the element
//! whose content will be used, which defeats signature wrapping.

use super::c14n::canonicalize;
use roxmltree::{Document, Node};

pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const SAML_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";

/// Deeper documents are refused: canonicalization recurses per level, and a
/// SAML assertion needs fewer than ten.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsigError {
    #[error("not well-formed XML, or it has a DTD: {0}")]
    Parse(String),
    #[error("the document is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the document is not a SAML 2.0 Assertion")]
    NotAnAssertion,
    #[error("the assertion is not signed")]
    Unsigned,
    #[error("the signature has an unexpected structure: {0}")]
    Structure(&'static str),
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    #[error("the signature does not reference the assertion it is in")]
    WrongReference,
    #[error("ID `{0}` appears more than once")]
    DuplicateId(String),
    #[error("the assertion was modified after signing (digest mismatch)")]
    Digest,
    #[error("the signature does not verify with the IdP's certificate")]
    Signature,
    #[error("the IdP certificate cannot be used: {0}")]
    Certificate(String),
}

/// Parses `xml` with DTDs forbidden (no entity expansion of any kind) and
/// nesting bounded (see [`MAX_DEPTH`]).
pub fn parse(xml: &str) -> Result<Document<'_>, DsigError> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc =
        Document::parse_with_options(xml, opts).map_err(|e| DsigError::Parse(e.to_string()))?;
    // Depth in one pass without recursion: in document order a node's parent
    // is on the stack of open ancestors.
    let mut open: Vec<roxmltree::NodeId> = Vec::new();
    for n in doc.descendants() {
        let parent = n.parent().map(|p| p.id());
        while open.last().is_some_and(|top| Some(*top) != parent) {
            open.pop();
        }
        open.push(n.id());
        if open.len() > MAX_DEPTH {
            return Err(DsigError::TooDeep);
        }
    }
    Ok(doc)
}

fn ds_children<'a, 'i>(n: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| {
        c.is_element() && c.tag_name().namespace() == Some(DSIG_NS) && c.tag_name().name() == name
    })
}

fn only<'a, 'i>(n: Node<'a, 'i>, name: &'static str) -> Result<Node<'a, 'i>, DsigError> {
    let mut it = ds_children(n, name);
    let first = it.next().ok_or(DsigError::Structure(name))?;
    if it.next().is_some() {
        return Err(DsigError::Structure(name));
    }
    Ok(first)
}

fn algorithm<'a>(n: Node<'a, '_>) -> &'a str {
    n.attribute("Algorithm").unwrap_or("")
}

/// PrefixList of an InclusiveNamespaces child of a c14n method/transform.
fn inclusive_prefixes<'a>(n: Node<'a, '_>) -> Vec<&'a str> {
    n.children()
        .filter(|c| {
            c.is_element()
                && c.tag_name().namespace() == Some(EXC_C14N)
                && c.tag_name().name() == "InclusiveNamespaces"
        })
        .flat_map(|c| {
            c.attribute("PrefixList")
                .unwrap_or("")
                .split_ascii_whitespace()
        })
        .collect()
}

fn b64(s: &str) -> Result<Vec<u8>, DsigError> {
    use base64::Engine;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|_| DsigError::Structure("base64"))
}

/// Verifies the signed root Assertion of `doc` (parsed from `src`) against
/// the IdP certificate (DER). Returns the root element on success.
pub fn verify<'a, 'i>(
    src: &str,
    doc: &'a Document<'i>,
    idp_cert_der: &[u8],
) -> Result<Node<'a, 'i>, DsigError> {
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(SAML_NS) || root.tag_name().name() != "Assertion" {
        return Err(DsigError::NotAnAssertion);
    }
    let id = root
        .attribute("ID")
        .filter(|i| !i.is_empty())
        .ok_or(DsigError::NotAnAssertion)?;
    // No other element may carry the same ID (a wrapped copy would).
    let mut ids = std::collections::HashSet::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        for a in n
            .attributes()
            .filter(|a| matches!(a.name(), "ID" | "Id" | "id") && a.namespace().is_none())
        {
            if !ids.insert(a.value()) {
                return Err(DsigError::DuplicateId(a.value().to_string()));
            }
        }
    }
    // Exactly one Assertion in the whole document, the root: a document
    // shaped for signature wrapping is refused outright, whichever copy this
    // verifier would read, since another consumer of it may read the other.
    let assertions = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "Assertion")
        .count();
    if assertions != 1 {
        return Err(DsigError::Structure(
            "more than one Assertion in the document",
        ));
    }
    let mut sigs = ds_children(root, "Signature");
    let signature = sigs.next().ok_or(DsigError::Unsigned)?;
    if sigs.next().is_some() {
        return Err(DsigError::Structure("more than one Signature"));
    }
    // Inside the Signature only what it needs: ds:Object and anything else
    // is outside the enveloped digest, a place to hide content.
    for c in signature.children().filter(|c| c.is_element()) {
        let allowed = c.tag_name().namespace() == Some(DSIG_NS)
            && matches!(
                c.tag_name().name(),
                "SignedInfo" | "SignatureValue" | "KeyInfo"
            );
        if !allowed {
            return Err(DsigError::Structure(
                "the Signature holds more than SignedInfo, SignatureValue and KeyInfo",
            ));
        }
    }
    if signature
        .children()
        .any(|c| c.is_text() && !c.text().unwrap_or("").trim().is_empty())
    {
        return Err(DsigError::Structure("text inside the Signature"));
    }
    let signed_info = only(signature, "SignedInfo")?;
    let c14n_method = only(signed_info, "CanonicalizationMethod")?;
    if algorithm(c14n_method) != EXC_C14N {
        return Err(DsigError::Algorithm(algorithm(c14n_method).to_string()));
    }
    let sig_method = only(signed_info, "SignatureMethod")?;
    if algorithm(sig_method) != RSA_SHA256 {
        return Err(DsigError::Algorithm(algorithm(sig_method).to_string()));
    }
    let reference = only(signed_info, "Reference")?;
    if reference.attribute("URI") != Some(&format!("#{id}")) {
        return Err(DsigError::WrongReference);
    }
    let transforms: Vec<Node<'_, '_>> =
        ds_children(only(reference, "Transforms")?, "Transform").collect();
    let algs: Vec<&str> = transforms.iter().map(|t| algorithm(*t)).collect();
    let ref_prefixes = match algs.as_slice() {
        [ENVELOPED, EXC_C14N] => inclusive_prefixes(transforms[1]),
        [ENVELOPED] => Vec::new(),
        _ => {
            return Err(DsigError::Structure(
                "transforms must be enveloped-signature then exc-c14n",
            ))
        }
    };
    let digest_method = only(reference, "DigestMethod")?;
    if algorithm(digest_method) != SHA256 {
        return Err(DsigError::Algorithm(algorithm(digest_method).to_string()));
    }
    let expected = b64(only(reference, "DigestValue")?.text().unwrap_or(""))?;

    // The reference: the assertion without its signature, canonicalized.
    let canonical = canonicalize(src, root, Some(signature.id()), &ref_prefixes);
    let digest = crate::digest::sha256(canonical.as_bytes());
    if aws_lc_rs::constant_time::verify_slices_are_equal(digest.as_ref(), &expected).is_err() {
        return Err(DsigError::Digest);
    }
    // The signature over the canonical SignedInfo.
    let signed = canonicalize(src, signed_info, None, &inclusive_prefixes(c14n_method));
    let value = b64(only(signature, "SignatureValue")?.text().unwrap_or(""))?;
    let der = rustls_pki_types::CertificateDer::from(idp_cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| DsigError::Certificate(format!("{e:?}")))?;
    cert.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        signed.as_bytes(),
        &value,
    )
    .map_err(|_| DsigError::Signature)?;
    Ok(root)
}
