//! A fleet on one Redis (issue 19): an authority and validators on several
//! processes, as they would be on several hosts. A real Redis 7 on
//! loopback, real valet processes.

mod support;

use std::process::{Command, Stdio};
use support::process::*;
use support::redis_server::RedisServer;
use support::*;

const SECRET: &str = "svc-secret";
const APP_SECRET: &str = "app-secret";

/// `store.redis` for `url`, as `user` (name, password file) if given.
fn store_yaml(url: &str, user: Option<(&str, &std::path::Path)>) -> String {
    let mut s = format!("store:\n  redis:\n    url: \"{url}\"\n");
    if let Some((u, f)) = user {
        s += &format!(
            "    username: {u}\n    password_file: \"{}\"\n",
            f.display()
        );
    }
    s
}

/// An authority on the Redis store: a service client, and a password
/// client with refresh tokens and no grace (strict rotation).
fn authority_yaml(store: &str) -> String {
    let h = valet::oauth2::registry::argon2id_hash;
    format!(
        "role: authority\n{store}authorization_server:\n  refresh_grace: 0s\n  clients:\n    - client_id: svc\n      secret_hash: \"{}\"\n      grant_types: [client_credentials]\n      operator: svc-op\n      scopes: [read]\n    - client_id: app\n      secret_hash: \"{}\"\n      grant_types: [password]\n      scopes: [read]\n      use_refresh_token: true\n  users:\n    - username: alice\n      password_hash: \"{}\"\n",
        h(SECRET),
        h(APP_SECRET),
        h("alice-pw")
    )
}

/// The authority's config as a validator's (public key only, no
/// authorization server), on `store`; its own revocation file (another
/// host's).
fn validator_config(authority: &Proc, store: &str, n: usize) -> std::path::PathBuf {
    let dir = authority.config.parent().unwrap();
    std::fs::write(dir.join("public.pem"), authority.key.public_pem()).unwrap();
    let text = std::fs::read_to_string(&authority.config).unwrap();
    let cut = text.find("role: authority").unwrap();
    let text = text[..cut]
        .replace(
            "private_key_file: signing.pem",
            "public_key_file: public.pem",
        )
        .replace("revocations.yaml", &format!("revocations-v{n}.yaml"))
        + "role: validator\n"
        + store;
    let path = dir.join(format!("validator-{n}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn revoke(p: &Proc, token: &str) {
    let r = p
        .client(Proto::H1)
        .post_form("/oauth2/revoke", &[("token", token)], Some(("svc", SECRET)))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// Revokes `token`, retrying while the answer is 503 (a store connection
/// that a Redis restart closed); whether it was acknowledged in time.
async fn revoke_eventually(p: &Proc, token: &str) -> bool {
    eventually(PICKUP, || async {
        p.client(Proto::H1)
            .post_form("/oauth2/revoke", &[("token", token)], Some(("svc", SECRET)))
            .await
            .status
            == 200
    })
    .await
}

/// alice's refresh token, by the password grant of `app` at `p`.
async fn login(p: &Proc) -> String {
    let r = p
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "alice-pw"),
            ],
            Some(("app", APP_SECRET)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["refresh_token"].as_str().unwrap().to_string()
}

/// The refresh grant of `app` at `p`.
async fn refresh(p: &Proc, rt: &str) -> support::client::Reply {
    p.client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            Some(("app", APP_SECRET)),
        )
        .await
}

/// A sample of `p`'s metrics.
async fn metric(p: &Proc, sample: &str) -> f64 {
    metric_value(&client::plain_get(p.metrics, "/metrics").await.1, sample)
}

const SHARED: &str = "valet_auth_throttle_shared";

/// A client-credentials request of `client` with a wrong secret at `p`.
async fn guess(p: &Proc, client: &str) -> u16 {
    p.client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((client, "a-guess")),
        )
        .await
        .status
        .as_u16()
}

