//! SQLite connections: durable pragmas and a small bounded pool of reader connections.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

/// Most idle reader connections kept per database.
pub const READ_POOL_SIZE: usize = 8;
/// How long a connection waits for another's write lock before failing.
const BUSY_TIMEOUT_MS: u64 = 10_000;
/// How often a store's checkpointer copies the WAL into the database file ([`Checkpointer`]).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// A WAL file longer than this is truncated to it when SQLite starts it over; a shorter one is
/// kept and written again from its start. Keeping it is what keeps commits fast: frames written
/// over blocks the file already has need no block allocation, so the commit's fdatasync flushes
/// them and nothing else. An appending write allocates, and the fdatasync after it is an ext4
/// journal commit, which also writes out the newly allocated dirty blocks of every other file
/// (the other store's WAL, a checkpoint's pages). With the WAL truncated to 64 MiB at each
/// restart, every cycle appended its way up again: the log's commits took 20–55 ms in a 5k/s run
/// and the truncation itself 100–144 ms, on the writer, and the latency run's p99 at 5k/s was
/// 156–233 ms against 23–119 ms with the file kept (docs/benchmarks.md). Twice
/// [`WAL_RESTART_BYTES`]: only a WAL that readers kept from starting over is cut back.
pub const WAL_SIZE_LIMIT: i64 = 2 * WAL_RESTART_BYTES;
/// A WAL that a passive checkpoint leaves longer than this is started over by the store's writer
/// ([`WalPressure`]). Each restart holds the writer 1–50 ms (measured at 5k/s: the frames since
/// the checkpointer's last round, the database file's fsync); at 64 MiB that came about once a
/// second at 5k/s, at this bound about every four. Under a sustained load the WAL file settles
/// a little above it (it is kept, [`WAL_SIZE_LIMIT`]).
pub const WAL_RESTART_BYTES: i64 = 256 << 20;
/// How long the writer's restart checkpoint waits for readers still on the old WAL before it
/// gives up until the next [`CHECKPOINT_INTERVAL`] (the writer waits as long).
const RESTART_WAIT: Duration = Duration::from_millis(200);
/// A restart checkpoint that takes this long is logged.
const SLOW_RESTART: Duration = Duration::from_millis(100);
/// After a restart that readers held off, the checkpointer lets 1, 2, 4, … of its rounds pass
/// before it asks again, at most this many (32 s): a reader that keeps an old snapshot (a long
/// `herald replay` comparison) would otherwise cost the writer `RESTART_WAIT` every round.
const MAX_RESTART_BACKOFF_ROUNDS: u32 = 64;

/// How a store file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create if missing; read and write.
    ReadWrite,
    /// The file must exist; nothing is written (another process may be writing it).
    ReadOnly,
}

/// Opens a connection with Herald's pragmas. Durability: WAL with `synchronous=FULL`, so a
/// commit returns only after the WAL is fsync'd.
pub fn open(path: &Path, access: Access) -> rusqlite::Result<Connection> {
    let flags = match access {
        Access::ReadWrite => {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        }
        Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    if access == Access::ReadWrite {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // No checkpoint inside a commit: the store's `Checkpointer` thread does them. SQLite's
        // automatic one runs in the committing connection once the WAL passes 1,000 pages, and
        // every commit queued behind it waits for the copy and the database file's fsync (8.7%
        // of the server's CPU in a 5k/s profile, all of it on the commit path).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    }
    conn.pragma_update(None, "cache_size", -16_000)?; // 16 MiB
    // The query planner stability guarantee: a cached statement keeps its plan whatever is
    // bound. Without it SQLite (built with STAT4) re-prepares a statement when a bound value
    // its plan looked at changes (every `LIMIT ?`, every range bound): 4% of the server's CPU
    // in a 5k/s delivery profile went to parsing the same SQL again.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A bounded pool of connections for reads (and small writes in read-write mode): at most
/// [`READ_POOL_SIZE`] run at once, each on a blocking thread; more wait their turn without a
/// thread (a burst of connecting devices must not open a connection and a thread each).
pub struct Pool {
    path: PathBuf,
    access: Access,
    idle: Mutex<Vec<Connection>>,
    turns: Arc<Semaphore>,
}

impl Pool {
    pub fn new(path: PathBuf, access: Access) -> Self {
        Pool {
            path,
            access,
            idle: Mutex::new(Vec::new()),
            turns: Arc::new(Semaphore::new(READ_POOL_SIZE)),
        }
    }

    /// Runs `f` with a pooled connection on a blocking thread, once one of the pool's turns is
    /// free.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<rusqlite::Result<T>, tokio::task::JoinError> {
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let out = pool.with(f);
            drop(turn);
            out
        })
        .await
    }

    /// Runs `f` with a pooled connection (call from a blocking thread).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let conn = self.idle.lock().expect("pool lock").pop();
        let mut conn = match conn {
            Some(c) => c,
            None => open(&self.path, self.access)?,
        };
        let out = f(&mut conn);
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < READ_POOL_SIZE {
            idle.push(conn);
        }
        out
    }
}

