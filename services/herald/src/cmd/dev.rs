//! `herald dev`: log, projector and HTTP API in one process on embedded storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};
use herald_gateway::{AppState, app};
use herald_projector::Projector;
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_DATA_DIR, DEFAULT_LISTEN, init_tracing, log_path, projection_path};

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
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are registered when this is *called*, so a signal
/// that arrives while Herald is still starting up is not lost (nor fatal).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
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
    let signal = shutdown_signal()?;
    init_tracing("info");
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    herald_ports::telemetry::describe();

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    // One writer per data directory: a second `herald dev` would fight over log offsets.
    let lock_path = args.data_dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another herald process is using {} (it holds {}); stop it or pick another --data-dir",
            args.data_dir.display(),
            lock_path.display()
        ),
    }
    let options = LogOptions {
        requests_partitions: None,
        user_partitions: args.partitions,
    };
    let log = Arc::new(
        EmbeddedLog::open(&log_path(&args.data_dir), Access::ReadWrite, options)
            .await
            .context("opening the log")?,
    );
    let store = Arc::new(
        EmbeddedProjection::open(&projection_path(&args.data_dir), Access::ReadWrite)
            .await
            .context("opening the projection")?,
    );

    let shutdown = CancellationToken::new();
    let projector = Projector::new(log.clone(), store.clone());
    let projector_task = {
        let token = shutdown.clone();
        tokio::spawn(async move { projector.run(token).await })
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let state = AppState {
        log: log.clone(),
        store: store.clone(),
        metrics: Some(Arc::new(move || prometheus.render())),
        producer: "dev".into(),
    };
    eprintln!(
        "herald dev: listening on http://{} (data in {})",
        listener.local_addr()?,
        args.data_dir.display()
    );
    let server_token = shutdown.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        tokio::select! {
            _ = signal => tracing::info!("shutdown signal received"),
            _ = server_token.cancelled() => {},
        }
    });
    let served = server.await;
    // The server stopped accepting and finished its requests (appends included); stop the
    // projector between batches, then let the log writer commit what it holds.
    shutdown.cancel();
    let projected = projector_task.await.context("projector task")?;
    drop(log);
    served.context("HTTP server")?;
    projected.context("projector")?;
    drop(lock);
    eprintln!("herald dev: stopped");
    Ok(ExitCode::SUCCESS)
}