/// Guesses at one client's secret spread over three authorities are
/// throttled as one allowance: each sees the others' failures (through
/// Redis, asynchronously). With Redis down, each allows its share
/// (allowance ÷ expected_replicas); back, they share again.
#[tokio::test(flavor = "multi_thread")]
async fn guesses_spread_over_three_authority_processes_are_throttled_as_one() {
    let mut redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let yaml = authority_yaml(&store).replace(
        "refresh_grace: 0s\n",
        "refresh_grace: 0s\n  max_failed_auth: 6\n  failed_auth_window: 1h\n  expected_replicas: 3\n",
    );
    let a = Proc::start_with(&default_routes(up.addr), &yaml, Stdio::null()).await;
    let (b, c) = (a.sibling().await, a.sibling().await);
    let all = [&a, &b, &c];
    for p in all {
        assert!(eventually(PICKUP, || async { metric(p, SHARED).await == 1.0 }).await);
    }
    // Six guesses, two at each: within each one's allowance of six...
    for p in all {
        for _ in 0..2 {
            assert_eq!(guess(p, "svc").await, 401);
        }
    }
    // ...but together they are the whole allowance. Each receives the
    // other four failures (two keys each: client and source).
    let received = "valet_auth_throttle_shared_records_total{direction=\"received\"}";
    for p in all {
        assert!(
            eventually(PICKUP, || async { metric(p, received).await >= 8.0 }).await,
            "the others' failures did not arrive"
        );
    }
    for p in all {
        let r = p
            .client(Proto::H1)
            .post_form(
                "/oauth2/token",
                &[("grant_type", "client_credentials")],
                Some(("svc", "a-guess")),
            )
            .await;
        assert_eq!(r.status, 429, "{:?}", r.body);
        assert!(r.headers.get("retry-after").is_some());
        assert_eq!(r.json()["error"], "invalid_client");
    }

    // Redis down: nothing can be shared, so each authority allows a third
    // of the allowance (6 ÷ 3 = 2 guesses at another client).
    redis.stop();
    for p in all {
        assert!(eventually(PICKUP, || async { metric(p, SHARED).await == 0.0 }).await);
    }
    assert_eq!(guess(&a, "app").await, 401);
    assert_eq!(guess(&a, "app").await, 401);
    assert_eq!(guess(&a, "app").await, 429);
    redis.restart();
    for p in all {
        assert!(
            eventually(PICKUP, || async { metric(p, SHARED).await == 1.0 }).await,
            "sharing did not resume after Redis came back"
        );
    }

    // A burst at all three at once, from a fresh source: each spends its
    // whole allowance before the others' attempts arrive, and then pays
    // for theirs as debt. 18 attempts against 6 an hour (one per 10 min):
    // refused for 13 intervals (130 min), not one (10 min).
    // (Distinct guesses: identical ones in flight together share one hash.)
    let attempt = |p: &Proc, guess: String| {
        let c = p.client(Proto::H1).from("127.0.0.7");
        async move {
            c.post_form(
                "/oauth2/token",
                &[("grant_type", "client_credentials")],
                Some(("svc", &guess)),
            )
            .await
        }
    };
    let mut before = Vec::new();
    for p in all {
        before.push(metric(p, received).await);
    }
    let burst = all
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..6).map(move |j| attempt(p, format!("guess-{i}-{j}"))));
    let answers: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert!(
        answers.iter().all(|s| *s == 401 || *s == 429),
        "{answers:?}"
    );
    // Each 401 spent one unit of (svc, 127.0.0.7) somewhere. How many race
    // past the allowance depends on scheduling (sharing is asynchronous by
    // design: on a loaded machine all 18 can be spent before one record
    // arrives), so the count is not the guarantee. The guarantee is below:
    // whatever raced past is carried as debt at every authority.
    let spent = answers.iter().filter(|s| **s == 401).count() as u64;
    assert!(spent >= 1, "{answers:?}");
    // Wait until each has received the others' spent attempts (two
    // records each: client and source), however slowly they travelled.
    for (i, p) in all.iter().enumerate() {
        let own = answers[i * 6..i * 6 + 6]
            .iter()
            .filter(|s| **s == 401)
            .count() as u64;
        let want = before[i] + 2.0 * (spent - own) as f64;
        assert!(
            eventually(PICKUP, || async { metric(p, received).await >= want }).await,
            "authority {i} did not receive the others' attempts: {answers:?}"
        );
    }
    for p in all {
        let r = attempt(p, "one-more".into()).await;
        assert_eq!(r.status, 429, "{answers:?}");
        // Refused until the fleet's spent units, less the burst, have
        // refilled (one per 600 s): every authority counts all of them.
        let wait: u64 = r.header("retry-after").parse().unwrap();
        let want = spent.saturating_sub(5).max(1) * 600;
        assert!(
            wait + 60 >= want && wait <= want + 60,
            "refused for {wait} s after {spent} fleet-wide attempts: {answers:?}"
        );
    }
}

async fn status(p: &Proc, token: &str) -> u16 {
    p.client(Proto::H1)
        .get("/api/x", Some(token))
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_at_the_authority_is_refused_by_every_validator() {
    let redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let mut validators = Vec::new();
    for n in 0..3 {
        validators.push(a.with_config(&validator_config(&a, &store, n)).await);
    }
    let (revoked, kept) = (
        a.issue_token("svc", SECRET).await,
        a.issue_token("svc", SECRET).await,
    );
    for v in &validators {
        assert_eq!(status(v, &revoked).await, 200);
    }
    revoke(&a, &revoked).await;
    for v in &validators {
        let refused = eventually(PICKUP, || async { status(v, &revoked).await == 401 }).await;
        assert!(refused, "a validator still accepts the revoked token");
        assert_eq!(status(v, &kept).await, 200);
    }
    // Through Redis, not a file beside them.
    assert!(!a.config.with_file_name("valet-state.db").exists());
    assert!(
        redis
            .cli(&["XLEN", "valet:log"])
            .trim()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Started after the revocation: it has it from its first request.
    let late = a.with_config(&validator_config(&a, &store, 3)).await;
    assert_eq!(status(&late, &revoked).await, 401);
    assert_eq!(status(&late, &kept).await, 200);
    // The validators answer no token endpoint.
    let r = late
        .client(Proto::H1)
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some(("svc", SECRET)),
        )
        .await;
    assert_eq!(r.status, 404);
}

/// A refresh token used at one authority and replayed at another: the
/// replay is refused and the family revoked, as on one process.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_replayed_at_another_authority_revokes_the_family() {
    let redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let b = a.sibling().await;
    let first = login(&a).await;
    let r = refresh(&a, &first).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (second, access) = (
        r.json()["refresh_token"].as_str().unwrap().to_string(),
        r.json()["access_token"].as_str().unwrap().to_string(),
    );
    assert_eq!(status(&b, &access).await, 200);
    // Replayed at b: refused, and the family with it, everywhere.
    let r = refresh(&b, &first).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(refresh(&a, &second).await.status, 400);
    assert!(eventually(PICKUP, || async { status(&a, &access).await == 401 }).await);
}

/// An evicting Redis would silently un-revoke: valet refuses to start on
/// one, and says why.
#[test]
fn a_redis_that_may_evict_keys_is_refused_at_start() {
    let redis = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    std::fs::write(dir.path().join("signing.pem"), TestKey::new().pem).unwrap();
    let text = config_text(
        &ca,
        &dir,
        &default_routes("127.0.0.1:9".parse().unwrap()),
        &authority_yaml(&store_yaml(&redis.url(), None)),
    );
    let config = dir.path().join("valet.yaml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_valet"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("maxmemory-policy is `allkeys-lru`") && err.contains("noeviction"),
        "{err}"
    );
}

