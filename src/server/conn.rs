//! What bounds one client connection once accepted: the open-connections
//! gauge and the per-source count kept by drop guards (correct however the
//! task ends), request activity for the idle timeout, a watch on response
//! bodies the client does not take (the send timeout), and panics turned
//! into a 500 instead of a dead connection task.

use bytes::Bytes;
use dashmap::DashMap;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntGauge;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Raises a gauge for as long as it lives.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Open connections per client address on one listener.
#[derive(Default)]
pub struct PerSource(DashMap<IpAddr, usize>);

/// One counted connection; the count goes down when it drops.
pub struct SourceSlot {
    map: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    /// A slot for `ip`, or `None` when it already holds `cap` connections.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<SourceSlot> {
        let mut n = self.0.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            map: self.clone(),
            ip,
        })
    }

    pub fn count(&self, ip: IpAddr) -> usize {
        self.0.get(&ip).map_or(0, |n| *n)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        // Entries at zero go, so the map holds only addresses with connections.
        self.map.0.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Request activity on one connection, read by its watchdog.
pub struct Activity {
    base: Instant,
    /// Requests whose response has not been fully handed to hyper.
    active: AtomicUsize,
    /// Milliseconds since `base` when `active` last fell to zero.
    idle_since: AtomicU64,
    /// Requests begun on this connection.
    started: AtomicU64,
    /// Each response in progress: when hyper was handed a frame it has not
    /// come back for (ms since `base`, plus one; 0: none). hyper asks for
    /// the next frame only when it can write (TCP send buffer, HTTP/2
    /// flow-control window), so a frame left waiting means the client is
    /// not taking that response. Tracked per response: one busy HTTP/2
    /// stream must not hide a stalled one.
    streams: Mutex<Vec<Weak<AtomicU64>>>,
}

/// What the watchdog decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// No request for `idle_timeout`: close gracefully.
    Idle,
    /// A response's client took none of it for `send_timeout`: close now.
    NotReading,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            started: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Marks a request in progress until the returned guard (moved into the
    /// response body) drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.started.fetch_add(1, Ordering::Relaxed);
        let handed_at = Arc::new(AtomicU64::new(0));
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        // Ended responses leave as the list grows, not only at the watchdog's
        // tick: a busy connection's list stays near its concurrency.
        if streams.len() >= 64 && streams.len() > 2 * active {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&handed_at));
        ActiveGuard {
            activity: self.clone(),
            handed_at,
        }
    }

    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether any request ever began (a connection that never sent one
    /// has nothing to close gracefully: an HTTP/2 server still waits for
    /// the client's preface).
    pub fn ever_used(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0
    }

    pub fn verdict(&self, idle_timeout: Duration, send_timeout: Duration) -> Verdict {
        let now = self.now_ms();
        let send_ms = send_timeout.as_millis() as u64;
        {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.retain(|w| w.strong_count() > 0);
            let stalled = streams.iter().filter_map(Weak::upgrade).any(|h| {
                let at = h.load(Ordering::Relaxed);
                at != 0 && now.saturating_sub(at - 1) >= send_ms
            });
            if stalled {
                return Verdict::NotReading;
            }
        }
        if self.active.load(Ordering::Relaxed) == 0
            && now.saturating_sub(self.idle_since.load(Ordering::Relaxed))
                >= idle_timeout.as_millis() as u64
        {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// One request in progress (see [`Activity::begin`]).
pub struct ActiveGuard {
    activity: Arc<Activity>,
    handed_at: Arc<AtomicU64>,
}

impl ActiveGuard {
    fn pulled(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
    }

    fn hand(&self) {
        self.handed_at
            .store(self.activity.now_ms() + 1, Ordering::Relaxed);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Largest piece of a response handed to hyper at once: progress is seen
/// per piece, so a client reading slowly but steadily (10 KB/s) is never
/// mistaken for one that stopped, however large the upstream's chunks.
const MAX_PIECE: usize = 16 * 1024;

/// A response body that keeps its request counted as active until hyper is
/// done with it, and reports pieces the client does not take.
pub struct WatchedBody<B> {
    inner: B,
    guard: Option<ActiveGuard>,
    /// The rest of an upstream chunk larger than `MAX_PIECE`.
    rest: Bytes,
}

impl<B> WatchedBody<B> {
    pub fn new(inner: B, guard: ActiveGuard) -> Self {
        WatchedBody {
            inner,
            guard: Some(guard),
            rest: Bytes::new(),
        }
    }

    /// A body no request is counted for (the answer to a panicked handler,
    /// whose guard was dropped while unwinding).
    pub fn unwatched(inner: B) -> Self {
        WatchedBody {
            inner,
            guard: None,
            rest: Bytes::new(),
        }
    }

    fn piece(&mut self) -> Frame<Bytes> {
        let n = self.rest.len().min(MAX_PIECE);
        if let Some(g) = &self.guard {
            g.hand();
        }
        Frame::data(self.rest.split_to(n))
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(g) = &self.guard {
            g.pulled();
        }
        if !self.rest.is_empty() {
            return Poll::Ready(Some(Ok(self.piece())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    self.rest = data;
                    Poll::Ready(Some(Ok(self.piece())))
                }
                Err(trailers) => {
                    if let Some(g) = &self.guard {
                        g.hand();
                    }
                    Poll::Ready(Some(Ok(trailers)))
                }
            },
            // Done (or failed): the request is no longer in progress.
            r @ Poll::Ready(_) => {
                self.guard = None;
                r
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.inner.size_hint();
        let extra = self.rest.len() as u64;
        h.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            h.set_upper(u + extra);
        }
        h
    }
}

/// A future whose panic becomes `on_panic()` instead of unwinding through
/// the connection task.
pub struct CatchPanic<F, G> {
    inner: Pin<Box<F>>,
    on_panic: Option<G>,
}

impl<F, G> CatchPanic<F, G> {
    pub fn new(inner: F, on_panic: G) -> Self {
        CatchPanic {
            inner: Box::pin(inner),
            on_panic: Some(on_panic),
        }
    }
}

impl<F: Future, G: FnOnce() -> F::Output + Unpin> Future for CatchPanic<F, G> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let inner = this.inner.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(p) => p,
            Err(_) => match this.on_panic.take() {
                Some(f) => Poll::Ready(f()),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_slots_are_capped_and_released() {
        let m = Arc::new(PerSource::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = m.try_take(ip, 2).unwrap();
        let _b = m.try_take(ip, 2).unwrap();
        assert!(m.try_take(ip, 2).is_none());
        assert!(m.try_take("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert_eq!(m.count(ip), 1);
        assert!(m.try_take(ip, 2).is_some());
    }

    #[test]
    fn a_connection_is_idle_only_without_requests() {
        let a = Activity::new();
        let g = a.begin();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            a.verdict(Duration::ZERO, Duration::from_secs(60)),
            Verdict::Fine
        );
        drop(g);
        assert_eq!(
            a.verdict(Duration::ZERO, Duration::from_secs(60)),
            Verdict::Idle
        );
    }

    #[test]
    fn a_handed_frame_not_pulled_again_is_a_stall() {
        let a = Activity::new();
        let g = a.begin();
        g.pulled();
        g.hand();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            a.verdict(Duration::from_secs(60), Duration::from_millis(1)),
            Verdict::NotReading
        );
        g.pulled();
        assert_eq!(
            a.verdict(Duration::from_secs(60), Duration::from_millis(1)),
            Verdict::Fine
        );
    }

    #[test]
    fn a_busy_stream_does_not_hide_a_stalled_one() {
        let a = Activity::new();
        let stalled = a.begin();
        let busy = a.begin();
        stalled.hand();
        std::thread::sleep(Duration::from_millis(5));
        busy.pulled();
        busy.hand();
        busy.pulled();
        assert_eq!(
            a.verdict(Duration::from_secs(60), Duration::from_millis(2)),
            Verdict::NotReading
        );
        drop(stalled);
        assert_eq!(
            a.verdict(Duration::from_secs(60), Duration::from_millis(2)),
            Verdict::Fine
        );
    }

    #[test]
    fn ended_responses_leave_the_watch_list() {
        let a = Activity::new();
        for _ in 0..1000 {
            drop(a.begin());
        }
        let _live = a.begin();
        assert!(a.streams.lock().unwrap().len() <= 64);
    }

    #[tokio::test]
    async fn large_chunks_are_handed_in_pieces() {
        use http_body_util::BodyExt;
        let a = Activity::new();
        let body = http_body_util::Full::new(Bytes::from(vec![0u8; 40_000]));
        let mut w = WatchedBody::new(body, a.begin());
        let mut sizes = Vec::new();
        while let Some(f) = w.frame().await {
            sizes.push(f.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [16384, 16384, 7232]);
        assert_eq!(a.active(), 0);
    }

    #[test]
    fn panics_become_a_value() {
        let f = CatchPanic::new(async { panic!("boom") }, || 7);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(f), 7);
    }
}
