//! Managing clients: the admin API and the `valet client` commands. A new
//! secret is shown once; regenerating it revokes every token issued so far.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;
use valet::store::sqlite::SqliteStore;
use valet::store::{ClientWrite, Store};

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn yaml(admin_token_file: &std::path::Path) -> String {
    format!(
        r#"authorization_server:
  # The tests poll for changes; rate limiting has its own test.
  max_failed_auth: 100000
  max_failed_auth_per_source: 100000
  secret_pepper_file: pepper
  generate_pepper_if_missing: true
  clients:
    - client_id: static
      secret_hash: "{hash}"
      grant_types: [client_credentials]
      operator: static-op
      scopes: [read]
  users:
    - username: alice
      password_hash: "{hash}"
admin:
  address: "127.0.0.1:0"
  token_file: "{file}"
"#,
        hash = valet::oauth2::registry::argon2id_hash("static-secret"),
        file = admin_token_file.display()
    )
}

async fn start() -> (Gateway, Upstream, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let up = Upstream::start().await;
    let gw = Gateway::start(&default_routes(up.addr), &yaml(&token_file)).await;
    (gw, up, secrets)
}

/// A request to the admin API (plain HTTP on loopback).
async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    client::plain_request(gw.admin_addr.unwrap(), method, path, token, body).await
}

async fn cc_token(gw: &Gateway, id: &str, secret: &str) -> Result<String, u16> {
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((id, secret)),
        )
        .await;
    if r.status == 200 {
        Ok(r.json()["access_token"].as_str().unwrap().to_string())
    } else {
        Err(r.status.as_u16())
    }
}