/// Least privilege: the authority's ACL user may write valet's keys, a
/// validator's may only read them; the validator works with it, and cannot
/// write.
#[tokio::test(flavor = "multi_thread")]
async fn a_validators_acl_user_reads_and_follows_but_cannot_write() {
    let redis = RedisServer::start(&[]);
    // The two ACL lines README documents.
    for line in [
        "ACL SETUSER valet-authority on >authority-pw ~valet:* &valet:* +@all -@dangerous +config|get",
        "ACL SETUSER valet-validator on >validator-pw ~valet:* -@all +@read +config|get",
    ] {
        let args: Vec<&str> = line.split(' ').collect();
        assert_eq!(redis.cli(&args).trim(), "OK", "{line}");
    }
    let secrets = tempfile::tempdir().unwrap();
    let (apw, vpw) = (secrets.path().join("a"), secrets.path().join("v"));
    std::fs::write(&apw, "authority-pw\n").unwrap();
    std::fs::write(&vpw, "validator-pw\n").unwrap();
    let up = Upstream::start().await;
    let a_store = store_yaml(&redis.url(), Some(("valet-authority", &apw)));
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&a_store),
        Stdio::null(),
    )
    .await;
    let v_store = store_yaml(&redis.url(), Some(("valet-validator", &vpw)));
    let v = a.with_config(&validator_config(&a, &v_store, 0)).await;
    let t = a.issue_token("svc", SECRET).await;
    assert_eq!(status(&v, &t).await, 200);
    revoke(&a, &t).await;
    assert!(eventually(PICKUP, || async { status(&v, &t).await == 401 }).await);
    // The authority's user may share failed attempts on valet's channel.
    assert!(
        eventually(PICKUP, || async { metric(&a, SHARED).await == 1.0 }).await,
        "the authority's ACL line does not let it share its throttle"
    );
    // The validator's user cannot write valet's keys, nor run a script,
    // nor publish on valet's channel.
    let user = Some(("valet-validator", "validator-pw"));
    let out = redis.cli_as(user, &["PUBLISH", "valet:throttle", "x"]);
    assert!(out.contains("NOPERM"), "{out}");
    let out = redis.cli_as(user, &["HSET", "valet:revoked:0", "x", "1"]);
    assert!(out.contains("NOPERM"), "{out}");
    let out = redis.cli_as(
        user,
        &[
            "EVAL",
            "return redis.call('DEL', KEYS[1])",
            "1",
            "valet:log",
        ],
    );
    assert!(out.contains("NOPERM"), "{out}");
    assert_eq!(redis.cli(&["EXISTS", "valet:log"]).trim(), "1");
}

fn open(redis: &RedisServer, prefix: &str) -> valet::store::redis::RedisStore {
    valet::store::redis::RedisStore::open(
        &valet::store::redis::RedisSettings {
            url: redis.url(),
            username: None,
            password: None,
            prefix: prefix.into(),
            wait_replicas: 0,
            wait_timeout: std::time::Duration::from_secs(1),
            ca_pem: None,
            client_identity: None,
        },
        true,
    )
    .unwrap()
}

fn now() -> i64 {
    valet::revocation::now()
}

