//! Listeners and the process lifecycle: bind, accept with a connection limit,
//! TLS handshake with a deadline, serve HTTP/1.1 and HTTP/2, reload on file
//! changes or SIGHUP, and drain on SIGTERM/SIGINT.

pub mod admin;
pub mod admin_api;
pub mod tls;
pub mod watch;

use crate::app::App;
use crate::config::Config;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
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
    graceful: Arc<GracefulShutdown>,
    grace: Duration,
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
    for w in config.authorization_server.iter().flat_map(|a| &a.warnings) {
        tracing::warn!("{w}");
    }
    let app = App::new(config)?;
    let (shutdown, shutdown_rx) = wch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
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
    for (name, l, resolver) in bound {
        let addr = l.local_addr().expect("bound");
        tracing::info!(listener = %name, %addr, "listening (TLS)");
        listeners.push(addr);
        resolvers.push(resolver.clone());
        let tls = TlsAcceptor::from(tls::server_config(resolver));
        tasks.push(tokio::spawn(accept_loop(
            app.clone(),
            l,
            tls,
            shutdown_rx.clone(),
            graceful.clone(),
        )));
    }
    let metrics = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().expect("bound");
            tracing::info!(%addr, "metrics and health listening (/metrics, /healthz, /readyz)");
            let app = app.clone();
            tasks.push(tokio::spawn(serve_plain(
                l,
                shutdown_rx.clone(),
                "metrics",
                move |req| {
                    let r = admin::respond(&app, &req);
                    async move { r }
                },
            )));
            Some(addr)
        }
        None => None,
    };
    let admin = match admin_listener {
        Some(l) => {
            let addr = l.local_addr().expect("bound");
            tracing::info!(%addr, "admin API listening");
            let app = app.clone();
            tasks.push(tokio::spawn(serve_plain(
                l,
                shutdown_rx.clone(),
                "admin",
                move |req| admin_api::respond(app.clone(), req),
            )));
            Some(addr)
        }
        None => None,
    };
    let watcher = watch::start(app.clone(), resolvers.clone(), shutdown_rx.clone())
        .map_err(ServeError::Watch)?;
    // Expired entries leave the verified-token cache off the request path.
    {
        let app = app.clone();
        let mut rx = shutdown_rx;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tick.tick() => app.prune_caches(),
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
        graceful,
        grace,
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
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Every accept loop has ended, so this is the last reference.
        let graceful = Arc::try_unwrap(self.graceful).expect("accept loops have ended");
        tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_ok()
    }
}

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    tls: TlsAcceptor,
    mut shutdown: wch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    let limits = app.snapshot().config.limits.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let limits = app.snapshot().config.limits.clone();
            let stream =
                match tokio::time::timeout(limits.tls_handshake_timeout, tls.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        app.metrics.tls_handshake_failures.inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        app.metrics.tls_handshake_failures.inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            app.metrics.open_connections.inc();
            let svc_app = app.clone();
            let svc = service_fn(move |req| {
                let app = svc_app.clone();
                async move { Ok::<_, Infallible>(crate::proxy::handle(&app, peer, req).await) }
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_size as usize);
            b.http2()
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_size as u32);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            app.metrics.open_connections.dec();
        });
    }
}

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

/// Runs until SIGTERM or SIGINT, reloading on SIGHUP; then drains.
pub async fn run(config: Config) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = start(config).await?;
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                watch::reload_all(&running.app, &running.resolvers);
            }
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
