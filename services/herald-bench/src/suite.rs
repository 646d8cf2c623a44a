//! `herald-bench suite`: Herald next to Socket.IO and `ws` in one run — idle memory, fanout
//! throughput, end-to-end latency, resume, durable ingest and projection rebuild. Raw results
//! go to `target/bench/suite-*.json`; `--report` rewrites the suite section of
//! docs/benchmarks.md and its plots (docs/images/bench-*.svg).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::peers::{Client, Server, Target, To, now_us};

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
    /// Servers to measure (default: all three).
    #[arg(long, value_delimiter = ',', value_parser = ["herald", "socketio", "ws"])]
    pub targets: Vec<String>,
    /// The herald binary (build it with `cargo build --release -p herald`).
    #[arg(long, default_value = "target/release/herald")]
    pub herald: PathBuf,
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
}

impl SuiteArgs {
    fn targets(&self) -> Vec<Target> {
        Target::ALL
            .into_iter()
            .filter(|t| {
                let key = match t {
                    Target::Herald => "herald",
                    Target::SocketIo => "socketio",
                    Target::Ws => "ws",
                };
                self.targets.is_empty() || self.targets.iter().any(|x| x == key)
            })
            .collect()
    }
}

pub async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    for s in &args.only {
        ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s:?}: {SCENARIOS:?}"
        );
    }
    let selected = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    std::fs::create_dir_all(&args.out)?;
    let mut results = BTreeMap::new();
    type Scenario<'a> = (
        &'a str,
        std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + 'a>>,
    );
    let scenarios: Vec<Scenario> = vec![
        ("idle", Box::pin(idle(&args))),
        ("fanout", Box::pin(fanout(&args))),
        ("latency", Box::pin(latency(&args))),
        ("resume", Box::pin(resume(&args))),
        ("ingest", Box::pin(ingest(&args))),
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
                        .map_err(|_| {
                            anyhow::anyhow!("timed out with {}/{n} messages", lat.len())
                        })??;
                    lat.push(now_us().saturating_sub(t).min(u32::MAX as u64) as u32);
                    last = Instant::now();
                }
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

// ---------------------------------------------------------------------------------------------
// 1. Idle connections

