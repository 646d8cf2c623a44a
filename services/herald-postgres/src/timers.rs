//! [`TimerQueries`]: scheduled requests that are due and rows past their expiry.

use async_trait::async_trait;
use herald_ports::projection::{ProjectionError, TimerQueries};

use crate::PostgresProjection;

#[async_trait]
impl TimerQueries for PostgresProjection {
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
