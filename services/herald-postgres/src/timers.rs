//! [`TimerQueries`]: scheduled requests that are due and rows past their expiry.

use async_trait::async_trait;
use herald_ports::projection::{Lease, ProjectionError, TimerQueries};

use crate::PostgresProjection;

fn lease_of(c: &mut postgres::Client, name: &str) -> Result<Option<Lease>, postgres::Error> {
    Ok(c.query_opt(
        "SELECT holder, expires_at FROM leases WHERE name = $1",
        &[&name],
    )?
    .map(|r| Lease {
        holder: r.get(0),
        expires_at_ms: r.get(1),
    }))
}

#[async_trait]
impl TimerQueries for PostgresProjection {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, ProjectionError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let until = now_ms.saturating_add(ttl_ms);
        self.run(move |c| {
            // The upsert locks the row: two replicas trying at once are serialized, and the
            // second sees the first's expiry.
            c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                 expires_at = EXCLUDED.expires_at \
                 WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= $4",
                &[&name, &holder, &until, &now_ms],
            )?;
            Ok(lease_of(c, &name)?.expect("written or kept above"))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), ProjectionError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.run(move |c| {
            c.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, ProjectionError> {
        let name = name.to_owned();
        self.run(move |c| lease_of(c, &name)).await
    }

    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        self.run(move |c| {
            Ok(c.query(
                "SELECT notification_id, request FROM scheduled WHERE due_at <= $1 ORDER BY due_at, notification_id LIMIT $2",
                &[&now_ms, &(limit as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
        .await
    }

    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.run(move |c| {
            Ok(c.query(
                "SELECT user_id, notification_id FROM inbox WHERE expires_at IS NOT NULL AND expires_at <= $1 \
                 AND NOT expired AND NOT archived AND NOT superseded ORDER BY expires_at LIMIT $2",
                &[&now_ms, &(limit as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
        .await
    }
}
