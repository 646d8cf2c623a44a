//! Kafka messages as Herald records.

use std::sync::Arc;

use herald_ports::log::{Record, StoredRecord, Topic};
use rdkafka::message::{BorrowedMessage, Headers, Message};

/// A consumed message of `topic` as a stored record.
pub(crate) fn stored(topic: Topic, m: &BorrowedMessage<'_>) -> StoredRecord {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    StoredRecord {
        topic,
        partition: m.partition() as u32,
        offset: m.offset() as u64,
        record: Arc::new(Record {
            partition: m.partition() as u32,
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        }),
    }
}

/// Whether `r` is new in its partition of `positions` (the least offset to hand out next,
/// moved past it if so): a record of a partition not there, or before its position, is not.
pub(crate) fn take_if_new(
    positions: &mut std::collections::BTreeMap<u32, u64>,
    r: &StoredRecord,
) -> bool {
    match positions.get_mut(&r.partition) {
        Some(min) if r.offset >= *min => {
            *min = r.offset + 1;
            true
        }
        _ => false,
    }
}
