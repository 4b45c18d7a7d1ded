//! WebSocket (RFC 6455) through the proxy: an HTTP/1.1 `Upgrade: websocket`
//! request is authenticated like any other, forwarded with its upgrade
//! headers, and when the upstream answers 101 both sockets are spliced
//! until either side closes, the session is idle for the route's
//! `idle_timeout`, or it reaches `max_duration`. A token revoked while a
//! socket is open does not cut it; `max_duration` bounds how long it lasts.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// One subject's share of the open sessions, given back when dropped.
pub struct Held {
    map: Arc<dashmap::DashMap<Box<str>, usize>>,
    who: Box<str>,
}

impl Held {
    /// A place for `who` if it holds fewer than `limit` sessions.
    pub fn take(
        map: &Arc<dashmap::DashMap<Box<str>, usize>>,
        who: Box<str>,
        limit: usize,
    ) -> Option<Held> {
        let mut n = map.entry(who.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        drop(n);
        Some(Held {
            map: map.clone(),
            who,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.who, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Whether `req` asks for a WebSocket upgrade (RFC 6455 §4.1: HTTP/1.1,
/// `Upgrade: websocket`, `Connection` naming `upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && connection_names_upgrade(req.headers())
}

fn connection_names_upgrade(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Puts back the two hop-by-hop headers an upgrade needs (after the
/// general stripping removed them).
pub fn restore_upgrade_headers(h: &mut HeaderMap) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// How a session ended (the metric's `end`).
pub fn splice_end_label(e: End) -> &'static str {
    match e {
        End::Closed => "closed",
        End::Idle => "idle",
        End::MaxDuration => "max_duration",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    Idle,
    MaxDuration,
}

/// Copies both ways until a side closes or a limit ends the session.
pub async fn splice<A, B>(a: A, b: B, idle: Duration, max: Duration) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Watched {
        inner: a,
        start,
        last: last.clone(),
    };
    let mut b = Watched {
        inner: b,
        start,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let end_of_life = tokio::time::sleep(max);
    tokio::pin!(end_of_life);
    loop {
        let idle_at = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            _ = &mut copy => return End::Closed,
            _ = &mut end_of_life => return End::MaxDuration,
            _ = tokio::time::sleep_until(idle_at) => {
                let quiet_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now() >= quiet_since + idle {
                    return End::Idle;
                }
            }
        }
    }
}

/// An upgraded socket that notes when data last moved.
struct Watched<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits for both sides' upgraded sockets, then splices them, holding the
/// session's permit; records how it ended.
pub async fn run(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    policy: crate::config::WebSocketPolicy,
    (open, sessions): (prometheus::IntGauge, prometheus::IntCounterVec),
    route: String,
    permit: (tokio::sync::OwnedSemaphorePermit, Held),
) {
    let _permit = permit;
    open.inc();
    // Both sides hand over their sockets at once, or the session is idle.
    let both = tokio::time::timeout(policy.idle_timeout, async {
        tokio::join!(client, upstream)
    });
    let end = match both.await {
        Ok((Ok(c), Ok(u))) => splice_end_label(
            splice(
                TokioIo::new(c),
                TokioIo::new(u),
                policy.idle_timeout,
                policy.max_duration,
            )
            .await,
        ),
        _ => "failed",
    };
    open.dec();
    sessions.with_label_values(&[&route, end]).inc();
}
