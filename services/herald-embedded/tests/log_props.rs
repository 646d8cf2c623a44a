//! Property test on real files: whatever the appends (sizes, partitions, headers, relaxed or
//! not, calls of one record or of thousands), reopenings and reads, the embedded log returns
//! exactly the records appended, at the offsets it answered, from the live handle and from a
//! read-only one (`herald audit`, `herald replay`), whose reads come from the stored rows alone.

use herald_embedded::{Access, EmbeddedLog, LogOptions, MAX_LOG_ROW_BYTES, MAX_LOG_ROW_RECORDS};
use herald_ports::log::{EventLog, Record, Topic};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Records as (partition seed, value length, headers kind), appended in one call.
    Append {
        topic: usize,
        relaxed: bool,
        records: Vec<(u32, usize, u8)>,
    },
    /// Drop the log and open it again from its file.
    Reopen,
    /// Read from a fraction of the partition's end, at most `max` records.
    Read {
        topic: usize,
        partition: u32,
        from_permille: u16,
        max: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            0..2usize,
            any::<bool>(),
            prop_oneof![
                4 => prop::collection::vec((0..8u32, 0..300usize, 0..3u8), 1..40),
                // Several stored rows of one partition in one commit.
                1 => prop::collection::vec((0..2u32, 0..50usize, 0..3u8), 1..(3 * MAX_LOG_ROW_RECORDS)),
                // Rows closed by their byte bound (`MAX_LOG_ROW_BYTES`), records larger than it.
                1 => prop::collection::vec((0..2u32, 0..(MAX_LOG_ROW_BYTES + 10_000), 0..3u8), 1..8),
            ],
        )
            .prop_map(|(topic, relaxed, records)| Op::Append { topic, relaxed, records }),
        1 => Just(Op::Reopen),
        3 => (0..2usize, 0..8u32, 0..=1000u16, prop_oneof![Just(1usize), 1..600usize])
            .prop_map(|(topic, partition, from_permille, max)| Op::Read {
                topic,
                partition,
                from_permille,
                max,
            }),
    ]
}

fn headers(kind: u8, n: usize) -> Vec<(String, Vec<u8>)> {
    match kind {
        0 => Vec::new(),
        1 => vec![("schema".into(), b"herald.v1".to_vec())],
        _ => vec![
            ("n".into(), n.to_le_bytes().to_vec()),
            ("e".into(), Vec::new()),
        ],
    }
}

