//! Prometheus metrics: one registry built at start and passed down, with typed
//! handles. Per-route handles are resolved when a config snapshot is built, so
//! the request path never looks up a label set.

use crate::tokens::TokenError;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Methods with their own label value; anything else is `OTHER`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// Status classes, `1xx`..`5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    token_failures: [IntCounter; TokenError::ALL.len()],
    pub revocation_entries: IntGaugeVec,
    reloads: IntCounterVec,
    jwks_fetches: IntCounterVec,
    /// WebSocket sessions open now.
    pub websockets_open: IntGauge,
    /// Upstream connection pools held for the config in force.
    pub upstream_pools: IntGauge,
    /// The state store's calls: how long, and how many failed.
    store_seconds: HistogramVec,
    store_errors: IntCounterVec,
    /// The store's log position this process has applied.
    pub store_position: IntGauge,
    /// When this process last read the store's log to its end (unix
    /// seconds): its lag behind the store is at most now minus this.
    pub store_followed_at: IntGauge,
    pub store_lag_seconds: prometheus::Gauge,
    pub store_lag_entries: IntGauge,
    pub store_generation_changes: IntCounter,
    pub store_settings: IntGaugeVec,
    /// Times this process read the store whole (its log did not go on from
    /// its position: trimmed past it, or another store).
    pub store_resyncs: IntCounter,
    /// 1 while the revocations may be stale (`store.stale_after`).
    pub store_stale: IntGauge,
    /// Connections to a networked store made again after failures.
    pub store_reconnects: IntCounter,
    /// Store entries by kind (the authority's view, from the store itself).
    pub store_entries: IntGaugeVec,
    /// Entries copied into the store from the files of earlier versions.
    pub store_imported: IntGaugeVec,
    /// WebSocket sessions ended, by route and why.
    pub websocket_sessions: IntCounterVec,
    jwks_stale: IntGaugeVec,
    jwks_keys: IntGaugeVec,
    pub tls_handshake_failures: IntCounter,
    client_errors: IntCounterVec,
    /// Request handlers that panicked (answered 500; the connection lives on).
    pub panics: IntCounter,
    /// Connections valet closed, by why.
    pub connections_closed: IntCounterVec,
    pub open_connections: IntGauge,
    pub upstream_errors: IntCounterVec,
    pub tokens_issued: IntCounterVec,
    pub token_requests_failed: IntCounterVec,
    pub revocations: IntCounterVec,
    pub client_auth_failures: IntCounter,
    pub rate_limited: IntCounterVec,
    /// Password-hash verifications waiting for a worker.
    pub hash_queue_depth: IntGauge,
    /// Password-hash attempts by outcome (match, mismatch, or why refused).
    pub hash_jobs: IntCounterVec,
    /// Keys the authentication throttle holds (after the last prune).
    pub throttle_keys: IntGauge,
    pub throttle_shared: IntGauge,
    pub throttle_shared_records: IntCounterVec,
    /// Client-secret checks answered from the verified-secret cache.
    pub verified_secret_hits: IntCounter,
    pub oauth1_flows_started: IntCounterVec,
    pub oauth1_flows_completed: IntCounterVec,
    pub oauth1_flows_failed: IntCounterVec,
    pub oauth1_signed: IntCounterVec,
    pub oauth1_upstream_unauthorized: IntCounterVec,
    pub oauth1_tokens_invalidated: IntCounterVec,
    pub oauth1_consumer_problems: IntCounterVec,
}

/// Handles for one route (or for requests that matched no route).
pub struct RouteMetrics {
    requests: Vec<IntCounter>,
    pub duration: Histogram,
    pub upstream_duration: Histogram,
}