/// As `cc_token`, waiting out the 503 + Retry-After the token endpoint
/// answers while a fresh cut-off lies ahead (a token issued then would be
/// born revoked).
async fn cc_token_after_cutoff(gw: &Gateway, id: &str, secret: &str) -> Result<String, u16> {
    for _ in 0..4 {
        let r = gw
            .client(Proto::H1)
            .post_form(
                "/oauth2/token",
                &[("grant_type", "client_credentials")],
                Some((id, secret)),
            )
            .await;
        match r.status.as_u16() {
            200 => return Ok(r.json()["access_token"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(r.json()["error"], "temporarily_unavailable");
                let after: u64 = r.header("retry-after").parse().unwrap();
                assert!((1..=6).contains(&after), "{after}");
                tokio::time::sleep(Duration::from_secs(after)).await;
            }
            s => return Err(s),
        }
    }
    panic!("still 503 after the cut-off passed")
}

async fn proxied(gw: &Gateway, token: &str) -> u16 {
    gw.client(Proto::H1)
        .get("/api/x", Some(token))
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_needs_its_secret() {
    let (gw, _up, _s) = start().await;
    let (status, _) = admin(&gw, "GET", "/admin/clients", None, "").await;
    assert_eq!(status, 401);
    let (status, _) = admin(
        &gw,
        "GET",
        "/admin/clients",
        Some("admin-token-wrong-0000"),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = admin(&gw, "GET", "/admin/clients", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200);
    let text = body.to_string();
    assert!(text.contains("\"static\""));
    assert!(
        !text.contains("argon2") && !text.contains("secret"),
        "no secrets or hashes listed: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_adds_regenerates_and_revokes() {
    let (gw, _up, _s) = start().await;
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "billing", "grant_types": ["client_credentials"], "operator": "svc-billing", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["client_secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 43, "256 bits of randomness");
    // Stored hashed, never in clear, in the state store.
    let store = SqliteStore::open(&gw.revocation_path.with_file_name("valet-state.db")).unwrap();
    let (_, record) = store
        .clients()
        .unwrap()
        .into_iter()
        .find(|(id, _)| id == "billing")
        .unwrap();
    assert!(!record.contains(&secret));
    assert!(record.contains("hmac-sha256:"), "{record}");

    let old_token = cc_token(&gw, "billing", &secret)
        .await
        .expect("the new client works at once");
    assert_eq!(proxied(&gw, &old_token).await, 200);

    // Regenerate: the old secret stops working and every token so far is revoked.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients/billing/regenerate-secret",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let new_secret = body["client_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(proxied(&gw, &old_token).await, 401);
    assert_eq!(cc_token(&gw, "billing", &secret).await, Err(401));
    let fresh = cc_token_after_cutoff(&gw, "billing", &new_secret)
        .await
        .expect("the new secret works");
    assert_eq!(
        proxied(&gw, &fresh).await,
        200,
        "a token issued right after the cut-off is valid"
    );

    // Revoke all tokens, keep the secret.
    let (status, _) = admin(
        &gw,
        "POST",
        "/admin/clients/billing/revoke-tokens",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(proxied(&gw, &fresh).await, 401);
    let after = cc_token_after_cutoff(&gw, "billing", &new_secret)
        .await
        .unwrap();
    assert_eq!(proxied(&gw, &after).await, 200);

    // A client written in the config by hand is not rewritten by valet.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients/static/regenerate-secret",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict", "{body}");
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients/nobody/revoke-tokens",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 404);
    // The shape every refusal has: a code and a description.
    assert_eq!(body["error"], "not_found", "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    // Invalid clients are refused with the config's own rules.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "nop", "grant_types": ["client_credentials"]}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"] == "invalid_request"
            && body["error_description"]
                .as_str()
                .unwrap()
                .contains("operator"),
        "{body}"
    );
    // An operator that is a user's login: the config load would refuse the
    // clients file at the next reload, so the API refuses the client now.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "sneaky", "grant_types": ["client_credentials"], "operator": "alice", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"] == "invalid_request"
            && body["error_description"]
                .as_str()
                .unwrap()
                .contains("user's login"),
        "{body}"
    );
    assert!(
        valet::config::load(&gw.config_path).is_ok(),
        "the config no longer loads"
    );
}

/// Adds the managed client `leaky` through the admin API; its secret.
async fn add_leaky(gw: &Gateway) -> String {
    let (status, body) = admin(
        gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "leaky", "grant_types": ["client_credentials"], "operator": "svc-leaky", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["client_secret"].as_str().unwrap().to_string()
}

/// The issue's race: a leaked secret used as fast as possible while the
/// operator regenerates it (`regenerate` returns the new secret). Every
/// token it obtained, before, during or after the regeneration, must be
/// dead afterwards; the new secret works.
async fn hammer_during_regeneration<F, Fut>(gw: &Gateway, regenerate: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let old = add_leaky(gw).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let obtained = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let (c, old, stop, obtained) = (
                gw.client(Proto::H1),
                old.clone(),
                stop.clone(),
                obtained.clone(),
            );
            tokio::spawn(async move {
                let mut got = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c
                        .post_form(
                            "/oauth2/token",
                            &[("grant_type", "client_credentials")],
                            Some(("leaky", &old)),
                        )
                        .await;
                    if r.status == 200 {
                        got.push(r.json()["access_token"].as_str().unwrap().to_string());
                        obtained.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                got
            })
        })
        .collect();
    // The regeneration starts once the old secret has worked (waiting for
    // the event, not a fixed time, which a busy machine may not fill).
    assert!(
        eventually(PICKUP, || async {
            obtained.load(std::sync::atomic::Ordering::Relaxed) >= 4
        })
        .await,
        "the old secret did not work before the regeneration"
    );
    let new = regenerate().await;
    // Keep hammering past the cut-off's second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut tokens = Vec::new();
    for a in attackers {
        tokens.extend(a.await.unwrap());
    }
    assert!(
        !tokens.is_empty(),
        "the old secret worked before the regeneration"
    );
    for t in &tokens {
        assert_eq!(
            proxied(gw, t).await,
            401,
            "a token from the old secret survived"
        );
    }
    assert_eq!(cc_token(gw, "leaky", &old).await, Err(401));
    let t = cc_token_after_cutoff(gw, "leaky", &new).await.unwrap();
    assert_eq!(proxied(gw, &t).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_obtained_with_the_old_secret_survives_its_regeneration() {
    let (gw, _up, _s) = start().await;
    hammer_during_regeneration(&gw, || async {
        let (status, body) = admin(
            &gw,
            "POST",
            "/admin/clients/leaky/regenerate-secret",
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["client_secret"].as_str().unwrap().to_string()
    })
    .await;
}

/// The same from the CLI, another process: the running gateway learns of
/// the new secret and the cut-off from its file watcher, in either order.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_obtained_with_the_old_secret_survives_a_cli_regeneration() {
    let (gw, _up, _s) = start().await;
    let cfg = gw.config_path.clone();
    hammer_during_regeneration(&gw, || async move {
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            valet(&["client", "regenerate-secret", "leaky"], &cfg)
        })
        .await
        .unwrap();
        assert!(ok, "{err}");
        secret_from(&out)
    })
    .await;
}

/// A process that loads the cut-off before the new secret (its reload read
/// the clients file just before the regeneration wrote it, or another
/// replica's files arrive in another order) must not honour the replaced
/// secret once the cut-off has passed: it re-reads the clients file first.
#[tokio::test(flavor = "multi_thread")]
async fn a_cutoff_seen_before_the_new_secret_still_stops_the_old_secret() {
    use valet::revocation::time::Timestamp;
    use valet::revocation::{Change, ClientCutoff};
    let (gw, _up, _s) = start().await;
    let old = add_leaky(&gw).await;
    assert!(cc_token(&gw, "leaky", &old).await.is_ok());
    // Into the next second, so the cut-off is newer than the last read.
    let ms = valet::revocation::now_ms();
    tokio::time::sleep(Duration::from_millis(
        (1000 - ms.rem_euclid(1000)) as u64 + 50,
    ))
    .await;
    // The new secret lands in the store (another process's write, not yet
    // followed); then the cut-off, which this process has in memory at once.
    let pepper = std::fs::read_to_string(gw.dir.path().join("pepper")).unwrap();
    let pepper = valet::oauth2::registry::Secret::new(pepper.trim().as_bytes().to_vec());
    let store = SqliteStore::open(&gw.revocation_path.with_file_name("valet-state.db")).unwrap();
    let (_, current) = store
        .clients()
        .unwrap()
        .into_iter()
        .find(|(id, _)| id == "leaky")
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&current).unwrap();
    record["secret_hash"] = valet::oauth2::registry::hmac_hash(&pepper, "the-new-secret").into();
    let written = store
        .put_client(
            "leaky",
            Some(&record.to_string()),
            ClientWrite::Replace { current: &current },
        )
        .unwrap();
    assert!(written);
    let app = &gw.running.as_ref().unwrap().app;
    app.revocations
        .apply(&[Change::Client(ClientCutoff {
            client_id: "leaky".into(),
            revoked_before: Timestamp(valet::revocation::now()),
        })])
        .unwrap();
    // Before the file watcher's pickup (100 ms): the old secret is refused.
    assert_eq!(cc_token(&gw, "leaky", &old).await, Err(401));
    assert!(cc_token(&gw, "leaky", "the-new-secret").await.is_ok());
}

/// A regeneration while the config does not load (someone is mid-edit):
/// the new secret cannot be put in force, so once the cut-off has passed
/// the token endpoint issues nothing for that client (503) rather than honour
/// the secret it still holds; when the config loads again, the new secret
/// works and the old one does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_regeneration_that_cannot_be_put_in_force_issues_nothing_for_the_old_secret() {
    let (gw, _up, _s) = start().await;
    let old = add_leaky(&gw).await;
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, format!("{good}\nnot: [valid\n")).unwrap();
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients/leaky/regenerate-secret",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["in_force"], false, "{body}");
    let new = body["client_secret"].as_str().unwrap().to_string();
    // Through the cut-off's second and past it: never a token for the old secret.
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        let r = cc_token(&gw, "leaky", &old).await;
        assert_eq!(r, Err(503), "the old secret must not obtain a token");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(&gw.config_path, good).unwrap();
    assert!(cc_token_after_cutoff(&gw, "leaky", &new).await.is_ok());
    assert_eq!(cc_token(&gw, "leaky", &old).await, Err(401));
}

/// "Revoke everything of this subject" just now: a token issued in the same
/// second would be born revoked; valet answers 503 + Retry-After rather
/// than lift its iat past a cut-off a regeneration may write next.
#[tokio::test(flavor = "multi_thread")]
async fn a_subject_cutoff_just_ahead_answers_503_until_it_passes() {
    use valet::revocation::time::Timestamp;
    use valet::revocation::{Change, SubjectCutoff};
    let (gw, _up, _s) = start().await;
    let app = &gw.running.as_ref().unwrap().app;
    app.revocations
        .apply(&[Change::Subject(SubjectCutoff {
            subject: "static-op".into(),
            revoked_before: Timestamp(valet::revocation::now() + 2),
        })])
        .unwrap();
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some(("static", "static-secret")),
        )
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let after: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&after), "{after}");
    let t = cc_token_after_cutoff(&gw, "static", "static-secret")
        .await
        .unwrap();
    assert_eq!(proxied(&gw, &t).await, 200);
}

