//! The embedded event log: SQLite, group commit on a dedicated writer thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use herald_core::cursor::Epoch;
use herald_ports::log::*;
use herald_ports::telemetry;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::sqlite::{self, Access, Pool};

/// Append requests that may wait for the writer thread; further callers wait for room.
pub const APPEND_QUEUE_DEPTH: usize = 1024;
/// Most records made durable by one group commit (one transaction, one fsync).
pub const MAX_GROUP_COMMIT_RECORDS: usize = 8192;
/// Partitions of the user-events topic of a new log, unless configured.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Partitions of the requests topic of a new log, unless configured. One partition makes the
/// fanout expand requests in accept order, so every user's inbox follows the order in which
/// notifications were accepted (202); the fanout is one sequential stage either way.
pub const DEFAULT_REQUEST_PARTITIONS: u32 = 1;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

const SCHEMA: &str = include_str!("../../../schemas/sql/sqlite/001_log.sql");

/// Partition counts for a *new* log. An existing log keeps the counts it was created with;
/// asking for different ones is an error (re-partitioning means a new log and a new epoch).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    pub requests_partitions: Option<u32>,
    pub user_partitions: Option<u32>,
}

struct Job {
    topic: Topic,
    records: Vec<Record>,
    reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

struct Shared {
    path: PathBuf,
    access: Access,
    epoch: Epoch,
    partitions: [u32; 2],
    /// Next offset per partition, published after each commit (read-write mode only).
    ends: [Vec<AtomicU64>; 2],
    /// Bumped after every commit that touched the topic; consumers wait on it.
    appended: [watch::Sender<u64>; 2],
    pool: Pool,
}

struct Inner {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds, then exit.
        self.jobs.lock().expect("jobs lock").take();
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

/// The embedded log. Cheap to clone; the writer thread stops when the last clone is dropped,
/// after committing every append already queued.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn decode_headers(mut b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, LogError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], LogError> {
        if b.len() < n {
            return Err(LogError::Storage("corrupt record headers".into()));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> Result<usize, LogError> {
        let raw = take(b, 4)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let n = len(&mut b)?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let kl = len(&mut b)?;
        let k = String::from_utf8(take(&mut b, kl)?.to_vec())
            .map_err(|_| LogError::Storage("corrupt header name".into()))?;
        let vl = len(&mut b)?;
        out.push((k, take(&mut b, vl)?.to_vec()));
    }
    Ok(out)
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn max_offset(conn: &Connection, topic: Topic, partition: u32) -> rusqlite::Result<u64> {
    let max: Option<i64> = conn.query_row(
        "SELECT max(offset) FROM records WHERE topic = ?1 AND partition = ?2",
        params![topic.id(), partition],
        |r| r.get(0),
    )?;
    Ok(max.map_or(0, |m| m as u64 + 1))
}

impl EmbeddedLog {
    /// Opens (and in read-write mode creates) the log at `path`.
    pub async fn open(path: &Path, access: Access, options: LogOptions) -> Result<Self, LogError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, access, options))
            .await
            .map_err(storage)?
    }

