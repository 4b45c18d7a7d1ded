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
//! The file is the operator's: valet reads it and never writes it. valet's
//! own changes ([`Revocations::apply`]) go to the state store
//! ([`crate::store`]) and are durable before they return; every process on
//! the store follows its change log ([`Revocations::follow`]).

pub mod time;

use crate::store::{Position, Record, Store};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
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

/// What presenting a refresh token meant (the store's check-and-set).
pub use crate::store::Rotation;

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

    /// Adds one record, in place (readers see it at once). Cut-offs only
    /// move later.
    pub fn insert(&self, r: &Record) {
        match r {
            Record::Token { jti, expires_at } => {
                let mut e = self.jtis.entry(jti.as_str().into()).or_insert(TokenEntry {
                    expires_at: *expires_at,
                    rotated_at: None,
                });
                e.expires_at = e.expires_at.max(*expires_at);
            }
            Record::Family { family, expires_at } => {
                let mut e = self
                    .families
                    .entry(family.as_str().into())
                    .or_insert(*expires_at);
                *e = (*e).max(*expires_at);
            }
            Record::Client { client_id, before } => {
                let mut e = self
                    .clients
                    .entry(client_id.as_str().into())
                    .or_insert(*before);
                *e = (*e).max(*before);
            }
            Record::Subject { subject, before } => {
                let mut e = self
                    .subjects
                    .entry(subject.as_str().into())
                    .or_insert(*before);
                *e = (*e).max(*before);
            }
        }
    }

    /// Adds every entry of `other`, in place.
    pub fn merge(&self, other: &RevocationSet) {
        // An entry held already is updated in place: its key is not copied
        // (a resync merges a million entries this set mostly holds).
        for e in other.jtis.iter() {
            match self.jtis.get_mut(e.key()) {
                Some(mut m) => m.expires_at = m.expires_at.max(e.value().expires_at),
                None => {
                    let mut m = self.jtis.entry(e.key().clone()).or_insert(*e.value());
                    m.expires_at = m.expires_at.max(e.value().expires_at);
                }
            }
        }
        for (mine, theirs) in [
            (&self.families, &other.families),
            (&self.clients, &other.clients),
            (&self.subjects, &other.subjects),
        ] {
            for e in theirs.iter() {
                match mine.get_mut(e.key()) {
                    Some(mut m) => *m = (*m).max(*e.value()),
                    None => {
                        let mut m = mine.entry(e.key().clone()).or_insert(*e.value());
                        *m = (*m).max(*e.value());
                    }
                }
            }
        }
    }

    /// Drops token and family entries that expired before `now`.
    pub fn prune(&self, now: i64) {
        self.jtis.retain(|_, e| e.expires_at >= now);
        self.families.retain(|_, e| *e >= now);
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

/// The live revocation map of one gateway: the operator's file (read,
/// never written) merged with valet's own revocations, which live in the
/// state store and are followed from its change log.
pub struct Revocations {
    path: PathBuf,
    store: Arc<dyn Store>,
    /// The operator's file merged with `own`: what requests check.
    current: ArcSwap<RevocationSet>,
    /// valet's own revocations as read from the store (any process's).
    own: RevocationSet,
    /// The store's log position `own` reflects.
    position: AtomicI64,
    /// The store was read whole at least once (`own` holds its
    /// revocations). A validator may start without it, not ready.
    synced: std::sync::atomic::AtomicBool,
    /// Hash of the file bytes last loaded, to skip no-op reloads.
    loaded_digest: std::sync::Mutex<Option<[u8; 32]>>,
    /// Held while `current` is rebuilt or added to, by reloads, this
    /// process's writes and the follower alike: a reload that built its set
    /// from an older `own` can never store it after a newer addition.
    order: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("path", &self.path)
            .field("position", &self.position)
            .finish()
    }
}

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

