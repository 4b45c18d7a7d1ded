//! valet as an OAuth 1.0a client, end to end over real sockets: the
//! three-legged flow against a provider test server (TLS token endpoints,
//! signatures verified with the oauth1-request crate, not valet's code),
//! signed forwarding, the state cookie, replayed and unknown callbacks, the
//! return-URL allow-list, the token store across a restart, forgetting a
//! token, and the clear error for a subject without a token.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use support::oauth1_provider::Provider;
use support::*;

struct Setup {
    gw: Gateway,
    provider: Provider,
    provider_ca: TestCa,
    _pdir: tempfile::TempDir,
}

const CALLBACK: &str = "https://valet.example:8443/oauth1/legacy/callback";

async fn setup(extra_oauth1: &str) -> Setup {
    setup_with(extra_oauth1, false, "").await
}

/// `extra_oauth1` goes inside the `oauth1` section, `after` after it.
async fn setup_with(extra_oauth1: &str, rsa: bool, after: &str) -> Setup {
    let pdir = tempfile::tempdir().unwrap();
    let provider_ca = TestCa::new(pdir.path());
    let ca_pem = pdir.path().join("provider-ca.pem");
    provider_ca.write_ca_pem(&ca_pem);
    let provider = Provider::start(&provider_ca).await;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let entry = if rsa {
        provider.config_yaml_rsa(
            pdir.path(),
            &ca_pem,
            &data.join("oauth1-rsa-sha1-key.pem"),
            std::fs::read(data.join("oauth1-rsa-sha1-public.der")).unwrap(),
        )
    } else {
        provider.config_yaml(pdir.path(), &ca_pem)
    };
    let routes = format!(
        r#"  - name: legacy
    match: {{ path_prefix: /legacy }}
    upstream: "http://{0}"
    strip_prefix: true
    upstream_auth: {{ oauth1: legacy }}
  - name: legacy-https
    match: {{ path_prefix: /legacy-https }}
    upstream: "https://localhost:{1}"
    strip_prefix: true
    upstream_tls: {{ ca_file: "{2}" }}
    upstream_auth: {{ oauth1: legacy }}
  - name: legacy-via-proxy
    match: {{ path_prefix: /proxied }}
    upstream: "http://{0}"
    strip_prefix: true
    upstream_auth: {{ oauth1: legacy, signed_origin: "https://API.legacy.example:443/" }}
"#,
        provider.api_addr,
        provider.tls_addr.port(),
        ca_pem.display(),
    );
    let extra = format!(
        r#"oauth1:
  token_store:
    file: oauth1-tokens.yaml
    key_file: oauth1-store.key
    generate_key_if_missing: true
{extra_oauth1}  providers:
{entry}{after}"#
    );
    let gw = Gateway::start(&routes, &extra).await;
    Setup {
        gw,
        provider,
        provider_ca,
        _pdir: pdir,
    }
}

/// The part of an absolute URL after its authority.
fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").unwrap().1;
    &after_scheme[after_scheme.find('/').unwrap()..]
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

impl Setup {
    fn client(&self) -> Client {
        self.gw.client(Proto::H1)
    }

    async fn start_flow(&self, bearer: &str, query: &str) -> support::client::Reply {
        let req = self
            .client()
            .request("GET", &format!("/oauth1/legacy/authorize{query}"))
            .header("authorization", format!("Bearer {bearer}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.client().send(req).await
    }

    /// The user's browser at the provider: approve, get sent to the callback.
    async fn approve(&self, authorize_location: &str) -> String {
        let browser = Client::new(
            self.provider.tls_addr,
            self.provider_ca.client_config(Proto::H1.alpn()),
            Proto::H1,
        );
        let r = browser.get(path_of(authorize_location), None).await;
        assert_eq!(r.status, 302, "{:?}", r.body);
        r.header("location").to_string()
    }

    async fn callback(&self, callback_url: &str, cookie: Option<&str>) -> support::client::Reply {
        assert!(callback_url.starts_with(CALLBACK), "{callback_url}");
        let mut b = self.client().request("GET", path_of(callback_url));
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        self.client()
            .send(b.body(Full::new(Bytes::new())).unwrap())
            .await
    }

    /// A complete flow for `bearer`; returns the callback URL (for replays).
    async fn authorize(&self, bearer: &str) -> String {
        let r = self.start_flow(bearer, "").await;
        assert_eq!(r.status, 302, "{:?}", r.body);
        let cookie = cookie_pair(r.header("set-cookie"));
        let cb = self.approve(r.header("location")).await;
        let done = self.callback(&cb, Some(&cookie)).await;
        assert_eq!(done.status, 302, "{:?}", done.body);
        cb
    }

    /// A second valet on the same config, state store and key, and a
    /// client of it.
    async fn second_gateway(&self) -> (valet::server::Running, Client) {
        let config = valet::config::load(&self.gw.config_path).unwrap();
        let other = valet::server::start(config).await.unwrap();
        let b = Client::new(
            other.listeners[0],
            self.gw.ca.client_config(Proto::H1.alpn()),
            Proto::H1,
        );
        (other, b)
    }

    fn api_calls(&self) -> Vec<support::oauth1_provider::ApiCall> {
        self.provider.state.lock().unwrap().api.clone()
    }
}

#[tokio::test]
async fn the_three_legged_flow_then_signed_requests() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let c = s.client();

    // No token yet: a clear error naming where to start, nothing forwarded.
    let r = c.get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 403);
    let j = r.json();
    assert_eq!(j["error"], "oauth1_authorization_required");
    assert_eq!(j["provider"], "legacy");
    assert_eq!(
        j["authorize_url"],
        "https://valet.example:8443/oauth1/legacy/authorize"
    );
    assert!(s.api_calls().is_empty());

    // The flow needs a valet bearer token.
    let r = c.get("/oauth1/legacy/authorize", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"valet\"");

