//! The exactly-once-visible harness shared by the chaos tests: devices (the Rust client) that
//! connect to any of the gateways, drop connections at random and record what their application
//! was shown; producers that post with retries; and the final check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_client::{ClientError, Credentials, Inbox, connect};
use herald_core::protocol::ServerFrame;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;

pub const USERS: usize = 4;
pub const DEVICES: usize = 2;
/// Hang guard for the final convergence, not a timing assertion.
pub const CONVERGE_GUARD: Duration = Duration::from_secs(120);

/// What one device's application saw, in order: (notification id, seq).
pub type Shown = Arc<Mutex<Vec<(String, u64)>>>;

/// Frames the client's dedupe held back (redeliveries and resume overlaps), across devices.
pub static ABSORBED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub async fn device(
    gateways: Vec<(String, String)>,
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
        // Any gateway will do: each connection picks one (and resumes there).
        let (url_http, url_ws) = &gateways[rng.random_range(0..gateways.len())];
        // A fresh token each connection (the server may have restarted).
        let token = match dev_token(url_http, &user).await {
            Some(t) => t,
            None => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=backoff_ms))).await;
                backoff_ms = (backoff_ms * 2).min(1000);
                continue;
            }
        };
        let (mut c, info) =
            match connect(url_ws, &Credentials::Bearer(token), &device, inbox.cursor()).await {
                Ok(x) => x,
                Err(_) => {
                    // Full jitter.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..=backoff_ms)))
                        .await;
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

pub async fn dev_token(url_http: &str, user: &str) -> Option<String> {
    let resp = super::http()
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
pub struct Produced {
    /// id → recipients, for every 202.
    pub accepted: BTreeMap<String, Vec<String>>,
    /// ids whose requests got no 202 (outcome unknown).
    pub unknown: HashSet<String>,
    pub posts: u64,
    pub retries: u64,
}

pub async fn producer(
    gateways: Vec<String>,
    produced: Arc<Mutex<Produced>>,
    stop: Arc<AtomicBool>,
    seed: u64,
    tag: usize,
) {
    let users = (0..USERS).map(|u| format!("u{u}")).collect();
    producer_to(gateways, users, produced, stop, seed, tag).await
}

/// [`producer`] for notifications to 1–4 of `recipients` each.
pub async fn producer_to(
    gateways: Vec<String>,
    recipients: Vec<String>,
    produced: Arc<Mutex<Produced>>,
    stop: Arc<AtomicBool>,
    seed: u64,
    tag: usize,
) {
    let client = super::http();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.random_range(1..=USERS);
        let mut users: Vec<String> = (0..k)
            .map(|_| recipients[rng.random_range(0..recipients.len())].clone())
            .collect();
        users.sort();
        users.dedup();
        let key = format!("p{tag}-{n}");
        n += 1;
        let id = herald_core::ids::notification_id("dev", &key);
        // Post, and sometimes post the same key again (a producer retry).
        let tries = if rng.random_bool(0.2) { 2 } else { 1 };
        for t in 0..tries {
            let url_http = &gateways[rng.random_range(0..gateways.len())];
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

/// Waits (bounded by [`CONVERGE_GUARD`]) until every accepted notification was shown on each
/// recipient's devices.
pub async fn converge(shown: &ShownBy, accepted: &BTreeMap<String, Vec<String>>) {
    let deadline = tokio::time::Instant::now() + CONVERGE_GUARD;
    loop {
        let mut missing = 0;
        for ((user, _), s) in shown {
            let seen: HashSet<String> = s.lock().await.iter().map(|(i, _)| i.clone()).collect();
            missing += accepted
                .iter()
                .filter(|(id, users)| users.contains(user) && !seen.contains(*id))
                .count();
        }
        if missing == 0 || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub strangers: usize,
    pub shown: usize,
}

/// Every accepted notification shown exactly once on every device of every recipient, in
/// per-user order (increasing seq), and nothing shown that no producer sent.
pub async fn check(shown: &ShownBy, p: &Produced) -> Verdict {
    let mut v = Verdict::default();
    let known: HashSet<&String> = p.accepted.keys().chain(p.unknown.iter()).collect();
    for ((user, device), s) in shown {
        let s = s.lock().await;
        v.shown += s.len();
        let mut seen = HashSet::new();
        for (id, _) in s.iter() {
            if !seen.insert(id) {
                v.duplicated += 1;
                eprintln!("{user}/{device}: {id} shown twice");
            }
            if !known.contains(id) {
                v.strangers += 1;
            }
        }
        if s.windows(2).any(|w| w[0].1 >= w[1].1) {
            v.out_of_order += 1;
            eprintln!(
                "{user}/{device}: out of order {:?}",
                s.iter().map(|x| x.1).collect::<Vec<_>>()
            );
        }
        for (id, users) in p.accepted.iter() {
            if users.contains(user) && !seen.contains(id) {
                v.lost += 1;
                eprintln!("{user}/{device}: {id} never shown");
            }
        }
    }
    v
}

/// What each (user, device) was shown.
pub type ShownBy = HashMap<(String, String), Shown>;

/// Starts one device task per (user, device).
pub fn start_devices(
    gateways: &[(String, String)],
    stop: &Arc<AtomicBool>,
    rng: &mut impl Rng,
) -> (ShownBy, Vec<tokio::task::JoinHandle<()>>) {
    let mut shown = HashMap::new();
    let mut tasks = Vec::new();
    for u in 0..USERS {
        for d in 0..DEVICES {
            let s: Shown = Arc::default();
            shown.insert((format!("u{u}"), format!("d{d}")), s.clone());
            tasks.push(tokio::spawn(device(
                gateways.to_vec(),
                format!("u{u}"),
                format!("d{d}"),
                s,
                stop.clone(),
                rng.random(),
            )));
        }
    }
    (shown, tasks)
}
