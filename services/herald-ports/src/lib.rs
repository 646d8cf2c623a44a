//! Herald's ports. The projector and the gateway are written once against these traits; each
//! backend (embedded SQLite, Kafka, PostgreSQL, ScyllaDB) is an adapter that passes the same
//! contract suite ([`contract`], behind the `contract` feature). [`transactional`] is the batch
//! loop that the stores with transactions share.
#![forbid(unsafe_code)]

pub mod audit;
pub mod log;
pub mod presence;
pub mod projection;
pub mod readiness;
pub mod records;
pub mod telemetry;
pub mod transactional;

#[cfg(feature = "contract")]
pub mod contract;

pub use audit::{AuditBudget, AuditEntry, AuditError, AuditReport, AuditSubject, Auditor};
pub use log::{
    Appended, ConsumerEvent, EventLog, LogConsumer, LogError, LogTail, Record, StoredRecord, Topic,
};
pub use presence::{PresenceBus, PresenceFeed};
pub use projection::{
    AppliedOffsets, DirectoryReader, InboxFilter, InboxQuery, InboxReader, Lease, Positioned,
    ProjectionError, ProjectionStore, ProjectionWriter, Snapshots, Stage, TimerQueries,
};

/// The role traits of the projection port, for code that holds a whole store and calls its
/// methods (`use herald_ports::prelude::*`).
pub mod prelude {
    pub use crate::projection::{
        AppliedOffsets, DirectoryReader, InboxReader, ProjectionStore, ProjectionWriter, Snapshots,
        TimerQueries,
    };
}