/// The store's name for a change.
fn record(c: &Change) -> Record {
    match c {
        Change::Token(t) => Record::Token {
            jti: t.jti.clone(),
            expires_at: t.expires_at.0,
        },
        Change::Family(f) => Record::Family {
            family: f.family.clone(),
            expires_at: f.expires_at.0,
        },
        Change::Client(c) => Record::Client {
            client_id: c.client_id.clone(),
            before: c.revoked_before.0,
        },
        Change::Subject(s) => Record::Subject {
            subject: s.subject.clone(),
            before: s.revoked_before.0,
        },
    }
}

/// The marker of the one import of a revocation file's entries.
const IMPORT_MARKER: &str = "revocation-file";

/// Changes read from the log per call.
const FOLLOW_BATCH: usize = 10_000;

/// What following the store's log found.
#[derive(Debug, Default)]
pub struct Followed {
    /// Revocations applied.
    pub revocations: usize,
    /// OAuth 1.0 tokens changed: (provider, subject), to read again.
    pub oauth1_tokens: Vec<(String, String)>,
    /// Managed clients changed: read the clients again.
    pub clients: bool,
    /// The log could not be resumed and the store was read whole: read
    /// whole whatever else follows it.
    pub whole: bool,
    /// That was the first read (a validator started without the store),
    /// not a resync.
    pub first: bool,
}

/// The embedded store at `path`, for writing or only for reading.
pub fn open_store(path: &Path, read_only: bool) -> Result<Arc<dyn Store>, RevocationError> {
    use crate::store::sqlite::SqliteStore;
    let opened = if read_only {
        SqliteStore::open_read_only(path)
    } else {
        SqliteStore::open(path)
    };
    match opened {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => Err(store_error(e)),
    }
}

/// A store failure as a revocation error (the store's message names its
/// file already).
pub fn store_error(e: crate::store::StoreError) -> RevocationError {
    RevocationError {
        file: PathBuf::from("the state store"),
        position: None,
        message: e.to_string(),
    }
}

impl Revocations {
    /// Opens the state store at `store_path` and the operator's file at
    /// `path` (read only: a missing file is no revocations, until one
    /// appears). On the store's first start, every entry of the file is
    /// copied into it once (valet wrote its own revocations there before
    /// the store existed, and cannot tell them from the operator's). A file
    /// that exists but is invalid is an error: valet does not start without
    /// the revocations it was told about.
    pub fn open(path: &Path, store_path: &Path) -> Result<Self, RevocationError> {
        Self::build(path, open_store(store_path, false)?, true)
    }

    /// A validator's: the store opened read only (it must exist: the
    /// authority creates it), followed, never written; no import.
    pub fn open_following(path: &Path, store_path: &Path) -> Result<Self, RevocationError> {
        Self::build(path, open_store(store_path, true)?, false)
    }

    /// On a store opened by the caller (any backend): `writer` imports the
    /// file once and may write; otherwise the store is only followed.
    pub fn on_store(
        path: &Path,
        store: Arc<dyn Store>,
        writer: bool,
    ) -> Result<Self, RevocationError> {
        Self::build(path, store, writer)
    }

