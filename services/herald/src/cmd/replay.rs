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
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

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
    /// The live projection is in PostgreSQL or ScyllaDB at this URL (the servers'
    /// `--projection-url`; `--live-url` is an old name for it).
    #[arg(
        long = "projection-url",
        alias = "live-url",
        value_name = "URL",
        env = "HERALD_PROJECTION_URL"
    )]
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
                    "no live projection at {}: pass --data-dir, or --projection-url for PostgreSQL or ScyllaDB",
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
    // An embedded target is built in bulk mode and finished after the rebuild.
    let mut bulk: Option<EmbeddedProjection> = None;
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
            let store = EmbeddedProjection::create_for_rebuild(&target)
                .await
                .context("creating the rebuilt projection")?;
            bulk = Some(store.clone());
            std::sync::Arc::new(store)
        }
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(replay_style());
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
    // Taken: its connections close with `fresh`'s, before the files are removed.
    if let Some(store) = bulk.take() {
        store
            .finish_rebuild()
            .await
            .context("finishing the rebuilt projection")?;
    }
    bar.finish_and_clear();
    let took = started.elapsed();
    // Reading both projections back and comparing them takes a while too: say so.
    let comparing = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    comparing.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    comparing.set_message("comparing the rebuilt projection with the live one");
    comparing.enable_steady_tick(std::time::Duration::from_millis(100));
    let rebuilt = fresh.snapshot().await?;
    drop(fresh);
    if !args.keep && args.into.is_none() && args.into_url.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
        }
    }
    let rate = applied as f64 / took.as_secs_f64().max(1e-9);
    super::out(format!(
        "replayed {applied} records in {:.2}s ({} records/s): {} inbox rows, {} users",
        took.as_secs_f64(),
        thousands(rate as u64),
        rebuilt.rows.len(),
        rebuilt.users.len()
    ));
    let mut problems = live_snapshot.check_invariants();
    problems.extend(live_snapshot.diff(&rebuilt, MAX_DIFFERENCES_SHOWN));
    comparing.finish_and_clear();
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

/// The replay bar: records so far, the mean rate since the start as a whole number with its
/// unit, and the time left at that rate (indicatif's own estimate follows the last few steps
/// and settled near a constant for the large, uneven steps a rebuild reports).
fn replay_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} replaying [{bar:40}] {pos}/{len} records ({rate}, eta {remaining})",
    )
    .expect("valid template")
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{} records/s", thousands(mean_rate(s) as u64));
    })
    .with_key(
        "remaining",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&eta(s.pos(), s.len(), mean_rate(s)));
        },
    )
    .progress_chars("=> ")
}

fn mean_rate(s: &ProgressState) -> f64 {
    let secs = s.elapsed().as_secs_f64();
    if secs > 0.0 {
        s.pos() as f64 / secs
    } else {
        0.0
    }
}

/// Time left for `len - pos` records at `rate` records/s: `m:ss`, or `?` before there is a rate.
fn eta(pos: u64, len: Option<u64>, rate: f64) -> String {
    match len {
        Some(len) if rate >= 1.0 => {
            let secs = (len.saturating_sub(pos) as f64 / rate).ceil() as u64;
            format!("{}:{:02}", secs / 60, secs % 60)
        }
        _ => "?".into(),
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let (head, tail) = digits.split_at(first.min(digits.len()));
    let mut out = head.to_owned();
    for group in tail.as_bytes().chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ASCII digits"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{eta, thousands};

    #[test]
    fn rates_are_whole_numbers_with_separators_and_the_eta_follows_the_mean_rate() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(111_154), "111,154");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(eta(0, Some(1_500_000), 100_000.0), "0:15");
        assert_eq!(eta(1_000_000, Some(1_500_000), 100_000.0), "0:05");
        assert_eq!(eta(0, Some(9_000_000), 100_000.0), "1:30");
        assert_eq!(eta(10, None, 5.0), "?");
        assert_eq!(eta(0, Some(10), 0.0), "?", "no rate yet");
    }
}
