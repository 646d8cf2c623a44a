//! The dead-letter table: records the projector could not use, kept with the reason, where
//! operators find them.

use herald_ports::log::DeadLetter;
use rusqlite::Connection;

/// Keeps the value of the record at `(topic, partition, offset)` with `reason`.
pub(super) fn keep(
    c: &Connection,
    (topic, partition, offset): (&str, u32, u64),
    reason: &str,
    value: &[u8],
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO dead_letters (topic, partition, offset, reason, value, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            topic,
            partition,
            offset as i64,
            reason,
            value,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        ],
    )
    .map(|_| ())
}

/// Up to `max` dead letters, oldest first.
pub(super) fn oldest(c: &Connection, max: usize) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut st = c.prepare(
        "SELECT topic, partition, offset, reason, value FROM dead_letters \
         ORDER BY id LIMIT ?1",
    )?;
    let rows = st.query_map([max as i64], |r| {
        Ok(DeadLetter {
            topic: r.get(0)?,
            partition: r.get(1)?,
            offset: r.get::<_, i64>(2)? as u64,
            reason: r.get(3)?,
            value: r.get(4)?,
        })
    })?;
    rows.collect()
}
