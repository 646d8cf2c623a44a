//! `herald replay`: rebuild the projection from the log into a fresh store, then compare it
//! with the live projection at exactly the offsets the live one had applied.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::Stage;
use herald_ports::prelude::*;
use herald_projector::{Progress, rebuild};
use indicatif::{ProgressBar, ProgressStyle};

use super::{DEFAULT_DATA_DIR, init_tracing};

/// Most differences printed.
const MAX_DIFFERENCES_SHOWN: usize = 50;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory of the log and the live projection (read only; `herald dev` may run).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Where to build the new projection (must not exist). Default: a file in the data
    /// directory, removed afterwards unless --keep.
    #[arg(long)]
    into: Option<PathBuf>,
    /// Keep the rebuilt projection.
    #[arg(long)]
    keep: bool,
    /// The live projection is in PostgreSQL or ScyllaDB at this URL (as `--projection-url`).
    #[arg(long)]
    live_url: Option<String>,
    /// Rebuild into this empty PostgreSQL database or ScyllaDB keyspace instead of a SQLite file.
    #[arg(long, conflicts_with = "into")]
    into_url: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    kafka: super::KafkaConnect,
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn total(&self, records: u64) {
        self.0.set_length(records);
    }
    fn advance(&self, records: u64) {
        self.0.inc(records);
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _telemetry = init_tracing("warn");
    // One consistent view of the live projection and the offsets it covers.
    let log = super::open_any_log_read_only(&args.kafka, &args.data_dir).await?;
    let (live_snapshot, offsets) = match &args.live_url {
        None => {
            let path = super::projection_path(&args.data_dir);
            if !path.exists() {
                bail!(
                    "no live projection at {}: pass --data-dir, or --live-url for PostgreSQL or ScyllaDB",
                    path.display()
                );
            }
            EmbeddedProjection::open(&path, Access::ReadOnly)
                .await
                .context("opening the live projection")?
                .snapshot_with_offsets()
                .await?
        }
        Some(url) => {
            super::SharedProjection::connect(url)
                .await
                .context("opening the live projection")?
                .snapshot_with_offsets()
                .await?
        }
    };
    let requests_end = offsets
        .get(Stage::Fanout.name())
        .cloned()
        .unwrap_or_default();
    let events_end = offsets
        .get(Stage::Inbox.name())
        .cloned()
        .unwrap_or_default();
    let target = args.into.clone().unwrap_or_else(|| {
        args.data_dir
            .join(format!("replay-{}.db", std::process::id()))
    });
    let fresh: std::sync::Arc<dyn ProjectionStore> = match &args.into_url {
        Some(url) => {
            let store = super::SharedProjection::connect(url)
                .await
                .context("opening the store to rebuild into")?
                .store();
            let existing = store.snapshot().await?;
            if !existing.rows.is_empty()
                || !existing.users.is_empty()
                || !store.consumer_offsets(Stage::Inbox).await?.is_empty()
            {
                bail!(
                    "the store at --into-url already holds a projection: \
                     replay builds into an empty one"
                );
            }
            store
        }
        None => {
            if target.exists() {
                bail!(
                    "{} already exists: replay builds into a fresh store",
                    target.display()
                );
            }
            let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                bail!(
                    "the rebuilt projection goes to {}, but directory {} does not exist: pass \
                     --into FILE, --into-url, or an existing --data-dir",
                    target.display(),
                    dir.display()
                );
            }
            std::sync::Arc::new(
                EmbeddedProjection::open(&target, Access::ReadWrite)
                    .await
                    .context("creating the rebuilt projection")?,
            )
        }
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // Read only what the live projection had applied; partitions it never touched are empty.
    let bound = |m: &std::collections::BTreeMap<u32, u64>, topic| {
        let n = log.partitions(topic);
        (0..n)
            .map(|p| (p, m.get(&p).copied().unwrap_or(0)))
            .collect()
    };
    let started = Instant::now();
    let applied = rebuild(
        log.as_ref(),
        fresh.as_ref(),
        &bound(&requests_end, herald_ports::Topic::Requests),
        &bound(&events_end, herald_ports::Topic::UserEvents),
        &Bar(bar.clone()),
    )
    .await?;
    bar.finish_and_clear();
    let took = started.elapsed();
    let rebuilt = fresh.snapshot().await?;
    drop(fresh);
    if !args.keep && args.into.is_none() && args.into_url.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
        }
    }
    let rate = applied as f64 / took.as_secs_f64().max(1e-9);
    super::out(format!(
        "replayed {applied} records in {:.2}s ({rate:.0} records/s): {} inbox rows, {} users",
        took.as_secs_f64(),
        rebuilt.rows.len(),
        rebuilt.users.len()
    ));
    let mut problems = live_snapshot.check_invariants();
    problems.extend(live_snapshot.diff(&rebuilt, MAX_DIFFERENCES_SHOWN));
    if problems.is_empty() {
        super::out("the rebuilt projection equals the live one".to_string());
        Ok(ExitCode::SUCCESS)
    } else {
        super::out(format!("{} differences (live vs rebuilt):", problems.len()));
        for p in problems.iter().take(MAX_DIFFERENCES_SHOWN) {
            super::out(format!("  {p}"));
        }
        Ok(ExitCode::from(1))
    }
}
