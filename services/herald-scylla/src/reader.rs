//! [`InboxReader`]: what the gateway reads. Pages walk a user's buckets newest (inbox) or oldest
//! (pending) first, filtering rows as they stream in.

use std::collections::BTreeSet;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use herald_core::projection::InboxRow;
use herald_ports::projection::{
    InboxFilter, InboxQuery, InboxReader, MAX_PAGE, PageBound, ProjectionError,
};

use crate::ScyllaProjection;
use crate::layout::{RowTuple, bucket, to_row};

impl ScyllaProjection {
    /// The row at `seq` of a user's inbox.
    pub(crate) async fn row_at(
        &self,
        user_id: &str,
        seq: u64,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let r: Option<RowTuple> = self
            .one(&self.st.row_at, (user_id, bucket(seq), seq as i64))
            .await?;
        Ok(r.map(to_row))
    }
}

#[async_trait]
impl InboxReader for ScyllaProjection {
    async fn inbox(&self, user_id: &str, q: &InboxQuery) -> Result<Vec<InboxRow>, ProjectionError> {
        let before = q.before.unwrap_or(u64::MAX).min(i64::MAX as u64);
        let limit = q.limit.min(MAX_PAGE + 1);
        if before == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let buckets: Vec<(i64,)> = self
            .all(&self.st.buckets_down, (user_id, bucket(before - 1)))
            .await?;
        let mut out = Vec::new();
        for (b,) in buckets {
            let mut rows = self
                .stream::<RowTuple>(&self.st.rows_down, (user_id, b, before as i64))
                .await?;
            while let Some(t) = rows.try_next().await? {
                let r = to_row(t);
                let wanted = match q.filter {
                    InboxFilter::Inbox => !r.archived,
                    InboxFilter::Unread => !r.archived && !r.read,
                    InboxFilter::Archived => r.archived,
                };
                if wanted && r.shown(q.now_ms) {
                    out.push(r);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError> {
        let n: Option<(i64,)> = self.one(&self.st.count_of, (user_id,)).await?;
        Ok(n.map_or(0, |(n,)| n.max(0) as u64))
    }

    async fn pending(
        &self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        now_ms: i64,
        bound: PageBound,
    ) -> Result<Vec<InboxRow>, ProjectionError> {
        let cursor = self.device_cursor(user_id, device_id).await?;
        let lower: i64 = after
            .max(cursor)
            .map_or(-1, |s| s.min(i64::MAX as u64 - 1) as i64);
        let mut bytes = 0usize;
        let first = bucket((lower + 1) as u64);
        let buckets: Vec<(i64,)> = self.all(&self.st.buckets_up, (user_id, first)).await?;
        let mut out = Vec::new();
        for (b,) in buckets {
            let acked: BTreeSet<i64> = self
                .all::<(i64,)>(&self.st.acks_in, (user_id, device_id, b))
                .await?
                .into_iter()
                .map(|(s,)| s)
                .collect();
            let mut rows = self
                .stream::<RowTuple>(&self.st.rows_up, (user_id, b, lower))
                .await?;
            while let Some(t) = rows.try_next().await? {
                let r = to_row(t);
                if r.listed() && r.live && r.due(now_ms) && !acked.contains(&(r.seq as i64)) {
                    bytes = bytes.saturating_add(herald_core::delivery::Weigh::bytes(&r));
                    out.push(r);
                    if bound.full(out.len(), bytes) {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError> {
        let c: Option<(i64,)> = self.one(&self.st.cursor_of, (user_id, device_id)).await?;
        Ok(c.map(|(s,)| s as u64))
    }

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let seq: Option<(i64,)> = self
            .one(&self.st.id_seq, (user_id, notification_id))
            .await?;
        match seq {
            Some((seq,)) => self.row_at(user_id, seq as u64).await,
            None => Ok(None),
        }
    }

    async fn preferences(
        &self,
        user_id: &str,
    ) -> Result<herald_core::model::Preferences, ProjectionError> {
        let doc: Option<(Option<String>,)> = self.one(&self.st.preferences_of, (user_id,)).await?;
        match doc.and_then(|(d,)| d) {
            Some(d) => crate::layout::parse_preferences(&d),
            None => Ok(Default::default()),
        }
    }
}
