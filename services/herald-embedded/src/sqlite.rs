//! SQLite connections: durable pragmas and a small bounded pool of reader connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

/// Most idle reader connections kept per database.
pub const READ_POOL_SIZE: usize = 8;
/// How long a connection waits for another's write lock before failing.
const BUSY_TIMEOUT_MS: u64 = 10_000;

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
