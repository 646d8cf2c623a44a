//! Every metric Herald exports, named in one place (vector's `internal_events` pattern).
//! Adapters, the projector and the gateway record through these helpers only.
//!
//! Latencies are Prometheus **histograms** (`_bucket`, `_sum`, `_count`), never summaries: a
//! histogram's buckets add up across replicas (`sum by (le) (rate(..._bucket[5m]))`), a
//! summary's quantiles do not. [`HISTOGRAM_BUCKETS`] gives every histogram its buckets; the
//! binary hands them to the exporter. Labels take a small, fixed set of values each (route
//! templates, transports, close codes, stages, topics), so no label can grow without bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::log::Topic;

pub const LOG_APPENDED_RECORDS: &str = "herald_log_appended_records_total";
pub const LOG_APPEND_SECONDS: &str = "herald_log_append_seconds";
pub const LOG_GROUP_COMMIT_RECORDS: &str = "herald_log_group_commit_records";
pub const LOG_OFFSET_HOLES: &str = "herald_log_offset_holes_total";
pub const PROJECTOR_APPLIED_EVENTS: &str = "herald_projector_applied_events_total";
pub const PROJECTOR_APPLY_SECONDS: &str = "herald_projector_apply_seconds";
pub const PROJECTOR_LAG_RECORDS: &str = "herald_projector_lag_records";
pub const PROJECTOR_UNDECODABLE: &str = "herald_projector_undecodable_records_total";
pub const PROJECTOR_EXPANDED: &str = "herald_projector_expanded_notifications_total";
pub const PROJECTOR_DUPLICATE_REQUESTS: &str = "herald_projector_duplicate_requests_total";
pub const PROJECTOR_RESTARTS: &str = "herald_projector_stage_restarts_total";
pub const PROJECTOR_TIMER_LEASE_HELD: &str = "herald_projector_timer_lease_held";
pub const PROJECTOR_READY: &str = "herald_projector_stage_ready";
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "herald_http_request_duration_seconds";
pub const HTTP_RATE_LIMITED: &str = "herald_http_rate_limited_total";
pub const NOTIFICATIONS_ACCEPTED: &str = "herald_notifications_accepted_total";
pub const HUB_RECORDS_READ: &str = "herald_hub_records_read_total";
pub const HUB_PARTITIONS_FOLLOWED: &str = "herald_hub_partitions_followed";
pub const SESSIONS_CONNECTED: &str = "herald_sessions_connected";
pub const SESSION_BYTES: &str = "herald_session_bytes";
pub const SESSIONS_CLOSED: &str = "herald_sessions_closed_total";
pub const SLOW_CONSUMER_DISCONNECTS: &str = "herald_slow_consumer_disconnects_total";
pub const DELIVERIES: &str = "herald_deliveries_total";
pub const REDELIVERIES: &str = "herald_redeliveries_total";
pub const DELIVERY_LATENCY_SECONDS: &str = "herald_delivery_latency_seconds";
pub const ACKS: &str = "herald_acks_total";
pub const REPLAY_NOTIFICATIONS: &str = "herald_replay_notifications";
pub const REPLAY_SECONDS: &str = "herald_replay_duration_seconds";
pub const TICKETS: &str = "herald_tickets_total";
pub const BUILD_INFO: &str = "herald_build_info";
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
pub const PROCESS_THREADS: &str = "process_threads";

/// Buckets of latencies measured inside one process (an append, a batch, an HTTP request):
/// 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of end-to-end delivery latency (accept to first send) and replay durations: 5 ms
/// to 1 h, since a device that was offline receives its backlog when it comes back.
pub const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Buckets of counts (records per group commit, notifications per replay).
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Every histogram and its buckets. A histogram missing here would be exported as a summary;
/// `every_histogram_has_buckets` checks that none is.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (LOG_APPEND_SECONDS, LATENCY_BUCKETS),
    (LOG_GROUP_COMMIT_RECORDS, COUNT_BUCKETS),
    (PROJECTOR_APPLY_SECONDS, LATENCY_BUCKETS),
    (HTTP_REQUEST_SECONDS, LATENCY_BUCKETS),
    (DELIVERY_LATENCY_SECONDS, DELIVERY_BUCKETS),
    (REPLAY_NOTIFICATIONS, COUNT_BUCKETS),
    (REPLAY_SECONDS, DELIVERY_BUCKETS),
];