const VALET: &str = env!("CARGO_BIN_EXE_valet");

fn valet(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(VALET)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn secret_from(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .expect("a secret is printed")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_client_commands_change_a_running_gateway() {
    let (gw, _up, _s) = start().await;
    let cfg = gw.config_path.clone();
    let secret_file = gw.dir.path().join("billing.secret");
    let (ok, out, err) = valet(
        &[
            "client",
            "add",
            "billing",
            "--grant",
            "client_credentials",
            "--operator",
            "svc-billing",
            "--scope",
            "read",
            "--secret-file",
            secret_file.to_str().unwrap(),
        ],
        &cfg,
    );
    assert!(ok, "{err}");
    let secret = secret_from(&out);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap().trim(),
        secret
    );

    // The running gateway picks the new client up from the clients file.
    assert!(
        eventually(PICKUP, || async {
            cc_token(&gw, "billing", &secret).await.is_ok()
        })
        .await
    );
    let token = cc_token(&gw, "billing", &secret).await.unwrap();

    let (ok, out, _) = valet(&["client", "list"], &cfg);
    assert!(ok);
    assert!(out.contains("billing") && out.contains("static"));
    assert!(!out.contains(&secret) && !out.contains("hmac"), "{out}");

    let (ok, out, err) = valet(&["client", "regenerate-secret", "billing"], &cfg);
    assert!(ok, "{err}");
    let new_secret = secret_from(&out);
    assert!(eventually(PICKUP, || async { proxied(&gw, &token).await == 401 }).await);
    assert!(
        eventually(PICKUP, || async {
            cc_token(&gw, "billing", &secret).await == Err(401)
        })
        .await
    );
    assert!(cc_token_after_cutoff(&gw, "billing", &new_secret)
        .await
        .is_ok());

    let t = cc_token(&gw, "static", "static-secret").await.unwrap();
    let (ok, _, err) = valet(&["client", "revoke-tokens", "static"], &cfg);
    assert!(ok, "{err}");
    assert!(eventually(PICKUP, || async { proxied(&gw, &t).await == 401 }).await);
    let (ok, _, err) = valet(&["client", "regenerate-secret", "static"], &cfg);
    assert!(!ok);
    assert!(err.contains("defined in the config file"), "{err}");
}

/// The clients file of earlier versions is imported into the state store
/// once: its clients work, valet never writes it, and a second start does
/// not import it again (a regenerated secret stays in force).
#[tokio::test(flavor = "multi_thread")]
async fn the_clients_file_of_earlier_versions_is_imported_once() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let file = secrets.path().join("clients.yaml");
    let text = format!(
        "clients:\n  - client_id: legacy\n    secret_hash: \"{}\"\n    grant_types: [client_credentials]\n    operator: svc-legacy\n    scopes: [read]\n",
        valet::oauth2::registry::argon2id_hash("legacy-secret")
    );
    std::fs::write(&file, &text).unwrap();
    let up = Upstream::start().await;
    let extra = yaml(&token_file).replace(
        "authorization_server:\n",
        &format!(
            "authorization_server:\n  clients_file: \"{}\"\n",
            file.display()
        ),
    );
    let gw = Gateway::start(&default_routes(up.addr), &extra).await;
    assert!(cc_token(&gw, "legacy", "legacy-secret").await.is_ok());
    let (_, list) = admin(&gw, "GET", "/admin/clients", Some(ADMIN_TOKEN), "").await;
    let legacy = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "legacy")
        .unwrap()
        .clone();
    assert_eq!(legacy["source"], "store");
    // Counted.
    let sample = "valet_store_imported_entries{file=\"clients-file\"}";
    assert!(eventually(PICKUP, || async { gw.metric(sample).await == 1.0 }).await);
    // Managed now: its secret can be regenerated.
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients/legacy/regenerate-secret",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let secret = body["client_secret"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "valet wrote the file"
    );
    // Another process starting on the same config and store: no second
    // import over the regenerated record.
    let config = valet::config::load(&gw.config_path).unwrap();
    let other = valet::server::start(config).await.unwrap();
    let b = Client::new(
        other.listeners[0],
        gw.ca.client_config(Proto::H1.alpn()),
        Proto::H1,
    );
    let token = |id: &'static str, secret: String| {
        let b = &b;
        async move {
            b.post_form(
                "/oauth2/token",
                &[("grant_type", "client_credentials")],
                Some((id, &secret)),
            )
            .await
            .status
        }
    };
    assert_eq!(token("legacy", "legacy-secret".into()).await, 401);
    // (503 while the regeneration's cut-off, a second ahead, has not passed.)
    let mut status = token("legacy", secret.clone()).await;
    for _ in 0..4 {
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        status = token("legacy", secret.clone()).await;
    }
    assert_eq!(status, 200);
    other.shutdown().await;
}

