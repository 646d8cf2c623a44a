//! Group consumers: a `StreamConsumer` whose rebalance callbacks become
//! [`ConsumerEvent::Assigned`] / [`ConsumerEvent::Revoked`] in the same stream as the records,
//! in the order librdkafka serves them. Offsets are committed only when the caller says so.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_ports::log::{ConsumerEvent, LogConsumer, LogError, StoredRecord, Topic};
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::closing::{OffThread, room_for_a_consumer};
use crate::message::{Admit, GAP_RETRY, Positions, stored};
use crate::{KafkaConfig, storage};

/// How long a refused seek waits before it is tried again.
const SEEK_RETRY: Duration = Duration::from_millis(10);

/// A member of consumer group `group` on topic `topic`, named `name` on the cluster.
pub(crate) fn group_consumer(
    config: &KafkaConfig,
    topic: Topic,
    name: String,
    group: &str,
) -> Result<KafkaConsumer, LogError> {
    room_for_a_consumer()?;
    let group_id = config.group_name(group);
    let context = GroupContext {
        group: group_id.clone(),
        since: Instant::now(),
        events: Default::default(),
        wake: Default::default(),
    };
    let events = context.events.clone();
    let wake = context.wake.clone();
    tracing::info!(
        group = group_id,
        topic = name,
        "joining consumer group; waiting for partitions"
    );
    let mut client = config.client();
    for (key, default) in GROUP_DEFAULTS {
        client.set(*key, group_setting(&config.properties, key, default));
    }
    let consumer: StreamConsumer<GroupContext> = client
        .set("group.id", &group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(context)
        .map_err(storage)?;
    consumer.subscribe(&[&name]).map_err(storage)?;
    let what = format!("{name} in {group_id}");
    Ok(KafkaConsumer {
        topic,
        name,
        consumer: OffThread::new(Arc::new(consumer), what),
        events,
        wake,
        stash: VecDeque::new(),
        assigned: Positions::default(),
        pending_seeks: BTreeMap::new(),
        refetching: false,
        timeout: config.operation_timeout,
    })
}

/// Group settings Herald sets unless the properties (`-X`) give their own. Measured on tansu
/// (`tests/startup.rs`, docs/operations.md "Start-up on Kafka"): a member waits about half the
/// session timeout for its first assignment, so librdkafka's 45 s made a projector or a gateway
/// wait about 23 s; 10 s makes it about 5 s, and a dead member is replaced within 10 s.
/// Static membership (`group.instance.id`) and `cooperative-sticky` made joins slower there,
/// so neither is a default. On Apache Kafka the first join waits the broker's
/// `group.initial.rebalance.delay.ms` (3 s) instead.
pub const GROUP_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    ("partition.assignment.strategy", "roundrobin"),
];

/// `key`'s value: the properties' last, else Herald's default.
fn group_setting<'a>(properties: &'a [(String, String)], key: &str, default: &'a str) -> &'a str {
    properties
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map_or(default, |(_, v)| v.as_str())
}

