//! The projection port on PostgreSQL.
//!
//! The core fold runs inside one PostgreSQL transaction per batch, together with the consumer
//! offsets, exactly as on SQLite: every write is an idempotent upsert, counts are absolute.
//! The schema is `schemas/sql/postgres/001_projection.sql`, applied at start-up. Connections use
//! the synchronous `postgres` client on tokio's blocking pool, from a bounded pool (`pool`).
//!
//! One role a file, as the port splits them: `state` (the fold's view of a write transaction and
//! the stage offsets), `writer` (`AppliedOffsets` and `ProjectionWriter`), `reader`
//! (`InboxReader`), `directory` (`DirectoryReader`), `timers` (`TimerQueries`) and `snapshot`
//! (`Snapshots`). This file connects, applies the schema and runs closures on connections.
#![forbid(unsafe_code)]

mod directory;
mod pool;
mod reader;
mod snapshot;
mod state;
mod timers;
mod writer;

#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use herald_core::model::Priority;
use herald_core::projection::InboxRow;
use herald_ports::projection::ProjectionError;
use postgres::{Client, Row};

pub use pool::POOL_SIZE;
use pool::Pool;
use state::TxState;

const MIGRATION: &str = include_str!("../../../schemas/sql/postgres/001_projection.sql");

/// Advisory lock key serializing schema set-up among processes that start together.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64; // "herald"

const ROW_COLUMNS: &str = "user_id, seq, notification_id, event_type, source, payload, priority, \
     collapse_key, created_at, deliver_at, expires_at, read, archived, expired, superseded, live";

fn storage(e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Storage(e.to_string())
}

fn to_row(r: &Row) -> InboxRow {
    let priority: String = r.get(6);
    InboxRow {
        user_id: r.get(0),
        seq: r.get::<_, i64>(1) as u64,
        notification_id: r.get(2),
        event_type: r.get(3),
        source: r.get(4),
        payload: r.get(5),
        priority: priority.parse().unwrap_or(Priority::Normal),
        collapse_key: r.get(7),
        created_at: r.get(8),
        deliver_at: r.get(9),
        expires_at: r.get(10),
        read: r.get(11),
        archived: r.get(12),
        expired: r.get(13),
        superseded: r.get(14),
        live: r.get(15),
    }
}

/// A stored preferences document.
fn parse_preferences(doc: &str) -> Result<herald_core::model::Preferences, ProjectionError> {
    serde_json::from_str(doc)
        .map_err(|e| ProjectionError::Corrupt(format!("a stored preferences document: {e}")))
}

/// The PostgreSQL projection store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresProjection {
    pool: Arc<Pool>,
    store_id: Arc<str>,
}

impl PostgresProjection {
    /// Connects (`postgres://user@host:port/db`) and applies the schema.
    pub async fn connect(url: &str) -> Result<Self, ProjectionError> {
        let pool = Arc::new(Pool::new(url));
        // Several replicas may start at once: CREATE ... IF NOT EXISTS is not safe concurrently,
        // so they take turns under an advisory lock. The first names the store.
        let outcome = tokio::task::spawn_blocking({
            let pool = pool.clone();
            move || {
                pool.with(|c| {
                    let mut tx = c.transaction()?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
                    // `IF NOT EXISTS` on a second start is not news: no NOTICE lines for it.
                    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
                    tx.batch_execute(MIGRATION)?;
                    tx.execute(
                        "INSERT INTO herald_meta (key, value) VALUES ('store_id', $1) \
                         ON CONFLICT (key) DO NOTHING",
                        &[&uuid::Uuid::new_v4().simple().to_string()],
                    )?;
                    let id: String = tx
                        .query_one("SELECT value FROM herald_meta WHERE key = 'store_id'", &[])?
                        .get(0);
                    tx.commit()?;
                    Ok(id)
                })
            }
        })
        .await
        .map_err(storage)?;
        let store_id =
            outcome.map_err(|e| ProjectionError::Config(format!("PostgreSQL at {url}: {e}")))?;
        Ok(PostgresProjection {
            pool,
            store_id: store_id.into(),
        })
    }

    /// Runs `f` with a pooled connection on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(storage)?
    }

    /// Runs `f` with a pooled connection that prepares its statements, on a blocking thread.
    async fn run_prepared<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut pool::Prepared<'_>) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.prepared(f))
            .await
            .map_err(storage)?
    }

    /// Runs `f` in one transaction on a blocking thread.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut TxState<'_, '_>) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            pool.with_statements(|c, statements| {
                let mut tx = c.transaction()?;
                let mut state = TxState::new(&mut tx, statements);
                let out = f(&mut state)?;
                state.flush()?;
                tx.commit()?;
                Ok(out)
            })
        })
        .await
        .map_err(storage)?
    }
}
