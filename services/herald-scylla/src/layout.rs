//! How Herald's rows map onto the CQL schema: inbox buckets, hours of the time indexes, member-set
//! shards, write timestamps, and the row tuple an inbox row is read as.

use std::sync::atomic::{AtomicI64, Ordering};

use herald_core::model::Priority;
use herald_core::projection::InboxRow;
use herald_ports::projection::ProjectionError;
use scylla::value::CqlValue;

use crate::{INBOX_BUCKET_BITS, MEMBER_SHARDS};

const HOUR_MS: i64 = 3_600_000;
pub(crate) const ROW_COLUMNS: &str = "user_id, seq, notification_id, event_type, source, payload, priority, \
     collapse_key, created_at, deliver_at, expires_at, read, archived, expired, superseded, live";

pub(crate) type RowTuple = (
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    bool,
    bool,
    bool,
    bool,
    Option<bool>,
);

pub(crate) fn to_row(t: RowTuple) -> InboxRow {
    InboxRow {
        user_id: t.0,
        seq: t.1 as u64,
        notification_id: t.2,
        event_type: t.3,
        source: t.4,
        payload: t.5,
        priority: t.6.parse().unwrap_or(Priority::Normal),
        collapse_key: t.7,
        created_at: t.8,
        deliver_at: t.9,
        expires_at: t.10,
        read: t.11,
        archived: t.12,
        expired: t.13,
        superseded: t.14,
        // Null in rows written before preferences: those were all live.
        live: t.15.unwrap_or(true),
    }
}

/// A stored preferences document.
pub(crate) fn parse_preferences(
    doc: &str,
) -> Result<herald_core::model::Preferences, ProjectionError> {
    serde_json::from_str(doc)
        .map_err(|e| ProjectionError::Corrupt(format!("a stored preferences document: {e}")))
}

pub(crate) fn bucket(seq: u64) -> i64 {
    (seq >> INBOX_BUCKET_BITS) as i64
}

pub(crate) fn hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

/// The timestamp of an hour's end, in microseconds: pruning an hour row is stamped with it, so
/// an entry written into that hour later (at a later wall-clock time) re-creates the row.
pub(crate) fn hour_end_micros(hour: i64) -> i64 {
    (hour + 1).saturating_mul(HOUR_MS).saturating_mul(1000)
}

/// The shard of a member set a user falls in (stable across processes and versions).
pub(crate) fn shard(user_id: &str) -> i32 {
    (herald_core::partition::partition_for(user_id, MEMBER_SHARDS as u32)) as i32
}

/// Wall-clock microseconds, strictly increasing within this process: directory changes are
/// applied in log order, and a later one must win even within the same microsecond.
pub(crate) fn monotonic_micros() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

pub(crate) fn storage(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ProjectionError + '_ {
    move |e| ProjectionError::Storage(format!("ScyllaDB {what}: {e}"))
}

pub(crate) fn big(v: impl TryInto<i64>) -> Option<CqlValue> {
    Some(CqlValue::BigInt(v.try_into().unwrap_or(i64::MAX)))
}

pub(crate) fn text(v: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_partitions_and_hours_prune_after_their_end() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(65_535), 0);
        assert_eq!(bucket(65_536), 1);
        assert_eq!(hour(-1), -1);
        assert_eq!(hour_end_micros(0), 3_600_000_000);
        let (a, b) = (monotonic_micros(), monotonic_micros());
        assert!(b > a);
        assert!((0..MEMBER_SHARDS).contains(&shard("someone")));
    }
}
