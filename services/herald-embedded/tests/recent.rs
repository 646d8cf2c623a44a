//! The log's in-memory window of recent records (`log/recent.rs`): reads that start in it, before
//! it, and across its lower edge return exactly what a reader of the file alone gets.

use herald_embedded::{Access, EmbeddedLog, LogOptions, RECENT_LOG_BYTES};
use herald_ports::log::{EventLog, Record, Topic};

fn record(i: usize, size: usize) -> Record {
    Record {
        partition: (i % 2) as u32,
        key: format!("user-{}", i % 2),
        value: format!("{i:08}").into_bytes().repeat(size / 8),
        headers: vec![("h".into(), i.to_le_bytes().to_vec())],
        timestamp_ms: i as i64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_inside_before_and_across_the_window_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    // More than the whole window over the user-events partitions, so older records are only in
    // the file: 9 partitions share RECENT_LOG_BYTES, and these go to two of them.
    let size = 16 << 10;
    let n = 2 * RECENT_LOG_BYTES / size;
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        log.append(
            Topic::UserEvents,
            chunk.iter().map(|i| record(*i, size)).collect(),
        )
        .await
        .unwrap();
    }
    // A second handle on the same file, read-only: it has no window and reads SQLite.
    let file = EmbeddedLog::open(&path, Access::ReadOnly, LogOptions::default())
        .await
        .unwrap();
    let per_partition = (n / 2) as u64;
    for partition in 0..2u32 {
        assert_eq!(
            log.end_offset(Topic::UserEvents, partition).await.unwrap(),
            per_partition
        );
        for from in [0, per_partition / 2, per_partition - 300, per_partition - 1] {
            for max in [1, 100, 1000] {
                let live = log
                    .read(Topic::UserEvents, partition, from, max)
                    .await
                    .unwrap();
                let stored = file
                    .read(Topic::UserEvents, partition, from, max)
                    .await
                    .unwrap();
                assert_eq!(
                    live, stored,
                    "partition {partition}, from {from}, max {max}"
                );
                assert_eq!(live.len() as u64, (max as u64).min(per_partition - from));
                for (k, r) in live.iter().enumerate() {
                    assert_eq!(r.offset, from + k as u64);
                    let i = r.offset as usize * 2 + partition as usize;
                    assert_eq!(*r.record, record(i, size));
                }
            }
        }
        assert!(
            log.read(Topic::UserEvents, partition, per_partition, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
