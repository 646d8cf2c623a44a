//! The log port on Kafka, through rdkafka (bundled librdkafka).
//!
//! * Topics `{prefix}requests`, `{prefix}user-events`, `{prefix}dead-letter` and
//!   `{prefix}presence` (the presence bus: one partition, records kept an hour), created through
//!   the admin API at start-up when missing (partitions and replication factor from
//!   [`KafkaConfig`]); an existing topic keeps its partition count, which the log then reports.
//! * Appends go through one idempotent producer with `acks=all`; [`EventLog::append`] returns
//!   after every record's delivery report, so a 202 means the brokers have the record.
//! * Group consumers are `StreamConsumer`s whose rebalance callbacks become
//!   [`ConsumerEvent::Assigned`] / [`ConsumerEvent::Revoked`] in the same stream as the records,
//!   in the order librdkafka serves them. Offsets are committed only when the caller says so.
//! * Reads by position (`read`, used for replay and for a session's log gap) use a small pool
//!   of assign-only consumers.
//! * Tails of chosen partitions (`tail`, the live hub's) are assign-only consumers too, with
//!   partitions added and removed incrementally: no group join to wait for.
//!
//! The epoch is derived from the cluster id, the user-events topic name and its partition count:
//! a new cluster or a re-partitioned topic gives new resume cursors. Deleting and re-creating
//! the topic with the same name and partition count is not detected; operators must not do it
//! under live clients (docs/operations.md).
//!
//! One file a role: `config` ([`KafkaConfig`]), `admin` (topics), `producer` (appends),
//! `consumer` (group consumers), `reader` (reads by position), `tail` (tails of chosen partitions), `presence` (the presence bus), `dead_letters`, `message` (Kafka
//! messages as records). This file opens the log and holds the [`EventLog`] impl, which hands
//! each call to its role.
//!
//! [`ConsumerEvent::Assigned`]: herald_ports::log::ConsumerEvent::Assigned
//! [`ConsumerEvent::Revoked`]: herald_ports::log::ConsumerEvent::Revoked

#![forbid(unsafe_code)]

mod admin;
mod closing;
mod config;
mod consumer;
mod dead_letters;
mod message;
mod presence;
mod producer;
mod reader;
mod tail;

#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use herald_core::cursor::Epoch;
use herald_ports::log::{
    Appended, DeadLetter, EventLog, LogConsumer, LogError, LogTail, Record, StoredRecord, Topic,
    check_append, check_partition,
};
use rdkafka::producer::FutureProducer;

pub use closing::{CONSUMER_CLOSE_GRACE, MAX_CLOSING_CONSUMERS};
pub use config::KafkaConfig;
pub use consumer::GROUP_DEFAULTS;
pub use dead_letters::{HEADER_DLQ_REASON, HEADER_DLQ_SOURCE};
pub use message::{OFFSET_GAP_PATIENCE, offset_holes};
pub use presence::PRESENCE_RETENTION_MS;
pub use reader::READER_POOL;
use reader::ReaderPool;

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

/// Herald's log on Kafka.
pub struct KafkaLog {
    config: KafkaConfig,
    producer: FutureProducer,
    partitions: HashMap<Topic, u32>,
    names: HashMap<Topic, String>,
    epoch: Epoch,
    readers: ReaderPool,
}

impl KafkaLog {
    /// Connects, creates missing topics and learns their partition counts. A broker that cannot
    /// be reached within `operation_timeout` is a [`LogError::Config`] that names it.
    pub async fn open(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let cluster = admin::ensure_topics(&config).await?;
        let mut partitions = HashMap::new();
        let mut names = HashMap::new();
        for topic in Topic::ALL {
            let name = config.topic_name(topic);
            partitions.insert(topic, cluster.counts[&name]);
            names.insert(topic, name);
        }
        let cluster = cluster.id;
        let epoch = Epoch::derive(
            &format!("kafka:{cluster}:{}", names[&Topic::UserEvents]),
            partitions[&Topic::UserEvents],
        );
        let producer = producer::producer(&config)?;
        let readers = ReaderPool::new(&config)?;
        tracing::info!(brokers = %config.brokers, cluster, %epoch, ?partitions, "Kafka log open");
        Ok(KafkaLog {
            config,
            producer,
            partitions,
            names,
            epoch,
            readers,
        })
    }

    fn check(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        check_partition(topic, partition, self.partitions[&topic])
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn partitions(&self, topic: Topic) -> u32 {
        self.partitions[&topic]
    }

    async fn append(&self, topic: Topic, records: Vec<Record>) -> Result<Vec<Appended>, LogError> {
        check_append(topic, self.partitions[&topic], &records)?;
        let started = Instant::now();
        let n = records.len();
        let out = self.produce(&self.names[&topic], records).await?;
        tracing::trace!(records = n, elapsed = ?started.elapsed(), "appended to Kafka");
        herald_ports::telemetry::log_appended(topic, n, Some(started.elapsed()));
        Ok(out)
    }

    async fn read(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.check(topic, partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        self.read_records(topic, partition, from, max).await
    }

    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        self.check(topic, partition)?;
        self.partition_end(topic, partition).await
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let name = self.names[&topic].clone();
        Ok(Box::new(consumer::group_consumer(
            &self.config,
            topic,
            name,
            group,
        )?))
    }

    async fn tail(&self, topic: Topic) -> Result<Box<dyn LogTail>, LogError> {
        let name = self.names[&topic].clone();
        Ok(Box::new(tail::tail(
            &self.config,
            topic,
            name,
            self.partitions[&topic],
        )?))
    }

    async fn dead_letter(&self, record: &StoredRecord, reason: &str) -> Result<(), LogError> {
        self.keep_dead_letter(record, reason).await
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, LogError> {
        self.read_dead_letters(max).await
    }
}
