//! Reads by position (`read` and `end_offset`, used for replay and for a session's log gap, and
//! the dead-letter listing): a small pool of assign-only consumers, each read on a blocking
//! thread.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_ports::log::{LogError, StoredRecord, Topic};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;

use crate::message::{Admit, GAP_RETRY, Positions, one_partition, stored};
use crate::{KafkaConfig, KafkaLog, storage};

/// Consumers kept for reads by position.
pub const READER_POOL: usize = 4;
/// Records read per step past a broker's reported high watermark.
const WATERMARK_PROBE: usize = 512;
/// How long one poll of a reader waits.
const READER_POLL: Duration = Duration::from_millis(100);

/// Readers stop at the end of a partition; the end-of-partition events that arrive after they
/// moved on are expected, not errors.
pub(crate) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

pub(crate) type Reader = BaseConsumer<ReaderContext>;

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

/// The readers, one per slot; a read waits for a free slot.
pub(crate) struct ReaderPool {
    readers: Mutex<Vec<Reader>>,
    slots: tokio::sync::Semaphore,
}

impl ReaderPool {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, LogError> {
        let mut readers = Vec::with_capacity(READER_POOL);
        for _ in 0..READER_POOL {
            readers.push(reader(config)?);
        }
        Ok(ReaderPool {
            readers: Mutex::new(readers),
            slots: tokio::sync::Semaphore::new(READER_POOL),
        })
    }

    /// Runs `f` on a pooled reader on a blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let _slot = self.slots.acquire().await.map_err(|_| LogError::Closed)?;
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

impl KafkaLog {
    /// Up to `max` records of one partition from `from` on (partition checked, `max` > 0).
    pub(crate) async fn read_records(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let name = self.names[&topic].clone();
        let timeout = self.config.operation_timeout;
        self.readers
            .run(move |c| {
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
    pub(crate) async fn partition_end(
        &self,
        topic: Topic,
        partition: u32,
    ) -> Result<u64, LogError> {
        let name = self.names[&topic].clone();
        let timeout = self.config.operation_timeout;
        self.readers
            .run(move |c| {
                let (_, high) = watermarks(c, &name, partition, timeout)?;
                probe_end(c, topic, &name, partition, high, timeout)
            })
            .await
    }
}

/// A partition's (low, high) watermarks as the broker reports them.
pub(crate) fn watermarks(
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
pub(crate) fn read_to_eof(
    c: &Reader,
    topic: Topic,
    name: &str,
    partition: u32,
    from: u64,
    max: usize,
    timeout: Duration,
) -> Result<Vec<StoredRecord>, LogError> {
    let assign = |at: u64| {
        c.assign(&one_partition(name, partition, Some(at))?)
            .map_err(storage)
    };
    assign(from)?;
    // Offsets in order: a record past a hole is not taken; the partition is fetched again from
    // the hole (`OFFSET_GAP_PATIENCE`).
    let mut positions = Positions::default();
    positions.set(partition, from);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < max {
        match c.poll(READER_POLL) {
            Some(Ok(m)) if m.partition() as u32 == partition && m.offset() as u64 >= from => {
                let r = stored(topic, &m);
                match positions.admit(&r, Instant::now()) {
                    Admit::Take => out.push(r),
                    Admit::Drop => {}
                    Admit::Refetch { from } => {
                        std::thread::sleep(GAP_RETRY);
                        assign(from)?;
                    }
                }
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