/// A thread that checkpoints one database's WAL every [`CHECKPOINT_INTERVAL`] on its own
/// connection (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for readers or the writer, so
/// commits go on while it copies). Stops when dropped.
pub struct Checkpointer {
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pressure: Arc<WalPressure>,
}

/// Set by a store's checkpointer when the WAL is longer than [`WAL_RESTART_BYTES`] after a passive
/// checkpoint; the store's writer then starts the WAL over ([`WalPressure::relieve`]).
///
/// A passive checkpoint copies the frames that were there when it began; SQLite starts the WAL
/// over only at a write that finds every frame copied. A writer that never pauses for a whole
/// checkpoint (a sustained ingest) therefore grew the projection's WAL without bound: 1.9 GB
/// after the ingest benchmark's 200k notifications. The writer is the one place that can take
/// the write lock between two of its own transactions without waiting for itself.
#[derive(Debug, Default)]
pub struct WalPressure {
    wanted: AtomicBool,
    /// Checkpointer rounds still to let pass before asking again.
    skip: AtomicU32,
    /// Rounds to let pass after the next restart that readers hold off (0: none yet).
    backoff: AtomicU32,
}

impl WalPressure {
    /// After a commit: if the checkpointer asked for it, checkpoints the whole WAL and waits
    /// (at most [`RESTART_WAIT`]) for readers to leave it, so the next commit starts the WAL
    /// over (writing from the file's start; a file past [`WAL_SIZE_LIMIT`] is truncated). Readers that stay longer only delay it to the
    /// checkpointer's next request. Returns whether it started the WAL over.
    pub fn relieve(&self, conn: &Connection) -> rusqlite::Result<bool> {
        if !self.wanted.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        conn.busy_timeout(RESTART_WAIT)?;
        let busy = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
        let done = busy? == 0;
        if done {
            self.backoff.store(0, Ordering::Release);
        } else {
            let next =
                (self.backoff.load(Ordering::Acquire) * 2).clamp(1, MAX_RESTART_BACKOFF_ROUNDS);
            self.backoff.store(next, Ordering::Release);
            self.skip.store(next, Ordering::Release);
        }
        let took = started.elapsed();
        if took >= SLOW_RESTART {
            tracing::warn!(
                ?took,
                done,
                "a slow WAL restart checkpoint (its writer waited as long)"
            );
        }
        Ok(done)
    }

    /// Asks the writer for a restart, unless a held-off one makes this round wait.
    fn request(&self) {
        let skip = self.skip.load(Ordering::Acquire);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Release);
        } else {
            self.wanted.store(true, Ordering::Release);
        }
    }
}

/// One round of the checkpointer: a passive checkpoint, and a request to `pressure` when the WAL
/// is still longer than `limit` bytes ([`WAL_RESTART_BYTES`]) after it, copied or not (only a
/// commit after a complete checkpoint starts it over).
pub fn checkpoint(conn: &Connection, pressure: &WalPressure, limit: i64) -> rusqlite::Result<()> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    // A frame is a page and its 24-byte header.
    if frames.saturating_mul(page + 24) > limit {
        pressure.request();
    }
    Ok(())
}

impl Checkpointer {
    /// A checkpointer for a store opened with `access` (none for a read-only one: another
    /// process writes and checkpoints the file).
    pub fn for_access(path: &Path, access: Access) -> rusqlite::Result<Option<Checkpointer>> {
        match access {
            Access::ReadWrite => Self::start(path).map(Some),
            Access::ReadOnly => Ok(None),
        }
    }

    fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = open(path, Access::ReadWrite)?;
        let pressure = Arc::new(WalPressure::default());
        let requests = pressure.clone();
        let (stop, stopped) = std_mpsc::channel::<()>();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name("herald-checkpoint".into())
            .spawn(move || {
                // Woken by the interval, or by the handle's drop (a closed channel).
                while let Err(std_mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if let Err(e) = checkpoint(&conn, &requests, WAL_RESTART_BYTES) {
                        tracing::warn!(file = %name, error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
            pressure,
        })
    }

    /// What the store's writer checks after each commit ([`WalPressure::relieve`]).
    pub fn pressure(&self) -> &Arc<WalPressure> {
        &self.pressure
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_len(path: &Path) -> u64 {
        std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// Frames in the WAL (written since it last started over), as a passive checkpoint counts
    /// them.
    fn wal_frames(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    /// At most the frames one `rewrite` commit writes: its rows' pages, and some for the tree.
    fn one_commit(conn: &Connection) -> i64 {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        (ROWS << 16) as i64 / page + 64
    }

    /// A table of `rows` rows of 64 KiB, all rewritten by each commit (new pages in the WAL, a
    /// database file that stays small).
    fn rewrite(conn: &mut Connection, round: u64, rows: u64) {
        let tx = conn.transaction().unwrap();
        for k in 0..rows {
            let blob = vec![(round.wrapping_mul(31) ^ k) as u8; 64 << 10];
            tx.execute(
                "INSERT OR REPLACE INTO t (k, v) VALUES (?1, ?2)",
                rusqlite::params![k as i64, blob],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn store() -> (tempfile::TempDir, PathBuf, Connection, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let writer = open(&path, Access::ReadWrite).unwrap();
        writer
            .execute(
                "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)",
                [],
            )
            .unwrap();
        let checkpointer = open(&path, Access::ReadWrite).unwrap();
        (dir, path, writer, checkpointer)
    }

    /// Each commit rewrites every row: 4 MiB of pages.
    const ROWS: u64 = 64;
    /// The restart bound the tests' checkpointer rounds use ([`WAL_RESTART_BYTES`] in a store).
    const LIMIT: i64 = 64 << 20;
    /// Commits that write more than half of `LIMIT`.
    const HALF: u64 = (LIMIT as u64 / 2 / (ROWS << 16)) + 1;

    /// A WAL over the limit that the checkpointer's round could not copy whole: a reader holds
    /// the snapshot of its first half while the writer writes the second, as when commits land
    /// during a checkpoint. Returns the reader, its read transaction still open.
    fn pinned_wal(
        path: &Path,
        writer: &mut Connection,
        checkpointer: &Connection,
        pressure: &WalPressure,
    ) -> Connection {
        for round in 0..HALF {
            rewrite(writer, round, ROWS);
        }
        let reader = open(path, Access::ReadOnly).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        for round in HALF..2 * HALF {
            rewrite(writer, round, ROWS);
        }
        checkpoint(checkpointer, pressure, LIMIT).unwrap();
        assert!(
            pressure.wanted.load(Ordering::Acquire),
            "over the limit: a restart is asked for"
        );
        reader
    }

    #[test]
    fn a_wal_the_passive_checkpoint_cannot_finish_is_started_over_by_the_writer() {
        let (_dir, path, mut writer, checkpointer) = store();
        let pressure = WalPressure::default();
        drop(pinned_wal(&path, &mut writer, &checkpointer, &pressure));
        // The reader is gone, but the WAL is not fully copied: SQLite appends to it.
        rewrite(&mut writer, 2 * HALF, ROWS);
        let grown = wal_len(&path);
        assert!(grown > LIMIT as u64, "the WAL grew past the limit: {grown}");
        assert!(
            pressure.relieve(&writer).unwrap(),
            "the restart checkpoint completed"
        );
        assert!(
            !pressure.wanted.load(Ordering::Acquire),
            "the request is taken"
        );
        rewrite(&mut writer, 2 * HALF + 1, ROWS);
        let frames = wal_frames(&checkpointer);
        assert!(
            frames <= one_commit(&writer),
            "the next commit started the WAL over: {frames} frames in it"
        );
        assert_eq!(
            wal_len(&path),
            grown,
            "the file under WAL_SIZE_LIMIT is kept and written again from its start"
        );
        // Nothing was lost on the way.
        let n: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, ROWS as i64);
    }

    #[test]
    fn a_reader_that_stays_only_delays_the_restart() {
        let (_dir, path, mut writer, checkpointer) = store();
        let pressure = WalPressure::default();
        let reader = pinned_wal(&path, &mut writer, &checkpointer, &pressure);
        // The restart waits for the reader at most RESTART_WAIT, then gives up without an error,
        // and the writer goes on.
        assert!(
            !pressure.relieve(&writer).unwrap(),
            "a reader on the old WAL holds it"
        );
        rewrite(&mut writer, 2 * HALF, ROWS);
        drop(reader);
        // The checkpointer lets one round pass, then asks again; then it goes through.
        checkpoint(&checkpointer, &pressure, LIMIT).unwrap();
        assert!(
            !pressure.wanted.load(Ordering::Acquire),
            "one round backs off"
        );
        checkpoint(&checkpointer, &pressure, LIMIT).unwrap();
        assert!(pressure.wanted.load(Ordering::Acquire), "asked again");
        assert!(pressure.relieve(&writer).unwrap(), "no reader holds it now");
        rewrite(&mut writer, 2 * HALF + 1, ROWS);
        let frames = wal_frames(&checkpointer);
        assert!(frames <= one_commit(&writer), "{frames} frames");
    }
}
