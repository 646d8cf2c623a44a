//! Kafka messages as Herald records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_ports::log::{LogError, Record, StoredRecord, Topic};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::storage;

/// A list of one partition of `topic`, at `offset` when given (an assignment), without one
/// otherwise (an unassignment).
pub(crate) fn one_partition(
    topic: &str,
    partition: u32,
    offset: Option<u64>,
) -> Result<TopicPartitionList, LogError> {
    let mut tpl = TopicPartitionList::new();
    match offset {
        Some(o) => tpl
            .add_partition_offset(topic, partition as i32, Offset::Offset(o as i64))
            .map_err(storage)?,
        None => {
            tpl.add_partition(topic, partition as i32);
        }
    }
    Ok(tpl)
}

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

/// How long a reader waits for a hole in a partition's offsets to fill before it reads on past
/// it. Herald's topics have an offset for every record (no transactions, no compaction), so a
/// record past the next offset means the broker answered with a later batch before an earlier
/// one was readable: tansu 0.6 does this at the end of a partition written by several producers
/// (it reserves a batch's offsets before it stores the batch; `herald-kafka/tests/dense.rs`). The reader
/// fetches the hole again ([`GAP_RETRY`] apart) and normally has it within milliseconds. Past
/// this patience the offsets are taken as absent for good (a record removed by retention, or
/// a transaction marker from a producer Herald does not support) and skipped with a warning.
pub const OFFSET_GAP_PATIENCE: Duration = Duration::from_secs(2);
/// The pause before a hole is fetched again.
pub(crate) const GAP_RETRY: Duration = Duration::from_millis(5);

/// Holes seen in partitions' offsets since the process started: (seen, each fetched again
/// until it filled or was given up on; given up on after [`OFFSET_GAP_PATIENCE`]).
pub fn offset_holes() -> (u64, u64) {
    (
        HOLES_SEEN.load(Ordering::Relaxed),
        HOLES_SKIPPED.load(Ordering::Relaxed),
    )
}

static HOLES_SEEN: AtomicU64 = AtomicU64::new(0);
static HOLES_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// What a reader does with a record ([`Positions::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// The partition's next record: hand it out.
    Take,
    /// Before the partition's position, or of a partition not read: drop it.
    Drop,
    /// Past a hole that may still fill: drop it (and the rest of the partition's records of
    /// this fetch), and fetch the partition again from `from`.
    Refetch { from: u64 },
}

/// The next offset to hand out of each partition a reader reads, and the holes it waits on.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    parts: BTreeMap<u32, Position>,
}

#[derive(Debug)]
struct Position {
    next: u64,
    /// Whether a record at `next` must come next: true after a seek (or an assignment at an
    /// offset), false where the broker picks the start (a group's committed offset).
    exact: bool,
    /// The hole waited on (its first offset) and since when.
    hole: Option<(u64, Instant)>,
}

impl Positions {
    /// Reads `partition` from exactly `offset` on.
    pub(crate) fn set(&mut self, partition: u32, offset: u64) {
        self.parts.insert(
            partition,
            Position {
                next: offset,
                exact: true,
                hole: None,
            },
        );
    }

    /// Reads `partition` from wherever its first record is (at or after `offset`).
    pub(crate) fn set_from_any(&mut self, partition: u32, offset: u64) {
        self.parts.insert(
            partition,
            Position {
                next: offset,
                exact: false,
                hole: None,
            },
        );
    }

    pub(crate) fn remove(&mut self, partition: u32) -> bool {
        self.parts.remove(&partition).is_some()
    }

    pub(crate) fn contains(&self, partition: u32) -> bool {
        self.parts.contains_key(&partition)
    }

