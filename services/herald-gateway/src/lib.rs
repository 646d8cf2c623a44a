//! Herald's gateway: HTTP APIs over the log and projection ports.
//!
//! `app(state)` builds the whole router, so tests drive it with `tower::ServiceExt::oneshot`
//! and no socket. Every error is an [`AppError`]: an HTTP status and a JSON body with a stable,
//! machine-readable `code`.
//!
//! Identity: until authentication lands (the gateway issue), inbox routes take the user from a
//! `user_id` query parameter and every producer is `dev`. This is for `herald dev` on loopback.
#![forbid(unsafe_code)]

mod api;
mod error;

pub use api::{AppState, MAX_BODY_BYTES, app};
pub use error::AppError;
