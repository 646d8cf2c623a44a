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

/// Small records, many to a stored row (`MAX_LOG_ROW_RECORDS`): a read-only handle (the file
/// alone) reads every offset range exactly, from the start of a row, its middle, its last
/// record, across rows of one commit and of different commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_anywhere_in_a_stored_batch_match_what_was_appended() {
    use herald_embedded::MAX_LOG_ROW_RECORDS;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    let small = |i: usize| Record {
        partition: (i % 3) as u32,
        key: format!("user-{}", i % 3),
        value: format!("value {i}").into_bytes(),
        // Runs of equal headers, and changes inside a row.
        headers: vec![("schema".into(), vec![(i / 100) as u8])],
        timestamp_ms: 1_700_000_000_000 + i as i64,
    };
    // One call of 3 × 700 records (several rows per partition in one commit), then calls of
    // 1, 2, … records (rows of one commit each).
    let mut sent = 0;
    log.append(Topic::UserEvents, (0..2_100).map(small).collect())
        .await
        .unwrap();
    sent += 2_100;
    for k in 1..40 {
        log.append(Topic::UserEvents, (sent..sent + k).map(small).collect())
            .await
            .unwrap();
        sent += k;
    }
    let file = EmbeddedLog::open(&path, Access::ReadOnly, LogOptions::default())
        .await
        .unwrap();
    for partition in 0..3u32 {
        let expected: Vec<Record> = (0..sent)
            .filter(|i| i % 3 == partition as usize)
            .map(small)
            .collect();
        let end = expected.len() as u64;
        assert_eq!(
            file.end_offset(Topic::UserEvents, partition).await.unwrap(),
            end
        );
        let row = MAX_LOG_ROW_RECORDS as u64;
        for from in [
            0,
            1,
            row - 1,
            row,
            row + 1,
            699,
            700,
            701,
            end - 2,
            end - 1,
            end,
        ] {
            for max in [1, 7, MAX_LOG_ROW_RECORDS, 5_000] {
                let got = file
                    .read(Topic::UserEvents, partition, from, max)
                    .await
                    .unwrap();
                assert_eq!(got.len() as u64, (max as u64).min(end - from));
                for (k, r) in got.iter().enumerate() {
                    assert_eq!(r.offset, from + k as u64, "partition {partition}");
                    assert_eq!(*r.record, expected[r.offset as usize]);
                }
            }
        }
    }
}
