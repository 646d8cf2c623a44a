//! The projector: Herald's stream processor, written once against the ports.
//!
//! Two stages, each a consumer group on one topic:
//! * **fanout** (`requests` → `user-events`): expands each notification request into one
//!   `NotificationAdded` per recipient, appended to the recipient's partition, and applies
//!   directory changes. A request whose notification id is already expanded is skipped, so a
//!   producer retry never creates a second notification.
//! * **inbox** (`user-events` → projection): folds per-user events into the projection store.
//!
//! Effects come before offsets: the fanout appends the user events (durably) *before* it records
//! the request as expanded together with its offset; the inbox stage stores its offsets in the
//! same transaction as the writes (embedded) or after them, and commits the log's group offsets
//! last. A crash in between replays a suffix, which the idempotent fold absorbs; a duplicate
//! `NotificationAdded` from a repeated expansion is a no-op in the fold (same id, same user), and
//! the fanout does not repeat an interrupted expansion in the first place (`recovery`).
//!
//! Modules: `stage` (one stage's consumer loop), `fanout`, `inbox`, `timers` (behind a lease in
//! the store, so one replica of many scans schedules), `recovery`, [`rebuild`] (`herald replay`),
//! [`audit`], and [`readiness`] (what `/readyz` reports).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::model::UserEvent;
use herald_ports::log::{EventLog, LogError, StoredRecord};
use herald_ports::projection::{Positioned, ProjectionError, ProjectionStore, Stage};
use tokio_util::sync::CancellationToken;

/// Most records a stage takes from the log per batch.
pub const MAX_BATCH_RECORDS: usize = 2048;
/// Most per-user records appended by the fanout in one call.
pub const FANOUT_APPEND_CHUNK: usize = 4096;
/// Most bytes of records the fanout gathers for one append (a `NotificationsAdded` can be a
/// few hundred KiB).
pub const FANOUT_APPEND_BYTES: usize = 16 * 1024 * 1024;
/// Most per-user events the inbox stage and the rebuild hand the store in one call, give or
/// take one record's: a `NotificationsAdded` is an event per recipient, so a batch of records
/// can hold many more events than records, and each carries its notification's content.
pub const MAX_APPLY_EVENTS: usize = 8192;
/// Least time between two projection-lag measurements of a stage.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// How often the timer stage looks for due scheduled requests and expired rows.
pub const TIMER_INTERVAL: Duration = Duration::from_millis(250);
/// Most scheduled requests or expiring rows handled per timer tick.
const TIMER_BATCH: usize = 512;
/// How long the timer lease lasts without renewal. The holder renews it every third of this;
/// a replica that dies is replaced by another within about this plus a third (the others try
/// every third of it too). The holder stops scanning once less than a third is left without a
/// renewal, so two replicas scan at the same time only if their clocks differ by more than a
/// third of this (and their work is idempotent even then).
pub const TIMER_LEASE_TTL: Duration = Duration::from_secs(15);
/// How long the timer stage remembers an `Expired` it appended (so it does not append it again
/// while the projection catches up; a repeat would be harmless, only wasteful).
const EXPIRED_MEMORY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("cannot encode a user event: {0}")]
    Encode(#[from] herald_core::CoreError),
    #[error(
        "{stage} partition {partition} has not moved for {secs} s with records to apply: \
         the replicas move to consumer-group generation {generation}"
    )]
    Stalled {
        stage: Stage,
        partition: u32,
        secs: u64,
        generation: u64,
    },
    #[error("{stage}'s consumer group moved to generation {generation}")]
    GroupMoved { stage: Stage, generation: u64 },
}

