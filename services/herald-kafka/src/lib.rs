//! The log port on Kafka, through rdkafka (bundled librdkafka).
//!
//! * Topics `{prefix}requests`, `{prefix}user-events` and `{prefix}dead-letter`, created through
//!   the admin API at start-up when missing (partitions and replication factor from
//!   [`KafkaConfig`]); an existing topic keeps its partition count, which the log then reports.
//! * Appends go through one idempotent producer with `acks=all`; [`EventLog::append`] returns
//!   after every record's delivery report, so a 202 means the brokers have the record.
//! * Group consumers are `StreamConsumer`s whose rebalance callbacks become
//!   [`ConsumerEvent::Assigned`] / [`ConsumerEvent::Revoked`] in the same stream as the records,
//!   in the order librdkafka serves them. Offsets are committed only when the caller says so.
//! * Reads by position (`read`, used for replay and for a session's log gap) use a small pool
//!   of assign-only consumers.
//!
//! The epoch is derived from the cluster id, the user-events topic name and its partition count:
//! a new cluster or a re-partitioned topic gives new resume cursors. Deleting and re-creating
//! the topic with the same name and partition count is not detected; operators must not do it
//! under live clients (docs/operations.md).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_core::cursor::Epoch;
use herald_ports::log::{
    Appended, ConsumerEvent, DeadLetter, EventLog, LogConsumer, LogError, MAX_RECORD_BYTES, Record,
    StoredRecord, Topic, check_append, check_partition,
};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Consumers kept for reads by position.
pub const READER_POOL: usize = 4;
/// Header naming why a record went to the dead-letter topic.
pub const HEADER_DLQ_REASON: &str = "herald-dlq-reason";
/// Headers naming where a dead-lettered record came from.
pub const HEADER_DLQ_SOURCE: &str = "herald-dlq-source";
/// How long an append waits for librdkafka's queue to have room before it tries again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);
/// Records read per step past a broker's reported high watermark.
const WATERMARK_PROBE: usize = 512;
/// How long a refused seek waits before it is tried again.
const SEEK_RETRY: Duration = Duration::from_millis(10);
/// How long one poll of a reader waits.
const READER_POLL: Duration = Duration::from_millis(100);

/// Where and how to reach Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Prefix of topic and consumer-group names.
    pub prefix: String,
    pub requests_partitions: u32,
    pub user_events_partitions: u32,
    pub dead_letter_partitions: u32,
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (security: `security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`, …; tuning: `session.timeout.ms`, …).
    pub properties: Vec<(String, String)>,
    /// Timeout of admin and metadata calls, and of reads.
    pub operation_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            prefix: "herald.".into(),
            requests_partitions: 8,
            user_events_partitions: 16,
            dead_letter_partitions: 1,
            replication_factor: 1,
            properties: Vec::new(),
            operation_timeout: Duration::from_secs(10),
        }
    }
}

impl KafkaConfig {
    pub fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }

    pub fn group_name(&self, group: &str) -> String {
        format!("{}{}", self.prefix, group)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "herald");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

/// Partition counts of the topics the cluster's metadata shows.
fn topic_counts(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> Result<HashMap<String, u32>, KafkaError> {
    let md = admin.inner().fetch_metadata(None, timeout)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as u32))
        .collect())
}

/// A partition's (low, high) watermarks as the broker reports them.
fn watermarks(
    c: &Reader,
    name: &str,
    partition: u32,
    timeout: Duration,
) -> Result<(u64, u64), LogError> {
    let (low, high) = c
        .fetch_watermarks(name, partition as i32, timeout)
        .map_err(|e| storage(format!("Kafka watermarks of {name}/{partition}: {e}")))?;
    Ok((low.max(0) as u64, high.max(0) as u64))
}

/// Herald's log on Kafka.
pub struct KafkaLog {
    config: KafkaConfig,
    producer: FutureProducer,
    partitions: HashMap<Topic, u32>,
    names: HashMap<Topic, String>,
    epoch: Epoch,
    readers: Mutex<Vec<Reader>>,
    reader_slots: tokio::sync::Semaphore,
}

