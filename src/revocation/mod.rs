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
//! families:          # refresh-token families (and the access tokens issued from them)
//!   - family: 9a0b...
//!     expires_at: 2026-11-24T12:00:00Z
//! issuers:           # tokens of trusted external issuers, in their namespace
//!   - issuer: https://login.example.com/realms/acme
//!     tokens: [{jti: 3c2a..., expires_at: 2026-11-23T13:00:00Z}]
//!     clients: [{client_id: billing, revoked_before: 2026-11-23T12:00:00Z}]
//!     subjects: [{subject: alice, revoked_before: 2026-11-23T12:00:00Z}]
//! ```
//!
//! valet's own changes ([`Revocations::apply`]) are durable before they
//! return: lock, read and merge, write a temporary file, fsync, rename, fsync
//! the directory. Several processes may share the file.

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
    #[serde(default)]
    pub families: Vec<RevokedFamily>,
    /// Tokens of trusted external issuers, in each issuer's own namespace
    /// (its `jti`, client ids and subjects never meet valet's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerRevocations>,
}

/// Revocations of one trusted issuer's tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerRevocations {
    pub issuer: String,
    #[serde(default)]
    pub tokens: Vec<RevokedToken>,
    #[serde(default)]
    pub clients: Vec<ClientCutoff>,
    #[serde(default)]
    pub subjects: Vec<SubjectCutoff>,
}