    // 1. Temporary credentials (signed, with oauth_callback), then the redirect.
    let r = s
        .start_flow(
            &alice,
            "?return_to=https%3A%2F%2Fapp.example%2Fother%3Fx%3D1",
        )
        .await;
    assert_eq!(r.status, 302, "{:?}", r.body);
    let location = r.header("location").to_string();
    let authorize_base = format!(
        "https://localhost:{}/oauth/authorize?oauth_token=rt-",
        s.provider.tls_addr.port()
    );
    assert!(location.starts_with(&authorize_base), "{location}");
    let set_cookie = r.header("set-cookie").to_string();
    assert!(
        set_cookie.starts_with("__Host-valet_oauth1_legacy=")
            && set_cookie.contains("Path=/;")
            && !set_cookie.contains("Domain")
            && set_cookie.contains("Secure")
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("Max-Age=600")
            && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    assert_eq!(s.provider.state.lock().unwrap().callbacks, vec![CALLBACK]);

    // 2. The user approves; the callback exchanges the verifier and stores the token.
    let cb = s.approve(&location).await;
    let done = s.callback(&cb, Some(&cookie_pair(&set_cookie))).await;
    assert_eq!(done.status, 302, "{:?}", done.body);
    assert_eq!(done.header("location"), "https://app.example/other?x=1");
    assert!(done.header("set-cookie").contains("Max-Age=0"));
    assert!(s.provider.state.lock().unwrap().refusals.is_empty());

    // 3. Signed forwarding: query parameters (repeated, encoded, `+`)...
    let r = c
        .get(
            "/legacy/items?b=2&a=1&a=%20x+y&empty=&snow=%E2%98%83",
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = s.api_calls().pop().unwrap();
    let oauth = call
        .verified
        .clone()
        .expect("signature verified by the provider");
    assert_eq!(
        call.path_and_query,
        "/items?b=2&a=1&a=%20x+y&empty=&snow=%E2%98%83"
    );
    let authz = call.authorization.unwrap();
    assert!(authz.starts_with("OAuth realm=\"Legacy API\", "), "{authz}");
    assert!(!authz.contains("Bearer") && !authz.contains(&alice));
    let token = oauth["oauth_token"].clone();
    assert!(token.starts_with("at-"), "{token}");
    assert_eq!(
        oauth["oauth_consumer_key"],
        support::oauth1_provider::CONSUMER_KEY
    );
    assert_eq!(
        oauth.len(),
        8,
        "realm and the seven oauth_ parameters: {oauth:?}"
    );

    // ...form bodies (their parameters are signed)...
    let body = "text=Hello+World%21&a=%E2%98%83&a=&z=%2B";
    let req = c
        .request("POST", "/legacy/submit?q=1")
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = s.api_calls().pop().unwrap();
    assert!(call.verified.is_ok(), "{:?}", call.verified);
    assert_eq!(call.body, body);

    // ...and other bodies stream untouched (not part of the signature).
    let json = r#"{"text":"a=b&c=d"}"#;
    let req = c
        .request("PUT", "/legacy/doc")
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json)))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = s.api_calls().pop().unwrap();
    assert!(call.verified.is_ok(), "{:?}", call.verified);
    assert_eq!(call.body, json);

    // A caller cannot smuggle protocol parameters past the signature.
    let r = c.get("/legacy/items?oauth_token=other", Some(&alice)).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("oauth_* are reserved"));
    let req = c
        .request("POST", "/legacy/submit")
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("a=1&oauth_signature=x")))
        .unwrap();
    assert_eq!(c.send(req).await.status, 400);
    assert_eq!(s.api_calls().len(), 3, "neither reached the upstream");

    // Another subject has no token of its own.
    let bob = s.gw.token("bob", "read");
    let r = c.get("/legacy/items", Some(&bob)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "oauth1_authorization_required");

    let m = |name: &str| format!("valet_oauth1_{name}{{provider=\"legacy\"}}");
    assert_eq!(s.gw.metric(&m("flows_started_total")).await, 1.0);
    assert_eq!(s.gw.metric(&m("flows_completed_total")).await, 1.0);
    assert_eq!(s.gw.metric(&m("signed_requests_total")).await, 3.0);
    assert_eq!(s.gw.metric(&m("upstream_unauthorized_total")).await, 0.0);

    // The provider revokes the token (401, oauth_problem="token_revoked"):
    // the token is marked invalid, and alice is asked to authorize again,
    // as before the flow; bob is untouched.
    s.provider
        .state
        .lock()
        .unwrap()
        .revoked
        .insert(token.clone());
    let r = c.get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["error"], "oauth1_authorization_required");
    assert_eq!(
        r.json()["authorize_url"],
        "https://valet.example:8443/oauth1/legacy/authorize"
    );
    assert_eq!(s.gw.metric(&m("upstream_unauthorized_total")).await, 1.0);
    assert_eq!(
        s.gw.metric(
            "valet_oauth1_tokens_invalidated_total{problem=\"token_revoked\",provider=\"legacy\"}"
        )
        .await,
        1.0
    );
    // Not sent again: refused before the provider is asked.
    let calls = s.api_calls().len();
    let r = c.get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        s.api_calls().len(),
        calls,
        "an invalid token was used again"
    );
    // Kept, marked, for the operator to see.
    let store = s.gw.running.as_ref().unwrap().app.oauth1_store().unwrap();
    let (problem, _) = store.invalid("legacy", "alice").unwrap();
    assert_eq!(problem, "token_revoked");
    // Authorizing again replaces it.
    s.provider.state.lock().unwrap().revoked.clear();
    s.authorize(&alice).await;
    assert!(store.invalid("legacy", "alice").is_none());
    assert_eq!(c.get("/legacy/items", Some(&alice)).await.status, 200);
}

/// A provider refusing valet's consumer (a revoked consumer key, a bad
/// signature, a clock off) says nothing about any user's token: no token
/// is touched, the provider's 401 goes back, and the problem is counted
/// for an alert. One bad consumer key must not unlink every user.
#[tokio::test]
async fn consumer_level_refusals_touch_no_users_token() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let c = s.client();
    s.authorize(&alice).await;
    assert_eq!(c.get("/legacy/items", Some(&alice)).await.status, 200);
    for (problem, label) in [
        ("consumer_key_rejected", "consumer_key_rejected"),
        ("signature_invalid", "signature_invalid"),
        ("timestamp_refused", "timestamp_refused"),
        // Also sent for another consumer's token: not the user's, by default.
        ("token_rejected", "token_rejected"),
        ("made_up_by_the_upstream", "other"),
        ("", "none"),
    ] {
        s.provider.state.lock().unwrap().consumer_problem = Some(problem.into());
        let r = c.get("/legacy/items", Some(&alice)).await;
        assert_eq!(r.status, 401, "{problem}");
        let metric = format!(
            "valet_oauth1_consumer_problems_total{{problem=\"{label}\",provider=\"legacy\"}}"
        );
        assert_eq!(s.gw.metric(&metric).await, 1.0, "{problem}");
    }
    s.provider.state.lock().unwrap().consumer_problem = None;
    let store = s.gw.running.as_ref().unwrap().app.oauth1_store().unwrap();
    assert!(store.invalid("legacy", "alice").is_none());
    assert_eq!(
        c.get("/legacy/items", Some(&alice)).await.status,
        200,
        "the user's token was touched"
    );
}

