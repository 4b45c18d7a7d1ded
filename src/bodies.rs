//! A request body that streams through unchanged, within the route's size
//! limit and at a minimum data rate, so an oversized chunked upload is cut
//! off without ever being buffered and a trickled one cannot hold a
//! connection (and an upstream connection) for ever. How it ended is kept in
//! a shared [`BodyOutcome`], so a client's fault is answered as the client's
//! (400/408/413), never blamed on the upstream.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How a request body ended, when it ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than this route allows")]
    TooLarge,
    #[error("the request body was sent too slowly")]
    TooSlow,
    #[error("the request body is malformed or was cut off")]
    Malformed,
}

impl BodyError {
    /// The `reason` label of `valet_client_errors_total`.
    pub fn reason(self) -> &'static str {
        match self {
            BodyError::TooLarge => "body_too_large",
            BodyError::TooSlow => "body_too_slow",
            BodyError::Malformed => "body_malformed",
        }
    }
}

/// Shared between the body (which the upstream client polls) and the proxy
/// (which must tell a client fault from an upstream fault).
#[derive(Debug, Default, Clone)]
pub struct BodyOutcome(Arc<AtomicU8>);

impl BodyOutcome {
    fn set(&self, e: BodyError) {
        let v = match e {
            BodyError::TooLarge => 1,
            BodyError::TooSlow => 2,
            BodyError::Malformed => 3,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<BodyError> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(BodyError::TooLarge),
            2 => Some(BodyError::TooSlow),
            3 => Some(BodyError::Malformed),
            _ => None,
        }
    }
}

/// The slowest body accepted: after `grace`, at least `bytes_per_sec` on
/// average over the time spent *waiting for the client* (time the upstream
/// takes to read is not held against it; `bytes_per_sec == 0`: no rate);
/// and never one wait longer than `max_gap`, so a client cannot bank
/// credit with a fast start and then stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub grace: Duration,
    pub max_gap: Duration,
}

impl MinRate {
    pub fn of(l: &crate::config::Limits) -> Self {
        MinRate {
            bytes_per_sec: l.min_request_body_rate,
            grace: l.request_body_grace,
            max_gap: l.request_body_timeout,
        }
    }

    /// Total waiting time allowed once `received` bytes have arrived.
    fn allowance(&self, received: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::MAX;
        }
        self.grace.saturating_add(Duration::from_secs_f64(
            received as f64 / self.bytes_per_sec as f64,
        ))
    }
}

/// A request body as the handlers take it: from a client connection, or,
/// for in-process callers (the test tier that drives the pipeline without
/// sockets), whole. One concrete type, so the upstream clients keep theirs.
#[derive(Debug)]
pub enum RequestBody {
    Wire(Incoming),
    Whole(Option<Bytes>),
}

impl RequestBody {
    pub fn whole(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        RequestBody::Whole((!data.is_empty()).then_some(data))
    }
}

impl From<Incoming> for RequestBody {
    fn from(b: Incoming) -> Self {
        RequestBody::Wire(b)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            RequestBody::Wire(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Wire(b) => b.is_end_stream(),
            RequestBody::Whole(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Wire(b) => b.size_hint(),
            RequestBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

pub struct LimitedBody {
    inner: Option<RequestBody>,
    /// A body valet already read whole (to sign its form parameters).
    buffered: Option<Bytes>,
    remaining: u64,
    outcome: BodyOutcome,
    rate: MinRate,
    received: u64,
    waited: Duration,
    pending_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl LimitedBody {
    pub fn new(inner: RequestBody, limit: u64, rate: MinRate) -> (Self, BodyOutcome) {
        let outcome = BodyOutcome::default();
        (
            LimitedBody {
                inner: Some(inner),
                buffered: None,
                remaining: limit,
                outcome: outcome.clone(),
                rate,
                received: 0,
                waited: Duration::ZERO,
                pending_since: None,
                timer: None,
            },
            outcome,
        )
    }

    /// A body read whole beforehand (already within the limit).
    pub fn full(data: Bytes) -> Self {
        LimitedBody {
            inner: None,
            buffered: (!data.is_empty()).then_some(data),
            remaining: 0,
            outcome: BodyOutcome::default(),
            rate: MinRate {
                bytes_per_sec: 0,
                grace: Duration::ZERO,
                max_gap: Duration::MAX,
            },
            received: 0,
            waited: Duration::ZERO,
            pending_since: None,
            timer: None,
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.outcome.set(e);
        self.inner = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Called when the client has nothing for us: fails the body if it has
    /// used up its waiting allowance, else arms a timer for that moment.
    fn check_rate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let since = *self.pending_since.get_or_insert(now);
        let allowance = self.rate.allowance(self.received);
        let used = self.waited + (now - since);
        if used >= allowance || now - since >= self.rate.max_gap {
            return Poll::Ready(());
        }
        let by_rate = allowance - self.waited;
        let Some(deadline) = since.checked_add(by_rate.min(self.rate.max_gap)) else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.buffered.take().map(|b| Ok(Frame::data(b))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                if this.check_rate(cx).is_ready() {
                    return this.fail(BodyError::TooSlow);
                }
                Poll::Pending
            }
            Poll::Ready(r) => {
                if let Some(since) = this.pending_since.take() {
                    this.waited += since.elapsed();
                }
                match r {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let n = data.len() as u64;
                            if n > this.remaining {
                                return this.fail(BodyError::TooLarge);
                            }
                            this.remaining -= n;
                            this.received += n;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    // hyper's parse errors, a body shorter than its
                    // Content-Length, a reset stream: the client's doing.
                    Some(Err(_)) => this.fail(BodyError::Malformed),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(i) => i.is_end_stream(),
            None => self.buffered.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(i) => i.size_hint(),
            None => SizeHint::with_exact(self.buffered.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// What every handler answers with: a streamed upstream body or a body
/// valet made.
pub type ResponseBody = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;

/// A JSON answer that must not be cached (RFC 6749 §5.1 for the token
/// endpoints; valet's own errors and the admin API alike): the one place
/// such a response is built.
pub fn json_full(
    status: http::StatusCode,
    body: &serde_json::Value,
) -> http::Response<http_body_util::Full<Bytes>> {
    use http::header::{self, HeaderValue};
    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// [`json_full`] as a handler's response.
pub fn json(status: http::StatusCode, body: &serde_json::Value) -> http::Response<ResponseBody> {
    json_full(status, body).map(http_body_util::Either::Right)
}