/// The store contract on Redis: the log in order and resumable, a snapshot
/// agreeing with it, later cut-offs winning, rotation and single use as
/// check-and-set, client records created once and replaced as last read,
/// flows taken once, pruning bounded; and another prefix is another store.
#[test]
fn the_store_contract_holds_on_redis() {
    use valet::store::{Change, ClientWrite, Flow, Record, Rotation, Since, Store};
    let redis = RedisServer::start(&[]);
    let s = open(&redis, "valet:");
    let n = now();
    let t = |jti: &str, exp| Record::Token {
        jti: jti.into(),
        expires_at: exp,
    };
    let p1 = s.append(&[t("a", n + 60), t("gone", n - 10)]).unwrap();
    let p2 = s
        .append(&[
            Record::Client {
                client_id: "billing".into(),
                before: n,
            },
            Record::Client {
                client_id: "billing".into(),
                before: n - 100,
            },
        ])
        .unwrap();
    assert!(p2 > p1);
    let Since::Changes(all) = s.since(0, 100).unwrap() else {
        panic!("trimmed")
    };
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].1, Change::Revoked(t("a", n + 60)));
    let Since::Changes(rest) = s.since(p1, 1).unwrap() else {
        panic!("trimmed")
    };
    assert_eq!(rest.len(), 1, "a limit is a limit");
    assert_eq!(s.head(), p2, "the newest position, for the lag in entries");
    assert!(matches!(s.since(p2 + 1, 10).unwrap(), Since::Trimmed));
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.position, p2);
    assert!(snap.records.contains(&Record::Client {
        client_id: "billing".into(),
        before: n
    }));
    // Rotation: first, in grace, reuse; a revoked id is revoked.
    assert_eq!(s.rotate("r", n + 60, 1_000, 500).unwrap(), Rotation::First);
    assert_eq!(
        s.rotate("r", n + 60, 1_400, 500).unwrap(),
        Rotation::InGrace
    );
    assert_eq!(s.rotate("r", n + 60, 1_600, 500).unwrap(), Rotation::Reuse);
    assert_eq!(s.first_use("r").unwrap(), Some(1_000));
    assert_eq!(s.rotate("a", n + 60, 1_000, 0).unwrap(), Rotation::Revoked);
    assert!(s.use_once("jti-1", n + 60).unwrap());
    assert!(!s.use_once("jti-1", n + 60).unwrap());
    // Clients.
    assert!(s
        .put_client("c", Some("{\"v\":1}"), ClientWrite::Create)
        .unwrap());
    assert!(!s.put_client("c", Some("{}"), ClientWrite::Create).unwrap());
    let stale = ClientWrite::Replace { current: "{}" };
    assert!(!s.put_client("c", Some("{\"v\":2}"), stale).unwrap());
    let fresh = ClientWrite::Replace {
        current: "{\"v\":1}",
    };
    assert!(s.put_client("c", Some("{\"v\":2}"), fresh).unwrap());
    assert_eq!(s.clients().unwrap(), [("c".into(), "{\"v\":2}".into())]);
    // OAuth 1.0 tokens and flows.
    assert!(!s
        .set_oauth1_token("p", "alice", Some(b"sealed\0bytes"))
        .unwrap());
    assert_eq!(
        s.oauth1_token("p", "alice").unwrap().unwrap(),
        b"sealed\0bytes"
    );
    assert!(s.set_oauth1_token("p", "alice", None).unwrap());
    let ms = n * 1000;
    let flow = |subject: &str| Flow {
        provider: "p".into(),
        subject: subject.into(),
        sealed: vec![1, 0, 2],
        expires_at_ms: ms + 60_000,
    };
    assert!(s.start_flow("f1", &flow("alice"), 1, 2, ms).unwrap());
    assert!(s.start_flow("f2", &flow("bob"), 1, 2, ms).unwrap());
    assert!(
        !s.start_flow("f3", &flow("carol"), 1, 2, ms).unwrap(),
        "full"
    );
    assert!(
        s.start_flow("f4", &flow("alice"), 1, 2, ms).unwrap(),
        "ends f1"
    );
    assert!(s.take_flow("f1", "p").unwrap().is_none());
    assert_eq!(s.take_flow("f4", "p").unwrap().unwrap(), flow("alice"));
    assert!(s.take_flow("f4", "p").unwrap().is_none(), "taken once");
    // The log carries the token and client changes too.
    let Since::Changes(log) = s.since(p2, 100).unwrap() else {
        panic!("trimmed")
    };
    assert!(log
        .iter()
        .any(|(_, c)| *c == Change::Client { id: "c".into() }));
    assert!(log
        .iter()
        .any(|(_, c)| matches!(c, Change::OAuth1Token { subject, .. } if subject == "alice")));
    // Pruning: the expired token id goes, the rest stays.
    assert!(s.prune(n, 100).unwrap() >= 1);
    let c = s.counts().unwrap();
    assert_eq!((c.tokens, c.clients), (1, 1));
    // Imports once.
    let import = valet::store::Import {
        records: vec![t("imported", n + 60)],
        ..Default::default()
    };
    assert!(s.import_once("file", &import).unwrap());
    assert!(!s.import_once("file", &import).unwrap());
    assert_eq!(s.imports().unwrap(), [("file".into(), 1)]);
    // The audit log: appended in order, by compare-and-set.
    assert_eq!(s.audit_last().unwrap(), None);
    assert!(s.audit_append(1, "one").unwrap());
    assert!(!s.audit_append(1, "again").unwrap(), "entry 1 is taken");
    assert!(!s.audit_append(3, "gap").unwrap(), "no gaps");
    assert!(s.audit_append(2, "two").unwrap());
    assert_eq!(s.audit_last().unwrap(), Some((2, "two".to_string())));
    assert_eq!(s.audit(1, 10).unwrap(), [(2, "two".to_string())]);
    assert_eq!(s.audit(0, 1).unwrap(), [(1, "one".to_string())]);
    // Another prefix: another store.
    let other = open(&redis, "other:");
    assert!(other.snapshot().unwrap().records.is_empty());
    assert!(other.audit(0, 10).unwrap().is_empty());
    std::thread::scope(|t| {
        for w in 0..2 {
            let redis = &redis;
            t.spawn(move || {
                let s = open(redis, "chain:");
                for i in 0..30 {
                    valet::app::audit::record(
                        &s,
                        &format!("w{w}"),
                        "test",
                        Some(&format!("c{i}")),
                        serde_json::Value::Null,
                    )
                    .unwrap();
                }
            });
        }
    });
    let v = valet::app::audit::verify(&open(&redis, "chain:"), &[]).unwrap();
    assert_eq!(v.records, 60, "one chain from two writers");
}

/// Redis down mid-run: validators keep proxying from what they hold and
/// stay ready, the authority answers writes 503 and acknowledges nothing,
/// the follower's failures and lag show; back up (same data), the
/// authority writes again and validators resume from their position,
/// without reading everything again.
#[tokio::test(flavor = "multi_thread")]
async fn redis_down_then_back_validators_keep_serving_and_resume() {
    let mut redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v = a.with_config(&validator_config(&a, &store, 0)).await;
    let (t1, t2) = (
        a.issue_token("svc", SECRET).await,
        a.issue_token("svc", SECRET).await,
    );
    revoke(&a, &t1).await;
    assert!(eventually(PICKUP, || async { status(&v, &t1).await == 401 }).await);
    let metric = |p: &Proc, sample: &'static str| {
        let addr = p.metrics;
        async move { metric_value(&client::plain_get(addr, "/metrics").await.1, sample) }
    };
    let follow_errors = "valet_store_errors_total{op=\"follow\"}";
    let before = metric(&v, follow_errors).await;

    redis.stop();
    // Proxying goes on from the map in memory; readiness unchanged.
    assert_eq!(status(&v, &t1).await, 401);
    assert_eq!(status(&v, &t2).await, 200);
    assert_eq!(client::plain_get(v.metrics, "/readyz").await.0, 200);
    // Its lag rises (it cannot read the log to its end).
    assert!(
        eventually(PICKUP, || async {
            metric(&v, "valet_store_lag_seconds").await > 1.0
        })
        .await,
        "the lag in seconds does not rise while Redis is down"
    );
    // A revocation cannot be recorded: 503, not acknowledged.
    let r = a
        .client(Proto::H1)
        .post_form("/oauth2/revoke", &[("token", &t2)], Some(("svc", SECRET)))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert!(
        eventually(PICKUP, || async {
            metric(&v, follow_errors).await > before
        })
        .await,
        "the follower's failures are not counted"
    );
    assert_eq!(status(&v, &t2).await, 200, "nothing was revoked");

    redis.restart();
    // The authority reconnects (after its backoff) and records again.
    let recorded = eventually(PICKUP, || async {
        a.client(Proto::H1)
            .post_form("/oauth2/revoke", &[("token", &t2)], Some(("svc", SECRET)))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        recorded,
        "the authority did not write again after Redis came back"
    );
    assert!(eventually(PICKUP, || async { status(&v, &t2).await == 401 }).await);
    assert_eq!(status(&v, &t1).await, 401);
    assert!(metric(&v, "valet_store_reconnects_total").await >= 1.0);
    assert!(metric(&v, "valet_store_lag_seconds").await < 1.0);
    assert_eq!(metric(&v, "valet_store_lag_entries").await, 0.0);
    assert_eq!(
        metric(&v, "valet_store_resyncs_total").await,
        0.0,
        "resumed from its position, not read whole"
    );
}

