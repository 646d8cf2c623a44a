//! Operator endpoints: audit, status (log ends, applied offsets, lag), presence, metrics.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use herald_core::ids::validate_id;
use herald_ports::projection::Stage;
use herald_ports::{AuditBudget, AuditReport};
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::extract::{AppPath, AppQuery, Operator};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/{id}", get(get_audit))
        .route("/v1/status", get(get_status))
        .route("/v1/presence", get(get_presence))
        .route("/metrics", get(get_metrics))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    #[serde(default)]
    max_records: Option<u64>,
}

/// Every event about a notification or user. Each audit reads at most `max_records` log
/// records (`complete: false` when it stopped there), and each operator may run a few a second.
#[utoipa::path(get, path = "/v1/audit/{id}", tag = "operators",
    params(("id" = String, Path, description = "A notification id or a user id"),
           ("max_records" = Option<u64>, Query, description = "Most log records to read")),
    responses((status = 200, description = "Every event about it, in log order (see docs/protocol.md)", body = Object), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn get_audit(
    State(st): State<AppState>,
    Operator(operator): Operator,
    AppPath(id): AppPath<String>,
    AppQuery(p): AppQuery<AuditParams>,
) -> Result<Json<AuditReport>, AppError> {
    validate_id("id", &id)?;
    let cfg = &st.config;
    let max_records = p.max_records.unwrap_or(cfg.audit_records);
    if max_records == 0 || max_records > cfg.audit_max_records {
        return Err(AppError::Invalid(format!(
            "max_records must be 1..={}",
            cfg.audit_max_records
        )));
    }
    st.audits
        .take(&operator, 1)
        .map_err(|retry_after_secs| AppError::RateLimited {
            role: "operator",
            caller: operator.clone(),
            retry_after_secs,
        })?;
    Ok(Json(
        st.audit.audit(&id, AuditBudget { max_records }).await?,
    ))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operators",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn get_metrics(State(st): State<AppState>) -> Result<String, AppError> {
    match &st.metrics {
        Some(render) => Ok(render()),
        None => Err(AppError::NotFound),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StageStatus {
    #[schema(value_type = String)]
    topic: &'static str,
    log_end_offsets: Vec<u64>,
    applied_offsets: Vec<u64>,
    lag_records: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    epoch: String,
    #[schema(value_type = BTreeMap<String, StageStatus>)]
    stages: BTreeMap<&'static str, StageStatus>,
}

/// Log end offsets, the projector's applied offsets and the lag between them, per stage.
#[utoipa::path(get, path = "/v1/status", tag = "operators",
    responses((status = 200, description = "Log ends, applied offsets and lag per stage", body = Status), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn get_status(State(st): State<AppState>) -> Result<Json<Status>, AppError> {
    let mut stages = BTreeMap::new();
    for stage in Stage::ALL {
        let topic = stage.topic();
        let applied = st.inbox.consumer_offsets(stage).await?;
        let mut log_end_offsets = Vec::new();
        let mut applied_offsets = Vec::new();
        let mut lag_records = 0u64;
        for p in 0..st.log.partitions(topic) {
            let end = st.log.end_offset(topic, p).await?;
            let at = applied.get(&p).copied().unwrap_or(0);
            lag_records += end.saturating_sub(at);
            log_end_offsets.push(end);
            applied_offsets.push(at);
        }
        stages.insert(
            stage.name(),
            StageStatus {
                topic: topic.name(),
                log_end_offsets,
                applied_offsets,
                lag_records,
            },
        );
    }
    Ok(Json(Status {
        epoch: st.log.epoch().to_string(),
        stages,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Online {
    user_id: String,
    devices: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Presence {
    online: Vec<Online>,
    /// The gateways this one knows of (itself first), from the presence bus.
    gateways: Vec<crate::presence::GatewayPresence>,
    /// False until this gateway has read the presence bus for one presence interval (it may
    /// not have heard every gateway's snapshot yet).
    complete: bool,
}

/// Who is connected to the cluster, with which devices (eventually consistent: see
/// docs/operations.md, "Presence across gateways").
#[utoipa::path(get, path = "/v1/presence", tag = "operators",
    responses((status = 200, description = "The cluster's connected users", body = Presence), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log or the projection is unavailable", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn get_presence(State(st): State<AppState>) -> Json<Presence> {
    let view = st.presence.cluster(&st.hub);
    Json(Presence {
        online: view
            .online
            .into_iter()
            .map(|(user_id, devices)| Online { user_id, devices })
            .collect(),
        gateways: view.gateways,
        complete: view.complete,
    })
}
