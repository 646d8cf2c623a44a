//! Gateways in a cluster, with real processes: a tansu broker, PostgreSQL, a projector,
//! gateways (`herald dev --projector false` on Kafka), and nginx running infra/nginx.conf with
//! its upstreams pointed at the test's gateways. Devices connect through nginx with their
//! partition as the routing hint (`?partition=`), as `/herald.js` does.
//!
//! * `presence_is_cluster_wide_with_two_gateways`: `GET /v1/presence` on either gateway shows
//!   the sessions of both, a disconnect disappears from the other's view, and so do the
//!   sessions of a gateway killed with SIGKILL (after three of its presence intervals).
//! * `affine_gateways_read_only_their_partitions_and_a_killed_one_loses_nothing`: with two
//!   gateways, the partitions each one's live hub read are disjoint and together those of the
//!   connected users; a gateway killed with SIGKILL mid-stream hands its users to the other
//!   (they reconnect through nginx), and every accepted notification is shown exactly once on
//!   every device, in order.
//! * `each_record_is_read_by_one_gateway_with_1_2_and_4_gateways`: the records the gateways'
//!   hubs read add up to the records appended, whatever the number of gateways (before partition
//!   affinity, every gateway read every record: N times the log). Prints the records read per
//!   gateway per second (`just affinity` runs it longer; docs/benchmarks.md has the table).
//!
//! Each test prints why it is skipped when the broker, PostgreSQL or nginx is missing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_core::partition::partition_for;
use herald_kafka::{KafkaLog, testing};
use herald_ports::log::{EventLog, Topic};
use rand::{Rng, SeedableRng};
use support::cluster::{Cluster, dump_logs};
use support::exactly_once::*;
use support::{Dev, free_port};
use tokio::sync::Mutex;

