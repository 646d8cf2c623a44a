//! `herald dev`: everything in one process on embedded, durable storage, with conveniences for
//! a laptop: a demo login and inbox page, a random JWT secret kept in the data directory, and
//! open producers (unless producer keys are given).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use super::DEFAULT_LISTEN;
use super::server::{AccessArgs, Knobs, Mode, Server, StorageArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Address of the HTTP API.
    #[arg(long, env = "HERALD_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    storage: StorageArgs,
    /// HS256 secret for user JWTs. Default: a random secret kept in DATA_DIR/dev-secret, so demo
    /// tokens survive restarts.
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

/// The dev JWT secret: given, or random and kept in the data directory so tokens survive restarts.
fn dev_secret(args: &Args) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &args.jwt_secret {
        return Ok(s.as_bytes().to_vec());
    }
    let dir = &args.storage.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let path = dir.join("dev-secret");
    match std::fs::read(&path) {
        Ok(s) if !s.is_empty() => Ok(s),
        _ => {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            std::fs::write(&path, &secret)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(secret.into_bytes())
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let hs256_secret = Some(dev_secret(&args)?);
    Server {
        mode: Mode::Dev,
        listen: args.listen,
        storage: args.storage,
        keys: args.keys,
        knobs: args.knobs,
        hs256_secret,
    }
    .run()
    .await
}
