//! The tail of chosen partitions (`EventLog::tail`): reads each followed partition from its
//! position and waits for the writer's "appended" signal instead of polling.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_ports::log::{EventLog, LogError, LogTail, StoredRecord, Topic};
use tokio::sync::watch;

use super::EmbeddedLog;

pub(super) struct EmbeddedTail {
    log: EmbeddedLog,
    topic: Topic,
    /// Followed partitions and the next offset to read in each.
    positions: BTreeMap<u32, u64>,
    appended: watch::Receiver<u64>,
    /// How many partitions to pass over first next time, so no partition starves.
    start: usize,
}

impl EmbeddedTail {
    pub(super) fn new(log: &EmbeddedLog, topic: Topic) -> Self {
        EmbeddedTail {
            appended: log.shared().appended[topic.id() as usize].subscribe(),
            log: log.clone(),
            topic,
            positions: BTreeMap::new(),
            start: 0,
        }
    }
}

#[async_trait]
impl LogTail for EmbeddedTail {
    fn follow(&mut self, partition: u32, from: u64) -> Result<(), LogError> {
        self.log.check_partition(self.topic, partition)?;
        self.positions.insert(partition, from);
        Ok(())
    }

    fn unfollow(&mut self, partition: u32) -> Result<(), LogError> {
        self.log.check_partition(self.topic, partition)?;
        self.positions.remove(&partition);
        Ok(())
    }

    async fn next(&mut self, max_records: usize) -> Result<Vec<StoredRecord>, LogError> {
        loop {
            // Mark the current generation seen *before* reading, so an append that lands after
            // the read wakes the wait below.
            self.appended.borrow_and_update();
            let followed: Vec<(u32, u64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
            let mut out = Vec::new();
            for i in 0..followed.len() {
                let (p, from) = followed[(self.start + i) % followed.len()];
                let room = max_records.max(1).saturating_sub(out.len());
                if room == 0 {
                    break;
                }
                out.extend(self.log.read(self.topic, p, from, room).await?);
            }
            if !out.is_empty() {
                for r in &out {
                    self.positions.insert(r.partition, r.offset + 1);
                }
                self.start = self.start.wrapping_add(1);
                return Ok(out);
            }
            self.appended
                .changed()
                .await
                .map_err(|_| LogError::Closed)?;
        }
    }
}
