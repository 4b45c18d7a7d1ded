//! The Redis store: one Redis (7, or a managed service speaking its
//! protocol) shared by every valet of a fleet, on any number of hosts.
//!
//! - Revocations are hashes by kind (`revoked:<kind>`: key → value); token
//!   ids and families also sit in a sorted set by expiry (`expiry:<kind>`)
//!   that the authority prunes in bounded batches. Nothing valet must keep
//!   has a TTL: an evicting or expiring Redis would silently un-revoke.
//! - The change log is a stream (`log`) whose entry ids are `<position>-0`,
//!   positions coming from one counter (`seq`): a follower resumes with one
//!   `XRANGE`. The stream is capped; a follower behind the cap (or behind
//!   `meta.pruned_through`) is told to read the store whole.
//! - Every write and check-and-set is one Lua script, so it is atomic in
//!   Redis: of two authority processes rotating one refresh token, one is
//!   first.
//! - Refresh rotations, single-use ids and pending flows are keys with an
//!   expiry (they only matter until then); the flows also sit in sorted sets
//!   that bound them.
//! - OAuth 1.0 tokens (sealed by the caller) and managed clients are hashes;
//!   their changes are in the log.
//!
//! Calls are blocking (the `Store` contract): each holds one of two
//! connections (writes, reads) for its round trip, with timeouts, and a
//! connection that failed is opened again on the next call.

use super::{
    change, kind_and_value, now, record, ClientWrite, Counts, Flow, Import, Position, Record,
    Rotation, Since, Snapshot, Store, StoreError, CLIENT, FAMILY, SUBJECT, TOKEN,
};
use redis::{Connection, Script};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The schema this valet makes on a new store (`meta.schema`).
pub const SCHEMA_VERSION: i64 = 1;
/// The oldest schema it reads and writes. The rule for rolling upgrades:
/// release N reads and writes the schema of N−1 as well as its own, so
/// the two share a store while replicas are replaced; a store's schema
/// moves on only once no older release is left. A process that meets a
/// schema outside its range refuses it, at start and while running (its
/// writes answer 503, its follower stops and says why), never guessing at
/// records it cannot read. (There is one schema so far.)
pub const SCHEMA_OLDEST: i64 = 1;

/// Log entries kept; a follower further behind reads the store whole.
const LOG_KEEP: usize = 1_000_000;

/// One round trip's limit, and a connection's.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Waits between connection attempts after failures: doubling from the
/// first, up to the last, each taken at a random 50 to 100 % (a fleet of
/// validators that lost Redis together does not come back in step).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A log entry as read: (position, kind, key, value, nonce).
type LogEntry = (i64, i64, String, i64, String);

/// A connection, and whether one was ever opened here (a new one is then
/// a reconnection).
#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    opened: bool,
}

/// Failed connection attempts in a row, and when the next may be made.
#[derive(Default)]
struct Backoff {
    failures: u32,
    next: Option<Instant>,
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` or `rediss://` (TLS, with the system's roots).
    pub url: String,
    pub username: Option<String>,
    pub password: Option<crate::credentials::Secret>,
    /// Put before every key (default `valet:`): several fleets may share a
    /// Redis, each under its own prefix and ACL key pattern.
    pub prefix: String,
    /// Replicas that must have a write before it is acknowledged (`WAIT`):
    /// 0, none.
    pub wait_replicas: u32,
    /// How long a write waits for them; fewer in time is a failed write.
    pub wait_timeout: Duration,
    /// PEM roots the server's certificate must chain to (rediss:// with a
    /// private CA); the system's roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM), for mutual TLS.
    pub client_identity: Option<(Vec<u8>, crate::credentials::Secret)>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What valet could verify of the server's settings at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Settings valet could not read (a managed Redis that blocks CONFIG):
    /// not assumed, reported.
    pub unverified: Vec<&'static str>,
    /// Settings read and weaker than the guarantee valet states: (setting,
    /// what it loses).
    pub weaker: Vec<(&'static str, String)>,
}

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    name: String,
    /// Replicas a write must reach, and how long it waits for them.
    replicas: (u32, Duration),
    write: Mutex<Slot>,
    read: Mutex<Slot>,
    /// The follower's blocking reads (`XREAD BLOCK`) hold their own.
    wait: Mutex<Slot>,
    /// Broadcasts (`PUBLISH`) have their own: they never wait behind a write.
    publish: Mutex<Slot>,
    /// Set once the server's settings and valet's schema were checked: at
    /// open, or (a validator that started while Redis was unreachable) at
    /// its first read.
    verified: std::sync::OnceLock<Verified>,
    writer: bool,
    /// The last check found no schema (no authority has started yet).
    no_schema: std::sync::atomic::AtomicBool,
    generation_changes: AtomicU64,
    backoff: Mutex<Backoff>,
    reconnects: AtomicU64,
    held: Mutex<Held>,
    /// The newest position the follower saw ([`Store::head`]).
    head: std::sync::atomic::AtomicI64,
}

/// The store's generation as this process holds it: followed freely for
/// reading (a follower keeps what it holds and reads the new store whole),
/// for writing only once an operator ran `valet store reseed`.
#[derive(Default, Clone)]
struct Held {
    read: Option<String>,
    write: Option<String>,
    since: i64,
    /// The newest `generation_at` the follower saw (a reseed another
    /// process's write has not run into yet).
    seen_since: i64,
    /// The last log entry read (position, nonce): resuming checks it is
    /// still there.
    last: Option<(i64, String)>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("name", &self.name)
            .finish()
    }
}