impl KafkaLog {
    /// Connects, creates missing topics and learns their partition counts. A broker that cannot
    /// be reached within `operation_timeout` is a [`LogError::Config`] that names it.
    pub async fn open(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            LogError::Config(format!(
                "cannot reach Kafka at {} within {:?}: {e}",
                config.brokers, config.operation_timeout
            ))
        };
        let admin: AdminClient<DefaultClientContext> =
            config.client().create().map_err(|e| unreachable(&e))?;
        let wanted = [
            (
                config.topic_name(Topic::Requests),
                config.requests_partitions,
            ),
            (
                config.topic_name(Topic::UserEvents),
                config.user_events_partitions,
            ),
            (config.dead_letter_topic(), config.dead_letter_partitions),
        ];
        let existing =
            topic_counts(&admin, config.operation_timeout).map_err(|e| unreachable(&e))?;
        let missing: Vec<NewTopic<'_>> = wanted
            .iter()
            .filter(|(name, _)| !existing.contains_key(name))
            .map(|(name, n)| {
                NewTopic::new(
                    name,
                    *n as i32,
                    TopicReplication::Fixed(config.replication_factor),
                )
            })
            .collect();
        if !missing.is_empty() {
            let opts = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
            let results = admin
                .create_topics(missing.iter(), &opts)
                .await
                .map_err(|e| unreachable(&e))?;
            for r in results {
                match r {
                    Ok(name) => tracing::info!(topic = %name, "created Kafka topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(LogError::Config(format!(
                            "cannot create Kafka topic {name}: {code}"
                        )));
                    }
                }
            }
        }
        // Learn the partition counts (waiting for new topics to show in the metadata).
        let deadline = Instant::now() + config.operation_timeout;
        let counts = loop {
            let counts =
                topic_counts(&admin, config.operation_timeout).map_err(|e| unreachable(&e))?;
            if wanted.iter().all(|(n, _)| counts.contains_key(n)) {
                break counts;
            }
            if Instant::now() > deadline {
                return Err(LogError::Config(format!(
                    "Kafka topics {:?} did not appear in the metadata of {}",
                    wanted.iter().map(|w| &w.0).collect::<Vec<_>>(),
                    config.brokers
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut partitions = HashMap::new();
        let mut names = HashMap::new();
        for topic in Topic::ALL {
            let name = config.topic_name(topic);
            partitions.insert(topic, counts[&name]);
            names.insert(topic, name);
        }
        let cluster = admin
            .inner()
            .fetch_cluster_id(config.operation_timeout)
            .unwrap_or_default();
        let epoch = Epoch::derive(
            &format!("kafka:{cluster}:{}", names[&Topic::UserEvents]),
            partitions[&Topic::UserEvents],
        );
        let producer: FutureProducer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set(
                "message.max.bytes",
                (MAX_RECORD_BYTES + 64 * 1024).to_string(),
            )
            .create()
            .map_err(|e| unreachable(&e))?;
        let mut readers = Vec::with_capacity(READER_POOL);
        for _ in 0..READER_POOL {
            readers.push(reader(&config)?);
        }
        tracing::info!(brokers = %config.brokers, cluster, %epoch, ?partitions, "Kafka log open");
        Ok(KafkaLog {
            config,
            producer,
            partitions,
            names,
            epoch,
            readers: Mutex::new(readers),
            reader_slots: tokio::sync::Semaphore::new(READER_POOL),
        })
    }

    fn check(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        check_partition(topic, partition, self.partitions[&topic])
    }

    /// Produces records to a named topic, in order, and waits for every delivery report.
    async fn produce(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Appended>, LogError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut fr = FutureRecord::to(topic)
                .partition(r.partition as i32)
                .key(r.key.as_bytes())
                .payload(&r.value)
                .headers(headers)
                .timestamp(r.timestamp_ms);
            // Enqueue in order; a full local queue (bounded by librdkafka's
            // queue.buffering.max.*) makes this wait, never reorder.
            loop {
                match self.producer.send_result(fr) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        fr = back;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((e, _)) => return Err(produce_error(e)),
                }
            }
        }
        let mut out = Vec::with_capacity(pending.len());
        for d in pending {
            match d.await {
                Ok(Ok(delivery)) => out.push(Appended {
                    partition: delivery.partition as u32,
                    offset: delivery.offset as u64,
                }),
                Ok(Err((e, _))) => return Err(produce_error(e)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(out)
    }

    /// Runs `f` on a pooled reader on a blocking thread.
    async fn on_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let _slot = self
            .reader_slots
            .acquire()
            .await
            .map_err(|_| LogError::Closed)?;
        let reader = self
            .readers
            .lock()
            .expect("reader pool lock")
            .pop()
            .expect("a reader per slot");
        let (reader, result) = tokio::task::spawn_blocking(move || {
            let r = f(&reader);
            let _ = reader.unassign();
            (reader, r)
        })
        .await
        .map_err(storage)?;
        self.readers.lock().expect("reader pool lock").push(reader);
        result
    }
}

/// The true end of a partition whose broker reported watermark `high`.
fn probe_end(
    c: &Reader,
    topic: Topic,
    name: &str,
    partition: u32,
    high: u64,
    timeout: Duration,
) -> Result<u64, LogError> {
    let mut end = high;
    loop {
        let more = read_to_eof(c, topic, name, partition, end, WATERMARK_PROBE, timeout)?;
        match more.last() {
            Some(last) => end = last.offset + 1,
            None => return Ok(end),
        }
        if more.len() < WATERMARK_PROBE {
            return Ok(end);
        }
    }
}

/// Reads up to `max` records of one partition from `from`, stopping at the partition's end.
fn read_to_eof(
    c: &Reader,
    topic: Topic,
    name: &str,
    partition: u32,
    from: u64,
    max: usize,
    timeout: Duration,
) -> Result<Vec<StoredRecord>, LogError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(name, partition as i32, Offset::Offset(from as i64))
        .map_err(storage)?;
    c.assign(&tpl).map_err(storage)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < max {
        match c.poll(READER_POLL) {
            Some(Ok(m)) if m.partition() as u32 == partition && m.offset() as u64 >= from => {
                out.push(stored(topic, &m));
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(p))) if p as u32 == partition => break,
            // Past the end: nothing to read.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange)
                ) =>
            {
                break;
            }
            Some(Err(e)) => return Err(storage(format!("Kafka read of {name}/{partition}: {e}"))),
            None => {}
        }
        if Instant::now() > deadline {
            return Err(storage(format!(
                "Kafka read of {name}/{partition} from {from} timed out"
            )));
        }
    }
    Ok(out)
}

