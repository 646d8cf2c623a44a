//! The writer thread: appends queue up as jobs, and the thread commits as many as are waiting
//! (up to [`MAX_GROUP_COMMIT_RECORDS`] records) in one transaction, so one fsync covers many
//! callers. An append resolves only after its commit. A group with several callers waiting on
//! it waits the commit delay for more before its commit (PostgreSQL's `commit_delay`: under
//! load, fewer and larger commits). A group of relaxed appends only (nobody waits on them: a
//! session's progress) waits up to the linger for more, and any other job ends that wait (it
//! wakes the thread).
//!
//! It is the only writer of the file: group offsets and dead letters are jobs too. A second
//! writing connection would contend for SQLite's write lock, and SQLite's busy handler waits by
//! sleeping (1, 2, 5, … up to 100 ms at a time): measured, that put 130 ms stalls into appends
//! and the p99 of a 1k/s delivery run went from 17 to 74 ms.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald_ports::log::{Appended, LogError, Record, Topic};
use herald_ports::telemetry;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::batch::Batch;
use super::headers::encode_headers;
use super::{COMMIT_SIBLINGS, EmbeddedLog, LogFormat, MAX_GROUP_COMMIT_RECORDS, Shared, storage};
use crate::sqlite::WalPressure;

/// One record header: a name and its bytes.
type Header = (String, Vec<u8>);

