//! The OpenAPI 3.1 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! It is generated (utoipa) from the handlers' `#[utoipa::path]` attributes and the request and
//! response types they use, so a producer in any language can generate a client from it.
//! `tests/openapi.rs` checks it against the router: every route registered in `routes/` is in
//! the document with its methods, and every documented operation answers on the real router.
//! The static routes of `web.rs` (health, the browser client, the `herald dev` demo) and
//! `health.rs` (`/readyz`) are described by the small stubs below.

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::routes;
use crate::state::AppState;

/// The body of every error (docs/protocol.md, "Errors").
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a message for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid_request`, `unauthorized`, `rate_limited`: see docs/protocol.md.
    pub code: String,
    pub message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald HTTP API",
        version = "v1",
        description = "Durable notification delivery. docs/protocol.md is the reference; the \
                       WebSocket frames of /v1/ws and /v1/sse are described there."
    ),
    paths(
        routes::notifications::post_notification,
        routes::notifications::post_batch,
        routes::directory::put_user,
        routes::directory::put_member,
        routes::directory::delete_member,
        routes::directory::put_subscriber,
        routes::directory::delete_subscriber,
        routes::directory::put_role,
        routes::inbox::get_inbox,
        routes::inbox::get_unread_count,
        routes::inbox::post_read,
        routes::inbox::post_unread,
        routes::inbox::post_archive,
        routes::inbox::post_unarchive,
        routes::inbox::post_ack,
        routes::preferences::get_preferences,
        routes::preferences::put_preferences,
        routes::realtime::post_ticket,
        routes::realtime::ws_upgrade,
        routes::realtime::sse,
        routes::ops::get_audit,
        routes::ops::get_status,
        routes::ops::get_presence,
        routes::ops::get_metrics,
        healthz,
        readyz,
        herald_js,
        demo_page,
        demo_js,
        demo_css,
        favicon_svg,
        favicon_ico,
        dev_token,
        openapi_json,
    ),
    modifiers(&Security),
    tags(
        (name = "producers", description = "Producer credentials: an API key or a JWT with scope produce"),
        (name = "directory", description = "Users, groups, topics and roles (producer credentials)"),
        (name = "inbox", description = "The token user's inbox"),
        (name = "preferences", description = "The token user's notification preferences"),
        (name = "realtime", description = "Live delivery"),
        (name = "operators", description = "Operator credentials"),
        (name = "public", description = "No credentials"),
    )
)]
pub struct ApiDoc;

/// The security schemes the operations name.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user's JWT (sub = user id); a producer or operator JWT (scope produce \
                         or admin); or a producer or operator API key as the Bearer token",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "A producer key (--producer-key NAME=KEY) or an operator key (--admin-key)",
            ))),
        );
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A single-use ticket from POST /v1/ws-ticket",
            ))),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /v1/openapi.json`, for anyone.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "public",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

// The routes of `routes/web.rs`, described here.

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Health {
    /// Always `ok`.
    status: String,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DevLogin {
    user_id: String,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DevToken {
    token: String,
    user_id: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "public",
    responses((status = 200, description = "The process serves HTTP", body = Health)))]
#[allow(dead_code)]
fn healthz() {}

/// One readiness check (`herald_ports::readiness::Check`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ReadyCheck {
    /// `hub`, `projection`, `projector.fanout`, …
    name: String,
    ok: bool,
    /// What was seen: the partitions, the lag, the error.
    detail: String,
}

/// A readiness report (`herald_ports::readiness::Report`): ready when every check passes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ReadyReport {
    ready: bool,
    checks: Vec<ReadyCheck>,
}

/// Readiness: the live hub has its partitions and is caught up, the projection answers, and an
/// in-process projector (if any) is ready (docs/operations.md, "Health and readiness").
#[utoipa::path(get, path = "/readyz", tag = "public",
    responses(
        (status = 200, description = "Ready to serve", body = ReadyReport),
        (status = 503, description = "Not ready; the failing checks say why", body = ReadyReport)))]
#[allow(dead_code)]
fn readyz() {}

/// The browser client (an ES module).
#[utoipa::path(get, path = "/herald.js", tag = "public",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)))]
#[allow(dead_code)]
fn herald_js() {}

/// The demo inbox page (`herald dev` only; 404 otherwise).
#[utoipa::path(get, path = "/", tag = "public",
    responses((status = 200, description = "HTML", content_type = "text/html", body = String),
              (status = 404, description = "Not `herald dev`", body = ErrorBody)))]
#[allow(dead_code)]
fn demo_page() {}

/// The demo page's script (`herald dev` only).
#[utoipa::path(get, path = "/demo.js", tag = "public",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String),
              (status = 404, description = "Not `herald dev`", body = ErrorBody)))]
#[allow(dead_code)]
fn demo_js() {}

/// The demo page's style sheet (`herald dev` only).
#[utoipa::path(get, path = "/demo.css", tag = "public",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String),
              (status = 404, description = "Not `herald dev`", body = ErrorBody)))]
#[allow(dead_code)]
fn demo_css() {}

/// The demo page's icon (`herald dev` only).
#[utoipa::path(get, path = "/favicon.svg", tag = "public",
    responses((status = 200, description = "SVG", content_type = "image/svg+xml", body = String),
              (status = 404, description = "Not `herald dev`", body = ErrorBody)))]
#[allow(dead_code)]
fn favicon_svg() {}

/// The same icon where browsers look for it by themselves (`herald dev` only).
#[utoipa::path(get, path = "/favicon.ico", tag = "public",
    responses((status = 200, description = "SVG", content_type = "image/svg+xml", body = String),
              (status = 404, description = "Not `herald dev`", body = ErrorBody)))]
#[allow(dead_code)]
fn favicon_ico() {}

/// A 12-hour token for a demo user (`herald dev` only).
#[utoipa::path(post, path = "/v1/dev/token", tag = "public", request_body = DevLogin,
    responses((status = 200, description = "A user token", body = DevToken),
              (status = "4XX", description = "Refused, or not `herald dev`", body = ErrorBody)))]
#[allow(dead_code)]
fn dev_token() {}
