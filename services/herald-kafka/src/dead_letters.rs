//! The dead-letter topic: a record the projector cannot use is produced to
//! `{prefix}dead-letter` with headers naming the reason and where it came from, where operators
//! find it; `dead_letters` reads them back.

use herald_ports::log::{DeadLetter, LogError, Record, StoredRecord, Topic};

use crate::KafkaLog;
use crate::reader::{read_to_eof, watermarks};

/// Header naming why a record went to the dead-letter topic.
pub const HEADER_DLQ_REASON: &str = "herald-dlq-reason";
/// Headers naming where a dead-lettered record came from.
pub const HEADER_DLQ_SOURCE: &str = "herald-dlq-source";

impl KafkaLog {
    /// Produces `record` to the dead-letter topic with `reason`.
    pub(crate) async fn keep_dead_letter(
        &self,
        record: &StoredRecord,
        reason: &str,
    ) -> Result<(), LogError> {
        let mut headers = record.record.headers.clone();
        headers.push((HEADER_DLQ_REASON.into(), reason.as_bytes().to_vec()));
        headers.push((
            HEADER_DLQ_SOURCE.into(),
            format!(
                "{}/{}/{}",
                self.names[&record.topic], record.partition, record.offset
            )
            .into_bytes(),
        ));
        let n = self.config.dead_letter_partitions.max(1);
        let r = Record {
            partition: record.partition % n,
            key: record.record.key.clone(),
            value: record.record.value.clone(),
            headers,
            timestamp_ms: record.record.timestamp_ms,
        };
        self.produce(&self.config.dead_letter_topic(), vec![r])
            .await
            .map(|_| ())
    }

    /// Up to `max` dead letters, partition by partition, oldest first in each.
    pub(crate) async fn read_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, LogError> {
        let name = self.config.dead_letter_topic();
        let timeout = self.config.operation_timeout;
        let partitions = self.config.dead_letter_partitions.max(1);
        self.readers
            .run(move |c| {
                let mut out = Vec::new();
                for p in 0..partitions {
                    let (low, _) = watermarks(c, &name, p, timeout)?;
                    // The topic tag of these records is unused: they become `DeadLetter`s.
                    let records =
                        read_to_eof(c, Topic::Requests, &name, p, low, max - out.len(), timeout)?;
                    for r in records {
                        let header = |k: &str| {
                            r.header(k)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default()
                        };
                        let source = header(HEADER_DLQ_SOURCE);
                        let mut parts = source.rsplitn(3, '/');
                        let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(0);
                        let partition = parts.next().and_then(|o| o.parse().ok()).unwrap_or(0);
                        out.push(DeadLetter {
                            topic: parts.next().unwrap_or_default().to_owned(),
                            partition,
                            offset,
                            reason: header(HEADER_DLQ_REASON),
                            value: r.record.value.clone(),
                        });
                    }
                    if out.len() >= max {
                        break;
                    }
                }
                Ok(out)
            })
            .await
    }
}
