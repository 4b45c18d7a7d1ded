//! Shared gateway state: the config snapshot behind an atomic pointer, the
//! revocation map, metrics, and the upstream connection pools. Reloads build a
//! whole new snapshot and swap it in, or keep the old one and say why.

pub mod audit;
pub mod hash_pool;
pub mod managed_clients;
pub mod oauth1_tokens;
pub mod route_signer;
pub mod throttle;
pub mod throttle_share;
pub mod verified;

use crate::bodies::LimitedBody;
use crate::config::{self, Config, ConfigErrors, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::revocation::{RevocationError, Revocations};
use crate::tokens::jwks::{RemoteKeys, RemoteSource};
use crate::tokens::Validator;
use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use oauth1_tokens::TokenStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Pooled HTTP/1.1 client towards upstreams.
/// Plain http:// passes through the TLS connector untouched.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, LimitedBody>;

/// Pools are shared by routes with the same connect timeout, TLS settings
/// and protocol.
type PoolKey = (Duration, Option<[u8; 32]>, crate::config::UpstreamProtocol);

/// An invalid config read again within this long is not reported again.
const REPEATED_FAILURE: Duration = Duration::from_secs(2);

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Expired entries removed from the state store per kind and round (one
/// round every 30 s): each holds the write lock briefly.
const STORE_PRUNE_BATCH: usize = 5_000;
/// The longest one pruning round (every 30 s) goes on.
const STORE_PRUNE_ROUND: Duration = Duration::from_secs(2);

/// A compiled route: its config plus everything the request path needs ready.
pub struct Route {
    pub cfg: RouteConfig,
    pub metrics: RouteMetrics,
    pub client: UpstreamClient,
    /// `Host` for the upstream request.
    pub host_header: HeaderValue,
    /// Segments in the path prefix (what `strip_prefix` removes).
    pub prefix_segments: usize,
    /// The route's scopes, space-separated, for 403 challenges.
    pub scope_list: String,
    /// Signing with an OAuth 1.0 provider's token, if the route asks for it.
    pub oauth1: Option<route_signer::RouteSigner>,
}

/// Everything a request reads, built whole from one config.
pub struct Snapshot {
    pub config: Config,
    pub routes: Vec<Route>,
    pub validator: Validator,
    /// Metrics for requests that matched no route.
    pub unmatched: RouteMetrics,
    /// Metrics for valet's own OAuth endpoints.
    pub oauth2: RouteMetrics,
    /// Metrics for the OAuth 1.0 flow endpoints.
    pub oauth1: RouteMetrics,
}

/// The running gateway's shared state.
pub struct App {
    snapshot: ArcSwap<Snapshot>,
    pub revocations: Revocations,
    pub metrics: Metrics,
    /// Allowances of authentication attempts, across config reloads
    /// (rebuilt only when the configured allowances change).
    pub throttle: ArcSwap<crate::app::throttle::Throttle>,
    /// The authorities' shared failures, on a store with a channel.
    pub throttle_share: Option<Arc<crate::app::throttle_share::Share>>,
    /// The only place password hashes are verified.
    pub hash_pool: crate::app::hash_pool::HashPool,
    /// Recently verified argon2id client secrets.
    pub verified_secrets: crate::app::verified::VerifiedSecrets,
    /// Pools by connect timeout; they outlive snapshots so reloads keep connections.
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
    ready: AtomicBool,
    config_digest: Mutex<[u8; 32]>,
    /// What the config and its companions, and the revocation file, looked
    /// like when last read; see [`App::sync_files`].
    files_seen: Mutex<(Vec<FileStamp>, FileStamp)>,
    /// The last config read succeeded, and since when (ms) the config in
    /// memory is known to be the files' content.
    config_good: AtomicBool,
    config_current_ms: AtomicI64,
    /// The digest and errors of the last invalid config read.
    config_failed: Mutex<Option<([u8; 32], std::time::Instant, ConfigErrors)>>,
    /// One re-read at a time for [`App::sync_files`].
    sync: tokio::sync::Mutex<()>,
    /// Every reload (file watcher, SIGHUP, admin API, token endpoint) goes
    /// through [`App::reload_files`], one at a time: an older read can never
    /// be stored after a newer one.
    reload_lock: Mutex<()>,
    /// One store follower at a time, from reading the log to putting its
    /// changes in force (a client's record included): see
    /// [`App::sync_files`].
    follow_lock: Mutex<()>,
    /// When the last follow that read the store to its end started (ms):
    /// a token request arriving before it needs no follow of its own.
    followed_ms: AtomicI64,
    /// When the last follow started, read to its end or not (ms): a token
    /// request arriving before a failed one does not try again.
    follow_tried_ms: AtomicI64,
    /// When a failed follow was last logged (ms).
    follow_warned_ms: AtomicI64,
    /// One token request's follow at a time (the others wait here, not on
    /// blocking threads).
    sync_follow: tokio::sync::Mutex<()>,
    /// A client change was read from the log but the config has not loaded
    /// with it yet (mid-edit): retried on every follow until it does.
    clients_pending: AtomicBool,
    /// OAuth 1.0 tokens; opened with the first config that configures them.
    oauth1_store: OnceLock<TokenStore>,
    /// OAuth 1.0 flows waiting for their callback.
    /// Trusted issuers' remote key sets, kept across snapshots (a reload
    /// with the same source keeps its keys; a changed source starts anew).
    key_sets: Mutex<Vec<Arc<RemoteKeys>>>,
    /// One permit per open WebSocket session (`limits.max_websockets`, read
    /// at start): an upgraded socket leaves its connection's slot, so it
    /// is bounded here.
    pub websockets: Arc<tokio::sync::Semaphore>,
    /// Open WebSocket sessions by subject (or source address).
    pub websocket_holders: Arc<dashmap::DashMap<Box<str>, usize>>,
    /// The permits `websockets` started with: all of them back means no
    /// session is open.
    pub max_websockets: usize,
    /// Turns true when shutdown asks open sessions to close (1001).
    pub websocket_closing: tokio::sync::watch::Sender<bool>,
    /// The role this process started with (a change takes a restart).
    pub started_role: crate::config::Role,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Revocation(#[from] RevocationError),
    #[error("{0}")]
    Config(#[from] ConfigErrors),
}

/// Set in every Kubernetes container.
pub const KUBERNETES_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The state store `c` names (Redis, or the embedded file), for writing or
/// only for reading.
pub fn open_store(
    c: &Config,
    writer: bool,
) -> Result<Arc<dyn crate::store::Store>, RevocationError> {
    let Some(r) = &c.store_redis else {
        // Under Kubernetes every pod would keep revocations of its own:
        // the embedded store only where one pod is meant.
        if std::env::var_os(KUBERNETES_ENV).is_some() && !c.store_single_replica {
            return Err(RevocationError {
                file: c.store_path.clone(),
                position: None,
                message: format!(
                    "running under Kubernetes ({KUBERNETES_ENV} is set) on the embedded store, which each pod would keep on its own (a token revoked at one pod would stay valid at the others): use store.redis for several pods, or set store.single_replica: true if one pod is intended"
                ),
            });
        }
        return crate::revocation::open_store(&c.store_path, !writer);
    };
    let s =
        crate::store::redis::RedisStore::open(r, writer).map_err(crate::revocation::store_error)?;
    Ok(Arc::new(s))
}

/// The files besides the main config whose content is part of a snapshot.
pub fn companion_files(c: &Config) -> Vec<std::path::PathBuf> {
    let upstream_tls = c
        .routes
        .iter()
        .filter_map(|r| r.upstream.tls.as_ref())
        .flat_map(|t| t.files.iter());
    // (Not the clients file: managed clients are read from the state store.)
    c.authorization_server
        .iter()
        .flat_map(|a| a.users_file.iter())
        .chain(upstream_tls)
        .cloned()
        .collect()
}

/// Digest of the config file plus its companions (a missing file hashes as
/// empty) and the managed clients' records.
fn config_digest(
    main: &[u8],
    companions: &[std::path::PathBuf],
    records: &managed_clients::Records,
) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut add = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_le_bytes());
        ctx.update(b);
    };
    add(main);
    for f in companions {
        add(&std::fs::read(f).unwrap_or_default());
    }
    for (id, r) in records {
        add(id.as_bytes());
        add(r.as_bytes());
    }
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

impl App {
    /// Builds the state from a validated config (reads the revocation file).
    pub fn new(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Metrics::new();
        // A validator never writes: the store is opened read only.
        let writer = config.role != crate::config::Role::Validator;
        let store = open_store(&config, writer)?;
        let revocations = Revocations::on_store(&config.revocation_file, store, writer)?;
        metrics.set_revocation_sizes(revocations.current().len());
        // Managed clients come from the store: compile the config again
        // with them (the caller's had the clients file, if any).
        let (config, records) = if config.role == crate::config::Role::Validator {
            (config, Vec::new())
        } else {
            let store = revocations.store().as_ref();
            managed_clients::import_clients_file(&config, store)?;
            managed_clients::load(&config.path, store, &config.store_path)?
        };
        let config_digest = std::fs::read(&config.path)
            .map(|b| config_digest(&b, &companion_files(&config), &records))
            .unwrap_or_default();
        let clients = Mutex::new(HashMap::new());
        let key_sets = Mutex::new(Vec::new());
        let max_websockets = config.limits.max_websockets;
        let started_role = config.role;
        let snapshot = build_snapshot(&metrics, &clients, &key_sets, config);
        let auth = snapshot.config.authorization_server.as_ref();
        // The channel's key: what every authority of the fleet holds and
        // other Redis users do not (their password), and the fleet's prefix.
        let throttle_share = snapshot
            .config
            .store_redis
            .as_ref()
            .filter(|_| started_role != crate::config::Role::Validator)
            .filter(|_| revocations.store().broadcasts())
            .map(|r| {
                let mut secret = r.prefix.as_bytes().to_vec();
                secret.push(0);
                secret.extend_from_slice(r.password.as_ref().map_or(&[][..], |p| p.expose()));
                crate::app::throttle_share::Share::new(&metrics, &secret)
            });
        let throttle = crate::app::throttle::Throttle::new(
            auth.map_or_else(default_allowances, |a| a.allowances),
            throttle_share.clone(),
        );
        let workers = match auth.map_or(0, |a| a.hash_workers) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let hash_pool = crate::app::hash_pool::HashPool::start(
            workers,
            metrics.hash_queue_depth.clone(),
            metrics.hash_jobs.clone(),
        );
        let app = App {
            snapshot: ArcSwap::from_pointee(snapshot),
            revocations,
            metrics,
            throttle: ArcSwap::from_pointee(throttle),
            throttle_share,
            hash_pool,
            verified_secrets: Default::default(),
            clients,
            ready: AtomicBool::new(false),
            config_digest: Mutex::new(config_digest),
            files_seen: Mutex::new((Vec::new(), FileStamp::MISSING)),
            config_good: AtomicBool::new(true),
            config_failed: Mutex::new(None),
            // Read just before this, at start-up.
            config_current_ms: AtomicI64::new(crate::revocation::now_ms() - 1000),
            sync: Default::default(),
            reload_lock: Mutex::new(()),
            follow_lock: Mutex::new(()),
            // The store was read whole just now (`Revocations::on_store`).
            followed_ms: AtomicI64::new(crate::revocation::now_ms()),
            follow_warned_ms: AtomicI64::new(0),
            follow_tried_ms: AtomicI64::new(0),
            sync_follow: Default::default(),
            clients_pending: AtomicBool::new(false),
            oauth1_store: OnceLock::new(),
            key_sets,
            websockets: Arc::new(tokio::sync::Semaphore::new(max_websockets)),
            websocket_holders: Default::default(),
            max_websockets,
            websocket_closing: tokio::sync::watch::channel(false).0,
            started_role,
        };
        app.open_oauth1_store(&app.snapshot.load().config);
        Ok(Arc::new(app))
    }

    /// The OAuth 1.0 token store, if one is configured.
    pub fn oauth1_store(&self) -> Option<&TokenStore> {
        self.oauth1_store.get()
    }

    /// Opens the OAuth 1.0 tokens (in the state store) the first time a
    /// config has an `oauth1` section, importing the file of earlier
    /// versions once. What cannot be read is reported (log and metric) and
    /// valet carries on with the rest.
    fn open_oauth1_store(&self, c: &Config) {
        let Some(o) = &c.oauth1 else { return };
        if self.oauth1_store.get().is_some() {
            return;
        }
        let key = TokenStore::key_from_bytes(o.store_key.expose()).expect("checked at load");
        let (store, problems) = TokenStore::open(
            self.revocations.store().clone(),
            key,
            o.store_file.as_deref(),
        );
        self.metrics.reload("oauth1_store", problems.is_empty());
        let _ = self.oauth1_store.set(store);
    }

    /// The snapshot in force; hold it for the duration of one request.
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Serving, and holding the store's revocations (a validator that
    /// started without the store is not ready until it read it).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.revocations.synced()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Re-reads the config file. Unchanged content is a no-op (`Ok(false)`);
    /// an invalid file keeps the current snapshot and returns every error.
    pub fn reload_config(&self) -> Result<bool, ConfigErrors> {
        let _one = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.load_config()
    }

    fn load_config(&self) -> Result<bool, ConfigErrors> {
        let started = crate::revocation::now_ms();
        let r = self.load_config_files();
        match &r {
            Ok(_) => {
                self.config_good.store(true, Ordering::Release);
                self.config_current_ms.fetch_max(started, Ordering::AcqRel);
            }
            Err(_) => self.config_good.store(false, Ordering::Release),
        }
        r
    }

    /// The managed clients' records in the store (none for a validator,
    /// which has no clients).
    fn managed_records(&self) -> Result<managed_clients::Records, ConfigErrors> {
        if self.started_role == crate::config::Role::Validator {
            return Ok(Vec::new());
        }
        let store_path = self.snapshot.load().config.store_path.clone();
        managed_clients::records(self.revocations.store().as_ref(), &store_path)
    }

    /// Compiles `text` (the config at `path`) with the managed clients.
    fn compile(
        &self,
        path: &std::path::Path,
        text: &str,
        records: &managed_clients::Records,
    ) -> Result<Config, ConfigErrors> {
        if self.started_role == crate::config::Role::Validator {
            return config::parse(path, text);
        }
        let store_path = self.snapshot.load().config.store_path.clone();
        managed_clients::compile(path, text, records, &store_path)
    }

    /// Writes what the new config's `generate_if_missing` asks for (a file
    /// deleted while valet runs); another process's file wins.
    fn with_new_files(
        &self,
        cfg: Config,
        text: &str,
        records: &managed_clients::Records,
    ) -> Result<Config, ConfigErrors> {
        let err = |message: String| {
            ConfigErrors(vec![config::ConfigError {
                file: cfg.path.clone(),
                position: None,
                message,
            }])
        };
        match cfg.create_new_files() {
            Ok(true) => Ok(cfg),
            Ok(false) => self.compile(&cfg.path.clone(), text, records),
            Err(e) => Err(err(e)),
        }
    }

    /// Whether the last config read succeeded.
    pub fn config_good(&self) -> bool {
        self.config_good.load(Ordering::Acquire)
    }

    /// The config in memory was the files' content as of this time (ms).
    pub fn config_current_ms(&self) -> i64 {
        self.config_current_ms.load(Ordering::Acquire)
    }

    /// A reload keeps the role and the store this process started with: a
    /// validator reloaded as an authority would hold a read-only store, and
    /// a new store path would leave this process's followers behind.
    fn same_role(&self, cfg: Config) -> Result<Config, ConfigErrors> {
        let old = self.snapshot.load();
        let changed = if cfg.role != self.started_role {
            Some("role")
        } else if cfg.store_path != old.config.store_path {
            Some("store.path")
        } else if cfg
            .store_redis
            .as_ref()
            .map(|r| (&r.url, &r.prefix, &r.username))
            != old
                .config
                .store_redis
                .as_ref()
                .map(|r| (&r.url, &r.prefix, &r.username))
        {
            Some("store.redis")
        } else {
            None
        };
        match changed {
            None => Ok(cfg),
            Some(what) => Err(ConfigErrors(vec![config::ConfigError {
                file: cfg.path,
                position: None,
                message: format!(
                    "{what} cannot change while valet runs; restart it to use the new {what}"
                ),
            }])),
        }
    }

    fn load_config_files(&self) -> Result<bool, ConfigErrors> {
        let path = self.snapshot.load().config.path.clone();
        let bytes = std::fs::read(&path).map_err(|e| {
            ConfigErrors(vec![config::ConfigError {
                file: path.clone(),
                position: None,
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let records = self.managed_records().inspect_err(|errors| {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), error = %e.message, "config not reloaded; the previous config stays in force");
            }
        })?;
        let d = config_digest(
            &bytes,
            &companion_files(&self.snapshot.load().config),
            &records,
        );
        if *self.config_digest.lock().expect("not poisoned") == d {
            return Ok(false);
        }
        // The same invalid files again within moments (the watcher saw more
        // events of one edit): the same answer, not logged or counted twice.
        // Later it is read again: what made it fail may lie outside the
        // digest (a key file that now exists; SIGHUP after fixing it).
        if let Some((failed, at, errors)) = &*self.config_failed.lock().expect("not poisoned") {
            if *failed == d && at.elapsed() < REPEATED_FAILURE {
                return Err(errors.clone());
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let result = self
            .compile(&path, &text, &records)
            .and_then(|cfg| self.same_role(cfg));
        self.metrics.reload("config", result.is_ok());
        let cfg = match result.and_then(|cfg| self.with_new_files(cfg, &text, &records)) {
            Ok(cfg) => cfg,
            Err(errors) => {
                for e in &errors.0 {
                    let (line, column) = e.position.unwrap_or((0, 0));
                    tracing::error!(file = %e.file.display(), line, column, error = %e.message, "config not reloaded; the previous config stays in force");
                }
                *self.config_failed.lock().expect("not poisoned") =
                    Some((d, std::time::Instant::now(), errors.clone()));
                return Err(errors);
            }
        };
        *self.config_failed.lock().expect("not poisoned") = None;
        let old = self.snapshot.load();
        let addrs = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.address, l.tls.clone()))
                .collect::<Vec<_>>()
        };
        if addrs(&cfg) != addrs(&old.config) || cfg.metrics_address != old.config.metrics_address {
            tracing::warn!(
                "listener or metrics addresses changed; those take effect on restart only"
            );
        }
        if cfg.revocation_file != old.config.revocation_file {
            tracing::warn!("revocation.file changed; the new path takes effect on restart only");
        }
        // The digest stored is of the files as read *before* parsing: a write
        // landing during the parse then differs from it, and the next reload
        // reads again. If the companion paths changed, nothing read before
        // matches them: store a digest nothing equals, so the next reload
        // reads them under their new names.
        let d = if companion_files(&cfg) == companion_files(&old.config) {
            d
        } else {
            [0xff; 32]
        };
        self.open_oauth1_store(&cfg);
        let snap = build_snapshot(&self.metrics, &self.clients, &self.key_sets, cfg);
        let allowances = snap
            .config
            .authorization_server
            .as_ref()
            .map_or_else(default_allowances, |a| a.allowances);
        if allowances != self.throttle.load().allowances {
            self.throttle
                .store(Arc::new(crate::app::throttle::Throttle::new(
                    allowances,
                    self.throttle_share.clone(),
                )));
        }
        // A changed secret can never match an old entry (the key includes
        // the stored hash); forgetting them all also forgets removed clients.
        self.verified_secrets.clear();
        self.snapshot.store(Arc::new(snap));
        *self.config_digest.lock().expect("not poisoned") = d;
        Ok(true)
    }

    /// Makes what is in memory at least as new as the state store and the
    /// files on disk now, and returns the time (seconds) it was so. The
    /// token endpoints call it first: another process (the CLI, another
    /// authority) may have written a new secret and then a cut-off, and the
    /// follower's or the file watcher's pickup comes later. A token issued
    /// with `iat` at this time was authenticated against the clients as
    /// they were at it; had a secret been replaced after, its cut-off is
    /// later still and revokes the token. Costs one read of the store's log
    /// and a few `stat`s when nothing changed; re-reads (one at a time)
    /// what did: the config with its users file, or only the revocation
    /// file.
    pub async fn sync_files(self: &Arc<Self>) -> i64 {
        let now_ms = crate::revocation::now_ms();
        let now = now_ms.div_euclid(1000);
        // The store first: a client changed (a new secret) or cut off by
        // another process is in force once this returns (the follower holds
        // its lock until the change is applied, config reload included).
        let store_ok = self.followed_ms.load(Ordering::Acquire) >= now_ms || {
            // Concurrent requests share one follow: whoever waited here
            // while a follow that started after it ran needs none.
            let _one = self.sync_follow.lock().await;
            if self.followed_ms.load(Ordering::Acquire) >= now_ms {
                true
            } else if self.follow_tried_ms.load(Ordering::Acquire) >= now_ms {
                // One that started after this request failed: the store is
                // out of reach; do not queue another behind it.
                false
            } else {
                let app = self.clone();
                tokio::task::spawn_blocking(move || app.follow_store())
                    .await
                    .unwrap_or(false)
            }
        };
        let (config_files, revocation_file) = {
            let snap = self.snapshot.load();
            let mut files = vec![snap.config.path.clone()];
            files.extend(companion_files(&snap.config));
            (files, self.revocations.path().to_path_buf())
        };
        let stamps = || {
            (
                FileStamp::of(&config_files),
                FileStamp::one(&revocation_file),
            )
        };
        let seen = stamps();
        if *self.files_seen.lock().expect("not poisoned") == seen {
            if self.config_good() && store_ok {
                self.config_current_ms.fetch_max(now_ms, Ordering::AcqRel);
            }
            return now;
        }
        let _one = self.sync.lock().await;
        let seen = stamps();
        let last = self.files_seen.lock().expect("not poisoned").clone();
        if last == seen {
            return now;
        }
        let app = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // Stamped before reading: a write during the read is seen next time.
            if last.0 != seen.0 {
                app.reload_files();
            } else {
                app.reload_revocations();
            }
            *app.files_seen.lock().expect("not poisoned") = seen;
        })
        .await;
        now
    }

    /// The one reload path: config (with its clients and users files), the
    /// revocation file and the OAuth 1.0 token store, each kept as it was if
    /// its file is invalid (logged with file and position, and counted).
    /// Blocking; one at a time. Returns whether the config loaded.
    pub fn reload_files(&self) -> bool {
        let _one = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let ok = match self.load_config() {
            Ok(true) => {
                tracing::info!("config reloaded");
                true
            }
            Ok(false) => true,
            // Logged and counted where it was found (once per content).
            Err(_) => false,
        };
        self.reload_revocations();
        ok
    }

    /// Re-reads the revocation file, logging and counting the outcome.
    pub fn reload_revocations(&self) {
        match self.revocations.reload() {
            Ok(false) => {}
            Ok(true) => {
                let sizes = self.revocations.current().len();
                self.metrics.set_revocation_sizes(sizes);
                self.metrics.reload("revocation", true);
                tracing::info!(
                    tokens = sizes.0,
                    clients = sizes.1,
                    subjects = sizes.2,
                    "revocation list reloaded"
                );
            }
            Err(e) => {
                self.metrics.reload("revocation", false);
                tracing::error!(error = %e, "revocation list not reloaded; the previous list stays in force");
            }
        }
    }

    /// Drops expired entries from the verified-token cache and expired
    /// OAuth 1.0 flows.
    /// Starts a fetch of every remote key set that is due (never fetched,
    /// or past its fresh time); each set allows one fetch at a time.
    pub fn refresh_key_sets(&self) {
        let sets: Vec<Arc<RemoteKeys>> = self.key_sets.lock().expect("not poisoned").clone();
        for k in sets {
            tokio::spawn(async move { k.refresh_if_due().await });
        }
    }

    /// Applies the state store's new changes (other processes' writes);
    /// blocking I/O. A failure is counted and logged; what is held stays.
    /// Applies what other processes wrote to the store: revocations,
    /// OAuth 1.0 tokens, and managed clients (by reloading the config).
    /// Whether the store could be read. Blocking I/O.
    pub fn follow_store(&self) -> bool {
        let _one = self.follow_lock.lock().unwrap_or_else(|e| e.into_inner());
        let started_ms = crate::revocation::now_ms();
        self.follow_tried_ms.fetch_max(started_ms, Ordering::AcqRel);
        let t = std::time::Instant::now();
        let r = self.revocations.follow();
        self.metrics.store_call("follow", t.elapsed(), r.is_ok());
        if r.is_ok() {
            self.metrics.store_followed_at.set(crate::revocation::now());
        }
        let ok = match r {
            Ok(f) => {
                if f.whole && !f.first {
                    self.metrics.store_resyncs.inc();
                }
                if f.revocations > 0 {
                    self.metrics
                        .set_revocation_sizes(self.revocations.current().len());
                }
                self.follow_oauth1_tokens(&f);
                // (Reloaded only if the records differ from those in force.)
                if f.clients || f.whole {
                    self.clients_pending.store(true, Ordering::Release);
                }
                if self.clients_pending.load(Ordering::Acquire) && self.reload_files() {
                    self.clients_pending.store(false, Ordering::Release);
                }
                self.followed_ms.fetch_max(started_ms, Ordering::AcqRel);
                true
            }
            Err(e) => {
                // Once per half minute: the follower tries a few times a
                // second while the store is down.
                let now = crate::revocation::now_ms();
                let last = self.follow_warned_ms.load(Ordering::Relaxed);
                if now - last >= 30_000
                    && self
                        .follow_warned_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(error = %e, synced = self.revocations.synced(), "cannot read the state store's changes; the revocations held stay in force (said again every 30 s while it lasts)");
                }
                false
            }
        };
        let position = self.revocations.position();
        self.metrics.store_position.set(position);
        let head = self.revocations.store().head();
        self.metrics.store_lag_entries.set((head - position).max(0));
        let behind_ms = crate::revocation::now_ms() - self.followed_ms.load(Ordering::Acquire);
        self.metrics
            .store_lag_seconds
            .set(behind_ms.max(0) as f64 / 1000.0);
        self.metrics
            .store_stale
            .set(i64::from(self.revocations_stale()));
        let store = self.revocations.store();
        let reconnects = store.reconnects();
        let counted = self.metrics.store_reconnects.get();
        if reconnects > counted {
            self.metrics.store_reconnects.inc_by(reconnects - counted);
        }
        let changes = store.generation_changes();
        let counted = self.metrics.store_generation_changes.get();
        if changes > counted {
            self.metrics
                .store_generation_changes
                .inc_by(changes - counted);
        }
        for (setting, state) in store.settings() {
            for s in ["verified", "unverified", "weaker"] {
                self.metrics
                    .store_settings
                    .with_label_values(&[setting, s])
                    .set(i64::from(s == state));
            }
        }
        ok
    }

    /// Whether the revocations held may be behind the store's: it was
    /// never read whole, or has not been read to its end for longer than
    /// `store.stale_after`.
    #[inline]
    pub fn revocations_stale(&self) -> bool {
        if !self.revocations.synced() {
            return true;
        }
        let after = self.snapshot.load().config.store_stale_after.as_millis() as i64;
        crate::revocation::now_ms() - self.followed_ms.load(Ordering::Acquire) > after
    }

    /// Puts in force the OAuth 1.0 tokens other processes changed.
    fn follow_oauth1_tokens(&self, f: &crate::revocation::Followed) {
        let Some(store) = self.oauth1_store() else {
            return;
        };
        let r = if f.whole {
            store.load_all()
        } else {
            f.oauth1_tokens
                .iter()
                .try_for_each(|(p, s)| store.refresh(p, s))
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot read OAuth 1.0 tokens changed in the state store; the tokens held stay in force");
        }
    }

    /// Prunes what expired from the state store (bounded batches) and from
    /// memory, and counts the store's entries; blocking I/O.
    pub fn prune_store(&self) {
        let slack = self.longest_skew();
        self.revocations.prune_expired(slack);
        // A validator only reads: the writers prune, in batches (each holds
        // the write lock briefly) until nothing is left or the round's
        // time is up, so pruning keeps pace with a busy authority.
        if self.started_role != crate::config::Role::Validator {
            let round = std::time::Instant::now();
            loop {
                let t = std::time::Instant::now();
                let r = self.revocations.prune_store(slack, STORE_PRUNE_BATCH);
                self.metrics.store_call("prune", t.elapsed(), r.is_ok());
                match r {
                    Ok(n) if n > 0 && round.elapsed() < STORE_PRUNE_ROUND => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot prune the state store");
                        break;
                    }
                }
            }
        }
        if let Ok(imports) = self.revocations.store().imports() {
            for (file, n) in imports {
                self.metrics
                    .store_imported
                    .with_label_values(&[&file])
                    .set(n);
            }
        }
        if let Ok(c) = self.revocations.store().counts() {
            for (kind, n) in [
                ("token", c.tokens),
                ("family", c.families),
                ("client", c.clients),
                ("subject", c.subjects),
                ("rotation", c.rotations),
                ("single_use", c.single_use),
                ("oauth1_token", c.oauth1_tokens),
                ("oauth1_flow", c.oauth1_flows),
                ("managed_client", c.managed_clients),
                ("log", c.log),
            ] {
                self.metrics
                    .store_entries
                    .with_label_values(&[kind])
                    .set(n as i64);
            }
        }
        self.metrics
            .set_revocation_sizes(self.revocations.current().len());
    }

    /// The longest clock skew any token is accepted with (valet's own, or a
    /// trusted issuer's), in seconds: how long past its expiry a
    /// revocation must still hold.
    fn longest_skew(&self) -> i64 {
        let snap = self.snapshot.load();
        let t = &snap.config.tokens;
        t.issuers
            .iter()
            .map(|i| i.clock_skew)
            .chain([t.clock_skew])
            .max()
            .unwrap_or_default()
            .as_secs() as i64
            + 1
    }

    pub fn prune_caches(&self) {
        self.throttle.load().prune();
        let snap = self.snapshot.load();
        let ttl = snap
            .config
            .authorization_server
            .as_ref()
            .map_or(Duration::ZERO, |a| a.verified_secret_ttl);
        self.verified_secrets.prune(ttl);
        self.metrics
            .throttle_keys
            .set(self.throttle.load().len() as i64);
        self.snapshot
            .load()
            .validator
            .prune(crate::revocation::now());
    }
}

