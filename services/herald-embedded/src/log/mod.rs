//! The embedded event log: SQLite, group commit on a dedicated writer thread.
//!
//! One folder, one role a file: `open` (create or open the file, partition counts, epoch,
//! format), `writer` (the writer thread's group commit), `batch` (how a format-2 log stores a
//! run of records in one row), `reader` (reads by position), `consumer` (the
//! single-member group consumer), `tail` (reads of chosen partitions), `dead_letters` and `headers` (how record headers are stored).
//! This file holds the shared state and the [`EventLog`] impl, which hands each call to its role.

mod batch;
mod consumer;
mod dead_letters;
mod headers;
mod open;
mod reader;
mod recent;
mod tail;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::cursor::Epoch;
use herald_ports::log::*;
use rusqlite::Connection;
use tokio::sync::{mpsc, watch};

use crate::sqlite::{Access, Pool};

pub use batch::{MAX_LOG_ROW_BYTES, MAX_LOG_ROW_RECORDS};
pub use recent::{RECENT_LOG_BYTES, RECENT_MIN_BYTES_PER_PARTITION};

/// Append requests that may wait for the writer thread; further callers wait for room.
pub const APPEND_QUEUE_DEPTH: usize = 1024;
/// Most records made durable by one group commit (one transaction, one fsync).
pub const MAX_GROUP_COMMIT_RECORDS: usize = 8192;
/// Longest a group of relaxed appends only ([`EventLog::append_relaxed`]: a session's
/// deliveries and ACKs, which nobody waits on) waits for more before its commit, unless
/// configured. Any other append ends the wait at once and shares the commit. A fanout to 1,000
/// sessions had the writer commit and fsync the sessions' progress hundreds of times a second,
/// a few records each.
pub const RELAXED_LINGER: Duration = Duration::from_millis(10);
/// How long a group with at least [`COMMIT_SIBLINGS`] callers waiting on it waits for more
/// before its commit, unless configured (PostgreSQL's `commit_delay`): none, as PostgreSQL's
/// default. Measured with 1 ms (docs/benchmarks.md, twenty-seventh stop): at 5k
/// notifications/s the log committed a third as often (about 600 instead of 1,800 times a
/// second) for 9–18% less of the server's CPU, and on a loaded machine the p99 at 5k/s fell
/// (78 to 45 ms, 67 to 25 ms in two sets of runs); on a quiet one the median rose by 1–5 ms and
/// the p99 at 1k/s from 7 to 14 ms in the report run, past JetStream's 10.8 ms there. A
/// setting (`--log-commit-delay-us 1000`) for a host near its CPU's limit, not a default. A
/// lone caller never waits for it.
pub const COMMIT_DELAY: Duration = Duration::ZERO;
/// Callers waiting on a group (appends that are not relaxed, and other writes) from which the
/// group waits [`COMMIT_DELAY`] for more before its commit: as many callers arriving during
/// one commit say more are on their way (PostgreSQL's `commit_siblings`).
pub const COMMIT_SIBLINGS: usize = 2;
/// The longest commit delay a log accepts (PostgreSQL's bound for `commit_delay`): every
/// waiting caller's append takes up to this much longer, the delay runs out even when the
/// group or the append queue fills during it, and closing the log waits for it.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);
/// Partitions of the user-events topic of a new log, unless configured.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Partitions of the requests topic of a new log, unless configured. One partition makes the
/// fanout expand requests in accept order, so every user's inbox follows the order in which
/// notifications were accepted (202); the fanout is one sequential stage either way.
pub const DEFAULT_REQUEST_PARTITIONS: u32 = 1;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// Partition counts for a *new* log (an existing log keeps the counts it was created with;
/// asking for different ones is an error: re-partitioning means a new log and a new epoch),
/// the writer's linger for relaxed appends ([`RELAXED_LINGER`] unless set; zero: none) and
/// its commit delay ([`COMMIT_DELAY`] unless set; zero: none; at most [`MAX_COMMIT_DELAY`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    pub requests_partitions: Option<u32>,
    pub user_partitions: Option<u32>,
    pub relaxed_linger: Option<Duration>,
    pub commit_delay: Option<Duration>,
}

/// How a log stores its records (`meta.format`); a log keeps the format it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// A row per record in `records` (logs created by builds before f5af648, 2026-12-03).
    Rows,
    /// A partition's consecutive records of one group commit in one row of `batches`
    /// (`batch.rs`): a few B-tree inserts per commit instead of two per record.
    Batches,
}

