//! The inbox fold alone: 100,000 `Added` events (one recipient each, users `u0`.. in turn) applied
//! to a new embedded projection in batches, as the inbox stage applies them, with the process's
//! CPU seconds and the wall time. `cargo run --release -p herald-embedded --example fold -- [batch
//! (200)] [users (1000)]`. docs/benchmarks.md has its figures.

use std::time::Instant;

use herald_core::model::UserEvent;
use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::contract::generate::added;
use herald_ports::prelude::*;
use herald_ports::projection::{Positioned, Stage};

/// The process's user and system CPU seconds (`/proc/self/stat`).
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[tokio::main]
async fn main() {
    let batch: usize = std::env::args().nth(1).map_or(200, |s| s.parse().unwrap());
    let users: usize = std::env::args().nth(2).map_or(1000, |s| s.parse().unwrap());
    let n = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedProjection::open(&dir.path().join("p.db"), Access::ReadWrite)
        .await
        .unwrap();
    let mut offsets = [0u64; 8];
    let events: Vec<Positioned<UserEvent>> = (0..n)
        .map(|i| {
            let u = format!("u{}", i % users);
            let p = herald_core::partition::partition_for(&u, 8);
            let o = offsets[p as usize];
            offsets[p as usize] += 1;
            Positioned {
                partition: p,
                offset: o,
                event: UserEvent::Added(added(&u, &format!("0190-{i:012}"))),
            }
        })
        .collect();
    let (c0, t0) = (cpu(), Instant::now());
    let mut next = [0u64; 8];
    for chunk in events.chunks(batch) {
        for e in chunk {
            next[e.partition as usize] = e.offset + 1;
        }
        let offs: Vec<(u32, u64)> = next
            .iter()
            .enumerate()
            .map(|(p, o)| (p as u32, *o))
            .collect();
        store
            .apply_user_events(Stage::Inbox, chunk, &offs)
            .await
            .unwrap();
    }
    println!(
        "batch {batch} users {users}: cpu {:.2}s wall {:.2}s",
        cpu() - c0,
        t0.elapsed().as_secs_f64()
    );
}