/// The verified bearer token of a request (RFC 6750 §2.1 header only).
pub async fn authenticate(
    app: &App,
    snap: &Snapshot,
    h: &http::HeaderMap,
) -> Result<Arc<crate::tokens::VerifiedToken>, crate::refusal::ProxyError> {
    let mut values = h.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(crate::refusal::ProxyError::NoToken);
    };
    if values.next().is_some() {
        return Err(crate::refusal::ProxyError::BadRequest(
            "more than one Authorization header",
        ));
    }
    let v = v.as_bytes();
    // RFC 6750 §2.1: `Bearer` (case-insensitive), one space, the token.
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(crate::refusal::ProxyError::NoToken);
    }
    let token = std::str::from_utf8(&v[7..])
        .map_err(|_| {
            crate::refusal::ProxyError::InvalidToken(crate::tokens::TokenError::Malformed)
        })?
        .trim();
    let validate = || {
        let now = crate::revocation::now();
        snap.validator
            .validate(token, &app.revocations.current(), now)
    };
    let result = match validate() {
        // A trusted issuer's key set may have rotated: one refetch, shared
        // with every request waiting for it, and rate-limited per issuer.
        Err(crate::tokens::TokenError::UnknownKey) => match snap.validator.remote_keys_for(token) {
            Some((keys, kid)) if keys.refetch_for(kid.as_deref()).await => validate(),
            _ => Err(crate::tokens::TokenError::UnknownKey),
        },
        r => r,
    };
    result.map_err(crate::refusal::ProxyError::InvalidToken)
}

