//! The properties the fuzz targets check (`fuzz/fuzz_targets/`), kept in the
//! library so that `tests/fuzz_corpus.rs` replays every corpus file through
//! exactly the same checks on the stable toolchain. Each function takes the
//! fuzzer's bytes and panics when a property fails; none may panic otherwise.
//! Not an API: nothing in valet calls these.

use crate::config::UnderscoreHeaders;
use crate::proxy::{forwarded, headers, router};
use crate::request_target::{
    self as rt, EmptySegments, EncodedSlashes, PathParameters, PathPolicy,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};

fn policy_of(bits: u8) -> PathPolicy {
    PathPolicy {
        encoded_slashes: if bits & 1 == 0 {
            EncodedSlashes::Reject
        } else {
            EncodedSlashes::Pass
        },
        empty_segments: if bits & 2 == 0 {
            EmptySegments::Reject
        } else {
            EmptySegments::Merge
        },
        path_parameters: if bits & 4 == 0 {
            PathParameters::Reject
        } else {
            PathParameters::Allow
        },
    }
}

const ROUTES: [(Option<&str>, &str, bool); 5] = [
    (None, "/", false),
    (None, "/admin", false),
    (None, "/admin/users", true),
    (None, "/api/v1", false),
    (Some("a.example"), "/", false),
];

fn route(path: &str, policy: &PathPolicy) -> Option<usize> {
    let r = rt::routing_path(path, policy);
    router::select(
        ROUTES.iter().map(|(host, prefix, ci)| router::Candidate {
            host: *host,
            prefix,
            case_insensitive: *ci,
        }),
        None,
        &r,
    )
}

/// Another spelling of the canonical path `c`: unreserved characters
/// escaped and escapes in lowercase where `noise` says so. With `subdelims`,
/// sub-delimiters, `:` and `@` may be escaped too (a spelling RFC 3986 calls
/// different, but that servers decode alike: routing must agree).
fn respell(c: &str, noise: &[u8], subdelims: bool) -> String {
    let mut out = String::with_capacity(c.len() * 3);
    let b = c.as_bytes();
    let mut i = 0;
    let mut k = 0;
    while i < b.len() {
        let bit = noise.get(k / 8).is_some_and(|n| n >> (k % 8) & 1 == 1);
        k += 1;
        let ch = b[i];
        if ch == b'%' && i + 3 <= b.len() {
            let esc = &c[i..i + 3];
            out.push_str(&if bit {
                esc.to_ascii_lowercase()
            } else {
                esc.to_string()
            });
            i += 3;
            continue;
        }
        let escapable = ch.is_ascii_alphanumeric()
            || b"-._~".contains(&ch)
            || (subdelims && b"!$&'()*+,=:@".contains(&ch));
        if bit && escapable {
            out.push_str(&format!("%{ch:02x}"));
        } else {
            out.push(ch as char);
        }
        i += 1;
    }
    out
}

/// Canonical paths: no panic; the canonical form is ASCII, parses as a
/// request target, is its own canonical form, holds none of the refused
/// spellings (nor does the reading routes match on); every equivalent
/// spelling has the same canonical form, and every spelling a decoding
/// server reads alike has the same route.
pub fn canonical_path(data: &[u8]) {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (path, noise) = rest.split_at(split);
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let policy = policy_of(bits);
    let Ok(c) = rt::canonical_path(path, &policy) else {
        return;
    };
    assert!(c.is_ascii() && c.starts_with('/'), "{c:?}");
    assert!(
        http::uri::PathAndQuery::try_from(c.as_ref()).is_ok(),
        "not a request target: {c:?}"
    );
    assert_eq!(rt::canonical_path(&c, &policy).as_deref(), Ok(c.as_ref()));
    let routing = rt::routing_path(&c, &policy);
    let segs: Vec<&str> = routing[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        assert!(
            !s.contains(';'),
            "parameters in the routing path {routing:?}"
        );
        assert!(*s != "." && *s != "..", "dot-segment in {routing:?}");
        assert!(
            !s.is_empty() || i + 1 == segs.len(),
            "empty segment in {routing:?}"
        );
    }
    if policy.path_parameters == PathParameters::Reject {
        assert!(!c.contains(';'), "{c:?}");
    }
    let upper = c.to_ascii_uppercase();
    assert!(!upper.contains("%00"), "{c:?}");
    if policy.encoded_slashes == EncodedSlashes::Reject {
        assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{c:?}");
    }
    assert!(!c.contains('\\'), "{c:?}");
    let alt = respell(&c, noise, false);
    assert_eq!(
        rt::canonical_path(&alt, &policy).as_deref(),
        Ok(c.as_ref()),
        "{alt:?} is another spelling of {c:?}"
    );
    let alt = respell(&c, noise, true);
    let alt_c = rt::canonical_path(&alt, &policy).expect("a respelling is accepted");
    assert_eq!(
        rt::routing_path(&alt_c, &policy),
        routing,
        "{alt:?} routes differently from {c:?}"
    );
    assert_eq!(route(&alt_c, &policy), route(&c, &policy));
}

