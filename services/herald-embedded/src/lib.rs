//! Herald's embedded backends on SQLite: everything in one process, durable, no server.
//!
//! * [`EmbeddedLog`]: the log port. Records found by (topic, partition, offset), a
//!   partition's records of one commit in one row ([`LogFormat`]); a dedicated writer thread group-commits concurrent appends, so one fsync covers many
//!   callers, and an append resolves only after its commit (WAL, `synchronous=FULL`).
//! * [`EmbeddedProjection`]: the projection port. The core fold runs inside a SQLite
//!   transaction that also stores the consumer offsets, so writes and offsets commit together.
//!
//! Their schemas are `schemas/sql/sqlite/001_log.sql` and `001_projection.sql` beside it, applied
//! whenever a file is opened read-write. Both files open in WAL mode, so other processes
//! (`herald audit`, `herald replay`) can read them while `herald dev` writes.
#![forbid(unsafe_code)]

mod log;
mod projection;
mod sqlite;

pub use log::{
    APPEND_QUEUE_DEPTH, COMMIT_DELAY, COMMIT_SIBLINGS, EmbeddedLog, LogFormat, LogOptions,
    MAX_COMMIT_DELAY, MAX_GROUP_COMMIT_RECORDS, MAX_LOG_ROW_BYTES, MAX_LOG_ROW_RECORDS,
    RECENT_LOG_BYTES, RECENT_MIN_BYTES_PER_PARTITION, RELAXED_LINGER,
};
pub use projection::EmbeddedProjection;
pub use sqlite::{Access, READ_POOL_SIZE};
