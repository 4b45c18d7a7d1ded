//! The one canonical form of a request target (RFC 3986 §6.2.2, RFC 9112 §3.2).
//!
//! valet routes on a path and forwards it to a server that may read the same
//! bytes differently: Go's ServeMux decodes and cleans, Tomcat drops `;`
//! parameters, IIS ignores case and treats `\` as `/`. So every path is turned
//! into one spelling *before* anything looks at it, valet routes on that
//! spelling, and the upstream receives exactly it. Spellings that servers
//! disagree about (encoded separators, NUL, `;` parameters, empty segments,
//! dot-segments) are refused unless a listener opts into them.
//!
//! The canonical form: percent-encoded unreserved characters decoded, the
//! remaining escapes in uppercase, bytes that must be escaped (non-ASCII,
//! `"{}|^[]\`) escaped, no dot-segments; pure ASCII, and idempotent.
//!
//! Escapes are read here rather than with the `percent-encoding` crate
//! (which valet uses for query names and OAuth 1.0): that crate decodes
//! every escape and passes a malformed one through, while this form needs
//! a decision per escape (decode, keep, or refuse) and refuses malformed
//! ones. It is fuzzed (`fuzz/fuzz_targets/canonical_path.rs`: idempotent,
//! ASCII, a valid request target, no dot-segment or parameter left in the
//! routing reading) and unit-tested below. Hosts and
//! authorities are parsed by `http::uri::Authority`.

use http::uri::Authority;
use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (and a raw `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400: a server that decodes them would see a different path.
    #[default]
    Reject,
    /// Kept escaped (`%2F`, `%5C`), never a separator for routing. Only for
    /// upstreams that do not decode them either.
    Pass,
}

/// What to do with empty segments (`//`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptySegments {
    #[default]
    Reject,
    /// `//` becomes `/` in the canonical form (and upstream).
    Merge,
}

/// What to do with `;` path parameters (`/a;v=1/b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    #[default]
    Reject,
    /// Forwarded as sent; routing ignores them (a segment `admin;x=1` routes
    /// as `admin`, which is how Tomcat and Spring read it).
    Allow,
}

/// A listener's path rules. The defaults are the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathPolicy {
    pub encoded_slashes: EncodedSlashes,
    pub empty_segments: EmptySegments,
    pub path_parameters: PathParameters,
}

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be an absolute path")]
    NotAbsolute,
    #[error("the path contains a malformed percent-encoding")]
    BadEscape,
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
    #[error("the path contains an encoded slash or backslash (%2F, %5C, \\)")]
    EncodedSlash,
    #[error("the path contains dot-segments")]
    DotSegment,
    #[error("the path contains an empty segment (//)")]
    EmptySegment,
    #[error("the path contains ;-parameters")]
    PathParameter,
}

const UNRESERVED: u8 = 1;
/// Stays literal in the canonical form: unreserved, sub-delims, `:` `@`
/// `/` (RFC 3986 `pchar` plus the separator), and `;` (judged per segment).
const LITERAL: u8 = 2;

/// Byte classes, looked up once per byte on the hot path.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            t[i] = UNRESERVED | LITERAL;
        } else if matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b';'
        ) {
            t[i] = LITERAL;
        }
        i += 1;
    }
    t
};

#[inline]
fn is_unreserved(b: u8) -> bool {
    CLASS[b as usize] & UNRESERVED != 0
}

#[inline]
fn is_literal(b: u8) -> bool {
    CLASS[b as usize] & LITERAL != 0
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The canonical form of `path` under `policy`; borrowed when `path` already
/// is canonical (the common case: no allocation).
pub fn canonical_path<'a>(path: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // First pass: does anything need rewriting? Checks that do not rewrite
    // (dot-segments, `;`, `//`) run in `finish` on the final form.
    let needs_rewrite = b
        .iter()
        .any(|&c| c == b'%' || (!is_literal(c) && c != b';'));
    let out: Cow<'a, str> = if !needs_rewrite {
        Cow::Borrowed(path)
    } else {
        let mut out = Vec::with_capacity(b.len() + 8);
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'%' {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                if is_unreserved(v) {
                    out.push(v);
                } else if v == 0 {
                    return Err(PathError::EncodedNul);
                } else if (v == b'/' || v == b'\\')
                    && policy.encoded_slashes == EncodedSlashes::Reject
                {
                    return Err(PathError::EncodedSlash);
                } else {
                    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
                }
                i += 3;
                continue;
            }
            if c == b'\\' && policy.encoded_slashes == EncodedSlashes::Reject {
                return Err(PathError::EncodedSlash);
            }
            if is_literal(c) {
                out.push(c);
            } else {
                out.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
            }
            i += 1;
        }
        // Only ASCII was pushed.
        Cow::Owned(String::from_utf8(out).map_err(|_| PathError::BadEscape)?)
    };
    finish(out, policy)
}

