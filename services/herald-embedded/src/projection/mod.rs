//! The embedded projection store: SQLite, the core fold applied inside one transaction per
//! batch together with the consumer offsets.
//!
//! One role a file, as the port splits them: `state` (the fold's view of a write transaction and
//! the stage offsets), `writer` (`AppliedOffsets` and `ProjectionWriter`), `reader`
//! (`InboxReader`), `directory` (`DirectoryReader`), `timers` (`TimerQueries`) and `snapshot`
//! (`Snapshots`). This file opens the store and runs closures on its connections. The schema is
//! `schemas/sql/sqlite/001_projection.sql`.

mod directory;
mod reader;
mod snapshot;
mod state;
mod timers;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald_core::model::Priority;
use herald_core::projection::InboxRow;
use herald_ports::projection::ProjectionError;
use rusqlite::{Connection, Row};

use state::{Committed, TxState};

use crate::sqlite::{self, Access, Pool};

const SCHEMA: &str = include_str!("../../../../schemas/sql/sqlite/001_projection.sql");
/// The `meta` key a file carries while `herald replay` builds it in bulk mode
/// ([`EmbeddedProjection::create_for_rebuild`]) and until [`EmbeddedProjection::finish_rebuild`].
const REBUILDING_KEY: &str = "rebuilding";

const ROW_COLUMNS: &str = "user_id, seq, notification_id, event_type, source, payload, priority, \
     collapse_key, created_at, deliver_at, expires_at, read, archived, expired, superseded, live";

fn storage(e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Storage(e.to_string())
}

fn to_row(r: &Row<'_>) -> rusqlite::Result<InboxRow> {
    // Read in place: a page of replay maps hundreds of rows. A value that is not text is an
    // error, as reading it as a `String` was.
    let priority = r.get_ref(6)?;
    let priority = priority.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, priority.data_type(), Box::new(e))
    })?;
    Ok(InboxRow {
        user_id: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        notification_id: r.get(2)?,
        event_type: r.get(3)?,
        source: r.get(4)?,
        payload: r.get(5)?,
        priority: priority.parse().unwrap_or(Priority::Normal),
        collapse_key: r.get(7)?,
        created_at: r.get(8)?,
        deliver_at: r.get(9)?,
        expires_at: r.get(10)?,
        read: r.get(11)?,
        archived: r.get(12)?,
        expired: r.get(13)?,
        superseded: r.get(14)?,
        live: r.get(15)?,
    })
}

/// Columns added after a table was first made, as (table, column, definition): a file from
/// before gets each at start-up.
/// - `inbox.live`: made before preferences; every old row was live.
/// - `expansions.users`: made before expansions kept small recipient lists inline; old rows
///   keep theirs in `expansion_users`.
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    ("inbox", "live", "INTEGER NOT NULL DEFAULT 1"),
    ("expansions", "users", "TEXT"),
];

/// Adds the [`ADDED_COLUMNS`] an existing table lacks (a new file gets them from the schema).
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        if has_table(conn, table)? && !has_column(conn, table, column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// Whether the file has `table`.
fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
}

/// Whether `table` has `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )
}

/// A stored preferences document.
fn parse_preferences(doc: &str) -> Result<herald_core::model::Preferences, ProjectionError> {
    serde_json::from_str(doc)
        .map_err(|e| ProjectionError::Corrupt(format!("a stored preferences document: {e}")))
}

/// The writer connection and [`Committed`], behind one lock.
struct Writer {
    conn: Connection,
    committed: Committed,
}

struct Inner {
    access: Access,
    path: PathBuf,
    /// The one writer connection (SQLite has one writer at a time anyway), with what it knows
    /// the file holds as of its last commit.
    writer: Option<Mutex<Writer>>,
    pool: Arc<Pool>,
    store_id: String,
    /// Whether `expansions.users` exists: a file from before it, opened read-only (by `herald
    /// audit`, say, before a newer server has opened it), keeps every recipient in
    /// `expansion_users`.
    inline_expansions: bool,
    /// Built in bulk mode and not finished yet: reads are refused.
    rebuilding: AtomicBool,
    /// Also asks the writer to start an oversized WAL over ([`sqlite::WalPressure`]).
    checkpointer: Option<sqlite::Checkpointer>,
}

/// Sets the connection's journal mode and checks that SQLite took it (it answers with the mode
/// it is in, without an error, when it cannot switch).
fn set_journal_mode(conn: &Connection, mode: &str) -> Result<(), ProjectionError> {
    let now: String = conn
        .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0))
        .map_err(storage)?;
    if now.eq_ignore_ascii_case(mode) {
        Ok(())
    } else {
        Err(storage(format!(
            "the journal mode stayed {now}, not {mode}"
        )))
    }
}

