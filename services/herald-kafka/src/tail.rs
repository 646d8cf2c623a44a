//! Tails of chosen partitions (`EventLog::tail`): an assign-only `StreamConsumer` (no group
//! membership, so no join to wait for) whose partitions are added and removed incrementally.

use std::collections::BTreeSet;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_ports::log::{LogError, LogTail, StoredRecord, Topic, check_partition};
use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::closing::OffThread;
use crate::message::{Admit, GAP_RETRY, Positions, one_partition, stored};
use crate::{KafkaConfig, storage};

pub(crate) struct KafkaTail {
    topic: Topic,
    name: String,
    partitions: u32,
    consumer: OffThread<StreamConsumer>,
    /// Followed partitions and the offset to hand out next in each: librdkafka drops what it
    /// fetched for a partition before an (un)assignment, and this drops anything else that is
    /// not ours or not new, and refetches a partition from a hole in its offsets.
    followed: Positions,
}

pub(crate) fn tail(
    config: &KafkaConfig,
    topic: Topic,
    name: String,
    partitions: u32,
) -> Result<KafkaTail, LogError> {
    let consumer: StreamConsumer = config
        .client()
        .set("group.id", config.group_name("tail"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(storage)?;
    let what = format!("tail of {name}");
    Ok(KafkaTail {
        topic,
        name,
        partitions,
        consumer: OffThread::new(consumer, what),
        followed: Positions::default(),
    })
}

impl KafkaTail {
    fn assign(&self, partition: u32, from: u64) -> Result<(), LogError> {
        self.consumer
            .incremental_assign(&one_partition(&self.name, partition, Some(from))?)
            .map_err(|e| storage(format!("Kafka assign {}/{partition}: {e}", self.name)))
    }

    fn unassign(&self, partition: u32) -> Result<(), LogError> {
        self.consumer
            .incremental_unassign(&one_partition(&self.name, partition, None)?)
            .map_err(|e| storage(format!("Kafka unassign {}/{partition}: {e}", self.name)))
    }
}

#[async_trait]
impl LogTail for KafkaTail {
    fn follow(&mut self, partition: u32, from: u64) -> Result<(), LogError> {
        check_partition(self.topic, partition, self.partitions)?;
        if self.followed.contains(partition) {
            self.unfollow(partition)?;
        }
        self.assign(partition, from)?;
        self.followed.set(partition, from);
        Ok(())
    }

    fn unfollow(&mut self, partition: u32) -> Result<(), LogError> {
        check_partition(self.topic, partition, self.partitions)?;
        if self.followed.remove(partition) {
            self.unassign(partition)?;
        }
        Ok(())
    }

    async fn next(&mut self, max_records: usize) -> Result<Vec<StoredRecord>, LogError> {
        loop {
            let mut batch = Vec::new();
            let first = self.consumer.recv().await.map_err(storage)?;
            batch.push(stored(self.topic, &first));
            drop(first);
            while batch.len() < max_records.max(1) {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(stored(self.topic, &m)),
                    Some(Err(e)) => return Err(storage(e)),
                    None => break,
                }
            }
            // A partition with a hole before a record is fetched again from the hole, and the
            // rest of its records of this batch are dropped.
            let now = Instant::now();
            let mut refetched = BTreeSet::new();
            let mut kept = Vec::with_capacity(batch.len());
            for r in batch {
                if refetched.contains(&r.partition) {
                    continue;
                }
                match self.followed.admit(&r, now) {
                    Admit::Take => kept.push(r),
                    Admit::Drop => {}
                    Admit::Refetch { from } => {
                        self.unassign(r.partition)?;
                        self.assign(r.partition, from)?;
                        refetched.insert(r.partition);
                    }
                }
            }
            if !kept.is_empty() {
                return Ok(kept);
            }
            if !refetched.is_empty() {
                tokio::time::sleep(GAP_RETRY).await;
            }
        }
    }
}
