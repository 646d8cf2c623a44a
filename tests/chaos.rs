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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::Dev;
use support::exactly_once::*;
use tokio::sync::Mutex;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    let _watchdog = support::Watchdog::new(
        "chaos",
        support::WATCHDOG_LIMIT + Duration::from_secs_f64(kills as f64 * (round_secs + 30.0)),
        tmp.path(),
    );
    let data = tmp.path().join("data");
    let port = support::free_port();
    let mut dev = Dev::start_on(&data, port).await;
    let http = dev.url();
    let ws = format!("ws://127.0.0.1:{port}/v1/ws");

    let stop_devices = Arc::new(AtomicBool::new(false));
    let stop_producers = Arc::new(AtomicBool::new(false));
    let (shown, tasks) = start_devices(&[(http.clone(), ws)], &stop_devices, &mut rng);
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(producer(
                vec![http.clone()],
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
    converge(&shown, &accepted).await;
    stop_devices.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let p = produced.lock().await;
    let Verdict {
        lost,
        duplicated,
        out_of_order,
        strangers,
        shown: shown_total,
    } = check(&shown, &p).await;
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