/// Host values: no panic; an accepted one has a host, no user info, a port
/// that fits, and reads the same when parsed again.
pub fn host(data: &[u8]) {
    let Ok(a) = rt::parse_host(data) else {
        return;
    };
    let s = a.as_str();
    assert!(!s.contains('@'), "{s:?}");
    assert!(!rt::host_name(&a).is_empty() || a.host() == ".", "{s:?}");
    let again = rt::parse_host(s.as_bytes()).expect("re-parses");
    assert!(rt::same_authority(&a, &again));
}

/// Header lines `name: value`, one per `\n`; the invalid ones skipped.
fn header_map(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(n, v);
    }
    h
}

fn same_modulo_underscore(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || x == b'_' && y == b'-')
}

/// Header scrubbing: no panic; no spelling of an identity or stripped
/// header survives; with `drop`, no name with `_`; from an untrusted peer,
/// no origin header.
pub fn header_scrub(data: &[u8]) {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let mut h = header_map(rest);
    let ident = [
        HeaderName::from_static("x-valet-subject"),
        HeaderName::from_static("x-valet-client-id"),
        HeaderName::from_static("x-valet-scopes"),
        HeaderName::from_static("x-valet-issuer"),
    ];
    let extra = [HeaderName::from_static("x-debug-user")];
    let underscores = match bits % 3 {
        0 => UnderscoreHeaders::Drop,
        1 => UnderscoreHeaders::Allow,
        _ => UnderscoreHeaders::Reject,
    };
    let trusted = bits & 8 != 0;
    headers::strip_hop_by_hop(&mut h);
    headers::Scrub {
        underscores,
        trusted,
        identity: [&ident[0], &ident[1], &ident[2], &ident[3]],
        extra: &extra,
    }
    .apply(&mut h);
    for n in h.keys() {
        let n = n.as_str();
        for m in ident.iter().chain(&extra) {
            assert!(!same_modulo_underscore(n, m.as_str()), "{n} survived");
        }
        if underscores == UnderscoreHeaders::Drop {
            assert!(!n.contains('_'), "{n} survived");
        }
        if !trusted {
            assert!(
                !n.starts_with("x-forwarded-") && n != "x-real-ip" && n != "x-original-url",
                "{n} survived"
            );
        }
        assert!(
            n != "connection" && n != "transfer-encoding" && n != "te",
            "{n}"
        );
    }
}

