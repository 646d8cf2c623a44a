//! The log contract.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::log::*;

/// Upper bound on any single wait in the suite: a hang guard, not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Opens the log under test. A second `open` on the same harness opens the same storage, as a
/// process restart would.
#[async_trait]
pub trait LogHarness: Send + Sync {
    type Log: EventLog;
    async fn open(&self) -> Self::Log;
}

fn record(partition: u32, key: &str, value: &[u8]) -> Record {
    Record {
        partition,
        key: key.to_owned(),
        value: value.to_vec(),
        headers: vec![
            ("herald-schema".into(), b"test".to_vec()),
            ("traceparent".into(), b"00-abc-def-01".to_vec()),
        ],
        timestamp_ms: 1_700_000_000_123,
    }
}

async fn next_records(consumer: &mut dyn LogConsumer) -> Vec<StoredRecord> {
    loop {
        match tokio::time::timeout(HANG_GUARD, consumer.next(100))
            .await
            .expect("consumer produced nothing within the hang guard")
            .expect("consumer error")
        {
            ConsumerEvent::Records(r) if !r.is_empty() => return r,
            _ => continue,
        }
    }
}

async fn expect_assigned(consumer: &mut dyn LogConsumer) -> Vec<u32> {
    loop {
        match tokio::time::timeout(HANG_GUARD, consumer.next(100))
            .await
            .expect("no assignment within the hang guard")
            .expect("consumer error")
        {
            ConsumerEvent::Assigned(p) => return p,
            ConsumerEvent::Revoked(_) => continue,
            ConsumerEvent::Records(r) => panic!("records before assignment: {r:?}"),
        }
    }
}

pub async fn append_then_read_round_trips<H: LogHarness>(h: &H) {
    let log = h.open().await;
    let topic = Topic::UserEvents;
    let base = log.end_offset(topic, 0).await.unwrap();
    let recs: Vec<Record> = (0..5)
        .map(|i| record(0, &format!("k{i}"), format!("v{i}").as_bytes()))
        .collect();
    let appended = log.append(topic, recs.clone()).await.unwrap();
    let offsets: Vec<u64> = appended.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (base..base + 5).collect::<Vec<_>>());
    assert!(appended.iter().all(|a| a.partition == 0));
    let read = log.read(topic, 0, base, 100).await.unwrap();
    assert_eq!(read.len(), 5);
    for (i, r) in read.iter().enumerate() {
        assert_eq!(r.topic, topic);
        assert_eq!(r.partition, 0);
        assert_eq!(r.offset, base + i as u64);
        assert_eq!(*r.record, recs[i]);
        assert_eq!(r.header("traceparent"), Some(&b"00-abc-def-01"[..]));
    }
    assert_eq!(log.end_offset(topic, 0).await.unwrap(), base + 5);
}

pub async fn offsets_are_contiguous_per_partition_under_concurrent_appends<H: LogHarness>(h: &H) {
    let log = Arc::new(h.open().await);
    concurrent_appends_keep_one_order(log, Topic::Requests, 8, 40, |_, _| false).await;
}

/// Relaxed appends (a session's progress) and plain ones, from concurrent callers: one order
/// per partition, contiguous offsets, each reads back at its offset, and both kinds refuse
/// what they must refuse.
pub async fn relaxed_and_plain_appends_share_one_order<H: LogHarness>(h: &H) {
    let log = Arc::new(h.open().await);
    let topic = Topic::UserEvents;
    concurrent_appends_keep_one_order(log.clone(), topic, 6, 30, |t, i| (t + i) % 3 != 0).await;
    let err = log
        .append_relaxed(topic, vec![record(log.partitions(topic), "k", b"v")])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::NoSuchPartition { .. }), "{err}");
    let big = vec![0u8; MAX_RECORD_BYTES + 1];
    let err = log
        .append_relaxed(topic, vec![record(0, "k", &big)])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { .. }), "{err}");
}

