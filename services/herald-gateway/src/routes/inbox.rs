//! The user's inbox over HTTP: pages, the unread count, read / unread / archive / unarchive marks, and
//! ACKs for SSE clients. Reads come from the projection; changes are appended to the log.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use herald_core::cursor::{Cursor, Epoch};
use herald_core::ids::validate_id;
use herald_core::model::{MarkChange, NotificationAcked, UserEvent};
use herald_core::projection::InboxRow;
use herald_core::protocol::MAX_IDS_PER_FRAME;
use herald_core::time::format_rfc3339_millis;
use herald_ports::log::Topic;
use herald_ports::projection::{InboxFilter, InboxQuery, MAX_PAGE, Stage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppError;
use crate::clock::now_ms;
use crate::extract::{AppJson, AppQuery, AuthUser};
use crate::state::AppState;

/// Default inbox page size.
pub const DEFAULT_PAGE: usize = 50;
/// How often a read with `after` looks at the projection's applied offsets while it waits.
const READ_AFTER_POLL: Duration = Duration::from_millis(5);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/inbox", get(get_inbox))
        .route("/v1/inbox/unread-count", get(get_unread_count))
        .route("/v1/inbox/read", post(post_read))
        .route("/v1/inbox/unread", post(post_unread))
        .route("/v1/inbox/archive", post(post_archive))
        .route("/v1/inbox/unarchive", post(post_unarchive))
        .route("/v1/ack", post(post_ack))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboxParams {
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

/// One row of an inbox page (docs/protocol.md).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    id: String,
    seq: u64,
    cursor: String,
    event_type: String,
    source: String,
    #[schema(value_type = Object)]
    data: Value,
    #[schema(value_type = String)]
    priority: &'static str,
    collapse_key: Option<String>,
    created_at: String,
    deliver_at: Option<String>,
    expires_at: Option<String>,
    read: bool,
    archived: bool,
}

impl InboxItem {
    fn of(row: InboxRow, cursor: Cursor) -> InboxItem {
        InboxItem {
            cursor: cursor.to_string(),
            data: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
            priority: row.priority.as_str(),
            created_at: format_rfc3339_millis(row.created_at),
            deliver_at: row.deliver_at.map(format_rfc3339_millis),
            expires_at: row.expires_at.map(format_rfc3339_millis),
            id: row.notification_id,
            seq: row.seq,
            event_type: row.event_type,
            source: row.source,
            collapse_key: row.collapse_key,
            read: row.read,
            archived: row.archived,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxPage {
    user_id: String,
    items: Vec<InboxItem>,
    unread_count: u64,
    next_before: Option<u64>,
    consistent: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnreadCount {
    user_id: String,
    unread_count: u64,
    consistent: bool,
}

/// A change accepted into the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Appended {
    partition: u32,
    offset: u64,
    /// The change's own position (marks only): pass it as `after` to read an inbox with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

/// Read-your-writes: with `after` (a cursor from a notification, a `mark` frame or a mark
/// response), waits until the inbox projection has applied the user's partition past it, at most
/// `read_after_wait`. Returns whether it has (`consistent` in the response).
async fn wait_applied(st: &AppState, user: &str, after: Option<&str>) -> Result<bool, AppError> {
    let Some(after) = after else { return Ok(true) };
    let cursor: Cursor = after.parse()?;
    if !cursor.matches(st.log.epoch()) {
        return Err(AppError::Invalid(
            "after is a cursor of another epoch".into(),
        ));
    }
    applied_past(st, user, cursor.seq).await
}

/// Waits until the inbox projection has applied the user's partition past `seq`, at most
/// `read_after_wait`; returns whether it has.
pub(crate) async fn applied_past(st: &AppState, user: &str, seq: u64) -> Result<bool, AppError> {
    let partition =
        herald_core::partition::partition_for(user, st.log.partitions(Topic::UserEvents));
    let deadline = tokio::time::Instant::now() + st.config.read_after_wait;
    loop {
        let applied = st
            .inbox
            .consumer_offsets(Stage::Inbox)
            .await?
            .get(&partition)
            .copied()
            .unwrap_or(0);
        if applied > seq {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(READ_AFTER_POLL).await;
    }
}

/// The filter and page size an inbox query asks for.
pub(crate) fn page_of(p: &InboxParams) -> Result<(InboxFilter, usize), AppError> {
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
    if let Some(after) = &p.after {
        after.parse::<Cursor>()?;
    }
    Ok((filter, limit))
}

/// The token user's inbox, newest first.
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox",
    params(("filter" = Option<String>, Query, description = "inbox (default), unread or archived"),
           ("before" = Option<u64>, Query, description = "Only rows with a lower seq (paging: `next_before`)"),
           ("limit" = Option<usize>, Query, description = "1..=1000, default 50"),
           ("after" = Option<String>, Query, description = "Read-your-writes: wait until this cursor is applied")),
    responses((status = 200, description = "A page of the inbox", body = InboxPage), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn get_inbox(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppQuery(p): AppQuery<InboxParams>,
) -> Result<Json<InboxPage>, AppError> {
    let (filter, limit) = page_of(&p)?;
    let consistent = wait_applied(&st, &user.id, p.after.as_deref()).await?;
    // One row more than the page: whether there is a next page at all (a page that happened to
    // end with the inbox's oldest row named a next page that came back empty).
    let query = InboxQuery {
        before: p.before,
        limit: limit + 1,
        filter,
        now_ms: now_ms(),
    };
    let mut rows = st.inbox.inbox(&user.id, &query).await?;
    let unread_count = st.inbox.unread_count(&user.id).await?;
    let epoch = st.log.epoch();
    let next_before = match rows.len() > limit {
        true => {
            rows.truncate(limit);
            rows.last().map(|r| r.seq)
        }
        false => None,
    };
    Ok(Json(InboxPage {
        user_id: user.id,
        items: rows
            .into_iter()
            .map(|r| {
                let seq = r.seq;
                InboxItem::of(r, Cursor { epoch, seq })
            })
            .collect(),
        unread_count,
        next_before,
        consistent,
    }))
}

/// The token user's unread count.
#[utoipa::path(get, path = "/v1/inbox/unread-count", tag = "inbox",
    params(("after" = Option<String>, Query, description = "Read-your-writes: wait until this cursor is applied")),
    responses((status = 200, description = "The unread count", body = UnreadCount), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn get_unread_count(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppQuery(p): AppQuery<AfterParam>,
) -> Result<Json<UnreadCount>, AppError> {
    let consistent = wait_applied(&st, &user.id, p.after.as_deref()).await?;
    let unread_count = st.inbox.unread_count(&user.id).await?;
    Ok(Json(UnreadCount {
        user_id: user.id,
        unread_count,
        consistent,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MarkBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    up_to: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
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
fn up_to_seq(epoch: Epoch, up_to: Option<&str>) -> Result<Option<i64>, AppError> {
    match up_to.map(str::parse::<Cursor>) {
        None => Ok(None),
        Some(Ok(c)) if c.matches(epoch) => Ok(Some(c.seq.min(i64::MAX as u64) as i64)),
        Some(Ok(_)) => Err(AppError::Invalid(
            "up_to is a cursor of another epoch".into(),
        )),
        Some(Err(e)) => Err(e.into()),
    }
}

/// Appends one user event and answers 202 once it is durable.
pub(crate) async fn append_one(st: &AppState, event: UserEvent) -> Result<(u32, u64), AppError> {
    let record = st.user_event_record(&event)?;
    let at = st.log.append(Topic::UserEvents, vec![record]).await?[0];
    Ok((at.partition, at.offset))
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    Read,
    Unread,
    Archive,
    Unarchive,
}

/// The event a mark body asks for (validated).
pub(crate) fn mark_event(
    epoch: Epoch,
    user: String,
    body: MarkBody,
    kind: Mark,
    now: i64,
) -> Result<UserEvent, AppError> {
    check_ids(&body.ids)?;
    if let Some(d) = &body.device_id {
        validate_id("device_id", d)?;
    }
    if body.up_to.is_some() && !matches!(kind, Mark::Read) {
        return Err(AppError::Invalid("up_to is only for read".into()));
    }
    let up_to = up_to_seq(epoch, body.up_to.as_deref())?;
    if body.ids.is_empty() && up_to.is_none() {
        return Err(AppError::Invalid("name ids (or up_to for read)".into()));
    }
    let change = MarkChange {
        user_id: user,
        device_id: body.device_id,
        notification_ids: body.ids,
        up_to,
        at: now,
    };
    Ok(match kind {
        Mark::Read => UserEvent::Read(change),
        Mark::Unread => UserEvent::Unread(change),
        Mark::Archive => UserEvent::Archived(change),
        Mark::Unarchive => UserEvent::Unarchived(change),
    })
}

async fn mark(
    st: &AppState,
    user: String,
    body: MarkBody,
    kind: Mark,
) -> Result<(StatusCode, Json<Appended>), AppError> {
    let event = mark_event(st.log.epoch(), user, body, kind, now_ms())?;
    // 202 once the change is durable; the projection and other devices follow.
    let (partition, offset) = append_one(st, event).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Appended {
            partition,
            offset,
            cursor: Some(
                Cursor {
                    epoch: st.log.epoch(),
                    seq: offset,
                }
                .to_string(),
            ),
        }),
    ))
}

/// Mark notifications read (by id, or everything up to a cursor).
#[utoipa::path(post, path = "/v1/inbox/read", tag = "inbox", request_body = MarkBody,
    responses((status = 202, description = "Durable in the log; pass `cursor` as `after` to read it back", body = Appended), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn post_read(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(body): AppJson<MarkBody>,
) -> Result<(StatusCode, Json<Appended>), AppError> {
    mark(&st, user.id, body, Mark::Read).await
}

/// Mark notifications unread.
#[utoipa::path(post, path = "/v1/inbox/unread", tag = "inbox", request_body = MarkBody,
    responses((status = 202, description = "Durable in the log; pass `cursor` as `after` to read it back", body = Appended), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn post_unread(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(body): AppJson<MarkBody>,
) -> Result<(StatusCode, Json<Appended>), AppError> {
    mark(&st, user.id, body, Mark::Unread).await
}

/// Archive notifications.
#[utoipa::path(post, path = "/v1/inbox/archive", tag = "inbox", request_body = MarkBody,
    responses((status = 202, description = "Durable in the log; pass `cursor` as `after` to read it back", body = Appended), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn post_archive(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(body): AppJson<MarkBody>,
) -> Result<(StatusCode, Json<Appended>), AppError> {
    mark(&st, user.id, body, Mark::Archive).await
}

/// Take notifications out of the archive, back to the inbox.
#[utoipa::path(post, path = "/v1/inbox/unarchive", tag = "inbox", request_body = MarkBody,
    responses((status = 202, description = "Durable in the log; pass `cursor` as `after` to read it back", body = Appended), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn post_unarchive(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(body): AppJson<MarkBody>,
) -> Result<(StatusCode, Json<Appended>), AppError> {
    mark(&st, user.id, body, Mark::Unarchive).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckBody {
    device_id: String,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    up_to: Option<String>,
}

/// The `Acked` event an ACK body asks for (validated).
pub(crate) fn ack_event(
    epoch: Epoch,
    user: String,
    body: AckBody,
    now: i64,
) -> Result<UserEvent, AppError> {
    validate_id("device_id", &body.device_id)?;
    check_ids(&body.ids)?;
    let up_to = up_to_seq(epoch, body.up_to.as_deref())?;
    if body.ids.is_empty() && up_to.is_none() {
        return Err(AppError::Invalid("name ids or up_to".into()));
    }
    Ok(UserEvent::Acked(NotificationAcked {
        user_id: user,
        device_id: body.device_id,
        notification_ids: body.ids,
        up_to,
        at: now,
    }))
}

/// ACK over HTTP (for SSE clients): 202 once the ACK is durable in the log.
/// ACK notifications for a device over HTTP (SSE clients).
#[utoipa::path(post, path = "/v1/ack", tag = "inbox", request_body = AckBody,
    responses((status = 202, description = "Durable in the log", body = Appended), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn post_ack(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(body): AppJson<AckBody>,
) -> Result<(StatusCode, Json<Appended>), AppError> {
    let event = ack_event(st.log.epoch(), user.id, body, now_ms())?;
    let (partition, offset) = append_one(&st, event).await?;
    herald_ports::telemetry::ack("http");
    Ok((
        StatusCode::ACCEPTED,
        Json(Appended {
            partition,
            offset,
            cursor: None,
        }),
    ))
}