    fn open_blocking(path: PathBuf, access: Access, options: LogOptions) -> Result<Self, LogError> {
        if access == Access::ReadOnly && !path.exists() {
            return Err(LogError::Config(format!(
                "no log at {}: check --data-dir, or start `herald dev` once to create it",
                path.display()
            )));
        }
        let conn = sqlite::open(&path, access)
            .map_err(|e| {
                LogError::Storage(format!(
                    "cannot open log {}: {e} (is it a Herald log, or corrupt? move it aside to start afresh)",
                    path.display()
                ))
            })?;
        if access == Access::ReadWrite {
            conn.execute_batch(SCHEMA).map_err(|e| {
                LogError::Storage(format!(
                    "{} is not a Herald log (or is corrupt): {e}",
                    path.display()
                ))
            })?;
        }
        let bad = |e: rusqlite::Error| {
            LogError::Storage(format!(
                "{} is not a Herald log (or is corrupt): {e}",
                path.display()
            ))
        };
        let mut partitions = [0u32; 2];
        let instance = match meta(&conn, "instance").map_err(bad)? {
            Some(id) => {
                for (i, (key, asked)) in [
                    ("partitions.requests", options.requests_partitions),
                    ("partitions.user-events", options.user_partitions),
                ]
                .into_iter()
                .enumerate()
                {
                    let stored: u32 = meta(&conn, key)
                        .map_err(bad)?
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| LogError::Storage(format!("log meta {key} missing")))?;
                    if let Some(asked) = asked
                        && asked != stored
                    {
                        return Err(LogError::Config(format!(
                            "the log at {} was created with {stored} {} partitions, not {asked}; \
                                 re-partitioning needs a new log (and gives a new cursor epoch)",
                            path.display(),
                            Topic::ALL[i].name()
                        )));
                    }
                    partitions[i] = stored;
                }
                id
            }
            None if access == Access::ReadOnly => {
                return Err(LogError::Config(format!(
                    "{} holds no Herald log",
                    path.display()
                )));
            }
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                partitions = [
                    options
                        .requests_partitions
                        .unwrap_or(DEFAULT_REQUEST_PARTITIONS),
                    options.user_partitions.unwrap_or(DEFAULT_PARTITIONS),
                ];
                for p in partitions {
                    if p == 0 || p > MAX_PARTITIONS {
                        return Err(LogError::Config(format!(
                            "partitions must be 1..={MAX_PARTITIONS}, got {p}"
                        )));
                    }
                }
                conn.execute_batch(&format!(
                    "INSERT INTO meta VALUES ('instance', '{id}'), ('format', '1'), \
                     ('partitions.requests', '{}'), ('partitions.user-events', '{}');",
                    partitions[0], partitions[1]
                ))
                .map_err(storage)?;
                id
            }
        };
        let epoch = Epoch::derive(&instance, partitions[1]);
        let mut ends: [Vec<AtomicU64>; 2] = [Vec::new(), Vec::new()];
        for topic in Topic::ALL {
            for p in 0..partitions[topic.id() as usize] {
                ends[topic.id() as usize]
                    .push(AtomicU64::new(max_offset(&conn, topic, p).map_err(bad)?));
            }
        }
        let shared = Arc::new(Shared {
            pool: Pool::new(path.clone(), access),
            path,
            access,
            epoch,
            partitions,
            ends,
            appended: [watch::Sender::new(0), watch::Sender::new(0)],
        });
        let (jobs, writer) = if access == Access::ReadWrite {
            let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name("herald-log-writer".into())
                .spawn(move || writer_loop(conn, rx, s))
                .map_err(storage)?;
            (Some(tx), Some(handle))
        } else {
            (None, None)
        };
        tracing::info!(path = %shared.path.display(), %epoch, ?partitions, ?access, "embedded log open");
        Ok(EmbeddedLog {
            inner: Arc::new(Inner {
                shared,
                jobs: Mutex::new(jobs),
                writer: Mutex::new(writer),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    fn check_partition(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        check_partition(topic, partition, self.partitions(topic))
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut next: [Vec<u64>; 2] = [0, 1].map(|t| {
        shared.ends[t]
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    });
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.records.len();
        let mut jobs = vec![first];
        while count < MAX_GROUP_COMMIT_RECORDS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut tentative = next.clone();
        match write_group(&mut conn, &jobs, &mut tentative) {
            Ok(positions) => {
                next = tentative;
                let mut touched = [false; 2];
                for (ends, published) in next.iter().zip(&shared.ends) {
                    for (end, slot) in ends.iter().zip(published) {
                        slot.store(*end, Ordering::Release);
                    }
                }
                telemetry::log_group_commit(count);
                for (job, pos) in jobs.into_iter().zip(positions) {
                    touched[job.topic.id() as usize] = true;
                    let _ = job.reply.send(Ok(pos));
                }
                for (t, was) in touched.iter().enumerate() {
                    if *was {
                        shared.appended[t].send_modify(|g| *g += 1);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log group commit failed");
                for job in jobs {
                    let _ = job.reply.send(Err(storage(&e)));
                }
            }
        }
    }
}

fn write_group(
    conn: &mut Connection,
    jobs: &[Job],
    next: &mut [Vec<u64>; 2],
) -> rusqlite::Result<Vec<Vec<Appended>>> {
    let tx = conn.transaction()?;
    let mut out = Vec::with_capacity(jobs.len());
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO records (topic, partition, offset, key, ts, headers, value) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for job in jobs {
            let t = job.topic.id() as usize;
            let mut positions = Vec::with_capacity(job.records.len());
            for r in &job.records {
                let offset = next[t][r.partition as usize];
                stmt.execute(params![
                    t as i64,
                    r.partition,
                    offset as i64,
                    r.key,
                    r.timestamp_ms,
                    encode_headers(&r.headers),
                    r.value
                ])?;
                next[t][r.partition as usize] = offset + 1;
                positions.push(Appended {
                    partition: r.partition,
                    offset,
                });
            }
            out.push(positions);
        }
    }
    tx.commit()?;
    Ok(out)
}

fn read_blocking(
    pool: &Pool,
    topic: Topic,
    partition: u32,
    from: u64,
    max: usize,
) -> Result<Vec<StoredRecord>, LogError> {
    let rows = pool
        .with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT offset, key, ts, headers, value FROM records \
                 WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![topic.id(), partition, from as i64, max as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(storage)?;
    rows.into_iter()
        .map(|(offset, key, ts, headers, value)| {
            Ok(StoredRecord {
                topic,
                partition,
                offset: offset as u64,
                record: Record {
                    partition,
                    key,
                    value,
                    headers: decode_headers(&headers)?,
                    timestamp_ms: ts,
                },
            })
        })
        .collect()
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn epoch(&self) -> Epoch {
        self.shared().epoch
    }

    fn partitions(&self, topic: Topic) -> u32 {
        self.shared().partitions[topic.id() as usize]
    }

    #[tracing::instrument(level = "debug", skip_all, fields(topic = topic.name(), records = records.len()))]
    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<Appended>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        check_append(topic, self.partitions(topic), &records)?;
        let sender = self
            .inner
            .jobs
            .lock()
            .expect("jobs lock")
            .clone()
            .ok_or_else(|| LogError::Config("the log is open read-only".into()))?;
        let started = Instant::now();
        let n = records.len();
        let (reply, rx) = oneshot::channel();
        sender
            .send(Job {
                topic,
                records,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        let out = rx.await.map_err(|_| LogError::Closed)??;
        telemetry::log_appended(topic, n, started.elapsed());
        Ok(out)
    }

    async fn read(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.check_partition(topic, partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        // Skip the round trip when a live writer says there is nothing new.
        if self.shared().access == Access::ReadWrite
            && self.shared().ends[topic.id() as usize][partition as usize].load(Ordering::Acquire)
                <= from
        {
            return Ok(Vec::new());
        }
        let shared = self.shared().clone();
        tokio::task::spawn_blocking(move || {
            read_blocking(&shared.pool, topic, partition, from, max)
        })
        .await
        .map_err(storage)?
    }

    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        self.check_partition(topic, partition)?;
        let shared = self.shared().clone();
        if shared.access == Access::ReadWrite {
            return Ok(shared.ends[topic.id() as usize][partition as usize].load(Ordering::Acquire));
        }
        tokio::task::spawn_blocking(move || {
            shared
                .pool
                .with(|c| max_offset(c, topic, partition))
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    async fn dead_letter(&self, record: &StoredRecord, reason: &str) -> Result<(), LogError> {
        let shared = self.shared().clone();
        let (topic, partition, offset) = (record.topic.name(), record.partition, record.offset);
        let (reason, value) = (reason.to_owned(), record.record.value.clone());
        tokio::task::spawn_blocking(move || {
            shared
                .pool
                .with(|c| {
                    c.execute(
                        "INSERT INTO dead_letters (topic, partition, offset, reason, value, at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        rusqlite::params![
                            topic,
                            partition,
                            offset as i64,
                            reason,
                            value,
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_millis() as i64)
                                .unwrap_or(0)
                        ],
                    )
                })
                .map(|_| ())
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, LogError> {
        let shared = self.shared().clone();
        tokio::task::spawn_blocking(move || {
            shared
                .pool
                .with(|c| {
                    let mut st = c.prepare(
                        "SELECT topic, partition, offset, reason, value FROM dead_letters \
                         ORDER BY id LIMIT ?1",
                    )?;
                    let rows = st.query_map([max as i64], |r| {
                        Ok(DeadLetter {
                            topic: r.get(0)?,
                            partition: r.get(1)?,
                            offset: r.get::<_, i64>(2)? as u64,
                            reason: r.get(3)?,
                            value: r.get(4)?,
                        })
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()
                })
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let shared = self.shared().clone();
        Ok(Box::new(EmbeddedConsumer {
            appended: shared.appended[topic.id() as usize].subscribe(),
            log: self.clone(),
            topic,
            group: group.to_owned(),
            positions: BTreeMap::new(),
            assigned: false,
            start: 0,
        }))
    }
}

/// The single member of its group: every partition is assigned to it.
struct EmbeddedConsumer {
    log: EmbeddedLog,
    topic: Topic,
    group: String,
    positions: BTreeMap<u32, u64>,
    assigned: bool,
    appended: watch::Receiver<u64>,
    /// Partition to read first next time, so no partition starves.
    start: u32,
}

impl EmbeddedConsumer {
    async fn committed(&self) -> Result<BTreeMap<u32, u64>, LogError> {
        let shared = self.log.shared().clone();
        let (group, topic) = (self.group.clone(), self.topic);
        tokio::task::spawn_blocking(move || {
            shared
                .pool
                .with(|c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT partition, next_offset FROM group_offsets WHERE grp = ?1 AND topic = ?2",
                    )?;
                    let rows = stmt.query_map(params![group, topic.id()], |r| {
                        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
                    })?;
                    rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()
                })
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn next(&mut self, max_records: usize) -> Result<ConsumerEvent, LogError> {
        if !self.assigned {
            let committed = self.committed().await?;
            let partitions = self.log.partitions(self.topic);
            self.positions = (0..partitions)
                .map(|p| (p, committed.get(&p).copied().unwrap_or(0)))
                .collect();
            self.assigned = true;
            return Ok(ConsumerEvent::Assigned((0..partitions).collect()));
        }
        let partitions = self.log.partitions(self.topic);
        loop {
            // Mark the current generation seen *before* reading, so an append that lands after
            // the read wakes the wait below.
            self.appended.borrow_and_update();
            let mut out = Vec::new();
            for i in 0..partitions {
                let p = (self.start + i) % partitions;
                let room = max_records.saturating_sub(out.len());
                if room == 0 {
                    break;
                }
                let from = self.positions[&p];
                out.extend(self.log.read(self.topic, p, from, room).await?);
            }
            if !out.is_empty() {
                for r in &out {
                    self.positions.insert(r.partition, r.offset + 1);
                }
                self.start = (self.start + 1) % partitions;
                return Ok(ConsumerEvent::Records(out));
            }
            self.appended
                .changed()
                .await
                .map_err(|_| LogError::Closed)?;
        }
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError> {
        self.log.check_partition(self.topic, partition)?;
        self.positions.insert(partition, offset);
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), LogError> {
        for (p, _) in offsets {
            self.log.check_partition(self.topic, *p)?;
        }
        let shared = self.log.shared().clone();
        let (group, topic, offsets) = (self.group.clone(), self.topic, offsets.to_vec());
        tokio::task::spawn_blocking(move || {
            shared
                .pool
                .with(|c| {
                    let tx = c.transaction()?;
                    {
                        let mut stmt = tx.prepare_cached(
                            "INSERT INTO group_offsets (grp, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4) \
                             ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                        )?;
                        for (p, o) in &offsets {
                            stmt.execute(params![group, topic.id(), p, *o as i64])?;
                        }
                    }
                    tx.commit()
                })
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }
}