/// The embedded projection store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedProjection {
    inner: Arc<Inner>,
    /// Where write transactions run: this runtime's blocking threads (a pool at a lower
    /// priority, [`EmbeddedProjection::with_writes_on`]), or the caller's.
    writes: Option<tokio::runtime::Handle>,
}

impl EmbeddedProjection {
    /// Runs this handle's write transactions (every fold, the fanout's bookkeeping, the timer
    /// stage's) on `runtime`'s blocking threads instead of the caller's runtime: the server
    /// gives them a pool at a lower priority, so that a busy machine serves accepting first.
    pub fn with_writes_on(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.writes = Some(runtime);
        self
    }

    pub async fn open(path: &Path, access: Access) -> Result<Self, ProjectionError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, access, false))
            .await
            .map_err(storage)?
    }

    /// Creates a fresh file (it must not exist) for `herald replay` to build into, in bulk mode:
    /// the writer keeps its rollback journal in memory and does not fsync its commits, and
    /// there is no WAL (and no checkpointer), so each commit writes each page it changed once,
    /// in place. Nothing reads the store until [`EmbeddedProjection::finish_rebuild`] (a read
    /// would open a pool connection, which turns the file to WAL: reads are refused), which
    /// makes the file durable and an ordinary projection. Until then the file is marked
    /// unfinished, and [`EmbeddedProjection::open`] refuses it: a rebuild that crashed leaves a
    /// file to delete, never one a server would take for a projection.
    pub async fn create_for_rebuild(path: &Path) -> Result<Self, ProjectionError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, Access::ReadWrite, true))
            .await
            .map_err(storage)?
    }

    /// Ends the bulk mode of [`EmbeddedProjection::create_for_rebuild`]: fsyncs the file, turns
    /// it into an ordinary projection file (WAL, `synchronous=FULL`; the next open of it runs a
    /// checkpointer, this handle does not) and removes the unfinished mark in a durable commit.
    /// Reads are allowed from then on.
    pub async fn finish_rebuild(&self) -> Result<(), ProjectionError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let writer = inner.writer.as_ref().ok_or_else(|| {
                ProjectionError::Config("the projection is open read-only".into())
            })?;
            let writer = writer.lock().expect("writer lock");
            let conn = &writer.conn;
            // The pages committed without fsync, first; then the mark's removal, durably.
            std::fs::File::open(&inner.path)
                .and_then(|f| f.sync_all())
                .map_err(storage)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(storage)?;
            set_journal_mode(conn, "wal")?;
            conn.execute("DELETE FROM meta WHERE key = ?1", [REBUILDING_KEY])
                .map_err(storage)?;
            inner.rebuilding.store(false, Ordering::Release);
            Ok(())
        })
        .await
        .map_err(storage)?
    }

    fn open_blocking(path: PathBuf, access: Access, bulk: bool) -> Result<Self, ProjectionError> {
        if access == Access::ReadOnly && !path.exists() {
            return Err(ProjectionError::Config(format!(
                "no projection at {}: check --data-dir",
                path.display()
            )));
        }
        if bulk && path.exists() {
            return Err(ProjectionError::Config(format!(
                "{} already exists: a rebuild builds into a fresh file",
                path.display()
            )));
        }
        let bad = |e: rusqlite::Error| {
            ProjectionError::Corrupt(format!(
                "{} is not a Herald projection (or is corrupt): {e}",
                path.display()
            ))
        };
        // Looked at read-only, before Herald's pragmas change anything in the file. Only a file
        // without a `meta` table yet (empty) passes unasked; an error (busy, corrupt) refuses.
        let unfinished = path.exists() && {
            let c = sqlite::open(&path, Access::ReadOnly).map_err(bad)?;
            has_table(&c, "meta").map_err(bad)?
                && c.query_row(
                    "SELECT count(*) > 0 FROM meta WHERE key = ?1",
                    [REBUILDING_KEY],
                    |r| r.get::<_, bool>(0),
                )
                .map_err(bad)?
        };
        if unfinished {
            return Err(ProjectionError::Config(format!(
                "{} is a projection that `herald replay` was building and did not finish: \
                 delete it (and run the replay again if you need it)",
                path.display()
            )));
        }
        let conn = sqlite::open(&path, access).map_err(bad)?;
        if access == Access::ReadWrite {
            // A bulk file gets its schema and its unfinished mark in one durable commit (WAL,
            // fsync), before the first commit that is not durable.
            if bulk {
                conn.execute_batch("BEGIN IMMEDIATE").map_err(bad)?;
            }
            add_columns(&conn).map_err(bad)?;
            conn.execute_batch(SCHEMA).map_err(bad)?;
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('store_id', ?1)",
                [uuid::Uuid::new_v4().simple().to_string()],
            )
            .map_err(bad)?;
            if bulk {
                conn.execute("INSERT INTO meta VALUES (?1, '1')", [REBUILDING_KEY])
                    .map_err(bad)?;
                conn.execute_batch("COMMIT").map_err(bad)?;
                set_journal_mode(&conn, "memory")?;
                conn.pragma_update(None, "synchronous", "OFF")
                    .map_err(bad)?;
            }
        } else {
            conn.query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get::<_, String>(0)
            })
            .map_err(bad)?;
        }
        // A projection made before stores had ids (opened read-only) has none to give.
        let store_id = conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get::<_, String>(0)
            })
            .unwrap_or_else(|_| "unnamed".into());
        let inline_expansions = has_column(&conn, "expansions", "users").map_err(bad)?;
        let writer = (access == Access::ReadWrite).then(|| {
            Mutex::new(Writer {
                conn,
                committed: Committed::default(),
            })
        });
        // In bulk mode there is no WAL to checkpoint (and a checkpointer's connection would
        // turn the file back to WAL).
        let checkpointer = match bulk {
            true => None,
            false => sqlite::Checkpointer::for_access(&path, access).map_err(storage)?,
        };
        Ok(EmbeddedProjection {
            writes: None,
            inner: Arc::new(Inner {
                pool: Arc::new(Pool::new(path.clone(), access)),
                path,
                access,
                writer,
                store_id,
                inline_expansions,
                rebuilding: AtomicBool::new(bulk),
                checkpointer,
            }),
        })
    }

    /// Runs `f` in one write transaction on a blocking thread.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut TxState<'_, '_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        if self.inner.access == Access::ReadOnly {
            return Err(ProjectionError::Config(
                "the projection is open read-only".into(),
            ));
        }
        let inner = self.inner.clone();
        let transaction = move || {
            let writer = inner.writer.as_ref().expect("read-write has a writer");
            let mut writer = writer.lock().expect("writer lock");
            let Writer { conn, committed } = &mut *writer;
            let tx = conn.transaction()?;
            let mut state = TxState::new(&tx, committed);
            let out = f(&mut state)?;
            let learned = state.finish()?;
            tx.commit()?;
            learned.committed(committed);
            if let Some(c) = &inner.checkpointer
                && let Err(e) = c.pressure().relieve(conn)
            {
                tracing::warn!(error = %e, "projection WAL restart failed");
            }
            Ok::<T, rusqlite::Error>(out)
        };
        match &self.writes {
            Some(runtime) => runtime.spawn_blocking(transaction).await,
            None => tokio::task::spawn_blocking(transaction).await,
        }
        .map_err(storage)?
        .map_err(storage)
    }

    /// Runs `f` with a reader connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        if self.inner.rebuilding.load(Ordering::Acquire) {
            return Err(ProjectionError::Config(
                "the projection is being rebuilt: it is read once the rebuild is finished".into(),
            ));
        }
        self.inner
            .pool
            .run(f)
            .await
            .map_err(storage)?
            .map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use herald_core::projection::{ProjectionState, Write};

    use super::*;

    /// How many users the writer's [`Committed`] holds: (known, unread counts).
    fn committed(store: &EmbeddedProjection) -> (usize, usize) {
        let writer = store.inner.writer.as_ref().unwrap().lock().unwrap();
        writer.committed.sizes()
    }

    #[tokio::test]
    async fn a_failed_write_teaches_the_writer_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProjection::open(&dir.path().join("p.db"), Access::ReadWrite)
            .await
            .unwrap();
        let alice = |tx: &mut TxState<'_, '_>| {
            tx.write(Write::SetUnreadCount {
                user_id: "alice".into(),
                count: 3,
            })?;
            tx.write(Write::KnowUser {
                user_id: "alice".into(),
            })
        };
        let failed = store
            .write(move |tx| {
                alice(tx)?;
                Err::<(), _>(rusqlite::Error::InvalidQuery)
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(committed(&store), (0, 0), "rolled back: nothing learned");
        let count = store.write(|tx| tx.unread_count("alice")).await.unwrap();
        assert_eq!(count, 0, "the file has nothing of it either");
        store.write(alice).await.unwrap();
        assert_eq!(committed(&store), (1, 1), "committed: learned");
        let count = store.write(|tx| tx.unread_count("alice")).await.unwrap();
        assert_eq!(count, 3);
    }
}