async fn check_read(
    log: &EmbeddedLog,
    model: &[Vec<Vec<Record>>; 2],
    (topic, partition, from_permille, max): (usize, u32, u16, usize),
) {
    let t = Topic::ALL[topic];
    let partition = partition % log.partitions(t);
    let stored = &model[topic][partition as usize];
    let from = (stored.len() as u64 * u64::from(from_permille)) / 1000;
    let got = log.read(t, partition, from, max).await.unwrap();
    let want = &stored[from as usize..stored.len().min((from as usize).saturating_add(max))];
    assert_eq!(
        got.len(),
        want.len(),
        "{t:?} p{partition} from {from} max {max}"
    );
    for (k, (r, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(r.offset, from + k as u64);
        assert_eq!(&*r.record, w, "{t:?} p{partition} offset {}", r.offset);
    }
    assert_eq!(
        log.end_offset(t, partition).await.unwrap(),
        stored.len() as u64
    );
}

fn run(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let open = || EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default());
        let mut log = open().await.unwrap();
        let parts = [
            log.partitions(Topic::ALL[0]) as usize,
            log.partitions(Topic::ALL[1]) as usize,
        ];
        let mut model: [Vec<Vec<Record>>; 2] = parts.map(|n| vec![Vec::new(); n]);
        let mut n = 0usize;
        for op in ops {
            match op {
                Op::Append {
                    topic,
                    relaxed,
                    records,
                } => {
                    let t = Topic::ALL[topic];
                    let records: Vec<Record> = records
                        .into_iter()
                        .map(|(p, len, kind)| {
                            n += 1;
                            Record {
                                partition: p % parts[topic] as u32,
                                key: format!("user-{}", n % 7),
                                value: (0..len).map(|i| (i + n) as u8).collect(),
                                headers: headers(kind, n),
                                timestamp_ms: n as i64 * 1_000 - 500_000,
                            }
                        })
                        .collect();
                    let appended = if relaxed {
                        log.append_relaxed(t, records.clone()).await
                    } else {
                        log.append(t, records.clone()).await
                    }
                    .unwrap();
                    for (a, r) in appended.iter().zip(records) {
                        let stored = &mut model[topic][a.partition as usize];
                        assert_eq!(a.offset, stored.len() as u64, "offsets are consecutive");
                        stored.push(r);
                    }
                }
                Op::Reopen => {
                    drop(log);
                    log = open().await.unwrap();
                }
                Op::Read {
                    topic,
                    partition,
                    from_permille,
                    max,
                } => {
                    check_read(&log, &model, (topic, partition, from_permille, max)).await;
                    let file = EmbeddedLog::open(&path, Access::ReadOnly, LogOptions::default())
                        .await
                        .unwrap();
                    check_read(&file, &model, (topic, partition, from_permille, max)).await;
                }
            }
        }
        // Everything, once more, from the file alone.
        drop(log);
        let file = EmbeddedLog::open(&path, Access::ReadOnly, LogOptions::default())
            .await
            .unwrap();
        // Every stored row keeps its bounds; only a row of one record may be larger.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let over: i64 = conn
            .query_row(
                "SELECT count(*) FROM batches WHERE count > ?1 OR (count > 1 AND length(data) > ?2)",
                [MAX_LOG_ROW_RECORDS as i64, MAX_LOG_ROW_BYTES as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(over, 0, "rows past MAX_LOG_ROW_RECORDS or MAX_LOG_ROW_BYTES");
        drop(conn);
        for (topic, count) in parts.into_iter().enumerate() {
            for partition in 0..count as u32 {
                check_read(&file, &model, (topic, partition, 0, 1_000_000)).await;
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn the_log_returns_what_was_appended_through_reopenings(
        ops in prop::collection::vec(op(), 1..30)
    ) {
        run(ops);
    }
}

/// A commit of many alike records is stored in compressed rows (`batch::VERSION_LZ4`), and the
/// live handle and a read-only one read back exactly what was appended, also after a reopen;
/// random values stay in rows as they are, side by side with the compressed ones.
#[tokio::test]
async fn alike_records_are_stored_compressed_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let records: Vec<Record> = (0..600)
        .map(|i| Record {
            partition: (i % 2) as u32,
            key: format!("user-{}", i % 13),
            value: if i < 500 {
                format!(r#"{{"event_type":"invoice.paid","source":"billing","n":{i}}}"#)
                    .into_bytes()
            } else {
                noise(300)
            },
            headers: headers(1, i),
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect();
    log.append(Topic::UserEvents, records[..500].to_vec())
        .await
        .unwrap();
    log.append(Topic::UserEvents, records[500..].to_vec())
        .await
        .unwrap();
    drop(log);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let by_version = |v: &str| -> i64 {
        conn.query_row(
            &format!("SELECT count(*) FROM batches WHERE substr(data, 1, 1) = x'{v}'"),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(by_version("02") > 0, "no compressed row");
    assert!(by_version("01") > 0, "the random values' rows as they are");
    drop(conn);
    for access in [Access::ReadWrite, Access::ReadOnly] {
        let log = EmbeddedLog::open(&path, access, LogOptions::default())
            .await
            .unwrap();
        for partition in 0..2u32 {
            let want: Vec<&Record> = records
                .iter()
                .filter(|r| r.partition == partition)
                .collect();
            let got = log
                .read(Topic::UserEvents, partition, 0, 10_000)
                .await
                .unwrap();
            let got: Vec<&Record> = got.iter().map(|s| &*s.record).collect();
            assert_eq!(got, want, "{access:?} p{partition}");
            // From the middle of a compressed row.
            let got = log.read(Topic::UserEvents, partition, 77, 3).await.unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!((got[0].offset, &*got[0].record), (77, want[77]));
        }
    }
}