/// A stored client that the config no longer admits (its operator became a
/// user's login): `valet check` compiles the store's clients as `serve`
/// does, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn valet_check_compiles_the_stored_clients_as_serve_does() {
    let (gw, _up, _s) = start().await;
    let cfg = gw.config_path.clone();
    let (ok, out, err) = valet(
        &[
            "client",
            "add",
            "carol",
            "--grant",
            "client_credentials",
            "--operator",
            "svc-carol",
        ],
        &cfg,
    );
    assert!(ok, "{err}");
    let secret = secret_from(&out);
    assert!(cc_token_after_cutoff(&gw, "carol", &secret).await.is_ok());
    let (ok, _, err) = valet(&["check"], &cfg);
    assert!(ok, "{err}");
    // A user `svc-carol`: fine for the config alone, not with the store.
    let good = std::fs::read_to_string(&cfg).unwrap();
    let clash = good.replace(
        "  users:\n    - username: alice\n",
        &format!(
            "  users:\n    - username: svc-carol\n      password_hash: \"{}\"\n    - username: alice\n",
            valet::oauth2::registry::argon2id_hash("pw")
        ),
    );
    assert_ne!(good, clash);
    std::fs::write(&cfg, &clash).unwrap();
    let (ok, _, err) = valet(&["check"], &cfg);
    assert!(!ok, "check passed a config the store's clients refuse");
    assert!(
        err.contains("client `carol`: operator `svc-carol` is also a user's login"),
        "{err}"
    );
    // The running gateway refuses the same reload and keeps carol.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cc_token(&gw, "carol", &secret).await.is_ok());
    std::fs::write(&cfg, &good).unwrap();
    let (ok, _, err) = valet(&["check"], &cfg);
    assert!(ok, "{err}");
}

/// Client ids are 1 to 128 of `A-Z a-z 0-9 . _ ~ -`: the admin API, the
/// CLI and the config refuse anything else (ids its own per-client
/// endpoints could never address, ids that look like others), and ids
/// differing only by case. Path segments are decoded exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn client_ids_outside_the_alphabet_or_differing_by_case_are_refused() {
    let (gw, _up, _s) = start().await;
    let add = |id: &str| {
        let body = serde_json::json!({
            "client_id": id, "grant_types": ["client_credentials"], "operator": "svc-x", "scopes": ["read"]
        })
        .to_string();
        let gw = &gw;
        async move { admin(gw, "POST", "/admin/clients", Some(ADMIN_TOKEN), &body).await }
    };
    for bad in [
        "a/b",
        "ünicode",
        "a b",
        " probe-c1",
        "probe-c1 ",
        "a%2Fb",
        "x\u{202e}y",
        "zero\u{200b}width",
        "",
        ".",
        "..",
        &"x".repeat(129),
        "Static",
    ] {
        let (status, body) = add(bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        let says = body.to_string();
        assert!(
            says.contains("A-Z a-z 0-9 . _ ~ -") || says.contains("only by case"),
            "{bad:?}: {says}"
        );
    }
    let (status, _) = add(" probe-c1").await;
    assert_eq!(status, 400);
    assert_eq!(
        cc_token(&gw, " probe-c1", "anything").await.unwrap_err(),
        401,
        "never created"
    );

    let id = "billing-2.v1~x_y";
    let (status, body) = add(id).await;
    assert_eq!(status, 201, "{body}");
    // Addressable as named, and percent-encoded (decoded once)...
    for path in [
        format!("/admin/clients/{id}/revoke-tokens"),
        "/admin/clients/billing%2D2%2Ev1~x_y/revoke-tokens".to_string(),
    ] {
        let (status, body) = admin(&gw, "POST", &path, Some(ADMIN_TOKEN), "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["client_id"], id);
    }
    // ...but never decoded twice.
    let (status, _) = admin(
        &gw,
        "POST",
        "/admin/clients/billing%252D2.v1~x_y/revoke-tokens",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 404);

    // The CLI refuses the same.
    let (ok, _, err) = valet(
        &[
            "client",
            "add",
            "a b",
            "--grant",
            "client_credentials",
            "--operator",
            "svc-ab",
        ],
        &gw.config_path,
    );
    assert!(!ok);
    assert!(err.contains("A-Z a-z 0-9 . _ ~ -"), "{err}");
    // And the config, written by hand.
    let text = std::fs::read_to_string(&gw.config_path)
        .unwrap()
        .replace("client_id: static", "client_id: \"stat ic\"");
    let e = valet::config::parse(&gw.config_path, &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("A-Z a-z 0-9 . _ ~ -"), "{e}");
}

/// A client an earlier version stored with an id outside the alphabet keeps
/// working, and `valet check` lists it as a warning.
#[tokio::test(flavor = "multi_thread")]
async fn stored_client_ids_outside_the_alphabet_are_warned_about() {
    let (gw, _up, _s) = start().await;
    let store = SqliteStore::open(&gw.revocation_path.with_file_name("valet-state.db")).unwrap();
    let raw = valet::config::RawClient {
        client_id: "old client".into(),
        secret_hash: valet::oauth2::registry::argon2id_hash("old-secret"),
        grant_types: vec!["client_credentials".into()],
        operator: Some("svc-old".into()),
        scopes: vec!["read".into()],
        default_scopes: None,
        audience: None,
        access_token_ttl: None,
        refresh_token_ttl: None,
        refresh_token_max_lifetime: None,
        use_refresh_token: false,
        introspect_any: false,
        jwt_bearer: None,
        saml2_bearer: None,
    };
    let record = valet::app::managed_clients::record(&raw);
    assert!(store
        .put_client("old client", Some(&record), ClientWrite::Create)
        .unwrap());
    let (ok, _, err) = valet(&["check"], &gw.config_path);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning")
            && err.contains("\"old client\"")
            && err.contains("outside the client id alphabet"),
        "{err}"
    );
}

