//! `herald gateway`: the production server. The same code as `herald dev` without its
//! conveniences: no demo login or page, producers must authenticate (API keys or
//! producer-scoped JWTs), and user tokens are verified with the keys you give. On embedded
//! storage it runs the projector too (one node); on Kafka it is one of several replicas.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::DEFAULT_LISTEN;
use super::server::{AccessArgs, Knobs, Mode, Server, StorageArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Address of the HTTP API.
    #[arg(long, env = "HERALD_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    storage: StorageArgs,
    /// HS256 secret for user JWTs. No default: give this or public keys (below).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[command(flatten)]
    keys: AccessArgs,
    #[command(flatten)]
    knobs: Knobs,
}

impl Args {
    /// The knob flags as given.
    #[cfg(test)]
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.jwt_secret.is_none()
        && args.keys.rs256_keys.is_empty()
        && args.keys.es256_keys.is_empty()
        && args.keys.jwks.is_empty()
    {
        anyhow::bail!(
            "herald gateway needs a way to verify user tokens: pass --jwt-secret, \
             --jwt-rs256-public-key, --jwt-es256-public-key or --jwks"
        );
    }
    Server {
        mode: Mode::Gateway,
        listen: args.listen,
        storage: args.storage,
        keys: args.keys,
        knobs: args.knobs,
        hs256_secret: args.jwt_secret.map(String::into_bytes),
    }
    .run()
    .await
}