/// A validator started while Redis is unreachable (or before any authority
/// wrote the store) starts, but holds none of the store's revocations: it
/// is not ready and answers authenticated requests 503 rather than serving
/// them unchecked. Once it reads the store it is ready and refuses what was
/// revoked, and that first read is not counted as a resync.
#[tokio::test(flavor = "multi_thread")]
async fn a_validator_that_never_read_the_store_is_not_ready() {
    let mut redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let (t1, t2) = (
        a.issue_token("svc", SECRET).await,
        a.issue_token("svc", SECRET).await,
    );
    revoke(&a, &t1).await;

    // Under another prefix no authority has written yet: no schema.
    let other = format!("{store}    key_prefix: \"other:\"\n");
    let early = a
        .with_config_unready(&validator_config(&a, &other, 9))
        .await;
    assert_eq!(client::plain_get(early.metrics, "/readyz").await.0, 503);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(client::plain_get(early.metrics, "/readyz").await.0, 503);
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&store, &other);
    let b_cfg = a.config.with_file_name("authority-other.yaml");
    std::fs::write(&b_cfg, text).unwrap();
    let b = a.with_config(&b_cfg).await;
    // The early validator finds the store once an authority wrote it.
    assert!(
        eventually(PICKUP, || async {
            client::plain_get(early.metrics, "/readyz").await.0 == 200
        })
        .await,
        "a validator started before the authority never became ready"
    );
    drop((b, early));

    redis.stop();
    let v = a
        .with_config_unready(&validator_config(&a, &store, 1))
        .await;
    assert_eq!(client::plain_get(v.metrics, "/healthz").await.0, 200);
    assert_eq!(client::plain_get(v.metrics, "/readyz").await.0, 503);
    for t in [&t1, &t2] {
        let r = v.client(Proto::H1).get("/api/x", Some(t)).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.json()["error"], "temporarily_unavailable");
    }
    // Still not ready a while later (it keeps trying, not reading).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(client::plain_get(v.metrics, "/readyz").await.0, 503);

    redis.restart();
    assert!(
        eventually(PICKUP, || async {
            client::plain_get(v.metrics, "/readyz").await.0 == 200
        })
        .await,
        "the validator did not become ready once Redis was back"
    );
    assert_eq!(status(&v, &t1).await, 401, "revoked before it started");
    assert_eq!(status(&v, &t2).await, 200);
    assert_eq!(metric(&v, "valet_store_resyncs_total").await, 0.0);
    assert_eq!(
        metric(
            &v,
            "valet_store_setting{setting=\"maxmemory-policy\",state=\"verified\"}"
        )
        .await,
        1.0
    );
}

/// A store moved on to a schema this valet cannot read (a newer release
/// upgraded it): refused clearly, never guessed at. A running authority's
/// writes answer 503 and record nothing, a running validator stops
/// following (and keeps what it holds), a new process refuses to start;
/// back on a schema it reads, all goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_of_a_schema_this_valet_cannot_read_is_refused_clearly() {
    let redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v_cfg = validator_config(&a, &store, 0);
    let v = a.with_config(&v_cfg).await;
    let (t1, t2) = (
        a.issue_token("svc", SECRET).await,
        a.issue_token("svc", SECRET).await,
    );
    revoke(&a, &t1).await;
    assert!(eventually(PICKUP, || async { status(&v, &t1).await == 401 }).await);
    let position = metric(&v, "valet_store_position").await;

    assert_eq!(
        redis.cli(&["HSET", "valet:meta", "schema", "99"]).trim(),
        "0"
    );
    let r = a
        .client(Proto::H1)
        .post_form("/oauth2/revoke", &[("token", &t2)], Some(("svc", SECRET)))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let follow_errors = "valet_store_errors_total{op=\"follow\"}";
    let before = metric(&v, follow_errors).await;
    assert!(
        eventually(PICKUP, || async {
            metric(&v, follow_errors).await > before
        })
        .await
    );
    assert_eq!(status(&v, &t1).await, 401, "what it holds stays in force");
    assert_eq!(metric(&v, "valet_store_position").await, position);
    let out = Command::new(VALET)
        .args(["serve", "--config"])
        .arg(&v_cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has schema version 99") && err.contains("run a release that reads it"),
        "{err}"
    );

    assert_eq!(
        redis.cli(&["HSET", "valet:meta", "schema", "1"]).trim(),
        "0"
    );
    assert!(revoke_eventually(&a, &t2).await);
    assert!(eventually(PICKUP, || async { status(&v, &t2).await == 401 }).await);
}

/// The log trimmed past a validator's position while it is away (stopped):
/// back, it reads the store whole, once, and refuses what was revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_validator_behind_a_trimmed_log_reads_the_store_whole() {
    let redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v = a.with_config(&validator_config(&a, &store, 0)).await;
    let t = a.issue_token("svc", SECRET).await;
    assert_eq!(status(&v, &t).await, 200);
    let pid = v.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    revoke(&a, &t).await;
    for _ in 0..5 {
        let other = a.issue_token("svc", SECRET).await;
        revoke(&a, &other).await;
    }
    // Trimmed to nothing: every entry it had not read is gone.
    assert_eq!(
        redis.cli(&["XTRIM", "valet:log", "MAXLEN", "0"]).trim(),
        "6"
    );
    assert_eq!(
        redis
            .cli(&["HSET", "valet:meta", "pruned_through", "6"])
            .trim(),
        "1"
    );
    signal("-CONT");
    assert!(eventually(PICKUP, || async { status(&v, &t).await == 401 }).await);
    let m = client::plain_get(v.metrics, "/metrics").await.1;
    assert_eq!(metric_value(&m, "valet_store_resyncs_total"), 1.0);
}

