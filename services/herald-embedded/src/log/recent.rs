//! The newest records of each partition, kept in memory by the writer thread after each commit,
//! so the readers that follow the end of the log (the live hub's tail, the projector's stages)
//! get fresh records without a SQLite read, a blocking-pool thread and the page-cache reload a
//! reader connection does after every commit. Older reads go to SQLite as before.
//!
//! Bounded by bytes: [`RECENT_LOG_BYTES`] for the whole log, split evenly over its partitions (never
//! under [`RECENT_MIN_BYTES_PER_PARTITION`]), oldest records dropped first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use herald_ports::log::{Record, StoredRecord, Topic};

/// Memory for recent records over every partition of both topics.
pub const RECENT_LOG_BYTES: usize = 32 << 20;
/// The least any one partition keeps, however many partitions share [`RECENT_LOG_BYTES`].
pub const RECENT_MIN_BYTES_PER_PARTITION: usize = 64 << 10;
/// What a record costs beyond its key, value and headers (struct, allocations).
const RECORD_OVERHEAD: usize = 96;

/// One partition's window: the records from `base` on, contiguous, each with its [`size`].
struct Window {
    base: u64,
    records: VecDeque<(Arc<Record>, usize)>,
    bytes: usize,
}

impl Window {
    /// Adds the record at `offset` and drops the oldest past `budget`.
    fn push(&mut self, offset: u64, record: Record, budget: usize) {
        if offset != self.base + self.records.len() as u64 {
            // Not contiguous (cannot happen with one writer): start the window again.
            self.records.clear();
            self.bytes = 0;
            self.base = offset;
        }
        let bytes = size(&record);
        self.bytes += bytes;
        self.records.push_back((Arc::new(record), bytes));
        while self.bytes > budget && self.records.len() > 1 {
            if let Some((_, old)) = self.records.pop_front() {
                self.bytes -= old;
                self.base += 1;
            }
        }
    }
}

/// Every partition's window, per topic.
pub(super) struct Recent {
    windows: [Vec<Mutex<Window>>; 2],
    budget: usize,
}

fn size(r: &Record) -> usize {
    RECORD_OVERHEAD
        + r.key.len()
        + r.value.len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum::<usize>()
}

impl Recent {
    /// Empty windows starting at each partition's end (`ends[topic][partition]`).
    pub(super) fn new(ends: [Vec<u64>; 2]) -> Self {
        let partitions: usize = ends.iter().map(Vec::len).sum();
        let budget = (RECENT_LOG_BYTES / partitions.max(1)).max(RECENT_MIN_BYTES_PER_PARTITION);
        Recent {
            windows: ends.map(|ends| {
                ends.into_iter()
                    .map(|base| {
                        Mutex::new(Window {
                            base,
                            records: VecDeque::new(),
                            bytes: 0,
                        })
                    })
                    .collect()
            }),
            budget,
        }
    }

    /// Adds committed records of `topic`, which must follow each partition's window (the
    /// writer thread appends them in offset order, right after their commit).
    /// One lock per run of records of the same partition.
    pub(super) fn push(&self, topic: Topic, records: Vec<(u64, Record)>) {
        let windows = &self.windows[topic.id() as usize];
        let mut records = records.into_iter().peekable();
        while let Some((offset, record)) = records.next() {
            let partition = record.partition;
            let Some(w) = windows.get(partition as usize) else {
                continue;
            };
            let mut w = w.lock().expect("recent lock");
            w.push(offset, record, self.budget);
            while let Some((offset, record)) = records.next_if(|(_, r)| r.partition == partition) {
                w.push(offset, record, self.budget);
            }
        }
    }

    /// Up to `max` records of a partition from `from` on, if the window holds `from`; `None`
    /// when it does not (older records: read them from the file).
    pub(super) fn read(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Option<Vec<StoredRecord>> {
        let w = self.windows[topic.id() as usize]
            .get(partition as usize)?
            .lock()
            .expect("recent lock");
        let end = w.base + w.records.len() as u64;
        if from < w.base || from >= end {
            return None;
        }
        let skip = (from - w.base) as usize;
        Some(
            w.records
                .iter()
                .skip(skip)
                .take(max)
                .enumerate()
                .map(|(i, (r, _))| StoredRecord {
                    topic,
                    partition,
                    offset: from + i as u64,
                    record: r.clone(),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: u32, value: usize) -> Record {
        Record {
            partition,
            key: "k".into(),
            value: vec![7; value],
            headers: vec![],
            timestamp_ms: 0,
        }
    }

    #[test]
    fn reads_what_it_holds_and_nothing_older_or_newer() {
        let recent = Recent::new([vec![0], vec![5, 0]]);
        recent.push(
            Topic::UserEvents,
            (5..10).map(|o| (o, rec(0, 10))).collect(),
        );
        let got = recent.read(Topic::UserEvents, 0, 7, 10).expect("held");
        assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(
            recent.read(Topic::UserEvents, 0, 6, 2).expect("held").len(),
            2
        );
        assert!(recent.read(Topic::UserEvents, 0, 4, 10).is_none(), "older");
        assert!(
            recent.read(Topic::UserEvents, 0, 10, 10).is_none(),
            "past the end"
        );
        assert!(recent.read(Topic::UserEvents, 1, 0, 10).is_none(), "empty");
        assert!(
            recent.read(Topic::Requests, 0, 0, 10).is_none(),
            "other topic"
        );
    }

    #[test]
    fn records_of_several_partitions_in_one_push_land_in_their_windows() {
        let recent = Recent::new([vec![0, 0], vec![0, 3, 0]]);
        let parts = [0, 1, 1, 0, 0, 2, 1];
        let mut next = [0u64, 3, 0];
        let records = parts
            .iter()
            .map(|&p| {
                let offset = next[p as usize];
                next[p as usize] += 1;
                (offset, rec(p, 10 + offset as usize))
            })
            .collect();
        recent.push(Topic::UserEvents, records);
        for (p, from, n) in [(0, 0, 3), (1, 3, 3), (2, 0, 1)] {
            let got = recent.read(Topic::UserEvents, p, from, 10).expect("held");
            assert_eq!(got.len(), n, "partition {p}");
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.offset, from + i as u64);
                assert_eq!(r.record.partition, p);
                assert_eq!(r.record.value.len(), 10 + r.offset as usize);
            }
        }
    }

    #[test]
    fn drops_the_oldest_records_past_its_budget() {
        let recent = Recent::new([vec![0], vec![0]]);
        let each = 10_000;
        // Twice what one partition may keep.
        let n = (2 * recent.budget / each) as u64;
        recent.push(
            Topic::UserEvents,
            (0..n).map(|o| (o, rec(0, each))).collect(),
        );
        let w = recent.windows[1][0].lock().unwrap();
        assert!(w.bytes <= recent.budget, "{} > {}", w.bytes, recent.budget);
        assert_eq!(w.base + w.records.len() as u64, n, "the newest are kept");
        assert!(w.base > 0, "the oldest went");
        drop(w);
        let oldest = recent.read(Topic::UserEvents, 0, 0, 1);
        assert!(oldest.is_none());
        assert_eq!(
            recent.read(Topic::UserEvents, 0, n - 1, 5).expect("newest")[0].offset,
            n - 1
        );
    }
}