#[tokio::test]
async fn unknown_replayed_and_foreign_browser_callbacks_are_refused() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let r = s.start_flow(&alice, "").await;
    let first_cookie = cookie_pair(r.header("set-cookie"));
    let cb = s.approve(r.header("location")).await;
    assert_eq!(s.callback(&cb, Some(&first_cookie)).await.status, 302);

    // The same callback again, from the same browser: the temporary token
    // was used once already.
    let r = s.callback(&cb, Some(&first_cookie)).await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["error"], "invalid_request");
    let d = j["error_description"].as_str().unwrap();
    assert!(d.contains("unknown or was already used"), "{d}");
    assert!(
        d.contains("https://valet.example:8443/oauth1/legacy/authorize"),
        "{d}"
    );

    // A token valet never handed out.
    let r = s
        .callback(
            &format!("{CALLBACK}?oauth_token=rt-forged&oauth_verifier=x"),
            Some(&first_cookie),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("unknown or was already used"));

    // Another browser (no state cookie, or a wrong one) cannot finish a
    // flow, and, the attack of someone who learned the user's oauth_token,
    // cannot end it either: the user's own browser completes it after.
    let r = s.start_flow(&alice, "").await;
    let cookie = cookie_pair(r.header("set-cookie"));
    let cb = s.approve(r.header("location")).await;
    let r = s.callback(&cb, None).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("does not come from the browser that started the flow"));
    let r = s
        .callback(&cb, Some("__Host-valet_oauth1_legacy=guessed"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("does not come from the browser that started the flow"));
    let r = s.callback(&cb, Some(&cookie)).await;
    assert_eq!(r.status, 302, "the flow survived: {:?}", r.body);

    // Missing oauth_token.
    let r = s
        .callback(&format!("{CALLBACK}?oauth_verifier=x"), None)
        .await;
    assert_eq!(r.status, 400);

    // The user declines at the provider: back to the return URL with an
    // error, and the flow is over.
    let r = s.start_flow(&alice, "").await;
    let cookie = cookie_pair(r.header("set-cookie"));
    let tok = r
        .header("location")
        .split("oauth_token=")
        .nth(1)
        .unwrap()
        .to_string();
    let declined = format!("{CALLBACK}?denied={tok}");
    let r = s.callback(&declined, Some(&cookie)).await;
    assert_eq!(r.status, 302, "{:?}", r.body);
    assert_eq!(
        r.header("location"),
        "https://app.example/done?error=access_denied&provider=legacy"
    );
    let r = s.callback(&declined, Some(&cookie)).await;
    assert_eq!(r.status, 400);

    let failed = |reason: &str| {
        format!("valet_oauth1_flows_failed_total{{provider=\"legacy\",reason=\"{reason}\"}}")
    };
    assert_eq!(s.gw.metric(&failed("unknown_token")).await, 4.0);
    assert_eq!(s.gw.metric(&failed("denied")).await, 1.0);
    assert_eq!(s.gw.metric(&failed("state_mismatch")).await, 1.0);
    assert_eq!(s.gw.metric(&failed("bad_callback")).await, 1.0);
    // Only the two flows completed in their own browser got a token.
    assert_eq!(s.provider.state.lock().unwrap().access.len(), 2);
}

#[tokio::test]
async fn return_urls_outside_the_allow_list_are_refused() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    for bad in [
        "https%3A%2F%2Fevil.example%2F",
        "https%3A%2F%2Fapp.example%2Fdone.evil.example",
        "https%3A%2F%2Fapp.example%2Fdone%2F..%2Fadmin",
        "%2F%2Fevil.example",
        "https%3A%2F%2Fapp.example%2Fdone&return_to=https%3A%2F%2Fapp.example%2Fdone",
        "",
    ] {
        let r = s.start_flow(&alice, &format!("?return_to={bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("not one of the return URLs allowed"));
        assert!(r.headers.get("location").is_none());
    }
    // Nothing reached the provider.
    assert!(s.provider.state.lock().unwrap().callbacks.is_empty());
    assert_eq!(
        s.gw
            .metric("valet_oauth1_flows_failed_total{provider=\"legacy\",reason=\"return_url_not_allowed\"}")
            .await,
        6.0
    );
}

#[tokio::test]
async fn stored_tokens_survive_a_restart_sealed_at_rest_and_can_be_forgotten() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = setup("").await;
    let alice = s.gw.token("alice", "read");
    s.authorize(&alice).await;
    let token = s
        .provider
        .state
        .lock()
        .unwrap()
        .access
        .keys()
        .next()
        .unwrap()
        .clone();

    // In the state store, sealed; the store is valet's alone (0600).
    let legacy = s.gw.dir.path().join("oauth1-tokens.yaml");
    let state = s.gw.revocation_path.with_file_name("valet-state.db");
    for f in ["valet-state.db", "valet-state.db-wal"] {
        let bytes = std::fs::read(state.with_file_name(f)).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "sealed at rest ({f})"
        );
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!legacy.exists(), "valet wrote the old token file");

    // Restart: a new gateway state from the same config and files.
    restart(&mut s).await;
    let c = s.client();
    let r = c.get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = s.api_calls().pop().unwrap();
    assert_eq!(call.verified.unwrap()["oauth_token"], token);

    // Status, then forget: the next request needs a new flow.
    let status = |method: &'static str| {
        let c = s.client();
        let alice = alice.clone();
        async move {
            let req = c
                .request(method, "/oauth1/legacy/token")
                .header("authorization", format!("Bearer {alice}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            c.send(req).await.json()
        }
    };
    assert_eq!(status("GET").await["authorized"], true);
    assert_eq!(status("DELETE").await["forgotten"], true);
    assert_eq!(status("DELETE").await["forgotten"], false);
    assert_eq!(status("GET").await["authorized"], false);
    let r = c.get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "oauth1_authorization_required");

    // A damaged store does not stop valet: reported, kept aside, started empty.
    // An old token file that cannot be imported is reported and left as
    // it is; the tokens in the store stay in force.
    s.authorize(&alice).await;
    std::fs::write(&legacy, "tokens: [ {provider: x").unwrap();
    restart(&mut s).await;
    assert_eq!(
        s.gw.metric("valet_reloads_total{kind=\"oauth1_store\",result=\"failure\"}")
            .await,
        1.0
    );
    assert_eq!(
        std::fs::read_to_string(&legacy).unwrap(),
        "tokens: [ {provider: x"
    );
    let r = s.client().get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 200);
}