/// One caller's append, waiting for the writer thread.
pub(super) enum Job {
    Append {
        topic: Topic,
        records: Vec<Record>,
        /// Nobody waits on it soon: its group may linger ([`EventLog::append_relaxed`]).
        ///
        /// [`EventLog::append_relaxed`]: herald_ports::log::EventLog::append_relaxed
        relaxed: bool,
        reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
    /// Any other write (group offsets, dead letters), committed with the group it joins.
    Write {
        write: WriteFn,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// A write run inside the writer's transaction.
pub(super) type WriteFn =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()> + Send>;

/// How a committed job is answered.
enum Reply {
    Append(
        oneshot::Sender<Result<Vec<Appended>, LogError>>,
        Vec<Appended>,
    ),
    Write(oneshot::Sender<Result<(), LogError>>),
}

impl Reply {
    fn send(self) {
        // A caller that stopped waiting has nothing to be told.
        let _ = match self {
            Reply::Append(reply, pos) => reply.send(Ok(pos)).map_err(drop),
            Reply::Write(reply) => reply.send(Ok(())).map_err(drop),
        };
    }
}

impl Job {
    /// Answers the job with its group's failure.
    fn fail(self, e: &rusqlite::Error) {
        let _ = match self {
            Job::Append { reply, .. } => reply.send(Err(storage(e))).map_err(drop),
            Job::Write { reply, .. } => reply.send(Err(storage(e))).map_err(drop),
        };
    }

    /// Whether its group may wait for more before the commit.
    fn relaxed(&self) -> bool {
        matches!(self, Job::Append { relaxed: true, .. })
    }

    /// Records this job adds to a group (a write counts as one).
    fn weight(&self) -> usize {
        match self {
            Job::Append { records, .. } => records.len(),
            Job::Write { .. } => 1,
        }
    }
}

impl EmbeddedLog {
    /// Queues checked records for the writer thread and waits for their commit.
    pub(super) async fn submit(
        &self,
        topic: Topic,
        records: Vec<Record>,
        relaxed: bool,
    ) -> Result<Vec<Appended>, LogError> {
        let started = Instant::now();
        let n = records.len();
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::Append {
            topic,
            records,
            relaxed,
            reply,
        })
        .await?;
        let out = rx.await.map_err(|_| LogError::Closed)??;
        telemetry::log_appended(topic, n, (!relaxed).then(|| started.elapsed()));
        Ok(out)
    }

    /// Runs `write` in the writer thread's next transaction and waits for its commit.
    pub(super) async fn write(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::Write {
            write: Box::new(write),
            reply,
        })
        .await?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn enqueue(&self, job: Job) -> Result<(), LogError> {
        let sender = self
            .inner
            .jobs
            .lock()
            .expect("jobs lock")
            .clone()
            .ok_or_else(|| LogError::Config("the log is open read-only".into()))?;
        let wake = !job.relaxed();
        sender.send(job).await.map_err(|_| LogError::Closed)?;
        // A lingering group commits now, with this job. Between lingers the thread waits in
        // the queue's own receive; this only leaves a token its next linger consumes.
        if wake && let Some(t) = &self.inner.writer_thread {
            t.unpark();
        }
        Ok(())
    }
}

/// How long a group may wait for more jobs before its commit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waits {
    /// A group of relaxed appends only ([`super::RELAXED_LINGER`]).
    pub linger: Duration,
    /// A group with [`COMMIT_SIBLINGS`] callers or more waiting on it ([`super::COMMIT_DELAY`]).
    pub commit_delay: Duration,
}

pub(super) fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    pressure: Option<Arc<WalPressure>>,
    waits: Waits,
) {
    let Waits {
        linger,
        commit_delay,
    } = waits;
    let mut next: [Vec<u64>; 2] = [0, 1].map(|t| {
        shared.ends[t]
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    });
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.weight();
        let mut jobs = vec![first];
        let closed;
        (count, closed) = take_queued(&mut rx, &mut jobs, count);
        if !closed
            && count < MAX_GROUP_COMMIT_RECORDS
            && !commit_delay.is_zero()
            && waits_for_siblings(&jobs)
        {
            wait_commit_delay(commit_delay);
            (count, _) = take_queued(&mut rx, &mut jobs, count);
        }
        if count < MAX_GROUP_COMMIT_RECORDS && !linger.is_zero() && jobs.iter().all(Job::relaxed) {
            count = linger_for_more(&mut rx, &mut jobs, count, linger);
        }
        let mut tentative = next.clone();
        match write_group(&mut conn, shared.format, &mut jobs, &mut tentative) {
            Ok(positions) => {
                next = tentative;
                let mut touched = [false; 2];
                let mut replies = Vec::with_capacity(jobs.len());
                // The records go to the recent windows before the new ends are published, so
                // a reader that sees an end finds the records before it in memory or the file.
                for (job, pos) in jobs.into_iter().zip(positions) {
                    match job {
                        Job::Append {
                            topic,
                            records,
                            reply,
                            ..
                        } => {
                            touched[topic.id() as usize] = true;
                            shared
                                .recent
                                .push(topic, pos.iter().map(|a| a.offset).zip(records).collect());
                            replies.push(Reply::Append(reply, pos));
                        }
                        Job::Write { reply, .. } => replies.push(Reply::Write(reply)),
                    }
                }
                for (ends, published) in next.iter().zip(&shared.ends) {
                    for (end, slot) in ends.iter().zip(published) {
                        slot.store(*end, Ordering::Release);
                    }
                }
                telemetry::log_group_commit(count);
                for reply in replies {
                    reply.send();
                }
                for (t, was) in touched.iter().enumerate() {
                    if *was {
                        shared.appended[t].send_modify(|g| *g += 1);
                    }
                }
                // After the replies: the appends this group carried do not wait for it.
                if let Some(p) = &pressure
                    && let Err(e) = p.relieve(&conn)
                {
                    tracing::warn!(error = %e, "log WAL restart failed");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log group commit failed");
                for job in jobs {
                    job.fail(&e);
                }
            }
        }
    }
}

/// The commit delay. A sleep, not a park: the appends that come meanwhile do not wake the
/// thread (each would cost a wake-up), so the delay runs out even if the group fills or the
/// queue does (its callers then wait for room): it is short and bounded.
fn wait_commit_delay(delay: Duration) {
    #[cfg(test)]
    if let Some((entered, proceed)) = tests::DELAY_GATE.lock().expect("gate lock").take() {
        let _ = entered.send(());
        let _ = proceed.recv();
        return;
    }
    std::thread::sleep(delay);
}

