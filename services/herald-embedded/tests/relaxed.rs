//! The writer's linger for relaxed appends (`EventLog::append_relaxed`): a group of them alone
//! waits, any other append ends the wait and shares the commit, and a full group does not wait.
//! The linger here is an hour, so nothing below can pass by a commit that came on its own.

use std::time::Duration;

use herald_embedded::{Access, EmbeddedLog, LogOptions, MAX_GROUP_COMMIT_RECORDS};
use herald_ports::log::{EventLog, Record, Topic};

/// A hang guard, not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);
const AN_HOUR: Duration = Duration::from_secs(3600);

fn record(i: usize) -> Record {
    Record {
        partition: 0,
        key: format!("user-{i}"),
        value: format!("value {i}").into_bytes(),
        headers: vec![("herald-schema".into(), b"test".to_vec())],
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

async fn open(dir: &tempfile::TempDir) -> EmbeddedLog {
    open_with(dir, AN_HOUR).await
}

async fn open_with(dir: &tempfile::TempDir, linger: Duration) -> EmbeddedLog {
    EmbeddedLog::open(
        &dir.path().join("log.db"),
        Access::ReadWrite,
        LogOptions {
            relaxed_linger: Some(linger),
            ..LogOptions::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaxed_group_waits_until_a_plain_append_joins_it() {
    a_plain_append_ends_the_linger(AN_HOUR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linger_past_any_deadline_waits_for_a_plain_append() {
    a_plain_append_ends_the_linger(Duration::MAX).await;
}

async fn a_plain_append_ends_the_linger(linger: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(&dir, linger).await;
    let mut relaxed = Box::pin(log.append_relaxed(Topic::UserEvents, vec![record(0)]));
    // The first poll queues it (the queue has room); it must not be committed on its own.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut relaxed)
            .await
            .is_err(),
        "a relaxed append alone was committed before its linger"
    );
    assert_eq!(log.end_offset(Topic::UserEvents, 0).await.unwrap(), 0);
    let plain = tokio::time::timeout(HANG_GUARD, log.append(Topic::UserEvents, vec![record(1)]))
        .await
        .expect("a plain append waited for the relaxed group's linger")
        .unwrap();
    let relaxed = tokio::time::timeout(HANG_GUARD, relaxed)
        .await
        .expect("the relaxed append was not committed with the plain one")
        .unwrap();
    assert_eq!(relaxed[0].offset, 0);
    assert_eq!(plain[0].offset, 1);
    let read = log.read(Topic::UserEvents, 0, 0, 10).await.unwrap();
    let values: Vec<&[u8]> = read.iter().map(|r| r.record.value.as_slice()).collect();
    assert_eq!(values, [&b"value 0"[..], &b"value 1"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_relaxed_group_commits_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir).await;
    let records: Vec<Record> = (0..MAX_GROUP_COMMIT_RECORDS).map(record).collect();
    let appended = tokio::time::timeout(HANG_GUARD, log.append_relaxed(Topic::UserEvents, records))
        .await
        .expect("a full relaxed group waited for its linger")
        .unwrap();
    assert_eq!(appended.len(), MAX_GROUP_COMMIT_RECORDS);
    assert_eq!(
        log.end_offset(Topic::UserEvents, 0).await.unwrap(),
        MAX_GROUP_COMMIT_RECORDS as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_log_commits_a_lingering_group() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir).await;
    {
        let mut relaxed = Box::pin(log.append_relaxed(Topic::UserEvents, vec![record(0)]));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut relaxed)
                .await
                .is_err()
        );
        // The caller stops waiting; the record is queued all the same.
    }
    // Dropping the last handle closes the queue and joins the writer, which must end its
    // linger, commit what it holds and exit. On a thread of its own, so that a hang fails the
    // test instead of holding the runtime's shutdown.
    let (done, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(log);
        let _ = done.send(());
    });
    closed
        .recv_timeout(HANG_GUARD)
        .expect("closing the log waited for the relaxed group's linger");
    let log = open(&dir).await;
    let read = log.read(Topic::UserEvents, 0, 0, 10).await.unwrap();
    assert_eq!(read.len(), 1, "the lingering record was committed at close");
    assert_eq!(read[0].record.value, b"value 0");
}
