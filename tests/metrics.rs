//! The operations listener: Prometheus text that parses, counters that move,
//! health and readiness.

mod support;

use std::collections::HashMap;
use support::*;

/// Validates the Prometheus text exposition format (0.0.4) line by line and
/// returns every sample. Panics with the offending line otherwise.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().expect(line));
            assert!(is_name(name), "bad metric name: {line}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().expect(line);
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    types.insert(name.to_string(), t.to_string());
                }
                _ => panic!("unknown comment kind: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = match series.find('{') {
            Some(i) => {
                assert!(series.ends_with('}'), "unterminated labels: {line}");
                for pair in series[i + 1..series.len() - 1]
                    .split(',')
                    .filter(|p| !p.is_empty())
                {
                    let (k, v) = pair.split_once('=').expect(line);
                    assert!(is_name(k), "bad label name: {line}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "bad label value: {line}"
                    );
                }
                &series[..i]
            }
            None => series,
        };
        assert!(is_name(name), "bad sample name: {line}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(base), "sample before its TYPE: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_counters_move() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let (status, text) = client::plain_get(gw.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    let before = parse_exposition(&text);
    let ok = "valet_requests_total{method=\"GET\",route=\"api\",status_class=\"2xx\"}";
    let denied = "valet_requests_total{method=\"GET\",route=\"api\",status_class=\"4xx\"}";
    assert_eq!(before[ok], 0.0);

    let c = gw.client(Proto::H2);
    let t = gw.token("alice", "read");
    for _ in 0..3 {
        assert_eq!(c.get("/api/x", Some(&t)).await.status, 200);
    }
    assert_eq!(c.get("/api/x", Some("garbage")).await.status, 401);

    let after = parse_exposition(&gw.metrics().await);
    assert_eq!(after[ok], 3.0);
    assert_eq!(after[denied], 1.0);
    assert_eq!(
        after["valet_token_validation_failures_total{reason=\"malformed\"}"],
        1.0
    );
    assert_eq!(
        after["valet_request_duration_seconds_count{route=\"api\"}"],
        4.0
    );
    assert_eq!(
        after["valet_upstream_duration_seconds_count{route=\"api\"}"],
        3.0
    );
    assert_eq!(after["valet_revocation_entries{kind=\"token\"}"], 0.0);
    assert!(after.contains_key("valet_reloads_total{kind=\"config\",result=\"failure\"}"));
    assert!(after.contains_key("valet_open_connections"));
    assert!(after.contains_key("valet_tls_handshake_failures_total"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    assert_eq!(client::plain_get(gw.metrics_addr, "/healthz").await.0, 200);
    assert_eq!(client::plain_get(gw.metrics_addr, "/readyz").await.0, 200);
    gw.running.as_ref().unwrap().app.set_ready(false);
    assert_eq!(client::plain_get(gw.metrics_addr, "/readyz").await.0, 503);
    assert_eq!(client::plain_get(gw.metrics_addr, "/nope").await.0, 404);
}

#[test]
fn the_validator_rejects_broken_exposition() {
    for bad in [
        "valet_x 1\n",                              // no TYPE
        "# TYPE valet_x counter\nvalet_x one\n",    // bad value
        "# TYPE valet_x counter\nvalet_x{a=b} 1\n", // unquoted label
        "# TYPE valet-x counter\n",                 // bad name
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "{bad:?}"
        );
    }
}
