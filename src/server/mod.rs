//! Listeners and the process lifecycle: bind, accept with a connection limit,
//! TLS handshake with a deadline, serve HTTP/1.1 and HTTP/2, reload on file
//! changes or SIGHUP, and drain on SIGTERM/SIGINT.

pub mod admin;
pub mod admin_api;
pub mod conn;
pub mod dispatch;
pub mod tls;
pub mod watch;

use crate::app::App;
use crate::bodies::RequestBody;
use crate::config::Config;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::CertResolver;
use tokio::net::TcpListener;
use tokio::sync::{watch as wch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
    #[error("cannot watch files for changes: {0}")]
    Watch(String),
    /// Creating what `generate_if_missing` asks for failed.
    #[error("{0}")]
    NewFiles(String),
}

/// A started gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub app: Arc<App>,
    /// Bound addresses of the configured listeners, in config order.
    pub listeners: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub echo_upstream: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    shutdown: wch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    drain: Drain,
    drained: tokio::sync::mpsc::Receiver<()>,
    grace: Duration,
    drain_delay: Duration,
    resolvers: Vec<Arc<CertResolver>>,
    _watcher: Option<watch::Watcher>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Binds every listener and starts serving `config`.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    // The config compiler writes nothing; serving is when generated keys,
    // peppers and store keys are written. If another process wrote them
    // first, theirs are the ones to use.
    let config = match config.create_new_files().map_err(ServeError::NewFiles)? {
        true => config,
        false => {
            crate::config::load(&config.path).map_err(|e| ServeError::NewFiles(e.to_string()))?
        }
    };
    let echo = match config.echo_upstream {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let mut bound = Vec::new();
    for l in &config.listeners {
        let resolver = CertResolver::new(l.tls.clone())?;
        if l.tls == crate::config::TlsSource::SelfSignedForDevelopment {
            tracing::warn!(listener = %l.name, "serving a SELF-SIGNED development certificate; never use self_signed_for_development in production");
        }
        bound.push((l.name.clone(), bind(l.address).await?, resolver));
    }
    let metrics_listener = match config.metrics_address {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin_listener = match &config.admin {
        Some(a) => Some(bind(a.address).await?),
        None => None,
    };
    let grace = config.limits.shutdown_grace;
    let drain_delay = config.limits.drain_delay;
    for w in config.authorization_server.iter().flat_map(|a| &a.warnings) {
        tracing::warn!("{w}");
    }
    let app = App::new(config)?;
    let (shutdown, shutdown_rx) = wch::channel(false);
    let (drain, drained) = tokio::sync::mpsc::channel(1);
    let mut tasks = Vec::new();

    let echo_upstream = match echo {
        Some(l) => {
            let addr = l.local_addr().expect("bound");
            tracing::info!(%addr, "built-in echo upstream listening (development only)");
            tasks.push(tokio::spawn(serve_plain(
                l,
                shutdown_rx.clone(),
                "echo",
                crate::echo::echo,
            )));
            Some(addr)
        }
        None => None,
    };
    let mut listeners = Vec::new();
    let mut resolvers = Vec::new();
    for (index, (name, l, resolver)) in bound.into_iter().enumerate() {
        let addr = l.local_addr().expect("bound");
        tracing::info!(listener = %name, %addr, "listening (TLS)");
        listeners.push(addr);
        resolvers.push(resolver.clone());
        let tls = TlsAcceptor::from(tls::server_config(resolver));
        tasks.push(tokio::spawn(accept_loop(
            app.clone(),
            index,
            l,
            tls,
            shutdown_rx.clone(),
            drain.clone(),
        )));
    }
    let metrics = metrics_listener.map(|l| {
        let app = app.clone();
        let addr = l.local_addr().expect("bound");
        tracing::info!(%addr, "metrics and health listening (/metrics, /healthz, /readyz)");
        tasks.push(tokio::spawn(serve_plain(
            l,
            shutdown_rx.clone(),
            "metrics",
            move |req| std::future::ready(admin::respond(&app, &req)),
        )));
        addr
    });
    let admin = admin_listener.map(|l| {
        let app = app.clone();
        let addr = l.local_addr().expect("bound");
        tracing::info!(%addr, "admin API listening");
        tasks.push(tokio::spawn(serve_plain(
            l,
            shutdown_rx.clone(),
            "admin",
            move |req| admin_api::respond(app.clone(), req),
        )));
        addr
    });
    let watcher = watch::start(app.clone(), resolvers.clone(), shutdown_rx.clone())
        .map_err(ServeError::Watch)?;
    // Off the request path: expired cache entries leave, and trusted
    // issuers' key sets are fetched when due.
    let store_rx = shutdown_rx.clone();
    {
        let app = app.clone();
        let mut rx = shutdown_rx;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            // Trusted issuers' key sets: fetched at start, then when due.
            let mut keys = tokio::time::interval(Duration::from_secs(1));
            keys.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // Off the workers: past its cap a throttle sorts
                        // its keys to evict.
                        let a = app.clone();
                        let _ = tokio::task::spawn_blocking(move || a.prune_caches()).await;
                    }
                    _ = keys.tick() => app.refresh_key_sets(),
                    _ = rx.changed() => return,
                }
            }
        }));
    }
    // The state store, in tasks of their own (its calls block a thread):
    // other processes' revocations are followed from its log, seen within
    // STORE_FOLLOW of their write (at once on a store that can say when
    // it changed: Redis); what expired is pruned every 30 s.
    if let Some(share) = &app.throttle_share {
        share.start(app.revocations.store().clone(), Arc::downgrade(&app));
    }
    {
        let app = app.clone();
        let mut rx = store_rx.clone();
        tasks.push(tokio::spawn(async move {
            let _stop = StopSharing(app.throttle_share.clone());
            loop {
                let a = app.clone();
                let round = tokio::task::spawn_blocking(move || {
                    let at = a.revocations.position();
                    a.revocations.store().wait_for_changes(at, STORE_FOLLOW);
                    // A store that answers but refuses (a schema this
                    // valet cannot read, an ACL) has changes waiting at
                    // once: pace the retries instead of spinning.
                    if !a.follow_store() {
                        std::thread::sleep(STORE_FOLLOW);
                    }
                });
                tokio::select! {
                    _ = round => {}
                    _ = rx.changed() => return,
                }
            }
        }));
    }
    {
        let app = app.clone();
        let mut rx = store_rx;
        tasks.push(tokio::spawn(async move {
            let mut prune = tokio::time::interval(Duration::from_secs(30));
            prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let a = app.clone();
                tokio::select! {
                    _ = prune.tick() => {
                        let _ = tokio::task::spawn_blocking(move || a.prune_store()).await;
                    }
                    _ = rx.changed() => return,
                }
            }
        }));
    }
    app.set_ready(true);
    Ok(Running {
        app,
        listeners,
        metrics,
        echo_upstream,
        admin,
        shutdown,
        tasks,
        drain,
        drained,
        grace,
        drain_delay,
        resolvers,
        _watcher: Some(watcher),
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish for up to the
    /// configured grace period, then returns. Returns false if it had to cut
    /// connections off.
    pub async fn shutdown(self) -> bool {
        self.app.set_ready(false);
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Every accept loop has ended; each connection holds a sender and
        // closes gracefully on the shutdown signal. `recv` returns `None`
        // once the last one is gone.
        drop(self.drain);
        let mut drained = self.drained;
        let clean = tokio::time::timeout_at(deadline, drained.recv())
            .await
            .is_ok();
        close_websockets(&self.app, deadline).await;
        clean
    }
}

/// WebSocket sessions have the rest of the grace to end by themselves;
/// then each side of each one gets a close frame (1001 going away) at a
/// frame boundary, and a bounded time to answer it.
async fn close_websockets(app: &App, deadline: tokio::time::Instant) {
    let all = u32::try_from(app.max_websockets).unwrap_or(u32::MAX);
    let sessions = app.websockets.clone();
    let none_open = || sessions.acquire_many(all);
    if tokio::time::timeout_at(deadline, none_open()).await.is_ok() {
        return;
    }
    let open = app.metrics.websockets_open.get();
    tracing::info!(
        open,
        "grace period over; closing WebSocket sessions (1001 going away)"
    );
    // Stored even with no session subscribed yet: one still waiting for
    // its upstream's 101 subscribes later and sees it.
    app.websocket_closing.send_replace(true);
    let linger = crate::proxy::websocket::CLOSE_LINGER + Duration::from_secs(1);
    if tokio::time::timeout(linger, none_open()).await.is_err() {
        tracing::warn!("WebSocket sessions still open after their close; dropped");
    }
}

/// Every connection task holds a clone; shutdown waits until all are gone.
type Drain = tokio::sync::mpsc::Sender<()>;

async fn accept_loop(
    app: Arc<App>,
    index: usize,
    listener: TcpListener,
    tls: TlsAcceptor,
    mut shutdown: wch::Receiver<bool>,
    drain: Drain,
) {
    let limits = app.snapshot().config.limits.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(conn::PerSource::default());
    loop {
        // At the connection limit, stop accepting until a connection closes.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let limits = app.snapshot().config.limits.clone();
        // Off by default: behind an ingress, or as a sidecar, every client
        // has the same source address.
        let source_slot = match limits.max_connections_per_source {
            Some(cap) => match per_source.try_take(peer.ip(), cap) {
                Some(s) => Some(s),
                None => {
                    app.metrics.connection_closed("per_source_limit");
                    tracing::debug!(%peer, "per-source connection limit reached");
                    continue;
                }
            },
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _held = (permit, source_slot, drain);
            serve_connection(app, index, peer, tcp, tls, limits, shutdown).await;
        });
    }
}