/// Segment rules on the decoded form: dot-segments, `;`, empty segments.
/// They run on the separator view (see [`separator_view`]), so a path that
/// passes cannot turn into one that fails in a server that decodes `%2F`.
fn finish<'a>(path: Cow<'a, str>, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    let view = separator_view(&path, policy);
    let b = view.as_bytes();
    let allow_params = policy.path_parameters == PathParameters::Allow;
    let mut empty = false;
    // Segments after the leading `/`, one byte scan; a trailing `/` leaves
    // an empty last segment, an ordinary directory spelling, not `//`.
    let mut start = 1;
    loop {
        let end = b[start..]
            .iter()
            .position(|&c| c == b'/')
            .map_or(b.len(), |k| start + k);
        let seg = &b[start..end];
        let name = match seg.iter().position(|&c| c == b';') {
            None => seg,
            Some(_) if !allow_params => return Err(PathError::PathParameter),
            // `/;x/admin`: Tomcat drops the parameter and merges the empty
            // segment, reading `/admin`; valet would route `//admin`.
            Some(0) => return Err(PathError::EmptySegment),
            Some(k) => &seg[..k],
        };
        if matches!(name, [b'.'] | [b'.', b'.']) {
            return Err(PathError::DotSegment);
        }
        if end == b.len() {
            break;
        }
        empty |= seg.is_empty();
        start = end + 1;
    }
    if !empty {
        return Ok(path);
    }
    if policy.empty_segments == EmptySegments::Reject {
        return Err(PathError::EmptySegment);
    }
    Ok(match path {
        Cow::Borrowed(p) if !p.contains("//") => Cow::Borrowed(p),
        p => Cow::Owned(merge_slashes(&p)),
    })
}

fn merge_slashes(path: &str) -> String {
    let mut merged = String::with_capacity(path.len());
    let mut prev_slash = false;
    for ch in path.chars() {
        if ch == '/' && prev_slash {
            continue;
        }
        prev_slash = ch == '/';
        merged.push(ch);
    }
    merged
}

/// The path as a server that decodes `%2F` and `%5C` before splitting
/// would read it (only different under `encoded_slashes: pass`).
fn separator_view<'a>(canonical: &'a str, policy: &PathPolicy) -> Cow<'a, str> {
    if policy.encoded_slashes == EncodedSlashes::Pass
        && (canonical.contains("%2F") || canonical.contains("%5C"))
    {
        Cow::Owned(canonical.replace("%2F", "/").replace("%5C", "/"))
    } else {
        Cow::Borrowed(canonical)
    }
}

/// Escaped characters that the canonical form keeps escaped (RFC 3986 says
/// `%3A` and `:` may differ) but that most servers decode before routing.
const ROUTING_DECODED: &[(&str, char)] = &[
    ("%21", '!'),
    ("%24", '$'),
    ("%26", '&'),
    ("%27", '\''),
    ("%28", '('),
    ("%29", ')'),
    ("%2A", '*'),
    ("%2B", '+'),
    ("%2C", ','),
    ("%3A", ':'),
    ("%3D", '='),
    ("%40", '@'),
];

/// The path routes match against: the canonical path read as the most
/// decoding upstream would read it. Escaped sub-delimiters, `:` and `@`
/// decoded; under the relaxed settings, `%2F`/`%5C` as separators, `//`
/// merged and `;` parameters dropped. Routing on the most decoded reading
/// can only send a request to a *more* specific (protected) route, never
/// around one. Borrowed in the common case.
pub fn routing_path<'a>(canonical: &'a str, policy: &PathPolicy) -> Cow<'a, str> {
    let mut r = separator_view(canonical, policy);
    if r.contains('%') && ROUTING_DECODED.iter().any(|(e, _)| r.contains(e)) {
        let mut s = r.into_owned();
        for (e, c) in ROUTING_DECODED {
            if s.contains(e) {
                s = s.replace(e, c.encode_utf8(&mut [0; 4]));
            }
        }
        r = Cow::Owned(s);
    }
    if policy.empty_segments == EmptySegments::Merge && r.contains("//") {
        r = Cow::Owned(merge_slashes(&r));
    }
    if policy.path_parameters == PathParameters::Allow && r.contains(';') {
        let mut out = String::with_capacity(r.len());
        for (i, seg) in r.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(seg.split_once(';').map_or(seg, |(n, _)| n));
        }
        r = Cow::Owned(out);
    }
    r
}

