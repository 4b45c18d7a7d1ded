//! HTTPS upstreams (issue 12): certificate verification against the
//! route's CA, the name checked (or an explicit `server_name`), and a client
//! certificate for upstreams that demand mTLS. Each upstream has its own
//! test CA, made at test time.

mod support;

use support::*;

struct Tls {
    ca: TestCa,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn upstream_ca() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let ca_file = dir.path().join("upstream-ca.pem");
    ca.write_ca_pem(&ca_file);
    Tls {
        ca,
        ca_file,
        _dir: dir,
    }
}

fn route(name: &str, upstream: &str, tls: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: \"{upstream}\"\n    strip_prefix: true\n    auth: {{ required: false }}\n{tls}"
    )
}

fn tls_yaml(lines: &[(&str, String)]) -> String {
    let mut s = String::from("    upstream_tls:\n");
    for (k, v) in lines {
        s.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    s
}

async fn get(gw: &Gateway, path: &str) -> client::Reply {
    gw.client(Proto::H1).get(path, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_verified_against_the_routes_ca() {
    let t = upstream_ca();
    let up = Upstream::start_tls(t.ca.server_config()).await;
    let url = format!("https://localhost:{}", up.addr.port());
    let ca = tls_yaml(&[("ca_file", t.ca_file.display().to_string())]);
    let routes = format!(
        "{}{}",
        route("trusted", &url, &ca),
        // Without a ca_file the public web roots are trusted: not this CA.
        route("public-roots", &url, "")
    );
    let gw = Gateway::start(&routes, "").await;
    let r = get(&gw, "/trusted/x").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().uri, "/x");
    let r = get(&gw, "/public-roots/x").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("certificate was not accepted"),
        "{}",
        r.json()
    );
    assert_eq!(
        gw.metric("valet_upstream_errors_total{kind=\"tls\",route=\"public-roots\"}")
            .await,
        1.0
    );
    assert_eq!(up.count(), 1, "nothing reached the upstream unverified");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_refused_and_server_name_is_checked() {
    let t = upstream_ca();
    let up = Upstream::start_tls(t.ca.server_config()).await;
    let ca = ("ca_file", t.ca_file.display().to_string());
    let by_name = format!("https://localhost:{}", up.addr.port());
    let by_ip = format!("https://127.0.0.1:{}", up.addr.port());
    let routes = format!(
        "{}{}",
        // The certificate is for localhost and 127.0.0.1, not this name.
        route(
            "wrong-name",
            &by_name,
            &tls_yaml(&[ca.clone(), ("server_name", "api.example.com".into())])
        ),
        // An IP upstream checked against the name its certificate carries.
        route(
            "by-ip",
            &by_ip,
            &tls_yaml(&[ca, ("server_name", "localhost".into())])
        ),
    );
    let gw = Gateway::start(&routes, "").await;
    let r = get(&gw, "/wrong-name/x").await;
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("not for this name"),
        "{}",
        r.json()
    );
    assert_eq!(up.count(), 0);
    let r = get(&gw, "/by-ip/x").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_demands_a_client_certificate_is_reached_with_mtls() {
    let t = upstream_ca();
    let up = Upstream::start_tls(t.ca.server_config_requiring_clients()).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = t.ca.issue_to(dir.path(), "valet-client", "valet");
    let url = format!("https://localhost:{}", up.addr.port());
    let ca = ("ca_file", t.ca_file.display().to_string());
    let routes = format!(
        "{}{}",
        route("anonymous", &url, &tls_yaml(std::slice::from_ref(&ca))),
        route(
            "mtls",
            &url,
            &tls_yaml(&[
                ca,
                ("client_cert_file", cert.display().to_string()),
                ("client_key_file", key.display().to_string()),
            ])
        ),
    );
    let gw = Gateway::start(&routes, "").await;
    let r = get(&gw, "/anonymous/x").await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(up.count(), 0);
    let r = get(&gw, "/mtls/x").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(up.last().client_cert, "valet showed its client certificate");
}

/// What the config refuses about upstream TLS, with the key's position.
#[test]
fn upstream_tls_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let load = |routes: &str| {
        let path = dir.path().join("valet.yaml");
        std::fs::write(&path, config_text(&ca, &dir, routes, "")).unwrap();
        valet::config::load(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let ok = route("a", "https://localhost:9", "");
    assert_eq!(load(&ok), Ok(()));
    // An IPv6 literal is checked as the IP it is.
    assert_eq!(load(&route("a", "https://[::1]:9", "")), Ok(()));
    for (routes, why) in [
        (
            route(
                "a",
                "http://localhost:9",
                &tls_yaml(&[("server_name", "x".into())]),
            ),
            "for https:// upstreams",
        ),
        (
            route(
                "a",
                "https://localhost:9",
                &tls_yaml(&[("client_cert_file", "c.pem".into())]),
            ),
            "go together",
        ),
        (
            route(
                "a",
                "https://localhost:9",
                &tls_yaml(&[("ca_file", "missing.pem".into())]),
            ),
            "cannot read ca_file",
        ),
        (route("a", "ftp://localhost:9", ""), "not supported"),
    ] {
        let e = load(&routes).unwrap_err();
        assert!(e.contains(why) && e.contains("valet.yaml:"), "{why}: {e}");
    }
}

/// A renewed CA file (or client certificate) takes effect without a
/// restart: the files are watched with the config, and a change reloads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_upstream_ca_file_takes_effect_without_restart() {
    let (old, new) = (upstream_ca(), upstream_ca());
    let up = Upstream::start_tls(new.ca.server_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("route-ca.pem");
    std::fs::copy(&old.ca_file, &ca_file).unwrap();
    let url = format!("https://localhost:{}", up.addr.port());
    let routes = route(
        "renewed",
        &url,
        &tls_yaml(&[("ca_file", ca_file.display().to_string())]),
    );
    let gw = Gateway::start(&routes, "").await;
    assert_eq!(get(&gw, "/renewed/x").await.status, 502);
    let reloads = "valet_reloads_total{kind=\"config\",result=\"success\"}";
    let before = gw.metric(reloads).await;
    let tmp = dir.path().join("route-ca.pem.new");
    std::fs::copy(&new.ca_file, &tmp).unwrap();
    std::fs::rename(&tmp, &ca_file).unwrap();
    assert!(
        eventually(PICKUP, || async { gw.metric(reloads).await > before }).await,
        "the renewed CA file did not reload the config"
    );
    let r = get(&gw, "/renewed/x").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// A reload that changes a route's TLS settings (here the CA file's
/// contents) leaves the old pool to its last request and drops it: the
/// number of pools stays that of the config in force, and the old pool's
/// idle connection is closed rather than kept until a restart.
#[tokio::test(flavor = "multi_thread")]
async fn pools_whose_tls_settings_are_gone_are_dropped_after_a_reload() {
    let t = upstream_ca();
    let up = Upstream::start_tls(t.ca.server_config()).await;
    let plain = Upstream::start().await;
    let url = format!("https://localhost:{}", up.addr.port());
    let ca_path = t._dir.path().join("route-ca.pem");
    std::fs::copy(&t.ca_file, &ca_path).unwrap();
    let routes = format!(
        "{}{}",
        route(
            "t",
            &url,
            &tls_yaml(&[("ca_file", ca_path.display().to_string())])
        ),
        route("p", &format!("http://{}", plain.addr), "")
    );
    let gw = Gateway::start(&routes, "").await;
    // One TLS pool and one plain pool.
    assert_eq!(gw.metric("valet_upstream_pools").await, 2.0);
    let reloads = "valet_reloads_total{kind=\"config\",result=\"success\"}";
    for round in 1..=3usize {
        assert_eq!(get(&gw, "/t/x").await.status, 200, "round {round}");
        assert_eq!(get(&gw, "/p/x").await.status, 200, "round {round}");
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), round);
        // The CA file gains another (unrelated) CA: new TLS settings.
        let before = gw.metric(reloads).await;
        let other = tempfile::tempdir().unwrap();
        let extra = other.path().join("extra.pem");
        TestCa::new(other.path()).write_ca_pem(&extra);
        let mut pem = std::fs::read(&ca_path).unwrap();
        pem.extend(std::fs::read(&extra).unwrap());
        std::fs::write(&ca_path, pem).unwrap();
        assert!(
            eventually(PICKUP, || async { gw.metric(reloads).await > before }).await,
            "round {round}: the CA change did not reload"
        );
        assert_eq!(
            gw.metric("valet_upstream_pools").await,
            2.0,
            "round {round}"
        );
        // The old TLS pool's idle connection is closed; the plain pool,
        // whose settings did not change, keeps its connection.
        assert!(
            eventually(PICKUP, || async {
                up.closed.load(std::sync::atomic::Ordering::SeqCst) == round
            })
            .await,
            "round {round}: the old pool's connection stayed open"
        );
        assert_eq!(plain.closed.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
    assert_eq!(get(&gw, "/t/x").await.status, 200);
}
