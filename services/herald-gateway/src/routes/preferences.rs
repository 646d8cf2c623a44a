//! A user's notification preferences: which event types and topics reach their devices live,
//! reach the inbox only, or are muted. `PUT` appends a `PreferencesChanged` event to the user's
//! partition (the log is the source of truth, like everything else); the projector folds it into
//! the projection, where `GET` reads it and fanout applies it when it expands a request.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use herald_core::model::{Preferences, PreferencesChanged, UserEvent};

use crate::AppError;
use crate::clock::now_ms;
use crate::extract::{AppJson, AuthUser};
use crate::routes::inbox::{append_one, applied_past};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/preferences", get(get_preferences).put(put_preferences))
}

/// The token user's preferences (empty maps when they never set any).
#[utoipa::path(get, path = "/v1/preferences", tag = "preferences",
    responses((status = 200, description = "The user's preferences", body = Preferences), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn get_preferences(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Preferences>, AppError> {
    Ok(Json(st.inbox.preferences(&user.id).await?))
}

/// Replaces the token user's preferences with the body and answers the stored document once it
/// is durable in the log. It also waits (at most `read_after_wait`) for the projector to apply
/// it, so a `GET` and the next notification's expansion see it.
#[utoipa::path(put, path = "/v1/preferences", tag = "preferences", request_body = Preferences,
    responses((status = 200, description = "Durable in the log: the stored document", body = Preferences), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("bearer" = [])))]
async fn put_preferences(
    State(st): State<AppState>,
    AuthUser(user): AuthUser,
    AppJson(preferences): AppJson<Preferences>,
) -> Result<Json<Preferences>, AppError> {
    preferences.validate()?;
    let event = UserEvent::Preferences(PreferencesChanged::new(&user.id, &preferences, now_ms()));
    let (_, offset) = append_one(&st, event).await?;
    if !applied_past(&st, &user.id, offset).await? {
        tracing::debug!(user = %user.id, offset, "preferences stored; the projector has not applied them yet");
    }
    Ok(Json(preferences))
}