async fn restart(s: &mut Setup) {
    s.gw.running.take().unwrap().shutdown().await;
    let config = valet::config::load(&s.gw.config_path).unwrap();
    let running = valet::server::start(config).await.unwrap();
    s.gw.addr = running.listeners[0];
    s.gw.metrics_addr = running.metrics.unwrap();
    s.gw.running = Some(running);
}

#[tokio::test]
async fn a_flow_expires() {
    let s = setup("  pending_ttl: 1s\n").await;
    let alice = s.gw.token("alice", "read");
    let r = s.start_flow(&alice, "").await;
    assert_eq!(r.status, 302);
    let cookie = cookie_pair(r.header("set-cookie"));
    let cb = s.approve(r.header("location")).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = s.callback(&cb, Some(&cookie)).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    assert!(s.provider.state.lock().unwrap().access.is_empty());
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_502() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    // Same provider, but its token endpoints now point at a closed port.
    let text = std::fs::read_to_string(&s.gw.config_path).unwrap();
    let dead = upstream::dead_addr();
    let text = text.replace(
        &format!(
            "localhost:{}/oauth/request_token",
            s.provider.tls_addr.port()
        ),
        &format!("localhost:{}/oauth/request_token", dead.port()),
    );
    std::fs::write(&s.gw.config_path, text).unwrap();
    assert!(s.gw.running.as_ref().unwrap().app.reload_config().unwrap());
    let r = s.start_flow(&alice, "").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "provider_unreachable");
    assert_eq!(
        s.gw.metric(
            "valet_oauth1_flows_failed_total{provider=\"legacy\",reason=\"provider_unreachable\"}"
        )
        .await,
        1.0
    );
}

#[test]
fn provider_config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), &TestKey::new().pem).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    let routes = r#"  - name: legacy
    match: { path_prefix: /legacy }
    upstream: "http://127.0.0.1:9"
    upstream_auth: { oauth1: nosuch }
    forward_authorization: true
  - name: proxied
    match: { path_prefix: /proxied }
    upstream: "http://127.0.0.1:9"
    upstream_auth: { oauth1: legacy, signed_origin: "https://api.example.com/v1" }
"#;
    let extra = r#"oauth1:
  token_store: { file: t.yaml, key_file: missing.key }
  path_prefix: "/o auth"
  providers:
    - name: legacy
      request_token_url: "http://provider.example/rt"
      authorize_url: "not a url"
      access_token_url: "https://provider.example/at"
      consumer_key: ck
      consumer_secret_file: secret
      signature_method: RSA-SHA1
      private_key_file: nosuch.pem
      callback_url: "https://valet.example/oauth1/other/callback"
      return_urls: []
    - name: plain
      request_token_url: "http://provider.example/rt"
      authorize_url: "https://provider.example/authorize"
      access_token_url: "https://provider.example/at"
      consumer_key: ck
      consumer_secret_file: secret
      signature_method: PLAINTEXT
      callback_url: "https://valet.example/oauth1/plain/callback"
      return_urls: ["https://app.example/"]
    - name: userinfo
      request_token_url: "https://user:pw@provider.example/rt"
      authorize_url: "https://user@provider.example/authorize"
      access_token_url: "https://u:p@provider.example/at"
      consumer_key: ck
      consumer_secret_file: secret
      signature_method: PLAINTEXT
      callback_url: "https://valet.example/oauth1/userinfo/callback"
      return_urls: ["https://app.example@evil.example/"]
"#;
    let text = config_text(&ca, &dir, routes, extra);
    let path = dir.path().join("valet.yaml");
    let err = valet::config::parse(&path, &text).unwrap_err().to_string();
    for want in [
        "RSA-SHA1 uses no consumer secret",
        "cannot read",
        "`not a url` is not an absolute http(s) URL",
        "the callback URL must be valet's own callback for this provider",
        "list at least one URL the user may be sent back to",
        "no OAuth 1.0 provider is named `nosuch`",
        "forward_authorization cannot be combined with upstream_auth",
        "PLAINTEXT sends the secrets themselves",
        "cannot read the token store key file",
        "is not an origin such as https://api.example.com",
        "path_prefix must start with `/`",
        "`https://user:pw@provider.example/rt` is not an absolute http(s) URL without user info",
        "`https://user@provider.example/authorize` is not an absolute http(s) URL without user info",
        "`https://u:p@provider.example/at` is not an absolute http(s) URL without user info",
        "`https://app.example@evil.example/` is not an absolute http(s) URL without user info",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Errors carry positions.
    assert!(err.contains("valet.yaml:"), "{err}");
}

