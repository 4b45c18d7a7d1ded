//! Hot reload without restart: revocations, config and certificates. A bad
//! file keeps the last good state, is counted, and the gateway keeps serving.

mod support;

use std::time::Duration;
use support::*;

async fn status(gw: &Gateway, token: &str) -> u16 {
    gw.client(Proto::H1)
        .get("/api/x", Some(token))
        .await
        .status
        .as_u16()
}

/// Writes by rename, as editors and ConfigMaps do.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_jti_is_rejected_within_a_second_and_accepted_after_removal() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let t = gw.token("alice", "read");
    let other = gw.token("alice", "read");
    assert_eq!(status(&gw, &t).await, 200);
    let exp = now() + 300;
    replace(
        &gw.revocation_path,
        &format!("tokens:\n  - jti: {}\n    expires_at: {exp}\n", jti_of(&t)),
    );
    assert!(
        eventually(PICKUP, || async { status(&gw, &t).await == 401 }).await,
        "not revoked within 1 s"
    );
    let r = gw.client(Proto::H1).get("/api/x", Some(&t)).await;
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"valet\", error=\"invalid_token\", error_description=\"token revoked\""
    );
    assert_eq!(status(&gw, &other).await, 200, "only that token is revoked");
    assert_eq!(
        gw.metric("valet_revocation_entries{kind=\"token\"}").await,
        1.0
    );
    // In-place rewrite this time.
    std::fs::write(&gw.revocation_path, "tokens: []\n").unwrap();
    assert!(
        eventually(PICKUP, || async { status(&gw, &t).await == 200 }).await,
        "not restored within 1 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_and_subject_cutoffs_revoke_earlier_tokens() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let alice = gw.token("alice", "read");
    let mut bob_claims = claims("bob", "read");
    bob_claims["client_id"] = serde_json::json!("other-client");
    let bob = sign(&gw.key, &bob_claims);
    let cutoff = now() + 1;
    replace(
        &gw.revocation_path,
        &format!("clients:\n  - client_id: test-client\n    revoked_before: {cutoff}\n"),
    );
    assert!(eventually(PICKUP, || async { status(&gw, &alice).await == 401 }).await);
    assert_eq!(status(&gw, &bob).await, 200, "another client is unaffected");
    // A token issued after the cut-off is good.
    let mut fresh = claims("alice", "read");
    fresh["iat"] = serde_json::json!(cutoff);
    assert_eq!(status(&gw, &sign(&gw.key, &fresh)).await, 200);

    replace(
        &gw.revocation_path,
        &format!(
            "subjects:\n  - subject: bob\n    revoked_before: \"{}\"\n",
            valet::revocation::time::format_rfc3339(cutoff).unwrap()
        ),
    );
    assert!(eventually(PICKUP, || async { status(&gw, &bob).await == 401 }).await);
    assert_eq!(status(&gw, &alice).await, 200, "client cut-off was lifted");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_revocation_file_keeps_the_old_map_and_counts_a_failure() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let t = gw.token("alice", "read");
    replace(
        &gw.revocation_path,
        &format!(
            "tokens:\n  - {{jti: {}, expires_at: {}}}\n",
            jti_of(&t),
            now() + 300
        ),
    );
    assert!(eventually(PICKUP, || async { status(&gw, &t).await == 401 }).await);
    let failures = "valet_reloads_total{kind=\"revocation\",result=\"failure\"}";
    let before = gw.metric(failures).await;
    for bad in [
        "tokens:\n  - {jti: x, expires_at: 1\n",
        "",
        "tokenz: []\n",
        "tokens:\n  - {jti: x, expires_at: yesterday}\n",
    ] {
        let n = gw.metric(failures).await;
        replace(&gw.revocation_path, bad);
        assert!(
            eventually(PICKUP, || async { gw.metric(failures).await > n }).await,
            "failure not counted for {bad:?}"
        );
        assert_eq!(
            status(&gw, &t).await,
            401,
            "old map must stay in force after {bad:?}"
        );
    }
    assert!(gw.metric(failures).await >= before + 4.0);
    // Deleting the file altogether also keeps the old map, and says so.
    let n = gw.metric(failures).await;
    std::fs::remove_file(&gw.revocation_path).unwrap();
    assert!(
        eventually(PICKUP, || async { gw.metric(failures).await > n }).await,
        "a deleted revocation file is not counted as a failed reload"
    );
    assert_eq!(status(&gw, &t).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reload_changes_a_route_and_an_invalid_one_keeps_the_old_routes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let c = gw.client(Proto::H1);
    assert_eq!(c.get("/v2/x", None).await.status, 404);
    let routes = format!(
        "{}  - name: v2\n    match: {{ path_prefix: /v2 }}\n    upstream: \"http://{}\"\n    auth: {{ required: false }}\n",
        default_routes(up.addr),
        up.addr
    );
    replace(&gw.config_path, &gw.config_text(&routes, ""));
    assert!(
        eventually(PICKUP, || async {
            c.get("/v2/x", None).await.status == 200
        })
        .await
    );
    assert_eq!(
        gw.metric("valet_reloads_total{kind=\"config\",result=\"success\"}")
            .await,
        1.0
    );

    // An unknown key (a typo) is an error: the old routes stay.
    let typo = gw.config_text(
        &routes.replace("auth: { required: false }", "auth: { requird: false }"),
        "",
    );
    replace(&gw.config_path, &typo);
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_reloads_total{kind=\"config\",result=\"failure\"}")
                .await
                == 1.0
        })
        .await
    );
    assert_eq!(
        c.get("/v2/x", None).await.status,
        200,
        "old routes stay in force"
    );
    // A semantic error, too.
    let bad_upstream = gw.config_text(
        &routes.replace(
            &format!("\"http://{}\"\n    auth: {{ required: false }}", up.addr),
            "\"ftp://nope\"\n    auth: { required: false }",
        ),
        "",
    );
    replace(&gw.config_path, &bad_upstream);
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_reloads_total{kind=\"config\",result=\"failure\"}")
                .await
                == 2.0
        })
        .await
    );
    assert_eq!(c.get("/v2/x", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_files_are_reloaded_without_restart() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let served = |gw: &Gateway| {
        let c = gw.client(Proto::H1);
        async move {
            let s = c.tls_stream().await;
            s.get_ref().1.peer_certificates().unwrap()[0]
                .as_ref()
                .to_vec()
        }
    };
    let first = served(&gw).await;
    gw.ca.issue_leaf("leaf-2");
    let new_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&gw.ca.cert_file)
            .unwrap()
            .as_ref()
            .to_vec()
    };
    assert_ne!(first, new_der);
    assert!(eventually(PICKUP, || async { served(&gw).await == new_der }).await);
    // (Counted just after the new certificate is in force: a handshake can
    // come between the two.)
    let counted = || async {
        gw.metric("valet_reloads_total{kind=\"tls\",result=\"success\"}")
            .await
    };
    assert!(eventually(PICKUP, || async { counted().await == 1.0 }).await);
    assert_eq!(counted().await, 1.0, "counted once");
    // A broken certificate keeps the current one.
    std::fs::write(&gw.ca.cert_file, "not a certificate").unwrap();
    assert!(
        eventually(PICKUP, || async {
            gw.metric("valet_reloads_total{kind=\"tls\",result=\"failure\"}")
                .await
                >= 1.0
        })
        .await
    );
    assert_eq!(served(&gw).await, new_der);
}

