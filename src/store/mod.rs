//! Where valet's own state lives: the store interface, and its embedded
//! backend (`sqlite`).
//!
//! What it keeps, and who reads it:
//! - **revocations** valet made (token ids, refresh-token families, client
//!   and subject cut-offs): written by the authority, appended to a change
//!   log with a monotonically increasing position that followers (other
//!   processes, validators) resume from;
//! - **refresh rotations** and **single-use assertion ids**: looked up by
//!   key at grant time, by the authority only, each in one atomic
//!   check-and-set; never in the log, never in a follower's memory;
//! - **OAuth 1.0 access tokens**, sealed by the caller (the store never
//!   sees them in clear): each change is in the log, so every authority
//!   process on the store keeps the same tokens in memory for signing;
//! - **pending OAuth 1.0 flows**, sealed too: started at one authority
//!   process, taken (once) by the callback at any, by key only;
//! - **valet-managed clients** (what `valet client add` and the admin API
//!   register; secrets hashed by the caller), as records the caller
//!   serialises: each change is in the log, so every authority process
//!   reloads its client registry;
//! - the **audit log** of administrative changes: lines the caller makes
//!   (each carrying the digest of the one before), appended in order by
//!   compare-and-set, never pruned.
//!
//! The operator's revocation file is not here: it stays a read-only input.
//! This module names nothing else of valet's (layer 0): the revocation map
//! turns its records into lookups.

pub mod redis;
pub mod sqlite;

// How both backends write an entry: a kind, a key and a value. The numbers
// are stored (SQLite's tables, Redis's hashes and stream): never renumber.
const TOKEN: i64 = 0;
const FAMILY: i64 = 1;
const CLIENT: i64 = 2;
const SUBJECT: i64 = 3;
// Log only: an OAuth 1.0 token changed (key: provider "\n" subject).
const OAUTH1_TOKEN: i64 = 4;
// Log only: a managed client changed (key: its id).
const CLIENT_RECORD: i64 = 5;

fn kind_and_value(r: &Record) -> (i64, &str, i64) {
    match r {
        Record::Token { jti, expires_at } => (TOKEN, jti, *expires_at),
        Record::Family { family, expires_at } => (FAMILY, family, *expires_at),
        Record::Client { client_id, before } => (CLIENT, client_id, *before),
        Record::Subject { subject, before } => (SUBJECT, subject, *before),
    }
}

fn record(kind: i64, key: String, value: i64) -> Option<Record> {
    Some(match kind {
        TOKEN => Record::Token {
            jti: key,
            expires_at: value,
        },
        FAMILY => Record::Family {
            family: key,
            expires_at: value,
        },
        CLIENT => Record::Client {
            client_id: key,
            before: value,
        },
        SUBJECT => Record::Subject {
            subject: key,
            before: value,
        },
        _ => return None,
    })
}

/// A log entry as a change (a kind this valet does not know: `Other`).
fn change(kind: i64, key: String, value: i64) -> Change {
    match kind {
        // Provider names never hold a newline (config check).
        OAUTH1_TOKEN => match key.split_once('\n') {
            Some((provider, subject)) => Change::OAuth1Token {
                provider: provider.to_string(),
                subject: subject.to_string(),
            },
            None => Change::Other,
        },
        CLIENT_RECORD => Change::Client { id: key },
        _ => record(kind, key, value).map_or(Change::Other, Change::Revoked),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A change log position: 0 is "before the first change".
pub type Position = i64;

/// One revocation, as the log and the snapshot carry it. Keys are as the
/// revocation map keys them (an issuer's are scoped by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A token id, revoked until the token expires (unix seconds).
    Token { jti: String, expires_at: i64 },
    /// A refresh-token family, and the access tokens issued from it.
    Family { family: String, expires_at: i64 },
    /// Every token of a client issued before `before` (unix seconds).
    Client { client_id: String, before: i64 },
    /// Every token of a subject issued before `before`.
    Subject { subject: String, before: i64 },
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A revocation.
    Revoked(Record),
    /// The OAuth 1.0 token of (provider, subject) was stored or removed:
    /// read it again ([`Store::oauth1_token`]).
    OAuth1Token { provider: String, subject: String },
    /// The managed client `id` was added, changed or removed: read the
    /// clients again ([`Store::clients`]).
    Client { id: String },
    /// An entry of a kind a newer valet writes: skipped (a follower still
    /// moves past it).
    Other,
}

/// How [`Store::put_client`] may change a client record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWrite<'a> {
    /// Only if no client has the id.
    Create,
    /// Only if the client's record is still `current` (compare and set:
    /// of two concurrent changes, the second is refused, not lost).
    Replace { current: &'a str },
}

/// An OAuth 1.0 flow waiting for the provider's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub provider: String,
    pub subject: String,
    /// What the flow carries, sealed by the caller.
    pub sealed: Vec<u8>,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
}

