//! One stage's consumer loop: assignment (seek to the projection's own offsets), batches,
//! revocation, lag, and dead letters for records the stage cannot use.

use std::collections::BTreeMap;
use std::time::Instant;

use herald_ports::log::{ConsumerEvent, EventLog, StoredRecord, Topic};
use herald_ports::projection::{ProjectionStore, Stage};
use herald_ports::telemetry;
use tokio_util::sync::CancellationToken;

use crate::{
    LAG_INTERVAL, MAX_BATCH_RECORDS, Projector, ProjectorError, next_offsets, offsets_vec,
};

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    pub(crate) async fn run_stage(
        &self,
        stage: Stage,
        shutdown: CancellationToken,
    ) -> Result<(), ProjectorError> {
        let topic = stage.topic();
        let mut consumer = self.log.consumer(topic, stage.name()).await?;
        let mut last_lag = Instant::now() - LAG_INTERVAL;
        let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
        // Fanout: requests below these offsets may have been expanded (appended) by an earlier
        // owner of the partition that crashed before recording it; see `Recovery`.
        let mut recover_below: BTreeMap<u32, u64> = BTreeMap::new();
        tracing::info!(
            stage = stage.name(),
            topic = topic.name(),
            "projector stage started"
        );
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    tracing::info!(stage = stage.name(), "projector stage stopped");
                    return Ok(());
                }
                e = consumer.next(MAX_BATCH_RECORDS) => e?,
            };
            match event {
                ConsumerEvent::Assigned(partitions) => {
                    // The projection's offsets are authoritative: they commit with the writes.
                    let stored = self.store.consumer_offsets(stage).await?;
                    for p in partitions {
                        let at = stored.get(&p).copied().unwrap_or(0);
                        consumer.seek(p, at)?;
                        positions.insert(p, at);
                        // An owner records every batch it expands, and a batch holds at most
                        // MAX_BATCH_RECORDS records: only those after the stored offset can
                        // have been expanded without being recorded.
                        recover_below.insert(p, at + MAX_BATCH_RECORDS as u64);
                    }
                    tracing::info!(stage = stage.name(), ?positions, "partitions assigned");
                }
                ConsumerEvent::Revoked(partitions) => {
                    // Each batch is finished before the next event is taken, so nothing of a
                    // revoked partition is in flight here.
                    for p in &partitions {
                        positions.remove(p);
                    }
                    tracing::info!(stage = stage.name(), ?partitions, "partitions revoked");
                }
                ConsumerEvent::Records(records) => {
                    let span = tracing::debug_span!(
                        "projector_batch",
                        stage = stage.name(),
                        records = records.len()
                    );
                    let _enter = span.enter();
                    let started = Instant::now();
                    let mut offsets = BTreeMap::new();
                    next_offsets(&records, &mut offsets);
                    let n = records.len();
                    match topic {
                        Topic::Requests => self.fanout_batch(&records, &recover_below).await?,
                        Topic::UserEvents => self.inbox_batch(&records).await?,
                    }
                    consumer.commit(&offsets_vec(&offsets)).await?;
                    positions.extend(offsets);
                    telemetry::projector_applied(stage, n, started.elapsed());
                    // Measure at most once per interval, and whenever a short batch says the
                    // stage has caught up, so an idle stage never shows a stale lag.
                    if last_lag.elapsed() >= LAG_INTERVAL || n < MAX_BATCH_RECORDS {
                        last_lag = Instant::now();
                        let mut lag = 0;
                        for (p, at) in &positions {
                            lag += self.log.end_offset(topic, *p).await?.saturating_sub(*at);
                        }
                        telemetry::projector_lag(stage, lag);
                    }
                }
            }
        }
    }

    /// A record the projector cannot use: counted, logged, and kept in the log's dead letters
    /// before the offsets that cover it are stored (so a crash repeats it; never loses it).
    pub(crate) async fn dead_letter(
        &self,
        stage: Stage,
        r: &StoredRecord,
        reason: &str,
    ) -> Result<(), ProjectorError> {
        telemetry::projector_undecodable(stage);
        tracing::warn!(
            stage = stage.name(),
            topic = r.topic.name(),
            partition = r.partition,
            offset = r.offset,
            reason,
            "skipping a record the projector cannot use"
        );
        self.log
            .dead_letter(r, &format!("{stage}: {reason}"))
            .await?;
        Ok(())
    }
}
