//! WebSocket (RFC 6455) through the proxy: an HTTP/1.1 `Upgrade: websocket`
//! request is authenticated like any other, forwarded with its upgrade
//! headers, and when the upstream answers 101 both sockets are spliced
//! until either side closes, the session is idle for the route's
//! `idle_timeout`, or it reaches `max_duration`. A token revoked while a
//! socket is open does not cut it; `max_duration` bounds how long it lasts.
//! When valet shuts down, both sides get a close frame (1001) at a frame
//! boundary (`websocket_frames`) once the drain grace is over.

use super::websocket_frames;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
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

/// What the client offered in its opening handshake, kept to check the
/// upstream's answer as an RFC 6455 §4.1 client must.
pub struct Offer {
    /// The `Sec-WebSocket-Accept` a real WebSocket server answers.
    accept: String,
    /// The subprotocols and extension names the client offered.
    protocols: Vec<Box<str>>,
    extensions: Vec<Box<str>>,
}

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2 item 5.4): base64 of
/// SHA-1 over the key and the protocol's GUID.
pub fn accept_for(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Comma-separated tokens over every line of header `name`.
fn tokens<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// An extension's name: the part before its parameters.
fn extension_name(e: &str) -> &str {
    e.split(';').next().unwrap_or("").trim()
}

impl Offer {
    /// The client's offer, or why the handshake is malformed: exactly one
    /// `Sec-WebSocket-Key`, base64 of 16 bytes (RFC 6455 §4.2.1 item 4).
    pub fn of(h: &HeaderMap) -> Result<Offer, &'static str> {
        use base64::Engine;
        let mut keys = h.get_all("sec-websocket-key").iter();
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return Err("a WebSocket upgrade carries exactly one Sec-WebSocket-Key");
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .ok();
        if decoded.is_none_or(|k| k.len() != 16) {
            return Err("Sec-WebSocket-Key must be 16 bytes in base64");
        }
        Ok(Offer {
            accept: accept_for(key.as_bytes()),
            protocols: tokens(h, "sec-websocket-protocol")
                .map(Into::into)
                .collect(),
            extensions: tokens(h, "sec-websocket-extensions")
                .map(|e| extension_name(e).into())
                .collect(),
        })
    }

    /// Whether the upstream's 101 is a WebSocket server's answer to this
    /// offer (RFC 6455 §4.1, the client's checks): `Upgrade: websocket`,
    /// `Connection: upgrade`, the `Sec-WebSocket-Accept` of the client's
    /// key, and at most a subprotocol and extensions the client offered.
    /// Anything else (the "WebSocket smuggling" shape: an endpoint that
    /// answers 101 without being a WebSocket server) gets no tunnel.
    pub fn check_answer(&self, h: &HeaderMap) -> Result<(), &'static str> {
        let mut upgrade = h.get_all(header::UPGRADE).iter();
        if !matches!((upgrade.next(), upgrade.next()), (Some(u), None) if u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        {
            return Err("the upstream's 101 does not upgrade to websocket");
        }
        if !connection_names_upgrade(h) {
            return Err("the upstream's 101 does not name upgrade in Connection");
        }
        let mut accept = h.get_all("sec-websocket-accept").iter();
        match (accept.next(), accept.next()) {
            (Some(a), None) if a.as_bytes() == self.accept.as_bytes() => {}
            _ => {
                return Err(
                    "the upstream's 101 lacks the Sec-WebSocket-Accept of the client's key: not a WebSocket server",
                )
            }
        }
        // A line that is not visible ASCII would be skipped by `tokens`.
        for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
            if h.get_all(name).iter().any(|v| v.to_str().is_err()) {
                return Err(
                    "the upstream's 101 carries a subprotocol or extension that is not ASCII",
                );
            }
        }
        let mut protocol = tokens(h, "sec-websocket-protocol");
        match (protocol.next(), protocol.next()) {
            (None, _) => {}
            (Some(p), None) if self.protocols.iter().any(|o| **o == *p) => {}
            _ => return Err("the upstream chose a subprotocol the client did not offer"),
        }
        if !tokens(h, "sec-websocket-extensions")
            .all(|e| self.extensions.iter().any(|o| **o == *extension_name(e)))
        {
            return Err("the upstream chose an extension the client did not offer");
        }
        Ok(())
    }
}