/// Identifies a file's content without reading it: a replaced file (valet
/// writes by rename) has a new inode, an edited one a new mtime or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    inode: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    len: u64,
}

impl FileStamp {
    const MISSING: FileStamp = FileStamp {
        dev: 0,
        inode: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        len: 0,
    };

    fn one(p: &std::path::Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        match std::fs::metadata(p) {
            Ok(m) => FileStamp {
                dev: m.dev(),
                inode: m.ino(),
                mtime_ns: ns(m.mtime(), m.mtime_nsec()),
                ctime_ns: ns(m.ctime(), m.ctime_nsec()),
                len: m.len(),
            },
            Err(_) => FileStamp::MISSING,
        }
    }

    fn of(paths: &[std::path::PathBuf]) -> Vec<FileStamp> {
        paths.iter().map(|p| FileStamp::one(p)).collect()
    }
}

/// Allowances when there is no authorization server (nothing uses them).
fn default_allowances() -> crate::config::Allowances {
    use crate::config as d;
    let a = |burst| crate::config::Allowance {
        burst,
        window: d::DEFAULT_FAILED_AUTH_WINDOW,
    };
    crate::config::Allowances {
        per_client_source: a(d::DEFAULT_MAX_FAILED_AUTH),
        per_source: a(d::DEFAULT_MAX_FAILED_AUTH_PER_SOURCE),
        per_username: a(d::DEFAULT_MAX_FAILED_AUTH),
        expected_replicas: 1,
    }
}

