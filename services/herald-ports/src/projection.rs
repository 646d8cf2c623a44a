//! The projection port: per-user inboxes, device ACK state, the directory, the projector's own
//! bookkeeping (consumed offsets, expanded requests), and the queries the gateway serves from.
//!
//! The port is split by the roles its callers have: [`ProjectionWriter`] (the projector's
//! stages), [`InboxReader`] (the gateway), [`DirectoryReader`] (fanout), [`TimerQueries`] (the
//! timer stage) and [`Snapshots`] (replay and tests); [`ProjectionStore`] is their union, which
//! every adapter gets by implementing the roles. So the compiler enforces that the gateway does
//! not write the projection.
//!
//! Every write method is idempotent; stores that can (embedded, PostgreSQL) also commit the
//! stage offsets in the same transaction as the writes they cover.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::mem::ProjectionSnapshot;
use herald_core::model::{DirectoryChange, Preferences, Recipients, RoleDefinition, UserEvent};
use herald_core::projection::InboxRow;
pub use herald_core::projection::PageBound;

/// Largest page of the inbox a client asks for. A store's inbox query returns one row more at
/// most (`MAX_PAGE + 1`): the gateway asks for one more than the page, to know whether a next
/// page exists.
pub const MAX_PAGE: usize = 1000;

/// An event with its log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positioned<T> {
    pub partition: u32,
    pub offset: u64,
    pub event: T,
}

impl<T> Positioned<T> {
    /// Whether a consumer whose stored next offsets are `applied` has applied this event
    /// already: a stale batch (from a replica that lost the partition) skips such events.
    pub fn covered_by(&self, applied: &BTreeMap<u32, u64>) -> bool {
        applied
            .get(&self.partition)
            .is_some_and(|&next| self.offset < next)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboxFilter {
    /// Rows that are not archived (and shown).
    #[default]
    Inbox,
    /// Unread rows that are not archived.
    Unread,
    /// Archived rows.
    Archived,
}

/// A page of a user's inbox, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxQuery {
    /// Only rows with `seq < before` (paging); `None` starts at the newest.
    pub before: Option<u64>,
    pub limit: usize,
    pub filter: InboxFilter,
    /// Rows not yet due (`deliver_at`) or past `expires_at` at this time are left out.
    pub now_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("projection configuration: {0}")]
    Config(String),
    #[error("projection storage: {0}")]
    Storage(String),
    #[error("projection data is corrupt: {0}")]
    Corrupt(String),
}

