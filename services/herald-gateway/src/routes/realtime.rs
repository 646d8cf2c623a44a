//! Live delivery: `GET /v1/ws` (WebSocket, protocol `herald.v1`), `GET /v1/sse` (the
//! Server-Sent Events fallback), and `POST /v1/ws-ticket` (single-use tickets for browsers).
//! The user is established by the realtime layer (ticket or Bearer token, after the origin
//! check); these handlers check the request, then take the connection's slot (`Admission`) and
//! hand over to `session`. A ticket redeemed for a request that ends without a connection (a bad
//! request: 400, or the limits: 429) is put back by the layer, so it can be used again.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_core::cursor::Cursor;
use herald_core::ids::validate_id;
use herald_core::protocol::{MAX_FRAME_BYTES, SUBPROTOCOL};
use herald_core::session::Hello;
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::auth::TICKET_TTL;
use crate::extract::{Admission, AppQuery, AuthUser};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/ws", get(ws_upgrade))
        .route("/v1/sse", get(sse))
}

/// Minting tickets needs a user token (it belongs to the user group).
pub fn ticket_routes() -> Router<AppState> {
    Router::new().route("/v1/ws-ticket", post(post_ticket))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ticket {
    ticket: String,
    expires_in: u64,
    /// The user's partition: pass it as `?partition=` of /v1/ws or /v1/sse so that a load
    /// balancer can route on it (docs/operations.md, "Running a cluster").
    partition: u32,
}

/// A single-use ticket for a browser's WebSocket; each user may mint a few a second.
#[utoipa::path(post, path = "/v1/ws-ticket", tag = "realtime",
    responses((status = 200, description = "A ticket for `?ticket=` of /v1/ws or /v1/sse", body = Ticket), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn post_ticket(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Ticket>, AppError> {
    let ticket = st
        .tickets
        .take(&user.id, 1)
        .map_err(|retry_after_secs| AppError::RateLimited {
            role: "user",
            caller: user.id.clone(),
            retry_after_secs,
        })
        .and_then(|()| st.auth.issue_ticket(&user));
    herald_ports::telemetry::ticket(ticket.is_ok());
    Ok(Json(Ticket {
        ticket: ticket?,
        expires_in: TICKET_TTL.as_secs(),
        partition: herald_core::partition::partition_for(
            &user.id,
            st.log.partitions(herald_ports::log::Topic::UserEvents),
        ),
    }))
}

/// Checks the subprotocol and the upgrade, takes the connection's slot, then upgrades.
/// The WebSocket session (subprotocol `herald.v1`, frames in docs/protocol.md).
#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    params(("ticket" = Option<String>, Query, description = "A ticket from /v1/ws-ticket, instead of a Bearer token"),
           ("partition" = Option<u32>, Query, description = "The user's partition (from the ticket or an earlier session frame): a routing hint for the load balancer, not checked")),
    responses((status = 101, description = "Switching to the `herald.v1` WebSocket protocol"), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = []), ("ticket" = [])))]
async fn ws_upgrade(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    admission: Admission,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    if !offers_subprotocol(&headers) {
        return Err(AppError::SubprotocolRequired);
    }
    let ws = ws.map_err(|e| AppError::Invalid(format!("expected a WebSocket upgrade: {e}")))?;
    let guard = admission.admit(&st.connections)?;
    Ok(ws
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(crate::session::ws::READ_BUFFER)
        .write_buffer_size(crate::session::ws::WRITE_BUFFER)
        .max_write_buffer_size(crate::session::ws::MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            // The session gets a task of its own: axum's upgrade task would otherwise keep
            // its own state (the callback's captures, the socket's configuration) for the
            // session's whole life.
            tokio::spawn(crate::session::ws::run(st, user, socket, guard));
            std::future::ready(())
        }))
}

/// Whether a WebSocket upgrade offers `herald.v1`.
fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SseParams {
    /// Redeemed by the realtime layer; listed so that unknown parameters are refused.
    #[serde(default)]
    #[allow(dead_code)]
    ticket: Option<String>,
    device_id: String,
    #[serde(default)]
    cursor: Option<String>,
    /// A routing hint for the load balancer (the user's partition); not checked.
    #[serde(default)]
    #[allow(dead_code)]
    partition: Option<u32>,
}

/// The `hello` an SSE request's parameters stand for.
pub(crate) fn sse_hello(
    p: SseParams,
    epoch: herald_core::cursor::Epoch,
) -> Result<Hello, AppError> {
    validate_id("device_id", &p.device_id)?;
    if let Some(c) = &p.cursor {
        c.parse::<Cursor>()?;
    }
    Hello::parse(p.device_id, p.cursor.as_deref(), epoch).map_err(|e| AppError::Invalid(e.reason))
}

/// Server-Sent Events fallback: the same session as a WebSocket, frames as `data:` lines.
#[utoipa::path(get, path = "/v1/sse", tag = "realtime",
    params(("device_id" = String, Query), ("cursor" = Option<String>, Query, description = "Resume after this cursor"),
           ("ticket" = Option<String>, Query, description = "A ticket from /v1/ws-ticket, instead of a Bearer token"),
           ("partition" = Option<u32>, Query, description = "The user's partition: a routing hint for the load balancer, not checked")),
    responses((status = 200, description = "An event stream of `herald.v1` frames", content_type = "text/event-stream", body = String), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = []), ("ticket" = [])))]
async fn sse(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    admission: Admission,
    AppQuery(p): AppQuery<SseParams>,
    abort: Option<axum::Extension<crate::serve::ConnectionAbort>>,
) -> Result<Response, AppError> {
    let hello = sse_hello(p, st.log.epoch())?;
    let guard = admission.admit(&st.connections)?;
    let abort = abort.map(|axum::Extension(a)| a);
    let stream = crate::session::sse::stream(st, user, hello, guard, abort);
    Ok(axum::response::sse::Sse::new(stream).into_response())
}