fn pool_key(
    connect_timeout: Duration,
    tls: Option<&crate::config::UpstreamTls>,
    protocol: crate::config::UpstreamProtocol,
) -> PoolKey {
    (connect_timeout, tls.map(|t| t.id), protocol)
}

fn client_for(
    clients: &Mutex<HashMap<PoolKey, UpstreamClient>>,
    connect_timeout: Duration,
    tls: Option<&crate::config::UpstreamTls>,
    protocol: crate::config::UpstreamProtocol,
) -> UpstreamClient {
    use crate::config::UpstreamProtocol;
    let mut clients = clients.lock().expect("not poisoned");
    clients
        .entry(pool_key(connect_timeout, tls, protocol))
        .or_insert_with(|| {
            let mut http = HttpConnector::new();
            http.set_connect_timeout(Some(connect_timeout));
            http.set_nodelay(true);
            // The TLS connector wraps it for https:// upstreams.
            http.enforce_http(false);
            let https = match tls {
                Some(t) => {
                    // https only: such a pool never speaks plaintext.
                    let b = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config((*t.config).clone())
                        .https_only();
                    let b = match &t.server_name {
                        Some(n) => b.with_server_name_resolver(
                            hyper_rustls::FixedServerNameResolver::new(n.clone()),
                        ),
                        None => b,
                    };
                    // ALPN offers h2 unless the route says HTTP/1.1.
                    match protocol {
                        UpstreamProtocol::Http1 => b.enable_http1().wrap_connector(http),
                        _ => b.enable_all_versions().wrap_connector(http),
                    }
                }
                // No TLS settings: http:// only (an https:// upstream
                // always has them, defaults included).
                None => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(plain_only())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http),
            };
            let mut builder = Client::builder(TokioExecutor::new());
            builder.http2_only(protocol == UpstreamProtocol::H2c);
            builder
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(https)
        })
        .clone()
}