fn fail(name: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        path: name.to_string(),
        message: e.to_string(),
    }
}

/// Shared by the scripts: revoke (kind, key, value) with "later wins", and
/// log it. `p` is the key prefix.
const LUA_REVOKE: &str = r#"
-- The log entry first: if it cannot be added, nothing else was written.
-- Its nonce (the server's clock) tells it from an entry a restored store
-- gives the same position.
local function log(p, kind, key, value)
  local pos = redis.call('INCR', p .. 'seq')
  local t = redis.call('TIME')
  redis.call('XADD', p .. 'log', pos .. '-0', 'k', kind, 'key', key, 'v', value, 'n', t[1] .. '.' .. t[2])
  return pos
end
local function revoke(p, kind, key, value)
  local pos = log(p, kind, key, value)
  local h = p .. 'revoked:' .. kind
  local old = redis.call('HGET', h, key)
  if (not old) or tonumber(old) < tonumber(value) then
    redis.call('HSET', h, key, value)
    if kind == '0' or kind == '1' then
      redis.call('ZADD', p .. 'expiry:' .. kind, value, key)
    end
  end
  return pos
end
"#;

/// A write script: it runs only while the store's generation is the one
/// this process holds (ARGV[2]); its own arguments are `A` (`A[1]` the key
/// prefix, then what the caller passed after the generation).
fn script(body: &str) -> Script {
    Script::new(&format!(
        "{LUA_REVOKE}
if redis.call('HGET', ARGV[1] .. 'meta', 'generation') ~= ARGV[2] then
  return redis.error_reply('VALET_GENERATION the store was emptied or replaced since this process opened it')
end
local schema = tonumber(redis.call('HGET', ARGV[1] .. 'meta', 'schema'))
if schema == nil or schema < {SCHEMA_OLDEST} or schema > {SCHEMA_VERSION} then
  return redis.error_reply('VALET_SCHEMA the store has schema version ' .. tostring(schema) .. '; this valet writes versions {SCHEMA_OLDEST} to {SCHEMA_VERSION} (upgrade it)')
end
local A = {{ARGV[1]}}
for i = 3, #ARGV do A[i - 1] = ARGV[i] end
{}",
        body.replace("ARGV", "A")
    ))
}

impl RedisStore {
    /// Connects, checks the schema and the settings valet relies on: a
    /// Redis that may evict keys is refused (it would silently un-revoke).
    /// `writer`: the schema version is written when there is none.
    pub fn open(s: &RedisSettings, writer: bool) -> Result<RedisStore, StoreError> {
        use redis::IntoConnectionInfo;
        let name = format!("redis {}", redact(&s.url));
        let mut info = s
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| fail(&name, e))?;
        let mut rs = info.redis_settings().clone();
        if let Some(u) = &s.username {
            rs = rs.set_username(u);
        }
        if let Some(p) = &s.password {
            rs = rs.set_password(String::from_utf8_lossy(p.expose()));
        }
        info = info.set_redis_settings(rs);
        let client = match (&s.ca_pem, &s.client_identity) {
            (None, None) => redis::Client::open(info),
            (ca, id) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: id.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.expose().to_vec(),
                    }),
                    root_cert: ca.clone(),
                },
            ),
        }
        .map_err(|e| fail(&name, e))?;
        let store = RedisStore {
            client,
            prefix: s.prefix.clone(),
            name,
            replicas: (s.wait_replicas, s.wait_timeout),
            write: Mutex::default(),
            read: Mutex::default(),
            wait: Mutex::default(),
            publish: Mutex::default(),
            verified: Default::default(),
            writer,
            no_schema: Default::default(),
            generation_changes: AtomicU64::new(0),
            backoff: Mutex::default(),
            reconnects: AtomicU64::new(0),
            held: Mutex::default(),
            head: Default::default(),
        };
        match store.ensure_checked() {
            Ok(()) => {}
            // A validator starts without a store it cannot reach yet (or
            // that no authority has written yet): it is not ready, and
            // refuses authenticated requests, until it has read it. A store
            // it reached and must refuse (evicting, a newer schema) stops it.
            Err(e)
                if !writer && (store.unreachable() || store.no_schema.load(Ordering::Relaxed)) =>
            {
                tracing::warn!(error = %e, "starting without the state store: this validator holds none of its revocations, so it is not ready and answers authenticated requests 503 until it has read the store");
            }
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// What could and could not be verified of the server's settings, once
    /// checked.
    pub fn verified(&self) -> Option<&Verified> {
        self.verified.get()
    }

    /// Checks the server's settings and the schema, unless done.
    fn ensure_checked(&self) -> Result<(), StoreError> {
        if self.verified.get().is_some() {
            return Ok(());
        }
        let v = self.verify()?;
        self.check_schema(self.writer)?;
        for setting in &v.unverified {
            tracing::warn!(store = %self.name, setting, "the Redis store's setting cannot be read (CONFIG GET refused): unverified, not assumed");
        }
        for (_, w) in &v.weaker {
            tracing::warn!(store = %self.name, "the Redis store is weaker than valet's guarantee: {w}");
        }
        let _ = self.verified.set(v);
        Ok(())
    }

    /// The last connection attempt failed.
    fn unreachable(&self) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
            > 0
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// A new connection, unless the last attempts failed and the backoff
    /// has not run out: then a failure at once (the caller, a follower or
    /// a write answered 503, does not wait on an unreachable Redis).
    fn connect(&self) -> Result<Connection, StoreError> {
        self.backing_off()?;
        let opened = self
            .client
            .get_connection_with_timeout(TIMEOUT)
            .and_then(|c| {
                c.set_read_timeout(Some(TIMEOUT))?;
                c.set_write_timeout(Some(TIMEOUT))?;
                Ok(c)
            });
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match opened {
            Ok(c) => {
                *b = Backoff::default();
                Ok(c)
            }
            Err(e) => {
                drop(b);
                self.failed();
                Err(fail(&self.name, e))
            }
        }
    }

    /// A failure at once while backing off: no caller waits on a Redis that
    /// just failed (nor queues behind one that does).
    fn backing_off(&self) -> Result<(), StoreError> {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match b.next.filter(|n| *n > Instant::now()) {
            Some(next) => Err(fail(
                &self.name,
                format!(
                    "unreachable ({} failed attempts); the next in {} ms",
                    b.failures,
                    (next - Instant::now()).as_millis()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Notes a failed connection or a call that timed out: the next
    /// attempt waits (doubling, jittered).
    fn failed(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.failures = b.failures.saturating_add(1);
        let full = BACKOFF_FIRST
            .saturating_mul(1 << b.failures.min(16))
            .min(BACKOFF_MAX);
        let mut r = [0u8; 1];
        aws_lc_rs::rand::fill(&mut r).expect("system randomness");
        let wait = full.mul_f64(0.5 + f64::from(r[0]) / 510.0);
        b.next = Some(Instant::now() + wait);
    }

    /// Runs `f` on the write (or read) connection, opening it if needed; a
    /// connection whose call failed for I/O is dropped, to be opened again.
    fn with<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.on(if write { &self.write } else { &self.read }, f)
    }

    fn on<T>(
        &self,
        slot: &Mutex<Slot>,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.backing_off()?;
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.conn.is_none() {
            slot.conn = Some(self.connect()?);
            if slot.opened {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            slot.opened = true;
        }
        let conn = slot.conn.as_mut().expect("just opened");
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_unrecoverable_error() || e.is_timeout() {
                    slot.conn = None;
                }
                // A server that does not answer: back off (a closed
                // connection, as after a restart, is opened again at once).
                if e.is_timeout() {
                    self.failed();
                }
                Err(fail(&self.name, e))
            }
        }
    }

    fn verify(&self) -> Result<Verified, StoreError> {
        let mut v = Verified::default();
        // Only a refusal by the server (CONFIG blocked) is "unverified"; a
        // connection that fails is a failure to start.
        let get = |name: &'static str| -> Result<Option<String>, StoreError> {
            let r: redis::RedisResult<Vec<String>> = self.with(false, |c| {
                match redis::cmd("CONFIG").arg("GET").arg(name).query(c) {
                    Err(e) if e.is_io_error() || e.is_timeout() => Err(e),
                    r => Ok(r),
                }
            })?;
            Ok(r.ok().and_then(|kv| kv.into_iter().nth(1)))
        };
        match get("maxmemory-policy")? {
            None => v.unverified.push("maxmemory-policy"),
            Some(p) if p != "noeviction" => {
                return Err(fail(
                    &self.name,
                    format!("maxmemory-policy is `{p}`: an evicting Redis silently un-revokes tokens; set it to `noeviction`"),
                ))
            }
            Some(_) => {}
        }
        match get("appendonly")? {
            None => v.unverified.push("appendonly"),
            Some(a) if a != "yes" => v.weaker.push((
                "appendonly",
                format!(
                    "appendonly is `{a}`: a restart loses every revocation since the last snapshot"
                ),
            )),
            Some(_) => {}
        }
        match get("appendfsync")? {
            None => v.unverified.push("appendfsync"),
            Some(f) if f != "always" => v.weaker.push(("appendfsync", format!("appendfsync is `{f}`: a crash of Redis may lose the last second of acknowledged revocations"))),
            Some(_) => {}
        }
        Ok(v)
    }

    /// Checks the schema version and takes the generation; a writer makes
    /// both on an empty store (its first start).
    fn check_schema(&self, writer: bool) -> Result<(), StoreError> {
        let meta = self.key("meta");
        if writer {
            let init = Script::new(
                "if redis.call('HEXISTS', KEYS[1], 'schema') == 0 then
                   redis.call('HSET', KEYS[1], 'schema', ARGV[1], 'generation', ARGV[2], 'generation_at', ARGV[3])
                 end
                 return 1",
            );
            self.with(true, |c| {
                init.key(&meta)
                    .arg(SCHEMA_VERSION)
                    .arg(crate::credentials::generate_secret())
                    .arg(now())
                    .invoke::<i64>(c)
            })?;
        }
        let (schema, generation, since): (Option<i64>, Option<String>, Option<i64>) =
            self.with(false, |c| {
                redis::cmd("HMGET")
                    .arg(&meta)
                    .arg("schema")
                    .arg("generation")
                    .arg("generation_at")
                    .query(c)
            })?;
        match schema {
            Some(v) if (SCHEMA_OLDEST..=SCHEMA_VERSION).contains(&v) => {}
            Some(found) => {
                return Err(StoreError::Schema {
                    path: self.name.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            None => {
                self.no_schema.store(true, Ordering::Relaxed);
                return Err(fail(
                    &self.name,
                    "it holds no valet schema yet: the authority writes it (start the authority first)",
                ));
            }
        }
        self.no_schema.store(false, Ordering::Relaxed);
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Held {
            read: generation.clone(),
            write: generation,
            since: since.unwrap_or(0),
            ..Held::default()
        };
        Ok(())
    }

    /// Log entries from `start` (an XRANGE bound) on, at most `limit`:
    /// (position, kind, key, value, nonce). An entry valet did not write
    /// (an id not `<position>-0`, no nonce) is an error, not skipped: a
    /// follower must not pass over what it cannot read.
    fn entries(&self, start: &str, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        type Entry = (String, Vec<(String, String)>);
        let raw: Vec<Entry> = self.with(false, |c| {
            redis::cmd("XRANGE")
                .arg(self.key("log"))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query(c)
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            let pos = id
                .strip_suffix("-0")
                .and_then(|p| p.parse::<i64>().ok())
                .filter(|p| *p > 0);
            let (mut kind, mut key, mut value, mut nonce) = (-1, String::new(), 0, None);
            for (f, v) in fields {
                match f.as_str() {
                    "k" => kind = v.parse().unwrap_or(-1),
                    "key" => key = v,
                    "v" => value = v.parse::<f64>().map_or(0, |x| x as i64),
                    "n" => nonce = Some(v),
                    _ => {}
                }
            }
            let (Some(pos), Some(nonce)) = (pos, nonce) else {
                return Err(fail(
                    &self.name,
                    format!(
                        "the log holds an entry valet did not write (`{id}`): remove it, or reseed"
                    ),
                ));
            };
            out.push((pos, kind, key, value, nonce));
        }
        Ok(out)
    }

    /// The nonce of the log entry at `pos`, if it is there.
    fn nonce_at(&self, pos: i64) -> Result<Option<String>, StoreError> {
        let e = self.entries(&format!("{pos}-0"), 1)?;
        Ok(e.into_iter().find(|e| e.0 == pos).map(|e| e.4))
    }

    fn held(&self) -> Held {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs write script `s` with the prefix, the generation held for
    /// writing, then what `args` adds. A script refused for another
    /// generation is run again once if an operator has reseeded the store
    /// since (the new generation is then taken); otherwise the write fails
    /// (503) and nothing is written.
    fn invoke<T: redis::FromRedisValue>(
        &self,
        s: &Script,
        args: impl Fn(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, StoreError> {
        for attempt in 0..2 {
            let generation = self.held().write.unwrap_or_default();
            let r = self.with(true, |c| {
                let mut inv = s.prepare_invoke();
                inv.arg(&self.prefix).arg(&generation);
                args(&mut inv);
                let out = inv.invoke(c)?;
                // Acknowledged only once on the replicas asked for.
                let (n, timeout) = self.replicas;
                if n > 0 {
                    let got: u32 = redis::cmd("WAIT")
                        .arg(n)
                        .arg(timeout.as_millis() as u64)
                        .query(c)?;
                    if got < n {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "not acknowledged",
                            format!("the write reached {got} of the {n} replicas asked for within {} ms", timeout.as_millis()),
                        )));
                    }
                }
                Ok(out)
            });
            match r {
                Err(e) if attempt == 0 && e.to_string().contains("VALET_GENERATION") => {
                    if !self.adopt_reseeded()? {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Takes the store's generation for writing if an operator reseeded it.
    fn adopt_reseeded(&self) -> Result<bool, StoreError> {
        let (generation, reseeded, since): (Option<String>, Option<String>, Option<i64>) = self
            .with(false, |c| {
                redis::cmd("HMGET")
                    .arg(self.key("meta"))
                    .arg("generation")
                    .arg("reseeded")
                    .arg("generation_at")
                    .query(c)
            })?;
        match generation {
            Some(g) if reseeded.as_deref() == Some(g.as_str()) => {
                tracing::warn!(store = %self.name, "the store was reseeded by an operator; writing to its new generation");
                let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
                h.write = Some(g);
                h.since = since.unwrap_or(0);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `valet store reseed`: after the store lost its contents (a Redis
    /// restarted empty), starts a new generation that writers take up. What
    /// it held is gone for good (revocations the validators still hold in
    /// memory excepted); refresh tokens issued before now are refused.
    /// Returns the new generation.
    pub fn reseed(&self) -> Result<String, StoreError> {
        let g = crate::credentials::generate_secret();
        let s = Script::new(
            "redis.call('HSET', KEYS[1], 'schema', ARGV[1], 'generation', ARGV[2], 'generation_at', ARGV[3], 'reseeded', ARGV[2])
             return 1",
        );
        self.with(true, |c| {
            s.key(self.key("meta"))
                .arg(SCHEMA_VERSION)
                .arg(&g)
                .arg(now())
                .invoke::<i64>(c)
        })?;
        Ok(g)
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Store for RedisStore {
    fn append(&self, records: &[Record]) -> Result<Position, StoreError> {
        let s = script(
            "local p = ARGV[1]; local last = 0
             for i = 2, #ARGV, 3 do last = revoke(p, ARGV[i], ARGV[i+1], ARGV[i+2]) end
             return last",
        );
        self.invoke(&s, |inv| {
            for r in records {
                let (kind, key, value) = kind_and_value(r);
                inv.arg(kind).arg(key).arg(value);
            }
        })
    }

    fn use_once(&self, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        let s = script(
            "return redis.call('SET', ARGV[1] .. 'once:' .. ARGV[2], 1, 'EXAT', ARGV[3], 'NX')",
        );
        let set: Option<String> = self.invoke(&s, |inv| {
            inv.arg(id).arg(expires_at.max(now() + 1));
        })?;
        Ok(set.is_some())
    }

    fn rotate(
        &self,
        jti: &str,
        expires_at: i64,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, StoreError> {
        let s = script(
            "local p, jti = ARGV[1], ARGV[2]
             if redis.call('HEXISTS', p .. 'revoked:0', jti) == 1 then return 'revoked' end
             local k = p .. 'rot:' .. jti
             local first = redis.call('GET', k)
             if not first then
               redis.call('SET', k, ARGV[4], 'EXAT', ARGV[3])
               return 'first'
             end
             local d = tonumber(ARGV[4]) - tonumber(first)
             if d < 0 then d = 0 end
             if d < tonumber(ARGV[5]) then return 'grace' end
             return 'reuse'",
        );
        let out: String = self.invoke(&s, |inv| {
            inv.arg(jti)
                .arg(expires_at.max(now() + 1))
                .arg(now_ms)
                .arg(grace_ms);
        })?;
        Ok(match out.as_str() {
            "revoked" => Rotation::Revoked,
            "first" => Rotation::First,
            "grace" => Rotation::InGrace,
            _ => Rotation::Reuse,
        })
    }

    fn first_use(&self, jti: &str) -> Result<Option<i64>, StoreError> {
        let key = self.key(&format!("rot:{jti}"));
        self.with(false, |c| redis::cmd("GET").arg(&key).query(c))
    }

    fn since(&self, after: Position, limit: usize) -> Result<Since, StoreError> {
        self.ensure_checked()?;
        type Meta = (Option<i64>, Option<String>, Option<i64>, Option<i64>);
        let (seq, (pruned, generation, generation_at, schema)): (Option<i64>, Meta) =
            self.with(false, |c| {
                redis::pipe()
                    .cmd("GET")
                    .arg(self.key("seq"))
                    .cmd("HMGET")
                    .arg(self.key("meta"))
                    .arg("pruned_through")
                    .arg("generation")
                    .arg("generation_at")
                    .arg("schema")
                    .query(c)
            })?;
        // A newer release moved the store on: nothing here is guessed at.
        if let Some(found) = schema.filter(|v| !(SCHEMA_OLDEST..=SCHEMA_VERSION).contains(v)) {
            return Err(StoreError::Schema {
                path: self.name.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(generation) = generation else {
            return Err(fail(
                &self.name,
                "it holds no valet generation: emptied (a Redis restarted without its data?); the revocations held stay in force",
            ));
        };
        let last = {
            let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
            h.seen_since = h.seen_since.max(generation_at.unwrap_or(0));
            if h.read.as_deref() != Some(generation.as_str()) {
                // Another store now: read it whole (`snapshot` takes the
                // new generation once it has), keeping what is held.
                tracing::warn!(store = %self.name, "the store's generation changed (emptied and started again, or reseeded); reading it whole, keeping every revocation held");
                return Ok(Since::Trimmed);
            }
            h.last.clone()
        };
        self.head.store(seq.unwrap_or(0), Ordering::Relaxed);
        if after > seq.unwrap_or(0) || after < pruned.unwrap_or(0) {
            return Ok(Since::Trimmed);
        }
        // Resuming from `after`: the entry there must be the one this
        // process read (its nonce). Another one means the log went back (a
        // backup restored, writes lost) and positions are given out again.
        if let Some((at, nonce)) = last.filter(|(at, _)| *at == after && after > 0) {
            if self.nonce_at(at)?.as_deref() != Some(nonce.as_str()) {
                tracing::warn!(store = %self.name, position = at, "the store's log went back (restored, or writes lost): reading it whole, keeping every revocation held");
                return Ok(Since::Trimmed);
            }
        }
        let entries = self.entries(&format!("({after}-0"), limit)?;
        let mut out = Vec::with_capacity(entries.len());
        for (pos, kind, key, value, nonce) in entries {
            out.push((pos, change(kind, key, value)));
            self.held.lock().unwrap_or_else(|e| e.into_inner()).last = Some((pos, nonce));
        }
        Ok(Since::Changes(out))
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.ensure_checked()?;
        // The position first: what changes while the hashes are read is
        // read again from the log (a revocation only ever grows).
        let (position, generation): (Option<i64>, Option<String>) = self.with(false, |c| {
            redis::pipe()
                .cmd("GET")
                .arg(self.key("seq"))
                .cmd("HGET")
                .arg(self.key("meta"))
                .arg("generation")
                .query(c)
        })?;
        let position = position.unwrap_or(0);
        let nonce = match position {
            0 => None,
            p => self.nonce_at(p)?,
        };
        let mut records = Vec::new();
        for kind in [TOKEN, FAMILY, CLIENT, SUBJECT] {
            let h = self.key(&format!("revoked:{kind}"));
            let mut cursor: u64 = 0;
            loop {
                let (next, kv): (u64, Vec<(String, String)>) = self.with(false, |c| {
                    redis::cmd("HSCAN")
                        .arg(&h)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(10_000)
                        .query(c)
                })?;
                records.extend(kv.into_iter().filter_map(|(k, v)| {
                    record(kind, k, v.parse::<f64>().map_or(0, |x| x as i64))
                }));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // Read whole: from now on this is the store followed.
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if h.read.is_some() && h.read != generation {
            self.generation_changes.fetch_add(1, Ordering::Relaxed);
        }
        h.read = generation;
        h.last = nonce.map(|n| (position, n));
        Ok(Snapshot { records, position })
    }

    fn prune(&self, now: i64, batch: usize) -> Result<usize, StoreError> {
        let s = script(
            "local p, now, batch, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
             local n = 0
             for _, kind in ipairs({'0', '1'}) do
               local z = p .. 'expiry:' .. kind
               local gone = redis.call('ZRANGE', z, '-inf', '(' .. now, 'BYSCORE', 'LIMIT', 0, batch)
               for _, key in ipairs(gone) do
                 redis.call('HDEL', p .. 'revoked:' .. kind, key)
                 redis.call('ZREM', z, key)
                 n = n + 1
               end
             end
             n = n + redis.call('XTRIM', p .. 'log', 'MAXLEN', keep)
             local first = redis.call('XRANGE', p .. 'log', '-', '+', 'COUNT', 1)[1]
             if first then
               local through = tonumber(string.match(first[1], '^(%d+)')) - 1
               local old = tonumber(redis.call('HGET', p .. 'meta', 'pruned_through') or '0')
               if through > old then redis.call('HSET', p .. 'meta', 'pruned_through', through) end
             end
             n = n + redis.call('ZREMRANGEBYSCORE', p .. 'flows', '-inf', '(' .. (now * 1000))
             return n",
        );
        let n: i64 = self.invoke(&s, |inv| {
            inv.arg(now).arg(batch).arg(LOG_KEEP);
        })?;
        Ok(n as usize)
    }

    fn oauth1_token(&self, provider: &str, subject: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(false, |c| {
            redis::cmd("HGET")
                .arg(self.key("oauth1"))
                .arg(format!("{provider}\n{subject}"))
                .query(c)
        })
    }

    fn oauth1_tokens(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = self.with(false, |c| {
            redis::cmd("HGETALL").arg(self.key("oauth1")).query(c)
        })?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| {
                let (p, s) = k.split_once('\n')?;
                Some((p.to_string(), s.to_string(), v))
            })
            .collect())
    }

    fn set_oauth1_token(
        &self,
        provider: &str,
        subject: &str,
        sealed: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let s = script(
            "local p, f = ARGV[1], ARGV[2]
             local had = redis.call('HEXISTS', p .. 'oauth1', f)
             if had == 1 or ARGV[3] == '1' then log(p, '4', f, ARGV[5]) end
             redis.call('HDEL', p .. 'oauth1', f)
             if ARGV[3] == '1' then redis.call('HSET', p .. 'oauth1', f, ARGV[4]) end
             return had",
        );
        let had: i64 = self.invoke(&s, |inv| {
            inv.arg(format!("{provider}\n{subject}"))
                .arg(if sealed.is_some() { "1" } else { "0" })
                .arg(sealed.unwrap_or_default())
                .arg(now());
        })?;
        Ok(had == 1)
    }

    fn start_flow(
        &self,
        token: &str,
        flow: &Flow,
        per_subject: usize,
        total: usize,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let s = script(
            "local p, member, mine, tok = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
             local exp, now = tonumber(ARGV[7]), ARGV[8]
             local per, total = tonumber(ARGV[9]), tonumber(ARGV[10])
             local all, subj = p .. 'flows', p .. 'flows:' .. mine
             redis.call('ZREMRANGEBYSCORE', all, '-inf', now)
             redis.call('ZREMRANGEBYSCORE', subj, '-inf', now)
             local ending = redis.call('ZCARD', subj) + 1 - per
             if ending < 0 then ending = 0 end
             if redis.call('ZCARD', all) - ending >= total then return 0 end
             if redis.call('EXISTS', p .. 'flow:' .. member) == 1 then return -1 end
             if ending > 0 then
               for _, t in ipairs(redis.call('ZRANGE', subj, 0, ending - 1)) do
                 local m = string.match(mine, '^([^\\n]*)') .. '\\n' .. t
                 redis.call('DEL', p .. 'flow:' .. m)
                 redis.call('ZREM', all, m)
                 redis.call('ZREM', subj, t)
               end
             end
             local k = p .. 'flow:' .. member
             redis.call('HSET', k, 's', ARGV[5], 'b', ARGV[6], 'e', ARGV[7])
             redis.call('PEXPIREAT', k, exp)
             redis.call('ZADD', all, exp, member)
             redis.call('ZADD', subj, exp, tok)
             redis.call('PEXPIREAT', subj, exp)
             return 1",
        );
        let out: i64 = self.invoke(&s, |inv| {
            inv.arg(format!("{}\n{token}", flow.provider))
                .arg(format!("{}\n{}", flow.provider, flow.subject))
                .arg(token)
                .arg(&flow.subject)
                .arg(&flow.sealed)
                .arg(flow.expires_at_ms.max(now_ms + 1))
                .arg(now_ms)
                .arg(per_subject)
                .arg(total);
        })?;
        match out {
            -1 => Err(fail(
                &self.name,
                "the provider gave out a temporary token that is already pending",
            )),
            n => Ok(n == 1),
        }
    }

    fn take_flow(&self, token: &str, provider: &str) -> Result<Option<Flow>, StoreError> {
        let s = script(
            "local p, member = ARGV[1], ARGV[2]
             local k = p .. 'flow:' .. member
             local f = redis.call('HMGET', k, 's', 'b', 'e')
             if not f[1] then return false end
             redis.call('DEL', k)
             redis.call('ZREM', p .. 'flows', member)
             redis.call('ZREM', p .. 'flows:' .. ARGV[3] .. '\\n' .. f[1], ARGV[4])
             return f",
        );
        let got: Option<(String, Vec<u8>, i64)> = self.invoke(&s, |inv| {
            inv.arg(format!("{provider}\n{token}"))
                .arg(provider)
                .arg(token);
        })?;
        Ok(got.map(|(subject, sealed, expires_at_ms)| Flow {
            provider: provider.to_string(),
            subject,
            sealed,
            expires_at_ms,
        }))
    }

    fn clients(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut all: Vec<(String, String)> = self.with(false, |c| {
            redis::cmd("HGETALL").arg(self.key("clients")).query(c)
        })?;
        all.sort();
        Ok(all)
    }

    fn audit_last(&self) -> Result<Option<(u64, String)>, StoreError> {
        let (n, last): (u64, Option<String>) = self.with(false, |c| {
            redis::pipe()
                .cmd("LLEN")
                .arg(self.key("audit"))
                .cmd("LINDEX")
                .arg(self.key("audit"))
                .arg(-1)
                .query(c)
        })?;
        Ok(last.map(|l| (n, l)))
    }

    fn audit_append(&self, seq: u64, line: &str) -> Result<bool, StoreError> {
        // Entry `seq` is the list's element seq - 1: appended only when the
        // list ends just before it (of two processes, one appends).
        let s = script(
            "local k = ARGV[1] .. 'audit'
             if redis.call('LLEN', k) ~= tonumber(ARGV[2]) - 1 then return 0 end
             redis.call('RPUSH', k, ARGV[3])
             return 1",
        );
        let ok: i64 = self.invoke(&s, |inv| {
            inv.arg(seq).arg(line);
        })?;
        Ok(ok == 1)
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let end = after.saturating_add(limit.min(i64::MAX as usize) as u64);
        let stop = i64::try_from(end).unwrap_or(i64::MAX) - 1;
        let lines: Vec<String> = self.with(false, |c| {
            redis::cmd("LRANGE")
                .arg(self.key("audit"))
                .arg(after)
                .arg(stop)
                .query(c)
        })?;
        Ok((after + 1..).zip(lines).collect())
    }

    fn put_client(
        &self,
        id: &str,
        record: Option<&str>,
        how: ClientWrite<'_>,
    ) -> Result<bool, StoreError> {
        let s = script(
            "local p, id = ARGV[1], ARGV[2]
             local cur = redis.call('HGET', p .. 'clients', id)
             if ARGV[3] == 'create' then
               if cur then return 0 end
             elseif cur ~= ARGV[4] then return 0 end
             log(p, '5', id, ARGV[7])
             if ARGV[5] == '1' then redis.call('HSET', p .. 'clients', id, ARGV[6])
             else redis.call('HDEL', p .. 'clients', id) end
             return 1",
        );
        let (mode, current) = match how {
            ClientWrite::Create => ("create", ""),
            ClientWrite::Replace { current } => ("replace", current),
        };
        let ok: i64 = self.invoke(&s, |inv| {
            inv.arg(id)
                .arg(mode)
                .arg(current)
                .arg(if record.is_some() { "1" } else { "0" })
                .arg(record.unwrap_or(""))
                .arg(now());
        })?;
        Ok(ok == 1)
    }

    fn head(&self) -> Position {
        self.head.load(Ordering::Relaxed)
    }

    fn generation_changes(&self) -> u64 {
        self.generation_changes.load(Ordering::Relaxed)
    }

    fn settings(&self) -> Vec<(&'static str, &'static str)> {
        let Some(v) = self.verified.get() else {
            return Vec::new();
        };
        ["maxmemory-policy", "appendonly", "appendfsync"]
            .into_iter()
            .map(|s| {
                let state = if v.unverified.contains(&s) {
                    "unverified"
                } else if v.weaker.iter().any(|(w, _)| *w == s) {
                    "weaker"
                } else {
                    "verified"
                };
                (s, state)
            })
            .collect()
    }

    fn broadcasts(&self) -> bool {
        true
    }

    /// `PUBLISH`: Pub/Sub is never written to the AOF or replicated to
    /// disk, which is what hints should cost.
    fn broadcast(&self, channel: &str, msg: &[u8]) -> Result<(), StoreError> {
        let publish = || {
            self.on(&self.publish, |c| {
                redis::cmd("PUBLISH")
                    .arg(self.key(channel))
                    .arg(msg)
                    .query::<i64>(c)
            })
        };
        // Once more on a new connection: the one held may have been closed
        // by a restart since the last message (a hint lost for that).
        publish().or_else(|_| publish()).map(drop)
    }

    /// `SUBSCRIBE` on a connection of its own, held while listening.
    fn listen(
        &self,
        channel: &str,
        subscribed: &mut dyn FnMut(),
        on: &mut dyn FnMut(&[u8]),
        quiet: &mut dyn FnMut() -> bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), StoreError> {
        let mut conn = self.connect()?;
        let mut ps = conn.as_pubsub();
        let err = |e: redis::RedisError| fail(&self.name, e);
        ps.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(err)?;
        ps.subscribe(self.key(channel)).map_err(err)?;
        subscribed();
        while !stop() {
            match ps.get_message() {
                Ok(m) => on(m.get_payload_bytes()),
                // (A PING while subscribed is answered as a message.)
                Err(e) if e.is_timeout() => {
                    if !quiet() {
                        ps.ping::<redis::Value>().map_err(err)?;
                    }
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Blocks on the stream (`XREAD BLOCK`) until an entry after `after`
    /// is added: a follower learns of a revocation as it is written, not
    /// at its next poll. Unreachable: waits `up_to`, as the poll did.
    fn wait_for_changes(&self, after: Position, up_to: Duration) {
        let r = self.on(&self.wait, |c| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(up_to.as_millis() as u64)
                .arg("STREAMS")
                .arg(self.key("log"))
                .arg(format!("{after}-0"))
                .query::<redis::Value>(c)
        });
        if r.is_err() {
            std::thread::sleep(up_to);
        }
    }

    fn generation_since(&self) -> i64 {
        let h = self.held();
        h.since.max(h.seen_since)
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        let k = |s: &str| self.key(s);
        let (t, f, c, s, o, fl, mc, log): (u64, u64, u64, u64, u64, u64, u64, u64) =
            self.with(false, |conn| {
                redis::pipe()
                    .cmd("HLEN")
                    .arg(k("revoked:0"))
                    .cmd("HLEN")
                    .arg(k("revoked:1"))
                    .cmd("HLEN")
                    .arg(k("revoked:2"))
                    .cmd("HLEN")
                    .arg(k("revoked:3"))
                    .cmd("HLEN")
                    .arg(k("oauth1"))
                    .cmd("ZCARD")
                    .arg(k("flows"))
                    .cmd("HLEN")
                    .arg(k("clients"))
                    .cmd("XLEN")
                    .arg(k("log"))
                    .query(conn)
            })?;
        // Rotations and single-use ids are keys with an expiry; counting
        // them would mean a scan: not counted here.
        Ok(Counts {
            tokens: t,
            families: f,
            clients: c,
            subjects: s,
            rotations: 0,
            single_use: 0,
            oauth1_tokens: o,
            oauth1_flows: fl,
            managed_clients: mc,
            log,
        })
    }

    fn imported(&self, marker: &str) -> Result<bool, StoreError> {
        self.with(false, |c| {
            redis::cmd("HEXISTS")
                .arg(self.key("meta"))
                .arg(format!("import:{marker}"))
                .query(c)
        })
    }

    fn imports(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let all: Vec<(String, String)> = self.with(false, |c| {
            redis::cmd("HGETALL").arg(self.key("meta")).query(c)
        })?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("import:")?.to_string(), v.parse().ok()?)))
            .collect())
    }

    fn import_once(&self, marker: &str, import: &Import) -> Result<bool, StoreError> {
        // One script: the marker and everything it covers, or nothing.
        let s = script(
            "local p, marker, n = ARGV[1], 'import:' .. ARGV[2], 2
             if redis.call('HEXISTS', p .. 'meta', marker) == 1 then return 0 end
             local total = 0
             local function take(count, f)
               for _ = 1, tonumber(count) do f(); total = total + 1 end
             end
             local function nextarg() n = n + 1; return ARGV[n] end
             take(nextarg(), function()
               local kind, key, value = nextarg(), nextarg(), nextarg()
               revoke(p, kind, key, value) end)
             take(nextarg(), function()
               local jti, exp, at = nextarg(), nextarg(), nextarg()
               redis.call('SET', p .. 'rot:' .. jti, at, 'EXAT', exp, 'NX') end)
             take(nextarg(), function()
               local id, exp = nextarg(), nextarg()
               redis.call('SET', p .. 'once:' .. id, 1, 'EXAT', exp, 'NX') end)
             take(nextarg(), function()
               local f, b = nextarg(), nextarg()
               redis.call('HSETNX', p .. 'oauth1', f, b) end)
             take(nextarg(), function()
               local id, r = nextarg(), nextarg()
               if redis.call('HEXISTS', p .. 'clients', id) == 0 then
                 log(p, '5', id, 0)
                 redis.call('HSET', p .. 'clients', id, r)
               end end)
             redis.call('HSET', p .. 'meta', marker, total)
             return 1",
        );
        let soon = now() + 1;
        let done: i64 = self.invoke(&s, |inv| {
            inv.arg(marker);
            inv.arg(import.records.len());
            for r in &import.records {
                let (kind, key, value) = kind_and_value(r);
                inv.arg(kind).arg(key).arg(value);
            }
            inv.arg(import.rotations.len());
            for (jti, exp, at) in &import.rotations {
                inv.arg(jti).arg((*exp).max(soon)).arg(at);
            }
            inv.arg(import.single_use.len());
            for (id, exp) in &import.single_use {
                inv.arg(id).arg((*exp).max(soon));
            }
            inv.arg(import.oauth1_tokens.len());
            for (p, s, b) in &import.oauth1_tokens {
                inv.arg(format!("{p}\n{s}")).arg(b.as_slice());
            }
            inv.arg(import.clients.len());
            for (id, r) in &import.clients {
                inv.arg(id).arg(r);
            }
        })?;
        Ok(done == 1)
    }
}