/// `callers` concurrent callers each append `rounds` batches of one to three records across
/// `topic`'s partitions (batch `i` of caller `t` relaxed when `relaxed(t, i)`); then every
/// partition's offsets must be unique and contiguous from its end before, and each record must
/// read back at its offset.
async fn concurrent_appends_keep_one_order<L: EventLog>(
    log: Arc<L>,
    topic: Topic,
    callers: u32,
    rounds: u32,
    relaxed: fn(u32, u32) -> bool,
) {
    let partitions = log.partitions(topic);
    let mut base = BTreeMap::new();
    for p in 0..partitions {
        base.insert(p, log.end_offset(topic, p).await.unwrap());
    }
    let mut tasks = Vec::new();
    for t in 0..callers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..rounds {
                let n = 1 + (i % 3);
                let recs = (0..n)
                    .map(|j| {
                        let p = (t + i + j) % partitions;
                        record(p, "k", format!("{t}/{i}/{j}").as_bytes())
                    })
                    .collect::<Vec<_>>();
                let append = if relaxed(t, i) {
                    log.append_relaxed(topic, recs.clone())
                } else {
                    log.append(topic, recs.clone())
                };
                let appended = tokio::time::timeout(HANG_GUARD, append)
                    .await
                    .expect("an append did not return within the hang guard")
                    .unwrap();
                assert_eq!(appended.len(), recs.len());
                for (a, r) in appended.iter().zip(&recs) {
                    assert_eq!(a.partition, r.partition);
                    got.push((a.partition, a.offset, r.value.clone()));
                }
            }
            got
        }));
    }
    let mut by_partition: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for t in tasks {
        for (p, o, v) in t.await.unwrap() {
            by_partition.entry(p).or_default().push((o, v));
        }
    }
    for (p, mut got) in by_partition {
        got.sort();
        let start = base[&p];
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (start..start + got.len() as u64).collect::<Vec<_>>(),
            "partition {p}: offsets are unique and contiguous"
        );
        let read: Vec<(u64, Vec<u8>)> = log
            .read(topic, p, start, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.offset, r.record.value.clone()))
            .collect();
        assert_eq!(
            read, got,
            "partition {p}: each append reads back at its offset"
        );
    }
}

pub async fn unknown_partition_and_oversized_record_are_errors<H: LogHarness>(h: &H) {
    let log = h.open().await;
    let n = log.partitions(Topic::UserEvents);
    let err = log
        .append(Topic::UserEvents, vec![record(n, "k", b"v")])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::NoSuchPartition { .. }), "{err}");
    assert!(log.read(Topic::UserEvents, n, 0, 1).await.is_err());
    let big = vec![0u8; MAX_RECORD_BYTES + 1];
    let err = log
        .append(Topic::UserEvents, vec![record(0, "k", &big)])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { .. }), "{err}");
}

pub async fn read_from_the_middle_and_past_the_end<H: LogHarness>(h: &H) {
    let log = h.open().await;
    let topic = Topic::UserEvents;
    let base = log.end_offset(topic, 1).await.unwrap();
    let recs: Vec<Record> = (0..10).map(|i| record(1, "k", &[i as u8])).collect();
    log.append(topic, recs).await.unwrap();
    let mid = log.read(topic, 1, base + 4, 3).await.unwrap();
    assert_eq!(
        mid.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![base + 4, base + 5, base + 6]
    );
    assert_eq!(mid[0].record.value, vec![4u8]);
    assert!(log.read(topic, 1, base + 10, 5).await.unwrap().is_empty());
    assert!(log.read(topic, 1, base + 1000, 5).await.unwrap().is_empty());
}

pub async fn a_waiting_consumer_wakes_on_append<H: LogHarness>(h: &H) {
    let log = Arc::new(h.open().await);
    let topic = Topic::UserEvents;
    let mut consumer = log.consumer(topic, "contract-wake").await.unwrap();
    let assigned = expect_assigned(consumer.as_mut()).await;
    assert!(assigned.contains(&2));
    for p in &assigned {
        let end = log.end_offset(topic, *p).await.unwrap();
        consumer.seek(*p, end).unwrap();
    }
    let writer = log.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .append(topic, vec![record(2, "late", b"woke")])
            .await
            .unwrap()
    });
    let got = next_records(consumer.as_mut()).await;
    let appended = append.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].partition, 2);
    assert_eq!(got[0].offset, appended[0].offset);
    assert_eq!(got[0].record.value, b"woke");
}

