//! The floor of a segmented log, for `log-append`: what the embedded log's appends would cost
//! if its file were an append-only segment instead of a SQLite table (and the same writer over
//! fjall, an LSM tree, for comparison).
//!
//! Everything an append must do to be durable and checkable is here, nothing else: one writer
//! thread takes every append waiting (up to the embedded log's group bound), gives each record
//! its offset, frames it (length, CRC-32 of the frame, partition, offset, timestamp, key,
//! headers, value), writes the group with one `write` and makes it durable with one
//! `fdatasync`, then answers the callers. No reads, no index, no recovery, no segment roll:
//! a real log adds those, mostly off the append path (an index entry every few KiB, a scan of
//! the last segment's tail at open). So the gap between this and `EmbeddedLog::append` in the
//! same run bounds what replacing the SQLite log could buy on the 202 path.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use herald_embedded::MAX_GROUP_COMMIT_RECORDS;
use herald_ports::log::Record;
use tokio::sync::{mpsc, oneshot};

/// Appends waiting for the writer thread (the embedded log's queue depth).
const QUEUE_DEPTH: usize = herald_embedded::APPEND_QUEUE_DEPTH;

type Job = (Vec<Record>, oneshot::Sender<std::io::Result<()>>);

/// A floor's storage: commits one group of records durably, each with its offset.
type Commit = Box<dyn FnMut(&[(u64, &Record)]) -> std::io::Result<()> + Send>;

/// A floor (a segment file, or fjall) and its writer thread; the thread finishes what it holds
/// and stops when this is dropped.
pub struct Floor {
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Floor {
    /// Creates the segment file `path` (it must not exist) and starts the writer thread.
    pub fn segment(path: &Path, partitions: u32) -> std::io::Result<Self> {
        let mut file = File::options().create_new(true).append(true).open(path)?;
        let mut buf = Vec::with_capacity(1 << 20);
        Self::start(
            partitions,
            Box::new(move |group| {
                buf.clear();
                for (offset, r) in group {
                    frame(&mut buf, r, *offset);
                }
                file.write_all(&buf)?;
                file.sync_data()
            }),
        )
    }

    /// The same writer over fjall (an LSM tree: its journal takes the group, `fdatasync`ed
    /// per group), one key per record: partition and offset, big-endian.
    pub fn fjall(dir: &Path, partitions: u32) -> std::io::Result<Self> {
        let keyspace = fjall::Config::new(dir)
            .open()
            .map_err(std::io::Error::other)?;
        let records = keyspace
            .open_partition("records", fjall::PartitionCreateOptions::default())
            .map_err(std::io::Error::other)?;
        let mut buf = Vec::with_capacity(1024);
        Self::start(
            partitions,
            Box::new(move |group| {
                let mut batch = keyspace
                    .batch()
                    .durability(Some(fjall::PersistMode::SyncData));
                for (offset, r) in group {
                    let mut key = [0u8; 12];
                    key[..4].copy_from_slice(&r.partition.to_be_bytes());
                    key[4..].copy_from_slice(&offset.to_be_bytes());
                    buf.clear();
                    frame(&mut buf, r, *offset);
                    batch.insert(&records, key.to_vec(), buf.clone());
                }
                batch.commit().map_err(std::io::Error::other)
            }),
        )
    }

    fn start(partitions: u32, commit: Commit) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("floor-writer".into())
            .spawn(move || writer(rx, partitions, commit))?;
        Ok(Floor {
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }

    /// Appends `records`; returns once they are durable.
    pub async fn append(&self, records: Vec<Record>) -> std::io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .as_ref()
            .expect("open until dropped")
            .send((records, reply))
            .await
            .map_err(|_| std::io::Error::other("floor writer stopped"))?;
        rx.await
            .map_err(|_| std::io::Error::other("floor writer stopped"))?
    }
}

fn writer(mut rx: mpsc::Receiver<Job>, partitions: u32, mut commit: Commit) {
    let mut next = vec![0u64; partitions as usize];
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.0.len();
        let mut group = vec![first];
        while count < MAX_GROUP_COMMIT_RECORDS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.0.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let mut numbered = Vec::with_capacity(count);
        for (records, _) in &group {
            for r in records {
                let p = r.partition as usize % next.len();
                numbered.push((next[p], r));
                next[p] += 1;
            }
        }
        let written = commit(&numbered);
        drop(numbered);
        for (_, reply) in group {
            let _ = reply.send(match &written {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

/// Appends one record's frame: length and CRC-32 of what follows them, then the record.
fn frame(buf: &mut Vec<u8>, r: &Record, offset: u64) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&r.partition.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&r.timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(r.key.as_bytes());
    buf.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
    for (name, value) in &r.headers {
        buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value);
    }
    buf.extend_from_slice(&(r.value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&r.value);
    let body = start + 8;
    let len = (buf.len() - body) as u32;
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..body].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every append lands in the file as a frame whose length and CRC check, in offset order
    /// per partition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_framed_in_offset_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        append_200(Floor::segment(&path, 2).unwrap()).await;
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        let mut next = [0u64; 2];
        let mut n = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            let body = &bytes[at + 8..at + 8 + len];
            assert_eq!(crc32fast::hash(body), crc, "frame {n}");
            let p = u32::from_le_bytes(body[0..4].try_into().unwrap()) as usize;
            let offset = u64::from_le_bytes(body[4..12].try_into().unwrap());
            assert_eq!(offset, next[p], "partition {p}");
            next[p] += 1;
            at += 8 + len;
            n += 1;
        }
        assert_eq!(n, 200);
        assert_eq!(next, [100, 100]);
    }

    /// Four callers append 50 records each across two partitions; the floor is dropped (its
    /// writer finishes) after the last append returned.
    async fn append_200(floor: Floor) {
        let floor = std::sync::Arc::new(floor);
        let mut tasks = Vec::new();
        for t in 0..4u32 {
            let floor = floor.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50u32 {
                    let r = Record {
                        partition: (t + i) % 2,
                        key: format!("k{t}"),
                        timestamp_ms: 1,
                        headers: vec![("h".into(), vec![1, 2])],
                        value: format!("{t}/{i}").into_bytes(),
                    };
                    floor.append(vec![r]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(std::sync::Arc::into_inner(floor));
    }

    /// The fjall floor keeps every record under its partition and offset.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fjall_keeps_each_record_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        append_200(Floor::fjall(dir.path(), 2).unwrap()).await;
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let records = keyspace
            .open_partition("records", fjall::PartitionCreateOptions::default())
            .unwrap();
        let keys: Vec<(u32, u64)> = records
            .iter()
            .map(|kv| {
                let (k, _) = kv.unwrap();
                (
                    u32::from_be_bytes(k[..4].try_into().unwrap()),
                    u64::from_be_bytes(k[4..].try_into().unwrap()),
                )
            })
            .collect();
        let expected: Vec<(u32, u64)> =
            (0..2).flat_map(|p| (0..100).map(move |o| (p, o))).collect();
        assert_eq!(keys, expected);
    }
}
