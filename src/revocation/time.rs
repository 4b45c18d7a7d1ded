//! Timestamps in the revocation file: RFC 3339 (`2026-11-23T12:00:00Z`,
//! offsets allowed) or unix seconds. Stored as unix seconds.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// Seconds since the unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 date-time into unix seconds (fractions are dropped),
/// with the `time` crate's RFC 3339 parser. A space may stand for the `T`
/// (RFC 3339 §5.6 allows it, and valet always accepted it).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let err = || format!("`{s}` is not an RFC 3339 time such as 2026-11-23T12:00:00Z");
    let spaced;
    let s2 = match s.as_bytes().get(10) {
        Some(b' ') if s.is_char_boundary(10) && s.is_char_boundary(11) => {
            spaced = format!("{}T{}", &s[..10], &s[11..]);
            spaced.as_str()
        }
        _ => s,
    };
    time::OffsetDateTime::parse(s2, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| err())
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ`; `None` outside the
/// years RFC 3339 can write (0000 to 9999).
pub fn format_rfc3339(t: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or unix seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("time out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                parse_rfc3339(v).map(Timestamp).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match format_rfc3339(self.0) {
            Some(text) => s.serialize_str(&text),
            // Out of RFC 3339's years: unix seconds, which loads back too.
            None => s.serialize_i64(self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_against_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("2026-11-23T12:00:00Z").unwrap(), 1795435200);
        assert_eq!(
            parse_rfc3339("2026-11-23T14:00:00+02:00").unwrap(),
            1795435200
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.123Z").unwrap(),
            951782400
        );
        assert_eq!(format_rfc3339(1795435200).unwrap(), "2026-11-23T12:00:00Z");
        assert_eq!(format_rfc3339(951782400).unwrap(), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn multibyte_input_is_refused_not_a_panic() {
        // Found by fuzzing (fuzz/corpus/rfc3339/crash-*).
        assert!(parse_rfc3339("2026-11-23T12:00:00.123+0\u{185}30").is_err());
        assert!(parse_rfc3339("2026-11-23T12:00:0\u{e9}Z").is_err());
    }

    #[test]
    fn spellings_valet_always_took_still_parse() {
        assert_eq!(parse_rfc3339("2026-11-23 12:00:00Z").unwrap(), 1795435200);
        assert_eq!(parse_rfc3339("2026-11-23t12:00:00z").unwrap(), 1795435200);
        assert_eq!(
            parse_rfc3339("2026-11-23T10:00:00-02:00").unwrap(),
            1795435200
        );
        assert_eq!(format_rfc3339(i64::MAX), None);
    }

    #[test]
    fn malformed_times_are_rejected() {
        for bad in [
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T12:00:00",
            "2026-11-23T12:00:00+0200",
            "yesterday",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
