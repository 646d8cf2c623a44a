//! One module per subcommand, plus what they share.

pub mod audit;
pub mod dev;
pub mod gateway;
pub mod produce;
pub mod replay;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};

/// Default data directory of the embedded backends.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default address of `herald dev`'s HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
pub const DEFAULT_URL: &str = "http://127.0.0.1:7400";

pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("log.db")
}

pub fn projection_path(data_dir: &Path) -> PathBuf {
    data_dir.join("projection.db")
}

/// Logs to stderr at `RUST_LOG` (default `default_level`).
pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Opens an existing data directory's log read-only.
pub async fn open_log_read_only(data_dir: &Path) -> anyhow::Result<EmbeddedLog> {
    if !data_dir.is_dir() {
        bail!(
            "data directory {} does not exist: pass --data-dir, or run `herald dev` once to create it",
            data_dir.display()
        );
    }
    EmbeddedLog::open(&log_path(data_dir), Access::ReadOnly, LogOptions::default())
        .await
        .context("opening the log")
}

/// Opens an existing data directory read-only (another process may be writing it).
pub async fn open_read_only(data_dir: &Path) -> anyhow::Result<(EmbeddedLog, EmbeddedProjection)> {
    if !data_dir.is_dir() {
        bail!(
            "data directory {} does not exist: pass --data-dir, or run `herald dev` once to create it",
            data_dir.display()
        );
    }
    let log = EmbeddedLog::open(&log_path(data_dir), Access::ReadOnly, LogOptions::default())
        .await
        .context("opening the log")?;
    let store = EmbeddedProjection::open(&projection_path(data_dir), Access::ReadOnly)
        .await
        .context("opening the projection")?;
    Ok((log, store))
}

/// Writes a line to stdout. A closed stdout (`herald audit x | head`) ends the process quietly
/// instead of panicking the way `println!` does.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Formats Unix milliseconds as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
