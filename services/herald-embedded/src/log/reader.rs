//! Reads by position: a partition's records from an offset on, and where a partition ends.

use std::sync::Arc;

use herald_ports::log::{LogError, Record, StoredRecord, Topic};
use rusqlite::{Connection, params};

use super::headers::decode_headers;
use super::{EmbeddedLog, storage};
use crate::sqlite::Access;

/// The next offset of a partition, as stored: one past its greatest record.
pub(super) fn max_offset(conn: &Connection, topic: Topic, partition: u32) -> rusqlite::Result<u64> {
    let max: Option<i64> = conn.query_row(
        "SELECT max(offset) FROM records WHERE topic = ?1 AND partition = ?2",
        params![topic.id(), partition],
        |r| r.get(0),
    )?;
    Ok(max.map_or(0, |m| m as u64 + 1))
}

impl EmbeddedLog {
    /// Up to `max` records of one partition from `from` on (partition checked, `max` > 0).
    pub(super) async fn read_records(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        // Skip the round trip when a live writer says there is nothing new.
        if self.shared().access == Access::ReadWrite && self.shared().end(topic, partition) <= from
        {
            return Ok(Vec::new());
        }
        if let Some(records) = self.shared().recent.read(topic, partition, from, max) {
            return Ok(records);
        }
        let rows = self
            .shared()
            .pool
            .run(move |c| read_rows(c, topic, partition, from, max))
            .await
            .map_err(storage)?
            .map_err(storage)?;
        rows.into_iter()
            .map(|(offset, key, ts, headers, value)| {
                Ok(StoredRecord {
                    topic,
                    partition,
                    offset: offset as u64,
                    record: Arc::new(Record {
                        partition,
                        key,
                        value,
                        headers: decode_headers(&headers)?,
                        timestamp_ms: ts,
                    }),
                })
            })
            .collect()
    }
}

/// One stored row: offset, key, timestamp, encoded headers, value.
type Row = (i64, String, i64, Vec<u8>, Vec<u8>);

fn read_rows(
    conn: &mut Connection,
    topic: Topic,
    partition: u32,
    from: u64,
    max: usize,
) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT offset, key, ts, headers, value FROM records \
         WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![topic.id(), partition, from as i64, max as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    rows.collect()
}