impl LogFormat {
    /// The format of a new log.
    pub const NEW: LogFormat = LogFormat::Batches;

    /// Its value in `meta.format`.
    fn meta(self) -> &'static str {
        match self {
            LogFormat::Rows => "1",
            LogFormat::Batches => "2",
        }
    }

    /// The format `meta.format` names (none: format 1, as every build has written it since the
    /// first); `Err` with the value this build does not know.
    fn from_meta(value: Option<&str>) -> Result<LogFormat, &str> {
        match value {
            None => Ok(LogFormat::Rows),
            Some(v) => [LogFormat::Rows, LogFormat::Batches]
                .into_iter()
                .find(|f| f.meta() == v)
                .ok_or(v),
        }
    }
}

struct Shared {
    path: PathBuf,
    access: Access,
    format: LogFormat,
    epoch: Epoch,
    partitions: [u32; 2],
    /// Next offset per partition, published after each commit (read-write mode only).
    ends: [Vec<AtomicU64>; 2],
    /// The newest records of each partition (read-write mode only; empty otherwise).
    recent: recent::Recent,
    /// Bumped after every commit that touched the topic; consumers wait on it.
    appended: [watch::Sender<u64>; 2],
    pool: Arc<Pool>,
}

impl Shared {
    /// The next offset of a partition as the live writer last published it.
    fn end(&self, topic: Topic, partition: u32) -> u64 {
        self.ends[topic.id() as usize][partition as usize].load(Ordering::Acquire)
    }
}

struct Inner {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<writer::Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, woken by an append that ends a relaxed group's linger.
    writer_thread: Option<Thread>,
    _checkpointer: Option<crate::sqlite::Checkpointer>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds, then exit.
        self.jobs.lock().expect("jobs lock").take();
        if let Some(t) = &self.writer_thread {
            t.unpark();
        }
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

/// The embedded log. Cheap to clone; the writer thread stops when the last clone is dropped,
/// after committing every append already queued.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

impl EmbeddedLog {
    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// How this log stores its records.
    pub fn format(&self) -> LogFormat {
        self.shared().format
    }

    fn check_partition(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        check_partition(topic, partition, self.partitions(topic))
    }

    /// Runs `f` with a pooled connection on a blocking thread.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LogError> {
        self.shared()
            .pool
            .run(f)
            .await
            .map_err(storage)?
            .map_err(storage)
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn epoch(&self) -> Epoch {
        self.shared().epoch
    }

    fn partitions(&self, topic: Topic) -> u32 {
        self.shared().partitions[topic.id() as usize]
    }

    #[tracing::instrument(level = "debug", skip_all, fields(topic = topic.name(), records = records.len()))]
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<Appended>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        check_append(topic, self.partitions(topic), &records)?;
        self.submit(topic, records, false).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(topic = topic.name(), records = records.len()))]
    async fn append_relaxed(
        &self,
        topic: Topic,
        records: Vec<Record>,
    ) -> Result<Vec<Appended>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        check_append(topic, self.partitions(topic), &records)?;
        self.submit(topic, records, true).await
    }

    async fn read(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.check_partition(topic, partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        self.read_records(topic, partition, from, max).await
    }

    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        self.check_partition(topic, partition)?;
        if self.shared().access == Access::ReadWrite {
            return Ok(self.shared().end(topic, partition));
        }
        let format = self.format();
        self.with_conn(move |c| reader::max_offset(c, format, topic, partition))
            .await
    }

    async fn dead_letter(&self, record: &StoredRecord, reason: &str) -> Result<(), LogError> {
        let (topic, partition, offset) = (record.topic.name(), record.partition, record.offset);
        let (reason, value) = (reason.to_owned(), record.record.value.clone());
        self.write(move |tx| dead_letters::keep(tx, (topic, partition, offset), &reason, &value))
            .await
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, LogError> {
        self.with_conn(move |c| dead_letters::oldest(c, max)).await
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        Ok(Box::new(consumer::EmbeddedConsumer::new(
            self, topic, group,
        )))
    }

    async fn tail(&self, topic: Topic) -> Result<Box<dyn LogTail>, LogError> {
        Ok(Box::new(tail::EmbeddedTail::new(self, topic)))
    }
}