/// Describes every metric (help texts) once, for exporters that show them.
pub fn describe() {
    metrics::describe_counter!(
        HUB_RECORDS_READ,
        "User-event records the gateway's live hub read from the log, by partition (the \
         topic's partition count bounds the label)."
    );
    metrics::describe_gauge!(
        HUB_PARTITIONS_FOLLOWED,
        "User-event partitions the gateway's live hub follows (those of its sessions' users)."
    );
    metrics::describe_counter!(
        LOG_OFFSET_HOLES,
        "Holes in a partition's offsets a Kafka reader saw (a later batch served before an \
         earlier one was readable), by outcome: filled (fetched again from the hole until it \
         filled) or skipped (still missing after the patience, read past)."
    );
    metrics::describe_counter!(
        LOG_APPENDED_RECORDS,
        "Records durably appended to the log, by topic."
    );
    metrics::describe_histogram!(
        LOG_APPEND_SECONDS,
        metrics::Unit::Seconds,
        "Time from append call to durable, by topic (relaxed appends, which may wait for a shared commit by design, are not timed)."
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
    metrics::describe_gauge!(
        PROJECTOR_TIMER_LEASE_HELD,
        "1 while this replica holds the timer lease (scans schedules and expiries), else 0."
    );
    metrics::describe_gauge!(
        PROJECTOR_READY,
        "1 while the stage has its partitions and is caught up to within the readiness bound."
    );
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request (to the response head), by route template and method."
    );
    metrics::describe_counter!(
        HTTP_RATE_LIMITED,
        "HTTP requests refused with 429 (rate or connection limits), by route template."
    );
    metrics::describe_counter!(
        NOTIFICATIONS_ACCEPTED,
        "Notification requests accepted (202) after a durable append."
    );
    metrics::describe_gauge!(
        SESSIONS_CONNECTED,
        "Open realtime connections, by transport (ws, sse)."
    );
    metrics::describe_gauge!(
        SESSION_BYTES,
        metrics::Unit::Bytes,
        "What all sessions hold for their devices (notifications in flight and queued, live events held, replay reads out), against --max-session-bytes; sampled every second."
    );
    metrics::describe_counter!(
        SESSIONS_CLOSED,
        "Realtime connections ended, by transport and close code (`none`: the client went away)."
    );
    metrics::describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Connections closed as slow consumers (4008), by transport."
    );
    metrics::describe_counter!(
        DELIVERIES,
        "Notifications sent to a device for the first time in a session."
    );
    metrics::describe_counter!(
        REDELIVERIES,
        "Notifications sent again in a session because no ACK came in time."
    );
    metrics::describe_histogram!(
        DELIVERY_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "From the request's accept time (or its deliver_at) to the first send to a device."
    );
    metrics::describe_counter!(ACKS, "ACKs received, by channel (ws frame, http request).");
    metrics::describe_histogram!(
        REPLAY_NOTIFICATIONS,
        "Notifications a session sent before `replayed` (what the device was owed)."
    );
    metrics::describe_histogram!(
        REPLAY_SECONDS,
        metrics::Unit::Seconds,
        "From a session's start to its `replayed` frame."
    );
    metrics::describe_counter!(TICKETS, "WebSocket tickets, by outcome (issued, refused).");
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which build and which command runs."
    );
    metrics::describe_gauge!(
        PROCESS_RESIDENT_MEMORY,
        metrics::Unit::Bytes,
        "Resident memory."
    );
    metrics::describe_gauge!(
        PROCESS_VIRTUAL_MEMORY,
        metrics::Unit::Bytes,
        "Virtual memory."
    );
    metrics::describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors.");
    metrics::describe_gauge!(PROCESS_MAX_FDS, "The file descriptor limit.");
    metrics::describe_gauge!(
        PROCESS_CPU_SECONDS,
        metrics::Unit::Seconds,
        "CPU time used, user and system (a running total)."
    );
    metrics::describe_gauge!(
        PROCESS_START_TIME,
        metrics::Unit::Seconds,
        "Start time of the process, Unix seconds."
    );
    metrics::describe_gauge!(PROCESS_THREADS, "Threads of the process.");
}