/// Rebalance callbacks, turned into consumer events (and logged: how long a member waited
/// for its partitions is the start-up time of a consumer on Kafka).
struct GroupContext {
    group: String,
    since: Instant,
    events: Arc<Mutex<VecDeque<ConsumerEvent>>>,
    /// Wakes a `next` that waits for records when a rebalance comes instead.
    wake: Arc<tokio::sync::Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ps = partitions_of(tpl);
            tracing::info!(group = self.group, partitions = ?ps, "consumer group revoked partitions");
            if !ps.is_empty() {
                self.events
                    .lock()
                    .expect("events lock")
                    .push_back(ConsumerEvent::Revoked(ps));
                self.wake.notify_one();
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let ps = partitions_of(tpl);
                tracing::info!(
                    group = self.group,
                    partitions = ?ps,
                    since_start = ?self.since.elapsed(),
                    "consumer group assigned partitions"
                );
                self.events
                    .lock()
                    .expect("events lock")
                    .push_back(ConsumerEvent::Assigned(ps));
                self.wake.notify_one();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka rebalance error"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<u32> {
    let mut ps: Vec<u32> = tpl
        .elements()
        .iter()
        .map(|e| e.partition() as u32)
        .collect();
    ps.sort_unstable();
    ps
}

pub(crate) struct KafkaConsumer {
    topic: Topic,
    name: String,
    /// Closed on a thread of its own (a commit in flight holds a clone; the last one closes).
    consumer: OffThread<Arc<StreamConsumer<GroupContext>>>,
    /// Rebalances seen during polls (a handful at most between two `next` calls).
    events: Arc<Mutex<VecDeque<ConsumerEvent>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Records taken in the same poll as a rebalance, returned after it (at most one batch).
    stash: VecDeque<StoredRecord>,
    /// Assigned partitions and the offset to hand out next (set by `seek`; until then the
    /// first record the group's committed offset gives).
    assigned: Positions,
    /// Seeks librdkafka refused because the partition's fetcher had not started yet; applied
    /// before the next records are taken, and until then the partition's records are dropped.
    pending_seeks: BTreeMap<u32, u64>,
    /// A hole in a partition's offsets was seen: its seek back to the hole is in
    /// `pending_seeks`, applied after a pause ([`GAP_RETRY`]).
    refetching: bool,
    timeout: Duration,
}

impl KafkaConsumer {
    fn control(&mut self) -> Option<ConsumerEvent> {
        let ev = self.events.lock().expect("events lock").pop_front()?;
        match &ev {
            ConsumerEvent::Assigned(ps) => {
                for p in ps {
                    self.assigned.set_from_any(*p, 0);
                }
            }
            ConsumerEvent::Revoked(ps) => {
                for p in ps {
                    self.assigned.remove(*p);
                    self.pending_seeks.remove(p);
                }
            }
            ConsumerEvent::Records(_) => {}
        }
        Some(ev)
    }

    fn try_seek(&self, partition: u32, offset: u64) -> Result<bool, LogError> {
        match self.consumer.seek(
            &self.name,
            partition as i32,
            Offset::Offset(offset as i64),
            self.timeout,
        ) {
            Ok(()) => Ok(true),
            // rdkafka reports RD_KAFKA_RESP_ERR__STATE (the fetcher has not started) and
            // RD_KAFKA_RESP_ERR__OUTDATED (a rebalance moved the partition meanwhile) from a seek
            // only as text. Both are tried again; a revocation in between drops the seek.
            Err(KafkaError::Seek(msg))
                if msg.contains("Erroneous state") || msg.contains("Outdated") =>
            {
                Ok(false)
            }
            Err(e) => Err(storage(format!(
                "Kafka seek {}/{partition}: {e}",
                self.name
            ))),
        }
    }

    /// Applies refused seeks, waiting for the fetchers to start (bounded by the timeout). A
    /// rebalance event that arrives meanwhile is handed out first (it may revoke the partition).
    async fn settle_seeks(&mut self) -> Result<(), LogError> {
        let deadline = Instant::now() + self.timeout;
        while let Some((&p, &o)) = self.pending_seeks.first_key_value() {
            if !self.events.lock().expect("events lock").is_empty() {
                return Ok(());
            }
            if self.try_seek(p, o)? {
                self.pending_seeks.remove(&p);
                continue;
            }
            if Instant::now() > deadline {
                return Err(storage(format!(
                    "Kafka seek {}/{p}: the partition did not start fetching",
                    self.name
                )));
            }
            tokio::time::sleep(SEEK_RETRY).await;
        }
        Ok(())
    }