/// How long a partition with records to apply may go without any replica applying one before
/// the replicas move to a fresh consumer group (a group left without an assignment, which the
/// tansu broker does when its leader leaves mid-rebalance). Longer than librdkafka's default
/// session timeout (45 s), within which a dead member's partitions wait anyway.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub mod audit;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Next offsets after `records`, per partition.
fn next_offsets(records: &[StoredRecord], into: &mut BTreeMap<u32, u64>) {
    for r in records {
        let e = into.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
}

fn offsets_vec(m: &BTreeMap<u32, u64>) -> Vec<(u32, u64)> {
    m.iter().map(|(p, o)| (*p, *o)).collect()
}

/// The projector over a log and a projection store.
pub struct Projector<L: ?Sized, P: ?Sized> {
    log: Arc<L>,
    store: Arc<P>,
    stall_timeout: Duration,
    /// This replica's name as the timer lease's holder: unique per replica.
    instance_id: String,
    timer_lease_ttl: Duration,
    ready_max_lag: u64,
    /// Fanout writes one `NotificationAdded` per recipient, never a `NotificationsAdded`.
    single_user_records: bool,
    status: Arc<readiness::Status>,
    /// When the fanout stage last took a batch: the inbox stage's batch target follows it.
    fanout_activity: Arc<stage::FanoutActivity>,
}

impl<L: ?Sized, P: ?Sized> Clone for Projector<L, P> {
    fn clone(&self) -> Self {
        Projector {
            log: self.log.clone(),
            store: self.store.clone(),
            stall_timeout: self.stall_timeout,
            instance_id: self.instance_id.clone(),
            timer_lease_ttl: self.timer_lease_ttl,
            ready_max_lag: self.ready_max_lag,
            single_user_records: self.single_user_records,
            status: self.status.clone(),
            fanout_activity: self.fanout_activity.clone(),
        }
    }
}

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    pub fn new(log: Arc<L>, store: Arc<P>) -> Self {
        Projector {
            log,
            store,
            stall_timeout: STALL_TIMEOUT,
            instance_id: format!("projector-{:016x}", rand::random::<u64>()),
            timer_lease_ttl: TIMER_LEASE_TTL,
            ready_max_lag: herald_ports::readiness::READY_MAX_LAG_RECORDS,
            single_user_records: false,
            status: Default::default(),
            fanout_activity: Arc::new(stage::FanoutActivity::new()),
        }
    }

    /// This replica's name as holder of the timer lease (default: `projector-` and 16 random
    /// hex digits). It must differ between replicas of one store; a replica that is the only
    /// possible one (it holds the data directory's lock) may keep one name across restarts, so
    /// that it takes its own lease back at once after a crash.
    pub fn with_instance_id(self, instance_id: impl Into<String>) -> Self {
        Projector {
            instance_id: instance_id.into(),
            ..self
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The timer lease's time to live (default [`TIMER_LEASE_TTL`]).
    pub fn with_timer_lease_ttl(self, timer_lease_ttl: Duration) -> Self {
        Projector {
            timer_lease_ttl,
            ..self
        }
    }

    /// How many records behind a stage may be and count as ready (default
    /// [`herald_ports::readiness::READY_MAX_LAG_RECORDS`]).
    pub fn with_ready_max_lag(self, ready_max_lag: u64) -> Self {
        Projector {
            ready_max_lag,
            ..self
        }
    }

    /// With `true`, fanout writes a `NotificationAdded` per recipient, as Herald did before
    /// `NotificationsAdded` (one record per partition for a notification to several users):
    /// for a rolling upgrade, while gateways or projectors that cannot read it still run.
    pub fn with_single_user_records(self, single_user_records: bool) -> Self {
        Projector {
            single_user_records,
            ..self
        }
    }

    /// Whether each stage has its partitions and has caught up, and who holds the timer lease.
    pub fn readiness(&self) -> herald_ports::readiness::Report {
        self.status.report(self.ready_max_lag)
    }

    /// The stall timeout (default [`STALL_TIMEOUT`]).
    pub fn with_stall_timeout(self, stall_timeout: Duration) -> Self {
        Projector {
            stall_timeout,
            ..self
        }
    }

    /// Runs all stages (fanout, inbox, timers) until `shutdown` is cancelled or one fails.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let fanout = self.run_stage(Stage::Fanout, shutdown.clone());
        let inbox = self.run_stage(Stage::Inbox, shutdown.clone());
        let timers = self.run_timers(shutdown.clone());
        let result = tokio::try_join!(fanout, inbox, timers).map(|_| ());
        if result.is_err() {
            shutdown.cancel();
        }
        result
    }

    /// Runs only the fanout stage (requests → user events) until `shutdown`.
    pub async fn run_fanout(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        self.run_stage(Stage::Fanout, shutdown).await
    }

    /// Runs only the inbox stage (user events → projection) until `shutdown`.
    pub async fn run_inbox(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        self.run_stage(Stage::Inbox, shutdown).await
    }
}

mod fanout;
mod inbox;
pub mod readiness;
mod rebuild;
mod recovery;
mod stage;
mod timers;

pub use rebuild::{Progress, rebuild};

/// The per-user events of a user-events record, each at the record's partition and offset: its
/// one event, or an `Added` per recipient of a `NotificationsAdded`. `Ok(None)`: a request
/// record (on the wrong topic).
fn user_events_of(
    r: &StoredRecord,
) -> Result<Option<Vec<Positioned<UserEvent>>>, herald_core::CoreError> {
    let events = herald_core::codec::decode(&r.record.value)?.into_user_events();
    Ok(events.map(|events| {
        events
            .into_iter()
            .map(|event| Positioned {
                partition: r.partition,
                offset: r.offset,
                event,
            })
            .collect()
    }))
}
pub use stage::group_name;
