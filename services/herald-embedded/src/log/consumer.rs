//! The group consumer: the single member of its group, so every partition is assigned to it at
//! once; it resumes from the group's committed offsets and waits for the writer's "appended"
//! signal instead of polling.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_ports::log::{ConsumerEvent, EventLog, LogConsumer, LogError, Topic};
use rusqlite::params;
use tokio::sync::watch;

use super::EmbeddedLog;

/// The single member of its group: every partition is assigned to it.
pub(super) struct EmbeddedConsumer {
    log: EmbeddedLog,
    topic: Topic,
    group: String,
    positions: BTreeMap<u32, u64>,
    assigned: bool,
    appended: watch::Receiver<u64>,
    /// Partition to read first next time, so no partition starves.
    start: u32,
}

impl EmbeddedConsumer {
    pub(super) fn new(log: &EmbeddedLog, topic: Topic, group: &str) -> Self {
        EmbeddedConsumer {
            appended: log.shared().appended[topic.id() as usize].subscribe(),
            log: log.clone(),
            topic,
            group: group.to_owned(),
            positions: BTreeMap::new(),
            assigned: false,
            start: 0,
        }
    }

    async fn committed(&self) -> Result<BTreeMap<u32, u64>, LogError> {
        let (group, topic) = (self.group.clone(), self.topic);
        self.log
            .with_conn(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT partition, next_offset FROM group_offsets WHERE grp = ?1 AND topic = ?2",
                )?;
                let rows = stmt.query_map(params![group, topic.id()], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()
            })
            .await
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn next(&mut self, max_records: usize) -> Result<ConsumerEvent, LogError> {
        if !self.assigned {
            let committed = self.committed().await?;
            let partitions = self.log.partitions(self.topic);
            self.positions = (0..partitions)
                .map(|p| (p, committed.get(&p).copied().unwrap_or(0)))
                .collect();
            self.assigned = true;
            return Ok(ConsumerEvent::Assigned((0..partitions).collect()));
        }
        let partitions = self.log.partitions(self.topic);
        loop {
            // Mark the current generation seen *before* reading, so an append that lands after
            // the read wakes the wait below.
            self.appended.borrow_and_update();
            let mut out = Vec::new();
            for i in 0..partitions {
                let p = (self.start + i) % partitions;
                let room = max_records.saturating_sub(out.len());
                if room == 0 {
                    break;
                }
                let from = self.positions[&p];
                out.extend(self.log.read(self.topic, p, from, room).await?);
            }
            if !out.is_empty() {
                for r in &out {
                    self.positions.insert(r.partition, r.offset + 1);
                }
                self.start = (self.start + 1) % partitions;
                return Ok(ConsumerEvent::Records(out));
            }
            self.appended
                .changed()
                .await
                .map_err(|_| LogError::Closed)?;
        }
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError> {
        self.log.check_partition(self.topic, partition)?;
        self.positions.insert(partition, offset);
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), LogError> {
        for (p, _) in offsets {
            self.log.check_partition(self.topic, *p)?;
        }
        let (group, topic, offsets) = (self.group.clone(), self.topic, offsets.to_vec());
        // Through the writer thread, the file's only writer (see `writer`).
        self.log
            .write(move |tx| {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO group_offsets (grp, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )?;
                for (p, o) in &offsets {
                    stmt.execute(params![group, topic.id(), p, *o as i64])?;
                }
                Ok(())
            })
            .await
    }
}