pub async fn a_group_resumes_from_its_committed_offsets<H: LogHarness>(h: &H) {
    let log = h.open().await;
    let topic = Topic::Requests;
    let group = "contract-resume";
    let base = log.end_offset(topic, 0).await.unwrap();
    let recs: Vec<Record> = (0..6).map(|i| record(0, "k", &[i as u8])).collect();
    log.append(topic, recs).await.unwrap();
    {
        let mut c = log.consumer(topic, group).await.unwrap();
        let assigned = expect_assigned(c.as_mut()).await;
        for p in assigned {
            let start = if p == 0 {
                base
            } else {
                log.end_offset(topic, p).await.unwrap()
            };
            c.seek(p, start).unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 6 {
            seen.extend(
                next_records(c.as_mut())
                    .await
                    .into_iter()
                    .filter(|r| r.partition == 0),
            );
        }
        assert_eq!(seen[0].offset, base);
        c.commit(&[(0, base + 3)]).await.unwrap();
    }
    let mut c = log.consumer(topic, group).await.unwrap();
    let assigned = expect_assigned(c.as_mut()).await;
    assert!(assigned.contains(&0));
    let got: Vec<StoredRecord> = next_records(c.as_mut())
        .await
        .into_iter()
        .filter(|r| r.partition == 0)
        .collect();
    assert_eq!(
        got.first().map(|r| r.offset),
        Some(base + 3),
        "resumes at the commit"
    );
    // Seeking moves the position.
    c.seek(0, base + 5).unwrap();
    let got: Vec<StoredRecord> = next_records(c.as_mut())
        .await
        .into_iter()
        .filter(|r| r.partition == 0)
        .collect();
    assert_eq!(got.first().map(|r| r.offset), Some(base + 5));
}

pub async fn records_and_epoch_survive_reopen<H: LogHarness>(h: &H) {
    // Headers as a batch has them: mostly the same list, sometimes another one or none (an
    // adapter that encodes a run of equal lists once must not carry one over to the next).
    let mut other = record(3, "durable", b"other headers");
    other.headers[1].1 = b"00-fed-cba-01".to_vec();
    let mut bare = record(3, "durable", b"no headers");
    bare.headers.clear();
    let recs = vec![
        record(3, "durable", b"kept"),
        record(3, "durable", b"same headers"),
        other,
        bare,
        record(3, "durable", b"first headers again"),
    ];
    let (epoch, base) = {
        let log = h.open().await;
        let base = log.end_offset(Topic::UserEvents, 3).await.unwrap();
        log.append(Topic::UserEvents, recs.clone()).await.unwrap();
        (log.epoch(), base)
    };
    let log = h.open().await;
    assert_eq!(log.epoch(), epoch, "epoch is stable across restarts");
    let read = log.read(Topic::UserEvents, 3, base, 10).await.unwrap();
    assert_eq!(read.len(), recs.len());
    assert_eq!(read[0].record.value, b"kept");
    for (r, want) in read.iter().zip(&recs) {
        assert_eq!(*r.record, *want);
    }
    assert_eq!(
        log.end_offset(Topic::UserEvents, 3).await.unwrap(),
        base + recs.len() as u64
    );
}

/// Records from `tail` until one with `value` arrives (all of them, that one last).
async fn tail_until(tail: &mut dyn LogTail, value: &[u8]) -> Vec<StoredRecord> {
    let mut got = Vec::new();
    while !got.iter().any(|r: &StoredRecord| r.record.value == value) {
        let batch = tokio::time::timeout(HANG_GUARD, tail.next(100))
            .await
            .expect("the tail produced nothing within the hang guard")
            .expect("tail error");
        got.extend(batch);
    }
    got
}

pub async fn a_tail_reads_only_the_partitions_it_follows<H: LogHarness>(h: &H) {
    let log = Arc::new(h.open().await);
    let topic = Topic::UserEvents;
    let mut tail = log.tail(topic).await.unwrap();
    assert!(matches!(
        tail.follow(log.partitions(topic), 0),
        Err(LogError::NoSuchPartition { .. })
    ));
    let base1 = log.end_offset(topic, 1).await.unwrap();
    let base2 = log.end_offset(topic, 2).await.unwrap();
    log.append(
        topic,
        vec![
            record(1, "a", b"p1-0"),
            record(2, "b", b"p2-0"),
            record(1, "a", b"p1-1"),
            record(1, "a", b"p1-2"),
        ],
    )
    .await
    .unwrap();

    // From the middle of partition 1: its later records, nothing of partition 2.
    tail.follow(1, base1 + 1).unwrap();
    let got = tail_until(tail.as_mut(), b"p1-2").await;
    let seen: Vec<(u32, u64)> = got.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(seen, vec![(1, base1 + 1), (1, base1 + 2)]);

    // Following partition 2 as well, then dropping 1: 2's records, none of 1's appended later.
    tail.follow(2, base2).unwrap();
    let got = tail_until(tail.as_mut(), b"p2-0").await;
    assert!(got.iter().all(|r| r.partition == 2), "{got:?}");
    tail.unfollow(1).unwrap();
    log.append(topic, vec![record(1, "a", b"p1-3")])
        .await
        .unwrap();
    log.append(topic, vec![record(2, "b", b"p2-1")])
        .await
        .unwrap();
    let got = tail_until(tail.as_mut(), b"p2-1").await;
    assert!(
        got.iter().all(|r| r.partition == 2),
        "a record of an unfollowed partition came: {got:?}"
    );

    // Following again starts where it is told, also for a partition already followed.
    tail.follow(1, base1 + 3).unwrap();
    tail.follow(2, base2).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(
            tokio::time::timeout(HANG_GUARD, tail.next(100))
                .await
                .expect("the tail produced nothing within the hang guard")
                .expect("tail error"),
        );
    }
    let mut values: Vec<&[u8]> = got.iter().map(|r| r.record.value.as_slice()).collect();
    values.sort();
    assert_eq!(values, vec![&b"p1-3"[..], b"p2-0", b"p2-1"]);
}
