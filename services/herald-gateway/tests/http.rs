//! The HTTP API driven with `oneshot`, over the real embedded log and projection.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use herald_embedded::{EmbeddedLog, EmbeddedProjection};
use herald_gateway::{AppState, AuthConfig, GatewayConfig, MAX_BODY_BYTES, app};
use herald_ports::prelude::*;
use herald_ports::{EventLog, Stage, Topic};
use herald_projector::Projector;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod common;

struct Env {
    _dir: tempfile::TempDir,
    state: AppState,
    store: Arc<EmbeddedProjection>,
    log: Arc<EmbeddedLog>,
}

fn dev_config() -> GatewayConfig {
    GatewayConfig {
        auth: AuthConfig {
            hs256_secret: Some(b"http-test".to_vec()),
            dev_login: true,
            open_producers: true,
            open_operators: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn env() -> Env {
    env_with(dev_config()).await
}

async fn env_with(config: GatewayConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (ports, log, store) = common::embedded(dir.path()).await;
    let state = AppState::start(ports, config, CancellationToken::new())
        .await
        .unwrap();
    Env {
        _dir: dir,
        state,
        store,
        log,
    }
}

async fn call(env: &Env, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app(env.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("body is not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

fn post(body: impl Into<Body>, key: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/v1/notifications").header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(body.into()).unwrap()
}

fn valid() -> Value {
    json!({
        "recipients": {"users": ["alice"]},
        "event_type": "approval.requested",
        "source": "tests",
        "data": {"amount": 42},
    })
}

/// A valid request's body with these fields set (added or replaced).
fn valid_with<const N: usize>(fields: [(&str, Value); N]) -> String {
    let mut v = valid();
    for (name, value) in fields {
        v[name] = value;
    }
    v.to_string()
}

async fn dev_token(env: &Env, user: &str) -> String {
    let req = Request::post("/v1/dev/token")
        .header("content-type", "application/json")
        .body(Body::from(json!({"user_id": user}).to_string()))
        .unwrap();
    let (_, body) = call(env, req).await;
    body["token"].as_str().unwrap().to_owned()
}

fn get(uri: &str, token: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// The projector of `env`'s stores, running until the token is cancelled.
fn run_projector(env: &Env) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let projector = Projector::new(env.log.clone(), env.store.clone());
    let token = stop.clone();
    (
        stop,
        tokio::spawn(async move { projector.run(token).await.unwrap() }),
    )
}

/// `GET /v1/audit/{id}` (the dev config's operator endpoints are open).
async fn get_audit(env: &Env, id: &str) -> (StatusCode, Value) {
    call(
        env,
        Request::get(format!("/v1/audit/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// The `event` of each entry of an audit answer, in its order.
fn audit_events(audit: &Value) -> Vec<&str> {
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn accepted_with_the_same_id_on_retry() {
    let env = env().await;
    let (s1, b1) = call(&env, post(valid().to_string(), Some("k-1"))).await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{b1}");
    let (s2, b2) = call(&env, post(valid().to_string(), Some("k-1"))).await;
    assert_eq!(s2, StatusCode::ACCEPTED);
    assert_eq!(b1["notification_id"], b2["notification_id"]);
    let (_, b3) = call(&env, post(valid().to_string(), Some("k-2"))).await;
    assert_ne!(b1["notification_id"], b3["notification_id"]);
    // The key may be given in the body instead.
    let mut with_key = valid();
    with_key["idempotency_key"] = json!("k-1");
    let (_, b4) = call(&env, post(with_key.to_string(), None)).await;
    assert_eq!(b1["notification_id"], b4["notification_id"]);
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_stable_code() {
    let env = env().await;
    let alice = dev_token(&env, "alice").await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("{not json", None),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(json!({"recipients": "alice"}).to_string(), None),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json_shape",
        ),
        // JSON a parser cannot hold in `data`: a number out of range, a lone surrogate,
        // nesting past serde_json's limit.
        (
            post(
                valid()
                    .to_string()
                    .replacen(r#""data":{"#, r#""data":{"n":1e400,"#, 1),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(
                valid()
                    .to_string()
                    .replacen(r#""data":{"#, r#""data":{"s":"\ud800","#, 1),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(
                valid().to_string().replacen(
                    r#""data":{"#,
                    &format!(r#""data":{{"deep":{}{},"#, "[".repeat(200), "]".repeat(200)),
                    1,
                ),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            post(valid_with([("surprise", json!(1))]), None),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json_shape",
        ),
        (
            Request::post("/v1/notifications")
                .body(Body::from(valid().to_string()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(
                valid_with([("data", json!("x".repeat(MAX_BODY_BYTES)))]),
                None,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            post(valid_with([("data", json!("x".repeat(70_000)))]), None),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(valid_with([("recipients", json!({}))]), None),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(
                valid_with([("recipients", json!({"users": ["bad user"]}))]),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(valid_with([("priority", json!("asap"))]), None),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(valid_with([("deliver_at", json!("tomorrow"))]), None),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(
                valid_with([("deliver_at", json!(2000)), ("expires_at", json!(1000))]),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(valid_with([("idempotency_key", json!("a"))]), Some("b")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            post(valid().to_string(), Some("has space")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::get("/v1/inbox").body(Body::empty()).unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            get("/v1/inbox", "not-a-token"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            get("/v1/inbox?filter=spam", &alice),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/v1/inbox?limit=0", &alice),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/v1/inbox?before=-1", &alice),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/v1/inbox?user_id=bob", &alice),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::get("/v1/inbox/unread-count")
                .body(Body::empty())
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Request::post("/v1/inbox/read")
                .header("authorization", format!("Bearer {alice}"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::post("/v1/dev/token")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"user_id":"bad id"}"#))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Request::get("/nope").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::delete("/v1/notifications")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (req, status, expected) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, body) = call(&env, req).await;
        assert_eq!((s, code(&body)), (status, expected), "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Nothing was appended by any of them.
    let end = {
        use herald_ports::log::{EventLog, Topic};
        let mut n = 0;
        for p in 0..env.log.partitions(Topic::Requests) {
            n += env.log.end_offset(Topic::Requests, p).await.unwrap();
        }
        n
    };
    assert_eq!(end, 0);
}

/// A request without a key gets a generated one (`herald:` and a UUIDv7) and a UUIDv7 id with
/// that time. Sent back as the key, it is the same notification: the same id, one row, and
/// the audit shows both requests and one expansion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_makes_a_time_ordered_id_and_retries_safely() {
    let env = env().await;
    let (stop, task) = run_projector(&env);
    let (s, first) = call(&env, post(valid().to_string(), None)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    let key = first["idempotency_key"].as_str().unwrap().to_owned();
    let id = first["notification_id"].as_str().unwrap().to_owned();
    let key_uuid = key
        .strip_prefix("herald:")
        .and_then(|k| uuid::Uuid::parse_str(k).ok())
        .unwrap_or_else(|| panic!("a generated key is herald: and a UUID: {key}"));
    assert_eq!(key_uuid.get_version_num(), 7, "{key}");
    let id_uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(id_uuid.get_version_num(), 7, "{id}");
    assert_eq!(id_uuid.get_timestamp(), key_uuid.get_timestamp());
    let (s, again) = call(&env, post(valid().to_string(), Some(&key))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["notification_id"], id.as_str());
    assert_ne!(
        again["offset"], first["offset"],
        "appended again, expanded once"
    );
    let (_, other) = call(&env, post(valid().to_string(), None)).await;
    assert_ne!(other["idempotency_key"], key.as_str());
    assert_ne!(other["notification_id"], id.as_str());

    // Wait until the fanout has passed the retry (its partition's offset beyond it) and the
    // inbox stage has folded what the fanout appended.
    let (partition, offset) = (
        again["partition"].as_u64().unwrap() as u32,
        again["offset"].as_u64().unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fanout = env.store.consumer_offsets(Stage::Fanout).await.unwrap();
        let inbox = env.store.consumer_offsets(Stage::Inbox).await.unwrap();
        let mut folded = true;
        for p in 0..env.log.partitions(Topic::UserEvents) {
            let end = env.log.end_offset(Topic::UserEvents, p).await.unwrap();
            folded &= inbox.get(&p).copied().unwrap_or(0) >= end;
        }
        if fanout.get(&partition).is_some_and(|o| *o > offset) && folded {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alice = dev_token(&env, "alice").await;
    let (_, inbox) = call(&env, get("/v1/inbox", &alice)).await;
    let ids: Vec<&str> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().filter(|i| **i == id).count(),
        1,
        "one row: {inbox}"
    );
    let (_, audit) = get_audit(&env, &id).await;
    let mut events = audit_events(&audit);
    // In log order: the retry may come before or after the expansion.
    events.sort_unstable();
    assert_eq!(events, vec!["added", "requested", "requested"]);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_notification_shows_in_the_inbox_and_the_audit() {
    let env = env().await;
    let (stop, task) = run_projector(&env);
    let (_, accepted) = call(&env, post(valid().to_string(), Some("inbox-1"))).await;
    let id = accepted["notification_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env.store.row("alice", &id).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alice = dev_token(&env, "alice").await;
    let (s, inbox) = call(&env, get("/v1/inbox", &alice)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(inbox["unread_count"], 1);
    assert_eq!(inbox["items"][0]["id"], id.as_str());
    assert_eq!(inbox["items"][0]["data"]["amount"], 42);
    assert!(inbox["items"][0]["cursor"].as_str().unwrap().contains('-'));
    let bob = dev_token(&env, "bob").await;
    let (_, other) = call(&env, get("/v1/inbox", &bob)).await;
    assert_eq!(
        other["items"].as_array().unwrap().len(),
        0,
        "bob sees nothing of alice's"
    );
    let (s, audit) = get_audit(&env, &id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(audit["subject"], "notification");
    let events = audit_events(&audit);
    assert_eq!(events, vec!["requested", "added"]);
    stop.cancel();
    task.await.unwrap();
}

/// Paging back through the inbox: `next_before` names a next page only when there is one, so
/// the last page has none, whether it is short or exactly full.
#[tokio::test]
async fn the_inbox_pages_back_and_its_last_page_names_no_next() {
    let env = env().await;
    let (stop, task) = run_projector(&env);
    let mut ids = Vec::new();
    for i in 0..4 {
        let (_, accepted) = call(&env, post(valid().to_string(), Some(&format!("page-{i}")))).await;
        ids.push(accepted["notification_id"].as_str().unwrap().to_owned());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env.store.row("alice", &ids[3]).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alice = dev_token(&env, "alice").await;
    for (limit, pages) in [(2, vec![2, 2]), (3, vec![3, 1]), (4, vec![4]), (5, vec![4])] {
        let (mut seen, mut before) = (Vec::new(), None::<u64>);
        for (n, expected) in pages.iter().enumerate() {
            let uri = match before {
                Some(b) => format!("/v1/inbox?limit={limit}&before={b}"),
                None => format!("/v1/inbox?limit={limit}"),
            };
            let (s, page) = call(&env, get(&uri, &alice)).await;
            assert_eq!(s, StatusCode::OK);
            let items = page["items"].as_array().unwrap();
            assert_eq!(items.len(), *expected, "limit {limit}, page {n}");
            seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
            let last = n + 1 == pages.len();
            assert_eq!(
                page["next_before"].is_null(),
                last,
                "limit {limit}, page {n}"
            );
            before = page["next_before"].as_u64();
        }
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, newest_first, "limit {limit}");
    }
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_producer_over_its_rate_gets_429_with_retry_after() {
    let env = env_with(GatewayConfig {
        auth: AuthConfig {
            producer_keys: [("key-billing".to_string(), "billing".to_string())].into(),
            ..Default::default()
        },
        producer_rate: 0.5,
        producer_burst: 2.0,
        ..Default::default()
    })
    .await;
    let keyed = |key: &str| {
        Request::post("/v1/notifications")
            .header("content-type", "application/json")
            .header("x-api-key", "key-billing")
            .header("idempotency-key", key)
            .body(Body::from(valid().to_string()))
            .unwrap()
    };
    assert_eq!(call(&env, keyed("a")).await.0, StatusCode::ACCEPTED);
    assert_eq!(call(&env, keyed("b")).await.0, StatusCode::ACCEPTED);
    let resp = app(env.state.clone()).oneshot(keyed("c")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(code(&body), "rate_limited");
    // A batch larger than the bucket could never pass, whatever the wait: 400, not 429.
    let batch = Request::post("/v1/notifications/batch")
        .header("content-type", "application/json")
        .header("x-api-key", "key-billing")
        .body(Body::from(
            serde_json::json!({"notifications": [valid(), valid(), valid()]}).to_string(),
        ))
        .unwrap();
    let (s, body) = call(&env, batch).await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    assert!(body.to_string().contains("smaller batches"), "{body}");
    // Without credentials (producers are not open here): 401. With a user token: not a producer.
    let anon = Request::post("/v1/notifications")
        .header("content-type", "application/json")
        .body(Body::from(valid().to_string()))
        .unwrap();
    let (s, body) = call(&env, anon).await;
    assert_eq!((s, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // A producer-scoped JWT produces as its subject; a user token may not produce.
    let env2 = env_with(GatewayConfig {
        auth: AuthConfig {
            hs256_secret: Some(b"s".to_vec()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let jwt = |scope: Option<&str>| {
        let mut claims = json!({"sub": "billing", "exp": herald_gateway::auth::now_secs() + 600});
        if let Some(s) = scope {
            claims["scope"] = json!(s);
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s"),
        )
        .unwrap()
    };
    let with_token = |t: String| {
        Request::post("/v1/notifications")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {t}"))
            .body(Body::from(valid().to_string()))
            .unwrap()
    };
    let (s, body) = call(&env2, with_token(jwt(Some("produce")))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["notification_id"],
        herald_core::ids::notification_id("billing", body["idempotency_key"].as_str().unwrap())
    );
    let (s, body) = call(&env2, with_token(jwt(None))).await;
    assert_eq!((s, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let wrong = Request::post("/v1/notifications")
        .header("content-type", "application/json")
        .header("x-api-key", "nope")
        .body(Body::from(valid().to_string()))
        .unwrap();
    assert_eq!(call(&env, wrong).await.0, StatusCode::UNAUTHORIZED);
}

fn post_json(uri: &str, token: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Read-your-writes: a read with `after` waits for the projection to apply that cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_after_waits_for_the_projection() {
    let env = env_with(GatewayConfig {
        read_after_wait: Duration::from_millis(300),
        ..dev_config()
    })
    .await;
    let (stop, task) = run_projector(&env);
    let (_, accepted) = call(&env, post(valid().to_string(), Some("after-1"))).await;
    let id = accepted["notification_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env.store.row("alice", &id).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop the projector: a mark is now durable in the log but not in the projection.
    stop.cancel();
    task.await.unwrap();
    let alice = dev_token(&env, "alice").await;
    let (s, marked) = call(
        &env,
        post_json("/v1/inbox/read", &alice, json!({"ids": [id]})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{marked}");
    let cursor = marked["cursor"].as_str().unwrap().to_owned();
    let uri = format!("/v1/inbox/unread-count?after={cursor}");
    let (s, stale) = call(&env, get(&uri, &alice)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            stale["consistent"].as_bool(),
            stale["unread_count"].as_u64()
        ),
        (Some(false), Some(1)),
        "the projection has not applied the mark, and the answer says so"
    );
    let (_, plain) = call(&env, get("/v1/inbox/unread-count", &alice)).await;
    assert_eq!(plain["consistent"], true, "no after, nothing to wait for");
    // Start the projector again while the read waits: the answer includes the mark.
    let stop = CancellationToken::new();
    let projector = Projector::new(env.log.clone(), env.store.clone());
    let token = stop.clone();
    let waiting = {
        let state = env.state.clone();
        let req = get(&format!("/v1/inbox?after={cursor}"), &alice);
        tokio::spawn(async move { app(state).oneshot(req).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let task = tokio::spawn(async move { projector.run(token).await.unwrap() });
    let resp = waiting.await.unwrap();
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["consistent"], true, "{body}");
    assert_eq!(body["unread_count"], 0, "{body}");
    assert_eq!(body["items"][0]["read"], true, "{body}");
    // A cursor that does not parse, or is of another epoch, is a 400.
    let (s, bad) = call(&env, get("/v1/inbox/unread-count?after=nope", &alice)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    let epoch = u32::from_str_radix(&cursor[..8], 16).unwrap();
    let other_epoch = format!("/v1/inbox/unread-count?after={:08x}-5", epoch ^ 1);
    let (s, other) = call(&env, get(&other_epoch, &alice)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{other}");
    stop.cancel();
    task.await.unwrap();
}

fn post_batch(body: Value) -> Request<Body> {
    Request::post("/v1/notifications/batch")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_batch_is_accepted_whole_in_order_with_per_item_keys() {
    let env = env().await;
    let item = |key: &str, user: &str| {
        let mut v = valid();
        v["idempotency_key"] = json!(key);
        v["recipients"] = json!({"users": [user]});
        v
    };
    let (s, b) = call(
        &env,
        post_batch(
            json!({"notifications": [item("b-1", "ann"), item("b-2", "bob"), item("b-3", "cy")]}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let accepted = b["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 3);
    let keys: Vec<&str> = accepted
        .iter()
        .map(|a| a["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b-1", "b-2", "b-3"], "answers in request order");
    assert_eq!(
        request_records(&env).await,
        3,
        "one record per notification"
    );
    // The same key through the single endpoint is the same notification.
    let (_, single) = call(&env, post(item("b-2", "bob").to_string(), None)).await;
    assert_eq!(single["notification_id"], accepted[1]["notification_id"]);
}

async fn request_records(env: &Env) -> usize {
    use herald_ports::EventLog;
    let mut n = 0;
    for p in 0..env.log.partitions(herald_ports::Topic::Requests) {
        n += env
            .log
            .read(herald_ports::Topic::Requests, p, 0, 10_000)
            .await
            .unwrap()
            .len();
    }
    n
}

#[tokio::test]
async fn a_batch_with_one_bad_item_appends_nothing() {
    let env = env().await;
    let mut bad = valid();
    bad["event_type"] = json!("");
    let cases = [
        (json!({"notifications": [valid(), bad]}), "notifications[1]"),
        (json!({"notifications": []}), "1 to 1000"),
        (json!({"notifications": vec![valid(); 1001]}), ""),
        (
            json!({"notifications": [
                {"idempotency_key": "same", "recipients": {"users": ["a"]}, "event_type": "t", "source": "s"},
                {"idempotency_key": "same", "recipients": {"users": ["b"]}, "event_type": "t", "source": "s"},
            ]}),
            "repeats",
        ),
        (json!({"items": [valid()]}), ""),
    ];
    for (body, message) in cases {
        let (s, b) = call(&env, post_batch(body)).await;
        assert!(s.is_client_error(), "{s} {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(message),
            "{b}"
        );
    }
    assert_eq!(request_records(&env).await, 0, "nothing appended");
}

#[tokio::test]
async fn a_batch_over_the_rate_takes_no_tokens() {
    let env = env_with(GatewayConfig {
        producer_rate: 0.001,
        producer_burst: 3.0,
        ..dev_config()
    })
    .await;
    let (s, b) = call(
        &env,
        post_batch(json!({"notifications": [valid(), valid()]})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    // One token left: a batch of two is refused whole.
    let (s, b) = call(
        &env,
        post_batch(json!({"notifications": [valid(), valid()]})),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    let (s, b) = call(&env, post_batch(json!({"notifications": [valid()]}))).await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "the refused batch took no token: {b}"
    );
    assert_eq!(request_records(&env).await, 3);
}

#[tokio::test]
async fn times_outside_the_documented_range_are_refused_and_old_ones_still_read() {
    let env = env().await;
    for field in ["expires_at", "deliver_at"] {
        for bad in [
            json!(253_402_300_800_000i64),
            json!(1i64 << 62),
            json!(i64::MAX),
            // Whole numbers that fit in 64 bits, past `i64`: out of range too, not of the
            // wrong type.
            json!(1u64 << 63),
            json!(u64::MAX),
            json!(-1),
            json!("10000-01-01T00:00:00Z"),
        ] {
            let mut body = valid();
            body[field] = bad.clone();
            let (s, b) = call(&env, post(body.to_string(), None)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{field} = {bad}: {b}");
            assert_eq!(code(&b), "invalid_request");
            assert!(
                b["error"]["message"].as_str().unwrap().contains(field),
                "{b}"
            );
        }
    }
    // A row written before this check existed, with an expiry in year 292 million, still
    // reads: its time is shown as the latest RFC 3339 can write.
    let added = herald_core::model::UserEvent::Added(herald_core::model::NotificationAdded {
        user_id: "alice".into(),
        notification_id: "old-far-future".into(),
        event_type: "t".into(),
        source: "s".into(),
        payload: "{}".into(),
        priority: Default::default(),
        collapse_key: None,
        deliver_at: None,
        expires_at: Some(i64::MAX),
        created_at: i64::MAX,
        traceparent: None,
        delivery: herald_core::model::Delivery::Live,
    });
    let record = herald_ports::records::user_event_record(
        &added,
        env.log.partitions(herald_ports::Topic::UserEvents),
        0,
    )
    .unwrap();
    use herald_ports::EventLog;
    env.log
        .append(herald_ports::Topic::UserEvents, vec![record])
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let projector = Projector::new(env.log.clone(), env.store.clone());
    let token = stop.clone();
    let task = tokio::spawn(async move { projector.run_inbox(token).await.unwrap() });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env
        .store
        .row("alice", "old-far-future")
        .await
        .unwrap()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alice = dev_token(&env, "alice").await;
    let (s, inbox) = call(&env, get("/v1/inbox", &alice)).await;
    assert_eq!(s, StatusCode::OK, "{inbox}");
    assert_eq!(inbox["items"][0]["expires_at"], "9999-12-31T23:59:59.999Z");
    assert_eq!(inbox["items"][0]["created_at"], "9999-12-31T23:59:59.999Z");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_answers_500_with_the_error_body() {
    async fn boom() -> String {
        panic!("boom")
    }
    let router = herald_gateway::routes::outer_layers(
        axum::Router::new().route("/boom", axum::routing::get(boom)),
    );
    let resp = router
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(code(&body), "internal_error");
}

fn operator_config() -> GatewayConfig {
    let mut c = dev_config();
    c.auth.dev_login = false;
    c.auth.open_operators = false;
    c.auth.admin_keys = [("k-admin".to_string(), "ops".to_string())].into();
    c
}

fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"http-test"),
    )
    .unwrap()
}

#[tokio::test]
async fn operator_endpoints_need_operator_credentials() {
    let env = env_with(operator_config()).await;
    let exp = herald_gateway::auth::now_secs() + 600;
    let user = jwt(json!({"sub": "alice", "exp": exp}));
    let admin_jwt = jwt(json!({"sub": "oncall", "exp": exp, "scope": "admin"}));
    for uri in ["/v1/status", "/v1/presence", "/metrics", "/v1/audit/alice"] {
        let anon = Request::get(uri).body(Body::empty()).unwrap();
        let (s, b) = call(&env, anon).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{uri} without credentials: {b}"
        );
        assert_eq!(code(&b), "unauthorized");
        let (s, b) = call(&env, get(uri, &user)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri} with a user token: {b}");
        let wrong = Request::get(uri)
            .header("x-api-key", "nope")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&env, wrong).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        for allowed in [
            Request::get(uri)
                .header("x-api-key", "k-admin")
                .body(Body::empty())
                .unwrap(),
            get(uri, &admin_jwt),
        ] {
            let resp = app(env.state.clone()).oneshot(allowed).await.unwrap();
            // No metrics recorder in this test: /metrics is 404 once past the check.
            let want = if uri == "/metrics" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            assert_eq!(resp.status(), want, "{uri} as an operator");
        }
    }
}

#[tokio::test]
async fn an_audit_reads_within_its_budget_and_operators_are_rate_limited() {
    let env = env_with(operator_config()).await;
    for k in 0..5 {
        let (s, _) = call(
            &env,
            post(valid().to_string(), Some(&format!("budget-{k}"))),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let audit = |q: &str| {
        Request::get(format!("/v1/audit/alice{q}"))
            .header("x-api-key", "k-admin")
            .body(Body::empty())
            .unwrap()
    };
    let (s, whole) = call(&env, audit("")).await;
    assert_eq!(s, StatusCode::OK, "{whole}");
    assert_eq!(whole["complete"], true);
    let (s, cut) = call(&env, audit("?max_records=2")).await;
    assert_eq!(s, StatusCode::OK, "{cut}");
    assert_eq!(cut["complete"], false, "{cut}");
    assert!(cut["scanned_records"].as_u64().unwrap() <= 2, "{cut}");
    let (s, b) = call(&env, audit("?max_records=0")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // The burst is 5 audits; the sixth within the second is refused (the refused one above
    // took none).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&env, audit("")).await.0);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn ticket_minting_is_rate_limited_and_never_costs_another_user_a_ticket() {
    let env = env().await;
    let mint = |user: &str| {
        let exp = herald_gateway::auth::now_secs() + 600;
        Request::post("/v1/ws-ticket")
            .header(
                "authorization",
                format!("Bearer {}", jwt(json!({"sub": user, "exp": exp}))),
            )
            .body(Body::empty())
            .unwrap()
    };
    let (s, bob) = call(&env, mint("bob")).await;
    assert_eq!(s, StatusCode::OK, "{bob}");
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.push(call(&env, mint("mallory")).await.0);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // The burst (20), and whatever refilled at 5/s while the calls ran.
    assert!(ok >= 20, "{ok} of 100 minted");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "minting is rate-limited: {ok} of 100 minted"
    );
    // Bob's ticket is still good: the realtime layer accepts it (and the handler then wants a
    // WebSocket upgrade; a request refused so opens no connection and does not spend the
    // ticket, which tests/ws_edges.rs follows to its single use). Another ticket is not.
    let redeem = |ticket: &str| {
        Request::get(format!("/v1/ws?ticket={ticket}"))
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..2 {
        let (s, b) = call(&env, redeem(bob["ticket"].as_str().unwrap())).await;
        assert_eq!(code(&b), "subprotocol_required", "{s} {b}");
    }
    let (s, b) = call(&env, redeem("not-a-ticket")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
}

#[tokio::test]
async fn tokens_are_checked_for_nbf_and_for_the_configured_audience_and_issuer() {
    let now = herald_gateway::auth::now_secs();
    let exp = now + 600;
    async fn status(env: &Env, claims: Value) -> StatusCode {
        call(env, get("/v1/inbox/unread-count", &jwt(claims)))
            .await
            .0
    }
    // Nothing configured: nbf is checked, aud and iss are not.
    let open = env().await;
    assert_eq!(
        status(&open, json!({"sub": "a", "exp": exp, "nbf": now + 300})).await,
        StatusCode::UNAUTHORIZED,
        "not valid yet"
    );
    assert_eq!(
        status(&open, json!({"sub": "a", "exp": exp, "nbf": now - 1})).await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &open,
            json!({"sub": "a", "exp": exp, "aud": "anything", "iss": "idp"})
        )
        .await,
        StatusCode::OK,
        "an identity provider's token carries aud and iss"
    );
    // A critical header extension this server does not understand (RFC 7515 4.1.11).
    let claims = json!({"sub": "a", "exp": exp});
    let critical = jsonwebtoken::Header {
        crit: Some(vec!["exp-ext".into()]),
        ..Default::default()
    };
    let token = jsonwebtoken::encode(
        &critical,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"http-test"),
    )
    .unwrap();
    let (s, b) = call(&open, get("/v1/inbox/unread-count", &token)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(b.to_string().contains("crit"), "{b}");
    // The scheme in any case (RFC 9110 11.1).
    let lower = Request::get("/v1/inbox/unread-count")
        .header("authorization", format!("bearer {}", jwt(claims)))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&open, lower).await.0, StatusCode::OK);
    // Audience and issuer configured: both required and matched.
    let mut c = dev_config();
    c.auth.audiences = vec!["herald".into()];
    c.auth.issuers = vec!["https://idp.example".into()];
    let strict = env_with(c).await;
    let good = json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "https://idp.example"});
    assert_eq!(status(&strict, good.clone()).await, StatusCode::OK);
    for (claim, bad) in [
        ("aud", json!("other")),
        ("aud", Value::Null),
        ("iss", json!("https://evil.example")),
        ("iss", Value::Null),
    ] {
        let mut claims = good.clone();
        if bad.is_null() {
            claims.as_object_mut().unwrap().remove(claim);
        } else {
            claims[claim] = bad.clone();
        }
        assert_eq!(
            status(&strict, claims).await,
            StatusCode::UNAUTHORIZED,
            "{claim} = {bad}"
        );
    }
}

#[tokio::test]
async fn arrays_where_objects_are_documented_and_unknown_recipient_fields_are_422() {
    let env = env().await;
    let alice = dev_token(&env, "alice").await;
    let positional = json!([{"users": ["alice"]}, "t", "s", {}, null, null, null, null, "k"]);
    let cases = vec![
        post(positional.to_string(), None),
        post(
            json!({"recipients": {"evryone": true}, "event_type": "t", "source": "s"}).to_string(),
            None,
        ),
        post(
            json!({"recipients": [["alice"]], "event_type": "t", "source": "s"}).to_string(),
            None,
        ),
        post_batch(json!({"notifications": [["x"]]})),
        post_batch(json!([[]])),
        post_json("/v1/inbox/read", &alice, json!([["id"], null, "laptop"])),
        post_json("/v1/ack", &alice, json!(["d", ["id"], null])),
    ];
    for req in cases {
        let what = req.uri().to_string();
        let (s, b) = call(&env, req).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {b}");
        assert_eq!(code(&b), "invalid_json_shape", "{what}: {b}");
    }
    assert_eq!(request_records(&env).await, 0, "nothing was accepted");
}

#[tokio::test]
async fn the_demo_and_the_browser_client_are_served_with_a_content_security_policy() {
    let env = env().await;
    for path in [
        "/",
        "/demo.js",
        "/demo.css",
        "/herald.js",
        "/favicon.svg",
        "/favicon.ico",
    ] {
        let resp = app(env.state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
    // The page itself has no inline script or style for the policy to allow.
    let page = include_str!("../web/index.html");
    assert!(!page.contains("<style"), "styles live in /demo.css");
    assert!(
        page.matches("<script").count() == page.matches("<script type=\"module\" src=").count(),
        "scripts are files"
    );
    let demo = include_str!("../web/demo.js");
    assert!(
        !demo.contains("innerHTML") && !demo.contains("insertAdjacentHTML"),
        "the demo builds its DOM from text"
    );
}

/// Unarchive: `POST /v1/inbox/unarchive` brings an archived notification back to the inbox
/// (through the log and the projector, like the other marks), and takes no `up_to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unarchive_brings_a_notification_back_to_the_inbox() {
    let env = env().await;
    let (stop, task) = run_projector(&env);
    let (_, accepted) = call(&env, post(valid().to_string(), Some("unarchive-1"))).await;
    let id = accepted["notification_id"].as_str().unwrap().to_owned();
    // Marks act on rows that exist: wait until the projector has expanded the request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.store.row("alice", &id).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alice = dev_token(&env, "alice").await;
    // Reads below pass each change's cursor as `after`, so they include it.
    let page = |filter: &str, after: &str| {
        get(&format!("/v1/inbox?filter={filter}&after={after}"), &alice)
    };
    let ids = |b: &Value| -> Vec<String> {
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, archived) = call(
        &env,
        post_json("/v1/inbox/archive", &alice, json!({"ids": [id]})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{archived}");
    let after = archived["cursor"].as_str().unwrap().to_owned();
    let (_, inbox) = call(&env, page("inbox", &after)).await;
    assert_eq!(inbox["consistent"], true, "{inbox}");
    assert!(
        ids(&inbox).is_empty(),
        "archived: not in the inbox: {inbox}"
    );
    let (_, arch) = call(&env, page("archived", &after)).await;
    assert_eq!(ids(&arch), vec![id.clone()], "{arch}");

    let (s, back) = call(
        &env,
        post_json(
            "/v1/inbox/unarchive",
            &alice,
            json!({"ids": [id], "device_id": "laptop"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{back}");
    let after = back["cursor"].as_str().unwrap().to_owned();
    let (_, inbox) = call(&env, page("inbox", &after)).await;
    assert_eq!(inbox["consistent"], true, "{inbox}");
    assert_eq!(
        ids(&inbox),
        vec![id.clone()],
        "unarchived: back in the inbox: {inbox}"
    );
    assert_eq!(inbox["items"][0]["archived"], false, "{inbox}");
    assert_eq!(
        inbox["unread_count"], 1,
        "still unread, so counted again: {inbox}"
    );
    let (_, arch) = call(&env, page("archived", &after)).await;
    assert!(ids(&arch).is_empty(), "{arch}");

    // Like unread and archive, it names ids and takes no up_to.
    let (s, b) = call(
        &env,
        post_json("/v1/inbox/unarchive", &alice, json!({"up_to": after})),
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{b}"
    );
    let (s, b) = call(&env, post_json("/v1/inbox/unarchive", &alice, json!({}))).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{b}"
    );
    stop.cancel();
    task.await.unwrap();
}

/// The gateway serves the npm package's file itself at /herald.js: one file, no copy to drift.
#[tokio::test]
async fn herald_js_is_the_npm_package_file() {
    let env = env().await;
    let resp = app(env.state.clone())
        .oneshot(Request::get("/herald.js").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served = resp.into_body().collect().await.unwrap().to_bytes();
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../clients/js/herald.js"
    ))
    .unwrap();
    assert_eq!(
        served.as_ref(),
        file.as_slice(),
        "/herald.js is clients/js/herald.js"
    );
    let pkg: Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../clients/js/package.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(pkg["type"], "module", "{pkg}");
    assert_eq!(pkg["exports"]["."]["default"], "./herald.js", "{pkg}");
    assert_eq!(pkg["types"], "./herald.d.ts", "{pkg}");
}

#[tokio::test]
async fn json_bodies_parse_alike_whatever_the_content_types_spelling() {
    let env = env().await;
    for content_type in [
        "application/json",
        "APPLICATION/JSON",
        "application/json; charset=utf-8",
    ] {
        let req = |body: String| {
            Request::post("/v1/notifications")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap()
        };
        let (status, body) = call(&env, req(valid().to_string())).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{content_type}: {body}");
        // A shape error names the field where it is, on either path.
        let (status, body) = call(&env, req(json!({"recipients": "alice"}).to_string())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{content_type}");
        assert_eq!(code(&body), "invalid_json_shape");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("recipients"), "{content_type}: {message}");
    }
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_json_400() {
    let env = env().await;
    for req in [
        Request::put("/v1/users/%FF")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap(),
        Request::put("/v1/groups/g/members/%C3%28")
            .body(Body::empty())
            .unwrap(),
        Request::get("/v1/audit/%FF").body(Body::empty()).unwrap(),
    ] {
        let uri = req.uri().to_string();
        // `call` fails unless the body is JSON.
        let (status, body) = call(&env, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(code(&body), "invalid_request", "{uri}: {body}");
    }
}
