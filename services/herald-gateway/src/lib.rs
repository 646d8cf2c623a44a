//! Herald's gateway: HTTP APIs and live sessions over the log and projection ports.
//!
//! `app(state)` builds the whole router, so tests drive it with `tower::ServiceExt::oneshot`
//! and no socket. Every error is an [`AppError`]: an HTTP status and a JSON body with a stable,
//! machine-readable `code`.
//!
//! Module map (no cycles: each module only uses those above it):
//! * [`clock`], [`error`], [`limits`]: the wall clock, errors, token buckets and connection
//!   limits;
//! * [`auth`] (keys, tickets), [`config`], [`hub`] (the live tail of user events);
//! * [`state`]: what handlers and sessions share; [`extract`]: JSON, query and caller
//!   extractors;
//! * [`session`]: the I/O shell over `herald_core::session` and its transports (WebSocket, SSE);
//! * [`routes`]: one module per resource, each group behind the check of its callers.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod config;
mod error;
pub mod extract;
pub mod hub;
pub mod limits;
pub mod presence;
pub mod queue;
pub mod routes;
pub mod serve;
pub mod session;
pub mod state;

pub use auth::AuthConfig;
pub use config::GatewayConfig;
pub use error::AppError;
pub use limits::MAX_BODY_BYTES;
pub use routes::app;
pub use serve::{HttpOptions, serve};
pub use state::{AppState, Ports, StartError};
