//! Routes and handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::cursor::Cursor;
use herald_core::ids::{notification_id, validate_id};
use herald_core::model::{MarkChange, UserEvent};
use herald_core::model::{NotificationRequest, Priority, Recipients, RequestRecord};
use herald_core::projection::InboxRow;
use herald_core::protocol::{MAX_FRAME_BYTES, MAX_IDS_PER_FRAME, SUBPROTOCOL};
use herald_ports::log::{EventLog, Topic};
use herald_ports::projection::{InboxFilter, InboxQuery, MAX_PAGE, ProjectionStore};
use herald_ports::records::request_record;
use herald_ports::telemetry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::AppError;
use crate::auth::{Auth, User};
use crate::config::GatewayConfig;
use crate::hub::Hub;

/// Largest request body accepted, in bytes (413 beyond).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Default inbox page size.
const DEFAULT_PAGE: usize = 50;

/// Shared state of the HTTP and WebSocket app.
#[derive(Clone)]
pub struct AppState {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ProjectionStore>,
    /// Renders the Prometheus exposition, when a recorder is installed.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    pub auth: Arc<Auth>,
    pub hub: Arc<Hub>,
    pub config: Arc<GatewayConfig>,
    pub limits: Arc<Limits>,
    /// Cancelled on shutdown: sessions close with 1001 going away.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// Builds the state and starts the live hub (which tails the log until `shutdown`).
    pub async fn start(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ProjectionStore>,
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Result<AppState, String> {
        let auth = Auth::new(&config.auth)?;
        let hub = Hub::start(log.clone(), shutdown.clone())
            .await
            .map_err(|e| format!("starting the live hub: {e}"))?;
        Ok(AppState {
            log,
            store,
            metrics: None,
            auth: Arc::new(auth),
            hub,
            limits: Arc::new(Limits::new(&config)),
            config: Arc::new(config),
            shutdown,
        })
    }
}

/// Most producers whose rate-limit buckets are remembered; beyond, idle buckets are dropped.
const MAX_PRODUCER_BUCKETS: usize = 10_000;

/// Per-producer token buckets.
struct ProducerBuckets {
    rate: f64,
    burst: f64,
    buckets: HashMap<String, (f64, std::time::Instant)>,
}

impl ProducerBuckets {
    /// Takes one token, or says how many seconds until one is there.
    fn take(&mut self, producer: &str) -> Result<(), u64> {
        let now = std::time::Instant::now();
        if self.buckets.len() >= MAX_PRODUCER_BUCKETS && !self.buckets.contains_key(producer) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self
            .buckets
            .entry(producer.to_owned())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Returns tokens a refused batch had taken.
    fn give_back(&mut self, producer: &str, n: usize) {
        if let Some((tokens, _)) = self.buckets.get_mut(producer) {
            *tokens = (*tokens + n as f64).min(self.burst);
        }
    }
}

/// Connection limits (global and per user) and producer rate limits.
pub struct Limits {
    producers: Mutex<ProducerBuckets>,
    capacity: usize,
    global: Arc<Semaphore>,
    per_user: Mutex<HashMap<String, usize>>,
    max_per_user: usize,
}

impl Limits {
    fn new(c: &GatewayConfig) -> Limits {
        Limits {
            producers: Mutex::new(ProducerBuckets {
                rate: c.producer_rate.max(0.001),
                burst: c.producer_burst.max(1.0),
                buckets: HashMap::new(),
            }),
            capacity: c.max_connections,
            global: Arc::new(Semaphore::new(c.max_connections)),
            per_user: Mutex::new(HashMap::new()),
            max_per_user: c.max_connections_per_user,
        }
    }

