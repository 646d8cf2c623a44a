//! The scenarios with many connected clients: idle memory, fanout throughput, open-loop
//! latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::*;
use crate::peers::{Client, Server, To, now_us};

// ---------------------------------------------------------------------------------------------
// 1. Idle connections

/// The idle scenario's connection counts at `size`, each measured for every target.
pub(super) fn idle_sizes(size: Size) -> &'static [usize] {
    match size {
        Size::Smoke => &[50],
        Size::Small => &[2_000],
        Size::Large => &[5_000, 10_000, 18_000],
    }
}

pub(super) async fn idle(args: &SuiteArgs) -> anyhow::Result<Value> {
    let sizes = idle_sizes(args.size);
    let bins = args.binaries();
    let mut runs = Vec::new();
    for &n in sizes {
        for target in args.targets() {
            let server = Server::start(target, &bins).await?;
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

/// Rounds of the fanout at the large size: each takes every target in turn, and each row is the
/// rounds' median (one mode's run is a second or two, so one sample is mostly noise). The smoke
/// size runs two, so the test suite checks the rounds' path; the small size one.
const FANOUT_ROUNDS: usize = 3;

pub(super) async fn fanout(args: &SuiteArgs) -> anyhow::Result<Value> {
    let (clients_n, groups, per_mode) = match args.size {
        Size::Smoke => (20, 2, [40, 4, 2]),
        Size::Small => (1_000, 10, [5_000, 100, 20]),
        Size::Large => (1_000, 10, [20_000, 400, 100]),
    };
    let rounds = match args.size {
        Size::Smoke => 2,
        Size::Small => 1,
        Size::Large => FANOUT_ROUNDS,
    };
    let bins = args.binaries();
    let modes = ["users", "groups", "everyone"];
    // Per target and mode, each round's measurement, in order.
    let mut taken: Vec<(Target, &str, Vec<Value>)> = args
        .targets()
        .into_iter()
        .flat_map(|t| modes.iter().map(move |m| (t, *m, Vec::new())))
        .collect();
    for _ in 0..rounds {
        for target in args.targets() {
            let server = Server::start(target, &bins).await?;
            let mut clients = connect_users(&server, clients_n, groups).await?;
            for (mode, publishes) in modes.into_iter().zip(per_mode) {
                let (back, run) =
                    fanout_mode(&server, clients, mode, publishes, clients_n, groups).await?;
                clients = back;
                if let Some((_, _, runs)) = taken
                    .iter_mut()
                    .find(|(t, m, _)| *t == target && *m == mode)
                {
                    runs.push(run);
                }
            }
            drop(clients);
            server.stop();
        }
    }
    let runs: Vec<Value> = taken
        .into_iter()
        .filter(|(_, _, r)| !r.is_empty())
        .map(|(_, _, mut r)| {
            // The median round by throughput, with every round's figures beside it.
            let rate = |v: &Value| v["deliveries_per_s"].as_f64().unwrap_or(0.0);
            let cpu = |v: &Value| v["server_cpu_seconds"].as_f64().unwrap_or(0.0);
            let settled = |v: &Value| v["server_cpu_seconds_settled"].as_f64().unwrap_or(0.0);
            let rounds_rate: Vec<f64> = r.iter().map(rate).collect();
            let rounds_cpu: Vec<f64> = r.iter().map(cpu).collect();
            let rounds_settled: Vec<f64> = r.iter().map(settled).collect();
            let median = |v: &[f64]| {
                let mut v = v.to_vec();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            r.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
            let mut run = r.swap_remove(r.len() / 2);
            // CPU is the median of its own rounds: the fastest round need not be the cheapest.
            run["server_cpu_seconds"] = json!(median(&rounds_cpu));
            run["server_cpu_seconds_settled"] = json!(median(&rounds_settled));
            run["rounds_deliveries_per_s"] = json!(rounds_rate);
            run["rounds_server_cpu_seconds"] = json!(rounds_cpu);
            run["rounds_server_cpu_seconds_settled"] = json!(rounds_settled);
            run
        })
        .collect();
    Ok(json!({"scenario": "fanout", "rounds": rounds, "runs": runs}))
}

/// A server is idle once it used less than this share of one core over [`SETTLE_STEP`].
const SETTLE_IDLE_SHARE: f64 = 0.03;
const SETTLE_STEP: Duration = Duration::from_millis(100);
/// The longest wait for a server to go idle.
const SETTLE_MAX: Duration = Duration::from_secs(15);

/// Waits until the server is idle (or [`SETTLE_MAX`]); its CPU seconds then.
async fn settle(server: &Server) -> anyhow::Result<f64> {
    let deadline = Instant::now() + SETTLE_MAX;
    let mut last = server.cpu_seconds()?;
    loop {
        tokio::time::sleep(SETTLE_STEP).await;
        let now = server.cpu_seconds()?;
        if now - last < SETTLE_IDLE_SHARE * SETTLE_STEP.as_secs_f64() || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// One mode of the fanout on connected clients: publishes, waits for every delivery, and gives
/// the clients back with the measurement.
async fn fanout_mode(
    server: &Server,
    clients: Vec<Client>,
    mode: &str,
    publishes: usize,
    clients_n: usize,
    groups: usize,
) -> anyhow::Result<(Vec<Client>, Value)> {
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
    let cpu0 = server.cpu_seconds()?;
    let started = Instant::now();
    let receiving = tokio::spawn(receive_all(clients, expect));
    bounded(to, MAX_PUBLISHES_IN_FLIGHT, |t| async move {
        server.publish(&t, now_us()).await
    })
    .await?;
    let published = started.elapsed().as_secs_f64();
    let (back, lat, last) = receiving.await??;
    let cpu = server.cpu_seconds()? - cpu0;
    // What the deliveries still cost after the last one arrived (Herald's inbox projection
    // and the devices' ACK events, a peer's own deferred work): until the server is idle.
    let settled = settle(server).await? - cpu0;
    server
        .save_metrics(&format!("fanout-{}-{mode}", server.target.key()))
        .await?;
    let secs = last.duration_since(started).as_secs_f64();
    let run = json!({
        "target": server.target.name(), "mode": mode, "clients": clients_n, "groups": groups,
        "publishes": publishes, "deliveries": deliveries,
        "seconds": secs, "publish_seconds": published,
        "deliveries_per_s": (deliveries as f64 / secs).round(),
        "server_cpu_seconds": cpu,
        "server_cpu_seconds_settled": settled,
        "latency": percentiles(lat),
    });
    Ok((back, run))
}

// ---------------------------------------------------------------------------------------------
// 3. End-to-end latency at fixed offered rates

pub(super) async fn latency(args: &SuiteArgs) -> anyhow::Result<Value> {
    let (clients_n, rates, secs): (usize, &[u64], f64) = match args.size {
        Size::Smoke => (20, &[200], 1.0),
        Size::Small => (1_000, &[1_000, 2_000, 5_000], 3.0),
        Size::Large => (1_000, &[1_000, 2_000, 5_000, 10_000], 10.0),
    };
    let rates = if args.rates.is_empty() {
        rates
    } else {
        &args.rates[..]
    };
    let bins = args.binaries();
    let mut runs = Vec::new();
    for target in args.targets() {
        let server = Arc::new(Server::start(target, &bins).await?);
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
            let disk = DiskProbe::start()?;
            let cpu0 = server.cpu_seconds()?;
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
                    // How long after its due time the server accepted it (202, or the peer's
                    // equivalent): the publish side of the end-to-end latency.
                    r.map(|()| now_us().saturating_sub(start + due_us).min(u32::MAX as u64) as u32)
                }));
            }
            let mut accepted = Vec::with_capacity(total);
            for t in tasks {
                accepted.push(t.await??);
            }
            let offered = total as f64 / begun.elapsed().as_secs_f64();
            let mut run = json!({
                "target": target.name(), "rate": rate, "messages": total,
                "achieved_publish_rate": offered.round(),
                "accept_latency": percentiles(accepted),
            });
            let (back, lat, last) = match receiving.await? {
                Ok(got) => got,
                Err(e) => {
                    drop(disk);
                    let Some(behind) = e.downcast_ref::<Behind>() else {
                        return Err(e);
                    };
                    // Still not delivered after RECEIVE_TIMEOUT: this target fell behind at
                    // this rate. Recorded as such; its clients' queues are in an unknown state,
                    // so its higher rates are not run.
                    run["fell_behind"] = json!({
                        "timeout_s": RECEIVE_TIMEOUT.as_secs(),
                        "a_client_received": behind.received,
                        "of": behind.expected,
                    });
                    runs.push(run);
                    break;
                }
            };
            let cpu = server.cpu_seconds()? - cpu0;
            let disk = disk.stop();
            let secs = last.duration_since(begun.into_std()).as_secs_f64();
            clients = back;
            server
                .save_metrics(&format!("latency-{}-{rate}", target.key()))
                .await?;
            run["seconds"] = json!(secs);
            run["server_cpu_seconds"] = json!(cpu);
            run["latency"] = percentiles(lat);
            run["disk_fdatasync"] = percentiles(disk);
            runs.push(run);
        }
        drop(clients);
        if let Ok(server) = Arc::try_unwrap(server) {
            server.stop();
        }
    }
    Ok(json!({"scenario": "latency", "runs": runs}))
}

/// A light probe of the disk during a latency run: a 4 KiB overwrite and `fdatasync` of a file
/// of its own every [`DiskProbe::EVERY`], timed. The durable targets wait for the same disk
/// before they answer, and this machine's disk stalls now and then whatever writes to it (an
/// idle loop of these saw p99.9 30 ms and a 224 ms maximum): the report shows what the disk did
/// during each run beside what the servers did. About 400 KB/s of writes, next to the durable
/// servers' tens of MB/s.
struct DiskProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u32>>>,
    _dir: tempfile::TempDir,
}

impl DiskProbe {
    const EVERY: Duration = Duration::from_millis(10);
    /// Samples kept at most (a run of [`DiskProbe::EVERY`] for 15 minutes).
    const MAX_SAMPLES: usize = 90_000;

    fn start() -> anyhow::Result<Self> {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.path().join("probe"))?;
        let page = vec![0x5a_u8; 4096];
        // Allocated once, so each probe is an overwrite (no metadata to commit).
        file.write_all_at(&page, 0)?;
        file.sync_all()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("disk-probe".into())
            .spawn(move || {
                let mut took = Vec::new();
                while !stopped.load(std::sync::atomic::Ordering::Relaxed)
                    && took.len() < Self::MAX_SAMPLES
                {
                    let t = Instant::now();
                    if file
                        .write_all_at(&page, 0)
                        .and_then(|()| file.sync_data())
                        .is_err()
                    {
                        break;
                    }
                    took.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    std::thread::sleep(Self::EVERY);
                }
                took
            })?;
        Ok(DiskProbe {
            stop,
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The fdatasync times (µs), once the probe has stopped.
    fn stop(mut self) -> Vec<u32> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for DiskProbe {
    /// A run that fails stops its probe too.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
