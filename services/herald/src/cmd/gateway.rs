//! `herald gateway`: the production server on embedded storage (one node). Same code as
//! `herald dev`, without its conveniences: no demo login or page, producers must authenticate
//! (API keys or producer-scoped JWTs), and user tokens are verified with the keys you give.
//! With the Kafka adapter, gateways run as several replicas over a shared log.

use std::process::ExitCode;

pub use super::dev::Args;
use super::dev::{Mode, serve};

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    serve(args, Mode::Gateway).await
}
