//! `herald dev` and `herald gateway`: log, projector, HTTP and WebSocket API in one process on
//! embedded storage. `dev` adds conveniences for a laptop (demo login and page, a persisted
//! random JWT secret, open producers); `gateway` is the same server with none of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use herald_embedded::{Access, EmbeddedLog, LogOptions};
use herald_gateway::{AppState, AuthConfig, GatewayConfig, Ports, app};
use herald_projector::Projector;
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_DATA_DIR, DEFAULT_LISTEN, init_tracing, log_path};

#[derive(clap::Args)]
pub struct Args {
    /// Where the log and projection files live (created if missing).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "HERALD_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Partitions of the user-events topic of a new log (an existing log keeps its own).
    #[arg(long, env = "HERALD_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: Option<u32>,
    /// Keep the projection in a shared store instead of DATA_DIR/projection.db:
    /// postgres://user@host:port/db or scylla://host:9042[,host…]/keyspace.
    #[arg(long, env = "HERALD_PROJECTION_URL")]
    projection_url: Option<String>,
    /// HS256 secret for user JWTs. Default: a random secret kept in DATA_DIR/dev-secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// RS256 public key (PEM file) for user JWTs (repeat).
    #[arg(long = "jwt-rs256-public-key", value_name = "FILE")]
    rs256_keys: Vec<PathBuf>,
    /// ES256 public key (PEM file) for user JWTs (repeat).
    #[arg(long = "jwt-es256-public-key", value_name = "FILE")]
    es256_keys: Vec<PathBuf>,
    /// JWKS file (an identity provider's key set) for user JWTs (repeat).
    #[arg(long = "jwks", value_name = "FILE")]
    jwks: Vec<PathBuf>,
    /// Producer API key as NAME=KEY (repeat). With any, producers must authenticate.
    #[arg(long = "producer-key", value_name = "NAME=KEY")]
    producer_keys: Vec<String>,
    /// Notifications per second per producer (sustained) and burst.
    #[arg(long, default_value_t = 1000.0)]
    producer_rate: f64,
    #[arg(long, default_value_t = 2000.0)]
    producer_burst: f64,
    /// Allowed Origin of WebSocket upgrades (repeat); none allows any.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Most WebSocket connections at once.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    max_connections: usize,
    /// Most WebSocket connections per user.
    #[arg(long, default_value_t = 16)]
    max_connections_per_user: usize,
    /// Server ping interval, milliseconds.
    #[arg(long, default_value_t = 25_000)]
    heartbeat_ms: u64,
    /// Reap a peer this long after a missed ping, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pong_timeout_ms: u64,
    /// Close a connection whose send queue stays full with no progress this long, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    slow_consumer_timeout_ms: u64,
    #[command(flatten)]
    kafka: super::KafkaArgs,
    /// Do not run the projector in this process (with Kafka, `herald projector` replicas do).
    /// Default: `herald gateway` on Kafka runs none; otherwise the process runs one.
    #[arg(long)]
    projector: Option<bool>,
}

/// Which server this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dev,
    Gateway,
}

/// The dev JWT secret: given, or random and kept in the data directory so tokens survive restarts.
fn dev_secret(args: &Args) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &args.jwt_secret {
        return Ok(s.as_bytes().to_vec());
    }
    let path = args.data_dir.join("dev-secret");
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

/// Resolves on SIGTERM or Ctrl-C. The handlers are registered when this is *called*, so a signal
/// that arrives while Herald is still starting up is not lost (nor fatal).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    serve(args, Mode::Dev).await
}

/// One writer per data directory: a second process would fight over log offsets.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let lock_path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another herald process is using {} (it holds {}); stop it or pick another --data-dir",
            dir.display(),
            lock_path.display()
        ),
    }
}

