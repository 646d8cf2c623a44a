//! The log port: partitioned, append-only topics with per-partition offsets.
//!
//! Callers choose the partition (see [`herald_core::partition`]), so every backend places a
//! user's events identically. An append returns only once its records are durable. Consumers
//! belong to a group whose committed offsets the log keeps; a consumer sees partition
//! assignments and revocations in the same ordered stream as records (Kafka's model; the embedded
//! log assigns every partition to its single member).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::cursor::Epoch;

/// Record header carrying the Avro full name of the value's schema.
pub const HEADER_SCHEMA: &str = "herald-schema";
/// Record header carrying the value's schema fingerprint (16 hex digits).
pub const HEADER_FINGERPRINT: &str = "herald-fingerprint";
/// Record header carrying the W3C trace context.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// Largest value accepted in one record, in bytes.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Herald's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Notification requests (key: notification id) and directory changes (key: user id).
    Requests,
    /// Per-user events (key: user id, partition: `partition_for(user id)`); a notification
    /// added for several users of one partition is one record there, keyed by its id.
    UserEvents,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::Requests, Topic::UserEvents];

    pub fn name(self) -> &'static str {
        match self {
            Topic::Requests => "requests",
            Topic::UserEvents => "user-events",
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Topic::Requests => 0,
            Topic::UserEvents => 1,
        }
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: i64,
}

/// A record read back, with its position. The record is shared: an adapter that keeps recent
/// records in memory hands the same one to every reader (the live hub, the stages) without
/// copying its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
    pub record: Arc<Record>,
}

impl StoredRecord {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic {topic} has {partitions} partitions; partition {partition} does not exist")]
    NoSuchPartition {
        topic: &'static str,
        partition: u32,
        partitions: u32,
    },
    #[error("record of {size} bytes exceeds the {max} byte limit")]
    RecordTooLarge { size: usize, max: usize },
    #[error("the log is shutting down")]
    Closed,
    #[error("log configuration: {0}")]
    Config(String),
    #[error("log storage: {0}")]
    Storage(String),
}

/// [`LogError::NoSuchPartition`] unless `partition` is one of the `partitions` of `topic`.
pub fn check_partition(topic: Topic, partition: u32, partitions: u32) -> Result<(), LogError> {
    if partition >= partitions {
        return Err(LogError::NoSuchPartition {
            topic: topic.name(),
            partition,
            partitions,
        });
    }
    Ok(())
}

/// What every log checks before an append: each record names one of the `partitions` of
/// `topic` and its value fits in [`MAX_RECORD_BYTES`].
pub fn check_append(topic: Topic, partitions: u32, records: &[Record]) -> Result<(), LogError> {
    for r in records {
        check_partition(topic, r.partition, partitions)?;
        if r.value.len() > MAX_RECORD_BYTES {
            return Err(LogError::RecordTooLarge {
                size: r.value.len(),
                max: MAX_RECORD_BYTES,
            });
        }
    }
    Ok(())
}

/// An event of a consumer's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// These partitions are now this consumer's; it reads each from its committed offset unless
    /// the caller seeks first.
    Assigned(Vec<u32>),
    /// These partitions are no longer this consumer's: finish or drop their work, do not commit
    /// them any more.
    Revoked(Vec<u32>),
    /// Records, in offset order within each partition.
    Records(Vec<StoredRecord>),
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The epoch resume cursors from this log carry.
    fn epoch(&self) -> Epoch;
    fn partitions(&self, topic: Topic) -> u32;
    /// Appends records; returns once they are durable, with their positions in input order.
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<Appended>, LogError>;
    /// Appends records no caller waits on soon (a session's deliveries, ACKs and marks, which
    /// it sends without waiting for the answer): durable on return and ordered like
    /// [`EventLog::append`], but the log may hold them a little to commit them with others
    /// (the embedded log: up to its relaxed linger, or until an `append` arrives). By default
    /// the same as `append`.
    async fn append_relaxed(
        &self,
        topic: Topic,
        records: Vec<Record>,
    ) -> Result<Vec<Appended>, LogError> {
        self.append(topic, records).await
    }
    /// Up to `max` records of one partition from offset `from` on; empty at the end.
    async fn read(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError>;
    /// The offset the next record appended to this partition will get.
    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError>;
    /// A member of consumer group `group` on `topic`.
    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn LogConsumer>, LogError>;
    /// A tail of chosen partitions of `topic`, outside any group (Kafka's `assign`): it follows
    /// no partition until told to, and commits nothing. The live hub follows the partitions of
    /// the users it has sessions for.
    async fn tail(&self, topic: Topic) -> Result<Box<dyn LogTail>, LogError>;
    /// Keeps a record the projector cannot use, with the reason, where operators can find it
    /// (the dead-letter topic on Kafka, a table in the embedded log). Durable on return.
    async fn dead_letter(&self, record: &StoredRecord, reason: &str) -> Result<(), LogError>;
    /// Dead-lettered records, oldest first: (source topic, partition, offset, reason).
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, LogError>;
}

/// A record kept aside because the projector could not use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    pub value: Vec<u8>,
}

/// A reader of chosen partitions (see [`EventLog::tail`]).
#[async_trait]
pub trait LogTail: Send {
    /// Reads `partition` from `from` on; if it was followed already, starts again at `from`.
    /// No record of it fetched before this call is returned after it.
    fn follow(&mut self, partition: u32, from: u64) -> Result<(), LogError>;
    /// Stops reading `partition`: no record of it is returned after this call.
    fn unfollow(&mut self, partition: u32) -> Result<(), LogError>;
    /// The next records of the followed partitions, in offset order within each; waits (without
    /// polling) until there are some. Cancel-safe: a call dropped before it returns loses
    /// nothing, and `follow`/`unfollow` may be called between calls.
    async fn next(&mut self, max_records: usize) -> Result<Vec<StoredRecord>, LogError>;
}

#[async_trait]
pub trait LogConsumer: Send {
    /// The next event; waits (without polling) until there is one. Cancel-safe: a call dropped
    /// before it returns loses nothing.
    async fn next(&mut self, max_records: usize) -> Result<ConsumerEvent, LogError>;
    /// Continue an assigned partition from `offset`.
    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError>;
    /// Commits the group's next offsets. Call only after their effects are durable.
    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), LogError>;
    /// Leaves the group, waiting a bounded time for it (on Kafka the leave moves the
    /// partitions to the other members at once, rather than after the session timeout).
    /// Dropping a consumer leaves too, without the wait; neither blocks the caller's thread.
    async fn close(self: Box<Self>) {}
}
