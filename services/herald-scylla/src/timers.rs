//! [`TimerQueries`]: due scheduled requests and expiring rows, from hour-bucketed time indexes.

use async_trait::async_trait;
use herald_ports::projection::{ProjectionError, TimerQueries};
use scylla::deserialize::row::DeserializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::ScyllaProjection;
use crate::layout::{hour, hour_end_micros, storage};

impl ScyllaProjection {
    /// Entries of an hour-bucketed time index at or before `now_ms`, earliest first, pruning
    /// past hours that have emptied.
    async fn time_index<R>(
        &self,
        hours: &PreparedStatement,
        entries: &PreparedStatement,
        prune: &PreparedStatement,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let now_hour = hour(now_ms);
        let hours: Vec<(i64,)> = self.all(hours, (now_hour,)).await?;
        let mut out = Vec::new();
        for (h,) in hours {
            if out.len() >= limit {
                break;
            }
            let left = (limit - out.len()).min(i32::MAX as usize) as i32;
            let found: Vec<R> = self.all(entries, (h, now_ms, left)).await?;
            if found.is_empty() && h < now_hour {
                self.session
                    .execute_unpaged(prune, (hour_end_micros(h), h))
                    .await
                    .map_err(|e| storage("prune")(&e))?;
            }
            out.extend(found);
        }
        Ok(out)
    }
}

#[async_trait]
impl TimerQueries for ScyllaProjection {
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        self.time_index(
            &self.st.schedule_hours,
            &self.st.due_in,
            &self.st.del_schedule_hour,
            now_ms,
            limit,
        )
        .await
    }

    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.time_index(
            &self.st.expiry_hours,
            &self.st.expiring_in,
            &self.st.del_expiry_hour,
            now_ms,
            limit,
        )
        .await
    }
}
