//! The scenarios about what is kept: resume from a backlog, durable ingest and the projection
//! rebuild.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use super::*;
use crate::peers::{Client, HttpFloor, Server, Target, To, now_us};

// ---------------------------------------------------------------------------------------------
// 4. Resume after a disconnect with a backlog

/// How long a resumed device listens after its backlog for messages beyond it.
const EXTRA_WAIT: Duration = Duration::from_millis(300);
/// Resumes per target and backlog below [`RESUME_ONCE_FROM`] (every target once per round; one
/// at the smoke size); the row is their median.
const RESUME_ROUNDS: usize = 5;
/// One resume: seconds to the last backlog message, server CPU seconds, messages beyond it.
type ResumeSample = (f64, f64, u64);
/// Backlogs from this size are resumed once: each takes long enough to measure.
const RESUME_ONCE_FROM: usize = 100_000;

pub(super) async fn resume(args: &SuiteArgs) -> anyhow::Result<Value> {
    let backlogs: &[usize] = match args.size {
        Size::Smoke => &[100],
        Size::Small => &[1_000, 10_000],
        Size::Large => &[1_000, 10_000, 100_000],
    };
    let bins = args.binaries();
    // One resume is a few tens of milliseconds, so one sample is mostly this machine's noise:
    // the rounds go through every target in turn, and each row is the rounds' median.
    let rounds = if args.size == Size::Smoke {
        1
    } else {
        RESUME_ROUNDS
    };
    // ws keeps nothing for a device that is away.
    let targets: Vec<Target> = args
        .targets()
        .into_iter()
        .filter(|t| *t != Target::Ws)
        .collect();
    let mut samples: Vec<(Target, usize, Vec<ResumeSample>)> = targets
        .iter()
        .flat_map(|t| backlogs.iter().map(move |n| (*t, *n, Vec::new())))
        .collect();
    for round in 0..rounds {
        for (target, n, taken) in samples.iter_mut() {
            let (target, n) = (*target, *n);
            // The largest backlog takes long enough to measure once.
            if round > 0 && n >= RESUME_ONCE_FROM {
                continue;
            }
            let server = Server::start(target, &bins).await?;
            let user = "resumer";
            let token = server.token(user).await?;
            // Socket.IO can only recover a session it saw, from an offset it sent, and a
            // JetStream device's durable consumer is made on its first connect: connect, take
            // one message, then vanish. Herald needs nothing: the inbox is durable.
            let recovery = if target == Target::SocketIo || target.is_jetstream() {
                let mut c = Client::connect(&server, 0, user, &[], None, "d", None).await?;
                server.publish(&To::User(user.into()), now_us()).await?;
                tokio::time::timeout(RECEIVE_TIMEOUT, c.next_message()).await??;
                if target.is_jetstream() {
                    // Idle past ACK_IDLE, so the message is acknowledged (its pull request
                    // stays open, as a live device's does).
                    let idle = crate::peers::ACK_IDLE * 20;
                    let _ = tokio::time::timeout(idle, c.next_message()).await;
                }
                let r = c.recovery();
                c.vanish();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some(r)
            } else {
                None
            };
            let filled = Instant::now();
            bounded((0..n).collect(), MAX_PUBLISHES_IN_FLIGHT, |_| {
                let server = &server;
                async move { server.publish(&To::User(user.into()), now_us()).await }
            })
            .await?;
            if let Some(token) = &token {
                // Wait until the whole backlog is in the projection.
                while server.unread(token).await? < n as u64 {
                    ensure!(filled.elapsed() < RECEIVE_TIMEOUT, "backlog not projected");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let cpu0 = server.cpu_seconds()?;
            let started = Instant::now();
            let c = Client::connect(
                &server,
                1,
                user,
                &[],
                token.as_deref(),
                "d",
                recovery.as_ref(),
            )
            .await?;
            let (mut back, _, last) = receive_all(vec![c], vec![n]).await?;
            let cpu = server.cpu_seconds()? - cpu0;
            let secs = last.duration_since(started).as_secs_f64();
            // Anything after the backlog was delivered twice (or never acknowledged before the
            // device vanished): the count above would then have stopped short of the backlog.
            let mut extra = 0;
            while let Ok(m) = tokio::time::timeout(EXTRA_WAIT, back[0].next_message()).await {
                m?;
                extra += 1;
            }
            taken.push((secs, cpu, extra));
            server.stop();
        }
    }
    let runs: Vec<Value> = samples
        .into_iter()
        .map(|(target, n, taken)| {
            let mut by_time: Vec<&ResumeSample> = taken.iter().collect();
            by_time.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (secs, cpu, _) = *by_time[by_time.len() / 2];
            json!({
                "target": target.name(), "backlog": n, "seconds": secs,
                "server_cpu_seconds": cpu,
                "messages_per_s": (n as f64 / secs).round(),
                // Any round's: one duplicate anywhere is worth seeing.
                "extra_messages": taken.iter().map(|t| t.2).sum::<u64>(),
                "rounds_seconds": taken.iter().map(|t| t.0).collect::<Vec<_>>(),
                "rounds_extra_messages": taken.iter().map(|t| t.2).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({"scenario": "resume", "runs": runs}))
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. Durable ingest (accepted/s vs raw SQLite in the same run) and projection rebuild.
// Herald: 202s to single and batch requests; JetStream: publish acks to single awaited
// publishes and to batches of async publishes (`Server::publish_batch`).

pub(super) async fn ingest(args: &SuiteArgs) -> anyhow::Result<Value> {
    let n = match args.size {
        Size::Smoke => 500,
        Size::Small => 20_000,
        Size::Large => 100_000,
    };
    let raw_dir = tempfile::tempdir()?;
    let raw = {
        let path = raw_dir.path().join("raw.db");
        tokio::task::spawn_blocking(move || crate::raw_sqlite(&path, n, &[7u8; 200])).await??
    };
    // The same requests to a server that stores nothing: what HTTP alone allows here.
    let floor = {
        let floor = HttpFloor::start().await?;
        accept(&floor, n).await?.to_json(raw)
    };
    let bins = args.binaries();
    let mut runs = Vec::new();
    for target in args.targets().into_iter().filter(|t| t.is_durable()) {
        let server = Server::start(target, &bins).await?;
        let mut run = accept(&server, n).await?.to_json(raw);
        run["target"] = json!(target.name());
        if target.is_herald() {
            // Let the projector finish, then rebuild the projection from the log: a rebuild
            // timed while the live projector still works through the backlog measures the two
            // sharing the CPU, not the rebuild.
            let data = server.data_path().context("herald data dir")?;
            let waited = tokio::task::spawn_blocking(move || caught_up(&data)).await??;
            let (records, rate, equal) = replay(&server, &bins)?;
            run["projector_caught_up_after_s"] =
                json!((waited.as_secs_f64() * 10.0).round() / 10.0);
            run["replay_records"] = json!(records);
            run["replay_records_per_s"] = json!(rate.round());
            run["replay_equal"] = json!(equal);
        }
        server.stop();
        if target == Target::Herald {
            // The same requests to the same build with no projector beside it: what the
            // accept path (HTTP, the request's record, the log's commit) reaches alone, and so
            // what the projector's share of the two cores costs the rows above.
            let alone = Server::start_with(target, &bins, &["--projector", "false"]).await?;
            run["accept_path_alone"] = accept(&alone, n).await?.to_json(raw);
            alone.stop();
        }
        runs.push(run);
    }
    Ok(json!({
        "scenario": "ingest",
        "requests": n,
        "raw_sqlite_records_per_s": raw.round(),
        "http_floor": floor,
        "batch": BATCH,
        "runs": runs,
    }))
}

/// What takes the ingest's requests: a server under test, or the HTTP floor.
trait Accepts: Sync {
    fn publish(&self, to: &To, t_us: u64) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// `Ok(false)`: no batch endpoint (an older build).
    fn publish_batch(
        &self,
        users: &[String],
        t_us: u64,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    fn cpu_seconds(&self) -> anyhow::Result<f64>;
}

impl Accepts for Server {
    fn publish(&self, to: &To, t_us: u64) -> impl Future<Output = anyhow::Result<()>> + Send {
        Server::publish(self, to, t_us)
    }
    fn publish_batch(
        &self,
        users: &[String],
        t_us: u64,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send {
        Server::publish_batch(self, users, t_us)
    }
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Server::cpu_seconds(self)
    }
}

impl Accepts for HttpFloor {
    fn publish(&self, to: &To, t_us: u64) -> impl Future<Output = anyhow::Result<()>> + Send {
        HttpFloor::publish(self, to, t_us)
    }
    fn publish_batch(
        &self,
        users: &[String],
        t_us: u64,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send {
        HttpFloor::publish_batch(self, users, t_us)
    }
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        HttpFloor::cpu_seconds(self)
    }
}

/// One ingest measurement.
struct Accepted {
    /// Single requests answered per second.
    accepted: f64,
    /// The server's CPU seconds for them.
    cpu: f64,
    /// Notifications in batch requests answered per second; `None`: no batch endpoint.
    accepted_batched: Option<f64>,
    batched_cpu: f64,
}

impl Accepted {
    /// The measurement's fields in the results, with its rates as shares of raw SQLite's.
    fn to_json(&self, raw: f64) -> Value {
        let share = |a: f64| (a / raw * 1000.0).round() / 1000.0;
        json!({
            "accepted_per_s": self.accepted.round(),
            "ratio": share(self.accepted),
            "accepted_batched_per_s": self.accepted_batched.map(f64::round),
            "batched_ratio": self.accepted_batched.map(share),
            "server_cpu_seconds": self.cpu,
            "batched_server_cpu_seconds": self.batched_cpu,
        })
    }
}

/// `n` single requests ([`MAX_PUBLISHES_IN_FLIGHT`] in flight), then the same number again,
/// [`BATCH`] to a request ([`BATCHES_IN_FLIGHT`] in flight); one recipient each, `u0`..`u999`.
async fn accept(server: &impl Accepts, n: usize) -> anyhow::Result<Accepted> {
    let cpu0 = server.cpu_seconds()?;
    let started = Instant::now();
    bounded((0..n).collect(), MAX_PUBLISHES_IN_FLIGHT, |i| async move {
        server
            .publish(&To::User(format!("u{}", i % 1000)), now_us())
            .await
    })
    .await?;
    let accepted = n as f64 / started.elapsed().as_secs_f64();
    let cpu1 = server.cpu_seconds()?;
    let started = Instant::now();
    let taken = bounded(
        (0..n.div_ceil(BATCH)).collect(),
        BATCHES_IN_FLIGHT,
        |b| async move {
            let users: Vec<String> = (b * BATCH..((b + 1) * BATCH).min(n))
                .map(|i| format!("u{}", i % 1000))
                .collect();
            server.publish_batch(&users, now_us()).await
        },
    )
    .await?;
    let accepted_batched = taken
        .iter()
        .all(|t| *t)
        .then(|| n as f64 / started.elapsed().as_secs_f64());
    let cpu2 = server.cpu_seconds()?;
    Ok(Accepted {
        accepted,
        cpu: cpu1 - cpu0,
        accepted_batched,
        batched_cpu: cpu2 - cpu1,
    })
}

/// Longest wait for the live projector to apply the whole log before the rebuild.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits until the projection in Herald's data directory `data` has applied every record of its
/// log (the fanout stage every request, the inbox stage every user event); how long that took.
/// Reads both files read-only, as `herald replay` and `herald audit` do next to a live server.
fn caught_up(data: &std::path::Path) -> anyhow::Result<Duration> {
    use rusqlite::{Connection, OpenFlags};
    let started = Instant::now();
    let open = |name: &str| {
        Connection::open_with_flags(data.join(name), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {name}"))
    };
    let (log, projection) = (open("log.db")?, open("projection.db")?);
    let log_format: String =
        log.query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })?;
    // A log of format 1 keeps a row per record, format 2 a row per run of records
    // (herald-embedded).
    let (table, end_sql) = match log_format.as_str() {
        "1" => ("records", "max(offset) + 1"),
        _ => ("batches", "max(end_offset)"),
    };
    loop {
        let mut behind = 0u64;
        for (topic, stage) in [(0, "fanout"), (1, "inbox")] {
            let applied: std::collections::BTreeMap<i64, i64> = projection
                .prepare_cached(
                    "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = ?1",
                )?
                .query_map([stage], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            // max() over the primary key's prefix: a lookup, not a scan.
            let last: Option<i64> = log.query_row(
                &format!("SELECT max(partition) FROM {table} WHERE topic = ?1"),
                [topic],
                |r| r.get(0),
            )?;
            for p in 0..=last.unwrap_or(-1) {
                // An aggregate always has its one row: NULL for a partition with no records.
                let end: Option<i64> = log.query_row(
                    &format!("SELECT {end_sql} FROM {table} WHERE topic = ?1 AND partition = ?2"),
                    [topic, p],
                    |r| r.get(0),
                )?;
                let at = applied.get(&p).copied().unwrap_or(0);
                behind += end.unwrap_or(0).saturating_sub(at).max(0) as u64;
            }
        }
        if behind == 0 {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < CATCH_UP_TIMEOUT,
            "the projector is still {behind} records behind after {CATCH_UP_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `herald replay` on a Herald server's data: (records, records/s, rebuilt equals live).
fn replay(server: &Server, bins: &crate::peers::Binaries) -> anyhow::Result<(u64, f64, bool)> {
    let data = server.data_path().context("herald data dir")?;
    let herald = server.herald_binary(bins).context("herald binary")?;
    let out = std::process::Command::new(herald)
        .args(["replay", "--quiet", "--data-dir"])
        .arg(&data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "replayed N records in S s (R records/s): …", numbers with or without thousands
    // separators (newer builds print "24,475").
    let words: Vec<&str> = text.split_whitespace().collect();
    let number = |w: &str| w.trim_start_matches('(').replace(',', "");
    let records: u64 = words
        .get(1)
        .and_then(|w| number(w).parse().ok())
        .context(text.clone())?;
    let rate: f64 = words
        .iter()
        .position(|w| *w == "records/s):")
        .and_then(|i| number(words[i - 1]).parse().ok())
        .context(text.clone())?;
    Ok((records, rate, out.status.success()))
}
