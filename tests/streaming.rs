//! Streaming through the real binary in constant memory. Its own test binary,
//! so its CPU load never overlaps tests that assert propagation deadlines.

mod support;

use bytes::Bytes;
use support::process::*;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_large_upload_streams_in_constant_memory() {
    let up = Upstream::start().await;
    let routes = format!(
        "  - name: upload\n    match: {{ path_prefix: /upload }}\n    upstream: \"http://{}\"\n    auth: {{ required: false }}\n    max_body_size: 2GiB\n",
        up.addr
    );
    let p = Proc::start(&routes).await;
    let baseline = p.peak_rss_kib();
    const CHUNK: usize = 256 * 1024;
    const TOTAL: u64 = 1024 * 1024 * 1024;
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let frames = (0..TOTAL / CHUNK as u64)
        .map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone())));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let c = p.client(Proto::H1);
    let req = c.request("PUT", "/upload/blob").body(body).unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body_len, TOTAL, "every byte arrived");
    let peak = p.peak_rss_kib();
    // 1 GiB went through; the gateway's peak grew by a few buffers at most.
    assert!(
        peak - baseline < 48 * 1024,
        "peak RSS grew by {} KiB (baseline {baseline} KiB)",
        peak - baseline
    );
}