/// A projector stage: a consumer group on one topic, and the name its applied offsets are
/// stored under in the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `requests` → `user-events`, directory and roles.
    Fanout,
    /// `user-events` → inbox rows.
    Inbox,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Fanout, Stage::Inbox];

    /// The consumer-group suffix and the projection's consumer name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Fanout => "fanout",
            Stage::Inbox => "inbox",
        }
    }

    /// The topic the stage consumes.
    pub fn topic(self) -> crate::log::Topic {
        match self {
            Stage::Fanout => crate::log::Topic::Requests,
            Stage::Inbox => crate::log::Topic::UserEvents,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How far each stage has applied the log. Readers and writers both need it.
#[async_trait]
pub trait AppliedOffsets: Send + Sync + 'static {
    /// Next offsets stage `stage` has durably applied, by partition.
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError>;

    /// This store's identity: chosen once when the store is created and kept in it, the same
    /// for every process that opens it. Consumer groups are named after it, so projectors of
    /// different stores never share a group (and never take partitions into the wrong store).
    fn store_id(&self) -> &str;

    /// The generation of `stage`'s consumer group, 0 until a replica advances it. Replicas join
    /// the group of the current generation, so a group the log cannot get going again (a broker
    /// that left it without an assignment) is left for a fresh one; the stage's offsets are in
    /// the store, not the group, so nothing is lost or repeated by the move.
    async fn group_generation(&self, stage: Stage) -> Result<u64, ProjectionError>;

    /// Moves `stage`'s generation past `seen` (to `seen + 1`, unless it is further already) and
    /// returns it. Replicas that find the same stall move it once, together.
    async fn advance_group_generation(
        &self,
        stage: Stage,
        seen: u64,
    ) -> Result<u64, ProjectionError>;
}

/// The store's key of `stage`'s consumer-group generation (in its meta table).
pub fn group_generation_key(stage: Stage) -> String {
    format!("group_generation.{}", stage.name())
}

/// What the projector writes. Every write is idempotent and stores the stage's offsets with
/// the writes they cover (or after them).
#[async_trait]
pub trait ProjectionWriter: AppliedOffsets {
    /// Folds user events (in log order per partition) and stores `offsets` for `stage`.
    async fn apply_user_events(
        &self,
        stage: Stage,
        events: &[Positioned<UserEvent>],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError>;

    /// Applies directory changes and stores `offsets` for `stage`.
    async fn apply_directory(
        &self,
        stage: Stage,
        changes: &[DirectoryChange],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError>;

    /// Defines roles (RBAC) and stores `offsets` for `stage`.
    async fn define_roles(
        &self,
        stage: Stage,
        roles: &[RoleDefinition],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError>;

    /// Records requests as expanded (with their recipients), removes them from the schedule,
    /// and stores `offsets` for `stage`.
    async fn record_expansions(
        &self,
        stage: Stage,
        expansions: &[(String, Vec<String>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError>;

    /// Holds requests until their `deliver_at` (`(notification id, due ms, encoded request)`),
    /// and stores `offsets` for `stage`. Scheduling an id twice keeps one entry.
    async fn schedule(
        &self,
        stage: Stage,
        requests: &[(String, i64, Vec<u8>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError>;
}

/// What the gateway reads: inboxes, unread counts, what a device has not acknowledged. It has
/// no way to write.
#[async_trait]
pub trait InboxReader: AppliedOffsets {
    async fn inbox(
        &self,
        user_id: &str,
        query: &InboxQuery,
    ) -> Result<Vec<InboxRow>, ProjectionError>;

    /// The stored unread count (invariant: equals the unread, listed rows).
    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError>;

    /// Rows a device has not acknowledged, oldest first: `seq > after` (all when `None`),
    /// listed, due at `now_ms`, above the device's cumulative cursor and not ACKed by id; as
    /// many as `bound` takes ([`PageBound::take`]: up to [`PageBound::row_limit`], and up to
    /// the first row that takes their weight past its bytes), and a store reads no more rows
    /// than that into memory (PostgreSQL, which weighs on the server in characters the strings
    /// other than the payload where the database is not UTF-8, some more there).
    async fn pending(
        &self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        now_ms: i64,
        bound: PageBound,
    ) -> Result<Vec<InboxRow>, ProjectionError>;

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError>;

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError>;

    /// The user's newest preferences document (empty when they never set one).
    async fn preferences(&self, user_id: &str) -> Result<Preferences, ProjectionError>;
}

/// What the fanout reads: the directory and its own bookkeeping of expanded requests.
#[async_trait]
pub trait DirectoryReader: Send + Sync + 'static {
    /// Of `notification_ids`, those already expanded into inbox events.
    async fn expanded(&self, notification_ids: &[String]) -> Result<Vec<String>, ProjectionError>;

    /// Recipients of a notification request, as of the directory now: sorted, each user once.
    /// Topic subscribers are filtered by RBAC: a user with roles receives a topic only if one of
    /// their roles lists it (or `*`); a user without roles receives every topic they follow.
    async fn resolve(&self, recipients: &Recipients) -> Result<Vec<String>, ProjectionError>;

    /// The users a notification was expanded to (for audit); empty if never expanded.
    async fn expansion_of(&self, notification_id: &str) -> Result<Vec<String>, ProjectionError>;

    /// The preferences of those of `user_ids` who have a document (users without one are left
    /// out), in any order. Callers pass at most [`MAX_PREFERENCE_LOOKUP`] users at once.
    async fn preferences_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Preferences)>, ProjectionError>;
}

/// Most users one [`DirectoryReader::preferences_of`] call asks about.
pub const MAX_PREFERENCE_LOOKUP: usize = 1000;

/// A lease: who holds it, and until when (Unix ms, the holder's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires_at_ms: i64,
}

/// The name of the timer stage's lease: only its holder scans schedules and expiries.
pub const TIMER_LEASE: &str = "timers";

/// What the timer stage reads (scheduled requests and rows past their expiry), and the lease
/// that makes one replica of many do it.
#[async_trait]
pub trait TimerQueries: Send + Sync + 'static {
    /// Takes lease `name` for `holder` until `now_ms + ttl_ms`, or renews it, when it is free,
    /// expired at `now_ms`, or held by `holder` already; otherwise leaves it. Returns the lease
    /// as it stands after the attempt (the caller holds it when `holder` is its own id).
    /// Atomic: two replicas trying at once never both get it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, ProjectionError>;

    /// Lets lease `name` go (expires it now) if `holder` holds it, so another replica takes it
    /// at its next attempt instead of after the expiry. A lease someone else holds is left.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), ProjectionError>;

    /// Lease `name` as stored, if anyone ever took it.
    async fn lease(&self, name: &str) -> Result<Option<Lease>, ProjectionError>;

    /// Scheduled requests due at `now_ms`, earliest first (expanding one removes it: see
    /// `record_expansions`).
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError>;

    /// Listed rows whose `expires_at` is at or before `now_ms` and that have no `Expired` event
    /// applied yet, as (user, notification id).
    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError>;
}

/// The whole projection in canonical form (for `herald replay` and tests).
#[async_trait]
pub trait Snapshots: Send + Sync + 'static {
    async fn snapshot(&self) -> Result<ProjectionSnapshot, ProjectionError>;
}

/// A whole projection store: every role. Adapters implement the roles; this is their union,
/// for the projector and the binary. The gateway only ever holds an [`InboxReader`].
pub trait ProjectionStore:
    ProjectionWriter + InboxReader + DirectoryReader + TimerQueries + Snapshots
{
}

impl<T> ProjectionStore for T where
    T: ProjectionWriter + InboxReader + DirectoryReader + TimerQueries + Snapshots + ?Sized
{
}