/// What presenting a refresh token meant, decided in one check-and-set.
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

/// The log read from a position.
#[derive(Debug)]
pub enum Since {
    /// The changes after the position, in order (at most the limit asked).
    Changes(Vec<(Position, Change)>),
    /// The log was pruned past the position: read a whole snapshot.
    Trimmed,
}

/// Every revocation in force, and the log position it reflects.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub records: Vec<Record>,
    pub position: Position,
}

/// State carried over from before the store, imported once.
#[derive(Debug, Default)]
pub struct Import {
    /// Revocations: into the store and its log.
    pub records: Vec<Record>,
    /// Refresh rotations: (jti, expires_at, first use in ms).
    pub rotations: Vec<(String, i64, i64)>,
    /// Single-use ids: (id, expires_at).
    pub single_use: Vec<(String, i64)>,
    /// OAuth 1.0 tokens: (provider, subject, sealed); an entry already in
    /// the store is kept.
    pub oauth1_tokens: Vec<(String, String, Vec<u8>)>,
    /// Managed clients: (id, record); a client already in the store is kept.
    pub clients: Vec<(String, String)>,
}

/// Entries by kind, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tokens: u64,
    pub families: u64,
    pub clients: u64,
    pub subjects: u64,
    pub rotations: u64,
    pub single_use: u64,
    pub oauth1_tokens: u64,
    pub oauth1_flows: u64,
    pub managed_clients: u64,
    pub log: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written; nothing this
    /// call was to write was written.
    #[error("the store {path}: {message}")]
    Failed { path: String, message: String },
    /// Written by a newer valet whose records this one cannot read.
    #[error("the store {path} has schema version {found}; this valet reads versions up to {supported} and never guesses at records it cannot read: run a release that reads it")]
    Schema {
        path: String,
        found: i64,
        supported: i64,
    },
}

/// valet's state store. Every call is blocking I/O: call it off the async
/// workers. A write returns only once durable.
pub trait Store: Send + Sync {
    /// Records revocations durably and appends them to the log; returns the
    /// position of the last one.
    fn append(&self, records: &[Record]) -> Result<Position, StoreError>;

    /// Records single-use `id` until `expires_at`: `Ok(false)` when it was
    /// recorded before. Of two concurrent uses, in any process on the
    /// store, exactly one gets `true`.
    fn use_once(&self, id: &str, expires_at: i64) -> Result<bool, StoreError>;