/// An upgrade request that passed valet's checks, waiting for the
/// upstream's answer.
pub struct Pending {
    pub client: hyper::upgrade::OnUpgrade,
    pub policy: crate::config::WebSocketPolicy,
    pub permit: (tokio::sync::OwnedSemaphorePermit, Held),
    pub offer: Offer,
}

/// An upgrade the upstream accepted as a WebSocket server does.
pub struct Accepted {
    client: hyper::upgrade::OnUpgrade,
    policy: crate::config::WebSocketPolicy,
    permit: (tokio::sync::OwnedSemaphorePermit, Held),
}

impl Pending {
    /// The upstream answered 101: a session only on a WebSocket server's
    /// answer. Otherwise its upgrade is dropped, which closes its
    /// connection (never pooled, and no byte of the client's reaches it).
    pub fn accept(
        self,
        app: &crate::app::App,
        route: &crate::app::Route,
        resp: &mut http::Response<hyper::body::Incoming>,
    ) -> Result<Accepted, crate::refusal::ProxyError> {
        if let Err(why) = self.offer.check_answer(resp.headers()) {
            drop(hyper::upgrade::on(resp));
            app.metrics
                .upstream_error(&route.cfg.name, "websocket_handshake");
            tracing::warn!(route = %route.cfg.name, why, "the upstream's WebSocket handshake was refused");
            return Err(crate::refusal::ProxyError::BadUpgrade(why));
        }
        Ok(Accepted {
            client: self.client,
            policy: self.policy,
            permit: self.permit,
        })
    }
}

impl Accepted {
    /// Splices both upgraded sockets once hyper hands them over (after the
    /// 101, whose upgrade headers the hop-by-hop strip removed, is sent).
    pub fn start(
        self,
        app: &crate::app::App,
        route: &crate::app::Route,
        resp: &mut http::Response<hyper::body::Incoming>,
    ) {
        let upstream = hyper::upgrade::on(&mut *resp);
        restore_upgrade_headers(resp.headers_mut());
        let m = (
            app.metrics.websockets_open.clone(),
            app.metrics.websocket_sessions.clone(),
        );
        let closing = app.websocket_closing.subscribe();
        tokio::spawn(run(
            self.client,
            upstream,
            self.policy,
            m,
            route.cfg.name.clone(),
            self.permit,
            closing,
        ));
    }
}

/// Puts back the two hop-by-hop headers an upgrade needs (after the
/// general stripping removed them).
pub fn restore_upgrade_headers(h: &mut HeaderMap) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

#[cfg(test)]
mod handshake_tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// RFC 6455 §1.3's example key and accept value.
    #[test]
    fn the_accept_value_matches_the_rfc() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn answers_are_checked_against_the_offer() {
        let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        let offer = Offer::of(&headers(&[
            key,
            ("sec-websocket-protocol", "chat, superchat"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ]))
        .unwrap();
        let good = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(offer.check_answer(&headers(&good)).is_ok());
        let with = |extra: (&'static str, &'static str)| {
            let mut v = good.to_vec();
            v.push(extra);
            headers(&v)
        };
        assert!(offer
            .check_answer(&with(("sec-websocket-protocol", "chat")))
            .is_ok());
        assert!(offer
            .check_answer(&with((
                "sec-websocket-extensions",
                "permessage-deflate; server_no_context_takeover"
            )))
            .is_ok());
        for bad in [
            with(("sec-websocket-protocol", "admin")),
            with(("sec-websocket-protocol", "chat, superchat")),
            with(("sec-websocket-extensions", "x-webkit-deflate-frame")),
            with(("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")),
            headers(&good[..2]),
            headers(&[good[0], good[2]]),
            headers(&[("upgrade", "h2c"), good[1], good[2]]),
            headers(&[
                good[0],
                good[1],
                ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ]),
        ] {
            assert!(offer.check_answer(&bad).is_err(), "{bad:?}");
        }
        // No subprotocol offered: none may be chosen.
        let plain = Offer::of(&headers(&[key])).unwrap();
        assert!(plain
            .check_answer(&with(("sec-websocket-protocol", "chat")))
            .is_err());
    }

    #[test]
    fn protocol_lines_that_are_not_ascii_are_refused() {
        let offer = Offer::of(&headers(&[
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "chat"),
        ]))
        .unwrap();
        for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
            let mut h = headers(&[
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ]);
            assert!(offer.check_answer(&h).is_ok());
            h.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_bytes(b"admin\xff").unwrap(),
            );
            assert!(offer.check_answer(&h).is_err(), "{name}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        for h in [
            headers(&[]),
            headers(&[("sec-websocket-key", "c2hvcnQ=")]),
            headers(&[("sec-websocket-key", "not base64!")]),
            headers(&[
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ]),
        ] {
            assert!(Offer::of(&h).is_err(), "{h:?}");
        }
    }
}