async fn idle(args: &SuiteArgs) -> anyhow::Result<Value> {
    let sizes: &[usize] = match args.size {
        Size::Smoke => &[50],
        Size::Small => &[2_000],
        Size::Large => &[5_000, 10_000, 18_000],
    };
    let mut runs = Vec::new();
    for &n in sizes {
        for target in args.targets() {
            let server = Server::start(target, &args.herald).await?;
            let users = n.div_ceil(8);
            let mut tokens = Vec::new();
            for u in 0..users {
                tokens.push(server.token(&format!("idle-{u}")).await?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (rss0, kern0) = (crate::rss_kib(server.pid())?, crate::tcp_kernel_kib()?);
            let opened = Instant::now();
            let clients = bounded((0..n).collect(), CONNECT_CONCURRENCY, |i| {
                let server = &server;
                let token = tokens[i / 8].clone();
                async move {
                    let user = format!("idle-{}", i / 8);
                    let device = format!("d{}", i % 8);
                    Client::connect(server, i, &user, &[], token.as_deref(), &device, None).await
                }
            })
            .await?;
            let open_s = opened.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (rss1, kern1) = (crate::rss_kib(server.pid())?, crate::tcp_kernel_kib()?);
            let per = rss1.saturating_sub(rss0) as f64 * 1024.0 / n as f64;
            let kernel = kern1.saturating_sub(kern0) as f64 * 1024.0 / (2 * n) as f64;
            runs.push(json!({
                "target": target.name(), "connections": n,
                "rss_before_kib": rss0, "rss_after_kib": rss1,
                "rss_bytes_per_connection": per.round(),
                "kernel_tcp_bytes_per_connection": kernel.round(),
                "connects_per_s": (n as f64 / open_s).round(),
            }));
            drop(clients);
            server.stop();
        }
    }
    Ok(json!({"scenario": "idle", "runs": runs}))
}

// ---------------------------------------------------------------------------------------------
// 2. Fanout throughput

async fn fanout(args: &SuiteArgs) -> anyhow::Result<Value> {
    let (clients_n, groups, per_mode) = match args.size {
        Size::Smoke => (20, 2, [40, 4, 2]),
        Size::Small => (1_000, 10, [5_000, 100, 20]),
        Size::Large => (1_000, 10, [20_000, 400, 100]),
    };
    let mut runs = Vec::new();
    for target in args.targets() {
        let server = Server::start(target, &args.herald).await?;
        let mut clients = connect_users(&server, clients_n, groups).await?;
        for (mode, publishes) in ["users", "groups", "everyone"].into_iter().zip(per_mode) {
            let to: Vec<To> = (0..publishes)
                .map(|i| match mode {
                    "users" => To::User(format!("u{}", i % clients_n)),
                    "groups" => To::Group(format!("g{}", i % groups)),
                    _ => To::Everyone,
                })
                .collect();
            let mut expect = vec![0usize; clients_n];
            for t in &to {
                match t {
                    To::User(u) => expect[u[1..].parse::<usize>()?] += 1,
                    To::Group(g) => {
                        let g: usize = g[1..].parse()?;
                        for (i, e) in expect.iter_mut().enumerate() {
                            if i % groups == g {
                                *e += 1;
                            }
                        }
                    }
                    To::Everyone => expect.iter_mut().for_each(|e| *e += 1),
                }
            }
            let deliveries: usize = expect.iter().sum();
            let started = Instant::now();
            let receiving = tokio::spawn(receive_all(std::mem::take(&mut clients), expect));
            bounded(to, MAX_PUBLISHES_IN_FLIGHT, |t| {
                let server = &server;
                async move { server.publish(&t, now_us()).await }
            })
            .await?;
            let published = started.elapsed().as_secs_f64();
            let (back, lat, last) = receiving.await??;
            clients = back;
            let secs = last.duration_since(started).as_secs_f64();
            runs.push(json!({
                "target": target.name(), "mode": mode, "clients": clients_n,
                "publishes": publishes, "deliveries": deliveries,
                "seconds": secs, "publish_seconds": published,
                "deliveries_per_s": (deliveries as f64 / secs).round(),
                "latency": percentiles(lat),
            }));
        }
        drop(clients);
        server.stop();
    }
    Ok(json!({"scenario": "fanout", "runs": runs}))
}

// ---------------------------------------------------------------------------------------------
// 3. End-to-end latency at fixed offered rates

async fn latency(args: &SuiteArgs) -> anyhow::Result<Value> {
    let (clients_n, rates, secs): (usize, &[u64], f64) = match args.size {
        Size::Smoke => (20, &[200], 1.0),
        Size::Small => (1_000, &[1_000, 5_000], 3.0),
        Size::Large => (1_000, &[1_000, 5_000, 10_000], 10.0),
    };
    let mut runs = Vec::new();
    for target in args.targets() {
        let server = Arc::new(Server::start(target, &args.herald).await?);
        let mut clients = connect_users(&server, clients_n, 1).await?;
        for &rate in rates {
            let total = (rate as f64 * secs) as usize;
            let mut expect = vec![0usize; clients_n];
            for i in 0..total {
                expect[i % clients_n] += 1;
            }
            let receiving = tokio::spawn(receive_all(std::mem::take(&mut clients), expect));
            // Open loop: message i is due at start + i/rate and stamped with that time, so a
            // stalled server shows as latency (no coordinated omission).
            let sem = Arc::new(Semaphore::new(MAX_PUBLISHES_IN_FLIGHT));
            let start = now_us();
            let begun = tokio::time::Instant::now();
            let mut tasks = Vec::with_capacity(total);
            for i in 0..total {
                let due_us = (i as u64 * 1_000_000) / rate;
                tokio::time::sleep_until(begun + Duration::from_micros(due_us)).await;
                let permit = sem.clone().acquire_owned().await?;
                let server = server.clone();
                let to = To::User(format!("u{}", i % clients_n));
                tasks.push(tokio::spawn(async move {
                    let r = server.publish(&to, start + due_us).await;
                    drop(permit);
                    r
                }));
            }
            for t in tasks {
                t.await??;
            }
            let offered = total as f64 / begun.elapsed().as_secs_f64();
            let (back, lat, _) = receiving.await??;
            clients = back;
            runs.push(json!({
                "target": target.name(), "rate": rate, "messages": total,
                "achieved_publish_rate": offered.round(),
                "latency": percentiles(lat),
            }));
        }
        drop(clients);
        if let Ok(server) = Arc::try_unwrap(server) {
            server.stop();
        }
    }
    Ok(json!({"scenario": "latency", "runs": runs}))
}

// ---------------------------------------------------------------------------------------------
// 4. Resume after a disconnect with a backlog

async fn resume(args: &SuiteArgs) -> anyhow::Result<Value> {
    let backlogs: &[usize] = match args.size {
        Size::Smoke => &[100],
        Size::Small => &[1_000, 10_000],
        Size::Large => &[1_000, 10_000, 100_000],
    };
    let mut runs = Vec::new();
    for target in args.targets().into_iter().filter(|t| *t != Target::Ws) {
        for &n in backlogs {
            let server = Server::start(target, &args.herald).await?;
            let user = "resumer";
            let token = server.token(user).await?;
            // Socket.IO can only recover a session it saw, from an offset it sent: connect,
            // take one message, then vanish. Herald needs nothing: the inbox is durable.
            let recovery = if target == Target::SocketIo {
                let mut c = Client::connect(&server, 0, user, &[], None, "d", None).await?;
                server.publish(&To::User(user.into()), now_us()).await?;
                tokio::time::timeout(RECEIVE_TIMEOUT, c.next_message()).await??;
                let r = c.recovery.clone();
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
            let (_, _, last) = receive_all(vec![c], vec![n]).await?;
            let secs = last.duration_since(started).as_secs_f64();
            runs.push(json!({
                "target": target.name(), "backlog": n, "seconds": secs,
                "messages_per_s": (n as f64 / secs).round(),
            }));
            server.stop();
        }
    }
    Ok(json!({"scenario": "resume", "runs": runs}))
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. Durable ingest (202s/s vs raw SQLite in the same run) and projection rebuild

async fn ingest(args: &SuiteArgs) -> anyhow::Result<Value> {
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
    let server = Server::start(Target::Herald, &args.herald).await?;
    let started = Instant::now();
    bounded((0..n).collect(), MAX_PUBLISHES_IN_FLIGHT, |i| {
        let server = &server;
        async move {
            server
                .publish(&To::User(format!("u{}", i % 1000)), now_us())
                .await
        }
    })
    .await?;
    let accepted = n as f64 / started.elapsed().as_secs_f64();
    // The same number again, BATCH to a request.
    let started = Instant::now();
    bounded((0..n.div_ceil(BATCH)).collect(), BATCHES_IN_FLIGHT, |b| {
        let server = &server;
        async move {
            let users: Vec<String> = (b * BATCH..((b + 1) * BATCH).min(n))
                .map(|i| format!("u{}", i % 1000))
                .collect();
            server.publish_batch(&users, now_us()).await
        }
    })
    .await?;
    let accepted_batched = n as f64 / started.elapsed().as_secs_f64();
    // Let the projector finish, then rebuild the projection from the log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let data = server.data_path().context("herald data dir")?;
    let out = std::process::Command::new(&args.herald)
        .args(["replay", "--quiet", "--data-dir"])
        .arg(&data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "replayed N records in S s (R records/s): …"
    let words: Vec<&str> = text.split_whitespace().collect();
    let records: u64 = words
        .get(1)
        .and_then(|w| w.parse().ok())
        .context(text.clone())?;
    let replay_rate: f64 = words
        .iter()
        .position(|w| *w == "records/s):")
        .and_then(|i| words[i - 1].trim_start_matches('(').parse().ok())
        .context(text.clone())?;
    server.stop();
    Ok(json!({
        "scenario": "ingest",
        "requests": n,
        "accepted_per_s": accepted.round(),
        "raw_sqlite_records_per_s": raw.round(),
        "ratio": (accepted / raw * 1000.0).round() / 1000.0,
        "batch": BATCH,
        "accepted_batched_per_s": accepted_batched.round(),
        "batched_ratio": (accepted_batched / raw * 1000.0).round() / 1000.0,
        "replay_records": records,
        "replay_records_per_s": replay_rate.round(),
        "replay_equal": out.status.success(),
    }))
}
