//! The presence bus on Kafka: topic `{prefix}presence` (one partition, records kept an hour),
//! key = the gateway's id. Readers are assign-only consumers from the topic's end.

use std::time::Instant;

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_ports::log::{LogError, Record, Topic};
use herald_ports::presence::{MAX_PRESENCE_RECORD_BYTES, PresenceBus, PresenceFeed};
use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::closing::OffThread;
use crate::message::{Admit, GAP_RETRY, Positions, one_partition, stored};
use crate::{KafkaLog, storage};

/// How long the presence topic keeps records when Herald creates it (`retention.ms`).
pub const PRESENCE_RETENTION_MS: &str = "3600000";
/// Records a feed hands out at once.
const FEED_BATCH: usize = 256;

struct KafkaPresenceFeed {
    consumer: OffThread<StreamConsumer>,
    topic: String,
    /// The topic's one partition, read in offset order (a hole is fetched again).
    positions: Positions,
}

#[async_trait]
impl PresenceBus for KafkaLog {
    async fn publish(&self, gateway: &str, value: Vec<u8>) -> Result<(), LogError> {
        if value.len() > MAX_PRESENCE_RECORD_BYTES {
            return Err(LogError::RecordTooLarge {
                size: value.len(),
                max: MAX_PRESENCE_RECORD_BYTES,
            });
        }
        let record = Record {
            partition: 0,
            key: gateway.to_owned(),
            value,
            headers: Vec::new(),
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        };
        self.produce(&self.config.presence_topic(), vec![record])
            .await
            .map(|_| ())
    }

    async fn feed(&self) -> Result<Box<dyn PresenceFeed>, LogError> {
        let consumer: StreamConsumer = self
            .config
            .client()
            .set("group.id", self.config.group_name("presence"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(storage)?;
        // From the end as the broker reports it now (not `Offset::End`, which is resolved only
        // when the fetcher starts: records published meanwhile would be skipped).
        let topic = self.config.presence_topic();
        let timeout = self.config.operation_timeout;
        let (consumer, high) = tokio::task::spawn_blocking(move || {
            let high = consumer
                .fetch_watermarks(&topic, 0, timeout)
                .map(|(_, h)| h);
            (consumer, high)
        })
        .await
        .map_err(storage)?;
        let high =
            high.map_err(|e| storage(format!("Kafka watermarks of the presence topic: {e}")))?;
        let high = high.max(0) as u64;
        let topic = self.config.presence_topic();
        assign_at(&consumer, &topic, high)?;
        let mut positions = Positions::default();
        positions.set(0, high);
        Ok(Box::new(KafkaPresenceFeed {
            consumer: OffThread::new(consumer, "presence feed".into()),
            topic,
            positions,
        }))
    }
}

#[async_trait]
impl PresenceFeed for KafkaPresenceFeed {
    async fn next(&mut self) -> Result<Vec<Vec<u8>>, LogError> {
        loop {
            let first = self.consumer.recv().await.map_err(storage)?;
            // The topic tag of these records is unused: only their values are handed out.
            let mut batch = vec![stored(Topic::Requests, &first)];
            drop(first);
            while batch.len() < FEED_BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(stored(Topic::Requests, &m)),
                    Some(Err(e)) => return Err(storage(e)),
                    None => break,
                }
            }
            let now = Instant::now();
            let mut out = Vec::with_capacity(batch.len());
            for r in batch {
                match self.positions.admit(&r, now) {
                    Admit::Take => out.push(r.record.value.clone()),
                    Admit::Drop => {}
                    Admit::Refetch { from } => {
                        assign_at(&self.consumer, &self.topic, from)?;
                        if out.is_empty() {
                            tokio::time::sleep(GAP_RETRY).await;
                        }
                        break;
                    }
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// Reads the presence topic's partition from `offset` on.
fn assign_at(consumer: &StreamConsumer, topic: &str, offset: u64) -> Result<(), LogError> {
    consumer
        .assign(&one_partition(topic, 0, Some(offset))?)
        .map_err(storage)
}
