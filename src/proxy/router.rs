//! Route selection: optional host, then the longest matching path prefix.
//! Prefixes match on segment boundaries (`/api` matches `/api` and `/api/x`,
//! not `/apix`), so a route never captures a sibling by accident.

use crate::request_target::prefix_matches_as;

/// One route as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Lowercase, without a trailing dot.
    pub host: Option<&'a str>,
    pub prefix: &'a str,
    pub case_insensitive: bool,
}

/// Index of the best route for `host` (port and trailing dot removed) and
/// the canonical `path`. Routes with a host beat routes without one; then
/// the longest prefix wins.
pub fn select<'a>(
    routes: impl Iterator<Item = Candidate<'a>>,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    let mut best: Option<(usize, (bool, usize))> = None;
    for (i, r) in routes.enumerate() {
        let host_ok = match r.host {
            None => true,
            Some(h) => host.is_some_and(|x| x.eq_ignore_ascii_case(h)),
        };
        if !host_ok || !prefix_matches_as(r.prefix, path, r.case_insensitive) {
            continue;
        }
        let rank = (r.host.is_some(), r.prefix.len());
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_target::prefix_matches;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/api/", "/api"));
        assert!(!prefix_matches("/api/", "/apix"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn host_routes_win_then_longest_prefix() {
        let c = |host, prefix| Candidate {
            host,
            prefix,
            case_insensitive: false,
        };
        let routes = [c(None, "/"), c(None, "/api"), c(Some("a.example"), "/")];
        let sel = |h, p| select(routes.iter().copied(), h, p);
        assert_eq!(sel(None, "/api/x"), Some(1));
        assert_eq!(sel(Some("a.example"), "/api/x"), Some(2));
        assert_eq!(sel(Some("b.example"), "/z"), Some(0));
    }

    #[test]
    fn case_insensitive_prefixes_match_any_case() {
        assert!(prefix_matches_as("/admin", "/ADMIN/users", true));
        assert!(!prefix_matches_as("/admin", "/ADMIN/users", false));
        assert!(!prefix_matches_as("/admin", "/ADMINX", true));
        assert!(!prefix_matches_as("/admin", "/adm", true));
    }
}