    /// What to do with `r`, read at `now` (its partition's position moves past it when taken).
    pub(crate) fn admit(&mut self, r: &StoredRecord, now: Instant) -> Admit {
        let Some(p) = self.parts.get_mut(&r.partition) else {
            return Admit::Drop;
        };
        if r.offset < p.next {
            return Admit::Drop;
        }
        if r.offset > p.next && p.exact {
            let since = match p.hole {
                Some((at, since)) if at == p.next => since,
                _ => {
                    HOLES_SEEN.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        partition = r.partition,
                        from = p.next,
                        to = r.offset,
                        "a hole in a partition's offsets; fetching the partition again from it"
                    );
                    p.hole = Some((p.next, now));
                    now
                }
            };
            if now.duration_since(since) < OFFSET_GAP_PATIENCE {
                return Admit::Refetch { from: p.next };
            }
            p.hole = None;
            HOLES_SKIPPED.fetch_add(1, Ordering::Relaxed);
            herald_ports::telemetry::log_offset_hole(true);
            tracing::warn!(
                partition = r.partition,
                from = p.next,
                to = r.offset,
                waited = ?now.duration_since(since),
                "offsets missing from a partition; reading on past them"
            );
        } else if let Some((at, since)) = p.hole.take() {
            herald_ports::telemetry::log_offset_hole(false);
            tracing::debug!(partition = r.partition, offset = at, waited = ?now.duration_since(since), "a hole in a partition's offsets filled");
        }
        p.next = r.offset + 1;
        p.exact = true;
        Admit::Take
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: u32, offset: u64) -> StoredRecord {
        StoredRecord {
            topic: Topic::UserEvents,
            partition,
            offset,
            record: Arc::new(Record {
                partition,
                key: String::new(),
                value: vec![],
                headers: vec![],
                timestamp_ms: 0,
            }),
        }
    }

    #[test]
    fn records_are_taken_in_order_and_a_hole_is_fetched_again_until_it_fills() {
        let mut ps = Positions::default();
        let t0 = Instant::now();
        ps.set(0, 10);
        assert_eq!(ps.admit(&record(0, 9), t0), Admit::Drop);
        assert_eq!(ps.admit(&record(1, 10), t0), Admit::Drop);
        assert_eq!(ps.admit(&record(0, 10), t0), Admit::Take);
        // 11 and 12 are not readable yet: 13 is not taken.
        assert_eq!(ps.admit(&record(0, 13), t0), Admit::Refetch { from: 11 });
        let later = t0 + OFFSET_GAP_PATIENCE / 2;
        assert_eq!(ps.admit(&record(0, 13), later), Admit::Refetch { from: 11 });
        // The hole filled.
        assert_eq!(ps.admit(&record(0, 11), later), Admit::Take);
        assert_eq!(ps.admit(&record(0, 12), later), Admit::Take);
        assert_eq!(ps.admit(&record(0, 13), later), Admit::Take);
        assert_eq!(ps.admit(&record(0, 13), later), Admit::Drop);
        // A new hole gets the whole patience again, and is read past after it.
        let t1 = t0 + OFFSET_GAP_PATIENCE * 3;
        assert_eq!(ps.admit(&record(0, 20), t1), Admit::Refetch { from: 14 });
        let t2 = t1 + OFFSET_GAP_PATIENCE;
        assert_eq!(ps.admit(&record(0, 20), t2), Admit::Take);
        assert_eq!(ps.admit(&record(0, 21), t2), Admit::Take);
    }

    #[test]
    fn a_partition_read_from_any_offset_starts_at_its_first_record() {
        let mut ps = Positions::default();
        let t0 = Instant::now();
        ps.set_from_any(2, 0);
        assert_eq!(ps.admit(&record(2, 57), t0), Admit::Take);
        assert_eq!(ps.admit(&record(2, 59), t0), Admit::Refetch { from: 58 });
        // A seek makes the position exact again; removing the partition drops its records.
        ps.set(2, 100);
        assert_eq!(ps.admit(&record(2, 101), t0), Admit::Refetch { from: 100 });
        assert!(ps.remove(2));
        assert_eq!(ps.admit(&record(2, 100), t0), Admit::Drop);
    }
}
