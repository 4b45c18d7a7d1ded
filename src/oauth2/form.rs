//! `application/x-www-form-urlencoded` request bodies (RFC 6749 Appendix B),
//! parsed by `form_urlencoded`. A repeated parameter is an error (§3.2), and
//! an empty value counts as absent (§3.1).

use super::error::OAuthError;
use std::collections::HashMap;

pub struct Form(HashMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, OAuthError> {
        let mut map = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in form_urlencoded::parse(body) {
            if !seen.insert(k.to_string()) {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter `{k}` is repeated"
                )));
            }
            if !v.is_empty() {
                map.insert(k.into_owned(), v.into_owned());
            }
        }
        Ok(Form(map))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn require(&self, k: &str) -> Result<&str, OAuthError> {
        self.get(k)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("parameter `{k}` is required")))
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn decode_component(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused_and_empty_ones_ignored() {
        assert!(Form::parse(b"a=1&a=2").is_err());
        let f = Form::parse(b"a=1&b=&c=x%2By+z").unwrap();
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), None);
        assert_eq!(f.get("c"), Some("x+y z"));
    }

    #[test]
    fn components_are_form_decoded() {
        assert_eq!(decode_component("a%3Ab%25c%2Bd+e").unwrap(), "a:b%c+d e");
        assert!(decode_component("%ff").is_none());
    }
}
