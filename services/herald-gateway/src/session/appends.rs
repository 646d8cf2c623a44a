//! A session's appends to the log (deliveries, ACKs and marks), in the order the session made
//! them.
//!
//! The session does not wait for them (the device learns nothing from the append's answer), so
//! they run in a task; but their order is the user's order: `read` then `unread` of one
//! notification must reach the log in that order, or the inbox ends up read. One task per
//! session at a time takes everything queued, in order, and appends it in one call; what the
//! session adds meanwhile waits for the next call. A run of appends from one session therefore
//! shares commits instead of racing for them.

use std::sync::{Arc, Mutex};

use herald_ports::log::{EventLog, Record, Topic};

/// Most records one session may have waiting for the log. A healthy log takes a session's
/// appends within a commit or two (the relaxed linger is 10 ms); a session that reaches this
/// has a log that is not answering, and is closed rather than let its queue grow.
pub const MAX_SESSION_PENDING_RECORDS: usize = 1024;

/// Why a session's appends cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// An earlier append of this session failed (the log's error).
    Failed(String),
    /// [`MAX_SESSION_PENDING_RECORDS`] are already waiting.
    Full,
}

#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    /// A task is appending (and will take what is queued when its call returns).
    draining: bool,
    failed: Option<String>,
}

/// The session's queue of appends (cheap to create: nothing is spawned until the first push).
pub struct Appends {
    log: Arc<dyn EventLog>,
    pending: Arc<Mutex<Pending>>,
}

impl Appends {
    pub fn new(log: Arc<dyn EventLog>) -> Appends {
        Appends {
            log,
            pending: Default::default(),
        }
    }

    /// Queues `records` after everything this session queued before; they reach the log in that
    /// order. Refused, with nothing queued, after a failed append or when the queue is full.
    pub fn push(&self, records: Vec<Record>) -> Result<(), Refused> {
        if records.is_empty() {
            return Ok(());
        }
        let mut p = self.pending.lock().expect("appends lock");
        if let Some(e) = &p.failed {
            return Err(Refused::Failed(e.clone()));
        }
        if p.records.len() + records.len() > MAX_SESSION_PENDING_RECORDS {
            return Err(Refused::Full);
        }
        p.records.extend(records);
        if !p.draining {
            p.draining = true;
            let (log, pending) = (self.log.clone(), self.pending.clone());
            tokio::spawn(drain(log, pending));
        }
        Ok(())
    }
}

/// Appends what is queued, one call at a time, until the queue is empty or an append fails
/// (then what is queued is dropped, and the session's next push is refused).
async fn drain(log: Arc<dyn EventLog>, pending: Arc<Mutex<Pending>>) {
    loop {
        let records = {
            let mut p = pending.lock().expect("appends lock");
            if p.records.is_empty() {
                p.draining = false;
                return;
            }
            std::mem::take(&mut p.records)
        };
        if let Err(e) = log.append_relaxed(Topic::UserEvents, records).await {
            tracing::warn!(error = %e, "appending a session's user events failed");
            let mut p = pending.lock().expect("appends lock");
            p.failed = Some(e.to_string());
            p.records.clear();
            p.draining = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_embedded::{Access, EmbeddedLog, LogOptions};
    use std::time::Duration;

    fn record(i: usize) -> Record {
        Record {
            partition: 0,
            key: "u".into(),
            value: i.to_string().into_bytes(),
            headers: Vec::new(),
            timestamp_ms: 0,
        }
    }

    async fn log(dir: &tempfile::TempDir, access: Access) -> Arc<dyn EventLog> {
        Arc::new(
            EmbeddedLog::open(&dir.path().join("log.db"), access, LogOptions::default())
                .await
                .expect("open the log"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_reach_the_log_in_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir, Access::ReadWrite).await;
        let appends = Appends::new(log.clone());
        for i in 0..300 {
            appends.push(vec![record(i)]).unwrap();
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let p = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while log.end_offset(Topic::UserEvents, p).await.unwrap() < 300 {
            assert!(tokio::time::Instant::now() < deadline, "not all appended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let read = log.read(Topic::UserEvents, p, 0, 300).await.unwrap();
        let values: Vec<String> = read
            .iter()
            .map(|r| String::from_utf8(r.record.value.clone()).unwrap())
            .collect();
        let pushed: Vec<String> = (0..300).map(|i| i.to_string()).collect();
        assert_eq!(values, pushed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_append_the_next_push_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(log(&dir, Access::ReadWrite).await);
        // A read-only log refuses every append.
        let appends = Appends::new(log(&dir, Access::ReadOnly).await);
        appends.push(vec![record(0)]).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match appends.push(vec![record(1)]) {
                Err(Refused::Failed(e)) => {
                    assert!(e.contains("read-only"), "{e}");
                    break;
                }
                Err(Refused::Full) => panic!("full"),
                // Queued behind the first, which has not failed yet.
                Ok(()) => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "never refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn more_than_the_bound_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let appends = Appends::new(log(&dir, Access::ReadWrite).await);
        let too_many = (0..=MAX_SESSION_PENDING_RECORDS).map(record).collect();
        assert_eq!(appends.push(too_many), Err(Refused::Full));
        assert!(appends.pending.lock().unwrap().records.is_empty());
        assert!(!appends.pending.lock().unwrap().draining);
    }
}
