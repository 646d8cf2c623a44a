//! `GET /readyz`, open to anyone (load balancers and orchestrators): 200 when the gateway is
//! ready to serve, 503 while it is not, with the checks as JSON either way (see
//! [`AppState::readiness`]). `/healthz` (in [`super::web`]) only says the process answers.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use herald_ports::readiness::Report;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/readyz", get(readyz))
}

async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<Report>) {
    let report = st.readiness().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}