    fn build(path: &Path, store: Arc<dyn Store>, writer: bool) -> Result<Self, RevocationError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The watcher needs the folder; the file itself is the operator's.
            let _ = std::fs::create_dir_all(dir);
        }
        let r = Revocations {
            path: path.to_path_buf(),
            store,
            current: ArcSwap::from_pointee(RevocationSet::default()),
            own: RevocationSet::default(),
            position: AtomicI64::new(0),
            synced: Default::default(),
            loaded_digest: std::sync::Mutex::new(None),
            order: std::sync::Mutex::new(()),
        };
        if !path.exists() {
            tracing::info!(path = %path.display(), "no operator revocation file yet; it is read when it appears");
        } else if writer {
            let file = r.read_file()?;
            r.import(&file.1)?;
        }
        // A snapshot first (one read, not the whole log), then the log from
        // its position.
        match r.store.snapshot() {
            Ok(snap) => {
                for rec in &snap.records {
                    r.own.insert(rec);
                    r.current.load().insert(rec);
                }
                r.position.store(snap.position, Ordering::Release);
                r.synced.store(true, Ordering::Release);
                r.follow()?;
            }
            // A validator reads it whole when it can (`follow`); until then
            // it is not ready and refuses authenticated requests.
            Err(e) if !writer => {
                tracing::warn!(error = %e, "cannot read the state store yet; this validator is not ready until it has");
            }
            Err(e) => return Err(store_error(e)),
        }
        if path.exists() {
            r.reload()?;
        }
        Ok(r)
    }

    /// Copies the file's entries into the store, once per store.
    fn import(&self, file: &RevocationFile) -> Result<(), RevocationError> {
        let now = now();
        let mut import = crate::store::Import::default();
        for t in file.tokens.iter().filter(|t| t.expires_at.0 >= now) {
            match t.rotated_ms() {
                Some(at) => import.rotations.push((t.jti.clone(), t.expires_at.0, at)),
                None => {
                    // A revoked token id, or an assertion id used once: both.
                    import.records.push(Record::Token {
                        jti: t.jti.clone(),
                        expires_at: t.expires_at.0,
                    });
                    import.single_use.push((t.jti.clone(), t.expires_at.0));
                }
            }
        }
        import.records.extend(
            file.families
                .iter()
                .filter(|f| f.expires_at.0 >= now)
                .map(|f| Record::Family {
                    family: f.family.clone(),
                    expires_at: f.expires_at.0,
                }),
        );
        import
            .records
            .extend(file.clients.iter().map(|c| Record::Client {
                client_id: c.client_id.clone(),
                before: c.revoked_before.0,
            }));
        import
            .records
            .extend(file.subjects.iter().map(|s| Record::Subject {
                subject: s.subject.clone(),
                before: s.revoked_before.0,
            }));
        let n = import.records.len() + import.rotations.len() + import.single_use.len();
        if self
            .store
            .import_once(IMPORT_MARKER, &import)
            .map_err(store_error)?
        {
            tracing::info!(
                file = %self.path.display(),
                revocations = import.records.len(),
                rotations = import.rotations.len(),
                single_use = import.single_use.len(),
                entries = n,
                "copied the revocation file's entries into the state store, once; the file is left as it was and is never written"
            );
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store was read whole at least once.
    #[inline]
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The store's log position this process has applied.
    pub fn position(&self) -> Position {
        self.position.load(Ordering::Acquire)
    }

    /// The set in force now; cheap and lock-free.
    #[inline]
    pub fn current(&self) -> arc_swap::Guard<Arc<RevocationSet>> {
        self.current.load()
    }

    fn read_file(&self) -> Result<([u8; 32], RevocationFile), RevocationError> {
        let bytes =
            std::fs::read(&self.path).map_err(|e| self.error(None, format!("cannot read: {e}")))?;
        let digest: [u8; 32] = crate::digest::sha256(&bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // An empty file is what a torn write looks like; never treat it as "no revocations".
            return Err(self.error(
                None,
                "the file is empty; write `tokens: []` for an empty list".into(),
            ));
        }
        Ok((digest, self.parse(&bytes)?))
    }

    /// Re-reads the operator's file. On error the current set stays in
    /// force. Returns `Ok(false)` if the file is unchanged since the last load.
    pub fn reload(&self) -> Result<bool, RevocationError> {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if !self.path.exists() && self.loaded_digest.lock().expect("not poisoned").is_none() {
            // Never had one: still no operator revocations. (A file that
            // was loaded and then removed is an error: its list stays.)
            return Ok(false);
        }
        let (digest, parsed) = self.read_file()?;
        if *self.loaded_digest.lock().expect("not poisoned") == Some(digest) {
            return Ok(false);
        }
        let set = RevocationSet::from_file(parsed, now());
        set.merge(&self.own);
        self.current.store(Arc::new(set));
        *self.loaded_digest.lock().expect("not poisoned") = Some(digest);
        Ok(true)
    }

    /// Applies what the store's log holds past this process's position (any
    /// process's writes); after a log this process cannot resume (another
    /// store, or one restored from a backup), re-reads the store whole.
    /// Returns what changed; the log's other entries (OAuth 1.0 tokens) are
    /// handed back for their owner to apply. Blocking I/O.
    pub fn follow(&self) -> Result<Followed, RevocationError> {
        let err = store_error;
        let mut out = Followed::default();
        loop {
            let at = self.position();
            let since = if self.synced() {
                self.store.since(at, FOLLOW_BATCH).map_err(err)?
            } else {
                crate::store::Since::Trimmed
            };
            match since {
                crate::store::Since::Changes(changes) => {
                    let Some(last) = changes.last().map(|(p, _)| *p) else {
                        return Ok(out);
                    };
                    let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
                    let current = self.current.load();
                    for (_, c) in changes {
                        match c {
                            crate::store::Change::Revoked(r) => {
                                self.own.insert(&r);
                                current.insert(&r);
                                out.revocations += 1;
                            }
                            crate::store::Change::OAuth1Token { provider, subject } => {
                                out.oauth1_tokens.push((provider, subject))
                            }
                            crate::store::Change::Client { .. } => out.clients = true,
                            crate::store::Change::Other => {}
                        }
                    }
                    self.position.store(last, Ordering::Release);
                }
                crate::store::Since::Trimmed => {
                    let snap = self.store.snapshot().map_err(err)?;
                    let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
                    let own = RevocationSet::default();
                    for r in &snap.records {
                        own.insert(r);
                    }
                    // Kept: what this process held (a revocation is never
                    // dropped because a store forgot it).
                    self.own.merge(&own);
                    self.current.load().merge(&own);
                    self.position.store(snap.position, Ordering::Release);
                    out.first = !self.synced.swap(true, Ordering::AcqRel);
                    if !out.first {
                        tracing::warn!(position = snap.position, "the state store's log does not go on from this process's position; read it whole");
                    } else {
                        tracing::info!(
                            position = snap.position,
                            revocations = snap.records.len(),
                            "read the state store whole for the first time"
                        );
                    }
                    out.revocations += snap.records.len();
                    out.whole = true;
                }
            }
        }
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

    /// Durably records `changes` in the store, then puts them in force.
    /// Blocking I/O: call it off the async workers. On error nothing is in
    /// force that was not already.
    pub fn apply(&self, changes: &[Change]) -> Result<(), RevocationError> {
        let records: Vec<Record> = changes.iter().map(record).collect();
        self.store.append(&records).map_err(store_error)?;
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load();
        for r in &records {
            self.own.insert(r);
            current.insert(r);
        }
        Ok(())
    }

    /// Records a single-use id (an assertion's) durably. `Ok(false)` if it
    /// was recorded before: of two concurrent uses (in this process or
    /// another on the store) exactly one wins.
    pub fn record_once(&self, t: RevokedToken) -> Result<bool, RevocationError> {
        self.store
            .use_once(&t.jti, t.expires_at.0)
            .map_err(store_error)
    }

    /// Rotates refresh token `jti` (valid until `expires_at`) at `now_ms`,
    /// in one check-and-set in the store: of two concurrent uses, in this
    /// process or another, exactly one is `First`. A use within `grace_ms`
    /// of the first is `InGrace` (strictly less: a grace of zero never
    /// yields a pair again), and leaves the first use's time as it was.
    pub fn rotate(
        &self,
        jti: &str,
        expires_at: i64,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, RevocationError> {
        self.store
            .rotate(jti, expires_at, now_ms, grace_ms)
            .map_err(store_error)
    }

    /// Drops token and family entries that expired more than `slack`
    /// seconds ago from memory. The slack is the longest clock skew any
    /// token is accepted with: a token is valid until `exp + skew`, so its
    /// revocation must last as long.
    pub fn prune_expired(&self, slack: i64) {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let before = now().saturating_sub(slack);
        self.own.prune(before);
        self.current.load().prune(before);
    }

    /// Removes entries that expired more than `slack` seconds ago from the
    /// store, at most `batch` of each kind.
    pub fn prune_store(&self, slack: i64, batch: usize) -> Result<usize, RevocationError> {
        self.store
            .prune(now().saturating_sub(slack), batch)
            .map_err(store_error)
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

    fn store(dir: &Path) -> PathBuf {
        dir.join("state.db")
    }

    #[test]
    fn invalid_reload_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        std::fs::write(&path, "tokens:\n  - {jti: a, expires_at: 4102444800}\n").unwrap();
        let r = Revocations::open(&path, &store(dir.path())).unwrap();
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

    /// valet's changes go to the store, are in force at once, survive a
    /// reload of the operator's file, and never touch that file.
    #[test]
    fn applied_changes_are_stored_merged_and_in_force_and_the_file_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        let operator = "tokens:\n  - {jti: operator-added, expires_at: 4102444800}\n";
        std::fs::write(&path, operator).unwrap();
        let r = Revocations::open(&path, &store(dir.path())).unwrap();
        r.apply(&[
            Change::Token(RevokedToken {
                jti: "t1".into(),
                expires_at: Timestamp(4102444800),
                rotated_at: None,
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
        let check = |r: &Revocations| {
            let set = r.current();
            assert_eq!(set.check(Some("t1"), "", "", 0, None), Some(Revoked::Token));
            assert_eq!(
                set.check(Some("other"), "", "", 0, Some("f1")),
                Some(Revoked::Family)
            );
            assert_eq!(
                set.check(Some("operator-added"), "", "", 0, None),
                Some(Revoked::Token),
                "merged, not replaced"
            );
            assert_eq!(
                set.check(Some("x"), "c", "", 499, None),
                Some(Revoked::Client)
            );
        };
        check(&r);
        // The operator edits the file: valet's own stay.
        std::fs::write(&path, format!("{operator}clients: []\n")).unwrap();
        assert!(r.reload().unwrap());
        check(&r);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{operator}clients: []\n"),
            "valet never writes the operator's file"
        );
        // Another process on the store sees the same.
        check(&Revocations::open(&path, &store(dir.path())).unwrap());
    }

    /// The store file deleted under a running process: the write fails,
    /// nothing is in force that was not written.
    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        let r = Revocations::open(&path, &store(dir.path())).unwrap();
        std::fs::remove_file(store(dir.path())).unwrap();
        let e = r
            .apply(&[Change::Token(RevokedToken {
                jti: "t1".into(),
                expires_at: Timestamp(4102444800),
                rotated_at: None,
                rotated_at_ms: None,
            })])
            .unwrap_err();
        assert!(e.message.contains("gone"), "{e}");
        assert!(r.current().check(Some("t1"), "", "", 0, None).is_none());
        assert!(r.rotate("rt", 4102444800, 0, 0).is_err());
        assert!(r
            .record_once(RevokedToken {
                jti: "a".into(),
                expires_at: Timestamp(4102444800),
                rotated_at: None,
                rotated_at_ms: None,
            })
            .is_err());
    }

    /// The file's entries, written by an older valet (rotations with their
    /// first-use time, assertion ids, revocations), are copied into a new
    /// store once: a second start copies nothing again.
    #[test]
    fn the_files_entries_are_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        let far = 4102444800i64;
        std::fs::write(
            &path,
            format!("tokens:\n  - {{jti: rotated, expires_at: {far}, rotated_at: 1000, rotated_at_ms: 1000500}}\n  - {{jti: revoked, expires_at: {far}}}\n  - {{jti: expired, expires_at: 1000}}\nfamilies:\n  - {{family: fam, expires_at: {far}}}\nclients:\n  - {{client_id: c, revoked_before: 700}}\n"),
        )
        .unwrap();
        let before = std::fs::read(&path).unwrap();
        let r = Revocations::open(&path, &store(dir.path())).unwrap();
        let c = r.store().counts().unwrap();
        assert_eq!(
            (c.tokens, c.families, c.clients, c.rotations, c.single_use),
            (1, 1, 1, 1, 1)
        );
        // The rotation keeps its first use: within a grace of it, in grace.
        assert_eq!(
            r.rotate("rotated", far, 1000600, 1000).unwrap(),
            Rotation::InGrace
        );
        assert_eq!(r.rotate("revoked", far, 0, 0).unwrap(), Rotation::Revoked);
        drop(r);
        let r = Revocations::open(&path, &store(dir.path())).unwrap();
        assert_eq!(r.store().counts().unwrap().log, 3, "imported twice");
        assert_eq!(before, std::fs::read(&path).unwrap());
    }

    /// A revocation outlives its token's expiry by the clock skew tokens
    /// are accepted with: pruned only once the slack has passed too.
    #[test]
    fn pruning_keeps_a_revocation_for_the_skew_past_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let r = Revocations::open(&dir.path().join("rev.yaml"), &store(dir.path())).unwrap();
        let expired = now() - 10;
        r.apply(&[Change::Token(RevokedToken {
            jti: "t".into(),
            expires_at: Timestamp(expired),
            rotated_at: None,
            rotated_at_ms: None,
        })])
        .unwrap();
        r.prune_expired(30);
        r.prune_store(30, 100).unwrap();
        assert!(r.current().check(Some("t"), "", "", 0, None).is_some());
        assert_eq!(r.store().counts().unwrap().tokens, 1);
        r.prune_expired(5);
        r.prune_store(5, 100).unwrap();
        assert!(r.current().check(Some("t"), "", "", 0, None).is_none());
        assert_eq!(r.store().counts().unwrap().tokens, 0);
    }

    /// A follower whose store file was replaced (a restore, or a deletion
    /// and a new authority) says so rather than reading the old one.
    #[test]
    fn a_follower_of_a_replaced_store_fails_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rev.yaml");
        let a = Revocations::open(&path, &store(dir.path())).unwrap();
        let b = Revocations::open_following(&path, &store(dir.path())).unwrap();
        drop(a);
        for ext in ["db", "db-wal", "db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("state.{ext}")));
        }
        let _new = Revocations::open(&path, &store(dir.path())).unwrap();
        let e = b.follow().unwrap_err();
        assert!(e.message.contains("replaced"), "{e}");
    }

    #[test]
    fn rotation_is_decided_once_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.yaml");
        std::fs::write(&path, "tokens: []\n").unwrap();
        // Two on one store: two replicas.
        let a = Revocations::open(&path, &store(dir.path())).unwrap();
        let b = Revocations::open(&path, &store(dir.path())).unwrap();
        let exp = now() + 3600;
        let t0 = now_ms();
        assert_eq!(a.rotate("rt", exp, t0, 5000).unwrap(), Rotation::First);
        assert_eq!(
            b.rotate("rt", exp, t0 + 10, 5000).unwrap(),
            Rotation::InGrace
        );
        assert_eq!(
            a.rotate("rt", exp, t0 + 5000, 5000).unwrap(),
            Rotation::Reuse
        );
        // Revoked outright, by the other.
        a.apply(&[Change::Token(RevokedToken {
            jti: "gone".into(),
            expires_at: Timestamp(exp),
            rotated_at: None,
            rotated_at_ms: None,
        })])
        .unwrap();
        assert_eq!(b.rotate("gone", exp, t0, 5000).unwrap(), Rotation::Revoked);
        // And b follows a's revocation from the log.
        assert!(b.current().check(Some("gone"), "", "", 0, None).is_none());
        assert_eq!(b.follow().unwrap().revocations, 1);
        assert!(b.current().check(Some("gone"), "", "", 0, None).is_some());
    }
}