    /// Keeps a record only if its partition is still ours, it is not before a seek, and no
    /// offset before it is missing (then the partition is fetched again from the hole).
    fn keep(&mut self, r: &StoredRecord) -> bool {
        if self.pending_seeks.contains_key(&r.partition) {
            return false;
        }
        match self.assigned.admit(r, Instant::now()) {
            Admit::Take => true,
            Admit::Drop => false,
            Admit::Refetch { from } => {
                self.pending_seeks.insert(r.partition, from);
                self.refetching = true;
                false
            }
        }
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn next(&mut self, max_records: usize) -> Result<ConsumerEvent, LogError> {
        loop {
            if let Some(ev) = self.control() {
                return Ok(ev);
            }
            if std::mem::take(&mut self.refetching) {
                tokio::time::sleep(GAP_RETRY).await;
            }
            self.settle_seeks().await?;
            if !self.events.lock().expect("events lock").is_empty() {
                continue;
            }
            if !self.stash.is_empty() {
                let stash: Vec<StoredRecord> = self.stash.drain(..).collect();
                let batch: Vec<StoredRecord> = stash.into_iter().filter(|r| self.keep(r)).collect();
                if !batch.is_empty() {
                    return Ok(ConsumerEvent::Records(batch));
                }
                continue;
            }
            let mut batch = Vec::new();
            {
                // The rebalance callback runs inside this poll; it wakes us when it has queued
                // an event (recv is cancel-safe).
                let first = tokio::select! {
                    m = self.consumer.recv() => m.map_err(storage)?,
                    _ = self.wake.notified() => continue,
                };
                batch.push(stored(self.topic, &first));
            }
            while batch.len() < max_records.max(1) {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(stored(self.topic, &m)),
                    Some(Err(e)) => return Err(storage(e)),
                    None => break,
                }
            }
            if !self.events.lock().expect("events lock").is_empty() {
                self.stash.extend(batch);
                continue;
            }
            let batch: Vec<StoredRecord> = batch.into_iter().filter(|r| self.keep(r)).collect();
            if !batch.is_empty() {
                return Ok(ConsumerEvent::Records(batch));
            }
        }
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError> {
        if !self.assigned.contains(partition) {
            return Err(LogError::Config(format!(
                "seek on partition {partition}, which is not assigned"
            )));
        }
        // Retention may have removed the start of the partition: the records from `offset` on
        // begin at its first one (not a hole to fetch again).
        let offset = match self.consumer.fetch_watermarks(
            &self.name,
            partition as i32,
            self.timeout,
        ) {
            Ok((low, _)) if low > 0 && low as u64 > offset => {
                tracing::warn!(
                    topic = self.name,
                    partition,
                    from = offset,
                    first = low,
                    "records to read were removed by the topic's retention; reading from its first record"
                );
                low as u64
            }
            Ok(_) => offset,
            Err(e) => {
                return Err(storage(format!(
                    "Kafka watermarks of {}/{partition}: {e}",
                    self.name
                )));
            }
        };
        // Records taken before this seek come again from the new position.
        self.stash.retain(|r| r.partition != partition);
        self.assigned.set(partition, offset);
        if self.try_seek(partition, offset)? {
            // A refetch of a hole waiting to be applied would undo this seek.
            self.pending_seeks.remove(&partition);
        } else {
            self.pending_seeks.insert(partition, offset);
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            if self.assigned.contains(*p) {
                tpl.add_partition_offset(&self.name, *p as i32, Offset::Offset(*o as i64))
                    .map_err(storage)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = Arc::clone(&self.consumer);
        let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(storage)?;
        match result {
            Ok(()) => Ok(()),
            // A rebalance took the partitions while the batch ran: the projection's own offsets
            // are authoritative, so the group offset of a lost partition is merely stale.
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::RebalanceInProgress
                            | RDKafkaErrorCode::IllegalGeneration
                            | RDKafkaErrorCode::UnknownMemberId
                    )
                ) =>
            {
                tracing::warn!(error = %e, "Kafka commit lost to a rebalance");
                Ok(())
            }
            Err(e) => Err(storage(format!("Kafka commit: {e}"))),
        }
    }

    async fn close(self: Box<Self>) {
        self.consumer.close().await;
    }
}
