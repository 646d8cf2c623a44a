//! [`TimerQueries`]: scheduled requests that are due and rows past their expiry.

use async_trait::async_trait;
use herald_ports::projection::{Lease, ProjectionError, TimerQueries};
use rusqlite::params;

use super::EmbeddedProjection;

fn lease_of(c: &rusqlite::Connection, name: &str) -> rusqlite::Result<Option<Lease>> {
    use rusqlite::OptionalExtension;
    c.query_row(
        "SELECT holder, expires_at FROM leases WHERE name = ?1",
        [name],
        |r| {
            Ok(Lease {
                holder: r.get(0)?,
                expires_at_ms: r.get(1)?,
            })
        },
    )
    .optional()
}

#[async_trait]
impl TimerQueries for EmbeddedProjection {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, ProjectionError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let until = now_ms.saturating_add(ttl_ms);
        self.write(move |tx| {
            // SQLite's write lock makes the check and the write one step.
            tx.tx.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
                params![name, holder, until, now_ms],
            )?;
            Ok(lease_of(tx.tx, &name)?.expect("written or kept above"))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), ProjectionError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |tx| {
            tx.tx.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, ProjectionError> {
        let name = name.to_owned();
        self.read(move |c| lease_of(c, &name)).await
    }

    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT notification_id, request FROM scheduled WHERE due_at <= ?1 ORDER BY due_at, notification_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, notification_id FROM inbox WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
                 AND expired = 0 AND archived = 0 AND superseded = 0 ORDER BY expires_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }
}
