//! What anyone may fetch: health, the browser client; and in `herald dev` the demo inbox and
//! its token endpoint.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::auth::validate_user;
use crate::extract::AppJson;
use crate::state::AppState;

/// How long a demo token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/herald.js",
            get(|| async { javascript(include_str!("../../web/herald.js")) }),
        )
        .route("/demo.js", get(demo_js))
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
async fn demo_page(State(st): State<AppState>) -> Result<Response, AppError> {
    if !st.auth.dev_login() {
        return Err(AppError::NotFound);
    }
    Ok(Html(include_str!("../../web/index.html")).into_response())
}

async fn demo_js(State(st): State<AppState>) -> Result<Response, AppError> {
    if !st.auth.dev_login() {
        return Err(AppError::NotFound);
    }
    Ok(javascript(include_str!("../../web/demo.js")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevLogin {
    user_id: String,
}

#[derive(Debug, Serialize)]
pub struct DevToken {
    token: String,
    user_id: String,
}

/// `herald dev` only: a token for a demo user.
async fn post_dev_token(
    State(st): State<AppState>,
    AppJson(body): AppJson<DevLogin>,
) -> Result<Json<DevToken>, AppError> {
    validate_user(&body.user_id)?;
    let token = st.auth.dev_token(&body.user_id, DEV_TOKEN_TTL)?;
    Ok(Json(DevToken {
        token,
        user_id: body.user_id,
    }))
}