/// A Redis restarted empty is detected, not trusted: validators keep the
/// revocations they hold; the authority refuses writes (503) until an
/// operator runs `valet store reseed`; refresh tokens issued before are
/// refused then (their rotation records are gone), new sign-ins work.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restarted_empty_is_detected_and_writes_wait_for_a_reseed() {
    let mut redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v = a.with_config(&validator_config(&a, &store, 0)).await;
    let (t1, t2) = (
        a.issue_token("svc", SECRET).await,
        a.issue_token("svc", SECRET).await,
    );
    revoke(&a, &t1).await;
    assert!(eventually(PICKUP, || async { status(&v, &t1).await == 401 }).await);
    let old_rt = login(&a).await;

    redis.restart_empty();
    let revoke_t2 = || {
        let c = a.client(Proto::H1);
        let t2 = t2.clone();
        async move {
            c.post_form("/oauth2/revoke", &[("token", &t2)], Some(("svc", SECRET)))
                .await
        }
    };
    // Past the reconnection: still refused, for the generation is gone.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let r = revoke_t2().await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let r = refresh(&a, &old_rt).await;
    assert_eq!(
        r.status, 503,
        "a refresh against an emptied store: {:?}",
        r.body
    );
    // The validator keeps what it held.
    assert_eq!(status(&v, &t1).await, 401);
    assert_eq!(status(&v, &t2).await, 200);

    let out = Command::new(env!("CARGO_BIN_EXE_valet"))
        .args(["store", "reseed", "--config"])
        .arg(&a.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("issued before now are refused"));
    let r = revoke_t2().await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(eventually(PICKUP, || async { status(&v, &t2).await == 401 }).await);
    assert_eq!(status(&v, &t1).await, 401, "a held revocation was dropped");
    // The refresh token from before: its rotation record is gone.
    let r = refresh(&a, &old_rt).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("before the state store was reset"));
    // After it, sign-in and rotation work.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rt = login(&a).await;
    assert_eq!(refresh(&a, &rt).await.status, 200);
}

/// Staleness: with Redis out of reach for longer than `store.stale_after`,
/// the metric says so, a route that opted in fails closed (503), the others
/// serve from the revocations held; back within reach, both serve.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_may_fail_closed_while_revocations_are_stale() {
    let mut redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let path = validator_config(&a, &store, 0);
    let text = std::fs::read_to_string(&path).unwrap();
    let strict = text
        .replace(
            "    auth: { scopes: [read] }\n",
            "    auth: { scopes: [read], fail_closed_when_stale: true }\n",
        )
        .replace("store:\n", "store:\n  stale_after: 1s\n");
    assert_ne!(text, strict);
    std::fs::write(&path, strict).unwrap();
    let v = a.with_config(&path).await;
    let t = a.issue_token("svc", SECRET).await;
    let fwd = |p: &Proc, t: String| {
        let c = p.client(Proto::H1);
        async move { c.get("/fwd/x", Some(&t)).await.status.as_u16() }
    };
    assert_eq!(status(&v, &t).await, 200);
    let stale = || async {
        metric_value(
            &client::plain_get(v.metrics, "/metrics").await.1,
            "valet_store_stale",
        )
    };
    assert_eq!(stale().await, 0.0);

    redis.stop();
    assert!(eventually(PICKUP, || async { stale().await == 1.0 }).await);
    let r = v.client(Proto::H1).get("/api/x", Some(&t)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(
        fwd(&v, t.clone()).await,
        200,
        "a route that did not opt in serves on"
    );
    assert_eq!(
        client::plain_get(v.metrics, "/readyz").await.0,
        200,
        "still ready"
    );

    redis.restart();
    assert!(eventually(PICKUP, || async { status(&v, &t).await == 200 }).await);
    assert_eq!(stale().await, 0.0);
}

/// A benchmark, not a test (ignored; nothing asserted on time): how long a
/// revocation acknowledged by the authority takes to be enforced by a
/// validator through Redis, over 1 000 revocations at spread-out moments;
/// then how many revocations a second the authority acknowledges, one
/// after another. Run:
/// `cargo test --release --test redis_store -- --ignored propagation --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn propagation_through_redis() {
    let redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let authority = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let validator = authority
        .with_config(&validator_config(&authority, &store, 0))
        .await;
    let (a, v) = (authority.client(Proto::H1), validator.client(Proto::H1));
    let mut took = Vec::new();
    for i in 0..1000u64 {
        let t = authority.issue_token("svc", SECRET).await;
        let jitter = i.wrapping_mul(2_654_435_761) % 250;
        tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
        let r = a
            .post_form("/oauth2/revoke", &[("token", &t)], Some(("svc", SECRET)))
            .await;
        assert_eq!(r.status, 200);
        let acked = std::time::Instant::now();
        while v.get("/api/x", Some(&t)).await.status != 401 {
            assert!(acked.elapsed() < PICKUP, "not propagated");
        }
        took.push(acked.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    eprintln!(
        "revocation propagation through Redis over {}: p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        at(0.50),
        at(0.99),
        took[took.len() - 1]
    );
    let mut tokens = Vec::new();
    for _ in 0..2000 {
        tokens.push(authority.issue_token("svc", SECRET).await);
    }
    let started = std::time::Instant::now();
    for t in &tokens {
        let r = a
            .post_form("/oauth2/revoke", &[("token", t)], Some(("svc", SECRET)))
            .await;
        assert_eq!(r.status, 200);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} revocations one after another: {:.0}/s ({:.2} ms each, appendfsync always)",
        tokens.len(),
        tokens.len() as f64 / secs,
        secs * 1000.0 / tokens.len() as f64
    );
}