    /// Waits (at most `timeout`) until every connection has ended.
    pub async fn drained(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.global.available_permits() < self.capacity {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("connections still open at shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn acquire(self: &Arc<Self>, user: &str) -> Result<ConnectionGuard, AppError> {
        let permit = self.global.clone().try_acquire_owned().map_err(|_| {
            AppError::TooManyConnections("the server is at its connection limit".into())
        })?;
        let mut per = self.per_user.lock().expect("limits lock");
        let n = per.entry(user.to_owned()).or_default();
        if *n >= self.max_per_user {
            return Err(AppError::TooManyConnections(format!(
                "at most {} connections per user",
                self.max_per_user
            )));
        }
        *n += 1;
        Ok(ConnectionGuard {
            _permit: permit,
            limits: self.clone(),
            user: user.to_owned(),
        })
    }
}

/// Held for the life of a connection.
pub struct ConnectionGuard {
    _permit: OwnedSemaphorePermit,
    limits: Arc<Limits>,
    user: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per = self.limits.per_user.lock().expect("limits lock");
        if let Some(n) = per.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.user);
            }
        }
    }
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/notifications", post(post_notification))
        .route("/v1/notifications/batch", post(post_notification_batch))
        .route("/v1/inbox", get(get_inbox))
        .route("/v1/inbox/unread-count", get(get_unread_count))
        .route("/v1/inbox/read", post(post_read))
        .route("/v1/inbox/unread", post(post_unread))
        .route("/v1/inbox/archive", post(post_archive))
        .route("/v1/ws", get(ws_upgrade))
        .route("/v1/ws-ticket", post(post_ticket))
        .route("/v1/sse", get(sse))
        .route("/v1/ack", post(post_ack))
        .route("/v1/dev/token", post(post_dev_token))
        .route("/v1/presence", get(get_presence))
        .route("/v1/users/{user}", axum::routing::put(put_user))
        .route(
            "/v1/groups/{group}/members/{user}",
            axum::routing::put(put_member).delete(delete_member),
        )
        .route(
            "/v1/topics/{topic}/subscribers/{user}",
            axum::routing::put(put_subscriber).delete(delete_subscriber),
        )
        .route("/v1/roles/{role}", axum::routing::put(put_role))
        .route(
            "/herald.js",
            get(|| async { javascript(include_str!("../web/herald.js")) }),
        )
        .route("/demo.js", get(demo_js))
        .route("/", get(demo_page))
        .route("/v1/audit/{id}", get(get_audit))
        .route("/v1/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time given as Unix milliseconds or an RFC 3339 string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeInput {
    Millis(i64),
    Text(String),
}

impl TimeInput {
    fn to_ms(&self, field: &str) -> Result<i64, AppError> {
        match self {
            TimeInput::Millis(ms) => Ok(*ms),
            TimeInput::Text(t) => humantime::parse_rfc3339(t)
                .map_err(|e| {
                    AppError::Invalid(format!(
                        "invalid {field}: {e} (use RFC 3339, e.g. 2026-01-31T12:00:00Z)"
                    ))
                })
                .and_then(|st| {
                    st.duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .map_err(|_| AppError::Invalid(format!("invalid {field}: before 1970")))
                }),
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationBody {
    recipients: Recipients,
    event_type: String,
    source: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    collapse_key: Option<String>,
    #[serde(default)]
    deliver_at: Option<TimeInput>,
    #[serde(default)]
    expires_at: Option<TimeInput>,
    /// Alternative to the `Idempotency-Key` header.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Serialize)]
struct Accepted {
    notification_id: String,
    idempotency_key: String,
    partition: u32,
    offset: u64,
}

async fn post_notification(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NotificationBody>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let result = accept(&state, &headers, body).await;
    telemetry::http_request(
        "post_notification",
        result
            .as_ref()
            .map_or_else(|e| e.status().as_u16(), |_| 202),
    );
    let accepted = result?;
    telemetry::notification_accepted();
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Takes one token per notification from the producer's bucket (all or none).
fn take_tokens(state: &AppState, producer: &str, n: usize) -> Result<(), AppError> {
    let mut limits = state.limits.producers.lock().expect("limits lock");
    for taken in 0..n {
        if let Err(retry_after_secs) = limits.take(producer) {
            limits.give_back(producer, taken);
            return Err(AppError::RateLimited {
                producer: producer.to_owned(),
                retry_after_secs,
            });
        }
    }
    Ok(())
}

/// A notification request from one body: the key from the body or the header (`header_key`),
/// validated.
fn build_request(
    producer: &str,
    body: NotificationBody,
    header_key: Option<String>,
    traceparent: Option<String>,
) -> Result<NotificationRequest, AppError> {
    let key = match (header_key, body.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(AppError::Invalid(
                "Idempotency-Key header and idempotency_key field differ".into(),
            ));
        }
        (Some(k), _) | (None, Some(k)) => k,
        // No key: the request cannot be retried safely, like an HTTP POST without one.
        (None, None) => uuid::Uuid::new_v4().to_string(),
    };
    let priority = match &body.priority {
        Some(p) => p.parse::<Priority>()?,
        None => Priority::Normal,
    };
    let request = NotificationRequest {
        notification_id: notification_id(producer, &key),
        idempotency_key: key,
        producer: producer.to_owned(),
        recipients: body.recipients,
        event_type: body.event_type,
        source: body.source,
        payload: serde_json::to_string(&body.data).expect("a Value serializes"),
        collapse_key: body.collapse_key,
        deliver_at: body
            .deliver_at
            .as_ref()
            .map(|t| t.to_ms("deliver_at"))
            .transpose()?,
        expires_at: body
            .expires_at
            .as_ref()
            .map(|t| t.to_ms("expires_at"))
            .transpose()?,
        created_at: now_ms(),
        traceparent,
        priority,
    };
    request.validate()?;
    Ok(request)
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.len() <= 128)
        .map(str::to_owned)
}

/// Appends requests in one call and answers for each. 202 only once the append is durable.
async fn append_requests(
    state: &AppState,
    requests: Vec<NotificationRequest>,
) -> Result<Vec<Accepted>, AppError> {
    let partitions = state.log.partitions(Topic::Requests);
    let records = requests
        .iter()
        .map(|r| {
            request_record(
                &RequestRecord::Notification(Box::new(r.clone())),
                partitions,
                now_ms(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let appended = state.log.append(Topic::Requests, records).await?;
    Ok(requests
        .into_iter()
        .zip(appended)
        .map(|(request, at)| {
            tracing::info!(notification_id = %request.notification_id, partition = at.partition, offset = at.offset, "notification accepted");
            Accepted {
                notification_id: request.notification_id,
                idempotency_key: request.idempotency_key,
                partition: at.partition,
                offset: at.offset,
            }
        })
        .collect())
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<NotificationBody>, JsonRejection>,
) -> Result<Accepted, AppError> {
    let producer = state.auth.producer(headers, &state.config.open_producer)?;
    take_tokens(state, &producer, 1)?;
    let Json(body) = body?;
    let header_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| AppError::Invalid("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()?;
    let request = build_request(&producer, body, header_key, traceparent(headers))?;
    let mut accepted = append_requests(state, vec![request]).await?;
    Ok(accepted.remove(0))
}

/// Most notifications in one batch request.
pub const MAX_BATCH_NOTIFICATIONS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    notifications: Vec<NotificationBody>,
}

/// `POST /v1/notifications/batch`: many notifications, validated all or none, appended in one
/// call; the answers come in the same order. Each may carry its own `idempotency_key`.
async fn post_notification_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<impl IntoResponse, AppError> {
    let result = accept_batch(&state, &headers, body).await;
    telemetry::http_request(
        "post_notification_batch",
        result
            .as_ref()
            .map_or_else(|e| e.status().as_u16(), |_| 202),
    );
    let accepted = result?;
    for _ in &accepted {
        telemetry::notification_accepted();
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": accepted}))))
}

async fn accept_batch(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Vec<Accepted>, AppError> {
    let producer = state.auth.producer(headers, &state.config.open_producer)?;
    let Json(body) = body?;
    let n = body.notifications.len();
    if n == 0 || n > MAX_BATCH_NOTIFICATIONS {
        return Err(AppError::Invalid(format!(
            "a batch holds 1 to {MAX_BATCH_NOTIFICATIONS} notifications, not {n}"
        )));
    }
    if headers.contains_key("idempotency-key") {
        return Err(AppError::Invalid(
            "a batch takes an idempotency_key per notification, not the Idempotency-Key header"
                .into(),
        ));
    }
    let traceparent = traceparent(headers);
    let mut requests = Vec::with_capacity(n);
    let mut ids = std::collections::HashSet::with_capacity(n);
    for (i, body) in body.notifications.into_iter().enumerate() {
        let request = build_request(&producer, body, None, traceparent.clone())
            .map_err(|e| AppError::Invalid(format!("notifications[{i}]: {e}")))?;
        if !ids.insert(request.notification_id.clone()) {
            return Err(AppError::Invalid(format!(
                "notifications[{i}]: idempotency_key repeats an earlier one in this batch"
            )));
        }
        requests.push(request);
    }
    take_tokens(state, &producer, n)?;
    append_requests(state, requests).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxParams {
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterParam {
    #[serde(default)]
    after: Option<String>,
}

/// How often a read with `after` looks at the projection's applied offsets while it waits.
const READ_AFTER_POLL: Duration = Duration::from_millis(5);

/// Read-your-writes: with `after` (a cursor from a notification, a `mark` frame or a mark
/// response), waits until the inbox projection has applied the user's partition past it, at most
/// `read_after_wait`. Returns whether it has (`consistent` in the response).
async fn wait_applied(state: &AppState, user: &str, after: Option<&str>) -> Result<bool, AppError> {
    let Some(after) = after else { return Ok(true) };
    let cursor: Cursor = after.parse()?;
    if !cursor.matches(state.log.epoch()) {
        return Err(AppError::Invalid(
            "after is a cursor of another epoch".into(),
        ));
    }
    let partition =
        herald_core::partition::partition_for(user, state.log.partitions(Topic::UserEvents));
    let deadline = tokio::time::Instant::now() + state.config.read_after_wait;
    loop {
        let applied = state
            .store
            .consumer_offsets(herald_projector::INBOX)
            .await?
            .get(&partition)
            .copied()
            .unwrap_or(0);
        if applied > cursor.seq {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(READ_AFTER_POLL).await;
    }
}

fn row_json(row: &InboxRow, cursor: Cursor) -> Value {
    json!({
        "id": row.notification_id,
        "seq": row.seq,
        "cursor": cursor.to_string(),
        "event_type": row.event_type,
        "source": row.source,
        "data": serde_json::from_str::<Value>(&row.payload).unwrap_or(Value::Null),
        "priority": row.priority.as_str(),
        "collapse_key": row.collapse_key,
        "created_at": rfc3339(row.created_at),
        "deliver_at": row.deliver_at.map(rfc3339),
        "expires_at": row.expires_at.map(rfc3339),
        "read": row.read,
        "archived": row.archived,
    })
}

async fn get_inbox(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<InboxParams>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let user = state.auth.user_from_headers(&headers)?;
    let Query(p) = params?;
    let filter = match p.filter.as_deref() {
        None | Some("inbox") => InboxFilter::Inbox,
        Some("unread") => InboxFilter::Unread,
        Some("archived") => InboxFilter::Archived,
        Some(other) => {
            return Err(AppError::Invalid(format!(
                "filter {other:?} is not one of inbox, unread, archived"
            )));
        }
    };
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(AppError::Invalid(format!("limit must be 1..={MAX_PAGE}")));
    }
    let consistent = wait_applied(&state, &user.id, p.after.as_deref()).await?;
    let query = InboxQuery {
        before: p.before,
        limit,
        filter,
        now_ms: now_ms(),
    };
    let rows = state.store.inbox(&user.id, &query).await?;
    let unread = state.store.unread_count(&user.id).await?;
    let epoch = state.log.epoch();
    let next_before = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({
        "user_id": user.id,
        "items": rows.iter().map(|r| row_json(r, Cursor { epoch, seq: r.seq })).collect::<Vec<_>>(),
        "unread_count": unread,
        "next_before": next_before,
        "consistent": consistent,
    })))
}

async fn get_unread_count(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<AfterParam>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let user = state.auth.user_from_headers(&headers)?;
    let Query(p) = params?;
    let consistent = wait_applied(&state, &user.id, p.after.as_deref()).await?;
    let n = state.store.unread_count(&user.id).await?;
    Ok(Json(
        json!({"user_id": user.id, "unread_count": n, "consistent": consistent}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    up_to: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

/// Appends user events (fire and forget; used for deliveries, whose loss costs only audit detail).
pub fn append_user_events(state: &AppState, events: Vec<UserEvent>) {
    let records: Vec<_> = events
        .iter()
        .filter_map(|e| crate::ws::record_of(state, e))
        .collect();
    if records.is_empty() {
        return;
    }
    let log = state.log.clone();
    tokio::spawn(async move {
        if let Err(e) = log.append(Topic::UserEvents, records).await {
            tracing::warn!(error = %e, "appending user events failed");
        }
    });
}

pub fn append_user_event(state: &AppState, event: UserEvent) {
    append_user_events(state, vec![event]);
}

/// Checks the ids of a mark or ACK body (count and form).
fn check_ids(ids: &[String]) -> Result<(), AppError> {
    if ids.len() > MAX_IDS_PER_FRAME {
        return Err(AppError::Invalid(format!(
            "at most {MAX_IDS_PER_FRAME} ids"
        )));
    }
    for id in ids {
        validate_id("ids", id)?;
    }
    Ok(())
}

/// The seq of an `up_to` cursor, which must belong to this log's epoch.
fn up_to_seq(state: &AppState, up_to: Option<&str>) -> Result<Option<i64>, AppError> {
    match up_to.map(str::parse::<Cursor>) {
        None => Ok(None),
        Some(Ok(c)) if c.matches(state.log.epoch()) => Ok(Some(c.seq.min(i64::MAX as u64) as i64)),
        Some(Ok(_)) => Err(AppError::Invalid(
            "up_to is a cursor of another epoch".into(),
        )),
        Some(Err(e)) => Err(e.into()),
    }
}

async fn mark(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<MarkBody>, JsonRejection>,
    kind: &'static str,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let user = state.auth.user_from_headers(headers)?;
    let Json(b) = body?;
    check_ids(&b.ids)?;
    if let Some(d) = &b.device_id {
        validate_id("device_id", d)?;
    }
    if b.up_to.is_some() && kind != "read" {
        return Err(AppError::Invalid("up_to is only for read".into()));
    }
    let up_to = up_to_seq(state, b.up_to.as_deref())?;
    if b.ids.is_empty() && up_to.is_none() {
        return Err(AppError::Invalid("name ids (or up_to for read)".into()));
    }
    let change = MarkChange {
        user_id: user.id.clone(),
        device_id: b.device_id,
        notification_ids: b.ids,
        up_to,
        at: now_ms(),
    };
    let event = match kind {
        "read" => UserEvent::Read(change),
        "unread" => UserEvent::Unread(change),
        _ => UserEvent::Archived(change),
    };
    let record = crate::ws::record_of(state, &event)
        .ok_or_else(|| AppError::Invalid("cannot encode the change".into()))?;
    // 202 once the change is durable; the projection and other devices follow.
    let at = state.log.append(Topic::UserEvents, vec![record]).await?[0];
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "partition": at.partition,
            "offset": at.offset,
            "cursor": Cursor { epoch: state.log.epoch(), seq: at.offset }.to_string(),
        })),
    ))
}

async fn post_read(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<MarkBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    mark(&state, &headers, body, "read").await
}

async fn post_unread(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<MarkBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    mark(&state, &headers, body, "unread").await
}

async fn post_archive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<MarkBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    mark(&state, &headers, body, "archive").await
}

/// A single-use ticket for a browser's WebSocket.
async fn post_ticket(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let user = state.auth.user_from_headers(&headers)?;
    let ticket = state.auth.issue_ticket(&user);
    Ok(Json(
        json!({"ticket": ticket, "expires_in": crate::auth::TICKET_TTL.as_secs()}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevLogin {
    user_id: String,
}

/// `herald dev` only: a token for a demo user.
async fn post_dev_token(
    State(state): State<AppState>,
    body: Result<Json<DevLogin>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let Json(b) = body?;
    validate_user(&b.user_id)?;
    let token = state
        .auth
        .dev_token(&b.user_id, Duration::from_secs(12 * 3600))?;
    Ok(Json(json!({"token": token, "user_id": b.user_id})))
}

fn javascript(body: &'static str) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The demo inbox page (`herald dev` only).
async fn demo_page(State(state): State<AppState>) -> Result<Response, AppError> {
    if !state.config.auth.dev_login {
        return Err(AppError::NotFound);
    }
    Ok(axum::response::Html(include_str!("../web/index.html")).into_response())
}

async fn demo_js(State(state): State<AppState>) -> Result<Response, AppError> {
    if !state.config.auth.dev_login {
        return Err(AppError::NotFound);
    }
    Ok(javascript(include_str!("../web/demo.js")))
}

/// Appends a directory or role record (producer credentials) and answers 202 once durable.
async fn append_request(
    state: &AppState,
    headers: &HeaderMap,
    record: RequestRecord,
) -> Result<(StatusCode, Json<Value>), AppError> {
    state.auth.producer(headers, &state.config.open_producer)?;
    match &record {
        RequestRecord::Directory(d) => d.validate()?,
        RequestRecord::Role(r) => r.validate()?,
        RequestRecord::Notification(n) => n.validate()?,
    }
    let rec = request_record(&record, state.log.partitions(Topic::Requests), now_ms())?;
    let at = state.log.append(Topic::Requests, vec![rec]).await?[0];
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"partition": at.partition, "offset": at.offset})),
    ))
}

fn directory(
    op: herald_core::model::DirectoryOp,
    user: String,
    target: Option<String>,
    roles: Vec<String>,
) -> RequestRecord {
    RequestRecord::Directory(herald_core::model::DirectoryChange {
        op,
        user_id: user,
        target,
        roles,
        at: now_ms(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    #[serde(default)]
    roles: Vec<String>,
}

async fn put_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Result<Json<UserBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let Json(b) = body?;
    for r in &b.roles {
        validate_id("roles", r)?;
    }
    let record = directory(
        herald_core::model::DirectoryOp::UpsertUser,
        user,
        None,
        b.roles,
    );
    append_request(&state, &headers, record).await
}

async fn put_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((group, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let record = directory(
        herald_core::model::DirectoryOp::JoinGroup,
        user,
        Some(group),
        vec![],
    );
    append_request(&state, &headers, record).await
}

async fn delete_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((group, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let record = directory(
        herald_core::model::DirectoryOp::LeaveGroup,
        user,
        Some(group),
        vec![],
    );
    append_request(&state, &headers, record).await
}

async fn put_subscriber(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((topic, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let record = directory(
        herald_core::model::DirectoryOp::SubscribeTopic,
        user,
        Some(topic),
        vec![],
    );
    append_request(&state, &headers, record).await
}

async fn delete_subscriber(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((topic, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let record = directory(
        herald_core::model::DirectoryOp::UnsubscribeTopic,
        user,
        Some(topic),
        vec![],
    );
    append_request(&state, &headers, record).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    topics: Vec<String>,
}

async fn put_role(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(role): Path<String>,
    body: Result<Json<RoleBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let Json(b) = body?;
    let record = RequestRecord::Role(herald_core::model::RoleDefinition {
        role,
        topics: b.topics,
        at: now_ms(),
    });
    append_request(&state, &headers, record).await
}

/// Who is connected, with which devices.
async fn get_presence(State(state): State<AppState>) -> Json<Value> {
    let online: Vec<Value> = state
        .hub
        .online()
        .into_iter()
        .map(|(u, d)| json!({"user_id": u, "devices": d}))
        .collect();
    Json(json!({"online": online}))
}

pub fn validate_user(user: &str) -> Result<(), AppError> {
    validate_id("user_id", user).map_err(|e| AppError::Unauthorized(e.to_string()))
}

#[derive(Debug, Deserialize)]
struct WsParams {
    #[serde(default)]
    ticket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SseParams {
    #[serde(default)]
    ticket: Option<String>,
    device_id: String,
    #[serde(default)]
    cursor: Option<String>,
}

/// Server-Sent Events fallback: the same session as a WebSocket, frames as `data:` lines.
async fn sse(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<SseParams>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(p) = params?;
    let user: User = match p.ticket {
        Some(t) => state.auth.redeem_ticket(&t)?,
        None => state.auth.user_from_headers(&headers)?,
    };
    validate_id("device_id", &p.device_id)?;
    if let Some(c) = &p.cursor {
        c.parse::<Cursor>()?;
    }
    let guard = state.limits.acquire(&user.id)?;
    let rx = crate::ws::run_sse(state, user, p.device_id, p.cursor);
    let stream =
        futures_util::stream::unfold((rx, guard, false), |(mut rx, guard, done)| async move {
            if done {
                return None;
            }
            let event = match rx.recv().await? {
                crate::ws::Out::Frame(f) => axum::response::sse::Event::default()
                    .data(serde_json::to_string(&f).expect("frames serialize")),
                crate::ws::Out::Ping => axum::response::sse::Event::default().comment("ping"),
                crate::ws::Out::Close(c, reason) => {
                    let e = axum::response::sse::Event::default().event("close").data(
                        json!({"code": c.code(), "name": c.name(), "reason": reason}).to_string(),
                    );
                    return Some((Ok::<_, std::convert::Infallible>(e), (rx, guard, true)));
                }
            };
            Some((Ok(event), (rx, guard, false)))
        });
    Ok(axum::response::sse::Sse::new(stream).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    device_id: String,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    up_to: Option<String>,
}

/// ACK over HTTP (for SSE clients): 202 once the ACK is durable in the log.
async fn post_ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<AckBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let user = state.auth.user_from_headers(&headers)?;
    let Json(b) = body?;
    validate_id("device_id", &b.device_id)?;
    check_ids(&b.ids)?;
    let up_to = up_to_seq(&state, b.up_to.as_deref())?;
    if b.ids.is_empty() && up_to.is_none() {
        return Err(AppError::Invalid("name ids or up_to".into()));
    }
    let event = UserEvent::Acked(herald_core::model::NotificationAcked {
        user_id: user.id,
        device_id: b.device_id,
        notification_ids: b.ids,
        up_to,
        at: now_ms(),
    });
    let record = crate::ws::record_of(&state, &event)
        .ok_or_else(|| AppError::Invalid("cannot encode the ACK".into()))?;
    let at = state.log.append(Topic::UserEvents, vec![record]).await?[0];
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"partition": at.partition, "offset": at.offset})),
    ))
}

/// Authenticates, checks origin, subprotocol and limits, then upgrades.
async fn ws_upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<WsParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let Query(params) = params?;
    let user: User = match params.ticket {
        Some(t) => state.auth.redeem_ticket(&t)?,
        None => state.auth.user_from_headers(&headers)?,
    };
    if !state.config.allowed_origins.is_empty() {
        let origin = headers
            .get("origin")
            .and_then(|o| o.to_str().ok())
            .unwrap_or("");
        if !state.config.allowed_origins.iter().any(|o| o == origin) {
            return Err(AppError::OriginForbidden(origin.to_owned()));
        }
    }
    let offered = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return Err(AppError::SubprotocolRequired);
    }
    let ws = ws.map_err(|e| AppError::Invalid(format!("expected a WebSocket upgrade: {e}")))?;
    let guard = state.limits.acquire(&user.id)?;
    Ok(ws
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            crate::ws::run(state, user, socket).await;
            drop(guard);
        }))
}

async fn get_audit(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<herald_projector::audit::AuditReport>, AppError> {
    validate_id("id", &id)?;
    let report =
        herald_projector::audit::audit(state.log.as_ref(), state.store.as_ref(), &id).await?;
    Ok(Json(report))
}

async fn get_metrics(State(state): State<AppState>) -> Result<String, AppError> {
    match &state.metrics {
        Some(render) => Ok(render()),
        None => Err(AppError::NotFound),
    }
}

/// Log end offsets, the projector's applied offsets and the lag between them, per stage.
async fn get_status(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let mut stages = serde_json::Map::new();
    for (stage, topic) in [
        (herald_projector::FANOUT, Topic::Requests),
        (herald_projector::INBOX, Topic::UserEvents),
    ] {
        let applied = state.store.consumer_offsets(stage).await?;
        let mut ends = Vec::new();
        let mut lag = 0u64;
        for p in 0..state.log.partitions(topic) {
            let end = state.log.end_offset(topic, p).await?;
            lag += end.saturating_sub(applied.get(&p).copied().unwrap_or(0));
            ends.push(end);
        }
        stages.insert(
            stage.to_owned(),
            json!({
                "topic": topic.name(),
                "log_end_offsets": ends,
                "applied_offsets": (0..state.log.partitions(topic)).map(|p| applied.get(&p).copied().unwrap_or(0)).collect::<Vec<_>>(),
                "lag_records": lag,
            }),
        );
    }
    Ok(Json(json!({
        "epoch": state.log.epoch().to_string(),
        "stages": stages,
    })))
}
