//! The `valet` binary as operators run it: command line, signals, memory.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::process::*;
use support::*;

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: \"nope\"\n    tls: { self_signed_for_development: true }\ntokens:\n  issuer: \"x\"\n  audiences: [a]\n  keys:\n    - id: k\n      algorithm: HS256\n      public_key_file: k.pem\nrevocation:\n  file: r.yaml\nroutes:\n  - name: r\n    match: { path_prefix: api }\n    upstream: \"ftp://x\"\n",
    )
    .unwrap();
    let out = Command::new(VALET)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    let p = path.display();
    assert!(
        err.contains(&format!("{p}:2:5: `nope` is not a socket address")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:9:7: algorithm `HS256` is not supported")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:15:14: path_prefix `api` must start with `/`")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:16:5: upstream scheme `ftp` is not supported")),
        "{err}"
    );

    // A typo is a parse error with its position, not a silently ignored key.
    std::fs::write(&path, "listeners: []\ntokens:\n  isuer: x\n").unwrap();
    let out = Command::new(VALET)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("{p}:3:3: tokens: unknown field `isuer`")),
        "{err}"
    );
}

/// `valet check` says where each remote issuer's keys may come from: the
/// configured jwks_uri, or by discovery on the issuer's own host, or on the
/// hosts `jwks_hosts` adds.
#[test]
fn check_says_where_each_issuers_keys_may_live() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let issuers = "  issuers:\n    - name: own-host\n      issuer: \"https://idp.example/realms/a\"\n      discovery: true\n    - name: google\n      issuer: \"https://accounts.google.com\"\n      discovery: true\n      jwks_hosts: [www.googleapis.com]\n    - name: fixed\n      issuer: \"https://fixed.example\"\n      jwks_uri: \"https://fixed.example/keys\"\n";
    let routes =
        "  - name: r\n    match: { path_prefix: /r }\n    upstream: \"http://127.0.0.1:9\"\n";
    let text = config_text(&ca, &dir, routes, "").replacen(
        "revocation:\n",
        &format!("{issuers}revocation:\n"),
        1,
    );
    let path = dir.path().join("valet.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(VALET)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for want in [
        "note: issuer `own-host`: keys by discovery; the discovered jwks_uri must be on the issuer's own host (idp.example:443)",
        "note: issuer `google`: keys by discovery; the discovered jwks_uri must be on the issuer's own host or jwks_hosts (accounts.google.com:443, www.googleapis.com:443)",
        "note: issuer `fixed`: keys from the configured jwks_uri https://fixed.example/keys",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn the_example_config_is_valid_and_check_warns_about_the_password_grant() {
    // A copy, so the check's generated demo files stay out of the source tree.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.example.yaml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"),
        &cfg,
    )
    .unwrap();
    let out = Command::new(VALET)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("client `demo-legacy-app` enables the password grant"),
        "{err}"
    );
    assert!(
        !err.contains("demo-service` enables"),
        "only password-grant clients are warned about"
    );
    // `check` writes nothing: it says what `serve` would create.
    let files: Vec<_> = walk(dir.path());
    assert_eq!(files, vec![cfg], "check wrote files: {files:?}");
    for what in ["signing key", "secret pepper"] {
        assert!(
            err.contains(&format!("would create the {what}")),
            "{what}: {err}"
        );
    }
}

