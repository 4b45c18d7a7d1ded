//! The audit log of administrative changes: who (the admin credential's
//! name, or the operating-system user of a CLI command), when, what, to
//! which client. Each record is written to the state store, appended in
//! order (compare-and-set, so two processes never fork the chain), and
//! printed on stdout as one JSON line (valet's logs go to stderr).
//!
//! Each record carries the digest of the one before (`prev`) and its own
//! (`digest`, SHA-256 of the record without it, as compact JSON with sorted
//! keys): a record edited or deleted in the store breaks the chain, and
//! `valet audit verify` says where. Whoever can write the store can also
//! rewrite the whole chain after a point; the digests printed on stdout
//! (shipped to a log system) are the anchors `verify --anchor` checks.

use crate::store::{Store, StoreError};
use serde_json::{Map, Value};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields every record has, and nothing else.
const FIELDS: [&str; 9] = [
    "type",
    "seq",
    "at",
    "who",
    "action",
    "client_id",
    "details",
    "prev",
    "digest",
];

/// How often an append is tried again after another process appended first.
const ATTEMPTS: usize = 64;

/// Who runs a CLI command: `cli:` and the operating-system user.
pub fn cli_actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    match (std::env::var("USER").ok().filter(|u| !u.is_empty()), uid) {
        (Some(u), Some(uid)) => format!("cli:{u} (uid {uid})"),
        (Some(u), None) => format!("cli:{u}"),
        (None, Some(uid)) => format!("cli:uid {uid}"),
        (None, None) => "cli".to_string(),
    }
}

fn digest_of(record: &Map<String, Value>) -> String {
    // serde_json's map keeps keys sorted: one spelling per record.
    let text = serde_json::to_string(record).expect("json");
    crate::digest::sha256_hex(text.as_bytes())
}

/// Appends a record (after the change it describes was made) and prints it
/// on stdout; returns it.
pub fn record(
    store: &dyn Store,
    who: &str,
    action: &str,
    client_id: Option<&str>,
    details: Value,
) -> Result<Value, StoreError> {
    for _ in 0..ATTEMPTS {
        let (seq, prev) = match store.audit_last()? {
            None => (1, GENESIS.to_string()),
            Some((n, line)) => (n.saturating_add(1), stored_digest(&line)),
        };
        let mut r = Map::new();
        r.insert("type".into(), "audit".into());
        r.insert("seq".into(), seq.into());
        r.insert("at".into(), crate::revocation::now().into());
        r.insert("who".into(), who.into());
        r.insert("action".into(), action.into());
        r.insert(
            "client_id".into(),
            client_id.map_or(Value::Null, Value::from),
        );
        r.insert("details".into(), details.clone());
        r.insert("prev".into(), prev.into());
        let d = digest_of(&r);
        r.insert("digest".into(), d.into());
        let line = serde_json::to_string(&r).expect("json");
        if store.audit_append(seq, &line)? {
            print_line(&line);
            return Ok(Value::Object(r));
        }
    }
    Err(StoreError::Failed {
        path: "the audit log".into(),
        message: format!("other processes kept appending first ({ATTEMPTS} attempts)"),
    })
}

/// The digest a stored line claims (a line that does not parse: its own
/// SHA-256, so the chain goes on and `verify` reports the line).
fn stored_digest(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("digest")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| crate::digest::sha256_hex(line.as_bytes()))
}

fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // stdout closed (a pipe gone): the record is in the store.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    /// The last record's digest (GENESIS when there is none).
    pub head: String,
}

/// Checks the chain from the first record: numbers consecutive from 1,
/// each record's fields exactly the record's, its digest its own, its
/// `prev` the digest of the one before; and each anchor `(seq, digest)`
/// (from a log system's copy of the stdout lines) is in it.
pub fn verify(store: &dyn Store, anchors: &[(u64, String)]) -> Result<Verified, String> {
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    let mut digests = std::collections::HashMap::new();
    loop {
        let batch = store.audit(n, 1024).map_err(|e| e.to_string())?;
        if batch.is_empty() {
            break;
        }
        for (seq, line) in batch {
            if seq != n + 1 {
                return Err(format!("record {} is missing (the next is {seq})", n + 1));
            }
            let at = |m: &str| format!("record {seq}: {m}");
            let Ok(Value::Object(mut r)) = serde_json::from_str::<Value>(&line) else {
                return Err(at("not a JSON object"));
            };
            // One spelling per record: duplicate keys, another order or
            // other escapes would let two readers see two records.
            if serde_json::to_string(&r).ok().as_deref() != Some(line.as_str()) {
                return Err(at("not in the one form valet writes (edited)"));
            }
            if r.len() != FIELDS.len() || FIELDS.iter().any(|f| !r.contains_key(*f)) {
                return Err(at("its fields are not a record's"));
            }
            if r.get("seq").and_then(Value::as_u64) != Some(seq) {
                return Err(at("it carries another number"));
            }
            let Some(Value::String(claimed)) = r.remove("digest") else {
                return Err(at("no digest"));
            };
            if digest_of(&r) != claimed {
                return Err(at("its contents do not match its digest (edited)"));
            }
            if r.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
                return Err(at(
                    "its prev is not the digest of the record before (one was edited, deleted or inserted)",
                ));
            }
            if anchors.iter().any(|(n, _)| *n == seq) {
                digests.insert(seq, claimed.clone());
            }
            prev = claimed;
            n = seq;
        }
    }
    for (seq, d) in anchors {
        match digests.get(seq) {
            Some(x) if x.eq_ignore_ascii_case(d) => {}
            Some(x) => {
                return Err(format!(
                    "record {seq} has digest {x}, not the anchor's {d}: the chain was rewritten from there on"
                ))
            }
            None => {
                return Err(format!(
                    "record {seq} of the anchor is not in the log (it has {n}): records were removed from the end"
                ))
            }
        }
    }
    Ok(Verified {
        records: n,
        head: prev,
    })
}
