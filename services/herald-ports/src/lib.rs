//! Herald's ports. The projector and the gateway are written once against these traits; each
//! backend (embedded SQLite, Kafka, PostgreSQL, ScyllaDB) is an adapter that passes the same
//! contract suite ([`contract`], behind the `contract` feature).
#![forbid(unsafe_code)]

pub mod log;
pub mod projection;
pub mod records;
pub mod telemetry;

#[cfg(feature = "contract")]
pub mod contract;

pub use log::{
    Appended, ConsumerEvent, EventLog, LogConsumer, LogError, Record, StoredRecord, Topic,
};
pub use projection::{InboxFilter, InboxQuery, Positioned, ProjectionError, ProjectionStore};
