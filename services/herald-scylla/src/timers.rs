//! [`TimerQueries`]: due scheduled requests and expiring rows, from hour-bucketed time indexes.

use async_trait::async_trait;
use herald_ports::projection::{Lease, ProjectionError, TimerQueries};
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

impl ScyllaProjection {
    /// Runs a lightweight transaction (its outcome is read back by the caller: a retried one
    /// that applied reports "not applied", so only the stored lease is trusted).
    async fn lwt(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(), ProjectionError> {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| storage("lease")(&e))?;
        Ok(())
    }
}

#[async_trait]
impl TimerQueries for ScyllaProjection {
    /// Lightweight transactions (Paxos): `IF NOT EXISTS` for a new lease, `IF holder = ?` to
    /// renew, `IF expires_at <= ?` to take an expired one, so two replicas never both succeed.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, ProjectionError> {
        let until = now_ms.saturating_add(ttl_ms);
        match self.lease(name).await? {
            None => self.lwt(&self.st.lease_new, (name, holder, until)).await?,
            Some(l) if l.holder == holder => {
                self.lwt(&self.st.lease_renew, (until, name, holder))
                    .await?
            }
            Some(l) if l.expires_at_ms <= now_ms => {
                self.lwt(&self.st.lease_take, (holder, until, name, now_ms))
                    .await?
            }
            Some(l) => return Ok(l),
        }
        self.lease(name)
            .await?
            .ok_or_else(|| ProjectionError::Storage(format!("lease {name} vanished")))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), ProjectionError> {
        self.lwt(&self.st.lease_release, (name, holder)).await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, ProjectionError> {
        let row: Option<(String, i64)> = self.one(&self.st.lease_of, (name,)).await?;
        Ok(row.map(|(holder, expires_at_ms)| Lease {
            holder,
            expires_at_ms,
        }))
    }

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
