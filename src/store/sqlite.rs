//! The embedded store: one SQLite database file (rusqlite, SQLite bundled,
//! so nothing is installed beside valet), shared by the processes of one
//! host.
//!
//! - WAL mode with `synchronous=FULL`: a commit is on disk before it
//!   returns, readers never block the writer, and other processes see a
//!   commit as soon as it is made.
//! - Every write is one small transaction touching a few B-tree pages:
//!   its cost does not grow with the state (logarithmic at worst), unlike
//!   rewriting a whole file.
//! - Check-and-set calls (`rotate`, `use_once`) run in `BEGIN IMMEDIATE`
//!   transactions, which take the database's write lock first: of two
//!   processes racing, one waits (up to the busy timeout) and then sees the
//!   other's row.
//! - The log's positions come from `AUTOINCREMENT`: strictly increasing and
//!   never reused, even after pruning.

use super::{
    change, kind_and_value, now, record, ClientWrite, Counts, Flow, Import, Position, Record,
    Rotation, Since, Snapshot, Store, StoreError, CLIENT, CLIENT_RECORD, FAMILY, OAUTH1_TOKEN,
    SUBJECT, TOKEN,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The schema this valet writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a call waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an OAuth 1.0 token or client change stays in the log: followers are
/// running processes reading it every fraction of a second, and a process
/// starting reads the tokens whole.
const LOG_KEEP_SECS: i64 = 7 * 86_400;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- Revocations in force: token ids and families until they expire (value:
-- expiry), client and subject cut-offs for ever (value: revoked before).
CREATE TABLE IF NOT EXISTS revoked (
    kind INTEGER NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (kind, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revoked_by_value ON revoked (kind, value);
CREATE TABLE IF NOT EXISTS log (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS log_by_value ON log (kind, value);
CREATE TABLE IF NOT EXISTS rotations (
    jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, first_use_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rotations_by_expiry ON rotations (expires_at);
CREATE TABLE IF NOT EXISTS single_use (
    id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS single_use_by_expiry ON single_use (expires_at);
-- Added within schema 1 (a valet reading only the tables above skips the
-- log entries of kind 4 and never opens these).
CREATE TABLE IF NOT EXISTS oauth1_tokens (
    provider TEXT NOT NULL, subject TEXT NOT NULL, sealed BLOB NOT NULL,
    PRIMARY KEY (provider, subject)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oauth1_flows (
    provider TEXT NOT NULL, token TEXT NOT NULL, subject TEXT NOT NULL,
    sealed BLOB NOT NULL, expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (provider, token)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS oauth1_flows_by_subject ON oauth1_flows (provider, subject, expires_at_ms);
CREATE INDEX IF NOT EXISTS oauth1_flows_by_expiry ON oauth1_flows (expires_at_ms);
CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
-- The audit log: append only, never pruned (each line carries the digest
-- of the one before; the store only keeps them in order).
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, line TEXT NOT NULL);
";

/// The store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// A second, read-only connection for the follower, snapshots and
    /// counts: in WAL mode they never wait for a write, and a write of this
    /// process never waits behind them.
    read: Mutex<Connection>,
    /// The file opened (device, inode): a write checks the path still
    /// names it. Writes to a file deleted or replaced under a running
    /// process would succeed into an unlinked inode and be lost.
    identity: (u64, u64),
    /// The newest position the follower saw ([`Store::head`]).
    head: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Creates `path` empty with mode 0600 unless it exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, in WAL mode with full
    /// synchronous commits, and checks its schema version.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, false)
    }

    /// Opens an existing store for reading only (a validator): SQLite
    /// itself refuses any write on this connection.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, read_only: bool) -> Result<SqliteStore, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Failed {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        use rusqlite::OpenFlags;
        let conn = if read_only {
            if !path.exists() {
                return Err(fail(
                    &"it does not exist yet: the authority creates it (start the authority first)",
                ));
            }
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| fail(&e))?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
            }
            // valet's alone: SQLite gives its -wal and -shm files the
            // database file's mode, so this covers all three.
            create_private(path).map_err(|e| fail(&e))?;
            Connection::open(path).map_err(|e| fail(&e))?
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail(&e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| fail(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(&format!(
                "cannot use WAL mode (the journal mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| fail(&e))?;
        if !read_only {
            conn.execute_batch(SCHEMA).map_err(|e| fail(&e))?;
        }
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| fail(&e))?;
        match found.map(|v| v.parse::<i64>().unwrap_or(i64::MAX)) {
            None if read_only => return Err(fail(&"it holds no valet schema")),
            None => {
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(|e| fail(&e))?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(found) => {
                return Err(StoreError::Schema {
                    path: path.display().to_string(),
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
        }
        let identity = file_identity(path).map_err(|e| fail(&e))?;
        let read = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(&e))?;
        read.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail(&e))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            read: Mutex::new(read),
            identity,
            head: Default::default(),
        })
    }

    /// Refuses to write when the path no longer names the file opened.
    fn still_there(&self) -> Result<(), StoreError> {
        match file_identity(&self.path) {
            Ok(id) if id == self.identity => Ok(()),
            Ok(_) => {
                Err(self
                    .fail("the file was replaced under this process; restart to open the new one"))
            }
            Err(e) => Err(self.fail(format!("the file is gone ({e}); nothing is written"))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Failed {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding it left no transaction open: rusqlite rolls
        // back an unfinished one on drop.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes revocations and their log entries in `tx`; the position of
    /// the last (0 for none). Cut-offs only move later; expiries only grow.
    fn write_records(
        &self,
        tx: &rusqlite::Transaction<'_>,
        records: &[Record],
    ) -> Result<Position, StoreError> {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO revoked (kind, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, key) DO UPDATE SET value = max(value, excluded.value)",
            )
            .map_err(|e| self.fail(e))?;
        let mut log = tx
            .prepare_cached("INSERT INTO log (kind, key, value) VALUES (?1, ?2, ?3)")
            .map_err(|e| self.fail(e))?;
        let mut last = 0;
        for r in records {
            let (kind, key, value) = kind_and_value(r);
            upsert
                .execute(params![kind, key, value])
                .map_err(|e| self.fail(e))?;
            log.execute(params![kind, key, value])
                .map_err(|e| self.fail(e))?;
            last = tx.last_insert_rowid();
        }
        Ok(last)
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`: the database's
    /// write lock first, so check-and-set holds across processes), committed
    /// when `f` returns `Ok`, between two checks that the path still names
    /// the file opened (what is written to a file deleted or replaced is
    /// lost with it).
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.still_there()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.fail(e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| self.fail(e))?;
        self.still_there()?;
        Ok(out)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the file has table `name`: a store an older valet made,
    /// opened read only (`valet check`), may lack the newer ones, and so
    /// holds nothing of theirs.
    fn has_table(&self, conn: &Connection, name: &str) -> Result<bool, StoreError> {
        conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .and_then(|mut s| s.exists([name]))
            .map_err(|e| self.fail(e))
    }
}

impl Store for SqliteStore {
    fn head(&self) -> Position {
        self.head.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn append(&self, records: &[Record]) -> Result<Position, StoreError> {
        self.write(|tx| {
            let last = self.write_records(tx, records)?;
            Ok(last)
        })
    }

    fn use_once(&self, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        self.write(|tx| {
            // A row that expired (and was not yet pruned) no longer counts.
            let changed = tx
                .execute(
                    "INSERT INTO single_use (id, expires_at) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE single_use.expires_at < ?3",
                    params![id, expires_at, now()],
                )
                .map_err(|e| self.fail(e))?;
            Ok(changed == 1)
        })
    }

    fn rotate(
        &self,
        jti: &str,
        expires_at: i64,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, StoreError> {
        self.write(|tx| {
            let revoked: bool = tx
                .query_row(
                    "SELECT 1 FROM revoked WHERE kind = ?1 AND key = ?2",
                    params![TOKEN, jti],
                    |_| Ok(true),
                )
                .optional()
                .map_err(|e| self.fail(e))?
                .unwrap_or(false);
            if revoked {
                return Ok(Rotation::Revoked);
            }
            let first: Option<i64> = tx
                .query_row(
                    "SELECT first_use_ms FROM rotations WHERE jti = ?1",
                    params![jti],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.fail(e))?;
            let outcome = match first {
                None => {
                    tx.execute(
                        "INSERT INTO rotations (jti, expires_at, first_use_ms) VALUES (?1, ?2, ?3)",
                        params![jti, expires_at, now_ms],
                    )
                    .map_err(|e| self.fail(e))?;
                    Rotation::First
                }
                // `now_ms` was read before the lock was taken, so a use that
                // began first may be recorded second: its time can be before
                // the first use's. That counts as no time at all (never
                // negative, which would be "in grace" even at zero).
                Some(at) if now_ms.saturating_sub(at).max(0) < grace_ms => Rotation::InGrace,
                Some(_) => Rotation::Reuse,
            };
            Ok(outcome)
        })
    }

    fn first_use(&self, jti: &str) -> Result<Option<i64>, StoreError> {
        let conn = self.reader();
        conn.query_row(
            "SELECT first_use_ms FROM rotations WHERE jti = ?1",
            params![jti],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| self.fail(e))
    }

    fn since(&self, after: Position, limit: usize) -> Result<Since, StoreError> {
        // A follower of a file deleted or replaced (a restore) would read the
        // old one for ever, missing every new revocation: say so instead.
        self.still_there()?;
        let conn = self.reader();
        // A position past the newest the store ever gave out: this is not
        // the store the follower read (replaced, or restored from backup).
        let newest: i64 = conn
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.fail(e))?;
        // Or a position before changes that were pruned unread (OAuth 1.0
        // token and client changes: unlike an expired revocation's, their
        // loss would matter).
        let pruned: i64 = conn
            .query_row(
                "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pruned_through'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.fail(e))?;
        self.head
            .store(newest, std::sync::atomic::Ordering::Relaxed);
        if after > newest || after < pruned {
            return Ok(Since::Trimmed);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT position, kind, key, value FROM log WHERE position > ?1
                 ORDER BY position LIMIT ?2",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (pos, kind, key, value) = row.map_err(|e| self.fail(e))?;
            out.push((pos, change(kind, key, value)));
        }
        Ok(Since::Changes(out))
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.reader();
        // One read transaction: the records and the position agree.
        let tx = conn.transaction().map_err(|e| self.fail(e))?;
        let position: i64 = tx
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.fail(e))?;
        let mut records = Vec::new();
        {
            let mut stmt = tx
                .prepare("SELECT kind, key, value FROM revoked")
                .map_err(|e| self.fail(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| self.fail(e))?;
            for row in rows {
                let (kind, key, value) = row.map_err(|e| self.fail(e))?;
                records.extend(record(kind, key, value));
            }
        }
        tx.commit().map_err(|e| self.fail(e))?;
        Ok(Snapshot { records, position })
    }

    fn prune(&self, now: i64, batch: usize) -> Result<usize, StoreError> {
        self.write(|tx| {
            let batch = batch as i64;
            let mut n = 0;
            // Bounded batches: each call holds the write lock briefly.
            for kind in [OAUTH1_TOKEN, CLIENT_RECORD] {
                // Oldest first; a follower behind the last pruned reads whole.
                let through: Option<i64> = tx
                    .query_row(
                        "SELECT max(position) FROM (SELECT position FROM log
                     WHERE kind = ?1 AND value < ?2 ORDER BY position LIMIT ?3)",
                        params![kind, now, batch],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.fail(e))?;
                let Some(through) = through else { continue };
                n += tx
                    .execute(
                        "DELETE FROM log WHERE kind = ?1 AND position <= ?2",
                        params![kind, through],
                    )
                    .map_err(|e| self.fail(e))?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('pruned_through', ?1)
                 ON CONFLICT (key) DO UPDATE SET value =
                 CAST(max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)",
                    params![through.to_string()],
                )
                .map_err(|e| self.fail(e))?;
            }
            for kind in [TOKEN, FAMILY] {
                n += tx
                    .execute(
                        "DELETE FROM revoked WHERE kind = ?1 AND key IN
                     (SELECT key FROM revoked WHERE kind = ?1 AND value < ?2 LIMIT ?3)",
                        params![kind, now, batch],
                    )
                    .map_err(|e| self.fail(e))?;
                n += tx
                    .execute(
                        "DELETE FROM log WHERE position IN
                     (SELECT position FROM log WHERE kind = ?1 AND value < ?2 LIMIT ?3)",
                        params![kind, now, batch],
                    )
                    .map_err(|e| self.fail(e))?;
            }
            for sql in [
                "DELETE FROM rotations WHERE jti IN
             (SELECT jti FROM rotations WHERE expires_at < ?1 LIMIT ?2)",
                "DELETE FROM single_use WHERE id IN
             (SELECT id FROM single_use WHERE expires_at < ?1 LIMIT ?2)",
                "DELETE FROM oauth1_flows WHERE (provider, token) IN
             (SELECT provider, token FROM oauth1_flows WHERE expires_at_ms < ?1 * 1000 LIMIT ?2)",
            ] {
                n += tx
                    .execute(sql, params![now, batch])
                    .map_err(|e| self.fail(e))?;
            }
            Ok(n)
        })
    }

    fn oauth1_token(&self, provider: &str, subject: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.reader();
        conn.prepare_cached("SELECT sealed FROM oauth1_tokens WHERE provider = ?1 AND subject = ?2")
            .and_then(|mut s| {
                s.query_row(params![provider, subject], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.fail(e))
    }

    fn oauth1_tokens(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare("SELECT provider, subject, sealed FROM oauth1_tokens")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    fn set_oauth1_token(
        &self,
        provider: &str,
        subject: &str,
        sealed: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let had = tx
                .execute(
                    "DELETE FROM oauth1_tokens WHERE provider = ?1 AND subject = ?2",
                    params![provider, subject],
                )
                .map_err(|e| self.fail(e))?
                == 1;
            if let Some(sealed) = sealed {
                tx.execute(
                    "INSERT INTO oauth1_tokens (provider, subject, sealed) VALUES (?1, ?2, ?3)",
                    params![provider, subject, sealed],
                )
                .map_err(|e| self.fail(e))?;
            }
            if had || sealed.is_some() {
                tx.execute(
                    "INSERT INTO log (kind, key, value) VALUES (?1, ?2, ?3)",
                    params![
                        OAUTH1_TOKEN,
                        format!("{provider}\n{subject}"),
                        now() + LOG_KEEP_SECS
                    ],
                )
                .map_err(|e| self.fail(e))?;
            }
            Ok(had)
        })
    }

    fn start_flow(
        &self,
        token: &str,
        flow: &Flow,
        per_subject: usize,
        total: usize,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            // How many flows are pending, and how many of this subject's the
            // new one would end (its newest `per_subject - 1` stay).
            let pending = || -> Result<(usize, usize), StoreError> {
                tx.query_row(
                    "SELECT count(*), count(*) FILTER (WHERE provider = ?1 AND subject = ?2)
                     FROM oauth1_flows",
                    params![flow.provider, flow.subject],
                    |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
                )
                .map(|(all, mine)| (all, (mine + 1).saturating_sub(per_subject)))
                .map_err(|e| self.fail(e))
            };
            let (mut all, mut ending) = pending()?;
            if all - ending >= total {
                // Expired flows are over anyway.
                tx.execute(
                    "DELETE FROM oauth1_flows WHERE expires_at_ms <= ?1",
                    params![now_ms],
                )
                .map_err(|e| self.fail(e))?;
                (all, ending) = pending()?;
                if all - ending >= total {
                    // Refused: no flow of the subject's was ended for it.
                    return Ok(false);
                }
            }
            tx.execute(
                "DELETE FROM oauth1_flows WHERE provider = ?1 AND token IN
                 (SELECT token FROM oauth1_flows WHERE provider = ?1 AND subject = ?2
                  ORDER BY expires_at_ms DESC LIMIT -1 OFFSET ?3)",
                params![
                    flow.provider,
                    flow.subject,
                    per_subject.saturating_sub(1) as i64
                ],
            )
            .map_err(|e| self.fail(e))?;
            tx.execute(
                // A temporary token the provider gave out twice is refused,
                // never put over another subject's flow.
                "INSERT INTO oauth1_flows (token, provider, subject, sealed, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token,
                    flow.provider,
                    flow.subject,
                    flow.sealed,
                    flow.expires_at_ms
                ],
            )
            .map_err(|e| self.fail(e))?;
            Ok(true)
        })
    }

    fn take_flow(&self, token: &str, provider: &str) -> Result<Option<Flow>, StoreError> {
        // Callbacks come from anyone: an unknown token is answered from the
        // read connection and never takes the write lock.
        let known = self
            .reader()
            .prepare_cached("SELECT 1 FROM oauth1_flows WHERE token = ?1 AND provider = ?2")
            .and_then(|mut s| s.exists(params![token, provider]))
            .map_err(|e| self.fail(e))?;
        if !known {
            return Ok(None);
        }
        self.write(|tx| {
            let flow = tx
                .query_row(
                    "DELETE FROM oauth1_flows WHERE token = ?1 AND provider = ?2
                 RETURNING subject, sealed, expires_at_ms",
                    params![token, provider],
                    |r| {
                        Ok(Flow {
                            provider: provider.to_string(),
                            subject: r.get(0)?,
                            sealed: r.get(1)?,
                            expires_at_ms: r.get(2)?,
                        })
                    },
                )
                .optional()
                .map_err(|e| self.fail(e))?;
            Ok(flow)
        })
    }

    fn clients(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.reader();
        if !self.has_table(&conn, "clients")? {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare_cached("SELECT id, record FROM clients ORDER BY id")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    fn audit_last(&self) -> Result<Option<(u64, String)>, StoreError> {
        let conn = self.reader();
        if !self.has_table(&conn, "audit")? {
            return Ok(None);
        }
        conn.query_row(
            "SELECT seq, line FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get(1)?)),
        )
        .optional()
        .map_err(|e| self.fail(e))
    }

    fn audit_append(&self, seq: u64, line: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let last: i64 = tx
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))
                .map_err(|e| self.fail(e))?;
            if u64::try_from(last).map_or(true, |l| l.checked_add(1) != Some(seq)) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO audit (seq, line) VALUES (?1, ?2)",
                params![seq as i64, line],
            )
            .map_err(|e| self.fail(e))?;
            Ok(true)
        })
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.reader();
        if !self.has_table(&conn, "audit")? {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare_cached("SELECT seq, line FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map(
                params![after as i64, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    fn put_client(
        &self,
        id: &str,
        record: Option<&str>,
        how: ClientWrite<'_>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let found: Option<String> = tx
                .query_row(
                    "SELECT record FROM clients WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.fail(e))?;
            let allowed = match how {
                ClientWrite::Create => found.is_none(),
                ClientWrite::Replace { current } => found.as_deref() == Some(current),
            };
            if !allowed {
                return Ok(false);
            }
            match record {
                Some(r) => tx.execute(
                    "INSERT OR REPLACE INTO clients (id, record) VALUES (?1, ?2)",
                    params![id, r],
                ),
                None => tx.execute("DELETE FROM clients WHERE id = ?1", params![id]),
            }
            .map_err(|e| self.fail(e))?;
            tx.execute(
                "INSERT INTO log (kind, key, value) VALUES (?1, ?2, ?3)",
                params![CLIENT_RECORD, id, now() + LOG_KEEP_SECS],
            )
            .map_err(|e| self.fail(e))?;
            Ok(true)
        })
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        let conn = self.reader();
        let count = |sql: &str| -> Result<u64, StoreError> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| self.fail(e))
        };
        let kind = |k: i64| format!("SELECT count(*) FROM revoked WHERE kind = {k}");
        Ok(Counts {
            tokens: count(&kind(TOKEN))?,
            families: count(&kind(FAMILY))?,
            clients: count(&kind(CLIENT))?,
            subjects: count(&kind(SUBJECT))?,
            rotations: count("SELECT count(*) FROM rotations")?,
            single_use: count("SELECT count(*) FROM single_use")?,
            oauth1_tokens: count("SELECT count(*) FROM oauth1_tokens")?,
            oauth1_flows: count("SELECT count(*) FROM oauth1_flows")?,
            managed_clients: count("SELECT count(*) FROM clients")?,
            log: count("SELECT count(*) FROM log")?,
        })
    }

    fn imported(&self, marker: &str) -> Result<bool, StoreError> {
        self.reader()
            .prepare_cached("SELECT 1 FROM meta WHERE key = ?1")
            .and_then(|mut s| s.exists(params![format!("import:{marker}")]))
            .map_err(|e| self.fail(e))
    }

    fn imports(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT substr(key, 8), CAST(value AS INTEGER) FROM meta
                 WHERE key LIKE 'import:%' ORDER BY key",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    fn import_once(&self, marker: &str, import: &Import) -> Result<bool, StoreError> {
        self.write(|tx| {
        let key = format!("import:{marker}");
        let done: bool = tx
            .query_row("SELECT 1 FROM meta WHERE key = ?1", params![key], |_| {
                Ok(true)
            })
            .optional()
            .map_err(|e| self.fail(e))?
            .unwrap_or(false);
        if done {
            return Ok(false);
        }
        self.write_records(tx, &import.records)?;
        {
            let mut rot = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO rotations (jti, expires_at, first_use_ms) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.fail(e))?;
            for (jti, exp, at) in &import.rotations {
                rot.execute(params![jti, exp, at])
                    .map_err(|e| self.fail(e))?;
            }
            let mut once = tx
                .prepare_cached("INSERT OR IGNORE INTO single_use (id, expires_at) VALUES (?1, ?2)")
                .map_err(|e| self.fail(e))?;
            for (id, exp) in &import.single_use {
                once.execute(params![id, exp]).map_err(|e| self.fail(e))?;
            }
            let mut tokens = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO oauth1_tokens (provider, subject, sealed) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.fail(e))?;
            for (provider, subject, sealed) in &import.oauth1_tokens {
                tokens
                    .execute(params![provider, subject, sealed])
                    .map_err(|e| self.fail(e))?;
            }
            let mut clients = tx
                .prepare_cached("INSERT OR IGNORE INTO clients (id, record) VALUES (?1, ?2)")
                .map_err(|e| self.fail(e))?;
            let mut log = tx
                .prepare_cached("INSERT INTO log (kind, key, value) VALUES (?1, ?2, ?3)")
                .map_err(|e| self.fail(e))?;
            for (id, record) in &import.clients {
                if clients
                    .execute(params![id, record])
                    .map_err(|e| self.fail(e))?
                    == 1
                {
                    log.execute(params![CLIENT_RECORD, id, now() + LOG_KEEP_SECS])
                        .map_err(|e| self.fail(e))?;
                }
            }
        }
        let total = import.records.len()
            + import.rotations.len()
            + import.single_use.len()
            + import.oauth1_tokens.len()
            + import.clients.len();
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            params![key, total.to_string()],
        )
        .map_err(|e| self.fail(e))?;
        Ok(true)
        })
    }
}
