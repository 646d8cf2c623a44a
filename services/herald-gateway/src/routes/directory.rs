//! The directory and roles (producers): users, group membership, topic subscriptions and the
//! topics each role may receive. Each change is appended to the requests topic as an event;
//! the projector applies it.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::put;
use herald_core::ids::validate_id;
use herald_core::model::{DirectoryChange, DirectoryOp, RequestRecord, RoleDefinition};
use herald_ports::log::Topic;
use herald_ports::records::request_record;
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::clock::now_ms;
use crate::extract::{AppJson, AppPath};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user}", put(put_user))
        .route(
            "/v1/groups/{group}/members/{user}",
            put(put_member).delete(delete_member),
        )
        .route(
            "/v1/topics/{topic}/subscribers/{user}",
            put(put_subscriber).delete(delete_subscriber),
        )
        .route("/v1/roles/{role}", put(put_role))
}

/// Where a directory change landed in the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recorded {
    partition: u32,
    offset: u64,
}

type Answer = Result<(StatusCode, Json<Recorded>), AppError>;

/// A directory or role record, validated.
pub(crate) fn validated(record: RequestRecord) -> Result<RequestRecord, AppError> {
    match &record {
        RequestRecord::Directory(d) => d.validate()?,
        RequestRecord::Role(r) => r.validate()?,
        RequestRecord::Notification(n) => n.validate()?,
    }
    Ok(record)
}

/// Validates and appends a directory or role record; 202 once durable.
async fn append(st: &AppState, record: RequestRecord) -> Answer {
    let record = validated(record)?;
    let rec = request_record(&record, st.log.partitions(Topic::Requests), now_ms())?;
    let at = st.log.append(Topic::Requests, vec![rec]).await?[0];
    Ok((
        StatusCode::ACCEPTED,
        Json(Recorded {
            partition: at.partition,
            offset: at.offset,
        }),
    ))
}

fn change(
    op: DirectoryOp,
    user: String,
    target: Option<String>,
    roles: Vec<String>,
) -> RequestRecord {
    RequestRecord::Directory(DirectoryChange {
        op,
        user_id: user,
        target,
        roles,
        at: now_ms(),
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserBody {
    #[serde(default)]
    roles: Vec<String>,
}

/// The record a `PUT /v1/users/{user}` body asks for.
pub(crate) fn user_record(user: String, body: UserBody) -> Result<RequestRecord, AppError> {
    for r in &body.roles {
        validate_id("roles", r)?;
    }
    validated(change(DirectoryOp::UpsertUser, user, None, body.roles))
}

#[utoipa::path(put, path = "/v1/users/{user}", tag = "directory", request_body = UserBody, params(("user" = String, Path, description = "User id")),
    responses((status = 202, description = "Durable in the log", body = Recorded), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn put_user(
    State(st): State<AppState>,
    AppPath(user): AppPath<String>,
    AppJson(body): AppJson<UserBody>,
) -> Answer {
    append(&st, user_record(user, body)?).await
}

#[utoipa::path(put, path = "/v1/groups/{group}/members/{user}", tag = "directory", params(("group" = String, Path), ("user" = String, Path)),
    responses((status = 202, description = "Durable in the log", body = Recorded), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn put_member(
    State(st): State<AppState>,
    AppPath((group, user)): AppPath<(String, String)>,
) -> Answer {
    append(
        &st,
        change(DirectoryOp::JoinGroup, user, Some(group), vec![]),
    )
    .await
}

#[utoipa::path(delete, path = "/v1/groups/{group}/members/{user}", tag = "directory", params(("group" = String, Path), ("user" = String, Path)),
    responses((status = 202, description = "Durable in the log", body = Recorded), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn delete_member(
    State(st): State<AppState>,
    AppPath((group, user)): AppPath<(String, String)>,
) -> Answer {
    append(
        &st,
        change(DirectoryOp::LeaveGroup, user, Some(group), vec![]),
    )
    .await
}

#[utoipa::path(put, path = "/v1/topics/{topic}/subscribers/{user}", tag = "directory", params(("topic" = String, Path), ("user" = String, Path)),
    responses((status = 202, description = "Durable in the log", body = Recorded), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn put_subscriber(
    State(st): State<AppState>,
    AppPath((topic, user)): AppPath<(String, String)>,
) -> Answer {
    append(
        &st,
        change(DirectoryOp::SubscribeTopic, user, Some(topic), vec![]),
    )
    .await
}

#[utoipa::path(delete, path = "/v1/topics/{topic}/subscribers/{user}", tag = "directory", params(("topic" = String, Path), ("user" = String, Path)),
    responses((status = 202, description = "Durable in the log", body = Recorded), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn delete_subscriber(
    State(st): State<AppState>,
    AppPath((topic, user)): AppPath<(String, String)>,
) -> Answer {
    append(
        &st,
        change(DirectoryOp::UnsubscribeTopic, user, Some(topic), vec![]),
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    topics: Vec<String>,
}

/// The record a `PUT /v1/roles/{role}` body asks for.
pub(crate) fn role_record(role: String, body: RoleBody) -> Result<RequestRecord, AppError> {
    validated(RequestRecord::Role(RoleDefinition {
        role,
        topics: body.topics,
        at: now_ms(),
    }))
}

#[utoipa::path(put, path = "/v1/roles/{role}", tag = "directory", request_body = RoleBody, params(("role" = String, Path)),
    responses((status = 202, description = "Durable in the log", body = Recorded), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn put_role(
    State(st): State<AppState>,
    AppPath(role): AppPath<String>,
    AppJson(body): AppJson<RoleBody>,
) -> Answer {
    append(&st, role_record(role, body)?).await
}
