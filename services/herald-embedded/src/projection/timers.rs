//! [`TimerQueries`]: scheduled requests that are due and rows past their expiry.

use async_trait::async_trait;
use herald_ports::projection::{ProjectionError, TimerQueries};
use rusqlite::params;

use super::EmbeddedProjection;

#[async_trait]
impl TimerQueries for EmbeddedProjection {
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
