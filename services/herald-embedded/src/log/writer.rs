//! The writer thread: appends queue up as jobs, and the thread commits as many as are waiting
//! (up to [`MAX_GROUP_COMMIT_RECORDS`] records) in one transaction, so one fsync covers many
//! callers. An append resolves only after its commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use herald_ports::log::{Appended, LogError, Record, Topic};
use herald_ports::telemetry;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::headers::encode_headers;
use super::{EmbeddedLog, MAX_GROUP_COMMIT_RECORDS, Shared, storage};

/// One caller's append, waiting for the writer thread.
pub(super) struct Job {
    topic: Topic,
    records: Vec<Record>,
    reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

impl EmbeddedLog {
    /// Queues checked records for the writer thread and waits for their commit.
    pub(super) async fn submit(
        &self,
        topic: Topic,
        records: Vec<Record>,
    ) -> Result<Vec<Appended>, LogError> {
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
}

pub(super) fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
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