/// Why a Host (or `:authority`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host header")]
    Missing,
    #[error("more than one Host header")]
    Repeated,
    #[error("the Host header is not a valid host[:port]")]
    Invalid,
    #[error("the Host header disagrees with the request target")]
    Disagrees,
}

/// Parses a Host value: `host[:port]`, no user info, a numeric port.
pub fn parse_host(value: &[u8]) -> Result<Authority, HostError> {
    let a = Authority::try_from(value).map_err(|_| HostError::Invalid)?;
    check_authority(&a)?;
    Ok(a)
}

/// Refuses what `Authority` accepts but a Host must not carry.
pub fn check_authority(a: &Authority) -> Result<(), HostError> {
    let s = a.as_str();
    if s.contains('@') || a.host().is_empty() {
        return Err(HostError::Invalid);
    }
    // `Authority` keeps what follows the host unread ("h:99999", "h:x",
    // "[::1]x"): it must be nothing, or `:` and a port that fits in u16.
    let rest = s.strip_prefix(a.host()).ok_or(HostError::Invalid)?;
    match rest.strip_prefix(':') {
        None if rest.is_empty() => {}
        Some("") => {}
        Some(p)
            if p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok() => {}
        _ => return Err(HostError::Invalid),
    }
    Ok(())
}

/// The host a route compares against: port removed, trailing dot removed,
/// compared ASCII case-insensitively (so `API.example.com.:443` is
/// `api.example.com`).
pub fn host_name(a: &Authority) -> &str {
    let h = a.host();
    h.strip_suffix('.').unwrap_or(h)
}

/// Whether two authorities name the same origin (case-insensitively, a
/// trailing dot ignored).
pub fn same_authority(a: &Authority, b: &Authority) -> bool {
    host_name(a).eq_ignore_ascii_case(host_name(b)) && a.port_u16() == b.port_u16()
}

/// Path prefixes match whole segments (`/api` matches `/api/x` and `/api`,
/// not `/apix`), so a route never captures a sibling by accident.
/// Whether `path` falls under `prefix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix_matches_as(prefix, path, false)
}