#[tokio::test]
async fn a_pre_provisioned_token_signs_for_every_subject() {
    let pdir = tempfile::tempdir().unwrap();
    let provider_ca = TestCa::new(pdir.path());
    let ca_pem = pdir.path().join("provider-ca.pem");
    provider_ca.write_ca_pem(&ca_pem);
    let provider = Provider::start(&provider_ca).await;
    provider
        .state
        .lock()
        .unwrap()
        .access
        .insert("shared-token".into(), "shared&secret".into());
    let secret_file = pdir.path().join("shared.secret");
    std::fs::write(&secret_file, "shared&secret\n").unwrap();
    let routes = format!(
        "  - name: legacy\n    match: {{ path_prefix: /legacy }}\n    upstream: \"http://{}\"\n    upstream_auth: {{ oauth1: legacy }}\n",
        provider.api_addr
    );
    let entry = provider.config_yaml(pdir.path(), &ca_pem)
        + &format!(
            "      access_token: shared-token\n      access_token_secret_file: \"{}\"\n",
            secret_file.display()
        );
    let key = pdir.path().join("store.key");
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    let extra = format!(
        "oauth1:\n  token_store: {{ file: t.yaml, key_file: \"{}\" }}\n  providers:\n{entry}",
        key.display()
    );
    let gw = Gateway::start(&routes, &extra).await;
    let c = gw.client(Proto::H1);
    for sub in ["alice", "bob"] {
        let r = c.get("/legacy/x", Some(&gw.token(sub, "read"))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let call = provider.state.lock().unwrap().api.pop().unwrap();
        assert_eq!(call.verified.unwrap()["oauth_token"], "shared-token");
    }
    // There is no flow to start for such a provider.
    let req = c
        .request("GET", "/oauth1/legacy/authorize")
        .header(
            "authorization",
            format!("Bearer {}", gw.token("alice", "read")),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "pre_provisioned");
    // Unknown provider or action under the prefix.
    let r = c.get("/oauth1/nosuch/authorize", None).await;
    assert_eq!(r.status, 404);
    let r = c.get("/oauth1/legacy/other", None).await;
    assert_eq!(r.status, 404);
    let req = c
        .request("POST", "/oauth1/legacy/callback")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET");
}

#[tokio::test]
async fn rsa_sha1_consumers_run_the_flow_and_sign_requests() {
    let s = setup_with("", true, "").await;
    let alice = s.gw.token("alice", "read");
    s.authorize(&alice).await;
    assert!(
        s.provider.state.lock().unwrap().refusals.is_empty(),
        "{:?}",
        s.provider.state.lock().unwrap().refusals
    );
    let body = "status=Hello%20RSA&x=%2B";
    let req = s
        .client()
        .request("POST", "/legacy/update?include_entities=true")
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = s.client().send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = s.api_calls().pop().unwrap();
    let oauth = call.verified.expect("RSA-SHA1 signature verified");
    assert_eq!(oauth["oauth_signature_method"], "RSA-SHA1");
}

#[tokio::test]
async fn operators_list_and_forget_tokens_through_the_admin_api() {
    let secrets = tempfile::tempdir().unwrap();
    let admin_token = "an-admin-secret-of-some-length";
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, admin_token).unwrap();
    let after = format!(
        "admin:\n  address: \"127.0.0.1:0\"\n  token_file: \"{}\"\n",
        token_file.display()
    );
    let s = setup_with("", false, &after).await;
    let addr = s.gw.admin_addr.unwrap();
    let alice = s.gw.token("alice", "read");
    let mail = s.gw.token("m.user@example.com", "read");
    s.authorize(&alice).await;
    s.authorize(&mail).await;
    let admin = |method: &'static str, path: &'static str, token: Option<&'static str>| {
        client::plain_request(addr, method, path, token, "")
    };
    let (status, _) = admin("GET", "/admin/oauth1/legacy/tokens", None).await;
    assert_eq!(status, 401);
    let (status, j) = admin("GET", "/admin/oauth1/legacy/tokens", Some(admin_token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        j["subjects"],
        serde_json::json!(["alice", "m.user@example.com"])
    );
    let (status, j) = admin(
        "DELETE",
        "/admin/oauth1/legacy/tokens/m.user%40example.com",
        Some(admin_token),
    )
    .await;
    assert_eq!((status, &j["forgotten"]), (200, &serde_json::json!(true)));
    let r = s.client().get("/legacy/x", Some(&mail)).await;
    assert_eq!(r.status, 403);
    let r = s.client().get("/legacy/x", Some(&alice)).await;
    assert_eq!(r.status, 200);
    let (status, _) = admin("GET", "/admin/oauth1/nosuch/tokens", Some(admin_token)).await;
    assert_eq!(status, 404);
    // This gateway has no authorization server: its client endpoints say so.
    let (status, j) = admin("GET", "/admin/clients", Some(admin_token)).await;
    assert_eq!(status, 404);
    assert_eq!(j["error"], "not_found", "{j}");
    assert!(j["error_description"]
        .as_str()
        .unwrap()
        .contains("no authorization_server"));
}

#[tokio::test]
async fn one_subject_cannot_fill_the_pending_table() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let mut started = Vec::new();
    for _ in 0..7 {
        let r = s.start_flow(&alice, "").await;
        assert_eq!(r.status, 302);
        started.push((
            cookie_pair(r.header("set-cookie")),
            r.header("location").to_string(),
        ));
    }
    // The two oldest flows were ended to make room; the newest ones work.
    let (cookie, location) = &started[0];
    let cb = s.approve(location).await;
    let r = s.callback(&cb, Some(cookie)).await;
    assert_eq!(r.status, 400);
    let (cookie, location) = &started[6];
    let cb = s.approve(location).await;
    let r = s.callback(&cb, Some(cookie)).await;
    assert_eq!(r.status, 302, "{:?}", r.body);
}

