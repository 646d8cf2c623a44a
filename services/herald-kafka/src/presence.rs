//! The presence bus on Kafka: topic `{prefix}presence` (one partition, records kept an hour),
//! key = the gateway's id. Readers are assign-only consumers from the topic's end.

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_ports::log::{LogError, Record};
use herald_ports::presence::{MAX_PRESENCE_RECORD_BYTES, PresenceBus, PresenceFeed};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::closing::OffThread;
use crate::{KafkaLog, storage};

/// How long the presence topic keeps records when Herald creates it (`retention.ms`).
pub const PRESENCE_RETENTION_MS: &str = "3600000";
/// Records a feed hands out at once.
const FEED_BATCH: usize = 256;

struct KafkaPresenceFeed {
    consumer: OffThread<StreamConsumer>,
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
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.config.presence_topic(), 0, Offset::Offset(high))
            .map_err(storage)?;
        consumer.assign(&tpl).map_err(storage)?;
        Ok(Box::new(KafkaPresenceFeed {
            consumer: OffThread::new(consumer, "presence feed".into()),
        }))
    }
}

#[async_trait]
impl PresenceFeed for KafkaPresenceFeed {
    async fn next(&mut self) -> Result<Vec<Vec<u8>>, LogError> {
        let first = self.consumer.recv().await.map_err(storage)?;
        let mut out = vec![first.payload().unwrap_or_default().to_vec()];
        drop(first);
        while out.len() < FEED_BATCH {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(m.payload().unwrap_or_default().to_vec()),
                Some(Err(e)) => return Err(storage(e)),
                None => break,
            }
        }
        Ok(out)
    }
}