/// Whether `path` falls under `prefix`, optionally ignoring ASCII case.
pub fn prefix_matches_as(prefix: &str, path: &str, case_insensitive: bool) -> bool {
    let (mut p, q) = (prefix.as_bytes(), path.as_bytes());
    // `/admin/` also guards `/admin`: servers serve or redirect it.
    if p.len() > 1 && p.ends_with(b"/") && q.len() == p.len() - 1 {
        p = &p[..p.len() - 1];
    }
    let Some(head) = q.get(..p.len()) else {
        return false;
    };
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    same && (prefix.ends_with('/') || q.len() == p.len() || q[p.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(p: &str) -> Result<String, PathError> {
        canonical_path(p, &PathPolicy::default()).map(|c| c.into_owned())
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_uppercased() {
        assert_eq!(strict("/%61dmin/users").unwrap(), "/admin/users");
        assert_eq!(strict("/a%7e%2D%5F%2e").unwrap(), "/a~-_.");
        assert_eq!(strict("/a%3b%20b").unwrap(), "/a%3B%20b");
        assert_eq!(strict("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(strict("/café").unwrap(), "/caf%C3%A9");
        assert_eq!(strict("/a{b}|^[]\"").unwrap(), "/a%7Bb%7D%7C%5E%5B%5D%22");
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        let p = PathPolicy::default();
        assert!(matches!(
            canonical_path("/api/v1/users:x@y", &p),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn ambiguous_spellings_are_refused_by_default() {
        assert_eq!(strict("/admin%2fusers"), Err(PathError::EncodedSlash));
        assert_eq!(strict("/admin%5Cusers"), Err(PathError::EncodedSlash));
        assert_eq!(strict("/admin\\users"), Err(PathError::EncodedSlash));
        assert_eq!(strict("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(strict("/admin;x=1/users"), Err(PathError::PathParameter));
        assert_eq!(strict("//admin/users"), Err(PathError::EmptySegment));
        assert_eq!(strict("/admin//users"), Err(PathError::EmptySegment));
        assert_eq!(strict("/a/%2e%2E/b"), Err(PathError::DotSegment));
        assert_eq!(strict("/a/.%2e"), Err(PathError::DotSegment));
        assert_eq!(strict("/a/./b"), Err(PathError::DotSegment));
        assert_eq!(strict("/a%"), Err(PathError::BadEscape));
        assert_eq!(strict("/a%4"), Err(PathError::BadEscape));
        assert_eq!(strict("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(strict("*"), Err(PathError::NotAbsolute));
        assert_eq!(strict(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn ordinary_paths_pass() {
        assert_eq!(strict("/").unwrap(), "/");
        assert_eq!(strict("/api/").unwrap(), "/api/");
        assert_eq!(strict("/a/..b/c.d/...").unwrap(), "/a/..b/c.d/...");
    }

    #[test]
    fn settings_relax_each_rule() {
        let p = PathPolicy {
            encoded_slashes: EncodedSlashes::Pass,
            empty_segments: EmptySegments::Merge,
            path_parameters: PathParameters::Allow,
        };
        let c = |s| canonical_path(s, &p).map(|c| c.into_owned());
        assert_eq!(c("/a%2fb%5cc").unwrap(), "/a%2Fb%5Cc");
        assert_eq!(c("/a\\b").unwrap(), "/a%5Cb");
        assert_eq!(c("//a///b/").unwrap(), "/a/b/");
        assert_eq!(c("/a;v=1/b").unwrap(), "/a;v=1/b");
        assert_eq!(c("/a/..;x/b"), Err(PathError::DotSegment));
        assert_eq!(c("/%00"), Err(PathError::EncodedNul));
        assert_eq!(routing_path("/admin;x=1/users;y", &p), "/admin/users");
        assert_eq!(routing_path("/admin%2Fusers", &p), "/admin/users");
        assert_eq!(routing_path("/a%2F%2Fadmin", &p), "/a/admin");
    }

    #[test]
    fn a_parameter_only_segment_is_an_empty_segment() {
        // Tomcat reads `/;/admin` as `/admin`.
        let p = PathPolicy {
            path_parameters: PathParameters::Allow,
            ..Default::default()
        };
        assert_eq!(
            canonical_path("/;/admin/users", &p),
            Err(PathError::EmptySegment)
        );
        assert_eq!(
            canonical_path("/;x=1/admin", &p),
            Err(PathError::EmptySegment)
        );
        assert_eq!(
            canonical_path("/admin/;x", &p),
            Err(PathError::EmptySegment)
        );
    }

    #[test]
    fn encoded_separators_that_pass_are_checked_as_separators() {
        let p = PathPolicy {
            encoded_slashes: EncodedSlashes::Pass,
            ..Default::default()
        };
        assert_eq!(
            canonical_path("/x%2F..%2Fadmin", &p),
            Err(PathError::DotSegment)
        );
        assert_eq!(
            canonical_path("/x%5C..%5Cadmin", &p),
            Err(PathError::DotSegment)
        );
        assert_eq!(
            canonical_path("/x%2F%2Fadmin", &p),
            Err(PathError::EmptySegment)
        );
        assert_eq!(canonical_path("/files/a%2Fb", &p).unwrap(), "/files/a%2Fb");
    }

    #[test]
    fn routes_see_sub_delimiters_decoded() {
        let p = PathPolicy::default();
        assert_eq!(
            canonical_path("/v1/jobs%3aadmin", &p).unwrap(),
            "/v1/jobs%3Aadmin"
        );
        assert_eq!(routing_path("/v1/jobs%3Aadmin", &p), "/v1/jobs:admin");
        assert_eq!(routing_path("/a%40b%2Bc%3D", &p), "/a@b+c=");
        assert!(matches!(routing_path("/a/b%20c", &p), Cow::Borrowed(_)));
    }

    #[test]
    fn canonical_form_is_idempotent() {
        let p = PathPolicy {
            empty_segments: EmptySegments::Merge,
            ..Default::default()
        };
        for s in ["/%61%2e/x", "/caf%c3%a9", "//a//%7e", "/a%25b", "/a%2541"] {
            let once = canonical_path(s, &p).unwrap().into_owned();
            assert_eq!(canonical_path(&once, &p).unwrap(), once, "{s}");
        }
    }

    #[test]
    fn hosts_parse_strictly() {
        assert!(parse_host(b"[").is_err());
        assert!(parse_host(b"").is_err());
        assert!(parse_host(b"a@b").is_err());
        assert!(parse_host(b"a b").is_err());
        assert!(parse_host(b"a:99999").is_err());
        assert!(parse_host(b"a:x").is_err());
        assert!(parse_host(b"[::1]x").is_err());
        assert!(parse_host(b"a:+1").is_err());
        let a = parse_host(b"API.Example.com.:8443").unwrap();
        assert_eq!(host_name(&a), "API.Example.com");
        assert_eq!(a.port_u16(), Some(8443));
        let v6 = parse_host(b"[::1]:443").unwrap();
        assert_eq!(host_name(&v6), "[::1]");
        assert!(same_authority(
            &parse_host(b"a.example.").unwrap(),
            &parse_host(b"A.EXAMPLE").unwrap()
        ));
        assert!(!same_authority(
            &parse_host(b"a.example:1").unwrap(),
            &parse_host(b"a.example:2").unwrap()
        ));
    }
}