/// Registers the gateway's counters and gauges whose label values are known in advance at 0,
/// so a dashboard shows 0 (and `rate()` works) before the first event, not "no data".
pub fn zero_gateway() {
    metrics::counter!(NOTIFICATIONS_ACCEPTED).increment(0);
    metrics::counter!(DELIVERIES).increment(0);
    metrics::counter!(REDELIVERIES).increment(0);
    metrics::gauge!(HUB_PARTITIONS_FOLLOWED).increment(0.0);
    for transport in ["ws", "sse"] {
        metrics::gauge!(SESSIONS_CONNECTED, "transport" => transport).increment(0.0);
        metrics::counter!(SLOW_CONSUMER_DISCONNECTS, "transport" => transport).increment(0);
    }
    for via in ["ws", "http"] {
        metrics::counter!(ACKS, "via" => via).increment(0);
    }
    for outcome in ["issued", "refused"] {
        metrics::counter!(TICKETS, "outcome" => outcome).increment(0);
    }
}

/// Registers the projector's counters and gauges at 0 (see [`zero_gateway`]).
pub fn zero_projector() {
    for stage in crate::Stage::ALL {
        metrics::counter!(PROJECTOR_APPLIED_EVENTS, "stage" => stage.name()).increment(0);
        metrics::counter!(PROJECTOR_RESTARTS, "stage" => stage.name()).increment(0);
        metrics::counter!(PROJECTOR_UNDECODABLE, "stage" => stage.name()).increment(0);
        metrics::gauge!(PROJECTOR_READY, "stage" => stage.name()).set(0.0);
    }
    metrics::counter!(PROJECTOR_EXPANDED).increment(0);
    metrics::counter!(PROJECTOR_DUPLICATE_REQUESTS).increment(0);
    metrics::gauge!(PROJECTOR_TIMER_LEASE_HELD).set(0.0);
}

/// `took` is `None` for a relaxed append: its wait for a shared commit is by design, and the
/// histogram times what callers wait on.
pub fn log_appended(topic: Topic, records: usize, took: Option<Duration>) {
    metrics::counter!(LOG_APPENDED_RECORDS, "topic" => topic.name()).increment(records as u64);
    if let Some(took) = took {
        metrics::histogram!(LOG_APPEND_SECONDS, "topic" => topic.name()).record(took.as_secs_f64());
    }
}

/// The live hub read `records` records of `partition`.
pub fn hub_records_read(partition: u32, records: u64) {
    metrics::counter!(HUB_RECORDS_READ, "partition" => partition.to_string()).increment(records);
}

/// What all sessions hold, by weight (see [`SESSION_BYTES`]).
pub fn session_bytes(bytes: usize) {
    metrics::gauge!(SESSION_BYTES).set(bytes as f64);
}

