//! Exactly-once-visible chaos test with real processes.
//!
//! Several users, several devices each (the Rust client), disconnecting at random; producers
//! posting with random retries of the same idempotency key; `herald dev` killed with SIGKILL at
//! random moments and restarted on the same port. At the end, every notification that got a 202
//! was shown exactly once on every device of every recipient, in per-user order, and nothing
//! was shown twice. The checker records what each device's *application* saw (a notification
//! is "shown" when the client's dedupe lets it through), and checks that record itself.
//!
//! Size: HERALD_CHAOS_KILLS (default 3), HERALD_CHAOS_SECONDS per round (default 1.5);
//! `just chaos` runs a larger one.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_client::{ClientError, Credentials, Inbox, connect};
use herald_core::protocol::ServerFrame;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::Dev;
use tokio::sync::Mutex;

const USERS: usize = 4;
const DEVICES: usize = 2;
/// Hang guard for the final convergence, not a timing assertion.
const CONVERGE_GUARD: Duration = Duration::from_secs(90);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one device's application saw, in order: (notification id, seq).
type Shown = Arc<Mutex<Vec<(String, u64)>>>;

/// Frames the client's dedupe held back (redeliveries and resume overlaps), across devices.
static ABSORBED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn device(
    url_http: String,
    url_ws: String,
    user: String,
    device: String,
    shown: Shown,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut inbox = Inbox::new();
    let mut backoff_ms = 50u64;
    while !stop.load(Ordering::Relaxed) {
        // A fresh token each connection (the server may have restarted).
        let token = match dev_token(&url_http, &user).await {
            Some(t) => t,
            None => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=backoff_ms))).await;
                backoff_ms = (backoff_ms * 2).min(1000);
                continue;
            }
        };
        let (mut c, info) = match connect(
            &url_ws,
            &Credentials::Bearer(token),
            &device,
            inbox.cursor(),
        )
        .await
        {
            Ok(x) => x,
            Err(_) => {
                // Full jitter.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=backoff_ms))).await;
                backoff_ms = (backoff_ms * 2).min(1000);
                continue;
            }
        };
        backoff_ms = 50;
        inbox.on_session(&info);
        // Stay for a random number of frames, then drop the connection.
        let budget = rng.random_range(5..60);
        let mut frames = 0;
        loop {
            if stop.load(Ordering::Relaxed) && frames > budget {
                break;
            }
            let next = tokio::time::timeout(Duration::from_millis(500), c.next()).await;
            let frame = match next {
                Err(_) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                Ok(Err(ClientError::Closed { .. } | ClientError::Ended | ClientError::Ws(_))) => {
                    break;
                }
                Ok(Err(e)) => panic!("{user}/{device}: {e}"),
                Ok(Ok(f)) => f,
            };
            if let f @ ServerFrame::Notification { .. } = &frame {
                match inbox.on_notification(f) {
                    Some(n) => shown.lock().await.push((n.id.clone(), n.seq)),
                    None => {
                        ABSORBED.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let (id, cursor) = match f {
                    ServerFrame::Notification { id, cursor, .. } => (id.clone(), cursor.clone()),
                    _ => unreachable!(),
                };
                // ACK after the app handled it; sometimes by id, sometimes cumulatively, and
                // sometimes not at all (the app died before its ACK): the server redelivers.
                if rng.random_bool(0.1) {
                    frames += 1;
                    continue;
                }
                let ack = if rng.random_bool(0.5) {
                    c.ack(&[id], None).await
                } else {
                    c.ack(&[], Some(&cursor)).await
                };
                if ack.is_err() {
                    break;
                }
            }
            frames += 1;
            if !stop.load(Ordering::Relaxed) && frames >= budget {
                break;
            }
        }
        c.close().await;
    }
}

