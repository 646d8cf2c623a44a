//! Opening the log file: the schema (`schemas/sql/sqlite/001_log.sql`), the partition counts,
//! format and instance id kept in `meta` (written once, when the log is created), the cursor epoch
//! derived from them, and the writer thread of a read-write log.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use herald_core::cursor::Epoch;
use herald_ports::log::{LogError, Topic};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, watch};

use super::recent::Recent;
use super::{
    APPEND_QUEUE_DEPTH, COMMIT_DELAY, DEFAULT_PARTITIONS, DEFAULT_REQUEST_PARTITIONS, EmbeddedLog,
    Inner, LogFormat, LogOptions, MAX_COMMIT_DELAY, MAX_PARTITIONS, RELAXED_LINGER, Shared, reader,
    storage, writer,
};
use crate::sqlite::{self, Access, Pool};

const SCHEMA: &str = include_str!("../../../../schemas/sql/sqlite/001_log.sql");

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// What a build from before format 2 (before f5af648) reads as `records`: a view whose every read and write
/// fails, naming what to do (such a build ignores `meta.format`, and would otherwise find no
/// records, start every partition at offset 0 again and write rows nobody reads).
const RECORDS_GUARD: &str = "CREATE VIEW records (topic, partition, offset, key, ts, headers, value) AS \
     SELECT 0, 0, log_format_2_needs_a_newer_herald(), '', 0, x'', x''";

/// Makes a new log of [`LogFormat::NEW`] in a file that has the schema and no `meta` yet: its
/// `meta` and the `records` guard, in one transaction.
fn create(conn: &Connection, id: &str, partitions: [u32; 2]) -> Result<(), String> {
    let tables = "SELECT count(*) FROM sqlite_master WHERE name = 'records' AND type = 'table'";
    let stray: i64 = conn
        .query_row(tables, [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if stray > 0 {
        // A build from before format 2 made the schema and stopped before its `meta`.
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM (SELECT 1 FROM records LIMIT 1)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if rows > 0 {
            return Err("it holds records but no `meta`: not a log this build made".into());
        }
    }
    conn.execute_batch(&format!(
        "BEGIN; DROP TABLE IF EXISTS records; {RECORDS_GUARD}; \
         INSERT INTO meta VALUES ('instance', '{id}'), ('format', '{}'), \
         ('partitions.requests', '{}'), ('partitions.user-events', '{}'); COMMIT;",
        LogFormat::NEW.meta(),
        partitions[0],
        partitions[1]
    ))
    .map_err(|e| e.to_string())
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
        let commit_delay = options.commit_delay.unwrap_or(COMMIT_DELAY);
        if commit_delay > MAX_COMMIT_DELAY {
            return Err(LogError::Config(format!(
                "a log commit delay of {commit_delay:?} is over the most a log takes, {MAX_COMMIT_DELAY:?}"
            )));
        }
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
                create(&conn, &id, partitions).map_err(|e| {
                    LogError::Storage(format!("cannot create a log at {}: {e}", path.display()))
                })?;
                id
            }
        };
        let stored = meta(&conn, "format").map_err(bad)?;
        let format = LogFormat::from_meta(stored.as_deref()).map_err(|other| {
            LogError::Config(format!(
                "the log at {} has format {other}, which this build does not know (a newer \
                 build made it); run a build at least as new",
                path.display()
            ))
        })?;
        let epoch = Epoch::derive(&instance, partitions[1]);
        let mut ends: [Vec<AtomicU64>; 2] = [Vec::new(), Vec::new()];
        for topic in Topic::ALL {
            for p in 0..partitions[topic.id() as usize] {
                ends[topic.id() as usize].push(AtomicU64::new(
                    reader::max_offset(&conn, format, topic, p).map_err(bad)?,
                ));
            }
        }
        let recent = Recent::new([0, 1].map(|t| {
            ends[t]
                .iter()
                .map(|e| e.load(std::sync::atomic::Ordering::Relaxed))
                .collect()
        }));
        let shared = Arc::new(Shared {
            recent,
            pool: Arc::new(Pool::new(path.clone(), access)),
            path,
            access,
            format,
            epoch,
            partitions,
            ends,
            appended: [watch::Sender::new(0), watch::Sender::new(0)],
        });
        let checkpointer =
            sqlite::Checkpointer::for_access(&shared.path, access).map_err(storage)?;
        let (jobs, writer) = if access == Access::ReadWrite {
            let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
            let s = shared.clone();
            let pressure = checkpointer.as_ref().map(|c| c.pressure().clone());
            let waits = writer::Waits {
                linger: options.relaxed_linger.unwrap_or(RELAXED_LINGER),
                commit_delay,
            };
            let handle = std::thread::Builder::new()
                .name("herald-log-writer".into())
                .spawn(move || writer::writer_loop(conn, rx, s, pressure, waits))
                .map_err(storage)?;
            (Some(tx), Some(handle))
        } else {
            (None, None)
        };
        let writer_thread = writer.as_ref().map(|h| h.thread().clone());
        tracing::info!(path = %shared.path.display(), %epoch, ?partitions, ?format, ?access, "embedded log open");
        Ok(EmbeddedLog {
            inner: Arc::new(Inner {
                shared,
                jobs: Mutex::new(jobs),
                writer: Mutex::new(writer),
                writer_thread,
                _checkpointer: checkpointer,
            }),
        })
    }
}