pub fn hub_partitions_followed(partitions: usize) {
    metrics::gauge!(HUB_PARTITIONS_FOLLOWED).set(partitions as f64);
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

/// A hole in a partition's offsets that filled when fetched again, or (`skipped`) was read
/// past.
pub fn log_offset_hole(skipped: bool) {
    let outcome = if skipped { "skipped" } else { "filled" };
    metrics::counter!(LOG_OFFSET_HOLES, "outcome" => outcome).increment(1);
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

/// A status code as a label: the codes Herald answers with as static strings (no allocation
/// per request), any other formatted.
fn status_label(status: u16) -> metrics::SharedString {
    let known = match status {
        101 => "101",
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => return metrics::SharedString::from(status.to_string()),
    };
    metrics::SharedString::const_str(known)
}

/// An HTTP request answered: `route` is the matched route template (`/v1/inbox/{id}`), or
/// `unmatched` for a 404 that matched none; `method` is one of the standard methods or `other`.
pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    let method: &'static str = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let route = route.to_owned();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status_label(status))
        .increment(1);
    if status == 429 {
        metrics::counter!(HTTP_RATE_LIMITED, "route" => route.clone()).increment(1);
    }
    metrics::histogram!(HTTP_REQUEST_SECONDS, "route" => route, "method" => method)
        .record(took.as_secs_f64());
}

/// `n` notifications accepted (one request, or a batch: one counter lookup for all of them).
pub fn notifications_accepted(n: usize) {
    metrics::counter!(NOTIFICATIONS_ACCEPTED).increment(n as u64);
}

pub fn projector_timer_lease(held: bool) {
    metrics::gauge!(PROJECTOR_TIMER_LEASE_HELD).set(if held { 1.0 } else { 0.0 });
}

pub fn projector_ready(stage: crate::Stage, ready: bool) {
    metrics::gauge!(PROJECTOR_READY, "stage" => stage.name()).set(if ready { 1.0 } else { 0.0 });
}

/// A WebSocket ticket issued, or refused (rate limit or the ticket cap).
pub fn ticket(issued: bool) {
    let outcome = if issued { "issued" } else { "refused" };
    metrics::counter!(TICKETS, "outcome" => outcome).increment(1);
}

/// An ACK received: `via` is `ws` (a frame) or `http` (`POST /v1/ack`).
pub fn ack(via: &'static str) {
    metrics::counter!(ACKS, "via" => via).increment(1);
}

/// A realtime connection, counted in [`SESSIONS_CONNECTED`] while this guard lives.
pub struct SessionGauge {
    transport: &'static str,
}

impl SessionGauge {
    /// A connection of `transport` (`ws`, `sse`) opened.
    pub fn open(transport: &'static str) -> SessionGauge {
        metrics::gauge!(SESSIONS_CONNECTED, "transport" => transport).increment(1.0);
        SessionGauge { transport }
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics::gauge!(SESSIONS_CONNECTED, "transport" => self.transport).decrement(1.0);
    }
}

/// The close code of a slow consumer (`herald_core::protocol::Close::SlowConsumer`).
const SLOW_CONSUMER_CODE: u16 = 4008;

/// A realtime connection ended with close `code` (`None`: the client went away first).
pub fn session_closed(transport: &'static str, code: Option<u16>) {
    let code_label = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
    metrics::counter!(SESSIONS_CLOSED, "transport" => transport, "code" => code_label).increment(1);
    if code == Some(SLOW_CONSUMER_CODE) {
        metrics::counter!(SLOW_CONSUMER_DISCONNECTS, "transport" => transport).increment(1);
    }
}

/// What one session sent: deliveries and redeliveries, the end-to-end latency of first sends,
/// and the size and duration of its replay (everything sent before `replayed`). Shared by the
/// session's shell (`&self` methods, atomics), so it can be kept across awaits.
pub struct SessionMeter {
    started: Instant,
    replay_sent: AtomicU64,
    replayed: AtomicBool,
}

impl Default for SessionMeter {
    fn default() -> Self {
        SessionMeter {
            started: Instant::now(),
            replay_sent: AtomicU64::new(0),
            replayed: AtomicBool::new(false),
        }
    }
}

/// The handles every session of a gateway records its sends and ACKs with, registered once
/// with the recorder installed then (`counter!` looks its key up in the recorder on each call;
/// a handle is an atomic add). Cloning shares them.
#[derive(Clone)]
pub struct DeliveryMeters {
    deliveries: metrics::Counter,
    redeliveries: metrics::Counter,
    latency: metrics::Histogram,
    acks_ws: metrics::Counter,
}

impl DeliveryMeters {
    /// Registers the handles with the global recorder (install it first).
    pub fn register() -> Self {
        DeliveryMeters {
            deliveries: metrics::counter!(DELIVERIES),
            redeliveries: metrics::counter!(REDELIVERIES),
            latency: metrics::histogram!(DELIVERY_LATENCY_SECONDS),
            acks_ws: metrics::counter!(ACKS, "via" => "ws"),
        }
    }

    /// An ACK frame received over a WebSocket ([`ack`] with `ws`).
    pub fn ack_ws(&self) {
        self.acks_ws.increment(1);
    }
}

impl SessionMeter {
    /// A notification queued for the device: `attempt` 1 is a first send in this session,
    /// more a redelivery. `row` gives its accept time (or its `deliver_at`, if later), in Unix
    /// ms; `now_ms` is the send time.
    pub fn notification(
        &self,
        meters: &DeliveryMeters,
        row: &herald_core::projection::InboxRow,
        attempt: u32,
        now_ms: i64,
    ) {
        if attempt > 1 {
            meters.redeliveries.increment(1);
            return;
        }
        meters.deliveries.increment(1);
        let from = row.deliver_at.unwrap_or(row.created_at).max(row.created_at);
        let latency = (now_ms.saturating_sub(from)).max(0) as f64 / 1000.0;
        meters.latency.record(latency);
        if !self.replayed.load(Ordering::Relaxed) {
            self.replay_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A server frame queued: the first `replayed` ends the replay and records it.
    pub fn frame(&self, frame: &herald_core::protocol::ServerFrame) {
        if matches!(frame, herald_core::protocol::ServerFrame::Replayed { .. })
            && !self.replayed.swap(true, Ordering::Relaxed)
        {
            metrics::histogram!(REPLAY_NOTIFICATIONS)
                .record(self.replay_sent.load(Ordering::Relaxed) as f64);
            metrics::histogram!(REPLAY_SECONDS).record(self.started.elapsed().as_secs_f64());
        }
    }
}

/// Sets `herald_build_info{version, command}` to 1.
pub fn build_info(version: &'static str, command: &'static str) {
    metrics::gauge!(BUILD_INFO, "version" => version, "command" => command).set(1.0);
}

/// What the process uses, as the exporter should show it (read from `/proc/self` on Linux by
/// the binary; fields it cannot read are `None` and left out).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

pub fn process(stats: &ProcessStats) {
    let set = |name: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            metrics::gauge!(name).set(v);
        }
    };
    set(
        PROCESS_RESIDENT_MEMORY,
        stats.resident_bytes.map(|v| v as f64),
    );
    set(
        PROCESS_VIRTUAL_MEMORY,
        stats.virtual_bytes.map(|v| v as f64),
    );
    set(PROCESS_OPEN_FDS, stats.open_fds.map(|v| v as f64));
    set(PROCESS_MAX_FDS, stats.max_fds.map(|v| v as f64));
    set(PROCESS_START_TIME, stats.start_time_seconds);
    set(PROCESS_THREADS, stats.threads.map(|v| v as f64));
    // A running total the kernel keeps; exported as a gauge because the exporter's counters
    // are whole numbers (`rate()` works on it all the same).
    set(PROCESS_CPU_SECONDS, stats.cpu_seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_codes_digits() {
        for status in 100..=599u16 {
            assert_eq!(&*status_label(status), status.to_string(), "{status}");
        }
    }

    #[test]
    fn every_histogram_has_buckets() {
        let histograms = [
            LOG_APPEND_SECONDS,
            LOG_GROUP_COMMIT_RECORDS,
            PROJECTOR_APPLY_SECONDS,
            HTTP_REQUEST_SECONDS,
            DELIVERY_LATENCY_SECONDS,
            REPLAY_NOTIFICATIONS,
            REPLAY_SECONDS,
        ];
        for h in histograms {
            let buckets = HISTOGRAM_BUCKETS
                .iter()
                .find(|(n, _)| *n == h)
                .unwrap_or_else(|| panic!("{h} has no buckets"))
                .1;
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{h}: increasing");
        }
        assert_eq!(HISTOGRAM_BUCKETS.len(), histograms.len());
    }
}
