//! Kafka messages as Herald records.

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
        record: Record {
            partition: m.partition() as u32,
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        },
    }
}