/// How a session ended (the metric's `end`).
pub fn splice_end_label(e: End) -> &'static str {
    match e {
        End::Closed => "closed",
        End::Idle => "idle",
        End::MaxDuration => "max_duration",
        End::GoingAway => "going_away",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    Idle,
    MaxDuration,
    /// valet shut down: both sides got a close frame (1001).
    GoingAway,
}

/// Once close frames are sent, how long the peers get to answer theirs
/// (and a frame in flight to end) before the sockets are dropped.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Copies both ways until a side closes, a limit ends the session, or
/// `closing` turns true: then each direction runs to the end of the frame
/// in flight and sends a 1001 close frame (masked towards the upstream).
pub async fn splice<A, B>(
    client: A,
    upstream: B,
    idle: Duration,
    max: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let mask: [u8; 4] = {
        let mut k = [0u8; 4];
        // A fixed mask would do no harm here (valet sends no data an
        // attacker chose), but RFC 6455 §5.3 asks for an unpredictable one.
        let _ = aws_lc_rs::rand::fill(&mut k);
        k
    };
    let to_server = websocket_frames::going_away_to_server(mask);
    let to_upstream = pump(cr, uw, &to_server[..], closing.clone(), (start, &last));
    let to_client = pump(
        ur,
        cw,
        &websocket_frames::GOING_AWAY_TO_CLIENT[..],
        closing.clone(),
        (start, &last),
    );
    // Both directions to their end, or either one's failure.
    let both = async {
        tokio::pin!(to_upstream, to_client);
        let (mut up, mut down) = (false, false);
        while !(up && down) {
            tokio::select! {
                r = &mut to_upstream, if !up => {
                    if r.is_err() {
                        return;
                    }
                    up = true;
                }
                r = &mut to_client, if !down => {
                    if r.is_err() {
                        return;
                    }
                    down = true;
                }
            }
        }
    };
    tokio::pin!(both);
    let end_of_life = tokio::time::sleep(max);
    tokio::pin!(end_of_life);
    let mut watching = true;
    loop {
        let idle_at = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            _ = &mut both => return End::Closed,
            _ = &mut end_of_life => return End::MaxDuration,
            // The guard `wait_for` returns is dropped at once (not Send).
            asked = async { closing.wait_for(|c| *c).await.map(|_| ()) }, if watching => {
                if asked.is_err() {
                    watching = false; // no one will ask any more
                } else {
                    // The pumps send their close frames; they get a
                    // bounded time to reach a boundary and hear back.
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut both).await;
                    return End::GoingAway;
                }
            }
            _ = tokio::time::sleep_until(idle_at) => {
                let quiet_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now() >= quiet_since + idle {
                    return End::Idle;
                }
            }
        }
    }
}

/// One direction: `src` to `dst`, frame boundaries followed. When
/// `closing` turns true, forwards up to the end of the frame in flight,
/// then says goodbye (`going_away`). `Err` when either socket failed:
/// the session ends then, whatever the other direction is doing.
async fn pump<R, W>(
    mut src: R,
    mut dst: W,
    close: &[u8],
    mut closing: tokio::sync::watch::Receiver<bool>,
    (start, last): (Instant, &AtomicU64),
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut frames = websocket_frames::Frames::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut watching = true;
    loop {
        let going = *closing.borrow();
        if going && frames.at_boundary() {
            return going_away(src, dst, close, frames, buf, &[]).await;
        }
        let n = tokio::select! {
            r = src.read(&mut buf) => r.map_err(|_| ())?,
            changed = closing.changed(), if watching && !going => {
                watching = changed.is_ok();
                continue;
            }
        };
        if n == 0 {
            let _ = dst.shutdown().await;
            return Ok(());
        }
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Closing: nothing past the end of the frame in flight.
        let take = frames.advance(&buf[..n], going);
        if dst.write_all(&buf[..take]).await.is_err() {
            let _ = dst.shutdown().await;
            return Err(());
        }
        if going && frames.at_boundary() {
            let rest = buf[take..n].to_vec();
            return going_away(src, dst, close, frames, buf, &rest).await;
        }
    }
}