async fn dev_token(url_http: &str, user: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .post(format!("{url_http}/v1/dev/token"))
        .json(&json!({"user_id": user}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = resp.json().await.ok()?;
    v["token"].as_str().map(str::to_owned)
}

#[derive(Default)]
struct Produced {
    /// id → recipients, for every 202.
    accepted: BTreeMap<String, Vec<String>>,
    /// ids whose requests got no 202 (outcome unknown).
    unknown: HashSet<String>,
    posts: u64,
    retries: u64,
}

async fn producer(
    url_http: String,
    produced: Arc<Mutex<Produced>>,
    stop: Arc<AtomicBool>,
    seed: u64,
    tag: usize,
) {
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.random_range(1..=USERS);
        let mut users: Vec<String> = (0..k)
            .map(|_| format!("u{}", rng.random_range(0..USERS)))
            .collect();
        users.sort();
        users.dedup();
        let key = format!("p{tag}-{n}");
        n += 1;
        let id = herald_core::ids::notification_id("dev", &key);
        // Post, and sometimes post the same key again (a producer retry).
        let tries = if rng.random_bool(0.2) { 2 } else { 1 };
        for t in 0..tries {
            let resp = client
                .post(format!("{url_http}/v1/notifications"))
                .header("idempotency-key", &key)
                .json(&json!({"recipients": {"users": users}, "event_type": "chaos", "source": "chaos", "data": {"key": key}}))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let mut p = produced.lock().await;
            p.posts += 1;
            if t > 0 {
                p.retries += 1;
            }
            match resp {
                Ok(r) if r.status().as_u16() == 202 => {
                    p.unknown.remove(&id);
                    p.accepted.insert(id.clone(), users.clone());
                }
                Ok(r) => panic!("unexpected status {}", r.status()),
                Err(_) => {
                    if !p.accepted.contains_key(&id) {
                        p.unknown.insert(id.clone());
                    }
                    drop(p);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..15))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_notification_is_shown_once_per_device_through_kills() {
    let kills: usize = env_or("HERALD_CHAOS_KILLS", 3);
    let round_secs: f64 = env_or("HERALD_CHAOS_SECONDS", 1.5);
    let seed: u64 = env_or("HERALD_CHAOS_SEED", rand::random());
    println!(
        "chaos: {kills} kills, {round_secs}s rounds, seed {seed} (HERALD_CHAOS_SEED to reproduce)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = support::free_port();
    let mut dev = Dev::start_on(&data, port).await;
    let http = dev.url();
    let ws = format!("ws://127.0.0.1:{port}/v1/ws");

    let stop_devices = Arc::new(AtomicBool::new(false));
    let stop_producers = Arc::new(AtomicBool::new(false));
    let mut shown: HashMap<(String, String), Shown> = HashMap::new();
    let mut tasks = Vec::new();
    for u in 0..USERS {
        for d in 0..DEVICES {
            let s: Shown = Arc::default();
            shown.insert((format!("u{u}"), format!("d{d}")), s.clone());
            tasks.push(tokio::spawn(device(
                http.clone(),
                ws.clone(),
                format!("u{u}"),
                format!("d{d}"),
                s,
                stop_devices.clone(),
                rng.random(),
            )));
        }
    }
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(producer(
                http.clone(),
                produced.clone(),
                stop_producers.clone(),
                rng.random(),
                i,
            ))
        })
        .collect();

    for _ in 0..kills {
        tokio::time::sleep(Duration::from_secs_f64(
            round_secs * rng.random_range(0.5..1.5),
        ))
        .await;
        dev.kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        dev = Dev::start_on(&data, port).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(round_secs)).await;
    stop_producers.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    dev.caught_up().await;

    // Let the devices converge: every accepted notification shown on each recipient's devices.
    let accepted = produced.lock().await.accepted.clone();
    let deadline = tokio::time::Instant::now() + CONVERGE_GUARD;
    loop {
        let mut missing = 0;
        for ((user, _), s) in &shown {
            let seen: HashSet<String> = s.lock().await.iter().map(|(i, _)| i.clone()).collect();
            missing += accepted
                .iter()
                .filter(|(id, users)| users.contains(user) && !seen.contains(*id))
                .count();
        }
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_devices.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let p = produced.lock().await;
    let (mut lost, mut duplicated, mut out_of_order, mut strangers, mut shown_total) =
        (0, 0, 0, 0, 0);
    let known: HashSet<&String> = p.accepted.keys().chain(p.unknown.iter()).collect();
    for ((user, device), s) in &shown {
        let s = s.lock().await;
        shown_total += s.len();
        let mut seen = HashSet::new();
        for (id, _) in s.iter() {
            if !seen.insert(id) {
                duplicated += 1;
                eprintln!("{user}/{device}: {id} shown twice");
            }
            if !known.contains(id) {
                strangers += 1;
            }
        }
        if s.windows(2).any(|w| w[0].1 >= w[1].1) {
            out_of_order += 1;
            eprintln!(
                "{user}/{device}: out of order {:?}",
                s.iter().map(|x| x.1).collect::<Vec<_>>()
            );
        }
        for (id, users) in p.accepted.iter() {
            if users.contains(user) && !seen.contains(id) {
                lost += 1;
                eprintln!("{user}/{device}: {id} never shown");
            }
        }
    }
    println!(
        "chaos: kills={kills} devices={} posts={} producer_retries={} accepted={} unknown_outcome={} shown={} \
         absorbed_by_client_dedupe={} lost={lost} duplicated={duplicated} out_of_order={out_of_order} strangers={strangers}",
        USERS * DEVICES,
        p.posts,
        p.retries,
        p.accepted.len(),
        p.unknown.len(),
        shown_total,
        ABSORBED.load(Ordering::Relaxed),
    );
    assert!(
        !p.accepted.is_empty(),
        "nothing was accepted: the test proves nothing"
    );
    assert_eq!((lost, duplicated, out_of_order, strangers), (0, 0, 0, 0));
}
