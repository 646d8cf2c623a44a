//! Routes and handlers.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::cursor::Cursor;
use herald_core::ids::{notification_id, validate_id};
use herald_core::model::{NotificationRequest, Priority, Recipients, RequestRecord};
use herald_core::projection::InboxRow;
use herald_ports::log::{EventLog, Topic};
use herald_ports::projection::{InboxFilter, InboxQuery, MAX_PAGE, ProjectionStore};
use herald_ports::records::request_record;
use herald_ports::telemetry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppError;

/// Largest request body accepted, in bytes (413 beyond).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Default inbox page size.
const DEFAULT_PAGE: usize = 50;

/// Shared state of the HTTP app.
#[derive(Clone)]
pub struct AppState {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ProjectionStore>,
    /// Renders the Prometheus exposition, when a recorder is installed.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Producer name recorded on requests (until producer authentication lands).
    pub producer: String,
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/notifications", post(post_notification))
        .route("/v1/inbox", get(get_inbox))
        .route("/v1/inbox/unread-count", get(get_unread_count))
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

fn now_ms() -> i64 {
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

fn rfc3339(ms: i64) -> String {
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

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<NotificationBody>, JsonRejection>,
) -> Result<Accepted, AppError> {
    let Json(body) = body?;
    let header_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| AppError::Invalid("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()?;
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
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.len() <= 128)
        .map(str::to_owned);
    let request = NotificationRequest {
        notification_id: notification_id(&state.producer, &key),
        idempotency_key: key,
        producer: state.producer.clone(),
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
    let record = request_record(
        &RequestRecord::Notification(Box::new(request.clone())),
        state.log.partitions(Topic::Requests),
        now_ms(),
    )?;
    // 202 only once the append is durable.
    let appended = state.log.append(Topic::Requests, vec![record]).await?;
    let at = appended[0];
    tracing::info!(notification_id = %request.notification_id, partition = at.partition, offset = at.offset, "notification accepted");
    Ok(Accepted {
        notification_id: request.notification_id,
        idempotency_key: request.idempotency_key,
        partition: at.partition,
        offset: at.offset,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxParams {
    user_id: String,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
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
    params: Result<Query<InboxParams>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(p) = params?;
    validate_id("user_id", &p.user_id)?;
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
    let query = InboxQuery {
        before: p.before,
        limit,
        filter,
        now_ms: now_ms(),
    };
    let rows = state.store.inbox(&p.user_id, &query).await?;
    let unread = state.store.unread_count(&p.user_id).await?;
    let epoch = state.log.epoch();
    let next_before = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({
        "user_id": p.user_id,
        "items": rows.iter().map(|r| row_json(r, Cursor { epoch, seq: r.seq })).collect::<Vec<_>>(),
        "unread_count": unread,
        "next_before": next_before,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserParam {
    user_id: String,
}

async fn get_unread_count(
    State(state): State<AppState>,
    params: Result<Query<UserParam>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(p) = params?;
    validate_id("user_id", &p.user_id)?;
    let n = state.store.unread_count(&p.user_id).await?;
    Ok(Json(json!({"user_id": p.user_id, "unread_count": n})))
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
