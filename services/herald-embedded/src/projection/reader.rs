//! [`InboxReader`]: what the gateway reads, inboxes, unread counts and what a device has not
//! acknowledged.

use async_trait::async_trait;
use herald_core::model::Preferences;
use herald_core::projection::InboxRow;
use herald_ports::projection::{
    InboxFilter, InboxQuery, InboxReader, MAX_PAGE, PageBound, ProjectionError,
};
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedProjection, ROW_COLUMNS, to_row};

#[async_trait]
impl InboxReader for EmbeddedProjection {
    async fn inbox(&self, user_id: &str, q: &InboxQuery) -> Result<Vec<InboxRow>, ProjectionError> {
        let (user, q) = (user_id.to_owned(), q.clone());
        self.read(move |c| {
            let filter = match q.filter {
                InboxFilter::Inbox => "archived = 0",
                InboxFilter::Unread => "archived = 0 AND read = 0",
                InboxFilter::Archived => "archived = 1",
            };
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND seq < ?2 AND {filter} \
                 AND expired = 0 AND superseded = 0 \
                 AND (deliver_at IS NULL OR deliver_at <= ?3) AND (expires_at IS NULL OR expires_at > ?3) \
                 ORDER BY seq DESC LIMIT ?4"
            ))?;
            let before = q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let limit = q.limit.min(MAX_PAGE + 1) as i64;
            let rows = stmt.query_map(params![user, before, q.now_ms, limit], to_row)?;
            rows.collect()
        })
        .await
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError> {
        let user = user_id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT n FROM unread WHERE user_id = ?1")?
                .query_row([user], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64)
        })
        .await
    }

    async fn pending(
        &self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        now_ms: i64,
        bound: PageBound,
    ) -> Result<Vec<InboxRow>, ProjectionError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox i WHERE i.user_id = ?1 \
                 AND i.seq > max(?2, coalesce((SELECT seq FROM cursors WHERE user_id = ?1 AND device_id = ?3), -1)) \
                 AND i.archived = 0 AND i.expired = 0 AND i.superseded = 0 AND i.live = 1 \
                 AND (i.deliver_at IS NULL OR i.deliver_at <= ?4) AND (i.expires_at IS NULL OR i.expires_at > ?4) \
                 AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.user_id = ?1 AND a.device_id = ?3 AND a.seq = i.seq) \
                 ORDER BY i.seq LIMIT ?5"
            ))?;
            let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
            // Stepped row by row: the page stops where the bound says, not at the limit.
            let limit = bound.row_limit() as i64;
            bound.take(stmt.query_map(params![user, after, device, now_ms, limit], to_row)?)
        })
        .await
    }

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT seq FROM cursors WHERE user_id = ?1 AND device_id = ?2")?
                    .query_row([user, device], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|s| s as u64),
            )
        })
        .await
    }

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let (user, id) = (user_id.to_owned(), notification_id.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND notification_id = ?2"
            ))?
            .query_row([user, id], to_row)
            .optional()
        })
        .await
    }

    async fn preferences(&self, user_id: &str) -> Result<Preferences, ProjectionError> {
        let user = user_id.to_owned();
        let doc = self
            .read(move |c| {
                c.prepare_cached("SELECT doc FROM preferences WHERE user_id = ?1")?
                    .query_row([user], |r| r.get::<_, String>(0))
                    .optional()
            })
            .await?;
        doc.map_or(Ok(Preferences::default()), |d| super::parse_preferences(&d))
    }
}
