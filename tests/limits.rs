//! Connection-level limits: slow request heads are cut off, and the
//! connection limit pauses accepting instead of overcommitting.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_sent_too_slowly_is_cut_off() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &default_routes(up.addr),
        "limits:\n  header_read_timeout: 1s\n",
    )
    .await;
    let c = gw.client(Proto::H1);
    let mut s = c.tls_stream().await;
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // Never finish the head. valet must close within the timeout (plus slack).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_connection_limit_new_connections_wait_for_a_free_slot() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "limits:\n  max_connections: 1\n").await;
    let c = gw.client(Proto::H1);
    let first = c.tls_stream().await;
    // The second TCP connection is queued by the kernel but valet does not
    // take it (no TLS handshake) while the first holds the only slot.
    let blocked = tokio::time::timeout(Duration::from_millis(700), c.tls_stream()).await;
    assert!(
        blocked.is_err(),
        "a second connection was served beyond max_connections"
    );
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(5), c.get("/public/x", None))
        .await
        .expect("served once the slot was free");
    assert_eq!(r.status, 200);
}