fn produce_error(e: KafkaError) -> LogError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => LogError::RecordTooLarge {
            size: 0,
            max: MAX_RECORD_BYTES,
        },
        _ => LogError::Storage(format!("Kafka produce: {e}")),
    }
}

/// Readers stop at the end of a partition; the end-of-partition events that arrive after they
/// moved on are expected, not errors.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

type Reader = BaseConsumer<ReaderContext>;

fn reader(config: &KafkaConfig) -> Result<Reader, LogError> {
    config
        .client()
        .set("group.id", config.group_name("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("isolation.level", "read_uncommitted")
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext)
        .map_err(storage)
}

fn stored(topic: Topic, m: &BorrowedMessage<'_>) -> StoredRecord {
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
        herald_ports::telemetry::log_appended(topic, n, started.elapsed());
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
        let name = self.names[&topic].clone();
        let timeout = self.config.operation_timeout;
        self.on_reader(move |c| {
            // A fetch past the end neither fails nor reaches an EOF on every broker: check the
            // end first when `from` is beyond the reported watermark.
            let (low, high) = watermarks(c, &name, partition, timeout)?;
            // Retention may have removed the start of the partition: read from what is left.
            let from = from.max(low);
            if from > high && from >= probe_end(c, topic, &name, partition, high, timeout)? {
                return Ok(Vec::new());
            }
            read_to_eof(c, topic, &name, partition, from, max, timeout)
        })
        .await
    }

    /// The partition's end: the broker's high watermark, then read on to the end of the
    /// partition (`enable.partition.eof`). The read covers brokers that report a watermark inside
    /// the last record batch (tansu 0.6 reports the batch's base offset + 1).
    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        self.check(topic, partition)?;
        let name = self.names[&topic].clone();
        let timeout = self.config.operation_timeout;
        self.on_reader(move |c| {
            let (_, high) = watermarks(c, &name, partition, timeout)?;
            probe_end(c, topic, &name, partition, high, timeout)
        })
        .await
    }

    async fn consumer(&self, topic: Topic, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let context = GroupContext::default();
        let events = context.events.clone();
        let wake = context.wake.clone();
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .client()
            .set("group.id", self.config.group_name(group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_uncommitted")
            .set("partition.assignment.strategy", "roundrobin")
            .create_with_context(context)
            .map_err(storage)?;
        let name = self.names[&topic].clone();
        consumer.subscribe(&[&name]).map_err(storage)?;
        Ok(Box::new(KafkaConsumer {
            topic,
            name,
            consumer: Arc::new(consumer),
            events,
            wake,
            stash: VecDeque::new(),
            assigned: BTreeMap::new(),
            pending_seeks: BTreeMap::new(),
            timeout: self.config.operation_timeout,
        }))
    }

    async fn dead_letter(&self, record: &StoredRecord, reason: &str) -> Result<(), LogError> {
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

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, LogError> {
        let name = self.config.dead_letter_topic();
        let timeout = self.config.operation_timeout;
        let partitions = self.config.dead_letter_partitions.max(1);
        self.on_reader(move |c| {
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
                        value: r.record.value,
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

/// Rebalance callbacks, turned into consumer events.
#[derive(Default)]
struct GroupContext {
    events: Arc<Mutex<VecDeque<ConsumerEvent>>>,
    /// Wakes a `next` that waits for records when a rebalance comes instead.
    wake: Arc<tokio::sync::Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ps = partitions_of(tpl);
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

struct KafkaConsumer {
    topic: Topic,
    name: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// Rebalances seen during polls (a handful at most between two `next` calls).
    events: Arc<Mutex<VecDeque<ConsumerEvent>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Records taken in the same poll as a rebalance, returned after it (at most one batch).
    stash: VecDeque<StoredRecord>,
    /// Assigned partitions and the least offset to hand out next (moved by `seek`).
    assigned: BTreeMap<u32, u64>,
    /// Seeks librdkafka refused because the partition's fetcher had not started yet; applied
    /// before the next records are taken, and until then the partition's records are dropped.
    pending_seeks: BTreeMap<u32, u64>,
    timeout: Duration,
}

impl KafkaConsumer {
    fn control(&mut self) -> Option<ConsumerEvent> {
        let ev = self.events.lock().expect("events lock").pop_front()?;
        match &ev {
            ConsumerEvent::Assigned(ps) => {
                for p in ps {
                    self.assigned.insert(*p, 0);
                }
            }
            ConsumerEvent::Revoked(ps) => {
                for p in ps {
                    self.assigned.remove(p);
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
            // rdkafka reports RD_KAFKA_RESP_ERR__STATE from a seek only as text.
            Err(KafkaError::Seek(msg)) if msg.contains("Erroneous state") => Ok(false),
            Err(e) => Err(storage(format!(
                "Kafka seek {}/{partition}: {e}",
                self.name
            ))),
        }
    }

    /// Applies refused seeks, waiting for the fetchers to start (bounded by the timeout).
    async fn settle_seeks(&mut self) -> Result<(), LogError> {
        let deadline = Instant::now() + self.timeout;
        while let Some((&p, &o)) = self.pending_seeks.first_key_value() {
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

    /// Keeps a record only if its partition is still ours and it is not before a seek.
    fn keep(&mut self, r: &StoredRecord) -> bool {
        if self.pending_seeks.contains_key(&r.partition) {
            return false;
        }
        match self.assigned.get_mut(&r.partition) {
            Some(min) if r.offset >= *min => {
                *min = r.offset + 1;
                true
            }
            _ => false,
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
            self.settle_seeks().await?;
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
        let Some(min) = self.assigned.get_mut(&partition) else {
            return Err(LogError::Config(format!(
                "seek on partition {partition}, which is not assigned"
            )));
        };
        *min = offset;
        if !self.try_seek(partition, offset)? {
            self.pending_seeks.insert(partition, offset);
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            if self.assigned.contains_key(p) {
                tpl.add_partition_offset(&self.name, *p as i32, Offset::Offset(*o as i64))
                    .map_err(storage)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
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
}

#[cfg(feature = "testing")]
pub mod testing;