pub async fn serve(args: Args, mode: Mode) -> anyhow::Result<ExitCode> {
    if mode == Mode::Gateway
        && args.jwt_secret.is_none()
        && args.rs256_keys.is_empty()
        && args.es256_keys.is_empty()
        && args.jwks.is_empty()
    {
        anyhow::bail!(
            "herald gateway needs a way to verify user tokens: pass --jwt-secret, \
             --jwt-rs256-public-key, --jwt-es256-public-key or --jwks"
        );
    }
    let signal = shutdown_signal()?;
    let _telemetry = init_tracing("info");
    // Every connection is a file descriptor: take the whole allowance the system grants.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    herald_ports::telemetry::describe();

    if mode == Mode::Gateway
        && args.kafka.kafka_brokers.is_some()
        && args.projection_url.is_none()
        && args.projector != Some(true)
    {
        anyhow::bail!(
            "herald gateway on Kafka reads the projection that `herald projector` replicas write: \
             pass --projection-url (a shared PostgreSQL), or --projector true to run one here"
        );
    }
    let kafka = args.kafka.open().await?;
    // The data directory holds the embedded log, the embedded projection and the dev secret.
    let needs_dir = kafka.is_none() || args.projection_url.is_none() || mode == Mode::Dev;
    let lock = if needs_dir {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
        Some(lock_data_dir(&args.data_dir)?)
    } else {
        None
    };
    let log: Arc<dyn herald_ports::EventLog> = match &kafka {
        Some(k) => k.clone(),
        None => {
            let options = LogOptions {
                requests_partitions: None,
                user_partitions: args.partitions,
            };
            Arc::new(
                EmbeddedLog::open(&log_path(&args.data_dir), Access::ReadWrite, options)
                    .await
                    .context("opening the log")?,
            )
        }
    };
    let store = super::open_projection(
        args.projection_url.as_deref(),
        &args.data_dir,
        Access::ReadWrite,
        "",
    )
    .await?;

    let shutdown = CancellationToken::new();
    let run_projector = args
        .projector
        .unwrap_or(!(mode == Mode::Gateway && kafka.is_some()));
    let projector_task = run_projector.then(|| {
        let projector = Projector::new(log.clone(), store.clone());
        let token = shutdown.clone();
        tokio::spawn(async move { projector.run(token).await })
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let read_all = |files: &[PathBuf]| -> anyhow::Result<Vec<Vec<u8>>> {
        files
            .iter()
            .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
            .collect()
    };
    let mut producer_keys = std::collections::HashMap::new();
    for pk in &args.producer_keys {
        let (name, key) = pk
            .split_once('=')
            .with_context(|| format!("--producer-key {pk:?}: expected NAME=KEY"))?;
        herald_core::ids::validate_id("producer", name)?;
        producer_keys.insert(key.to_owned(), name.to_owned());
    }
    let hs256_secret = match mode {
        Mode::Dev => Some(dev_secret(&args)?),
        Mode::Gateway => args.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
    };
    let config = GatewayConfig {
        auth: AuthConfig {
            hs256_secret,
            rs256_public_pems: read_all(&args.rs256_keys)?,
            es256_public_pems: read_all(&args.es256_keys)?,
            jwks: read_all(&args.jwks)?,
            dev_login: mode == Mode::Dev,
            open_producers: mode == Mode::Dev && producer_keys.is_empty(),
            producer_keys,
            open_operators: true,
            ..Default::default()
        },
        producer_rate: args.producer_rate,
        producer_burst: args.producer_burst,
        heartbeat_interval: std::time::Duration::from_millis(args.heartbeat_ms.max(100)),
        pong_timeout: std::time::Duration::from_millis(args.pong_timeout_ms.max(100)),
        slow_consumer_timeout: std::time::Duration::from_millis(
            args.slow_consumer_timeout_ms.max(100),
        ),
        max_connections: args.max_connections,
        max_connections_per_user: args.max_connections_per_user,
        allowed_origins: args.allowed_origins.clone(),
        ..Default::default()
    };
    let ports = Ports {
        log: log.clone(),
        inbox: store.clone(),
        audit: Arc::new(herald_projector::audit::LogAuditor {
            log: log.clone(),
            store: store.clone(),
        }),
    };
    let mut state = AppState::start(ports, config, shutdown.clone()).await?;
    state.metrics = Some(Arc::new(move || prometheus.render()));
    let limits = state.connections.clone();
    let name = match mode {
        Mode::Dev => "herald dev",
        Mode::Gateway => "herald gateway",
    };
    let storage = match (&args.kafka.kafka_brokers, needs_dir) {
        (Some(b), true) => format!("log on Kafka at {b}, data in {}", args.data_dir.display()),
        (Some(b), false) => format!("log on Kafka at {b}"),
        (None, _) => format!("data in {}", args.data_dir.display()),
    };
    eprintln!(
        "{name}: listening on http://{} ({storage})",
        listener.local_addr()?
    );
    let server_token = shutdown.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        tokio::select! {
            _ = signal => tracing::info!("shutdown signal received"),
            _ = server_token.cancelled() => {},
        }
        // WebSocket sessions close with 1001 going away.
        server_token.cancel();
    });
    let served = server.await;
    limits.drained(std::time::Duration::from_secs(5)).await;
    // The server stopped accepting and finished its requests (appends included); stop the
    // projector between batches, then let the log writer commit what it holds.
    shutdown.cancel();
    let projected = match projector_task {
        Some(t) => t.await.context("projector task")?,
        None => Ok(()),
    };
    drop(log);
    served.context("HTTP server")?;
    projected.context("projector")?;
    drop(lock);
    eprintln!("{name}: stopped");
    Ok(ExitCode::SUCCESS)
}