/// The key of `value` (a jti, client id or subject) of `issuer`'s tokens
/// in the revocation map. An issuer has no control characters, so no
/// scoped key equals one of valet's own.
pub fn scoped(issuer: &str, value: &str) -> String {
    format!("{issuer}\n{value}")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedToken {
    pub jti: String,
    pub expires_at: Timestamp,
    /// Set for refresh tokens that were used (rotated), not revoked outright:
    /// presenting one again after the grace period is reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<Timestamp>,
    /// The same instant in milliseconds: the grace period is compared at
    /// this precision (whole seconds made `refresh_grace: 0s` a second long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at_ms: Option<i64>,
}

impl RevokedToken {
    /// When it was rotated, in milliseconds (older files: whole seconds).
    pub fn rotated_ms(&self) -> Option<i64> {
        self.rotated_at_ms
            .or(self.rotated_at.map(|t| t.0.saturating_mul(1000)))
    }
}

/// What presenting a refresh token meant, decided under the store's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// First use: recorded as rotated now; a new pair may be issued.
    First,
    /// Used before, within the grace period of its first use (which is not
    /// moved): a pair may be issued.
    InGrace,
    /// Used before, after the grace period: reuse.
    Reuse,
    /// Revoked outright (not by rotation).
    Revoked,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedFamily {
    pub family: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCutoff {
    pub client_id: String,
    pub revoked_before: Timestamp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    Family,
}

/// What a revoked token id entry records.
#[derive(Debug, Clone, Copy)]
pub struct TokenEntry {
    pub expires_at: i64,
    pub rotated_at: Option<i64>,
}

/// One change made by valet itself (endpoint, command, admin API, rotation).
#[derive(Debug, Clone)]
pub enum Change {
    Token(RevokedToken),
    Family(RevokedFamily),
    Client(ClientCutoff),
    Subject(SubjectCutoff),
}

/// One immutable-by-reload set of revocations.
#[derive(Debug, Default)]
pub struct RevocationSet {
    jtis: DashMap<Box<str>, TokenEntry>,
    clients: DashMap<Box<str>, i64>,
    subjects: DashMap<Box<str>, i64>,
    families: DashMap<Box<str>, i64>,
}

impl RevocationSet {
    /// Builds a set, dropping token entries that expired before `now`.
    pub fn from_file(f: RevocationFile, now: i64) -> Self {
        let set = RevocationSet::default();
        let mut f = f;
        for i in std::mem::take(&mut f.issuers) {
            let iss = &i.issuer;
            f.tokens.extend(i.tokens.into_iter().map(|mut t| {
                t.jti = scoped(iss, &t.jti);
                t
            }));
            f.clients.extend(i.clients.into_iter().map(|mut c| {
                c.client_id = scoped(iss, &c.client_id);
                c
            }));
            f.subjects.extend(i.subjects.into_iter().map(|mut s| {
                s.subject = scoped(iss, &s.subject);
                s
            }));
        }
        for t in f.tokens {
            if t.expires_at.0 >= now {
                let entry = TokenEntry {
                    expires_at: t.expires_at.0,
                    rotated_at: t.rotated_ms().map(|ms| ms.div_euclid(1000)),
                };
                set.jtis.insert(t.jti.into_boxed_str(), entry);
            }
        }
        for f in f.families {
            if f.expires_at.0 >= now {
                set.families
                    .insert(f.family.into_boxed_str(), f.expires_at.0);
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

    /// Checks a token by its id, client, subject, issue time and refresh family.
    #[inline]
    pub fn check(
        &self,
        jti: Option<&str>,
        client_id: &str,
        sub: &str,
        iat: i64,
        family: Option<&str>,
    ) -> Option<Revoked> {
        if jti.is_some_and(|j| self.jtis.contains_key(j)) {
            return Some(Revoked::Token);
        }
        if family.is_some_and(|f| self.families.contains_key(f)) {
            return Some(Revoked::Family);
        }
        if self.clients.get(client_id).is_some_and(|t| iat < *t) {
            return Some(Revoked::Client);
        }
        if self.subjects.get(sub).is_some_and(|t| iat < *t) {
            return Some(Revoked::Subject);
        }
        None
    }

    /// The "revoked before" time of a client, if any.
    pub fn client_cutoff(&self, client_id: &str) -> Option<i64> {
        self.clients.get(client_id).map(|t| *t)
    }

    /// The "revoked before" time of a subject, if any.
    pub fn subject_cutoff(&self, sub: &str) -> Option<i64> {
        self.subjects.get(sub).map(|t| *t)
    }

    /// The entry for a revoked or rotated token id.
    pub fn token(&self, jti: &str) -> Option<TokenEntry> {
        self.jtis.get(jti).map(|e| *e)
    }

    /// Entries by kind: (tokens, clients, subjects, families).
    pub fn len(&self) -> (usize, usize, usize, usize) {
        (
            self.jtis.len(),
            self.clients.len(),
            self.subjects.len(),
            self.families.len(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0, 0, 0)
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
    /// Held from reading (or writing) the file until the set is stored, by
    /// reloads and by this process's writes alike. Without it a reload that
    /// read the file just before a write could store its older set after
    /// the write's, un-revoking an acknowledged revocation until the next
    /// change. (Other processes' writes merge what is on disk, under the
    /// file lock, so they carry ours.)
    order: std::sync::Mutex<()>,
}

const HEADER: &str = "\
# valet revocation list. valet reloads this file when it changes, and writes it
# (durably, under a lock) when it revokes tokens itself.
# tokens: revoked token ids (jti) with the token's expiry, after which the entry is pruned.
# clients / subjects: every token issued before `revoked_before` is rejected.
# families: refresh-token families, with every access token issued from them.
";

const NEW_FILE: &str = "tokens: []\nclients: []\nsubjects: []\nfamilies: []\n";

/// Now, in unix seconds.
/// Milliseconds since the unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
            std::fs::write(path, format!("{HEADER}{NEW_FILE}")).map_err(|e| RevocationError {
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
            order: std::sync::Mutex::new(()),
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
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let bytes =
            std::fs::read(&self.path).map_err(|e| err(None, format!("cannot read: {e}")))?;
        let digest: [u8; 32] = crate::digest::sha256(&bytes);
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
        let parsed = self.parse(&bytes)?;
        let set = RevocationSet::from_file(parsed, now());
        self.current.store(Arc::new(set));
        *self.loaded_digest.lock().expect("not poisoned") = Some(digest);
        Ok(true)
    }

    fn error(&self, position: Option<(usize, usize)>, message: String) -> RevocationError {
        RevocationError {
            file: self.path.clone(),
            position,
            message,
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<RevocationFile, RevocationError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| self.error(None, format!("not UTF-8: {e}")))?;
        serde_yaml::from_str(text).map_err(|e| {
            let mut m = e.to_string();
            if let Some(i) = m.find(" at line ") {
                m.truncate(i);
            }
            self.error(e.location().map(|l| (l.line(), l.column())), m)
        })
    }

    /// Durably records `changes`, then puts them in force. Blocking I/O: call
    /// it off the async workers. On error nothing is in force that was not
    /// already, and the file is as it was.
    pub fn apply(&self, changes: &[Change]) -> Result<(), RevocationError> {
        self.apply_inner(changes, |_| Ok::<(), ()>(())).map(|_| ())
    }

    /// Records a single-use id (an assertion's) durably. `Ok(false)` if it
    /// was recorded before: checked under the file lock, so of two
    /// concurrent uses (in this process or another) exactly one wins.
    pub fn record_once(&self, t: RevokedToken) -> Result<bool, RevocationError> {
        let jti = t.jti.clone();
        let gate = |file: &RevocationFile| {
            let used = file
                .tokens
                .iter()
                .any(|t| t.jti == jti && t.expires_at.0 >= now());
            if used {
                Err(())
            } else {
                Ok(())
            }
        };
        Ok(self.apply_inner(&[Change::Token(t)], gate)?.is_ok())
    }

    /// Rotates refresh token `jti` (valid until `expires_at`) at `now_ms`,
    /// in one check-and-set under the file lock: of two concurrent uses, in
    /// this process or another, exactly one is `First`. A use within
    /// `grace_ms` of the first is `InGrace` (strictly less: a grace of zero
    /// never yields a pair again), and leaves the first use's time as it was.
    pub fn rotate(
        &self,
        jti: &str,
        expires_at: i64,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, RevocationError> {
        let gate = |file: &RevocationFile| match file.tokens.iter().find(|t| t.jti == jti) {
            None => Ok(()),
            Some(t) => Err(match t.rotated_ms() {
                None => Rotation::Revoked,
                // `now_ms` was read before the lock was taken, so a use that
                // began first may be recorded second: its time can be
                // before the first use's. That counts as no time at all
                // (never negative, which would be "in grace" even at zero).
                Some(at) if now_ms.saturating_sub(at).max(0) < grace_ms => Rotation::InGrace,
                Some(_) => Rotation::Reuse,
            }),
        };
        let change = Change::Token(RevokedToken {
            jti: jti.to_string(),
            expires_at: Timestamp(expires_at),
            rotated_at: Some(Timestamp(now_ms.div_euclid(1000))),
            rotated_at_ms: Some(now_ms),
        });
        Ok(match self.apply_inner(&[change], gate)? {
            Ok(()) => Rotation::First,
            Err(r) => r,
        })
    }

    /// Locks the file, reads and merges it, asks `gate` whether to go on
    /// (its `Err` is returned as is, nothing written), writes durably and
    /// puts the result in force.
    fn apply_inner<E>(
        &self,
        changes: &[Change],
        gate: impl FnOnce(&RevocationFile) -> Result<(), E>,
    ) -> Result<Result<(), E>, RevocationError> {
        let io = |what: &str, e: std::io::Error| self.error(None, format!("{what}: {e}"));
        // One writer at a time, across processes sharing the file; and no
        // reload of this process between our read and our store.
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let lock = crate::durable::lock(&self.path).map_err(|e| io("cannot lock", e))?;

        // Merge into what is on disk now (another process may have written).
        let mut file = match std::fs::read(&self.path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => {
                return Err(self.error(
                    None,
                    "the file is empty; refusing to overwrite what may be a torn write".into(),
                ))
            }
            Ok(b) => self.parse(&b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevocationFile::default(),
            Err(e) => return Err(io("cannot read", e)),
        };
        if let Err(e) = gate(&file) {
            return Ok(Err(e));
        }
        for c in changes {
            match c.clone() {
                Change::Token(t) => {
                    file.tokens.retain(|o| o.jti != t.jti);
                    file.tokens.push(t);
                }
                Change::Family(f) => {
                    file.families.retain(|o| o.family != f.family);
                    file.families.push(f);
                }
                Change::Client(c) => {
                    match file.clients.iter_mut().find(|o| o.client_id == c.client_id) {
                        Some(o) => o.revoked_before = o.revoked_before.max(c.revoked_before),
                        None => file.clients.push(c),
                    }
                }
                Change::Subject(s) => {
                    match file.subjects.iter_mut().find(|o| o.subject == s.subject) {
                        Some(o) => o.revoked_before = o.revoked_before.max(s.revoked_before),
                        None => file.subjects.push(s),
                    }
                }
            }
        }
        let now = now();
        file.tokens.retain(|t| t.expires_at.0 >= now);
        file.families.retain(|f| f.expires_at.0 >= now);
        let body = serde_yaml::to_string(&file)
            .map_err(|e| self.error(None, format!("cannot serialize: {e}")))?;
        let text = format!("{HEADER}{body}");

        crate::durable::replace(&lock, &self.path, text.as_bytes(), 0o644)
            .map_err(|e| io("cannot write the temporary file or replace the file", e))?;

        let digest = crate::digest::sha256(text.as_bytes());
        self.current
            .store(Arc::new(RevocationSet::from_file(file, now)));
        *self.loaded_digest.lock().expect("not poisoned") =
            Some(digest.as_ref().try_into().expect("32 bytes"));
        drop(lock);
        Ok(Ok(()))
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
        assert_eq!(
            s.check(Some("a"), "c", "s", 500, None),
            Some(Revoked::Token)
        );
        assert_eq!(s.check(Some("b"), "c", "s", 500, None), None);
        assert_eq!(s.len().0, 1, "the expired entry is pruned");
    }

    #[test]
    fn cutoffs_reject_tokens_issued_before_them_only() {
        let s = file("clients:\n  - {client_id: c, revoked_before: 900}\nsubjects:\n  - {subject: alice, revoked_before: '1970-01-01T00:15:00Z'}\n");
        assert_eq!(
            s.check(Some("x"), "c", "bob", 899, None),
            Some(Revoked::Client)
        );
        assert_eq!(s.check(Some("x"), "c", "bob", 900, None), None);
        assert_eq!(
            s.check(Some("x"), "d", "alice", 899, None),
            Some(Revoked::Subject)
        );
        assert_eq!(s.check(Some("x"), "d", "alice", 900, None), None);
    }

    #[test]
    fn invalid_reload_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        std::fs::write(&path, "tokens:\n  - {jti: a, expires_at: 4102444800}\n").unwrap();
        let r = Revocations::open(&path).unwrap();
        assert!(r.current().check(Some("a"), "", "", 0, None).is_some());
        std::fs::write(&path, "tokens:\n  - {jti: a, expires_at: 4102444800\n").unwrap();
        let e = r.reload().unwrap_err();
        assert!(e.position.is_some(), "{e}");
        std::fs::write(&path, "").unwrap();
        assert!(r.reload().is_err());
        std::fs::write(&path, "tokenz: []\n").unwrap();
        assert!(r.reload().unwrap_err().message.contains("unknown field"));
        assert!(
            r.current().check(Some("a"), "", "", 0, None).is_some(),
            "old set still in force"
        );
    }

    #[test]
    fn applied_changes_are_on_disk_merged_and_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - {jti: operator-added, expires_at: 4102444800}\n",
        )
        .unwrap();
        let r = Revocations::open(&path).unwrap();
        r.apply(&[
            Change::Token(RevokedToken {
                jti: "t1".into(),
                expires_at: Timestamp(4102444800),
                rotated_at: Some(Timestamp(1000)),
                rotated_at_ms: None,
            }),
            Change::Family(RevokedFamily {
                family: "f1".into(),
                expires_at: Timestamp(4102444800),
            }),
            Change::Client(ClientCutoff {
                client_id: "c".into(),
                revoked_before: Timestamp(500),
            }),
        ])
        .unwrap();
        let set = r.current();
        assert_eq!(set.check(Some("t1"), "", "", 0, None), Some(Revoked::Token));
        assert_eq!(set.token("t1").unwrap().rotated_at, Some(1000));
        assert_eq!(
            set.check(Some("other"), "", "", 0, Some("f1")),
            Some(Revoked::Family)
        );
        assert_eq!(
            set.check(Some("operator-added"), "", "", 0, None),
            Some(Revoked::Token),
            "merged, not replaced"
        );
        // What is on disk is what is in force.
        let fresh = Revocations::open(&path).unwrap();
        assert_eq!(fresh.current().len(), (2, 1, 0, 1));
        assert_eq!(
            fresh.current().check(Some("x"), "c", "", 499, None),
            Some(Revoked::Client)
        );
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        let r = Revocations::open(&path).unwrap();
        // A directory where the temporary file must go: the write fails, even as root.
        std::fs::create_dir(dir.path().join("rev.yaml.tmp")).unwrap();
        let before = std::fs::read(&path).unwrap();
        let e = r
            .apply(&[Change::Token(RevokedToken {
                jti: "t1".into(),
                expires_at: Timestamp(4102444800),
                rotated_at: None,
                rotated_at_ms: None,
            })])
            .unwrap_err();
        assert!(e.message.contains("temporary file"), "{e}");
        assert!(r.current().check(Some("t1"), "", "", 0, None).is_none());
        assert_eq!(before, std::fs::read(&path).unwrap());
    }

    #[test]
    fn rotation_is_decided_once_under_the_lock_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.yaml");
        std::fs::write(&path, "tokens: []\n").unwrap();
        // Two stores on one file: two replicas, neither having reloaded.
        let a = Revocations::open(&path).unwrap();
        let b = Revocations::open(&path).unwrap();
        let exp = now() + 3600;
        let t0 = now_ms();
        assert_eq!(a.rotate("rt", exp, t0, 5000).unwrap(), Rotation::First);
        assert_eq!(
            b.rotate("rt", exp, t0 + 10, 5000).unwrap(),
            Rotation::InGrace
        );
        // The in-grace use did not move the first use's time.
        assert_eq!(
            b.rotate("rt", exp, t0 + 4999, 5000).unwrap(),
            Rotation::InGrace
        );
        assert_eq!(
            a.rotate("rt", exp, t0 + 5000, 5000).unwrap(),
            Rotation::Reuse
        );
        // A grace of zero: the very next use is reuse, even 1 ms later.
        assert_eq!(a.rotate("rt2", exp, t0, 0).unwrap(), Rotation::First);
        assert_eq!(b.rotate("rt2", exp, t0, 0).unwrap(), Rotation::Reuse);
        // A use whose clock was read first but whose write came second (it
        // waited for the lock) is reuse too, not "-1 ms, in grace".
        assert_eq!(a.rotate("rt3", exp, t0 + 1, 0).unwrap(), Rotation::First);
        assert_eq!(b.rotate("rt3", exp, t0, 0).unwrap(), Rotation::Reuse);
        // Revoked outright.
        a.apply(&[Change::Token(RevokedToken {
            jti: "gone".into(),
            expires_at: Timestamp(exp),
            rotated_at: None,
            rotated_at_ms: None,
        })])
        .unwrap();
        assert_eq!(b.rotate("gone", exp, t0, 5000).unwrap(), Rotation::Revoked);
        // Millisecond precision survives the file.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("rotated_at_ms: {t0}")), "{text}");
    }
}
