//! Route selection: optional host, then the longest matching path prefix.
//! Prefixes match on segment boundaries (`/api` matches `/api` and `/api/x`,
//! not `/apix`), so a route never captures a sibling by accident.

/// Whether `path` falls under `prefix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// Index of the best route among `(host, prefix)` pairs for `host` and `path`.
/// Routes with a host beat routes without one; then the longest prefix wins.
pub fn select<'a>(
    routes: impl Iterator<Item = (Option<&'a str>, &'a str)>,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    let mut best: Option<(usize, (bool, usize))> = None;
    for (i, (rhost, prefix)) in routes.enumerate() {
        let host_ok = match rhost {
            None => true,
            Some(h) => host.is_some_and(|x| x.eq_ignore_ascii_case(h)),
        };
        if !host_ok || !prefix_matches(prefix, path) {
            continue;
        }
        let rank = (rhost.is_some(), prefix.len());
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
}

/// Rejects paths with dot-segments (plain or percent-encoded): a route is
/// chosen by prefix, and `/public/../admin` must not reach `/admin` upstream
/// while being authorised as `/public`.
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|seg| {
        let lower = seg.to_ascii_lowercase();
        let decoded = lower.replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn host_routes_win_then_longest_prefix() {
        let routes = [(None, "/"), (None, "/api"), (Some("a.example"), "/")];
        let sel = |h, p| select(routes.iter().copied(), h, p);
        assert_eq!(sel(None, "/api/x"), Some(1));
        assert_eq!(sel(Some("a.example"), "/api/x"), Some(2));
        assert_eq!(sel(Some("b.example"), "/z"), Some(0));
    }

    #[test]
    fn dot_segments_are_detected_encoded_or_not() {
        assert!(has_dot_segments("/a/../b"));
        assert!(has_dot_segments("/a/%2E%2e/b"));
        assert!(has_dot_segments("/a/./b"));
        assert!(!has_dot_segments("/a/..b/c.d"));
    }
}