/// Issue 9: every reload trigger racing this process's own revocations. Two
/// threads revoke (and check their revocation the moment it is
/// acknowledged), two reload through the one reload path (the watcher's,
/// SIGHUP's and the admin API's), a sibling process writes to the same
/// state store (followed from its log), the operator edits the file (which
/// the watcher reloads on every change); a checker looks at every
/// acknowledged revocation, all the time.
/// Not one may be unenforced, even for a moment.
#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_revocation_is_never_unenforced_by_a_racing_reload() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use valet::revocation::time::Timestamp;
    use valet::revocation::{Change, Revocations, RevokedToken};
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let app = gw.running.as_ref().unwrap().app.clone();
    let acked: Arc<Mutex<Vec<String>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let lapses = Arc::new(AtomicUsize::new(0));
    let exp = valet::revocation::now() + 3600;
    let token = move |jti: String| {
        Change::Token(RevokedToken {
            jti,
            expires_at: Timestamp(exp),
            rotated_at: None,
            rotated_at_ms: None,
        })
    };
    let mut threads = Vec::new();
    for r in 0..2 {
        let (app, acked, stop, lapses) = (app.clone(), acked.clone(), stop.clone(), lapses.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let jti = format!("revoked-{r}-{i}");
                app.revocations.apply(&[token(jti.clone())]).unwrap();
                if app
                    .revocations
                    .current()
                    .check(Some(&jti), "", "", 0, None)
                    .is_none()
                {
                    lapses.fetch_add(1, Ordering::Relaxed);
                }
                acked.lock().unwrap().push(jti);
                i += 1;
            }
        }));
    }
    for _ in 0..2 {
        let (app, stop) = (app.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                app.reload_files();
            }
        }));
    }
    {
        // Another process writing to the same store (followed from its log).
        let (path, stop) = (gw.revocation_path.clone(), stop.clone());
        let store = path.with_file_name("valet-state.db");
        threads.push(std::thread::spawn(move || {
            let sibling = Revocations::open(&path, &store).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                sibling.apply(&[token(format!("edit-{i}"))]).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    {
        // The operator editing the file: every edit is reloaded.
        let (path, stop) = (gw.revocation_path.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let tmp = path.with_extension("edit");
                std::fs::write(
                    &tmp,
                    format!("tokens:\n  - {{jti: operator-{i}, expires_at: 4102444800}}\n"),
                )
                .unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    {
        let (app, acked, stop, lapses) = (app.clone(), acked.clone(), stop.clone(), lapses.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now: Vec<String> = acked.lock().unwrap().clone();
                let set = app.revocations.current();
                for jti in &now {
                    if set.check(Some(jti), "", "", 0, None).is_none() {
                        lapses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // At least 3 s of the race, and on until 50 revocations were
    // acknowledged (a busy machine makes fewer in a fixed window).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let enough = eventually(Duration::from_secs(60), || async {
        acked.lock().unwrap().len() >= 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let n = acked.lock().unwrap().len();
    assert!(enough, "only {n} revocations were made in 60 s");
    assert_eq!(
        lapses.load(Ordering::Relaxed),
        0,
        "of {n} acknowledged revocations"
    );
}

/// The role and the store are fixed while valet runs: a reload that changes
/// either is refused (the old config stays, the failure is counted).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_cannot_change_the_role_or_the_store() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), "").await;
    let failures = "valet_reloads_total{kind=\"config\",result=\"failure\"}";
    for (n, extra) in ["role: validator\n", "store:\n  path: elsewhere.db\n"]
        .into_iter()
        .enumerate()
    {
        let routes = format!(
            "{}  - name: v2\n    match: {{ path_prefix: /v2 }}\n    upstream: \"http://{}\"\n    auth: {{ required: false }}\n",
            default_routes(up.addr),
            up.addr
        );
        let mut text = gw.config_text(&routes, extra);
        if n == 0 {
            // A valid validator config otherwise (public key only), so
            // that only the role change is refused.
            std::fs::write(gw.dir.path().join("public.pem"), gw.key.public_pem()).unwrap();
            text = text.replace(
                "private_key_file: signing.pem",
                "public_key_file: public.pem",
            );
        }
        replace(&gw.config_path, &text);
        assert!(
            eventually(PICKUP, || async {
                gw.metric(failures).await == (n + 1) as f64
            })
            .await,
            "{extra}: the reload was not refused"
        );
        // The old routes stay.
        assert_eq!(
            gw.client(Proto::H1).get("/v2/x", None).await.status,
            404,
            "{extra}"
        );
    }
}