/// One client connection: TLS handshake within its deadline, then HTTP/1.1
/// or HTTP/2 as ALPN chose, watched for idleness and for a client that does
/// not read, until it closes or the gateway drains.
async fn serve_connection(
    app: Arc<App>,
    index: usize,
    peer: SocketAddr,
    tcp: tokio::net::TcpStream,
    tls: TlsAcceptor,
    limits: crate::config::Limits,
    shutdown: wch::Receiver<bool>,
) {
    let Some(stream) = handshake(&app, peer, tcp, &tls, &limits).await else {
        return;
    };
    // A guard, so the gauge is right however this task ends.
    let _open = conn::GaugeGuard::new(&app.metrics.open_connections);
    // The protocol comes from ALPN, never from sniffing the first bytes: a
    // sniffing server waits for those bytes with no deadline.
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = conn::Activity::new();
    let svc = service(app.clone(), index, peer, activity.clone());
    let b = http_builder(&limits, h2);
    // Upgrades (WebSocket) hand the socket to the proxy's splice.
    let conn = b.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    watch_connection(&app, peer, conn, &activity, &limits, shutdown).await;
}

/// The TLS handshake, within `tls_handshake_timeout`; a failure is counted.
async fn handshake(
    app: &App,
    peer: SocketAddr,
    tcp: tokio::net::TcpStream,
    tls: &TlsAcceptor,
    limits: &crate::config::Limits,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(limits.tls_handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            app.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            app.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Each request to the dispatcher, its response body watched for a client
/// that does not read, a panic answered 500.
fn service(
    app: Arc<App>,
    index: usize,
    peer: SocketAddr,
    activity: Arc<conn::Activity>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<conn::WatchedBody<crate::bodies::ResponseBody>>,
    Error = Infallible,
    Future = impl Future<
        Output = Result<
            hyper::Response<conn::WatchedBody<crate::bodies::ResponseBody>>,
            Infallible,
        >,
    > + Send
                 + 'static,
> + Clone {
    service_fn(move |req| {
        let app = app.clone();
        let guard = activity.begin();
        let panic_app = app.clone();
        conn::CatchPanic::new(
            async move {
                let resp = dispatch::handle(&app, index, peer, req.map(RequestBody::Wire)).await;
                Ok::<_, Infallible>(resp.map(|b| conn::WatchedBody::new(b, guard)))
            },
            move || {
                panic_app.metrics.panics.inc();
                tracing::error!(%peer, "request handler panicked; answered 500");
                let id = http::HeaderValue::from_str(&crate::tokens::random_id())
                    .unwrap_or(http::HeaderValue::from_static("-"));
                let r = crate::proxy::ProxyError::Internal.into_response(&id);
                Ok(r.map(conn::WatchedBody::unwatched))
            },
        )
    })
}

/// hyper's HTTP/1.1 or HTTP/2 server with valet's limits.
fn http_builder(limits: &crate::config::Limits, h2: bool) -> auto::Builder<TokioExecutor> {
    let b = auto::Builder::new(TokioExecutor::new());
    let mut b = if h2 { b.http2_only() } else { b.http1_only() };
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_size as usize);
    // hyper's (h2's) own defences: a cap on concurrent streams; streams the
    // client resets before they are served (CVE-2023-44487, "rapid reset")
    // and streams valet had to reset are counted, and past the cap the
    // connection ends with GOAWAY; CONTINUATION frames count against the
    // header list size (h2 >= 0.4.4).
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_size as u32)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    b
}

/// Runs `conn` to its end, closing it gracefully on shutdown or when idle
/// (each close with its grace), and at once when the client stops reading.
async fn watch_connection<C>(
    app: &App,
    peer: SocketAddr,
    conn: C,
    activity: &conn::Activity,
    limits: &crate::config::Limits,
    mut shutdown: wch::Receiver<bool>,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let tick = (limits.idle_timeout.min(limits.send_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut watchdog = tokio::time::interval(tick);
    // After a graceful close starts, the client gets this long to finish.
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // An idle close can cross a request that arrived just then: it gets the
    // drain grace once before the connection is dropped.
    let mut idle_close = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                deadline = Some(Box::pin(tokio::time::sleep(limits.shutdown_grace)));
            }
            _ = watchdog.tick() => match activity.verdict(limits.idle_timeout, limits.send_timeout) {
                conn::Verdict::Fine => {}
                conn::Verdict::Idle if deadline.is_none() => {
                    app.metrics.connection_closed("idle");
                    tracing::debug!(%peer, "idle connection closed");
                    if !activity.ever_used() {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    deadline = Some(Box::pin(tokio::time::sleep(IDLE_CLOSE_GRACE)));
                    idle_close = true;
                }
                conn::Verdict::Idle => {}
                conn::Verdict::NotReading => {
                    app.metrics.connection_closed("send_timeout");
                    tracing::debug!(%peer, "client stopped reading; connection closed");
                    return;
                }
            },
            _ = async { deadline.as_mut().expect("guarded").await }, if deadline.is_some() => {
                if std::mem::take(&mut idle_close) && activity.active() > 0 {
                    deadline = Some(Box::pin(tokio::time::sleep(limits.shutdown_grace)));
                    continue;
                }
                return;
            }
        }
    }
}

/// How often the state store's log is read for other processes' changes.
const STORE_FOLLOW: Duration = Duration::from_millis(250);

/// Time an idle connection gets to close cleanly (GOAWAY acknowledged,
/// TLS close_notify) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves plain HTTP/1.1 on `listener` (metrics, admin API, the echo
/// upstream) until `shutdown` flips; `respond` answers each request.
pub async fn serve_plain<F, Fut>(
    listener: TcpListener,
    mut shutdown: wch::Receiver<bool>,
    what: &'static str,
    respond: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let fut = respond(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// Ends the throttle's sharing threads with the task holding it.
struct StopSharing(Option<Arc<crate::app::throttle_share::Share>>);

impl Drop for StopSharing {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.stop();
        }
    }
}

/// Runs until SIGTERM or SIGINT, reloading on SIGHUP; then drains.
pub async fn run(config: Config) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    // A file size limit (RLIMIT_FSIZE) reached by the state store must be a
    // failed write (EFBIG: answered 503, nothing acknowledged), not the
    // default action of SIGXFSZ, which kills the process (PostgreSQL does
    // the same). A handler, unlike the default, lets the write fail.
    let _file_too_large = signal(SignalKind::from_raw(libc::SIGXFSZ)).expect("signal handler");
    // Before the addresses are printed and readiness is set: a SIGTERM
    // from then on is a drain, never the default action.
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    let running = start(config).await?;
    // The bound addresses on standard output (logs go to standard error):
    // with port 0 in the config, this is how a supervisor or a test learns
    // them, with no race for a port picked in advance.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for a in &running.listeners {
            let _ = writeln!(out, "valet: listening on {a}");
        }
        if let Some(a) = running.metrics {
            let _ = writeln!(out, "valet: metrics on {a}");
        }
        if let Some(a) = running.admin {
            let _ = writeln!(out, "valet: admin API on {a}");
        }
        let _ = out.flush();
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // Off the async workers, like every reload.
                let (app, resolvers) = (running.app.clone(), running.resolvers.clone());
                let _ = tokio::task::spawn_blocking(move || watch::reload_all(&app, &resolvers)).await;
            }
        }
    }
    // Not ready at once, so load balancers (a Service's endpoints) stop
    // sending; still serving for the drain delay while they catch up. A
    // second signal skips the rest of the delay.
    running.app.set_ready(false);
    if !running.drain_delay.is_zero() {
        tracing::info!(
            delay_ms = running.drain_delay.as_millis() as u64,
            "shutting down: not ready; serving on for limits.drain_delay before draining"
        );
        tokio::select! {
            _ = tokio::time::sleep(running.drain_delay) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!(
        grace_secs = running.grace.as_secs(),
        "shutting down: no new connections, draining in-flight requests"
    );
    if running.shutdown().await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("grace period over; remaining connections were closed");
    }
    Ok(())
}
