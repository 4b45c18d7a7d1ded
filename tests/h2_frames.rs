//! HTTP/2 floods sent as real frames over real TLS: rapid reset
//! (CVE-2023-44487) and CONTINUATION floods. What stops them is h2's (under
//! hyper): streams the client resets before they are served are counted
//! (`max_pending_accept_reset_streams`), past the cap the connection ends
//! with GOAWAY ENHANCE_YOUR_CALM; CONTINUATION frames count against the
//! header list size and a block over it ends the stream or connection. The
//! tests check that valet is configured so that these hold, and that a good
//! client is served afterwards.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let n = payload.len() as u32;
    out.extend_from_slice(&n.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1).
fn int(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// `GET https://localhost{path}` as an HPACK block (no Huffman, no indexing).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    int(&mut b, 0x00, 4, 4); // :path, literal without indexing
    int(&mut b, 0x00, 7, path.len());
    b.extend_from_slice(path.as_bytes());
    int(&mut b, 0x00, 4, 1); // :authority
    int(&mut b, 0x00, 7, 9);
    b.extend_from_slice(b"localhost");
    b
}

/// A literal header with a new name (`x-pad`) and a `len`-byte value.
fn pad_header(len: usize) -> Vec<u8> {
    let mut b = vec![0x00];
    int(&mut b, 0x00, 7, 5);
    b.extend_from_slice(b"x-pad");
    int(&mut b, 0x00, 7, len);
    b.extend(std::iter::repeat_n(b'a', len));
    b
}

/// Frames the server sent, as (type, flags, stream, payload), until it
/// closes or `limit` passes.
async fn read_frames<S: AsyncReadExt + Unpin>(
    s: &mut S,
    limit: Duration,
) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + limit;
    let mut closed = false;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 9 <= buf.len() {
        let n = u32::from_be_bytes([0, buf[i], buf[i + 1], buf[i + 2]]) as usize;
        if i + 9 + n > buf.len() {
            break;
        }
        let stream = u32::from_be_bytes(buf[i + 5..i + 9].try_into().unwrap()) & 0x7fff_ffff;
        frames.push((
            buf[i + 3],
            buf[i + 4],
            stream,
            buf[i + 9..i + 9 + n].to_vec(),
        ));
        i += 9 + n;
    }
    (frames, closed)
}

fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY)
        .map(|f| u32::from_be_bytes(f.3[4..8].try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let mut s = gw.client(Proto::H2).tls_stream().await;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let block = get_block("/public/flood");
    // 2,000 streams opened and cancelled at once.
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        frame(&mut out, HEADERS, END_STREAM | END_HEADERS, id, &block);
        frame(&mut out, RST_STREAM, 0, id, &8u32.to_be_bytes());
    }
    // The server may stop reading once it has had enough.
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        goaway_code(&frames),
        Some(ENHANCE_YOUR_CALM),
        "no GOAWAY ENHANCE_YOUR_CALM (closed: {closed}, {} frames)",
        frames.len()
    );
    let forwarded = up.count();
    eprintln!("rapid reset: {forwarded} of 2000 streams reached the upstream");
    assert!(forwarded < 2000, "every reset stream was forwarded");
    let r = gw.client(Proto::H2).get("/public/after", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continuation_flood_is_cut_off_at_the_header_limit() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let s = gw.client(Proto::H2).tls_stream().await;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    // A header block that never ends: 1,000 CONTINUATION frames of 1 KiB,
    // 60 times the 16 KiB header limit.
    frame(
        &mut out,
        HEADERS,
        END_STREAM,
        1,
        &get_block("/public/flood"),
    );
    let pad = pad_header(1000);
    for _ in 0..1000 {
        frame(&mut out, CONTINUATION, 0, 1, &pad);
    }
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&out).await;
        w
    });
    let (frames, closed) = read_frames(&mut r, Duration::from_secs(5)).await;
    writer.abort();
    // The connection ends with GOAWAY long before the flood is read.
    assert!(
        goaway_code(&frames).is_some() && closed,
        "the flood was not cut: closed {closed}, {} frames",
        frames.len()
    );
    assert_eq!(up.count(), 0);
    let r = gw.client(Proto::H2).get("/public/after", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_are_capped_per_connection() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &default_routes(up.addr),
        "limits:\n  http2_max_concurrent_streams: 7\n",
    )
    .await;
    let mut s = gw.client(Proto::H2).tls_stream().await;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    s.write_all(&out).await.unwrap();
    let (frames, _) = read_frames(&mut s, Duration::from_millis(500)).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) = 7 in the server's SETTINGS.
    let settings = frames
        .iter()
        .find(|f| f.0 == SETTINGS && f.1 == 0)
        .expect("server SETTINGS");
    let advertised = settings
        .3
        .chunks(6)
        .find(|c| u16::from_be_bytes([c[0], c[1]]) == 3)
        .map(|c| u32::from_be_bytes(c[2..6].try_into().unwrap()));
    assert_eq!(advertised, Some(7));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_stops_answering_pings_is_cut_off() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &default_routes(up.addr),
        "limits:\n  http2_keepalive_interval: 500ms\n  http2_keepalive_timeout: 500ms\n",
    )
    .await;
    let mut s = gw.client(Proto::H2).tls_stream().await;
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, SETTINGS, 0x1, 0, &[]);
    // A request whose answer takes 3 s keeps the connection busy (so the
    // idle timeout is not what ends it); the client then goes silent and
    // never acknowledges valet's PINGs.
    frame(
        &mut out,
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/public/slow"),
    );
    s.write_all(&out).await.unwrap();
    let (frames, closed) = read_frames(&mut s, Duration::from_millis(2800)).await;
    assert!(
        frames.iter().any(|f| f.0 == PING && f.1 == 0),
        "valet sent no PING"
    );
    assert!(closed, "a peer that answers no PING is still connected");
    // Cut before the slow answer could come.
    assert!(!frames.iter().any(|f| f.0 == HEADERS && f.2 == 1));
}