/// The admin API takes several named credentials, each its own secret (the
/// name says who made a change); each works, nothing else does, and two
/// credentials may share neither a name nor a secret.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_accepts_several_named_credentials() {
    let (gw, _up, secrets) = start().await;
    let (alice_file, bot_file) = (secrets.path().join("alice"), secrets.path().join("bot"));
    std::fs::write(&alice_file, "alice-admin-secret-0001\n").unwrap();
    std::fs::write(&bot_file, "ci-bot-admin-secret-002\n").unwrap();
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    // (`admin:` is the config's last section.)
    let old_admin = &text[text.find("\nadmin:\n").unwrap() + 1..];
    assert!(old_admin.contains("token_file"), "{old_admin}");
    let with = |creds: &str| {
        text.replace(
            old_admin,
            &format!("admin:\n  address: \"127.0.0.1:0\"\n  credentials:\n{creds}"),
        )
    };
    let two = format!(
        "    - {{ name: ops-alice, token_file: \"{}\" }}\n    - {{ name: ci-bot, token_file: \"{}\" }}\n",
        alice_file.display(),
        bot_file.display()
    );
    std::fs::write(&gw.config_path, with(&two)).unwrap();
    assert!(gw.running.as_ref().unwrap().app.reload_config().unwrap());
    for token in ["alice-admin-secret-0001", "ci-bot-admin-secret-002"] {
        let (status, body) = admin(&gw, "GET", "/admin/clients", Some(token), "").await;
        assert_eq!(status, 200, "{body}");
    }
    let body =
        r#"{"client_id": "by-bot", "grant_types": ["client_credentials"], "operator": "svc-bot"}"#;
    let (status, _) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some("ci-bot-admin-secret-002"),
        body,
    )
    .await;
    assert_eq!(status, 201);
    // The single token of before is no longer a credential.
    let (status, _) = admin(&gw, "GET", "/admin/clients", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 401);

    let twice = format!(
        "    - {{ name: ops-alice, token_file: \"{}\" }}\n    - {{ name: ops-alice, token_file: \"{}\" }}\n",
        alice_file.display(),
        bot_file.display()
    );
    let shared = format!(
        "    - {{ name: ops-alice, token_file: \"{}\" }}\n    - {{ name: ci-bot, token_file: \"{}\" }}\n",
        alice_file.display(),
        alice_file.display()
    );
    let short = secrets.path().join("short");
    std::fs::write(&short, "too-short\n").unwrap();
    let weak = format!(
        "    - {{ name: weak, token_file: \"{}\" }}\n",
        short.display()
    );
    let nameless = format!(
        "    - {{ name: \"a b\", token_file: \"{}\" }}\n",
        alice_file.display()
    );
    for (creds, says) in [
        (twice, "named twice"),
        (shared, "share a secret"),
        (weak, "at least 16 characters"),
        (nameless, "1 to 64 of"),
    ] {
        let e = valet::config::parse(&gw.config_path, &with(&creds))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{says}: {e}");
    }
}

/// `show` (CLI and admin API) says everything about one client but its
/// secret or hash, and whether valet may change it (a client written by
/// hand in the config is read-only).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_is_shown_without_its_secret() {
    let (gw, _up, _s) = start().await;
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "shown", "grant_types": ["client_credentials"], "operator": "svc-shown", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["client_secret"].as_str().unwrap().to_string();
    let (status, body) = admin(&gw, "GET", "/admin/clients/shown", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], "shown");
    assert_eq!(body["operator"], "svc-shown");
    assert_eq!(
        body["grant_types"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(body["read_only"], false);
    let text = body.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("secret") && !text.contains("hmac"),
        "{text}"
    );
    let (status, body) = admin(&gw, "GET", "/admin/clients/static", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200);
    assert_eq!(body["read_only"], true, "written by hand in the config");
    assert!(!body.to_string().contains("argon2"), "{body}");
    let (status, _) = admin(&gw, "GET", "/admin/clients/nobody", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 404);

    let (ok, out, err) = valet(&["client", "show", "shown"], &gw.config_path);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["client_id"], "shown");
    assert!(!out.contains(&secret) && !out.contains("hmac"));
    let (ok, _, err) = valet(&["client", "show", "nobody"], &gw.config_path);
    assert!(!ok);
    assert!(err.contains("no client `nobody`"), "{err}");
}

