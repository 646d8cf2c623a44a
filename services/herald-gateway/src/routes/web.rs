//! What anyone may fetch: health, the browser client (`clients/js/herald.js`, the npm
//! package's own file); and in `herald dev` the demo inbox, its icon and its token endpoint.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::extract::AppJson;
use crate::state::AppState;

/// How long a demo token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/herald.js",
            get(|| async { asset(JAVASCRIPT, include_str!("../../../../clients/js/herald.js")) }),
        )
        .route("/demo.js", get(demo_js))
        .route("/demo.css", get(demo_css))
        .route("/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .route("/", get(demo_page))
        .route("/v1/dev/token", post(post_dev_token))
}

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// What the demo page and its files may load and run: only this origin's scripts and styles
/// (no inline script, no eval), connections back to this origin (HTTP and WebSocket), no
/// plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// A static file with its type and the security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The demo's files exist in `herald dev` only.
fn dev_only(st: &AppState) -> Result<(), AppError> {
    if st.auth.dev_login() {
        Ok(())
    } else {
        Err(AppError::NotFound)
    }
}

/// The demo inbox page (`herald dev` only).
async fn demo_page(State(st): State<AppState>) -> Result<Response, AppError> {
    dev_only(&st)?;
    Ok(asset(
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ))
}

async fn demo_js(State(st): State<AppState>) -> Result<Response, AppError> {
    dev_only(&st)?;
    Ok(asset(JAVASCRIPT, include_str!("../../web/demo.js")))
}

async fn demo_css(State(st): State<AppState>) -> Result<Response, AppError> {
    dev_only(&st)?;
    Ok(asset(CSS, include_str!("../../web/demo.css")))
}

/// The demo's icon, also at `/favicon.ico` for browsers that ask there by themselves.
async fn favicon(State(st): State<AppState>) -> Result<Response, AppError> {
    dev_only(&st)?;
    Ok(asset(SVG, include_str!("../../web/favicon.svg")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DevLogin {
    user_id: String,
}

#[derive(Debug, Serialize)]
pub struct DevToken {
    token: String,
    user_id: String,
}

/// Checks a demo login: a `user_id` that is not an id is a field that fails validation (400),
/// not a credential (401: the route takes none).
pub(crate) fn dev_login(body: &DevLogin) -> Result<(), AppError> {
    herald_core::ids::validate_id("user_id", &body.user_id)
        .map_err(|e| AppError::Invalid(e.to_string()))
}

/// `herald dev` only: a token for a demo user.
async fn post_dev_token(
    State(st): State<AppState>,
    AppJson(body): AppJson<DevLogin>,
) -> Result<Json<DevToken>, AppError> {
    dev_only(&st)?;
    dev_login(&body)?;
    let token = st.auth.dev_token(&body.user_id, DEV_TOKEN_TTL)?;
    Ok(Json(DevToken {
        token,
        user_id: body.user_id,
    }))
}
