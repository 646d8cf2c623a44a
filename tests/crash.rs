//! Crash test with a real process: `herald dev` is killed with SIGKILL at random moments while
//! producers post notifications. After the last restart every accepted notification (202) is in
//! each of its recipients' inboxes exactly once, in no one else's, and in accept order per
//! producer; nothing is duplicated; unread counts equal the lists; a replay equals the live
//! projection.
//!
//! Producers behave like real ones: a request whose response was lost to the crash is either
//! retried with the same idempotency key after the restart (it must then appear exactly once) or
//! abandoned (its outcome is unknown to the producer: it may appear, but at most once).
//!
//! Size: HERALD_CRASH_KILLS (default 6) kills; `just crash` runs a larger one.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{Dev, herald};
use tokio::sync::Mutex;

const USERS: usize = 12;
const PRODUCERS: usize = 3;

#[derive(Debug, Clone)]
struct Req {
    key: String,
    producer: usize,
    recipients: Vec<String>,
}

#[derive(Default)]
struct Ledger {
    /// key → notification id, for every key that got a 202.
    accepted: HashMap<String, String>,
    /// Per producer, keys in the order their (first) 202 arrived.
    accept_order: Vec<Vec<String>>,
    /// Requests without a 202 that the producer will retry after the restart.
    retry: Vec<Req>,
    /// Requests without a 202 that the producer gave up on.
    abandoned: Vec<Req>,
    all: HashMap<String, Req>,
    posts: u64,
    retries_of_accepted: u64,
}

enum Outcome {
    Accepted(String),
    Unknown,
}