    /// Rotates refresh token `jti` (valid until `expires_at`) at `now_ms`:
    /// of concurrent uses, exactly one is `First`; a later use strictly
    /// within `grace_ms` of the first is `InGrace` and leaves the first
    /// use's time as it was.
    fn rotate(
        &self,
        jti: &str,
        expires_at: i64,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, StoreError>;

    /// When refresh token `jti` was first used, if it was (a read).
    fn first_use(&self, jti: &str) -> Result<Option<i64>, StoreError>;

    /// The log after `after`, at most `limit` changes.
    fn since(&self, after: Position, limit: usize) -> Result<Since, StoreError>;

    /// Every revocation in force now, with the position it reflects.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Removes at most `batch` expired entries of each kind (revocations,
    /// their log entries, rotations, single-use ids); returns how many.
    /// Cut-offs never expire.
    fn prune(&self, now: i64, batch: usize) -> Result<usize, StoreError>;

    /// The sealed OAuth 1.0 token of (provider, subject) (a read).
    fn oauth1_token(&self, provider: &str, subject: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every OAuth 1.0 token: (provider, subject, sealed).
    fn oauth1_tokens(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError>;

    /// Stores (`Some`) or removes (`None`) the sealed OAuth 1.0 token of
    /// (provider, subject) and logs the change; whether there was one.
    fn set_oauth1_token(
        &self,
        provider: &str,
        subject: &str,
        sealed: Option<&[u8]>,
    ) -> Result<bool, StoreError>;

    /// Records a flow under its temporary token, within bounds: the
    /// subject's oldest flows with the provider beyond `per_subject - 1`
    /// end first, and when `total` flows are pending (after dropping
    /// expired ones) nothing is recorded: `Ok(false)`.
    fn start_flow(
        &self,
        token: &str,
        flow: &Flow,
        per_subject: usize,
        total: usize,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Takes out the flow of `token` with `provider` (expired or not): of
    /// two takers, in any process on the store, one gets it.
    fn take_flow(&self, token: &str, provider: &str) -> Result<Option<Flow>, StoreError>;

    /// Every managed client: (id, record), by id.
    fn clients(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Writes (`Some`) or removes (`None`) the record of client `id` as
    /// `how` allows, and logs the change; `Ok(false)` when `how` did not
    /// allow it (nothing is written). Atomic: of two processes creating
    /// one id, one does.
    fn put_client(
        &self,
        id: &str,
        record: Option<&str>,
        how: ClientWrite<'_>,
    ) -> Result<bool, StoreError>;

    /// The audit log's last entry: (its number, from 1; its line).
    fn audit_last(&self) -> Result<Option<(u64, String)>, StoreError>;

    /// Appends `line` as audit entry `seq` if the log's last entry is
    /// `seq - 1`: `Ok(false)` otherwise (another process appended first;
    /// nothing written). Never pruned, never changed.
    fn audit_append(&self, seq: u64, line: &str) -> Result<bool, StoreError>;

    /// The audit entries after number `after`, at most `limit`, in order.
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;

    /// Since when (unix seconds) the store's contents go back: a store made
    /// anew (emptied, or a file deleted) starts a new generation. A refresh
    /// token issued before it was rotated, if at all, in records that are
    /// gone: it is refused. 0: as far back as it was ever written.
    fn generation_since(&self) -> i64 {
        0
    }

    /// Waits until the log may hold changes after `after`, for `up_to` at
    /// most: the follower's pace. A store that cannot be told of changes
    /// (the embedded one: other processes write the file) just waits.
    fn wait_for_changes(&self, after: Position, up_to: std::time::Duration) {
        let _ = after;
        std::thread::sleep(up_to);
    }

    /// The newest log position the last [`Store::since`] saw in the
    /// store (0 before any): how far the follower is behind is this minus
    /// its position.
    fn head(&self) -> Position {
        0
    }

    /// Times the store's generation changed under this process (emptied,
    /// reseeded, restored) and it read the new one whole.
    fn generation_changes(&self) -> u64 {
        0
    }

    /// What valet checked of a networked store's settings: (setting,
    /// `verified`, `unverified` (it could not read it) or `weaker` (than
    /// the guarantee it states)); empty before the check, or for the
    /// embedded store, which valet configures itself.
    fn settings(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    /// Whether [`Store::broadcast`] reaches other processes (a networked
    /// store's channels; the embedded store has none).
    fn broadcasts(&self) -> bool {
        false
    }

    /// Sends `msg` on `channel` to the processes listening now. Never
    /// kept: a process that is not listening never sees it (what is sent
    /// this way is hints, like failed attempts for the throttles).
    fn broadcast(&self, channel: &str, msg: &[u8]) -> Result<(), StoreError> {
        let _ = (channel, msg);
        Err(StoreError::Failed {
            path: "the store".into(),
            message: "has no channels".into(),
        })
    }

    /// Listens on `channel`, calling `on` with each message, until the
    /// connection fails (`Err`) or `stop` says so (`Ok`), which is asked at
    /// least every second; `subscribed` is called once listening. While no
    /// message comes, `quiet` is asked every second whether that is fine:
    /// `false` makes it check the connection (a round trip), and a
    /// connection that does not answer is a failure.
    fn listen(
        &self,
        channel: &str,
        subscribed: &mut dyn FnMut(),
        on: &mut dyn FnMut(&[u8]),
        quiet: &mut dyn FnMut() -> bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), StoreError> {
        let _ = (subscribed, on, quiet, stop);
        self.broadcast(channel, &[])
    }

    /// Connections made again after a failure (a networked store's).
    fn reconnects(&self) -> u64 {
        0
    }

    /// Entries by kind.
    fn counts(&self) -> Result<Counts, StoreError>;

    /// Whether an import named `marker` was made.
    fn imported(&self, marker: &str) -> Result<bool, StoreError>;

    /// The imports made: (marker, entries imported).
    fn imports(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Imports `import` in one transaction unless an import named `marker`
    /// was made before: `Ok(false)` then, and nothing is written. Of two
    /// processes importing at once, one does it.
    fn import_once(&self, marker: &str, import: &Import) -> Result<bool, StoreError>;
}