/// Whether a group waits the commit delay for more: [`COMMIT_SIBLINGS`] or more of its jobs
/// have callers waiting on them (relaxed appends have none: they linger instead).
fn waits_for_siblings(jobs: &[Job]) -> bool {
    jobs.iter().filter(|j| !j.relaxed()).count() >= COMMIT_SIBLINGS
}

/// Moves queued jobs into the group until it holds [`MAX_GROUP_COMMIT_RECORDS`] records or
/// the queue is empty; the group's new record count, and whether the queue is closed.
fn take_queued(
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    mut count: usize,
) -> (usize, bool) {
    while count < MAX_GROUP_COMMIT_RECORDS {
        match rx.try_recv() {
            Ok(job) => {
                count += job.weight();
                jobs.push(job);
            }
            Err(mpsc::error::TryRecvError::Empty) => return (count, false),
            Err(mpsc::error::TryRecvError::Disconnected) => return (count, true),
        }
    }
    (count, false)
}

/// Lets a group of relaxed appends, which took everything queued, wait for more: until
/// `linger` has passed since the call, the group is full, another kind of job has joined it
/// (whose enqueue wakes this thread) or the queue closes; the group's new record count.
fn linger_for_more(
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    mut count: usize,
    linger: Duration,
) -> usize {
    // An unrepresentable deadline (a linger of centuries) waits for a wake-up alone.
    let deadline = Instant::now().checked_add(linger);
    loop {
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return count;
                }
                std::thread::park_timeout(deadline - now);
            }
            None => std::thread::park(),
        }
        let before = jobs.len();
        let closed;
        (count, closed) = take_queued(rx, jobs, count);
        if closed || count >= MAX_GROUP_COMMIT_RECORDS || !jobs[before..].iter().all(Job::relaxed) {
            return count;
        }
    }
}

/// Writes a group in one transaction; each append's positions (empty for a write).
fn write_group(
    conn: &mut Connection,
    format: LogFormat,
    jobs: &mut [Job],
    next: &mut [Vec<u64>; 2],
) -> rusqlite::Result<Vec<Vec<Appended>>> {
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(jobs.len());
    {
        let mut sink = Sink::new(&tx, format)?;
        for job in jobs.iter_mut() {
            let (topic, records) = match job {
                Job::Append { topic, records, .. } => (*topic, records),
                Job::Write { write, .. } => {
                    // Taken out once: a failed group is answered, never retried.
                    let write = std::mem::replace(write, Box::new(|_| Ok(())));
                    write(&tx)?;
                    out.push(Vec::new());
                    continue;
                }
            };
            let t = topic.id() as usize;
            let mut positions = Vec::with_capacity(records.len());
            for r in records.iter() {
                let offset = next[t][r.partition as usize];
                sink.put(topic, offset, r)?;
                next[t][r.partition as usize] = offset + 1;
                positions.push(Appended {
                    partition: r.partition,
                    offset,
                });
            }
            out.push(positions);
        }
        sink.finish()?;
    }
    tx.commit()?;
    Ok(out)
}

/// Where a group's records go, by the log's format.
enum Sink<'t> {
    /// A row per record. Records of a batch mostly carry the same headers (schema and
    /// fingerprint): encoded once per run of equal lists.
    Rows {
        insert: rusqlite::CachedStatement<'t>,
        headers: Option<(Vec<Header>, Vec<u8>)>,
    },
    /// A row per run of a partition's records ([`Batch`]), written when the next record does
    /// not fit it or at the end.
    Batches {
        insert: rusqlite::CachedStatement<'t>,
        open: HashMap<(u8, u32), Batch>,
    },
}