/// Writes `close`, ends `dst`'s writes and reads `src` up to the peer's
/// own close frame (or its end), discarding it: a socket dropped with
/// unread data is reset, which could lose the close frame on its way.
/// `rest`: bytes already read past the last frame forwarded.
async fn going_away<R, W>(
    mut src: R,
    mut dst: W,
    close: &[u8],
    mut frames: websocket_frames::Frames,
    mut buf: Vec<u8>,
    rest: &[u8],
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if dst.write_all(close).await.is_ok() {
        let _ = dst.flush().await;
    }
    let _ = dst.shutdown().await;
    frames.advance(rest, false);
    while !frames.close_seen() {
        match src.read(&mut buf).await {
            Ok(n) if n > 0 => {
                frames.advance(&buf[..n], false);
            }
            _ => break,
        }
    }
    Ok(())
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
    closing: tokio::sync::watch::Receiver<bool>,
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
                closing,
            )
            .await,
        ),
        _ => "failed",
    };
    open.dec();
    sessions.with_label_values(&[&route, end]).inc();
}

#[cfg(test)]
mod splice_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A masked frame as a client sends it.
    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let key = [9, 8, 7, 6];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    /// Everything `r` yields until it ends.
    async fn read_all(mut r: tokio::io::DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
        out
    }

    /// Closing while the client is mid-frame: the frame is finished, then
    /// the 1001 close goes each way; the client's own close arrives in the
    /// same read as the frame's end, and is seen there, so the session
    /// ends at once rather than at the linger (time is virtual here).
    #[tokio::test(start_paused = true)]
    async fn closing_waits_for_the_frame_and_hears_a_close_read_with_it() {
        let (mut client, client_side) = tokio::io::duplex(1 << 16);
        let (upstream_side, mut upstream) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let begun = Instant::now();
        let session = tokio::spawn(splice(
            client_side,
            upstream_side,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            rx,
        ));
        let frame = masked(0x2, &[5; 100]);
        client.write_all(&frame[..50]).await.unwrap();
        tokio::task::yield_now().await;
        tx.send_replace(true);
        tokio::task::yield_now().await;
        // The rest of the frame, and the client's close, in one write.
        let mut rest = frame[50..].to_vec();
        rest.extend(masked(0x8, &[0x03, 0xe8]));
        client.write_all(&rest).await.unwrap();
        // The upstream answers valet's close with its own (unmasked).
        upstream.write_all(&[0x88, 0x02, 0x03, 0xe9]).await.unwrap();
        let end = session.await.unwrap();
        assert_eq!(end, End::GoingAway);
        assert!(begun.elapsed() < CLOSE_LINGER, "{:?}", begun.elapsed());
        let got = read_all(upstream).await;
        assert_eq!(&got[..frame.len()], &frame[..], "the frame was cut");
        let close = &got[frame.len()..];
        assert_eq!(close.len(), 8, "{close:?}");
        assert_eq!(close[..2], [0x88, 0x82], "a masked close");
        assert_eq!(
            [close[6] ^ close[2], close[7] ^ close[3]],
            [0x03, 0xe9],
            "1001"
        );
        assert_eq!(
            read_all(client).await,
            websocket_frames::GOING_AWAY_TO_CLIENT
        );
    }

    /// A socket that fails on reading and swallows writes.
    struct Broken;
    impl AsyncRead for Broken {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::other("broken")))
        }
    }
    impl AsyncWrite for Broken {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            b: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A failure on one side ends the session, although the other side
    /// still has its socket open (it would otherwise hold the session, its
    /// permit and its subject's place until the idle limit).
    #[tokio::test(start_paused = true)]
    async fn a_failed_side_ends_the_session() {
        let (upstream_side, _upstream) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let begun = Instant::now();
        let end = splice(
            Broken,
            upstream_side,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            rx,
        )
        .await;
        assert_eq!(end, End::Closed);
        assert!(
            begun.elapsed() < Duration::from_secs(1),
            "{:?}",
            begun.elapsed()
        );
    }
}