/// Hang guard for waits on the cluster: not a timing assertion.
const GUARD: Duration = Duration::from_secs(90);

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// infra/nginx.conf with its upstream servers replaced by `gateways` (local ports) and its
/// listener by `listen`.
fn lb_conf(gateways: &[u16], listen: u16) -> String {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nginx.conf"),
    )
    .unwrap();
    let mut out = String::new();
    let mut replaced = false;
    for line in conf.lines() {
        let t = line.trim_start();
        if t.starts_with("server herald-gateway-") {
            if !replaced {
                for p in gateways {
                    out.push_str(&format!(
                        "        server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;\n"
                    ));
                }
                replaced = true;
            }
            continue;
        }
        replaced = false;
        if t == "listen 7400;" {
            out.push_str(&format!("        listen 127.0.0.1:{listen};\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        out.contains(&format!("listen 127.0.0.1:{listen};")),
        "nginx.conf no longer listens on 7400"
    );
    out
}

/// nginx in front of the gateways, stopped on drop.
struct Lb {
    /// Killed when the balancer is dropped.
    _child: support::Owned,
    port: u16,
}

impl Lb {
    async fn start(nginx: &Path, dir: &Path, gateways: &[u16]) -> Lb {
        let dir = dir.join("lb");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let port = free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, lb_conf(gateways, port)).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!(
                "daemon off; master_process off; pid {}; error_log {} warn;",
                dir.join("nginx.pid").display(),
                dir.join("error.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let lb = Lb {
            _child: support::Owned::new(child),
            port,
        };
        let started = Instant::now();
        while support::http()
            .get(format!("{}/lb-healthz", lb.http()))
            .send()
            .await
            .is_err()
        {
            assert!(started.elapsed() < GUARD, "nginx did not start");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        lb
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }
}

/// What a gateway's live hub reports on its metrics port: records read per partition, and
/// how many partitions it follows.
async fn hub_reads(metrics_port: u16) -> (BTreeMap<u32, u64>, u64) {
    let text = support::http()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reads = BTreeMap::new();
    let mut followed = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("herald_hub_records_read_total{partition=\"") {
            let (p, rest) = rest.split_once('"').unwrap();
            let n: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
            reads.insert(p.parse().unwrap(), n as u64);
        } else if let Some(v) = line.strip_prefix("herald_hub_partitions_followed ") {
            followed = v.trim().parse::<f64>().unwrap() as u64;
        }
    }
    (reads, followed)
}

/// A gateway of the cluster with its metrics port.
struct Gateway {
    dev: Dev,
    metrics: u16,
}

async fn gateway(cluster: &Cluster, name: &str) -> Gateway {
    let metrics = free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let dev = cluster
        .gateway_with(name, free_port(), &["--metrics-listen", &listen])
        .await;
    Gateway { dev, metrics }
}

/// The cluster's processes and what they need, or `None` (printed why) when something is
/// missing here.
fn prerequisites() -> Option<(&'static testing::Broker, PathBuf)> {
    let broker = testing::broker()?;
    let Some(nginx) = nginx_binary() else {
        println!("SKIPPED: nginx is not installed (Debian: apt-get install nginx-light)");
        return None;
    };
    Some((broker, nginx))
}

fn cluster(
    broker: &testing::Broker,
    db: &herald_postgres::testing::TestDb,
    dir: &Path,
    partitions: u32,
) -> Cluster {
    Cluster {
        partitions,
        request_partitions: 1,
        broker: broker.address.clone(),
        prefix: format!("a{}.", uuid::Uuid::new_v4().simple()),
        pg_url: db.url.clone(),
        secret: "affinity-test-secret".into(),
        dir: dir.to_owned(),
    }
}

/// One device per user, each connecting through the load balancer with its partition hint.
fn devices_through(
    lb: &Lb,
    users: &[String],
    partitions: u32,
    stop: &Arc<AtomicBool>,
    rng: &mut impl Rng,
) -> (ShownBy, Vec<tokio::task::JoinHandle<()>>) {
    let mut shown = ShownBy::new();
    let mut tasks = Vec::new();
    for u in users {
        let s: Shown = Arc::default();
        shown.insert((u.clone(), "d0".into()), s.clone());
        let hinted = format!("{}?partition={}", lb.ws(), partition_for(u, partitions));
        tasks.push(tokio::spawn(device(
            vec![(lb.http(), hinted)],
            u.clone(),
            "d0".into(),
            s,
            stop.clone(),
            rng.random(),
        )));
    }
    (shown, tasks)
}

/// Waits until the devices were shown `n` notifications in all.
async fn until_shown(shown: &ShownBy, n: usize) {
    let started = Instant::now();
    loop {
        let mut total = 0;
        for s in shown.values() {
            total += s.lock().await.len();
        }
        if total >= n {
            return;
        }
        assert!(
            started.elapsed() < GUARD,
            "only {total} notifications shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every connected user's partition is followed by some gateway.
async fn until_followed(gateways: &[&Gateway], want: &BTreeSet<u32>) {
    let started = Instant::now();
    loop {
        let mut followed = 0;
        for g in gateways {
            followed += hub_reads(g.metrics).await.1;
        }
        if followed >= want.len() as u64 {
            return;
        }
        assert!(
            started.elapsed() < GUARD,
            "the gateways follow {followed} partitions, the users are on {}",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn affine_gateways_read_only_their_partitions_and_a_killed_one_loses_nothing() {
    let Some((broker, nginx)) = prerequisites() else {
        return;
    };
    let Some(db) = herald_postgres::testing::TestDb::new() else {
        return;
    };
    let seed: u64 = rand::random();
    println!("affinity: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let _watchdog = support::Watchdog::new("cluster affinity", support::WATCHDOG_LIMIT, tmp.path());
    let partitions = 4;
    let cluster = cluster(broker, &db, tmp.path(), partitions);
    let mut projector = cluster.projector("p1");
    let g1 = gateway(&cluster, "g1").await;
    let mut g2 = gateway(&cluster, "g2").await;
    let lb = Lb::start(&nginx, tmp.path(), &[g1.dev.port, g2.dev.port]).await;

    let users: Vec<String> = (0..8).map(|i| format!("aff{i}")).collect();
    let user_partitions: BTreeSet<u32> =
        users.iter().map(|u| partition_for(u, partitions)).collect();
    let stop_devices = Arc::new(AtomicBool::new(false));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let (shown, devices) = devices_through(&lb, &users, partitions, &stop_devices, &mut rng);
    until_followed(&[&g1, &g2], &user_partitions).await;
    // Producers post to the first gateway directly: where a POST lands does not matter here.
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producer = tokio::spawn(producer_to(
        vec![g1.dev.url()],
        users.clone(),
        produced.clone(),
        stop_producing.clone(),
        rng.random(),
        0,
    ));
    // Until the projector (a group member, a few seconds to join) delivers, then a while more.
    until_shown(&shown, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each partition is read by one gateway only, and the users' partitions are all read.
    let (r1, _) = hub_reads(g1.metrics).await;
    let (r2, _) = hub_reads(g2.metrics).await;
    let read = |r: &BTreeMap<u32, u64>| -> BTreeSet<u32> {
        r.iter().filter(|(_, n)| **n > 0).map(|(p, _)| *p).collect()
    };
    let (read1, read2) = (read(&r1), read(&r2));
    println!("affinity: gateway 1 read partitions {r1:?}, gateway 2 {r2:?}");
    let ok = read1.is_disjoint(&read2)
        && read1.union(&read2).copied().collect::<BTreeSet<_>>() == user_partitions;
    if !ok {
        dump_logs(tmp.path());
    }
    assert!(
        read1.is_disjoint(&read2),
        "a partition was read by both gateways: {read1:?} and {read2:?}"
    );
    assert_eq!(
        read1.union(&read2).copied().collect::<BTreeSet<_>>(),
        user_partitions,
        "the gateways read exactly the users' partitions"
    );

    // Gateway 2 dies mid-stream: its users reconnect through nginx to gateway 1.
    g2.dev.kill9();
    until_followed(&[&g1], &user_partitions).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_producing.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let p = produced.lock().await;
    converge(&shown, &p.accepted).await;
    stop_devices.store(true, Ordering::Relaxed);
    for d in devices {
        d.await.unwrap();
    }
    let verdict = check(&shown, &p).await;
    println!(
        "affinity: {} accepted, {} shown, {verdict:?}",
        p.accepted.len(),
        verdict.shown
    );
    if verdict.lost + verdict.duplicated + verdict.out_of_order > 0 {
        dump_logs(tmp.path());
    }
    assert!(p.accepted.len() > 10, "the producer got notifications in");
    assert_eq!(verdict.lost, 0, "lost");
    assert_eq!(verdict.duplicated, 0, "duplicated");
    assert_eq!(verdict.out_of_order, 0, "out of order");
    assert_eq!(verdict.strangers, 0, "shown but never sent");
    let _ = projector.kill();
    let _ = projector.wait();
}

/// `GET /v1/presence` of a gateway (`herald dev` leaves operator endpoints open on loopback).
async fn presence(g: &Gateway) -> serde_json::Value {
    support::http()
        .get(format!("{}/v1/presence", g.dev.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The users and devices a presence answer lists.
fn online(p: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    p["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let devices = o["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            (o["user_id"].as_str().unwrap().to_owned(), devices)
        })
        .collect()
}

/// Waits (within the hang guard) until `g`'s presence answer passes `ok`; returns it.
async fn presence_until(
    g: &Gateway,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let p = presence(g).await;
        if ok(&p) {
            return p;
        }
        assert!(started.elapsed() < GUARD, "{what}: never; last answer {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_is_cluster_wide_with_two_gateways() {
    let Some(broker) = testing::broker() else {
        return;
    };
    let Some(db) = herald_postgres::testing::TestDb::new() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let _watchdog = support::Watchdog::new("cluster presence", support::WATCHDOG_LIMIT, tmp.path());
    let cluster = cluster(broker, &db, tmp.path(), 4);
    let presence_gateway = |name: &'static str| {
        let cluster = &cluster;
        async move {
            let metrics = free_port();
            let listen = format!("127.0.0.1:{metrics}");
            let dev = cluster
                .gateway_with(
                    name,
                    free_port(),
                    &["--metrics-listen", &listen, "--presence-interval-ms", "500"],
                )
                .await;
            Gateway { dev, metrics }
        }
    };
    let g1 = presence_gateway("g1").await;
    let mut g2 = presence_gateway("g2").await;
    let ws = |g: &Gateway| format!("ws://127.0.0.1:{}/v1/ws", g.dev.port);
    let connect = |g: &Gateway, user: &'static str, device: &'static str| {
        let (http, ws) = (g.dev.url(), ws(g));
        async move {
            let token = dev_token(&http, user).await.expect("a dev token");
            herald_client::connect(
                &ws,
                &herald_client::Credentials::Bearer(token),
                device,
                None,
            )
            .await
            .expect("connect")
            .0
        }
    };
    let alice = connect(&g1, "alice", "phone").await;
    let bob = connect(&g2, "bob", "laptop").await;
    let both = |p: &serde_json::Value| {
        let o = online(p);
        o.get("alice") == Some(&vec!["phone".to_owned()])
            && o.get("bob") == Some(&vec!["laptop".to_owned()])
            && p["complete"] == true
            && p["gateways"].as_array().unwrap().len() == 2
    };
    let p1 = presence_until(&g1, "gateway 1 sees both gateways' sessions", both).await;
    presence_until(&g2, "gateway 2 sees both gateways' sessions", both).await;
    assert_eq!(p1["gateways"][0]["this"], true);
    assert_eq!(p1["gateways"][1]["users"], 1);

    // A disconnect on gateway 2 leaves gateway 1's view.
    bob.close().await;
    presence_until(&g1, "bob's disconnect reaches gateway 1", |p| {
        !online(p).contains_key("bob") && online(p).contains_key("alice")
    })
    .await;

    // Gateway 2 dies with a session: its users leave gateway 1's view, and so does it.
    let _carol = connect(&g2, "carol", "tablet").await;
    presence_until(&g1, "carol's connect reaches gateway 1", |p| {
        online(p).contains_key("carol")
    })
    .await;
    g2.dev.kill9();
    let p = presence_until(&g1, "a killed gateway's sessions expire", |p| {
        !online(p).contains_key("carol")
    })
    .await;
    assert_eq!(p["gateways"].as_array().unwrap().len(), 1, "{p}");
    assert!(online(&p).contains_key("alice"), "{p}");
    drop(alice);
}

/// Sum of the offsets at the end of every user-events partition.
async fn log_end(log: &KafkaLog) -> u64 {
    let mut end = 0;
    for p in 0..log.partitions(Topic::UserEvents) {
        end += log.end_offset(Topic::UserEvents, p).await.unwrap();
    }
    end
}

/// Whether a gateway's hub has read everything appended to the partitions it follows (its
/// `/readyz` says how far behind it is).
async fn caught_up(metrics_port: u16) -> bool {
    let report: serde_json::Value = support::http()
        .get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report["checks"].as_array().unwrap().iter().any(|c| {
        c["name"] == "hub"
            && c["detail"]
                .as_str()
                .unwrap_or("")
                .contains("; 0 records behind")
    })
}

/// The log's end and the records each gateway's hub has read, taken while nothing is appended
/// and every hub has read all it follows.
async fn settled(log: &KafkaLog, metrics: &[u16]) -> (u64, Vec<u64>) {
    let started = Instant::now();
    loop {
        let before = log_end(log).await;
        let mut all = true;
        let mut reads = Vec::new();
        for m in metrics {
            all &= caught_up(*m).await;
            reads.push(hub_reads(*m).await.0.values().sum::<u64>());
        }
        if all && log_end(log).await == before {
            return (before, reads);
        }
        assert!(
            started.elapsed() < GUARD,
            "the log never went quiet with the hubs caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One row of the table: gateways, seconds, records appended, records read per gateway,
/// deliveries shown.
struct Row {
    gateways: usize,
    seconds: f64,
    appended: u64,
    read: Vec<u64>,
    shown: usize,
}

async fn measure(broker: &testing::Broker, nginx: &Path, n: usize, window: Duration) -> Row {
    let db = herald_postgres::testing::TestDb::new().expect("PostgreSQL was here a moment ago");
    let tmp = tempfile::tempdir().unwrap();
    let _watchdog = support::Watchdog::new("cluster measure", support::WATCHDOG_LIMIT, tmp.path());
    let partitions = 16;
    let cluster = cluster(broker, &db, tmp.path(), partitions);
    let mut projector = cluster.projector("p1");
    let mut gateways = Vec::new();
    for i in 0..n {
        gateways.push(gateway(&cluster, &format!("g{i}")).await);
    }
    let ports: Vec<u16> = gateways.iter().map(|g| g.dev.port).collect();
    let lb = Lb::start(nginx, tmp.path(), &ports).await;
    let log = KafkaLog::open(testing::config(broker, &cluster.prefix))
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let users: Vec<String> = (0..48).map(|i| format!("r{i}")).collect();
    let user_partitions: BTreeSet<u32> =
        users.iter().map(|u| partition_for(u, partitions)).collect();
    let stop_devices = Arc::new(AtomicBool::new(false));
    let stop_producing = Arc::new(AtomicBool::new(false));
    let (shown, devices) = devices_through(&lb, &users, partitions, &stop_devices, &mut rng);
    let refs: Vec<&Gateway> = gateways.iter().collect();
    until_followed(&refs, &user_partitions).await;

    let metrics: Vec<u16> = gateways.iter().map(|g| g.metrics).collect();
    let (end_before, read_before) = settled(&log, &metrics).await;
    let started = Instant::now();
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(producer_to(
                vec![lb.http()],
                users.clone(),
                produced.clone(),
                stop_producing.clone(),
                i as u64,
                i,
            ))
        })
        .collect();
    tokio::time::sleep(window).await;
    stop_producing.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    {
        let p = produced.lock().await;
        converge(&shown, &p.accepted).await;
    }
    stop_devices.store(true, Ordering::Relaxed);
    for d in devices {
        d.await.unwrap();
    }
    // The sessions are gone (their partitions stay followed for the linger): once the hubs
    // have read everything, compare.
    let seconds = started.elapsed().as_secs_f64();
    let (end_after, read_after) = settled(&log, &metrics).await;
    let appended = end_after - end_before;
    let read: Vec<u64> = read_after
        .iter()
        .zip(&read_before)
        .map(|(a, b)| a - b)
        .collect();
    let shown_total: usize = {
        let mut t = 0;
        for s in shown.values() {
            t += s.lock().await.len();
        }
        t
    };
    let _ = projector.kill();
    let _ = projector.wait();
    drop(lb);
    Row {
        gateways: n,
        seconds,
        appended,
        read,
        shown: shown_total,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_record_is_read_by_one_gateway_with_1_2_and_4_gateways() {
    let Some((broker, nginx)) = prerequisites() else {
        return;
    };
    if herald_postgres::testing::TestDb::new().is_none() {
        return;
    }
    let window = Duration::from_secs_f64(
        std::env::var("HERALD_AFFINITY_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3.0),
    );
    let mut rows = Vec::new();
    for n in [1, 2, 4] {
        rows.push(measure(broker, &nginx, n, window).await);
    }
    println!(
        "affinity: | gateways | user-event records appended/s | records read per gateway/s (each) | read by all gateways / appended | deliveries/s |"
    );
    println!("affinity: |---:|---:|---|---:|---:|");
    for r in &rows {
        let each: Vec<String> = r
            .read
            .iter()
            .map(|n| format!("{:.0}", *n as f64 / r.seconds))
            .collect();
        println!(
            "affinity: | {} | {:.0} | {} | {:.2} | {:.0} |",
            r.gateways,
            r.appended as f64 / r.seconds,
            each.join(", "),
            r.read.iter().sum::<u64>() as f64 / r.appended.max(1) as f64,
            r.shown as f64 / r.seconds
        );
    }
    for r in &rows {
        assert!(
            r.appended > 0,
            "records were appended with {} gateways",
            r.gateways
        );
        assert_eq!(
            r.read.iter().sum::<u64>(),
            r.appended,
            "with {} gateways every record appended is read by exactly one (read: {:?})",
            r.gateways,
            r.read
        );
    }
}