/// A benchmark, not a test (ignored): proxy throughput of the same gateway
/// on the embedded store and on Redis. The request path never touches the
/// store (revocations are in memory), so the two should be equal. `wrk`
/// (Debian `wrk`) drives each over TLS with a valid bearer token, twice,
/// alternating. Run:
/// `cargo test --release --test redis_store -- --ignored proxy_throughput --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn proxy_throughput_embedded_and_redis() {
    let redis = RedisServer::start(&[]);
    let up = Upstream::start().await;
    let routes = default_routes(up.addr);
    let both = |store: &str| authority_yaml(store).replace("role: authority\n", "role: both\n");
    let embedded = Proc::start_with(&routes, &both(""), Stdio::null()).await;
    let on_redis = Proc::start_with(
        &routes,
        &both(&store_yaml(&redis.url(), None)),
        Stdio::null(),
    )
    .await;
    let mut runs: Vec<(&str, f64, String, String)> = Vec::new();
    for _ in 0..2 {
        for (name, p) in [("embedded", &embedded), ("redis", &on_redis)] {
            let token = p.issue_token("svc", SECRET).await;
            assert_eq!(status(p, &token).await, 200);
            let out = Command::new("wrk")
                .args(["-t2", "-c32", "-d8s", "--latency", "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("https://localhost:{}/api/x", p.addr.port()))
                .output()
                .expect("wrk (apt-get install wrk)");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let field = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix(prefix))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            };
            assert!(!text.contains("Non-2xx"), "{text}");
            let rps: f64 = field("Requests/sec:").parse().unwrap();
            runs.push((name, rps, field("50%"), field("99%")));
        }
    }
    for (name, rps, p50, p99) in &runs {
        eprintln!("{name}: {rps:.0} requests/s, latency p50 {p50}, p99 {p99}");
    }
}

/// A benchmark, not a test (ignored): a validator's full read of a store
/// holding 1 000 000 revoked token ids, its time and the memory it holds.
/// Run: `cargo test --release --test redis_store -- --ignored full_resync --nocapture`
#[test]
#[ignore]
fn full_resync_of_a_million_revoked_ids() {
    use valet::store::{Record, Store};
    let redis = RedisServer::start(&[]);
    let s = open(&redis, "valet:");
    let exp = now() + 86_400;
    for chunk in 0..100 {
        let batch: Vec<Record> = (0..10_000)
            .map(|i| Record::Token {
                jti: format!("{:032x}", chunk * 10_000 + i),
                expires_at: exp,
            })
            .collect();
        s.append(&batch).unwrap();
    }
    let mb = |b: usize| b as f64 / (1024.0 * 1024.0);
    // The first read, at start.
    let (base, _) = heap::reset();
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let r = valet::revocation::Revocations::on_store(
        &dir.path().join("revocations.yaml"),
        std::sync::Arc::new(open(&redis, "valet:")),
        false,
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(r.current().len().0, 1_000_000);
    let (held, peak) = heap::reset();
    let held = held - base;
    eprintln!(
        "first read of 1 000 000 revoked ids: {took:?}; heap held after {:.1} MB, peak {:.1} MB above the start",
        mb(held),
        mb(peak - base)
    );
    // A resync of a process that holds them: the store's generation
    // changes (as after a reseed), so it reads the store whole again.
    redis.cli(&["HSET", "valet:meta", "generation", "another"]);
    let (before, _) = heap::reset();
    let started = std::time::Instant::now();
    let f = r.follow().unwrap();
    let took = started.elapsed();
    assert!(f.whole && !f.first);
    let (after, peak) = heap::reset();
    eprintln!(
        "full resync of 1 000 000 revoked ids: {took:?}; heap peak {:.1} MB above the {:.1} MB held (peak {:.2}x the held), {:.1} MB more held after",
        mb(peak - before),
        mb(held),
        (held + peak - before) as f64 / held as f64,
        mb(after.saturating_sub(before))
    );
    assert!(
        peak - base <= 2 * held + (32 << 20),
        "a resync's peak was more than twice the held memory plus 32 MB"
    );
}

/// Heap use of this test binary: bytes allocated now and the peak since the
/// last reset (the resync harness's memory figures). A global allocator
/// cannot be written without `unsafe`: this one only forwards to the
/// system's and counts.
#[allow(unsafe_code)]
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting;
    static NOW: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(l) };
            if !p.is_null() {
                let n = NOW.fetch_add(l.size(), Ordering::Relaxed) + l.size();
                PEAK.fetch_max(n, Ordering::Relaxed);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) };
            NOW.fetch_sub(l.size(), Ordering::Relaxed);
        }
    }

    #[global_allocator]
    static A: Counting = Counting;

    /// (bytes now, peak since the last reset); starts a new peak.
    pub(super) fn reset() -> (usize, usize) {
        let now = NOW.load(Ordering::Relaxed);
        (now, PEAK.swap(now, Ordering::Relaxed))
    }
}

/// A backup restored under running validators: the log's positions go back
/// and are given out again. A validator whose position is reached again by
/// new writes before it reads sees that the entry there is not the one it
/// read (its nonce), reads the store whole, and enforces the new writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_backup_does_not_make_validators_skip_new_revocations() {
    let mut redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v = a.with_config(&validator_config(&a, &store, 0)).await;
    let tokens: Vec<String> = {
        let mut t = Vec::new();
        for _ in 0..5 {
            t.push(a.issue_token("svc", SECRET).await);
        }
        t
    };
    revoke(&a, &tokens[0]).await;
    let backup = redis.backup();
    // Two more after the backup, which the validator reads. (The first
    // write after a restart may meet the connection the restart closed:
    // 503, nothing acknowledged; the client retries.)
    for t in &tokens[1..3] {
        assert!(revoke_eventually(&a, t).await);
    }
    assert!(eventually(PICKUP, || async { status(&v, &tokens[2]).await == 401 }).await);
    let pid = v.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    // Away while the backup comes back and two new revocations take the
    // positions it read last.
    signal("-STOP");
    redis.restore(&backup);
    for t in &tokens[3..5] {
        assert!(revoke_eventually(&a, t).await);
    }
    signal("-CONT");
    for t in &tokens[3..5] {
        assert!(
            eventually(PICKUP, || async { status(&v, t).await == 401 }).await,
            "a revocation at a reused position was skipped"
        );
    }
    // What it held stays, what the backup lost included.
    assert_eq!(status(&v, &tokens[1]).await, 401);
}

