//! Reads by position: a partition's records from an offset on, and where a partition ends.

use std::sync::Arc;

use herald_ports::log::{LogError, Record, StoredRecord, Topic};
use rusqlite::{Connection, params};

use super::headers::decode_headers;
use super::{EmbeddedLog, LogFormat, batch, storage};
use crate::sqlite::Access;

/// The next offset of a partition, as stored: one past its greatest record.
pub(super) fn max_offset(
    conn: &Connection,
    format: LogFormat,
    topic: Topic,
    partition: u32,
) -> rusqlite::Result<u64> {
    let sql = match format {
        LogFormat::Rows => {
            "SELECT max(offset) + 1 FROM records WHERE topic = ?1 AND partition = ?2"
        }
        LogFormat::Batches => {
            "SELECT max(end_offset) FROM batches WHERE topic = ?1 AND partition = ?2"
        }
    };
    let end: Option<i64> = conn.query_row(sql, params![topic.id(), partition], |r| r.get(0))?;
    Ok(end.map_or(0, |e| e as u64))
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
        let format = self.format();
        self.shared()
            .pool
            .run(move |c| {
                // Failing to get a connection is the pool's error; the reads return their own.
                Ok(match format {
                    LogFormat::Rows => read_rows(c, topic, partition, from, max),
                    LogFormat::Batches => read_batches(c, topic, partition, from, max),
                })
            })
            .await
            .map_err(storage)?
            .map_err(storage)?
    }
}

/// One stored row: offset, key, timestamp, encoded headers, value.
type Row = (i64, String, i64, Vec<u8>, Vec<u8>);

/// Format 1: a row per record. A storage error and damaged headers are both a
/// [`LogError::Storage`].
fn read_rows(
    conn: &mut Connection,
    topic: Topic,
    partition: u32,
    from: u64,
    max: usize,
) -> Result<Vec<StoredRecord>, LogError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT offset, key, ts, headers, value FROM records \
             WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map(
            params![
                topic.id(),
                partition,
                i64::try_from(from).unwrap_or(i64::MAX),
                i64::try_from(max).unwrap_or(i64::MAX)
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .map_err(storage)?;
    let rows: Vec<Row> = rows.collect::<rusqlite::Result<_>>().map_err(storage)?;
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

/// Format 2: from the first row that ends past `from`, each row decoded until `max` records.
/// A storage error and a damaged row are both a [`LogError::Storage`].
fn read_batches(
    conn: &mut Connection,
    topic: Topic,
    partition: u32,
    from: u64,
    max: usize,
) -> Result<Vec<StoredRecord>, LogError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT end_offset, count, data FROM batches \
             WHERE topic = ?1 AND partition = ?2 AND end_offset > ?3 ORDER BY end_offset",
        )
        .map_err(storage)?;
    let mut rows = stmt
        .query(params![
            topic.id(),
            partition,
            i64::try_from(from).unwrap_or(i64::MAX)
        ])
        .map_err(storage)?;
    let mut out = Vec::new();
    while out.len() < max
        && let Some(row) = rows.next().map_err(storage)?
    {
        let (end, count): (i64, i64) = (row.get(0).map_err(storage)?, row.get(1).map_err(storage)?);
        let data = row
            .get_ref(2)
            .map_err(storage)?
            .as_blob()
            .map_err(storage)?;
        let (end, count) = (end as u64, count as u64);
        let first = end
            .checked_sub(count)
            .ok_or_else(|| LogError::Storage(format!("corrupt log batch ending at {end}")))?;
        batch::decode(topic, partition, (first, end), data, from, max, &mut out)?;
    }
    Ok(out)
}
