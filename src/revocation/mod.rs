//! The revocation map: revoked token ids and "revoked before T" cut-offs per
//! client and per subject, loaded from a YAML file and hot-reloaded.
//!
//! Readers take a lock-free snapshot (`ArcSwap`) and do O(1) lookups in
//! sharded maps. A reload parses and builds a whole new set off the request
//! path and swaps it in; a bad file leaves the last good set in force.
//!
//! File format (all lists optional; times are RFC 3339 or unix seconds):
//!
//! ```yaml
//! tokens:            # single tokens, by `jti`; kept until the token expires
//!   - jti: 6f1c...
//!     expires_at: 2026-11-23T13:00:00Z
//! clients:           # every token of a client issued before the time
//!   - client_id: billing
//!     revoked_before: 2026-11-23T12:00:00Z
//! subjects:          # every token of a subject issued before the time
//!   - subject: alice
//!     revoked_before: 2026-11-23T12:00:00Z
//! ```

pub mod time;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::Timestamp;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationFile {
    #[serde(default)]
    pub tokens: Vec<RevokedToken>,
    #[serde(default)]
    pub clients: Vec<ClientCutoff>,
    #[serde(default)]
    pub subjects: Vec<SubjectCutoff>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedToken {
    pub jti: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCutoff {
    pub client_id: String,
    pub revoked_before: Timestamp,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectCutoff {
    pub subject: String,
    pub revoked_before: Timestamp,
}

/// Why a token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Token,
    Client,
    Subject,
}

/// One immutable-by-reload set of revocations.
#[derive(Debug, Default)]
pub struct RevocationSet {
    jtis: DashMap<Box<str>, i64>,
    clients: DashMap<Box<str>, i64>,
    subjects: DashMap<Box<str>, i64>,
}

impl RevocationSet {
    /// Builds a set, dropping token entries that expired before `now`.
    pub fn from_file(f: RevocationFile, now: i64) -> Self {
        let set = RevocationSet::default();
        for t in f.tokens {
            if t.expires_at.0 >= now {
                set.jtis.insert(t.jti.into_boxed_str(), t.expires_at.0);
            }
        }
        for c in f.clients {
            let mut e = set
                .clients
                .entry(c.client_id.into_boxed_str())
                .or_insert(i64::MIN);
            *e = (*e).max(c.revoked_before.0);
        }
        for s in f.subjects {
            let mut e = set
                .subjects
                .entry(s.subject.into_boxed_str())
                .or_insert(i64::MIN);
            *e = (*e).max(s.revoked_before.0);
        }
        set
    }

    /// Checks a token by its id, client, subject and issue time.
    #[inline]
    pub fn check(&self, jti: &str, client_id: &str, sub: &str, iat: i64) -> Option<Revoked> {
        if self.jtis.contains_key(jti) {
            return Some(Revoked::Token);
        }
        if self.clients.get(client_id).is_some_and(|t| iat < *t) {
            return Some(Revoked::Client);
        }
        if self.subjects.get(sub).is_some_and(|t| iat < *t) {
            return Some(Revoked::Subject);
        }
        None
    }

    pub fn len(&self) -> (usize, usize, usize) {
        (self.jtis.len(), self.clients.len(), self.subjects.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0, 0)
    }
}

/// A revocation file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct RevocationError {
    pub file: PathBuf,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// The live revocation map of one gateway.
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    current: ArcSwap<RevocationSet>,
    /// Hash of the bytes last loaded, to skip no-op reloads.
    loaded_digest: std::sync::Mutex<Option<[u8; 32]>>,
}

const NEW_FILE: &str = "\
# valet revocation list. valet reloads this file when it changes.
# tokens: revoked token ids (jti) with the token's expiry, after which the entry is pruned.
# clients / subjects: every token issued before `revoked_before` is rejected.
tokens: []
clients: []
subjects: []
";

/// Now, in unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Revocations {
    /// Loads the file at start-up, creating an empty one if it does not exist.
    /// A file that exists but is invalid is an error: valet does not start
    /// without the revocations it was told about.
    pub fn open(path: &Path) -> Result<Self, RevocationError> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(path, NEW_FILE).map_err(|e| RevocationError {
                file: path.to_path_buf(),
                position: None,
                message: format!("cannot create the revocation file: {e}"),
            })?;
            tracing::info!(path = %path.display(), "created an empty revocation file");
        }
        let r = Revocations {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(RevocationSet::default()),
            loaded_digest: std::sync::Mutex::new(None),
        };
        r.reload()?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The set in force now; cheap and lock-free.
    #[inline]
    pub fn current(&self) -> arc_swap::Guard<Arc<RevocationSet>> {
        self.current.load()
    }

    /// Re-reads the file. On error the current set stays in force.
    /// Returns `Ok(false)` if the file is unchanged since the last load.
    pub fn reload(&self) -> Result<bool, RevocationError> {
        let err = |position, message: String| RevocationError {
            file: self.path.clone(),
            position,
            message,
        };
        let bytes =
            std::fs::read(&self.path).map_err(|e| err(None, format!("cannot read: {e}")))?;
        let digest: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
            .as_ref()
            .try_into()
            .expect("sha256 is 32 bytes");
        if *self.loaded_digest.lock().expect("not poisoned") == Some(digest) {
            return Ok(false);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // An empty file is what a torn write looks like; never treat it as "no revocations".
            return Err(err(
                None,
                "the file is empty; write `tokens: []` for an empty list".into(),
            ));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| err(None, format!("not UTF-8: {e}")))?;
        let parsed: RevocationFile = serde_yaml::from_str(text).map_err(|e| {
            let mut m = e.to_string();
            if let Some(i) = m.find(" at line ") {
                m.truncate(i);
            }
            err(e.location().map(|l| (l.line(), l.column())), m)
        })?;
        let set = RevocationSet::from_file(parsed, now());
        self.current.store(Arc::new(set));
        *self.loaded_digest.lock().expect("not poisoned") = Some(digest);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> RevocationSet {
        RevocationSet::from_file(serde_yaml::from_str(yaml).unwrap(), 1000)
    }

    #[test]
    fn revoked_jti_is_found_and_expired_entries_are_pruned() {
        let s = file("tokens:\n  - {jti: a, expires_at: 2000}\n  - {jti: old, expires_at: 999}\n");
        assert_eq!(s.check("a", "c", "s", 500), Some(Revoked::Token));
        assert_eq!(s.check("b", "c", "s", 500), None);
        assert_eq!(s.len().0, 1, "the expired entry is pruned");
    }

    #[test]
    fn cutoffs_reject_tokens_issued_before_them_only() {
        let s = file("clients:\n  - {client_id: c, revoked_before: 900}\nsubjects:\n  - {subject: alice, revoked_before: '1970-01-01T00:15:00Z'}\n");
        assert_eq!(s.check("x", "c", "bob", 899), Some(Revoked::Client));
        assert_eq!(s.check("x", "c", "bob", 900), None);
        assert_eq!(s.check("x", "d", "alice", 899), Some(Revoked::Subject));
        assert_eq!(s.check("x", "d", "alice", 900), None);
    }

    #[test]
    fn invalid_reload_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        std::fs::write(&path, "tokens:\n  - {jti: a, expires_at: 4102444800}\n").unwrap();
        let r = Revocations::open(&path).unwrap();
        assert!(r.current().check("a", "", "", 0).is_some());
        std::fs::write(&path, "tokens:\n  - {jti: a, expires_at: 4102444800\n").unwrap();
        let e = r.reload().unwrap_err();
        assert!(e.position.is_some(), "{e}");
        std::fs::write(&path, "").unwrap();
        assert!(r.reload().is_err());
        std::fs::write(&path, "tokenz: []\n").unwrap();
        assert!(r.reload().unwrap_err().message.contains("unknown field"));
        assert!(
            r.current().check("a", "", "", 0).is_some(),
            "old set still in force"
        );
    }
}