#[tokio::test]
async fn two_gateways_sharing_the_store_see_each_others_tokens() {
    let s = setup("").await;
    let (other, b) = s.second_gateway().await;
    let alice = s.gw.token("alice", "read");
    assert_eq!(b.get("/legacy/x", Some(&alice)).await.status, 403);
    s.authorize(&alice).await;
    assert!(
        eventually(PICKUP, || async {
            b.get("/legacy/x", Some(&alice)).await.status == 200
        })
        .await,
        "the other gateway picked the token up"
    );
    // Forgotten through the other one: the first refuses too.
    let req = b
        .request("DELETE", "/oauth1/legacy/token")
        .header("authorization", format!("Bearer {alice}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(b.send(req).await.json()["forgotten"], true);
    assert!(
        eventually(PICKUP, || async {
            s.client().get("/legacy/x", Some(&alice)).await.status == 403
        })
        .await
    );
    other.shutdown().await;
}

/// Pending flows live in the state store: a flow started at one gateway
/// completes through a callback at another, and only once.
#[tokio::test]
async fn a_flow_started_at_one_gateway_completes_at_another() {
    flow_across_gateways(&setup("").await).await;
}

/// The same across two authorities on one Redis (other hosts' processes).
#[tokio::test]
async fn a_flow_started_at_one_authority_completes_at_another_on_redis() {
    let redis = support::redis_server::RedisServer::start(&[]);
    let store = format!("store:\n  redis:\n    url: \"{}\"\n", redis.url());
    let s = setup_with("", false, &store).await;
    flow_across_gateways(&s).await;
    // Through Redis, not a file.
    assert!(!s
        .gw
        .revocation_path
        .with_file_name("valet-state.db")
        .exists());
    assert_eq!(redis.cli(&["HLEN", "valet:oauth1"]).trim(), "1");
}

async fn flow_across_gateways(s: &Setup) {
    let (other, b) = s.second_gateway().await;
    let alice = s.gw.token("alice", "read");
    let r = s.start_flow(&alice, "").await;
    assert_eq!(r.status, 302, "{:?}", r.body);
    let cookie = cookie_pair(r.header("set-cookie"));
    let cb = s.approve(r.header("location")).await;
    let at_b = |cookie: &str| {
        let req = b
            .request("GET", path_of(&cb))
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap();
        b.send(req)
    };
    let done = at_b(&cookie).await;
    assert_eq!(done.status, 302, "{:?}", done.body);
    // The token is in force at both (the first learns it from the log).
    assert_eq!(b.get("/legacy/x", Some(&alice)).await.status, 200);
    assert!(
        eventually(PICKUP, || async {
            s.client().get("/legacy/x", Some(&alice)).await.status == 200
        })
        .await
    );
    // The temporary token was used: a replay fails at either gateway.
    let again = at_b(&cookie).await;
    assert_eq!(again.status, 400);
    assert!(again.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("already used"));
    assert_eq!(s.callback(&cb, Some(&cookie)).await.status, 400);
    other.shutdown().await;
}

#[tokio::test]
async fn behind_a_proxy_the_providers_origin_is_signed() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    s.authorize(&alice).await;
    // The API now checks signatures against its public origin.
    s.provider.state.lock().unwrap().api_origin = Some("https://api.legacy.example".into());
    let r = s.client().get("/proxied/items?a=1", Some(&alice)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(s.api_calls().pop().unwrap().verified.is_ok());
    // Signed with the upstream's own address, the same request fails there.
    let r = s.client().get("/legacy/items?a=1", Some(&alice)).await;
    assert_eq!(r.status, 401);
    let err = s.api_calls().pop().unwrap().verified.unwrap_err();
    assert!(err.contains("signature mismatch"), "{err}");
}

/// An HTTPS provider API, reached directly: the signature covers the
/// https:// URL, and the provider verifies it over TLS.
#[tokio::test]
async fn signed_requests_reach_an_https_provider_directly() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    s.authorize(&alice).await;
    let r = s
        .client()
        .get("/legacy-https/items?page=2", Some(&alice))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let call = s.api_calls().pop().unwrap();
    assert!(call.verified.is_ok(), "{:?}", call.verified);
}

const PERMISSIONS: &str = "      permissions:
        default: read
        levels:
          read: { request_token: { x_auth_access_type: read } }
          write:
            request_token: { x_auth_access_type: write }
            authorize_url: { perms: write }
";

/// Permissions: the user's level of access is chosen per request among the
/// provider's levels (`?access=`), sent on the request-token call (signed:
/// the provider verifies it) and on the authorization URL, recorded with
/// the token (across a restart) and shown by the token status endpoint; a
/// `read` grant lets the provider refuse writes. Levels outside the list are
/// refused before the provider is called.
#[tokio::test]
async fn a_level_of_access_is_asked_signed_and_recorded() {
    let mut s = setup_with("", false, PERMISSIONS).await;
    let (alice, bob) = (s.gw.token("alice", "read"), s.gw.token("bob", "read"));
    let status = |s: &Setup, bearer: String| {
        let c = s.client();
        async move { c.get("/oauth1/legacy/token", Some(&bearer)).await.json() }
    };
    let j = status(&s, alice.clone()).await;
    assert_eq!(j["access"], serde_json::Value::Null);
    assert_eq!(j["access_levels"], serde_json::json!(["read", "write"]));

    // Refused before the provider hears of it.
    for q in ["?access=admin", "?access=", "?access=read&access=write"] {
        let r = s.start_flow(&alice, q).await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
        assert_eq!(r.json()["error"], "invalid_request");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("read, write"),
            "{q}"
        );
    }
    assert!(s.provider.state.lock().unwrap().access_asked.is_empty());

    // The default level: read.
    let r = s.start_flow(&alice, "").await;
    assert_eq!(r.status, 302, "{:?}", r.body);
    let cookie = cookie_pair(r.header("set-cookie"));
    let location = r.header("location").to_string();
    assert!(
        !location.contains("perms="),
        "read adds nothing to the URL: {location}"
    );
    let cb = s.approve(&location).await;
    assert_eq!(s.callback(&cb, Some(&cookie)).await.status, 302);
    // Write: both places.
    let r = s.start_flow(&bob, "?access=write").await;
    assert_eq!(r.status, 302, "{:?}", r.body);
    let cookie = cookie_pair(r.header("set-cookie"));
    let location = r.header("location").to_string();
    assert!(location.contains("&perms=write"), "{location}");
    let cb = s.approve(&location).await;
    assert_eq!(s.callback(&cb, Some(&cookie)).await.status, 302);
    {
        let st = s.provider.state.lock().unwrap();
        // Signed: the provider verified the request-token calls with them.
        assert_eq!(st.access_asked, [Some("read".into()), Some("write".into())]);
        assert!(st.refusals.is_empty(), "{:?}", st.refusals);
        assert!(st.authorize_queries[1].contains(&("perms".into(), "write".into())));
    }
    assert_eq!(status(&s, alice.clone()).await["access"], "read");
    assert_eq!(status(&s, bob.clone()).await["access"], "write");

    // What the provider does with it: alice may read, not write; bob both.
    let c = s.client();
    assert_eq!(c.get("/legacy/items", Some(&alice)).await.status, 200);
    let post = |bearer: &str| {
        c.request("POST", "/legacy/items")
            .header("authorization", format!("Bearer {bearer}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(c.send(post(&alice)).await.status, 403);
    assert_eq!(c.send(post(&bob)).await.status, 200);

    // Recorded with the token: a restart reads it back.
    restart(&mut s).await;
    assert_eq!(status(&s, alice).await["access"], "read");
    assert_eq!(status(&s, bob).await["access"], "write");
}

/// A provider without levels refuses `?access=`; a level naming a protocol
/// parameter, or a default outside the levels, does not load.
#[tokio::test]
async fn levels_of_access_are_checked() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let r = s.start_flow(&alice, "?access=read").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("no levels of access"));
    let text = std::fs::read_to_string(&s.gw.config_path).unwrap();
    let at = text.find("      ca_file:").unwrap();
    for (bad, why) in [
        ("      permissions:\n        default: admin\n        levels:\n          read: { request_token: { x: y } }\n", "`admin` is not one of the levels"),
        ("      permissions:\n        default: read\n        levels:\n          read: { request_token: { oauth_callback: evil } }\n", "the protocol's own"),
        ("      permissions:\n        default: read\n        levels:\n          read: {}\n", "at least one parameter"),
        ("      permissions:\n        default: \"a b\"\n        levels:\n          \"a b\": { request_token: { x: y } }\n", "1 to 64 letters"),
    ] {
        let cfg = s.gw.config_path.with_file_name("bad.yaml");
        std::fs::write(&cfg, format!("{}{bad}{}", &text[..at], &text[at..])).unwrap();
        let e = valet::config::load(&cfg).unwrap_err().to_string();
        assert!(e.contains(why), "{why}: {e}");
        assert!(e.contains("bad.yaml:5"), "with the file and line: {e}");
    }
}

impl Setup {
    /// A start link for `bearer`'s subject.
    async fn link(&self, bearer: &str, query: &str) -> String {
        let req = self
            .client()
            .request("POST", &format!("/oauth1/legacy/link{query}"))
            .header("authorization", format!("Bearer {bearer}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = self.client().send(req).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["expires_in"], 300);
        r.json()["start_url"].as_str().unwrap().to_string()
    }

    /// A form POST from the browser (no bearer).
    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        bearer: Option<&str>,
    ) -> support::client::Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut b = self
            .client()
            .request("POST", path)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.client()
            .send(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
    }

    /// A browser following a start link to the provider and back: the
    /// return URL valet sends it to (with the code).
    async fn follow_link(&self, start_url: &str) -> String {
        let link = start_url.split("link=").nth(1).unwrap();
        // As a browser sends the page's button: from valet's own origin.
        let req = self
            .client()
            .request("POST", "/oauth1/legacy/start")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .header("origin", "https://valet.example:8443")
            .body(Full::new(Bytes::from(format!("link={link}"))))
            .unwrap();
        let r = self.client().send(req).await;
        assert_eq!(r.status, 303, "{:?}", r.body);
        let cookie = cookie_pair(r.header("set-cookie"));
        let cb = self.approve(r.header("location")).await;
        let done = self.callback(&cb, Some(&cookie)).await;
        assert_eq!(done.status, 302, "{:?}", done.body);
        done.header("location").to_string()
    }
}

fn code_of(return_url: &str) -> String {
    let q = return_url.split_once('?').unwrap().1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

/// The browser flow: a start link (minted with the subject's bearer) opens
/// a page whose button starts the flow with no bearer; the callback sends
/// the browser back with a one-time code, and only the application,
/// redeeming it with the same subject's bearer, makes valet store the
/// token. The account-linking attack: a link made for mallory, completed
/// in alice's browser and redeemed by alice's application, stores nothing.
#[tokio::test]
async fn a_browser_start_link_completes_only_for_the_subject_it_was_made_for() {
    let s = setup("").await;
    let (alice, mallory) = (s.gw.token("alice", "read"), s.gw.token("mallory", "read"));
    let authorized = |bearer: String| {
        let c = s.client();
        async move { c.get("/oauth1/legacy/token", Some(&bearer)).await.json()["authorized"].clone() }
    };

    // The attack: mallory mints a link for himself and gets alice to open
    // it; she approves at the provider as herself.
    let start = s.link(&mallory, "").await;
    assert!(
        start.starts_with("https://valet.example:8443/oauth1/legacy/start?link="),
        "{start}"
    );
    let back = s.follow_link(&start).await;
    assert!(back.starts_with("https://app.example/done?code="), "{back}");
    assert!(back.ends_with("&provider=legacy"), "{back}");
    assert_eq!(
        s.provider.state.lock().unwrap().access.len(),
        1,
        "the provider issued a token"
    );
    assert_eq!(
        authorized(mallory.clone()).await,
        false,
        "the callback stored nothing itself"
    );
    // Alice's application redeems the code it received, with her bearer.
    let r = s
        .post_form(
            "/oauth1/legacy/redeem",
            &[("code", &code_of(&back))],
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["error"], "access_denied");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("made for another user"));
    assert_eq!(authorized(alice.clone()).await, false);
    assert_eq!(
        authorized(mallory.clone()).await,
        false,
        "nor for the link's subject"
    );
    // Used up: mallory cannot redeem it afterwards either.
    let r = s
        .post_form(
            "/oauth1/legacy/redeem",
            &[("code", &code_of(&back))],
            Some(&mallory),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("start again"));
    assert_eq!(authorized(mallory.clone()).await, false);

    // Alice's own link, the way it is meant to be used.
    let start = s
        .link(
            &alice,
            "?return_to=https%3A%2F%2Fapp.example%2Fother%3Fx%3D1&state=s-123",
        )
        .await;
    let page = s.client().get(path_of(&start), None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(page.header("referrer-policy"), "same-origin");
    assert!(page
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert!(
        html.contains("<form method=\"post\" action=\"/oauth1/legacy/start\">"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    // A link scanner fetching it uses nothing up.
    assert_eq!(s.client().get(path_of(&start), None).await.status, 200);
    // Another site auto-submitting the button's form (its own link, in
    // this browser) is refused, and uses nothing up either.
    let link = start.split("link=").nth(1).unwrap();
    for (h, v) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://evil.example"),
    ] {
        let body = format!("link={link}");
        let req = s
            .client()
            .request("POST", "/oauth1/legacy/start")
            .header("content-type", "application/x-www-form-urlencoded")
            .header(h, v)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let r = s.client().send(req).await;
        assert_eq!(r.status, 403, "{h}: {v}");
        assert!(String::from_utf8_lossy(&r.body).contains("Another site"));
    }
    let back = s.follow_link(&start).await;
    assert!(
        back.starts_with("https://app.example/other?x=1&state=s-123&code="),
        "the application's state comes back with the code: {back}"
    );
    let code = code_of(&back);
    let r = s
        .post_form("/oauth1/legacy/redeem", &[("code", &code)], Some(&alice))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["authorized"], true);
    assert_eq!(authorized(alice.clone()).await, true);
    assert_eq!(
        s.client().get("/legacy/items", Some(&alice)).await.status,
        200,
        "signed with it"
    );
    // A code is redeemed once; a link is used once.
    let r = s
        .post_form("/oauth1/legacy/redeem", &[("code", &code)], Some(&alice))
        .await;
    assert_eq!(r.status, 400);
    let link = start.split("link=").nth(1).unwrap();
    let r = s
        .post_form("/oauth1/legacy/start", &[("link", link)], None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    let html = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        html.contains("already used") && html.contains("https://app.example/other?x=1"),
        "{html}"
    );
    // The redemption needs the bearer.
    let r = s
        .post_form("/oauth1/legacy/redeem", &[("code", &code)], None)
        .await;
    assert_eq!(r.status, 401);
}

/// Links that valet did not make as they are (altered, for another
/// provider's path, expired) are refused with a page saying where to start
/// again; the 403 of a route without a token carries a working link.
#[tokio::test]
async fn altered_and_expired_start_links_are_refused() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let start = s.link(&alice, "").await;
    let link = start.split("link=").nth(1).unwrap().to_string();
    let mut altered = link.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for l in [altered.as_str(), "", "not-a-link", &"A".repeat(5000)] {
        let r = s
            .client()
            .get(&format!("/oauth1/legacy/start?link={l}"), None)
            .await;
        assert_eq!(r.status, 400, "{l}");
        let html = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            html.contains("not one valet made") && html.contains("https://app.example/done"),
            "{html}"
        );
    }
    // Expired: sealed with the gateway's key, an hour ago.
    let key = std::fs::read_to_string(s.gw.config_path.with_file_name("oauth1-store.key")).unwrap();
    let store = valet::store::sqlite::SqliteStore::open(
        &s.gw.revocation_path.with_file_name("valet-state.db"),
    )
    .unwrap();
    let (tokens, _) = valet::app::oauth1_tokens::TokenStore::open(
        std::sync::Arc::new(store),
        valet::app::oauth1_tokens::TokenStore::key_from_base64(key.trim()).unwrap(),
        None,
    );
    let old = valet::app::oauth1_tokens::Link {
        id: "old".into(),
        exp: valet::revocation::now() - 3600,
        sub: "alice".into(),
        ret: "https://app.example/done".into(),
        acc: None,
        st: None,
    };
    let r = s
        .client()
        .get(
            &format!(
                "/oauth1/legacy/start?link={}",
                tokens.seal_link("legacy", &old)
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    // Sealed for another provider: not this one's.
    let other = tokens.seal_link(
        "other",
        &valet::app::oauth1_tokens::Link {
            exp: valet::revocation::now() + 60,
            ..old
        },
    );
    let r = s
        .client()
        .get(&format!("/oauth1/legacy/start?link={other}"), None)
        .await;
    assert_eq!(r.status, 400);

    // The route's 403 carries a start link for the subject.
    let r = s.client().get("/legacy/items", Some(&alice)).await;
    assert_eq!(r.status, 403);
    let start = r.json()["start_url"].as_str().unwrap().to_string();
    assert_eq!(s.client().get(path_of(&start), None).await.status, 200);
}

/// Start links and redemption codes never reach valet's logs: the real
/// binary, at debug level, through a whole browser flow.
#[tokio::test(flavor = "multi_thread")]
async fn links_and_codes_never_appear_in_the_logs() {
    let pdir = tempfile::tempdir().unwrap();
    let provider_ca = TestCa::new(pdir.path());
    let ca_pem = pdir.path().join("provider-ca.pem");
    provider_ca.write_ca_pem(&ca_pem);
    let provider = Provider::start(&provider_ca).await;
    let routes = format!(
        "  - name: legacy\n    match: {{ path_prefix: /legacy }}\n    upstream: \"http://{}\"\n    strip_prefix: true\n    upstream_auth: {{ oauth1: legacy }}\n",
        provider.api_addr
    );
    let extra = format!(
        "oauth1:\n  token_store:\n    key_file: oauth1-store.key\n    generate_key_if_missing: true\n  providers:\n{}",
        provider.config_yaml(pdir.path(), &ca_pem)
    );
    let log = pdir.path().join("valet.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let p = process::Proc::start_with(&routes, &extra, stderr.into()).await;
    let alice = sign(&p.key, &claims("alice", "read"));
    let c = p.client(Proto::H1);
    let post = |path: &str, body: String, bearer: Option<&str>| {
        let mut b = c
            .request("POST", path)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let r = c
        .send(post("/oauth1/legacy/link", String::new(), Some(&alice)))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let start = r.json()["start_url"].as_str().unwrap().to_string();
    let link = start.split("link=").nth(1).unwrap().to_string();
    assert_eq!(c.get(path_of(&start), None).await.status, 200);
    let r = c
        .send(post("/oauth1/legacy/start", format!("link={link}"), None))
        .await;
    assert_eq!(r.status, 303);
    let cookie = cookie_pair(r.header("set-cookie"));
    let browser = Client::new(
        provider.tls_addr,
        provider_ca.client_config(Proto::H1.alpn()),
        Proto::H1,
    );
    let cb = browser.get(path_of(r.header("location")), None).await;
    let cb = cb.header("location").to_string();
    let req = c
        .request("GET", path_of(&cb))
        .header("cookie", &cookie)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let done = c.send(req).await;
    assert_eq!(done.status, 302, "{:?}", done.body);
    let code = code_of(done.header("location"));
    let r = c
        .send(post(
            "/oauth1/legacy/redeem",
            format!("code={code}"),
            Some(&alice),
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The access log has had its lines (one per exchange).
    let written = eventually(PICKUP, || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("/oauth1/legacy/redeem")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(written, "{text}");
    assert!(
        text.contains("/oauth1/legacy/start"),
        "the exchanges are logged"
    );
    assert!(!text.contains(&link[..40]), "a start link in the log");
    assert!(!text.contains(&code), "a code in the log");
    let verifier = cb.split("oauth_verifier=").nth(1).unwrap();
    assert!(!text.contains(verifier), "a verifier in the log");
}

/// A real browser (headless chromium) through the start link: the page,
/// its button (the browser's own POST passes the cross-site check), the
/// `__Host-` state cookie set and sent back on the provider's redirect, the
/// return URL with the code, redeemed by the application. Then another
/// site's auto-submitting form, in the same browser, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_follows_a_start_link_and_refuses_another_sites_post() {
    let s = setup("").await;
    let alice = s.gw.token("alice", "read");
    let browser = support::browser::Browser::start(&[
        ("valet.example", s.gw.addr),
        ("app.example", s.gw.addr),
    ])
    .await;
    let start = s.link(&alice, "?state=browser-1").await;
    browser.go(&start).await;
    let html = browser.source().await;
    assert!(html.contains("Connect your legacy account"), "{html}");
    browser.click("button").await;
    let back = browser
        .wait_for_url("https://app.example/done?", Duration::from_secs(20))
        .await;
    assert!(
        back.starts_with("https://app.example/done?state=browser-1&code="),
        "the browser ended at {back}: {}",
        browser.source().await
    );
    let r = s
        .post_form(
            "/oauth1/legacy/redeem",
            &[("code", &code_of(&back))],
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        s.client().get("/legacy/items", Some(&alice)).await.status,
        200
    );

    // Another site's page submitting mallory's link in this browser.
    let mallory = s.gw.token("mallory", "read");
    let theirs = s.link(&mallory, "").await;
    let link = theirs.split("link=").nth(1).unwrap();
    let evil = format!(
        "data:text/html,<form method=post action='https://valet.example:8443/oauth1/legacy/start'><input name=link value='{link}'></form><script>document.forms[0].submit()</script>"
    );
    browser.go(&evil).await;
    let landed = browser
        .wait_for_url(
            "https://valet.example:8443/oauth1/legacy/start",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        landed.starts_with("https://valet.example:8443/"),
        "{landed}"
    );
    let html = browser.source().await;
    assert!(
        html.contains("Another site tried to connect an account"),
        "{html}"
    );
    // Nothing was used up: mallory's link still opens its page.
    assert_eq!(s.client().get(path_of(&theirs), None).await.status, 200);
}
