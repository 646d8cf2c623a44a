//! Herald's domain, with no I/O: no tokio, no files, no sockets.
//!
//! * [`model`]: notification requests, recipients, per-user events and directory changes.
//! * [`codec`]: Avro single-object encoding of every event, with a schema registry keyed by
//!   fingerprint so older writer schemas still decode.
//! * [`partition`]: the stable user → partition hash, and [`cursor`]: epoch-tagged resume cursors.
//! * [`projection`]: the inbox projection fold (`state × event → writes`) and its invariants.
//! * [`batch`]: the fold over a cache of fetched facts, for stores read asynchronously.
//! * [`recipients`]: who a request goes to, as of the directory (groups, topics under RBAC).
//! * [`delivery`]: one device's send window and redelivery timers; [`session`]: a device's
//!   whole session (replay → live merge, ACKs, marks, flow) as a pure state machine.
//! * [`time`]: RFC 3339 formatting and parsing over a documented range of Unix milliseconds.
//! * [`mem`]: an in-memory projection state, used by unit and property tests and as the
//!   canonical snapshot that adapters are compared against.
#![forbid(unsafe_code)]

pub mod batch;
pub mod codec;
pub mod cursor;
pub mod delivery;
pub mod error;
pub mod ids;
pub mod mem;
pub mod model;
pub mod partition;
pub mod projection;
pub mod protocol;
pub mod recipients;
pub mod session;
pub mod time;

pub use error::CoreError;
