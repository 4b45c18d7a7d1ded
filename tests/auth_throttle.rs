//! The token endpoint under a hostile caller: attempts are throttled (never
//! a lockout), counted before any hash runs, hashed a bounded number at a
//! time with each source taking its turn, and a verified secret is
//! remembered until it changes. Other sources are other loopback addresses.

mod support;

use support::client::{basic_header, Reply};
use support::*;

const TOKEN: &str = "/oauth2/token";
const SVC_SECRET: &str = "svc-secret";

fn yaml(settings: &str, svc_secret: &str) -> String {
    let h = valet::oauth2::registry::argon2id_hash;
    format!(
        r#"authorization_server:
{settings}  clients:
    - client_id: svc
      secret_hash: "{svc}"
      grant_types: [client_credentials]
      operator: svc-operator
      scopes: [read]
    - client_id: app
      secret_hash: "{app}"
      grant_types: [password]
      scopes: [read]
  users:
    - username: alice
      password_hash: "{alice}"
    - username: bob
      password_hash: "{bob}"
"#,
        svc = h(svc_secret),
        app = h("app-secret"),
        alice = h("alice-pw"),
        bob = h("bob-pw"),
    )
}

async fn start(settings: &str, extra: &str) -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let text = format!("{}{extra}", yaml(settings, SVC_SECRET));
    let gw = Gateway::start(&default_routes(up.addr), &text).await;
    (gw, up)
}

async fn svc(c: &Client, secret: &str) -> Reply {
    c.post_form(
        TOKEN,
        &[("grant_type", "client_credentials")],
        Some(("svc", secret)),
    )
    .await
}

async fn login(c: &Client, user: &str, pw: &str) -> Reply {
    c.post_form(
        TOKEN,
        &[
            ("grant_type", "password"),
            ("username", user),
            ("password", pw),
        ],
        Some(("app", "app-secret")),
    )
    .await
}