/// The command line runs in-process too: `main` only parses and calls it.
#[test]
fn the_cli_runs_without_spawning_the_binary() {
    use clap::Parser;
    use valet::cli::{run, Cli};
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("config.example.yaml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"),
        &good,
    )
    .unwrap();
    let code = |args: &[&str]| format!("{:?}", run(Cli::try_parse_from(args).unwrap()));
    let ok = format!("{:?}", std::process::ExitCode::SUCCESS);
    assert_eq!(
        code(&["valet", "check", "--config", good.to_str().unwrap()]),
        ok
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listeners: [nope\n").unwrap();
    assert_eq!(
        code(&["valet", "check", "--config", bad.to_str().unwrap()]),
        format!("{:?}", std::process::ExitCode::from(64))
    );
    assert!(Cli::try_parse_from(["valet", "no-such-command"]).is_err());
}

/// `valet healthcheck` (the image's HEALTHCHECK) in process: exit 0 only on
/// a 200, and a clear failure for anything else.
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_exits_zero_only_on_200() {
    use valet::cli::{run, Cli};
    let up = Upstream::start().await;
    let p = Proc::start(&default_routes(up.addr)).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let probe = |url: String| async move {
        tokio::task::spawn_blocking(move || {
            use clap::Parser;
            let cli = Cli::try_parse_from(["valet", "healthcheck", "--url", &url]).unwrap();
            format!("{:?}", run(cli))
        })
        .await
        .unwrap()
    };
    let ok = format!("{:?}", std::process::ExitCode::SUCCESS);
    let failed = format!("{:?}", std::process::ExitCode::FAILURE);
    assert_eq!(probe(format!("http://{}/healthz", p.metrics)).await, ok);
    assert_eq!(
        probe(format!("http://{}/nothing-here", p.metrics)).await,
        failed
    );
    assert_eq!(probe(format!("http://{closed}/healthz")).await, failed);
    assert_eq!(
        probe(format!("https://{}/healthz", p.metrics)).await,
        failed
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn token_issue_prints_a_token_the_gateway_accepts() {
    let up = Upstream::start().await;
    let p = Proc::start(&default_routes(up.addr)).await;
    let out = Command::new(VALET)
        .args([
            "token",
            "issue",
            "--sub",
            "svc-billing",
            "--scope",
            "read",
            "--client-id",
            "billing",
            "--config",
        ])
        .arg(&p.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = p.client(Proto::H2).get("/api/x", Some(&token)).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-valet-subject"], "svc-billing");
    assert_eq!(up.last().headers["x-valet-client-id"], "billing");
    assert_eq!(client::plain_get(p.metrics, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let up = Upstream::start().await;
    let mut p = Proc::start(&default_routes(up.addr)).await;
    let c = p.client(Proto::H1);
    let token = sign(&p.key, &claims("alice", "read"));
    let inflight = tokio::spawn(async move { c.get("/api/slow", Some(&token)).await });
    // Wait until the upstream has the request, then ask valet to stop.
    assert!(eventually(PICKUP, || async { up.count() == 1 }).await);
    p.signal("TERM");
    // No new connections once draining (as soon as the signal is handled).
    let addr = p.addr;
    assert!(
        eventually(PICKUP, || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "still accepting after SIGTERM"
    );
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request must complete");
    let status = tokio::task::spawn_blocking(move || {
        let s = p.child.wait().unwrap();
        drop(p);
        s
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// With `limits.drain_delay`, SIGTERM makes `/readyz` fail at once (load
/// balancers stop sending) while valet goes on serving new requests for
/// the delay; then it drains as without one: no new connections, the
/// in-flight request finishes, exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_readiness_at_once_and_serves_through_the_drain_delay() {
    let up = Upstream::start().await;
    let mut p = Proc::start_with_limits(
        &default_routes(up.addr),
        "  shutdown_grace: 10s\n  drain_delay: 2s\n",
        "",
        Stdio::null(),
    )
    .await;
    let token = sign(&p.key, &claims("alice", "read"));
    let c = p.client(Proto::H1);
    let t = token.clone();
    // /slow answers after 3 s: still in flight when the delay ends.
    let inflight = tokio::spawn(async move { c.get("/api/slow", Some(&t)).await });
    assert!(eventually(PICKUP, || async { up.count() == 1 }).await);
    let signalled = std::time::Instant::now();
    p.signal("TERM");
    assert!(
        eventually(Duration::from_millis(500), || async {
            client::plain_get(p.metrics, "/readyz").await.0 == 503
        })
        .await,
        "/readyz did not fail at once"
    );
    // New connections are still served during the delay.
    let r = p.client(Proto::H1).get("/api/x", Some(&token)).await;
    assert_eq!(r.status, 200, "refused during the drain delay");
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    // Then it stops accepting, lets the in-flight request finish, exits 0.
    let addr = p.addr;
    assert!(
        eventually(PICKUP, || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "still accepting after the drain delay"
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the delay was cut short"
    );
    assert_eq!(inflight.await.unwrap().status, 200);
    let status = tokio::task::spawn_blocking(move || {
        let s = p.child.wait().unwrap();
        drop(p);
        s
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A second SIGTERM during the drain delay skips the rest of it: valet
/// drains and exits at once (an operator who means it now).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_skips_the_rest_of_the_drain_delay() {
    let up = Upstream::start().await;
    let mut p = Proc::start_with_limits(
        &default_routes(up.addr),
        "  shutdown_grace: 10s\n  drain_delay: 60s\n",
        "",
        Stdio::null(),
    )
    .await;
    p.signal("TERM");
    assert!(
        eventually(PICKUP, || async {
            client::plain_get(p.metrics, "/readyz").await.0 == 503
        })
        .await
    );
    let again = std::time::Instant::now();
    p.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = p.child.wait().unwrap();
        drop(p);
        s
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        again.elapsed() < Duration::from_secs(15),
        "waited out the delay"
    );
}

/// Under Kubernetes each pod on the embedded store would keep revocations
/// of its own: valet refuses to start there unless `store.single_replica`
/// says one pod is intended.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_store_refuses_to_start_under_kubernetes_unless_single_replica() {
    let up = Upstream::start().await;
    let p = Proc::start(&default_routes(up.addr)).await;
    let out = Command::new(VALET)
        .args(["serve", "--config"])
        .arg(&p.config)
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KUBERNETES_SERVICE_HOST") && err.contains("single_replica: true"),
        "{err}"
    );
    // `valet check` in the pod says the same.
    let out = Command::new(VALET)
        .args(["check", "--config"])
        .arg(&p.config)
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("single_replica: true"), "{err}");
    // With single_replica it starts (and says where it listens).
    let text = std::fs::read_to_string(&p.config).unwrap() + "store:\n  single_replica: true\n";
    let one = p.config.with_file_name("single.yaml");
    std::fs::write(&one, text).unwrap();
    let mut child = Command::new(VALET)
        .args(["serve", "--config"])
        .arg(&one)
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = first.and_then(Result::ok).unwrap_or_default();
    assert!(line.starts_with("valet: listening on "), "{line:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_instead_of_terminating() {
    let up = Upstream::start().await;
    let p = Proc::start(&default_routes(up.addr)).await;
    p.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client::plain_get(p.metrics, "/readyz").await.0,
        200,
        "valet died on SIGHUP"
    );
    let r = p.client(Proto::H1).get("/public/x", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_json_and_never_contain_a_token() {
    let up = Upstream::start().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let p = Proc::start_with(
        &default_routes(up.addr),
        "logging:\n  format: json\n",
        Stdio::from(log.reopen().unwrap()),
    )
    .await;
    let good = sign(&p.key, &claims("alice", "read"));
    let mut expired_claims = claims("alice", "read");
    expired_claims["exp"] = serde_json::json!(now() - 100);
    let expired = sign(&p.key, &expired_claims);
    let c = p.client(Proto::H1);
    assert_eq!(c.get("/api/x", Some(&good)).await.status, 200);
    assert_eq!(c.get("/api/x", Some(&expired)).await.status, 401);
    assert_eq!(
        c.get(&format!("/api/x?access_token={good}"), None)
            .await
            .status,
        400
    );
    assert_eq!(c.get("/fwd/x", Some(&good)).await.status, 200);
    drop(p);
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.lines().count() > 3, "{text}");
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    for secret in [&good, &expired] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a token leaked into the logs");
    }
    assert!(
        text.contains(&valet::tokens::fingerprint(&good)),
        "the access log names the token by fingerprint"
    );
}

fn one_client_yaml() -> String {
    format!(
        "authorization_server:\n  clients:\n    - client_id: svc\n      secret_hash: \"{}\"\n      grant_types: [client_credentials]\n      operator: svc-op\n      scopes: [read]\n",
        valet::oauth2::registry::argon2id_hash("svc-secret")
    )
}

/// The issue's flood, against the real binary: 200 concurrent wrong secrets
/// from one source (with the throttle out of the way, so the hash pool alone
/// bounds the work), the right secret from another source during it, then
/// 64 concurrent requests with a correct argon2id secret nobody has used yet.
/// Before the pool, each wrong secret held its own 19 MiB argon2 buffer at
/// once (96 concurrent: +1.7 GiB) and the memory stayed after the load.
#[tokio::test(flavor = "multi_thread")]
async fn hashing_memory_is_bounded_under_a_flood_and_returns_after_it() {
    const MIB: u64 = 1024;
    let up = Upstream::start().await;
    let yaml = format!(
        "{}    - client_id: svc2\n      secret_hash: \"{}\"\n      grant_types: [client_credentials]\n      operator: svc2-op\n      scopes: [read]\n",
        one_client_yaml().replacen(
            "authorization_server:\n",
            "authorization_server:\n  max_failed_auth: 100000\n  max_failed_auth_per_source: 100000\n",
            1
        ),
        valet::oauth2::registry::argon2id_hash("svc2-secret")
    );
    let p = Proc::start_with(&default_routes(up.addr), &yaml, Stdio::null()).await;
    issue(&p).await;
    let idle = p.rss_kib();
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let c = p.client(Proto::H1);
            tokio::spawn(async move {
                c.post_form(
                    "/oauth2/token",
                    &[("grant_type", "client_credentials")],
                    Some(("svc", &format!("wrong-{i}"))),
                )
                .await
                .status
                .as_u16()
            })
        })
        .collect();
    let good = p.client(Proto::H1).from("127.0.0.2");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        good.post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some(("svc", "svc-secret")),
        ),
    )
    .await
    .expect("the right secret from another source is answered during the flood");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let good_latency = started.elapsed();
    let mut statuses = std::collections::BTreeMap::new();
    for t in flood {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert!(
        statuses.keys().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    let after_flood = p.peak_rss_kib();

    let correct: Vec<_> = (0..64)
        .map(|_| {
            let c = p.client(Proto::H1).from("127.0.0.3");
            tokio::spawn(async move {
                c.post_form(
                    "/oauth2/token",
                    &[("grant_type", "client_credentials")],
                    Some(("svc2", "svc2-secret")),
                )
                .await
                .status
                .as_u16()
            })
        })
        .collect();
    for t in correct {
        assert_eq!(t.await.unwrap(), 200);
    }
    let peak = p.peak_rss_kib();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = p.rss_kib();
    eprintln!(
        "idle {} MiB, peak after flood {} MiB, peak {} MiB, settled {} MiB; \
         flood answers {statuses:?}; good client answered in {good_latency:?}",
        idle / MIB,
        after_flood / MIB,
        peak / MIB,
        settled / MIB
    );
    assert!(
        peak.saturating_sub(idle) <= 150 * MIB,
        "peak grew {} MiB over idle",
        (peak - idle) / MIB
    );
    assert!(
        settled.saturating_sub(idle) <= 48 * MIB,
        "memory did not return: {} MiB over idle",
        settled.saturating_sub(idle) / MIB
    );
}

async fn issue(p: &Proc) -> String {
    p.issue_token("svc", "svc-secret").await
}

/// RFC 7009 revocation by the client `svc`; the answer's status.
async fn revoke(c: &Client, token: &str) -> http::StatusCode {
    c.post_form(
        "/oauth2/revoke",
        &[("token", token)],
        Some(("svc", "svc-secret")),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_survives_kill_9_right_after_the_answer() {
    let up = Upstream::start().await;
    let mut p = Proc::start_with(&default_routes(up.addr), &one_client_yaml(), Stdio::null()).await;
    let token = issue(&p).await;
    assert_eq!(
        p.client(Proto::H1).get("/api/x", Some(&token)).await.status,
        200
    );
    assert_eq!(revoke(&p.client(Proto::H1), &token).await, 200);
    p.child.kill().unwrap(); // SIGKILL: no chance to flush anything
    p.child.wait().unwrap();
    let again = p.sibling().await;
    let r = again.client(Proto::H1).get("/api/x", Some(&token)).await;
    assert_eq!(r.status, 401, "the revocation was lost");
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"valet\", error=\"invalid_token\", error_description=\"token revoked\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_sharing_a_revocation_file_both_refuse_a_revoked_token() {
    let up = Upstream::start().await;
    let a = Proc::start_with(&default_routes(up.addr), &one_client_yaml(), Stdio::null()).await;
    let b = a.sibling().await;
    let token = issue(&a).await;
    assert_eq!(
        b.client(Proto::H1).get("/api/x", Some(&token)).await.status,
        200
    );
    assert_eq!(revoke(&b.client(Proto::H1), &token).await, 200);
    assert_eq!(
        b.client(Proto::H1).get("/api/x", Some(&token)).await.status,
        401
    );
    let seen = eventually(PICKUP, || async {
        a.client(Proto::H1).get("/api/x", Some(&token)).await.status == 401
    })
    .await;
    assert!(seen, "the other process did not pick up the revocation");
    // And a revocation through the other process merges rather than overwrites.
    let second = issue(&a).await;
    let r = a
        .client(Proto::H1)
        .post_form(
            "/oauth2/revoke",
            &[("token", &second)],
            Some(("svc", "svc-secret")),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        eventually(PICKUP, || async {
            b.client(Proto::H1)
                .get("/api/x", Some(&second))
                .await
                .status
                == 401
        })
        .await
    );
    assert_eq!(
        b.client(Proto::H1).get("/api/x", Some(&token)).await.status,
        401,
        "first revocation kept"
    );
}

/// SIGKILL in the middle of a burst of concurrent revocations: every one
/// answered 200 is refused by a fresh process afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_burst_of_revocations_loses_nothing_acknowledged() {
    let up = Upstream::start().await;
    let mut p = Proc::start_with(&default_routes(up.addr), &one_client_yaml(), Stdio::null()).await;
    let mut tokens = Vec::new();
    for _ in 0..60 {
        tokens.push(issue(&p).await);
    }
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let burst: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|t| {
            let (c, acked) = (p.client(Proto::H1), acked.clone());
            tokio::spawn(async move {
                // The kill cuts some answers off: those are not acknowledged.
                let req = c
                    .request("POST", "/oauth2/revoke")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("authorization", client::basic_header("svc", "svc-secret"))
                    .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                        "token={t}"
                    ))))
                    .unwrap();
                if c.try_send(req).await.is_ok_and(|r| r.status == 200) {
                    acked.lock().unwrap().push(t);
                }
            })
        })
        .collect();
    // Some are acknowledged, others still in flight: kill.
    assert!(eventually(PICKUP, || async { acked.lock().unwrap().len() >= 10 }).await);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    for b in burst {
        let _ = b.await;
    }
    let acked = acked.lock().unwrap().clone();
    let again = p.sibling().await;
    for t in &acked {
        let r = again.client(Proto::H1).get("/api/x", Some(t)).await;
        assert_eq!(r.status, 401, "an acknowledged revocation was lost");
    }
    eprintln!(
        "{} of {} revocations acknowledged before the kill",
        acked.len(),
        tokens.len()
    );
}

/// The operator's revocation file is read, never written: revocations,
/// refresh rotations, reuse and client cut-offs all leave it byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn the_operators_revocation_file_is_never_written() {
    let up = Upstream::start().await;
    let p = Proc::start_with(&default_routes(up.addr), &one_client_yaml(), Stdio::null()).await;
    let text = std::fs::read_to_string(&p.config).unwrap();
    let file = text
        .lines()
        .skip_while(|l| *l != "revocation:")
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("file: "))
        .map(|f| f.trim_matches('"').to_string())
        .expect("the revocation file in the config");
    let operator =
        "# the operator's\ntokens: [{jti: by-hand, expires_at: 4102444800}]\nclients: []\n";
    std::fs::write(&file, operator).unwrap();
    let before = valet::digest::sha256(operator.as_bytes());
    let a = issue(&p).await;
    let b = issue(&p).await;
    assert_eq!(revoke(&p.client(Proto::H1), &a).await, 200);
    assert_eq!(revoke(&p.client(Proto::H1), &b).await, 200);
    assert_eq!(
        p.client(Proto::H1).get("/api/x", Some(&a)).await.status,
        401
    );
    // The operator edits it meanwhile: valet's own revocations stay.
    let edited = format!("{operator}subjects: []\n");
    std::fs::write(&file, &edited).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.client(Proto::H1).get("/api/x", Some(&b)).await.status,
        401
    );
    let after = std::fs::read(&file).unwrap();
    assert_eq!(after, edited.as_bytes(), "valet wrote the operator's file");
    assert_ne!(valet::digest::sha256(&after), before);
}

