//! How much one read of pending rows may bring: [`PageBound`], in rows and in bytes.

use super::InboxRow;

/// The most rows one read of pending rows brings, whatever its bound asks for.
pub const MAX_PENDING_ROWS: usize = 10_000;

/// How much one read of pending rows (the projection port's `InboxReader::pending`) may bring: up
/// to `limit` rows ([`PageBound::row_limit`]), and rows only until the first that takes their
/// weight ([`Weigh::bytes`], what a session holding them keeps allocated) past `max_bytes`,
/// that row included, so a read brings one row at least. A store stops reading there: a page of small rows that meets large
/// ones is never read whole and then cut.
///
/// [`Weigh::bytes`]: crate::delivery::Weigh::bytes
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBound {
    pub limit: usize,
    pub max_bytes: usize,
}

impl PageBound {
    /// Up to `limit` rows, whatever they weigh.
    pub fn rows(limit: usize) -> Self {
        Self {
            limit,
            max_bytes: usize::MAX,
        }
    }

    /// The most rows a page holds: `limit`, one at least (a limit of 0 reads one row, as a
    /// bound of 0 bytes does) and [`MAX_PENDING_ROWS`] at most. A store's query asks for this
    /// many, and [`PageBound::full`] counts against it, so a reader never takes a page the cap
    /// ended for the end of the rows.
    pub fn row_limit(&self) -> usize {
        self.limit.clamp(1, MAX_PENDING_ROWS)
    }

    /// Whether a page that holds `rows` rows weighing `bytes` in all is complete: a store adds
    /// no row to it, and a reader of it cannot tell whether more follow.
    pub fn full(&self, rows: usize, bytes: usize) -> bool {
        rows >= self.row_limit() || bytes > self.max_bytes
    }

    /// The rows of `rows` (in the store's order) that a page bounded so takes, reading no
    /// further than the last of them.
    pub fn take<E>(
        &self,
        rows: impl IntoIterator<Item = Result<InboxRow, E>>,
    ) -> Result<Vec<InboxRow>, E> {
        let mut rows = rows.into_iter();
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while !self.full(page.len(), bytes) {
            let Some(row) = rows.next() else { break };
            let row = row?;
            bytes = bytes.saturating_add(crate::delivery::Weigh::bytes(&row));
            page.push(row);
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Weigh;
    use crate::model::Priority;

    fn row(seq: u64, payload: usize) -> InboxRow {
        InboxRow {
            user_id: "u".into(),
            seq,
            notification_id: format!("n{seq}"),
            event_type: "t".into(),
            source: "s".into(),
            payload: "x".repeat(payload),
            priority: Priority::Normal,
            collapse_key: None,
            created_at: 0,
            deliver_at: None,
            expires_at: None,
            read: false,
            archived: false,
            expired: false,
            superseded: false,
            live: true,
        }
    }

    /// Counts the rows `take` pulls from its source.
    fn take(bound: PageBound, rows: &[InboxRow]) -> (Vec<u64>, usize) {
        let mut pulled = 0;
        let page = bound
            .take(rows.iter().map(|r| {
                pulled += 1;
                Ok::<_, ()>(r.clone())
            }))
            .unwrap();
        (page.iter().map(|r| r.seq).collect(), pulled)
    }

    #[test]
    fn a_page_stops_at_the_row_past_its_bytes_and_reads_no_further() {
        let rows: Vec<InboxRow> = [10, 5_000, 10, 10]
            .iter()
            .enumerate()
            .map(|(i, p)| row(i as u64, *p))
            .collect();
        let w: Vec<usize> = rows.iter().map(Weigh::bytes).collect();
        let bound = |limit, max_bytes| PageBound { limit, max_bytes };
        assert_eq!(take(bound(10, 0), &rows), (vec![0], 1), "one row at least");
        assert_eq!(
            take(bound(0, usize::MAX), &rows),
            (vec![0], 1),
            "even at limit 0"
        );
        assert_eq!(
            take(bound(10, w[0]), &rows),
            (vec![0, 1], 2),
            "the row past the bytes comes"
        );
        assert_eq!(take(bound(10, w[0] + w[1]), &rows), (vec![0, 1, 2], 3));
        assert_eq!(
            take(bound(2, usize::MAX), &rows),
            (vec![0, 1], 2),
            "the row limit"
        );
        assert_eq!(
            take(PageBound::rows(10), &rows),
            (vec![0, 1, 2, 3], 4),
            "all of them"
        );
        assert!(bound(10, w[0]).full(2, w[0] + w[1]));
        assert!(
            !bound(10, w[0] + w[1]).full(2, w[0] + w[1]),
            "not past: more may come"
        );
        assert!(bound(2, usize::MAX).full(2, 0));
        assert!(bound(0, usize::MAX).full(1, 0), "one row at least");
        assert!(
            bound(usize::MAX, usize::MAX).full(MAX_PENDING_ROWS, 0),
            "a page the cap ended is full"
        );
    }

    #[test]
    fn a_failed_row_fails_the_page() {
        let bound = PageBound::rows(10);
        let rows = [Ok(row(0, 1)), Err("broken"), Ok(row(2, 1))];
        assert_eq!(bound.take(rows), Err("broken"));
    }
}