async fn post(client: &reqwest::Client, url: &str, r: &Req) -> Outcome {
    let body = json!({
        "recipients": {"users": r.recipients},
        "event_type": "crash.test",
        "source": format!("producer-{}", r.producer),
        "data": {"key": r.key},
    });
    // Like a real producer, one that is rate limited (429, the producer's token bucket: this
    // test posts faster than its 1,000/s when the server keeps up) waits as told and asks again.
    let resp = loop {
        let resp = client
            .post(format!("{url}/v1/notifications"))
            .header("idempotency-key", &r.key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match resp {
            Ok(resp) if resp.status().as_u16() == 429 => {
                let secs = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .expect("a 429 says when to retry (Retry-After)");
                tokio::time::sleep(Duration::from_millis((secs * 1000).clamp(50, 1000))).await;
            }
            other => break other,
        }
    };
    match resp {
        Ok(resp) if resp.status().as_u16() == 202 => {
            let v: Value = match resp.json().await {
                Ok(v) => v,
                Err(_) => return Outcome::Unknown,
            };
            Outcome::Accepted(v["notification_id"].as_str().unwrap().to_owned())
        }
        Ok(resp) => panic!("unexpected status {} for {}", resp.status(), r.key),
        Err(_) => Outcome::Unknown,
    }
}

fn record_accept(ledger: &mut Ledger, r: &Req, id: String) {
    if let Some(prev) = ledger.accepted.get(&r.key) {
        assert_eq!(prev, &id, "same key, same id");
        return;
    }
    ledger.accepted.insert(r.key.clone(), id);
    ledger.accept_order[r.producer].push(r.key.clone());
}

async fn producer(
    id: usize,
    url: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
    round: usize,
) {
    let client = support::http();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        // Sometimes repeat an already accepted key: it must create nothing new.
        let repeat = {
            let l = ledger.lock().await;
            let mine = &l.accept_order[id];
            (rng.random_bool(0.1) && !mine.is_empty())
                .then(|| l.all[&mine[rng.random_range(0..mine.len())]].clone())
        };
        let (req, is_repeat) = match repeat {
            Some(r) => (r, true),
            None => {
                let k = rng.random_range(1..=3);
                let mut recipients: Vec<String> = (0..k)
                    .map(|_| format!("user-{}", rng.random_range(0..USERS)))
                    .collect();
                recipients.sort();
                recipients.dedup();
                let r = Req {
                    key: format!("p{id}-r{round}-n{n}"),
                    producer: id,
                    recipients,
                };
                n += 1;
                ledger.lock().await.all.insert(r.key.clone(), r.clone());
                (r, false)
            }
        };
        let outcome = post(&client, &url, &req).await;
        let mut l = ledger.lock().await;
        l.posts += 1;
        match outcome {
            Outcome::Accepted(nid) => {
                if is_repeat {
                    l.retries_of_accepted += 1;
                }
                record_accept(&mut l, &req, nid);
            }
            Outcome::Unknown => {
                if !is_repeat {
                    if rng.random_bool(0.5) {
                        l.retry.push(req);
                    } else {
                        l.abandoned.push(req);
                    }
                }
                return; // the server is gone
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_production_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("HERALD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("HERALD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test: {kills} kills, seed {seed} (HERALD_CRASH_SEED to reproduce)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let _watchdog = support::Watchdog::new(
        "crash",
        support::WATCHDOG_LIMIT + Duration::from_secs(30) * kills as u32,
        tmp.path(),
    );
    let data = tmp.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger {
        accept_order: vec![Vec::new(); PRODUCERS],
        ..Default::default()
    }));

    for round in 0..=kills {
        let mut dev = Dev::start(&data).await;
        // Producers first retry what the crash left unanswered, with the same keys.
        let pending: Vec<Req> = std::mem::take(&mut ledger.lock().await.retry);
        let client = support::http();
        for r in pending {
            match post(&client, &dev.url(), &r).await {
                Outcome::Accepted(id) => record_accept(&mut *ledger.lock().await, &r, id),
                Outcome::Unknown => panic!("a healthy server did not answer {}", r.key),
            }
        }
        if round == kills {
            dev.caught_up().await;
            verify(&dev, &ledger, kills).await;
            assert!(dev.terminate().success());
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                tokio::spawn(producer(
                    p,
                    dev.url(),
                    ledger.clone(),
                    stop.clone(),
                    rng.random(),
                    round,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        dev.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }

    // The rebuilt projection equals the live one.
    let replay = herald(&["replay", "--quiet", "--data-dir", data.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
}

async fn verify(dev: &Dev, ledger: &Arc<Mutex<Ledger>>, kills: usize) {
    let l = ledger.lock().await;
    let mut inboxes: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for u in 0..USERS {
        let user = format!("user-{u}");
        let (items, unread) = dev.inbox(&user).await;
        assert_eq!(
            unread,
            items.len() as u64,
            "{user}: unread count equals the list"
        );
        inboxes.insert(user, items);
    }
    let id_to_key: HashMap<String, String> = l
        .all
        .values()
        .map(|r| (herald_core_id(&r.key), r.key.clone()))
        .collect();
    let mut lost = 0;
    let mut duplicated = 0;
    let mut misdelivered = 0;
    let mut unknown = 0;
    let mut position: HashMap<(String, String), u64> = HashMap::new();
    for (user, items) in &inboxes {
        let mut seen = HashSet::new();
        for (id, seq) in items {
            if !seen.insert(id.clone()) {
                duplicated += 1;
            }
            match id_to_key.get(id) {
                None => unknown += 1,
                Some(key) => {
                    if !l.all[key].recipients.contains(user) {
                        misdelivered += 1;
                    }
                    position.insert((user.clone(), key.clone()), *seq);
                }
            }
        }
    }
    for (key, _) in l.accepted.iter() {
        for user in &l.all[key].recipients {
            if !position.contains_key(&(user.clone(), key.clone())) {
                lost += 1;
                eprintln!("lost: {key} for {user}");
            }
        }
    }
    // Accept order per producer is inbox order per user.
    let mut out_of_order = 0;
    for order in &l.accept_order {
        for user in inboxes.keys() {
            let seqs: Vec<u64> = order
                .iter()
                .filter_map(|k| position.get(&(user.clone(), k.clone())).copied())
                .collect();
            if seqs.windows(2).any(|w| w[0] >= w[1]) {
                out_of_order += 1;
                eprintln!("out of order for {user}: {seqs:?}");
            }
        }
    }
    let abandoned_seen = l
        .abandoned
        .iter()
        .filter(|r| !l.accepted.contains_key(&r.key))
        .filter(|r| {
            r.recipients
                .iter()
                .any(|u| position.contains_key(&(u.clone(), r.key.clone())))
        })
        .count();
    println!(
        "crash test: kills={kills} posts={} accepted={} repeats_of_accepted_keys={} \
         abandoned_without_202={} (appeared once: {abandoned_seen}) \
         lost={lost} duplicated={duplicated} misdelivered={misdelivered} unknown={unknown} out_of_order={out_of_order}",
        l.posts,
        l.accepted.len(),
        l.retries_of_accepted,
        l.abandoned.len(),
    );
    assert!(
        !l.accepted.is_empty(),
        "the test accepted nothing: it proves nothing"
    );
    assert_eq!(
        (lost, duplicated, misdelivered, unknown, out_of_order),
        (0, 0, 0, 0, 0)
    );
}

/// The id Herald derives for producer `dev` and `key` (see `herald_core::ids`).
fn herald_core_id(key: &str) -> String {
    herald_core::ids::notification_id("dev", key)
}
