//! SQLite connections: durable pragmas and a small bounded pool of reader connections.

use std::path::{Path, PathBuf};
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
/// The WAL file is truncated to at most this many bytes when SQLite starts it over.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

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
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(file = %name, error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
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