/// A client added without an id gets a generated one (in the alphabet);
/// the answer, and with the CLI a new 0600 file, hold what the client
/// needs: its id, its secret and valet's URLs.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_added_without_an_id_gets_one_and_its_credentials() {
    let (gw, _up, secrets) = start().await;
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"grant_types": ["client_credentials"], "operator": "svc-gen", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["client_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("client-") && id.len() == 27, "{id}");
    assert!(valet::config::valid_client_id(&id));
    let issuer = ISSUER.trim_end_matches('/');
    assert!(
        body["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/oauth2/token"),
        "{body}"
    );
    assert!(body["metadata_url"].as_str().is_some());
    assert_eq!(body["issuer"], issuer);
    let secret = body["client_secret"].as_str().unwrap();
    assert!(cc_token_after_cutoff(&gw, &id, secret).await.is_ok());

    let file = secrets.path().join("billing-credentials.json");
    let (ok, out, err) = valet(
        &[
            "client",
            "add",
            "--grant",
            "client_credentials",
            "--operator",
            "svc-gen2",
            "--credentials-file",
            file.to_str().unwrap(),
        ],
        &gw.config_path,
    );
    assert!(ok, "{err}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["client_secret"].as_str().unwrap(), secret_from(&out));
    assert!(doc["client_id"].as_str().unwrap().starts_with("client-"));
    assert!(doc["revocation_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/oauth2/revoke"));
    // Written once: never over an existing file.
    let (_, _, err) = valet(
        &[
            "client",
            "add",
            "--grant",
            "client_credentials",
            "--operator",
            "svc-gen3",
            "--credentials-file",
            file.to_str().unwrap(),
        ],
        &gw.config_path,
    );
    assert!(err.contains("cannot write"), "{err}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(again, doc);
}

/// The admin API's updates: a widening leaves tokens alone, a narrowing
/// (scopes, lifetimes, grants, operator) revokes what was issued under the
/// old record; fixed fields, unknown fields, invalid values and clients
/// written in the config are refused with nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_narrows_a_client_revokes_its_tokens() {
    let (gw, _up, _s) = start().await;
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "reports", "grant_types": ["client_credentials"], "operator": "svc-reports", "scopes": ["read", "write"], "access_token_ttl": "30m"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["client_secret"].as_str().unwrap().to_string();
    let token = cc_token(&gw, "reports", &secret).await.unwrap();
    assert_eq!(proxied(&gw, &token).await, 200);
    let (_, shown) = admin(&gw, "GET", "/admin/clients/reports", Some(ADMIN_TOKEN), "").await;
    assert_eq!(shown["access_token_ttl"], 1800, "a lifetime set at add");

    // Widening: another scope, a longer lifetime. Tokens stay.
    let (status, body) = admin(
        &gw,
        "PATCH",
        "/admin/clients/reports",
        Some(ADMIN_TOKEN),
        r#"{"scopes": ["read", "write", "admin"], "access_token_ttl": "1h"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["narrowed"], serde_json::json!([]));
    assert_eq!(body["tokens_revoked"], false);
    assert_eq!(
        body["client"]["scopes"],
        serde_json::json!(["read", "write", "admin"])
    );
    assert_eq!(proxied(&gw, &token).await, 200, "widening revokes nothing");

    // Narrowing: a scope taken away and a shorter lifetime.
    let (status, body) = admin(
        &gw,
        "PATCH",
        "/admin/clients/reports",
        Some(ADMIN_TOKEN),
        r#"{"scopes": ["read"], "access_token_ttl": "5m"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["narrowed"],
        serde_json::json!(["scopes", "access_token_ttl"])
    );
    assert_eq!(body["tokens_revoked"], true);
    assert_eq!(body["in_force"], true);
    assert_eq!(
        proxied(&gw, &token).await,
        401,
        "issued under the old record"
    );
    let fresh = cc_token_after_cutoff(&gw, "reports", &secret)
        .await
        .unwrap();
    assert_eq!(proxied(&gw, &fresh).await, 200, "the same secret goes on");
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials"), ("scope", "write")],
            Some(("reports", &secret)),
        )
        .await;
    assert_eq!(r.status, 400, "the scope taken away: {:?}", r.body);
    assert_eq!(r.json()["error"], "invalid_scope");
    let r = gw
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some(("reports", &secret)),
        )
        .await;
    assert_eq!(r.json()["expires_in"], 300, "the new lifetime");

    // A merge patch: null returns a field to its default (1 h: wider).
    let (status, body) = admin(
        &gw,
        "PATCH",
        "/admin/clients/reports",
        Some(ADMIN_TOKEN),
        r#"{"access_token_ttl": null}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client"]["access_token_ttl"], 3600);
    assert_eq!(body["tokens_revoked"], false);
    // The operator changes who the tokens speak for: narrowing.
    let (status, body) = admin(
        &gw,
        "PATCH",
        "/admin/clients/reports",
        Some(ADMIN_TOKEN),
        r#"{"operator": "svc-reports-2"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["narrowed"], serde_json::json!(["operator"]));
    assert_eq!(proxied(&gw, &fresh).await, 401);

    // Refused, nothing written.
    let before = SqliteStore::open(&gw.revocation_path.with_file_name("valet-state.db"))
        .unwrap()
        .clients()
        .unwrap();
    for (patch, why) in [
        (r#"{"client_id": "other"}"#, "`client_id` cannot be updated"),
        (
            r#"{"secret_hash": "hmac-sha256:AAAA"}"#,
            "regenerate the secret instead",
        ),
        (
            r#"{"scopes": ["read"], "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"grant_types": ["implicit"]}"#,
            "unknown or unsupported grant type",
        ),
        (r#"{"grant_types": []}"#, "at least one grant type"),
        (r#"{"operator": "alice"}"#, "also a user's login"),
        (r#"["scopes"]"#, "a JSON object"),
    ] {
        let (status, body) = admin(
            &gw,
            "PATCH",
            "/admin/clients/reports",
            Some(ADMIN_TOKEN),
            patch,
        )
        .await;
        assert_eq!(status, 400, "{patch}: {body}");
        assert_eq!(body["error"], "invalid_request");
        assert!(
            body["error_description"].as_str().unwrap().contains(why),
            "{patch}: {body}"
        );
    }
    let after = SqliteStore::open(&gw.revocation_path.with_file_name("valet-state.db"))
        .unwrap()
        .clients()
        .unwrap();
    assert_eq!(before, after, "a refused update writes nothing");
    let (status, body) = admin(
        &gw,
        "PATCH",
        "/admin/clients/static",
        Some(ADMIN_TOKEN),
        r#"{"scopes": []}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("defined in the config file"));
    let (status, _) = admin(
        &gw,
        "PATCH",
        "/admin/clients/nobody",
        Some(ADMIN_TOKEN),
        "{}",
    )
    .await;
    assert_eq!(status, 404);
}

/// A deleted client: its tokens and secret stop working at once, and its id
/// is never issued again (exactly or differing by case), through the admin
/// API, the CLI, or a client written by hand in the config.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_client_is_tombstoned_and_its_tokens_revoked() {
    let (gw, _up, _s) = start().await;
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "gone-1", "grant_types": ["client_credentials"], "operator": "svc-gone", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["client_secret"].as_str().unwrap().to_string();
    let token = cc_token(&gw, "gone-1", &secret).await.unwrap();
    assert_eq!(proxied(&gw, &token).await, 200);

    let (status, body) = admin(
        &gw,
        "DELETE",
        "/admin/clients/gone-1",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);
    assert_eq!(body["in_force"], true);
    assert_eq!(proxied(&gw, &token).await, 401, "its tokens are revoked");
    assert_eq!(
        cc_token(&gw, "gone-1", &secret).await,
        Err(401),
        "its secret is gone"
    );
    let (status, _) = admin(&gw, "GET", "/admin/clients/gone-1", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 404);
    let (_, list) = admin(&gw, "GET", "/admin/clients", Some(ADMIN_TOKEN), "").await;
    assert!(!list.to_string().contains("gone-1"), "{list}");
    let (status, _) = admin(
        &gw,
        "DELETE",
        "/admin/clients/gone-1",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 404, "deleted once");
    let (status, _) = admin(
        &gw,
        "DELETE",
        "/admin/clients/static",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 409, "written in the config: read only");
    // Twins by case (stored by an earlier version, or two authorities
    // racing): deleting one would make the other's id a deleted one's.
    let db = SqliteStore::open(&gw.revocation_path.with_file_name("valet-state.db")).unwrap();
    for id in ["Twin-1", "twin-1"] {
        let record = format!(
            r#"{{"client_id":"{id}","secret_hash":"hmac-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","grant_types":["client_credentials"],"operator":"svc-{id}"}}"#
        );
        assert!(db
            .put_client(id, Some(&record), ClientWrite::Create)
            .unwrap());
    }
    let listed = eventually(PICKUP, || async {
        admin(&gw, "GET", "/admin/clients/twin-1", Some(ADMIN_TOKEN), "")
            .await
            .0
            == 200
    })
    .await;
    assert!(listed, "the twins load (with a warning)");
    let (status, body) = admin(
        &gw,
        "DELETE",
        "/admin/clients/twin-1",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("differs from `twin-1` only by case"),
        "{body}"
    );
    let (status, _) = admin(&gw, "GET", "/admin/clients/twin-1", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "nothing deleted");

    // Never issued again.
    for id in ["gone-1", "GONE-1"] {
        let (status, body) = admin(
            &gw,
            "POST",
            "/admin/clients",
            Some(ADMIN_TOKEN),
            &format!(r#"{{"client_id": "{id}", "grant_types": ["client_credentials"], "operator": "svc-new", "scopes": ["read"]}}"#),
        )
        .await;
        assert_eq!(status, 409, "{id}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("deleted client"),
            "{body}"
        );
    }
    let (ok, _, err) = valet(
        &[
            "client",
            "add",
            "gone-1",
            "--grant",
            "client_credentials",
            "--operator",
            "x",
        ],
        &gw.config_path,
    );
    assert!(!ok && err.contains("deleted client"), "{err}");
    // Nor by hand: a config naming it does not load (the last good one stays).
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let by_hand = text.replace("- client_id: static", "- client_id: Gone-1");
    std::fs::write(&gw.config_path, &by_hand).unwrap();
    let (ok, out, err) = valet(&["check"], &gw.config_path);
    assert!(!ok, "{out}");
    assert!(err.contains("the id of a deleted client"), "{err}");
}

/// Every change through the admin API or the CLI is an audit record (who,
/// what, which client) chained by digests; `valet audit verify` accepts the
/// chain as written, and names the record an edit, a deletion or a cut
/// tail changed.
#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_an_audit_record_and_tampering_is_detected() {
    let (gw, _up, _s) = start().await;
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "audited", "grant_types": ["client_credentials"], "operator": "svc-a", "scopes": ["read"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for (method, path, body) in [
        ("PATCH", "/admin/clients/audited", r#"{"scopes": []}"#),
        ("POST", "/admin/clients/audited/regenerate-secret", ""),
        ("POST", "/admin/clients/audited/revoke-tokens", ""),
    ] {
        let (status, b) = admin(&gw, method, path, Some(ADMIN_TOKEN), body).await;
        assert_eq!(status, 200, "{path}: {b}");
    }
    // The CLI's change prints its record on stdout.
    let (ok, out, err) = valet(&["client", "delete", "audited"], &gw.config_path);
    assert!(ok, "{err}");
    let printed: serde_json::Value = out
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the audit record as a JSON line on stdout");
    assert_eq!(printed["action"], "client.delete");
    assert!(
        printed["who"].as_str().unwrap().starts_with("cli:"),
        "{printed}"
    );

    let (ok, out, err) = valet(&["audit", "list"], &gw.config_path);
    assert!(ok, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "client.add",
            "client.update",
            "client.regenerate_secret",
            "client.revoke_tokens",
            "client.delete"
        ]
    );
    assert_eq!(records[4], printed, "stdout carries the stored record");
    for r in &records[..4] {
        assert_eq!(r["who"], "admin:admin", "{r}");
        assert_eq!(r["client_id"], "audited");
    }
    assert_eq!(records[0]["details"]["operator"], "svc-a", "what it may do");
    assert!(records[0]["details"].get("secret_hash").is_none());
    assert_eq!(
        records[1]["details"]["narrowed"],
        serde_json::json!(["scopes"])
    );
    assert!(records[2]["details"]["cutoff"].as_i64().unwrap() > 0);
    assert!(
        !out.contains("hmac-sha256"),
        "never a secret or its hash: {out}"
    );
    let (ok, out, err) = valet(&["audit", "verify"], &gw.config_path);
    assert!(ok, "{err}");
    let head = records[4]["digest"].as_str().unwrap();
    assert!(out.contains("5 records") && out.contains(head), "{out}");

    // Tampering, in the store itself.
    let db = gw.revocation_path.with_file_name("valet-state.db");
    let sql = |q: &str| {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(q).unwrap();
    };
    let verify = |anchor: Option<String>| {
        let mut args = vec!["audit".to_string(), "verify".to_string()];
        if let Some(a) = anchor {
            args.extend(["--anchor".to_string(), a]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        valet(&args, &gw.config_path)
    };
    let original: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT line FROM audit WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    // An edit: who made the change.
    sql(&format!(
        "UPDATE audit SET line = '{}' WHERE seq = 2",
        original.replace("admin:admin", "admin:someone-else")
    ));
    let (ok, _, err) = verify(None);
    assert!(
        !ok && err.contains("record 2: its contents do not match its digest"),
        "{err}"
    );
    // An edit with its digest made again: the next record's prev breaks.
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["who"] = "admin:someone-else".into();
    let m = v.as_object_mut().unwrap();
    m.remove("digest");
    let d = valet::digest::sha256_hex(serde_json::to_string(m).unwrap().as_bytes());
    m.insert("digest".into(), d.into());
    sql(&format!(
        "UPDATE audit SET line = '{}' WHERE seq = 2",
        serde_json::to_string(m).unwrap()
    ));
    let (ok, _, err) = verify(None);
    assert!(
        !ok && err.contains("record 3: its prev is not the digest"),
        "{err}"
    );
    // The same record spelled otherwise (a key twice: one reader sees
    // the first, another the last).
    let twice = original.replacen("{", "{\"who\":\"admin:someone-else\",", 1);
    sql(&format!("UPDATE audit SET line = '{twice}' WHERE seq = 2"));
    let (ok, _, err) = verify(None);
    assert!(
        !ok && err.contains("record 2: not in the one form"),
        "{err}"
    );
    // A deletion.
    sql(&format!(
        "UPDATE audit SET line = '{original}' WHERE seq = 2"
    ));
    assert!(verify(None).0, "restored");
    sql("DELETE FROM audit WHERE seq = 3");
    let (ok, _, err) = verify(None);
    assert!(!ok && err.contains("record 3 is missing"), "{err}");
    // The tail cut: the chain still holds, but not the anchor a log
    // system kept of the last record.
    sql("DELETE FROM audit WHERE seq >= 3");
    assert!(verify(None).0);
    let (ok, _, err) = verify(Some(format!("5:{head}")));
    assert!(
        !ok && err.contains("record 5 of the anchor is not in the log"),
        "{err}"
    );
    let first = records[0]["digest"].as_str().unwrap();
    assert!(verify(Some(format!("1:{first}"))).0);
}

/// A change through the admin API is printed by the gateway on its
/// standard output as a JSON line (logs go to standard error), the same
/// line the store keeps.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_prints_each_admin_change_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let up = Upstream::start().await;
    let extra = format!(
        "authorization_server:\n  secret_pepper_file: pepper\n  generate_pepper_if_missing: true\nadmin:\n  address: \"127.0.0.1:0\"\n  credentials:\n    - name: deploy-bot\n      token_file: \"{}\"\n",
        token_file.display()
    );
    let p = process::Proc::start_with(
        &default_routes(up.addr),
        &extra,
        std::process::Stdio::null(),
    )
    .await;
    let admin_addr: std::net::SocketAddr = process::stdout_lines(&p.child)
        .iter()
        .find_map(|l| l.strip_prefix("valet: admin API on ")?.parse().ok())
        .expect("the admin address");
    let (status, body) = client::plain_request(
        admin_addr,
        "POST",
        "/admin/clients",
        Some(ADMIN_TOKEN),
        r#"{"client_id": "printed", "grant_types": ["client_credentials"], "operator": "svc-p"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let line = eventually(PICKUP, || async {
        process::stdout_lines(&p.child)
            .iter()
            .any(|l| l.contains("\"client.add\""))
    })
    .await;
    assert!(line, "{:?}", process::stdout_lines(&p.child));
    let printed: serde_json::Value = process::stdout_lines(&p.child)
        .iter()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap();
    assert_eq!(printed["type"], "audit");
    assert_eq!(printed["who"], "admin:deploy-bot");
    assert_eq!(printed["client_id"], "printed");
    assert_eq!(printed["seq"], 1);
    assert_eq!(printed["prev"], valet::app::audit::GENESIS);
    assert!(!printed.to_string().contains("hmac-sha256"), "{printed}");
    let (ok, out, err) = valet(&["audit", "list"], &p.config);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(),
        printed
    );
}
