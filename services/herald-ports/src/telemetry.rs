//! Every metric Herald exports, named in one place (vector's `internal_events` pattern).
//! Adapters, the projector and the gateway record through these helpers only.

use std::time::Duration;

use crate::log::Topic;

pub const LOG_APPENDED_RECORDS: &str = "herald_log_appended_records_total";
pub const LOG_APPEND_SECONDS: &str = "herald_log_append_seconds";
pub const LOG_GROUP_COMMIT_RECORDS: &str = "herald_log_group_commit_records";
pub const PROJECTOR_APPLIED_EVENTS: &str = "herald_projector_applied_events_total";
pub const PROJECTOR_APPLY_SECONDS: &str = "herald_projector_apply_seconds";
pub const PROJECTOR_LAG_RECORDS: &str = "herald_projector_lag_records";
pub const PROJECTOR_UNDECODABLE: &str = "herald_projector_undecodable_records_total";
pub const PROJECTOR_EXPANDED: &str = "herald_projector_expanded_notifications_total";
pub const PROJECTOR_DUPLICATE_REQUESTS: &str = "herald_projector_duplicate_requests_total";
pub const PROJECTOR_RESTARTS: &str = "herald_projector_stage_restarts_total";
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
pub const NOTIFICATIONS_ACCEPTED: &str = "herald_notifications_accepted_total";

/// Describes every metric (help texts) once, for exporters that show them.
pub fn describe() {
    metrics::describe_counter!(
        LOG_APPENDED_RECORDS,
        "Records durably appended to the log, by topic."
    );
    metrics::describe_histogram!(
        LOG_APPEND_SECONDS,
        metrics::Unit::Seconds,
        "Time from append call to durable, by topic."
    );
    metrics::describe_histogram!(
        LOG_GROUP_COMMIT_RECORDS,
        "Records made durable by one group commit (one fsync)."
    );
    metrics::describe_counter!(
        PROJECTOR_APPLIED_EVENTS,
        "Events applied to the projection, by stage."
    );
    metrics::describe_histogram!(
        PROJECTOR_APPLY_SECONDS,
        metrics::Unit::Seconds,
        "Time to apply one batch to the projection, by stage."
    );
    metrics::describe_gauge!(
        PROJECTOR_LAG_RECORDS,
        "Records in the log not yet applied, by stage, over every partition (each replica \
         reports the whole: aggregate with max)."
    );
    metrics::describe_counter!(
        PROJECTOR_RESTARTS,
        "Times a projector stage failed and started again, by stage."
    );
    metrics::describe_counter!(
        PROJECTOR_UNDECODABLE,
        "Records the projector could not decode and skipped, by stage."
    );
    metrics::describe_counter!(
        PROJECTOR_EXPANDED,
        "Notification requests expanded into per-user events."
    );
    metrics::describe_counter!(
        PROJECTOR_DUPLICATE_REQUESTS,
        "Requests skipped because their notification id was already expanded."
    );
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests, by route and status.");
    metrics::describe_counter!(
        NOTIFICATIONS_ACCEPTED,
        "Notification requests accepted (202) after a durable append."
    );
}

pub fn log_appended(topic: Topic, records: usize, took: Duration) {
    metrics::counter!(LOG_APPENDED_RECORDS, "topic" => topic.name()).increment(records as u64);
    metrics::histogram!(LOG_APPEND_SECONDS, "topic" => topic.name()).record(took.as_secs_f64());
}

pub fn log_group_commit(records: usize) {
    metrics::histogram!(LOG_GROUP_COMMIT_RECORDS).record(records as f64);
}

pub fn projector_applied(stage: crate::Stage, events: usize, took: Duration) {
    metrics::counter!(PROJECTOR_APPLIED_EVENTS, "stage" => stage.name()).increment(events as u64);
    metrics::histogram!(PROJECTOR_APPLY_SECONDS, "stage" => stage.name())
        .record(took.as_secs_f64());
}

pub fn projector_lag(stage: crate::Stage, records: u64) {
    metrics::gauge!(PROJECTOR_LAG_RECORDS, "stage" => stage.name()).set(records as f64);
}

pub fn projector_restarted(stage: crate::Stage) {
    metrics::counter!(PROJECTOR_RESTARTS, "stage" => stage.name()).increment(1);
}

pub fn projector_undecodable(stage: crate::Stage) {
    metrics::counter!(PROJECTOR_UNDECODABLE, "stage" => stage.name()).increment(1);
}

pub fn projector_expanded(notifications: usize, duplicates: usize) {
    metrics::counter!(PROJECTOR_EXPANDED).increment(notifications as u64);
    metrics::counter!(PROJECTOR_DUPLICATE_REQUESTS).increment(duplicates as u64);
}

pub fn http_request(route: &'static str, status: u16) {
    metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

pub fn notification_accepted() {
    metrics::counter!(NOTIFICATIONS_ACCEPTED).increment(1);
}