/// Forwarding headers: no panic; from an untrusted peer the chain is
/// exactly the peer, from a trusted one it ends with it.
pub fn forwarded(data: &[u8]) {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let mut h = header_map(rest);
    let peer: std::net::IpAddr = if bits & 1 == 0 {
        "203.0.113.9".parse().expect("ip")
    } else {
        "2001:db8::9".parse().expect("ip")
    };
    let trusted = bits & 2 != 0;
    let host = h.get("host").cloned();
    forwarded::apply(&mut h, peer, trusted, host.as_ref());
    assert!(h.get("forwarded").is_none());
    let xff: Vec<&HeaderValue> = h.get_all("x-forwarded-for").iter().collect();
    let peer_s = peer.to_string();
    if trusted {
        if let Some(last) = xff.last() {
            let v = last.to_str().unwrap_or("");
            assert!(v.ends_with(&peer_s) || xff.len() > 1, "{v}");
        }
    } else {
        assert_eq!(xff.len(), 1);
        assert_eq!(xff[0], peer_s.as_str());
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}

/// The token endpoints' form bodies: no panic; parameters present are not empty.
pub fn token_form(data: &[u8]) {
    if let Ok(f) = crate::oauth2::form::Form::parse(data) {
        for k in [
            "grant_type",
            "client_id",
            "client_secret",
            "scope",
            "refresh_token",
        ] {
            if let Some(v) = f.get(k) {
                assert!(!v.is_empty());
            }
        }
    }
}

/// Revocation files: no panic parsing or building the set.
pub fn revocation_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = serde_yaml::from_str::<crate::revocation::RevocationFile>(text) {
        let set = crate::revocation::RevocationSet::from_file(f, 1_800_000_000);
        let _ = set.len();
    }
}

/// The config compiler: no panic, whatever the text. The file's folder does
/// not exist, so nothing can be generated or written.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::parse(
        std::path::Path::new("/nonexistent/valet-fuzz/valet.yaml"),
        text,
    );
}

/// RFC 3339: no panic; an accepted time formats back to the same instant.
pub fn rfc3339(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    use crate::revocation::time::{format_rfc3339, parse_rfc3339};
    if let Ok(t) = parse_rfc3339(s) {
        if let Some(text) = format_rfc3339(t) {
            assert_eq!(parse_rfc3339(&text), Ok(t), "{s:?}");
        }
    }
}

/// OAuth 1.0 parameter normalisation: no panic; the normalised form does
/// not depend on the order of the parameters, and the base string URI is
/// its own base string URI.
pub fn oauth1_params(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    use crate::oauth1::signing::{base_string, base_string_uri, normalize, query_params};
    let (url, body) = s.split_once('\n').unwrap_or((s, ""));
    let mut params = query_params(url);
    params.extend(form_urlencoded::parse(body.as_bytes()).into_owned());
    let n = normalize(&params);
    params.reverse();
    assert_eq!(normalize(&params), n);
    if let Ok(u) = base_string_uri(url) {
        assert_eq!(base_string_uri(&u).as_deref(), Ok(u.as_str()), "{url:?}");
        assert!(base_string("GET", url, &params).is_ok());
    }
}

/// Bearer tokens against a validator with one fixed Ed25519 key: no panic,
/// whatever validates carries a signature that an independent verifier
/// (aws-lc-rs) accepts with that key's public half, and no header that
/// names critical extensions (`crit`) validates.
pub struct BearerOracle {
    validator: crate::tokens::Validator,
    public: Vec<u8>,
    revoked: crate::revocation::RevocationSet,
}

/// The instant the oracle validates at (the seed tokens are valid then).
pub const BEARER_NOW: i64 = 1_800_000_000;
/// Issuer and audience of the oracle's validator.
pub const BEARER_ISSUER: &str = "https://valet.fuzz";
pub const BEARER_AUDIENCE: &str = "fuzz-api";