/// A client-credentials request claiming to come from `xff`.
async fn via(c: &Client, xff: &str, secret: &str) -> Reply {
    let req = c
        .request("POST", TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", xff)
        .header("authorization", basic_header("svc", secret))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            "grant_type=client_credentials",
        )))
        .unwrap();
    c.send(req).await
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.json()["error"], code, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_guesses_at_one_user_from_many_sources_are_throttled_per_username() {
    let (gw, _up) = start("  max_failed_auth: 3\n", "").await;
    // Alice signs in from home before the attack.
    let home = gw.client(Proto::H1).from("127.0.0.30");
    assert_eq!(login(&home, "alice", "alice-pw").await.status, 200);
    for i in 0..3 {
        let c = gw.client(Proto::H1).from(&format!("127.0.0.{}", 10 + i));
        assert_error(&login(&c, "alice", "guess").await, 400, "invalid_grant");
    }
    // A fourth source, never seen before, is refused for alice...
    let fresh = gw.client(Proto::H1).from("127.0.0.20");
    let r = login(&fresh, "alice", "another-guess").await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(
        gw.metric("valet_rate_limited_total{by=\"username\"}").await,
        1.0
    );
    // ...but not bob, and not alice at home: the attack locks nobody out.
    assert_eq!(login(&fresh, "bob", "bob-pw").await.status, 200);
    assert_eq!(login(&home, "alice", "alice-pw").await.status, 200);
    // Only the failures were hashed and counted: 3 mismatches.
    assert_eq!(
        gw.metric("valet_password_hash_jobs_total{outcome=\"mismatch\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn successes_are_never_throttled() {
    let (gw, _up) = start("  max_failed_auth: 2\n", "").await;
    let c = gw.client(Proto::H1);
    // Far more logins than the allowance: each success gives its unit back.
    for _ in 0..8 {
        assert_eq!(login(&c, "alice", "alice-pw").await.status, 200);
    }
    // And failures are still counted after them.
    assert_error(&login(&c, "alice", "x").await, 400, "invalid_grant");
    assert_error(&login(&c, "alice", "y").await, 400, "invalid_grant");
    assert_eq!(login(&c, "alice", "alice-pw").await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_is_its_own_source() {
    let (gw, _up) = start(
        "  max_failed_auth: 3\n",
        "forwarding:\n  trusted_proxies: [127.0.0.1]\n",
    )
    .await;
    for _ in 0..3 {
        assert_error(
            &via(&gw.client(Proto::H1), "203.0.113.1", "guess").await,
            401,
            "invalid_client",
        );
    }
    assert_eq!(
        via(&gw.client(Proto::H1), "203.0.113.1", SVC_SECRET)
            .await
            .status,
        429
    );
    // Another client behind the same ingress is not affected.
    assert_eq!(
        via(&gw.client(Proto::H1), "203.0.113.2", SVC_SECRET)
            .await
            .status,
        200
    );

    // A caller that is not a trusted proxy cannot rotate its source by
    // writing X-Forwarded-For.
    let direct = gw.client(Proto::H1).from("127.0.0.2");
    for i in 0..3 {
        let r = via(&direct, &format!("198.51.100.{i}"), "guess").await;
        assert_error(&r, 401, "invalid_client");
    }
    assert_eq!(svc(&direct, SVC_SECRET).await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_concurrent_guesses_is_counted_before_any_hash_runs() {
    let (gw, _up) = start("  max_failed_auth: 3\n", "").await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = gw.client(Proto::H1);
            tokio::spawn(async move { svc(&c, &format!("guess-{i}")).await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((unauthorized, throttled), (3, 17), "{statuses:?}");
    // Exactly three hashes ran: the allowance, not the burst.
    assert_eq!(
        gw.metric("valet_password_hash_jobs_total{outcome=\"mismatch\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_secret_is_remembered_until_it_changes() {
    let (gw, _up) = start("", "").await;
    let c = gw.client(Proto::H1);
    // Sixteen at once, then one more: one hash for all of them.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let c = gw.client(Proto::H1);
            tokio::spawn(async move { svc(&c, SVC_SECRET).await.status.as_u16() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(svc(&c, SVC_SECRET).await.status, 200);
    let m = |o: &str| format!("valet_password_hash_jobs_total{{outcome=\"{o}\"}}");
    assert_eq!(gw.metric(&m("match")).await, 1.0);
    assert!(gw.metric("valet_verified_secret_hits_total").await >= 1.0);
    // A wrong secret is never answered from the cache.
    assert_error(&svc(&c, "svc-secreT").await, 401, "invalid_client");

    // The secret changes: the old one stops working at once.
    let routes = default_routes(_up.addr);
    let text = gw.config_text(&routes, &yaml("", "new-secret"));
    std::fs::write(&gw.config_path, text).unwrap();
    assert!(gw.running.as_ref().unwrap().app.reload_config().unwrap());
    assert_error(&svc(&c, SVC_SECRET).await, 401, "invalid_client");
    assert_eq!(svc(&c, "new-secret").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_source_holds_only_its_share_of_the_hash_queue() {
    // The throttle is out of the way here: this is the queue's test.
    let settings = "  max_failed_auth: 100000\n  max_failed_auth_per_source: 100000\n  \
                    password_hash_workers: 1\n  password_hash_queue_per_source: 2\n";
    let (gw, _up) = start(settings, "").await;
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let c = gw.client(Proto::H1);
            tokio::spawn(async move {
                let r = svc(&c, &format!("guess-{i}")).await;
                if r.status == 429 {
                    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
                    assert_eq!(r.json()["error"], "invalid_client");
                }
                r.status.as_u16()
            })
        })
        .collect();
    // The right secret from elsewhere gets its turn during the flood.
    let good = gw.client(Proto::H1).from("127.0.0.2");
    assert_eq!(svc(&good, SVC_SECRET).await.status, 200);
    let mut statuses = Vec::new();
    for t in flood {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        gw.metric("valet_password_hash_jobs_total{outcome=\"source_full\"}")
            .await
            >= 1.0
    );
    assert_eq!(gw.metric("valet_password_hash_queue_depth").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn saturated_hashing_answers_503_with_retry_after() {
    let settings = "  max_failed_auth: 100000\n  max_failed_auth_per_source: 100000\n  \
                    password_hash_workers: 1\n  password_hash_wait: 1ms\n";
    let (gw, _up) = start(settings, "").await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = gw.client(Proto::H1).from(&format!("127.0.0.{}", 2 + i));
            tokio::spawn(async move { svc(&c, &format!("guess-{i}")).await })
        })
        .collect();
    let mut busy = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            401 => {}
            503 => {
                assert_error(&r, 503, "temporarily_unavailable");
                assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
                busy += 1;
            }
            s => panic!("unexpected {s}: {:?}", r.body),
        }
    }
    assert!(busy >= 1, "a hash takes far longer than 1ms");
    assert!(
        gw.metric("valet_password_hash_jobs_total{outcome=\"deadline\"}")
            .await
            >= 1.0
    );
}

/// `expected_replicas` divides every allowance while the fleet cannot share
/// its failures: 0 (or absurdly many) is a config error, not a division by
/// zero or an allowance of nothing.
#[tokio::test(flavor = "multi_thread")]
async fn expected_replicas_out_of_range_is_a_config_error() {
    let (gw, up) = start("  expected_replicas: 2\n", "").await;
    let routes = default_routes(up.addr);
    for bad in ["0", "1001"] {
        let settings = format!("  expected_replicas: {bad}\n");
        let text = gw.config_text(&routes, &yaml(&settings, SVC_SECRET));
        let e = valet::config::parse(&gw.config_path, &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("valet.yaml:") && e.contains("expected_replicas must be between 1 and 1000"),
            "{e}"
        );
    }
}