impl<'t> Sink<'t> {
    fn new(tx: &'t rusqlite::Transaction<'_>, format: LogFormat) -> rusqlite::Result<Self> {
        Ok(match format {
            LogFormat::Rows => Sink::Rows {
                insert: tx.prepare_cached(
                    "INSERT INTO records (topic, partition, offset, key, ts, headers, value) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?,
                headers: None,
            },
            LogFormat::Batches => Sink::Batches {
                insert: tx.prepare_cached(
                    "INSERT INTO batches (topic, partition, end_offset, count, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?,
                open: HashMap::new(),
            },
        })
    }

    /// Writes (or adds to its partition's row) the record at `offset`.
    fn put(&mut self, topic: Topic, offset: u64, r: &Record) -> rusqlite::Result<()> {
        match self {
            Sink::Rows { insert, headers } => {
                let encoded = match headers {
                    Some((last, encoded)) if *last == r.headers => encoded,
                    slot => {
                        &slot
                            .insert((r.headers.clone(), encode_headers(&r.headers)))
                            .1
                    }
                };
                insert.execute(params![
                    topic.id(),
                    r.partition,
                    offset as i64,
                    r.key,
                    r.timestamp_ms,
                    encoded,
                    r.value
                ])?;
            }
            Sink::Batches { insert, open } => {
                let key = (topic.id(), r.partition);
                // A row is written once the next record of its partition does not fit it, or at
                // the end of the group.
                if open.get(&key).is_some_and(|b| !b.fits(r))
                    && let Some(batch) = open.remove(&key)
                {
                    insert_batch(insert, key, &batch)?;
                }
                let batch = open.entry(key).or_insert_with(|| Batch::new(offset));
                // The `batches` trigger refuses a row that does not follow its partition's last.
                debug_assert_eq!(batch.end_offset(), offset, "a partition's offsets in order");
                batch.push(r);
            }
        }
        Ok(())
    }

    /// Writes the rows still open.
    fn finish(self) -> rusqlite::Result<()> {
        if let Sink::Batches { mut insert, open } = self {
            for (key, batch) in open {
                insert_batch(&mut insert, key, &batch)?;
            }
        }
        Ok(())
    }
}

fn insert_batch(
    insert: &mut rusqlite::CachedStatement<'_>,
    (topic, partition): (u8, u32),
    batch: &Batch,
) -> rusqlite::Result<()> {
    insert.execute(params![
        topic,
        partition,
        batch.end_offset() as i64,
        batch.count as i64,
        batch.stored()
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;

    use herald_ports::log::{EventLog, Record, Topic};
    use tokio::sync::oneshot;

    use super::{Job, waits_for_siblings};
    use crate::log::{APPEND_QUEUE_DEPTH, COMMIT_SIBLINGS};
    use crate::{Access, EmbeddedLog, LogOptions};

    /// A hang guard, not a performance assertion.
    const HANG_GUARD: Duration = Duration::from_secs(60);

    /// Set by a test: the next commit delay, instead of sleeping, says it has begun (the first
    /// channel) and waits to be let go (the second), so the test acts inside the delay however
    /// loaded the machine is. Only the test that sets it runs a log with a delay.
    pub(super) static DELAY_GATE: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>> =
        Mutex::new(None);

    fn record(key: &str) -> Record {
        Record {
            partition: 0,
            key: key.into(),
            value: key.as_bytes().to_vec(),
            headers: vec![("herald-schema".into(), b"test".to_vec())],
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn append(relaxed: bool) -> Job {
        Job::Append {
            topic: Topic::UserEvents,
            records: vec![record("k")],
            relaxed,
            reply: oneshot::channel().0,
        }
    }

    /// Callers waiting on a group count; relaxed appends, which nobody waits on, do not.
    #[test]
    fn a_group_waits_for_siblings_only_with_enough_callers_waiting() {
        let write = || Job::Write {
            write: Box::new(|_| Ok(())),
            reply: oneshot::channel().0,
        };
        let waiting = |n: usize| -> Vec<Job> { (0..n).map(|_| append(false)).collect() };
        assert!(!waits_for_siblings(&waiting(COMMIT_SIBLINGS - 1)));
        assert!(waits_for_siblings(&waiting(COMMIT_SIBLINGS)));
        // However many relaxed appends join them.
        let mut group = waiting(COMMIT_SIBLINGS - 1);
        group.extend((0..10).map(|_| append(true)));
        assert!(!waits_for_siblings(&group));
        // Another write is a caller waiting too.
        group.push(write());
        assert!(waits_for_siblings(&group));
    }

    /// A delay over the bound is refused when the log opens, with what the bound is.
    #[tokio::test]
    async fn a_commit_delay_over_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = EmbeddedLog::open(
            &dir.path().join("log.db"),
            Access::ReadWrite,
            LogOptions {
                commit_delay: Some(crate::MAX_COMMIT_DELAY + Duration::from_micros(1)),
                ..LogOptions::default()
            },
        )
        .await
        .err()
        .expect("a commit delay over the bound was taken");
        assert!(
            err.to_string().contains("over the most a log takes"),
            "{err}"
        );
    }

    /// Two callers queued together make a group that waits the commit delay, so an append made
    /// during the delay shares their commit: one stored row holds all three records. The delay
    /// is the test's gate (`DELAY_GATE`), so the third append comes inside it on any machine;
    /// a group that did not wait would never open the gate, and the test fails at its guard.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_during_the_commit_delay_shares_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(
            &dir.path().join("log.db"),
            Access::ReadWrite,
            LogOptions {
                commit_delay: Some(crate::MAX_COMMIT_DELAY),
                ..LogOptions::default()
            },
        )
        .await
        .unwrap();
        let (entered, in_delay) = mpsc::channel();
        let (proceed, proceeding) = mpsc::channel();
        *DELAY_GATE.lock().unwrap() = Some((entered, proceeding));
        // Hold the writer in a write of its own, so that the next two appends queue together.
        let (held, holding) = oneshot::channel();
        let (release, released) = mpsc::channel::<()>();
        let blocker = tokio::spawn({
            let log = log.clone();
            async move {
                log.write(move |_| {
                    let _ = held.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
            }
        });
        holding.await.unwrap();
        let first = tokio::spawn({
            let log = log.clone();
            async move { log.append(Topic::UserEvents, vec![record("a")]).await }
        });
        let second = tokio::spawn({
            let log = log.clone();
            async move { log.append(Topic::UserEvents, vec![record("b")]).await }
        });
        let sender = log.inner.jobs.lock().unwrap().clone().unwrap();
        let queued_behind = |n: usize| {
            let sender = sender.clone();
            tokio::time::timeout(HANG_GUARD, async move {
                while sender.capacity() > APPEND_QUEUE_DEPTH - n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        queued_behind(2)
            .await
            .expect("the two appends were not queued");
        release.send(()).unwrap();
        tokio::task::spawn_blocking(move || in_delay.recv_timeout(HANG_GUARD))
            .await
            .unwrap()
            .expect("the group of two did not wait the commit delay");
        let third = tokio::spawn({
            let log = log.clone();
            async move { log.append(Topic::UserEvents, vec![record("c")]).await }
        });
        queued_behind(1)
            .await
            .expect("the third append was not queued");
        drop(sender);
        proceed.send(()).unwrap();
        let third = tokio::time::timeout(HANG_GUARD, third)
            .await
            .expect("the third append hung")
            .unwrap()
            .unwrap();
        for task in [first, second] {
            tokio::time::timeout(HANG_GUARD, task)
                .await
                .expect("an append hung")
                .unwrap()
                .unwrap();
        }
        blocker.await.unwrap().unwrap();
        assert_eq!(third[0].offset, 2);
        let rows: Vec<(i64, i64)> = rusqlite::Connection::open(dir.path().join("log.db"))
            .unwrap()
            .prepare("SELECT end_offset, count FROM batches WHERE topic = 1 AND partition = 0")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(3, 3)], "the three appends were not one commit");
        let read = log.read(Topic::UserEvents, 0, 0, 10).await.unwrap();
        let keys: Vec<&str> = read.iter().map(|r| r.record.key.as_str()).collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[2], "c");
    }
}