impl BearerOracle {
    /// `pkcs8_pem`: the Ed25519 private key the seed tokens were signed with.
    pub fn new(pkcs8_pem: &str) -> Self {
        use crate::tokens::keys::{self, KeyConfig};
        // The key loader reads files; each oracle gets its own folder.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("valet-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("k.pem");
        std::fs::write(&file, pkcs8_pem).expect("key file");
        let key = keys::load(
            &KeyConfig {
                id: "fuzz".into(),
                algorithm: jsonwebtoken::Algorithm::EdDSA,
                private_key_file: Some(file),
                public_key_file: None,
                generate_if_missing: false,
            },
            &mut Vec::new(),
        )
        .expect("the fuzz key loads");
        let _ = std::fs::remove_dir_all(&dir);
        let public = crate::fuzzing::ed25519_public(&key);
        let cfg = crate::config::TokenConfig {
            issuer: BEARER_ISSUER.into(),
            audiences: vec![BEARER_AUDIENCE.into()],
            clock_skew: std::time::Duration::from_secs(30),
            keys: vec![std::sync::Arc::new(key)],
            signing_key: Some(0),
            access_token_ttl: std::time::Duration::from_secs(3600),
            cache_entries: 0,
            issuers: Vec::new(),
        };
        BearerOracle {
            validator: crate::tokens::Validator::new(&cfg),
            public,
            revoked: Default::default(),
        }
    }

    /// Whether valet's validator accepts `data` (for the seeds' own test).
    pub fn accepts(&self, data: &[u8]) -> bool {
        std::str::from_utf8(data).is_ok_and(|t| {
            self.validator
                .validate(t, &self.revoked, BEARER_NOW)
                .is_ok()
        })
    }

    pub fn check(&self, data: &[u8]) {
        let Ok(token) = std::str::from_utf8(data) else {
            return;
        };
        if self
            .validator
            .validate(token, &self.revoked, BEARER_NOW)
            .is_err()
        {
            return;
        }
        use base64::Engine;
        // RFC 7515 §4.1.11: nothing that names critical extensions validates.
        let header = token.split('.').next().unwrap_or("");
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .expect("a validated header is base64url");
        let header: serde_json::Value =
            serde_json::from_slice(&header).expect("a validated header is JSON");
        assert!(
            header.get("crit").is_none(),
            "a token naming critical extensions validated"
        );
        let (input, sig) = token
            .rsplit_once('.')
            .expect("a validated token has a signature");
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .expect("a validated signature is base64url");
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &self.public)
            .verify(input.as_bytes(), &sig)
            .expect("a token not signed by the configured key validated");
    }
}

fn ed25519_public(key: &crate::tokens::keys::LoadedKey) -> Vec<u8> {
    use base64::Engine;
    let x = key.jwk["x"].as_str().expect("an Ed25519 JWK has x");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(x)
        .expect("x is base64url")
}

/// Exclusive c14n on arbitrary XML: no panic; its output parses and is its
/// own canonical form (c14n is idempotent).
pub fn c14n(data: &[u8]) {
    use crate::saml::c14n::canonicalize;
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = crate::saml::xmldsig::parse(xml) else {
        return;
    };
    let once = canonicalize(xml, doc.root_element(), None, &[]);
    let again_doc = roxmltree::Document::parse(&once).expect("canonical XML parses");
    let twice = canonicalize(&once, again_doc.root_element(), None, &[]);
    assert_eq!(once, twice, "c14n is not idempotent");
}

/// Whole SAML assertion validation against the test IdP certificate
/// (`idp_cert_der`, from `tests/data/saml`): whatever validates carries
/// exactly the identity the IdP signed; the fuzzer searches for a forgery.
pub fn saml_assertion(data: &[u8], idp_cert_der: &[u8]) {
    use crate::saml::assertion::{validate, Expect};
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let expect = Expect {
        idp_entity_id: "https://idp.test",
        idp_cert_der,
        audience: "https://valet.test",
        recipient: "https://valet.test/oauth2/token",
        now: 1_800_000_000,
        skew: 30,
    };
    if let Ok(a) = validate(xml, &expect) {
        assert_eq!(a.issuer, "https://idp.test");
        assert_eq!(a.name_id, "dave@idp.test", "a forged subject validated");
        assert!(
            a.id == "_grant-valid" || a.id == "_grant-valid-2",
            "an unsigned ID validated: {}",
            a.id
        );
        let doc = roxmltree::Document::parse(xml).expect("a validated document parses");
        let assertions = doc
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "Assertion")
            .count();
        assert_eq!(assertions, 1, "a document shaped for wrapping validated");
    }
}
