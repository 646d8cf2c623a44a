//! [`InboxReader`]: what the gateway reads, inboxes, unread counts and what a device has not
//! acknowledged.

use async_trait::async_trait;
use herald_core::projection::InboxRow;
use herald_ports::projection::{
    InboxFilter, InboxQuery, InboxReader, MAX_PAGE, PageBound, ProjectionError,
};

use crate::{PostgresProjection, ROW_COLUMNS, to_row};

#[async_trait]
impl InboxReader for PostgresProjection {
    async fn inbox(&self, user_id: &str, q: &InboxQuery) -> Result<Vec<InboxRow>, ProjectionError> {
        let (user, q) = (user_id.to_owned(), q.clone());
        self.run_prepared(move |c| {
            let filter = match q.filter {
                InboxFilter::Inbox => "NOT archived",
                InboxFilter::Unread => "NOT archived AND NOT read",
                InboxFilter::Archived => "archived",
            };
            let before = q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let limit = q.limit.min(MAX_PAGE + 1) as i64;
            Ok(c.query(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND seq < $2 AND {filter} \
                     AND NOT expired AND NOT superseded \
                     AND (deliver_at IS NULL OR deliver_at <= $3) AND (expires_at IS NULL OR expires_at > $3) \
                     ORDER BY seq DESC LIMIT $4"
                ),
                &[&user, &before, &q.now_ms, &limit],
            )?
            .iter()
            .map(to_row)
            .collect())
        })
        .await
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError> {
        let user = user_id.to_owned();
        self.run_prepared(move |c| {
            Ok(
                c.query_opt("SELECT n FROM unread WHERE user_id = $1", &[&user])?
                    .map_or(0, |r| r.get::<_, i64>(0) as u64),
            )
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
        self.run_prepared(move |c| {
            let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
            let limit = bound.row_limit() as i64;
            let max_bytes = bound.max_bytes.min(i64::MAX as usize) as i64;
            // The server cuts the page by each row's weight as `PageBound::take` counts it
            // (`Weigh::bytes`: the row's size, $7, and its strings' UTF-8 bytes): the payload by
            // its stored size where the database is UTF-8 (exact, and read without fetching or
            // decompressing a TOASTed payload), else in characters, as the other strings are
            // (never more than their UTF-8 bytes, the same for ASCII). So it sends every row
            // the bound takes, and beyond it only what characters undercount; the exact cut is
            // made here.
            let row_size = std::mem::size_of::<InboxRow>() as i64;
            let rows = c.query(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM (SELECT p.*, COALESCE(SUM($7::bigint + char_length(p.user_id) \
                     + char_length(p.notification_id) + char_length(p.event_type) + char_length(p.source) \
                     + CASE WHEN current_setting('server_encoding') IN ('UTF8', 'SQL_ASCII') \
                     THEN octet_length(p.payload) ELSE char_length(p.payload) END \
                     + COALESCE(char_length(p.collapse_key), 0)) \
                     OVER (ORDER BY p.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                     FROM (SELECT {ROW_COLUMNS} FROM inbox i WHERE i.user_id = $1 \
                     AND i.seq > GREATEST($2, COALESCE((SELECT seq FROM cursors WHERE user_id = $1 AND device_id = $3), -1)) \
                     AND NOT i.archived AND NOT i.expired AND NOT i.superseded AND i.live \
                     AND (i.deliver_at IS NULL OR i.deliver_at <= $4) AND (i.expires_at IS NULL OR i.expires_at > $4) \
                     AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.user_id = $1 AND a.device_id = $3 AND a.seq = i.seq) \
                     ORDER BY i.seq LIMIT $5) p) w WHERE w.before <= $6::bigint ORDER BY w.seq"
                ),
                &[&user, &after, &device, &now_ms, &limit, &max_bytes, &row_size],
            )?;
            Ok(bound
                .take(rows.iter().map(|r| Ok::<_, std::convert::Infallible>(to_row(r))))
                .unwrap_or_else(|never| match never {}))
        })
        .await
    }

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.run_prepared(move |c| {
            Ok(c.query_opt(
                "SELECT seq FROM cursors WHERE user_id = $1 AND device_id = $2",
                &[&user, &device],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
        })
        .await
    }

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let (user, id) = (user_id.to_owned(), notification_id.to_owned());
        self.run_prepared(move |c| {
            Ok(c.query_opt(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND notification_id = $2"
                ),
                &[&user, &id],
            )?
            .map(|r| to_row(&r)))
        })
        .await
    }

    async fn preferences(
        &self,
        user_id: &str,
    ) -> Result<herald_core::model::Preferences, ProjectionError> {
        let user = user_id.to_owned();
        let doc = self
            .run_prepared(move |c| {
                Ok(
                    c.query_opt("SELECT doc FROM preferences WHERE user_id = $1", &[&user])?
                        .map(|r| r.get::<_, String>(0)),
                )
            })
            .await?;
        doc.map_or(Ok(Default::default()), |d| crate::parse_preferences(&d))
    }
}