/// One refresh token presented at the same instant to two authority
/// processes on one Redis: exactly one first use (200), the other a reuse
/// (400), ten times over.
#[tokio::test(flavor = "multi_thread")]
async fn two_authorities_on_redis_give_a_refresh_token_exactly_one_first_use() {
    let redis = RedisServer::start(&[]);
    let store = store_yaml(&redis.url(), None);
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let b = a.sibling().await;
    for round in 0..10 {
        let rt = login(&a).await;
        // Both sent before either is awaited.
        let (x, y) = tokio::join!(refresh(&a, &rt), refresh(&b, &rt));
        let mut got = [x.status.as_u16(), y.status.as_u16()];
        got.sort();
        assert_eq!(got, [200, 400], "round {round}");
    }
}

/// `store.redis.wait_replicas`: a revocation is acknowledged only once a
/// replica has it; with the replica down, 503 and nothing acknowledged;
/// back, acknowledged again.
#[tokio::test(flavor = "multi_thread")]
async fn with_wait_replicas_a_write_is_acknowledged_only_once_replicated() {
    let primary = RedisServer::start(&[]);
    let port = primary.port.to_string();
    let mut replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    let synced = eventually(PICKUP, || async {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    })
    .await;
    assert!(synced, "the replica did not sync");
    let store =
        store_yaml(&primary.url(), None) + "    wait_replicas: 1\n    wait_timeout: 300ms\n";
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let (t1, t2) = (
        a.issue_token("svc", SECRET).await,
        a.issue_token("svc", SECRET).await,
    );
    revoke(&a, &t1).await;
    assert_eq!(
        replica
            .cli(&["HEXISTS", "valet:revoked:0", &jti_of(&t1)])
            .trim(),
        "1"
    );
    replica.stop();
    let r = a
        .client(Proto::H1)
        .post_form("/oauth2/revoke", &[("token", &t2)], Some(("svc", SECRET)))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    replica.restart();
    assert!(
        revoke_eventually(&a, &t2).await,
        "not acknowledged once the replica was back"
    );
}

/// A Redis serving TLS on a port of its own (plain on another, for the
/// test's redis-cli) with a certificate of a fresh private CA; whether it
/// demands client certificates. (certs folder, CA, CA file, TLS URL, server).
fn tls_redis(
    auth_clients: bool,
) -> (
    tempfile::TempDir,
    TestCa,
    std::path::PathBuf,
    String,
    RedisServer,
) {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path());
    let ca_pem = certs.path().join("redis-ca.pem");
    ca.write_ca_pem(&ca_pem);
    let (cert, key) = ca.issue_to(certs.path(), "redis", "localhost");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let redis = RedisServer::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca_pem.to_str().unwrap(),
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ]);
    let url = format!("rediss://localhost:{tls_port}/0");
    (certs, ca, ca_pem, url, redis)
}

/// TLS to Redis with a private CA: the server's certificate is checked
/// against `store.redis.ca_file` (rustls on aws-lc); without that CA the
/// same server is refused at start.
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_redis_with_a_private_ca() {
    let (_certs, _ca, ca_pem, url, redis) = tls_redis(false);
    let store = store_yaml(&url, None) + &format!("    ca_file: \"{}\"\n", ca_pem.display());
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v = a.with_config(&validator_config(&a, &store, 0)).await;
    let t = a.issue_token("svc", SECRET).await;
    revoke(&a, &t).await;
    assert!(eventually(PICKUP, || async { status(&v, &t).await == 401 }).await);
    assert!(
        redis
            .cli(&["XLEN", "valet:log"])
            .trim()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // The same server without the CA: its certificate is not trusted.
    let path = a.config.with_file_name("no-ca.yaml");
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&format!("    ca_file: \"{}\"\n", ca_pem.display()), "");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_valet"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// Mutual TLS: a Redis that demands a client certificate
/// (`tls-auth-clients yes`) admits valet with `client_cert_file` and
/// `client_key_file`, and refuses it without them.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_to_redis_with_a_client_certificate() {
    let (certs, ca, ca_pem, url, redis) = tls_redis(true);
    let (client_cert, client_key) = ca.issue_to(certs.path(), "valet-client", "valet-authority");
    let without = store_yaml(&url, None) + &format!("    ca_file: \"{}\"\n", ca_pem.display());
    let store = without.clone()
        + &format!(
            "    client_cert_file: \"{}\"\n    client_key_file: \"{}\"\n",
            client_cert.display(),
            client_key.display()
        );
    let up = Upstream::start().await;
    let a = Proc::start_with(
        &default_routes(up.addr),
        &authority_yaml(&store),
        Stdio::null(),
    )
    .await;
    let v = a.with_config(&validator_config(&a, &store, 0)).await;
    let t = a.issue_token("svc", SECRET).await;
    revoke(&a, &t).await;
    assert!(eventually(PICKUP, || async { status(&v, &t).await == 401 }).await);
    assert!(
        redis
            .cli(&["XLEN", "valet:log"])
            .trim()
            .parse::<u64>()
            .unwrap()
            >= 1
    );

    // Without the certificate the server refuses the authority: it does
    // not start.
    let path = a.config.with_file_name("no-client-cert.yaml");
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&store, &without);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(VALET)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the store redis"), "{err}");

    // Half an identity, or a key file that holds none, is a config error.
    for (cert_line, key_line, says) in [
        (
            format!("    client_cert_file: \"{}\"\n", client_cert.display()),
            String::new(),
            "go together",
        ),
        (
            format!("    client_cert_file: \"{}\"\n", client_cert.display()),
            format!("    client_key_file: \"{}\"\n", client_cert.display()),
            "no PEM private key",
        ),
    ] {
        let text = std::fs::read_to_string(&a.config)
            .unwrap()
            .replace(&store, &format!("{without}{cert_line}{key_line}"));
        let e = valet::config::parse(&a.config, &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
}