/// A TLS config that trusts nothing: pools of http:// upstreams never use
/// it, and an https:// URI reaching one fails rather than trusting anyone.
fn plain_only() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// The key set for `src`: the one held if its source is unchanged.
fn key_set_for(
    metrics: &Metrics,
    key_sets: &Mutex<Vec<Arc<RemoteKeys>>>,
    src: &RemoteSource,
) -> Arc<RemoteKeys> {
    let mut sets = key_sets.lock().expect("not poisoned");
    if let Some(k) = sets.iter().find(|k| k.source == *src) {
        return k.clone();
    }
    let k = RemoteKeys::new(src.clone(), metrics.key_set(&src.issuer));
    sets.retain(|o| o.source.issuer != src.issuer);
    sets.push(k.clone());
    k
}

fn build_snapshot(
    metrics: &Metrics,
    clients: &Mutex<HashMap<PoolKey, UpstreamClient>>,
    key_sets: &Mutex<Vec<Arc<RemoteKeys>>>,
    config: Config,
) -> Snapshot {
    let routes = config
        .routes
        .iter()
        .map(|r| Route {
            metrics: metrics.route(&r.name),
            client: client_for(
                clients,
                r.connect_timeout,
                r.upstream.tls.as_ref(),
                r.upstream.protocol,
            ),
            host_header: HeaderValue::from_str(r.upstream.authority.as_str())
                .expect("authority is a header value"),
            scope_list: r.scopes.join(" "),
            prefix_segments: r.path_prefix.split('/').filter(|s| !s.is_empty()).count(),
            oauth1: r.upstream_auth_oauth1.as_ref().and_then(|name| {
                let p = config.oauth1.as_ref()?.provider(name)?;
                Some(route_signer::RouteSigner::new(
                    metrics,
                    p.clone(),
                    r.oauth1_signed_origin.clone(),
                ))
            }),
            cfg: r.clone(),
        })
        .collect();
    // Pools whose settings the new config no longer names are forgotten:
    // the snapshots still holding them drop them when their last request
    // ends, and with them their idle connections.
    {
        let mut pools = clients.lock().expect("not poisoned");
        pools.retain(|k, _| {
            config.routes.iter().any(|r| {
                pool_key(
                    r.connect_timeout,
                    r.upstream.tls.as_ref(),
                    r.upstream.protocol,
                ) == *k
            })
        });
        metrics.upstream_pools.set(pools.len() as i64);
    }
    let validator = Validator::with_remote(&config.tokens, &mut |src| {
        key_set_for(metrics, key_sets, src)
    });
    // Sets of issuers no longer trusted stop being refreshed.
    key_sets
        .lock()
        .expect("not poisoned")
        .retain(|k| validator.uses(k));
    Snapshot {
        validator,
        unmatched: metrics.route("none"),
        oauth2: metrics.route("oauth2"),
        oauth1: metrics.route("oauth1"),
        routes,
        config,
    }
}