impl RouteMetrics {
    #[inline]
    pub fn record(&self, method: &http::Method, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[method_index(method) * CLASSES.len() + class].inc();
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let requests = IntCounterVec::new(
            Opts::new(
                "valet_requests_total",
                "Requests answered, by route, method and status class.",
            ),
            &["route", "method", "status_class"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "valet_request_duration_seconds",
                "Time from request head to response head.",
            )
            .buckets(buckets.clone()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "valet_upstream_duration_seconds",
                "Time waiting for the upstream's response head.",
            )
            .buckets(buckets),
            &["route"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "valet_token_validation_failures_total",
                "Bearer tokens refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let token_failures = TokenError::ALL.map(|e| failures.with_label_values(&[e.reason()]));
        let revocation_entries = IntGaugeVec::new(
            Opts::new(
                "valet_revocation_entries",
                "Entries in the revocation map in force, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "valet_reloads_total",
                "File reloads, by what was reloaded and the result.",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "valet_jwks_fetches_total",
                "Fetches of trusted issuers' key sets, by issuer and result (success, failure, rate_limited: an unknown kid that did not cause a fetch).",
            ),
            &["issuer", "result"],
        )
        .expect("valid metric");
        let upstream_pools = IntGauge::new(
            "valet_upstream_pools",
            "Upstream connection pools held (one per connect timeout, TLS settings and protocol in the config in force; a pool the config no longer uses is dropped once its last request ends).",
        )
        .expect("valid metric");
        let store_seconds = HistogramVec::new(
            HistogramOpts::new(
                "valet_store_operation_seconds",
                "State store calls by operation (append, rotate, use_once, follow, prune), including the fsync of a write.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
            &["op"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "valet_store_errors_total",
                "State store calls that failed, by operation: a write that failed was not acknowledged (503).",
            ),
            &["op"],
        )
        .expect("valid metric");
        // Present from the start, so an alert on their rate has a series.
        for op in ["append", "follow", "prune", "rotate", "use_once"] {
            store_errors.with_label_values(&[op]);
        }
        let store_position = IntGauge::new(
            "valet_store_position",
            "The state store's change-log position this process has applied.",
        )
        .expect("valid metric");
        let store_resyncs = IntCounter::new(
            "valet_store_resyncs_total",
            "Times this process read the state store whole because its change log did not go on from this process's position (trimmed past it, or another store).",
        )
        .expect("valid metric");
        let store_stale = IntGauge::new(
            "valet_store_stale",
            "1 while this process has not read the state store to its end for longer than store.stale_after: revocations made since may not be enforced here (routes with auth.fail_closed_when_stale answer 503).",
        )
        .expect("valid metric");
        let store_reconnects = IntCounter::new(
            "valet_store_reconnects_total",
            "Connections to a networked state store (Redis) made again after failures.",
        )
        .expect("valid metric");
        let store_followed_at = IntGauge::new(
            "valet_store_followed_timestamp_seconds",
            "When this process last read the state store's change log to its end (unix seconds): its lag behind other processes' revocations is at most time() minus this. Alert when it falls behind by more than a few seconds.",
        )
        .expect("valid metric");
        let store_lag_seconds = prometheus::Gauge::new(
            "valet_store_lag_seconds",
            "Seconds since this process last read the state store's change log to its end, updated on every follow (a few times a second), also while the store is unreachable: it rises then.",
        )
        .expect("valid metric");
        let store_lag_entries = IntGauge::new(
            "valet_store_lag_entries",
            "Change-log entries the state store had, at this process's last read, beyond the position this process has applied.",
        )
        .expect("valid metric");
        let store_generation_changes = IntCounter::new(
            "valet_store_generation_changes_total",
            "Times the Redis store's generation changed under this process (emptied and started again, reseeded, or restored): it kept every revocation it held and read the new store whole.",
        )
        .expect("valid metric");
        let store_settings = IntGaugeVec::new(
            Opts::new(
                "valet_store_setting",
                "The Redis settings valet relies on (maxmemory-policy, appendonly, appendfsync), 1 for the state found at start: verified, unverified (CONFIG GET refused: not assumed) or weaker (than the guarantee README states).",
            ),
            &["setting", "state"],
        )
        .expect("valid metric");
        let store_entries = IntGaugeVec::new(
            Opts::new(
                "valet_store_entries",
                "Entries in the state store, by kind (token, family, client, subject, rotation, single_use, oauth1_token, oauth1_flow, managed_client, log).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let store_imported = IntGaugeVec::new(
            Opts::new(
                "valet_store_imported_entries",
                "Entries copied into the state store, once, from the files of earlier versions (revocation-file, oauth1-token-file, clients-file).",
            ),
            &["file"],
        )
        .expect("valid metric");
        let websockets_open = IntGauge::new(
            "valet_websockets_open",
            "WebSocket sessions spliced through valet now.",
        )
        .expect("valid metric");
        let websocket_sessions = IntCounterVec::new(
            Opts::new(
                "valet_websocket_sessions_total",
                "WebSocket sessions ended, by route and end (closed, idle, max_duration, failed).",
            ),
            &["route", "end"],
        )
        .expect("valid metric");
        let jwks_stale = IntGaugeVec::new(
            Opts::new(
                "valet_jwks_stale",
                "1 while an issuer's key set is served from cache because its last fetch failed.",
            ),
            &["issuer"],
        )
        .expect("valid metric");
        let jwks_keys = IntGaugeVec::new(
            Opts::new("valet_jwks_keys", "Keys held for each trusted issuer."),
            &["issuer"],
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounter::new(
            "valet_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        )
        .expect("valid metric");
        let client_errors = IntCounterVec::new(
            Opts::new(
                "valet_client_errors_total",
                "Requests refused for the client's fault (framing, path, Host, headers, body), by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "valet_connections_closed_total",
                "Client connections valet closed itself, by reason (idle, send_timeout, per_source_limit, panic).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let panics = IntCounter::new(
            "valet_panics_total",
            "Request handlers that panicked; each was answered 500. Any value above 0 is a bug.",
        )
        .expect("valid metric");
        let open_connections =
            IntGauge::new("valet_open_connections", "Client connections open now.")
                .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "valet_upstream_errors_total",
                "Upstream failures, by route and kind.",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let tokens_issued = IntCounterVec::new(
            Opts::new(
                "valet_tokens_issued_total",
                "Access tokens issued by the token endpoint, by grant and client.",
            ),
            &["grant", "client"],
        )
        .expect("valid metric");
        let token_requests_failed = IntCounterVec::new(
            Opts::new(
                "valet_token_requests_failed_total",
                "Token requests refused, by grant and RFC 6749 error.",
            ),
            &["grant", "error"],
        )
        .expect("valid metric");
        let revocations = IntCounterVec::new(
            Opts::new(
                "valet_revocations_total",
                "Revocations recorded by valet, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let client_auth_failures = IntCounter::new(
            "valet_client_auth_failures_total",
            "Failed client authentications at the OAuth endpoints.",
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "valet_rate_limited_total",
                "Authentication attempts refused by the throttle, by key kind \
                 (client_source, source, username).",
            ),
            &["by"],
        )
        .expect("valid metric");
        let hash_queue_depth = IntGauge::new(
            "valet_password_hash_queue_depth",
            "Password-hash verifications waiting for a worker.",
        )
        .expect("valid metric");
        let hash_jobs = IntCounterVec::new(
            Opts::new(
                "valet_password_hash_jobs_total",
                "Password-hash verifications by outcome: match, mismatch, or refused \
                 (source_full, queue_full, deadline) or skipped (nobody waiting).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let throttle_keys = IntGauge::new(
            "valet_auth_throttle_keys",
            "Keys the authentication throttle holds, after its last prune.",
        )
        .expect("valid metric");
        let throttle_shared = IntGauge::new(
            "valet_auth_throttle_shared",
            "1 while failed attempts are shared with the other authorities through the \
             store (Redis); 0 while each falls back to its allowance divided by \
             expected_replicas, and on the embedded store, which has no channel.",
        )
        .expect("valid metric");
        let throttle_shared_records = IntCounterVec::new(
            Opts::new(
                "valet_auth_throttle_shared_records_total",
                "Attempts, refunds and sign-ins shared through the store: sent, received, \
                 dropped (queue full or store unreachable), or rejected (messages whose MAC \
                 did not verify: another fleet's key, or a forger).",
            ),
            &["direction"],
        )
        .expect("valid metric");
        for d in ["sent", "received", "dropped", "rejected"] {
            throttle_shared_records.with_label_values(&[d]);
        }
        let verified_secret_hits = IntCounter::new(
            "valet_verified_secret_hits_total",
            "Client-secret checks answered from the cache of verified argon2id secrets.",
        )
        .expect("valid metric");
        let by_provider = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["provider"]).expect("valid metric")
        };
        let oauth1_flows_started = by_provider(
            "valet_oauth1_flows_started_total",
            "OAuth 1.0 authorization flows started (request token obtained, user redirected).",
        );
        let oauth1_flows_completed = by_provider(
            "valet_oauth1_flows_completed_total",
            "OAuth 1.0 authorization flows completed (access token stored).",
        );
        let oauth1_flows_failed = IntCounterVec::new(
            Opts::new(
                "valet_oauth1_flows_failed_total",
                "OAuth 1.0 authorization flows that failed, by provider and reason.",
            ),
            &["provider", "reason"],
        )
        .expect("valid metric");
        let oauth1_signed = by_provider(
            "valet_oauth1_signed_requests_total",
            "Requests forwarded upstream signed with an OAuth 1.0 token.",
        );
        let oauth1_tokens_invalidated = IntCounterVec::new(
            Opts::new(
                "valet_oauth1_tokens_invalidated_total",
                "Users' OAuth 1.0 tokens the provider refused as such (oauth_problem token_revoked, token_rejected, token_expired or configured): marked invalid; the user is asked to authorize again.",
            ),
            &["provider", "problem"],
        )
        .expect("valid metric");
        let oauth1_consumer_problems = IntCounterVec::new(
            Opts::new(
                "valet_oauth1_consumer_problems_total",
                "Signed requests the provider refused for a reason that is not the user's token (signature_invalid, consumer_key_rejected, timestamp_refused, nonce_used, or a 401 with no oauth_problem: `none`): no token is touched. Alert on it: valet's consumer key, secret or clock is at fault.",
            ),
            &["provider", "problem"],
        )
        .expect("valid metric");
        let oauth1_upstream_unauthorized = by_provider(
            "valet_oauth1_upstream_unauthorized_total",
            "Signed requests the upstream answered 401 (the provider token may be revoked).",
        );
        for c in [
            Box::new(tokens_issued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(oauth1_flows_started.clone()),
            Box::new(oauth1_flows_completed.clone()),
            Box::new(oauth1_flows_failed.clone()),
            Box::new(oauth1_signed.clone()),
            Box::new(oauth1_upstream_unauthorized.clone()),
            Box::new(oauth1_tokens_invalidated.clone()),
            Box::new(oauth1_consumer_problems.clone()),
            Box::new(token_requests_failed.clone()),
            Box::new(revocations.clone()),
            Box::new(client_auth_failures.clone()),
            Box::new(rate_limited.clone()),
            Box::new(hash_queue_depth.clone()),
            Box::new(hash_jobs.clone()),
            Box::new(throttle_keys.clone()),
            Box::new(throttle_shared.clone()),
            Box::new(throttle_shared_records.clone()),
            Box::new(verified_secret_hits.clone()),
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(failures),
            Box::new(revocation_entries.clone()),
            Box::new(reloads.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(websockets_open.clone()),
            Box::new(upstream_pools.clone()),
            Box::new(store_seconds.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_position.clone()),
            Box::new(store_followed_at.clone()),
            Box::new(store_lag_seconds.clone()),
            Box::new(store_lag_entries.clone()),
            Box::new(store_generation_changes.clone()),
            Box::new(store_settings.clone()),
            Box::new(store_resyncs.clone()),
            Box::new(store_stale.clone()),
            Box::new(store_reconnects.clone()),
            Box::new(store_entries.clone()),
            Box::new(store_imported.clone()),
            Box::new(websocket_sessions.clone()),
            Box::new(jwks_stale.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(open_connections.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(client_errors.clone()),
            Box::new(connections_closed.clone()),
            Box::new(panics.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        for kind in ["config", "revocation", "tls"] {
            for result in ["success", "failure"] {
                reloads.with_label_values(&[kind, result]);
            }
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            token_failures,
            revocation_entries,
            reloads,
            jwks_fetches,
            websockets_open,
            upstream_pools,
            store_seconds,
            store_errors,
            store_position,
            store_followed_at,
            store_lag_seconds,
            store_lag_entries,
            store_generation_changes,
            store_settings,
            store_resyncs,
            store_stale,
            store_reconnects,
            store_entries,
            store_imported,
            websocket_sessions,
            jwks_stale,
            jwks_keys,
            tls_handshake_failures,
            client_errors,
            connections_closed,
            panics,
            open_connections,
            upstream_errors,
            tokens_issued,
            token_requests_failed,
            revocations,
            client_auth_failures,
            rate_limited,
            hash_queue_depth,
            hash_jobs,
            throttle_keys,
            throttle_shared,
            throttle_shared_records,
            verified_secret_hits,
            oauth1_flows_started,
            oauth1_flows_completed,
            oauth1_flows_failed,
            oauth1_signed,
            oauth1_upstream_unauthorized,
            oauth1_tokens_invalidated,
            oauth1_consumer_problems,
        }
    }

    pub fn oauth1_flow_failed(&self, provider: &str, reason: &str) {
        self.oauth1_flows_failed
            .with_label_values(&[provider, reason])
            .inc();
    }

    /// Resolves every handle of one route up front.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let mut requests = Vec::with_capacity(METHODS.len() * CLASSES.len());
        for m in METHODS {
            for c in CLASSES {
                requests.push(self.requests.with_label_values(&[route, m, c]));
            }
        }
        RouteMetrics {
            requests,
            duration: self.request_duration.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
        }
    }

    /// The metric handles of one trusted issuer's key set.
    pub fn key_set(&self, issuer: &str) -> crate::tokens::jwks::KeySetMetrics {
        let f = |r: &str| self.jwks_fetches.with_label_values(&[issuer, r]);
        crate::tokens::jwks::KeySetMetrics {
            fetched: f("success"),
            failed: f("failure"),
            limited: f("rate_limited"),
            stale: self.jwks_stale.with_label_values(&[issuer]),
            keys: self.jwks_keys.with_label_values(&[issuer]),
        }
    }

    #[inline]
    pub fn token_failure(&self, e: TokenError) {
        let i = TokenError::ALL
            .iter()
            .position(|x| *x == e)
            .expect("listed");
        self.token_failures[i].inc();
    }

    pub fn reload(&self, kind: &str, ok: bool) {
        self.reloads
            .with_label_values(&[kind, if ok { "success" } else { "failure" }])
            .inc();
    }

    pub fn client_error(&self, reason: &str) {
        self.client_errors.with_label_values(&[reason]).inc();
    }

    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed.with_label_values(&[reason]).inc();
    }

    pub fn upstream_error(&self, route: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[route, kind]).inc();
    }

    pub fn set_revocation_sizes(
        &self,
        (jtis, clients, subjects, families): (usize, usize, usize, usize),
    ) {
        self.revocation_entries
            .with_label_values(&["family"])
            .set(families as i64);
        self.revocation_entries
            .with_label_values(&["token"])
            .set(jtis as i64);
        self.revocation_entries
            .with_label_values(&["client"])
            .set(clients as i64);
        self.revocation_entries
            .with_label_values(&["subject"])
            .set(subjects as i64);
    }

    /// One state store call: its time, and whether it failed.
    pub fn store_call(&self, op: &str, took: std::time::Duration, ok: bool) {
        self.store_seconds
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[op]).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