/// The store can no longer grow under a running gateway (a file size limit,
/// as a full disk would do): revocations answer 503, proxying goes on, and
/// what was answered 200 before is exactly what a fresh process refuses.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_be_written_answers_503_and_acknowledges_nothing_unwritten() {
    let up = Upstream::start().await;
    let mut p = Proc::start_with(&default_routes(up.addr), &one_client_yaml(), Stdio::null()).await;
    let mut tokens = Vec::new();
    for _ in 0..150 {
        tokens.push(issue(&p).await);
    }
    let untouched = tokens.pop().unwrap();
    // No file of the process may grow past 128 KiB beyond the store's
    // larger file as it is now (each revocation adds a few pages).
    let size = |f: &str| std::fs::metadata(p.config.with_file_name(f)).map_or(0, |m| m.len());
    let limit = size("valet-state.db").max(size("valet-state.db-wal")) + 128 * 1024;
    // prlimit(1), util-linux: on every Debian.
    let set = Command::new("prlimit")
        .arg(format!("--pid={}", p.child.id()))
        .arg(format!("--fsize={limit}:unlimited"))
        .status()
        .unwrap();
    assert!(set.success(), "prlimit failed");
    let c = p.client(Proto::H1);
    let (mut acked, mut refused) = (Vec::new(), None);
    for t in &tokens {
        let r = c
            .post_form(
                "/oauth2/revoke",
                &[("token", t)],
                Some(("svc", "svc-secret")),
            )
            .await;
        match r.status.as_u16() {
            200 => acked.push(t.clone()),
            503 => {
                assert_eq!(r.json()["error"], "temporarily_unavailable", "{r:?}");
                refused = Some(t.clone());
                break;
            }
            other => panic!("unexpected answer {other}"),
        }
    }
    let refused = refused.expect("the store kept taking writes past its file size limit");
    assert!(!acked.is_empty(), "the limit left no room for one write");
    // The gateway is alive and validates as before.
    assert_eq!(c.get("/api/x", Some(&untouched)).await.status, 200);
    assert_eq!(c.get("/api/x", Some(&refused)).await.status, 200);
    assert_eq!(c.get("/api/x", Some(&acked[0])).await.status, 401);
    assert!(
        metric_value(
            &client::plain_get(p.metrics, "/metrics").await.1,
            "valet_store_errors_total{op=\"append\"}"
        ) >= 1.0
    );
    // A fresh process on the store agrees: every 200 kept, the 503 not.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let again = p.sibling().await;
    let c = again.client(Proto::H1);
    for t in &acked {
        assert_eq!(c.get("/api/x", Some(t)).await.status, 401, "a 200 was lost");
    }
    assert_eq!(c.get("/api/x", Some(&refused)).await.status, 200);
    eprintln!(
        "{} revocations acknowledged before the store was full",
        acked.len()
    );
}
