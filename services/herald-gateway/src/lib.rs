//! Herald's gateway: HTTP APIs over the log and projection ports.
//!
//! `app(state)` builds the whole router, so tests drive it with `tower::ServiceExt::oneshot`
//! and no socket. Every error is an [`AppError`]: an HTTP status and a JSON body with a stable,
//! machine-readable `code`.
//!
//! Users authenticate with JWTs (or single-use tickets for browser WebSockets); producers with
//! API keys or producer-scoped JWTs (`herald dev` leaves producers open).
#![forbid(unsafe_code)]

mod api;
pub mod auth;
pub mod config;
mod error;
pub mod hub;
mod ws;

pub use api::{AppState, ConnectionGuard, Limits, MAX_BODY_BYTES, app};
pub use auth::AuthConfig;
pub use config::GatewayConfig;
pub use error::AppError;
