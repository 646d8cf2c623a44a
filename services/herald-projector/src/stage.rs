//! One stage's consumer loop: assignment (seek to the projection's own offsets), batches,
//! revocation, lag, and dead letters for records the stage cannot use.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_ports::log::{ConsumerEvent, EventLog, LogConsumer, LogError, StoredRecord, Topic};
use herald_ports::projection::{ProjectionStore, Stage};
use herald_ports::telemetry;
use tokio_util::sync::CancellationToken;

use crate::{
    LAG_INTERVAL, MAX_BATCH_RECORDS, Projector, ProjectorError, next_offsets, offsets_vec,
};

/// How often a stage looks for partitions nobody applies.
const STALL_CHECK: Duration = Duration::from_secs(2);
/// First wait before a failed stage starts again; it doubles up to [`RESTART_MAX`].
const RESTART_INITIAL: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A batch that takes this long is logged (the consumer must poll within its poll interval).
const SLOW_BATCH: Duration = Duration::from_secs(2);
/// How long a batch should take at most: the consumer is not polled while a batch is applied,
/// and Kafka drops a member that does not poll for `max.poll.interval.ms`. Batches halve while
/// they take longer and double (up to [`MAX_BATCH_RECORDS`]) while they take under a quarter.
const BATCH_TARGET: Duration = Duration::from_secs(1);
/// The inbox stage's batch target, far shorter: its transactions share the projection's one
/// writer with the fanout stage's, which are on the way from a request to its deliveries. An
/// inbox batch of 2,048 events held the writer 200–270 ms at 5k/s, and every expansion behind it
/// waited as long.
const INBOX_BATCH_TARGET: Duration = Duration::from_millis(50);
/// The fanout stage counts as quiet once it has taken no batch for this long. While it is
/// quiet nothing on the way to a delivery waits for the projection's writer, and the inbox
/// stage sizes its batches by [`BATCH_TARGET`] like the fanout: after a burst of requests the
/// inbox works through its backlog in batches of up to [`MAX_BATCH_RECORDS`] instead of the
/// hundred-odd events a 50 ms batch holds on a slow disk (each commit writes every page it
/// touched, so small batches cost several times the CPU per event). The price: the record of
/// the first batch after a quiet spell may wait behind one such inbox batch, and a third batch
/// behind that record (the first two are delivered from the log before their records).
pub const FANOUT_QUIET: Duration = Duration::from_secs(1);
/// The smallest batch the sizing goes down to.
const MIN_BATCH_RECORDS: usize = 16;
/// How often a stage commits its consumer group's offsets. They are advisory: the projection's
/// own offsets, stored with its writes, decide where a stage resumes; the group's serve the
/// log's tools (consumer lag in Kafka's). Committing after every batch cost a log write per
/// batch: at 1k/s, two of the five log commits per notification.
pub const CONSUMER_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// After a short batch (it took all there was), the inbox stage waits this long from the
/// batch's start before it takes the next: at low rates each event was otherwise its own
/// transaction and fsync (1.7 projection commits per notification at 1k/s). Deliveries do not
/// wait for it (the live hub reads the log); inbox reads and unread counts may lag this much
/// more. Kafka consumers do the same with `fetch.wait.max.ms`.
pub const INBOX_LINGER: Duration = Duration::from_millis(20);
/// After a short batch, while the last measure showed a lag, the lag is measured again at
/// most this often (else every [`LAG_INTERVAL`], and every [`STALL_CHECK`] while idle).
const CAUGHT_UP_CHECK: Duration = Duration::from_millis(100);

/// The fanout stage's record in flight (`fanout::Unrecorded`).
struct InFlight<'a> {
    ids: HashSet<String>,
    record: Pin<Box<dyn Future<Output = Result<(), ProjectorError>> + Send + 'a>>,
}

/// Offsets a stage applied since its consumer group's last commit, and when that was.
struct Uncommitted {
    offsets: BTreeMap<u32, u64>,
    at: Instant,
}

impl Default for Uncommitted {
    fn default() -> Self {
        Uncommitted {
            offsets: BTreeMap::new(),
            at: Instant::now(),
        }
    }
}

impl Uncommitted {
    /// Commits what is pending if the last commit is at least `every` old.
    async fn commit(
        &mut self,
        consumer: &mut dyn LogConsumer,
        every: Duration,
    ) -> Result<(), LogError> {
        if self.offsets.is_empty() || self.at.elapsed() < every {
            return Ok(());
        }
        consumer.commit(&offsets_vec(&self.offsets)).await?;
        self.offsets.clear();
        self.at = Instant::now();
        Ok(())
    }
}

/// How long a batch of `stage` should take at most, when the fanout stage is quiet or not
/// ([`FANOUT_QUIET`]).
fn batch_target(stage: Stage, fanout_quiet: bool) -> Duration {
    match stage {
        Stage::Fanout => BATCH_TARGET,
        Stage::Inbox if fanout_quiet => BATCH_TARGET,
        Stage::Inbox => INBOX_BATCH_TARGET,
    }
}

/// When a projector's fanout stage last took a batch, for its inbox stage's batch target.
#[derive(Debug)]
pub(crate) struct FanoutActivity {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last batch, plus one; 0 before the first.
    last: AtomicU64,
}

impl FanoutActivity {
    pub(crate) fn new() -> Self {
        FanoutActivity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// The fanout stage takes or finishes a batch now.
    fn busy(&self) {
        let at = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last.store(at, Ordering::Relaxed);
    }

    /// Whether the fanout stage has taken no batch for [`FANOUT_QUIET`].
    fn quiet(&self) -> bool {
        match self.last.load(Ordering::Relaxed) {
            0 => true,
            at => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(at) >= FANOUT_QUIET.as_millis() as u64
            }
        }
    }
}

/// Below which offset a requests partition's records may have been expanded by an earlier
/// owner without being recorded, for an owner that finds `stored` as the partition's stored
/// offset and `end` as its end when it takes the partition. An owner records every batch it
/// expands, at most two batches behind (`fanout::Unrecorded`), and a batch holds at most
/// [`MAX_BATCH_RECORDS`] records: only records up to two batches after the stored offset can
/// have been expanded without being recorded, and only records the earlier owner could read,
/// those in the log when it stopped. A record appended since is this owner's alone: checking it
/// against the log's unapplied user events (`recovery`) read and decoded every one of them for
/// each fanout batch, ~10 ms per batch at 5k/s, for the first 4,096 requests after every start.
fn recover_below_offset(stored: u64, end: u64) -> u64 {
    end.min(stored.saturating_add(2 * MAX_BATCH_RECORDS as u64))
}

/// The most records to take next, after a batch of `n` records (asked for at most `asked`)
/// took `took`, for a batch target of `target`.
fn next_batch_max(asked: usize, n: usize, took: Duration, target: Duration) -> usize {
    if took > target {
        (n / 2).max(MIN_BATCH_RECORDS)
    } else if took < target / 4 && n == asked {
        (asked * 2).min(MAX_BATCH_RECORDS)
    } else {
        asked
    }
}

/// The consumer group of `stage` for a store: named after the store, so projectors of
/// different stores never share a group (on Kafka the log adds its prefix), and after the
/// group's generation once a stall moved it (see [`AppliedOffsets::group_generation`]).
///
/// [`AppliedOffsets::group_generation`]: herald_ports::projection::AppliedOffsets::group_generation
pub fn group_name(stage: Stage, store_id: &str, generation: u64) -> String {
    let short: String = store_id.chars().take(12).collect();
    match generation {
        0 => format!("{}.{short}", stage.name()),
        g => format!("{}.{short}.g{g}", stage.name()),
    }
}

/// `d` scaled by a random factor from `range`.
fn jitter(d: Duration, range: std::ops::Range<f64>) -> Duration {
    d.mul_f64(rand::random_range(range))
}

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// Runs a stage until `shutdown`. A stage never gives up: when its consumer or its store
    /// fails (a rebalance the log could not follow, a store that is briefly away), it logs the
    /// error, waits (1 s, doubling to 30 s, each drawn from half to one and a half of it) and
    /// starts again from the projection's offsets, which the idempotent fold makes safe. When
    /// the group's generation moves it joins the new group after about a second.
    pub(crate) async fn run_stage(
        &self,
        stage: Stage,
        shutdown: CancellationToken,
    ) -> Result<(), ProjectorError> {
        let mut wait = RESTART_INITIAL;
        loop {
            let mut progressed = false;
            let result = self.run_stage_once(stage, &shutdown, &mut progressed).await;
            if shutdown.is_cancelled() {
                tracing::info!(stage = stage.name(), "projector stage stopped");
                return Ok(());
            }
            let error = match result {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if progressed {
                wait = RESTART_INITIAL;
            }
            // Replicas that stop together (a generation move every replica sees) must not
            // rejoin together, so every wait is drawn at random.
            let retry_in = if let ProjectorError::GroupMoved { generation, .. } = error {
                tracing::info!(
                    stage = stage.name(),
                    generation,
                    "joining the consumer group's new generation"
                );
                jitter(RESTART_INITIAL, 0.5..1.5)
            } else {
                telemetry::projector_restarted(stage);
                let retry_in = jitter(wait, 0.5..1.5);
                tracing::error!(stage = stage.name(), error = %error, ?retry_in, "projector stage failed; starting it again");
                wait = (wait * 2).min(RESTART_MAX);
                retry_in
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(retry_in) => {}
            }
        }
    }

    /// One member of the stage's group, until shutdown or an error; then it leaves the group
    /// (bounded: a leave the broker never finishes goes on in the background).
    async fn run_stage_once(
        &self,
        stage: Stage,
        shutdown: &CancellationToken,
        progressed: &mut bool,
    ) -> Result<(), ProjectorError> {
        let generation = self.store.group_generation(stage).await?;
        let group = group_name(stage, self.store.store_id(), generation);
        let mut consumer = self.log.consumer(stage.topic(), &group).await?;
        let result = self
            .consume(
                stage,
                generation,
                &group,
                consumer.as_mut(),
                shutdown,
                progressed,
            )
            .await;
        consumer.close().await;
        result
    }

    async fn consume(
        &self,
        stage: Stage,
        generation: u64,
        group: &str,
        consumer: &mut dyn LogConsumer,
        shutdown: &CancellationToken,
        progressed: &mut bool,
    ) -> Result<(), ProjectorError> {
        let topic = stage.topic();
        let mut last_lag: Option<(Instant, u64)> = None;
        let mut batch_max = MAX_BATCH_RECORDS;
        let mut uncommitted = Uncommitted::default();
        // Set after a short inbox batch: take the next no sooner than this.
        let mut linger_until: Option<tokio::time::Instant> = None;
        let mut watch = tokio::time::interval(STALL_CHECK);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
        // Each run of each replica draws its own stall timeout (up to half as long again), so
        // one replica, not all at once, finds a stall and moves the group.
        let stall_timeout = jitter(self.stall_timeout, 1.0..1.5);
        // Fanout: requests below these offsets may have been expanded (appended) by an earlier
        // owner of the partition that crashed before recording it; see `recovery`.
        let mut recover_below: BTreeMap<u32, u64> = BTreeMap::new();
        // Fanout: the record of the last expanded batch, written while the next one expands
        // (`fanout::Unrecorded`), and the ids it holds.
        let mut in_flight: Option<InFlight<'_>> = None;
        self.status.waiting(stage, group);
        let waiting_since = Instant::now();
        tracing::info!(
            stage = stage.name(),
            topic = topic.name(),
            group,
            "projector stage started; waiting for partitions"
        );
        loop {
            if let Some(until) = linger_until.take() {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if let Some(f) = in_flight.take()
                        && let Err(e) = f.record.await
                    {
                        tracing::warn!(stage = stage.name(), error = %e, "an expansion not recorded at shutdown (recovery covers it)");
                    }
                    // Best effort: the projection's offsets are the ones that count.
                    if let Err(e) = uncommitted.commit(&mut *consumer, Duration::ZERO).await {
                        tracing::warn!(stage = stage.name(), error = %e, "consumer offsets not committed at shutdown");
                    }
                    return Ok(());
                }
                recorded = async { (&mut in_flight.as_mut().expect("guarded").record).await }, if in_flight.is_some() => {
                    in_flight = None;
                    recorded?;
                    continue;
                }
                _ = watch.tick() => {
                    self.watch_stalls(stage, generation, stall_timeout, &mut progress).await?;
                    // An idle stage's group catches up too.
                    uncommitted.commit(&mut *consumer, CONSUMER_COMMIT_INTERVAL).await?;
                    continue;
                }
                e = consumer.next(batch_max) => e?,
            };
            // Anything but a batch to pipeline waits for the record in flight.
            let pipelined = match &event {
                ConsumerEvent::Records(records) if topic == Topic::Requests => {
                    Self::pipelinable(records)
                }
                _ => None,
            };
            if pipelined.is_none()
                && let Some(f) = in_flight.take()
            {
                f.record.await?;
            }
            match event {
                ConsumerEvent::Assigned(partitions) => {
                    // The projection's offsets are authoritative: they commit with the writes.
                    let stored = self.store.consumer_offsets(stage).await?;
                    let mut positions = BTreeMap::new();
                    self.status.assigned(stage, &partitions);
                    for p in partitions {
                        let at = stored.get(&p).copied().unwrap_or(0);
                        consumer.seek(p, at)?;
                        positions.insert(p, at);
                        if stage == Stage::Fanout {
                            let end = self.log.end_offset(Topic::Requests, p).await?;
                            recover_below.insert(p, recover_below_offset(at, end));
                        }
                    }
                    tracing::info!(
                        stage = stage.name(),
                        group,
                        ?positions,
                        waited = ?waiting_since.elapsed(),
                        "partitions assigned"
                    );
                    self.measure_ready(stage, &stored).await?;
                }
                ConsumerEvent::Revoked(partitions) => {
                    self.status.revoked(stage, &partitions);
                    // Each batch is finished before the next event is taken, and its record
                    // was written above (every event but a batch to pipeline waits for it), so
                    // nothing of a revoked partition is in flight here.
                    for p in &partitions {
                        recover_below.remove(p);
                        // No longer ours to commit.
                        uncommitted.offsets.remove(p);
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
                    if stage == Stage::Fanout {
                        self.fanout_activity.busy();
                    }
                    let mut offsets = BTreeMap::new();
                    next_offsets(&records, &mut offsets);
                    let n = records.len();
                    match (topic, pipelined) {
                        (Topic::Requests, Some(requests)) => {
                            let recovering = Self::recovering(&records, &recover_below);
                            // The previous batch's record is written while this one expands;
                            // this one's after it, in offset order.
                            let unrecorded = match in_flight.take() {
                                Some(InFlight { ids, record }) => {
                                    let expand = self.expand_unrecorded(
                                        &requests,
                                        &offsets,
                                        &recovering,
                                        &ids,
                                    );
                                    let (recorded, expanded) = tokio::join!(record, expand);
                                    recorded?;
                                    expanded?
                                }
                                None => {
                                    self.expand_unrecorded(
                                        &requests,
                                        &offsets,
                                        &recovering,
                                        &HashSet::new(),
                                    )
                                    .await?
                                }
                            };
                            in_flight = Some(InFlight {
                                ids: unrecorded.ids(),
                                record: Box::pin(self.record(unrecorded)),
                            });
                        }
                        (Topic::Requests, None) => {
                            self.fanout_batch(&records, &recover_below).await?
                        }
                        (Topic::UserEvents, _) => self.inbox_batch(&records).await?,
                    }
                    uncommitted.offsets.extend(offsets);
                    uncommitted
                        .commit(&mut *consumer, CONSUMER_COMMIT_INTERVAL)
                        .await?;
                    *progressed = true;
                    let took = started.elapsed();
                    telemetry::projector_applied(stage, n, took);
                    if took >= SLOW_BATCH {
                        tracing::warn!(stage = stage.name(), records = n, ?took, "a slow batch");
                    }
                    if stage == Stage::Inbox && n < batch_max {
                        linger_until = Some(tokio::time::Instant::from_std(started) + INBOX_LINGER);
                    }
                    if stage == Stage::Fanout {
                        self.fanout_activity.busy();
                    }
                    let fanout_quiet = stage == Stage::Inbox && self.fanout_activity.quiet();
                    batch_max =
                        next_batch_max(batch_max, n, took, batch_target(stage, fanout_quiet));
                    // Measure at most once per interval, and (at most every CAUGHT_UP_CHECK)
                    // when a short batch says the stage may have caught up while the last
                    // measure showed a lag; `watch_stalls` measures an idle stage.
                    let due = match last_lag {
                        None => true,
                        Some((at, lag)) => {
                            at.elapsed() >= LAG_INTERVAL
                                || (n < MAX_BATCH_RECORDS
                                    && lag > 0
                                    && at.elapsed() >= CAUGHT_UP_CHECK)
                        }
                    };
                    if due {
                        let lag = self.lag(stage).await?;
                        telemetry::projector_lag(stage, lag);
                        last_lag = Some((Instant::now(), lag));
                    }
                }
            }
        }
    }

    /// Fails with [`ProjectorError::GroupMoved`] when another replica moved the group's
    /// generation past `generation`, and with [`ProjectorError::Stalled`] (after moving it)
    /// when a partition has had records to apply and no progress for `stall_timeout`, whoever
    /// owns it. A broker can leave a group without an assignment for good (tansu 0.6 does when
    /// its leader leaves mid-rebalance), so the replicas do not rejoin it: they all move to a
    /// fresh group, seeking to the store's offsets as always.
    async fn watch_stalls(
        &self,
        stage: Stage,
        generation: u64,
        stall_timeout: Duration,
        progress: &mut BTreeMap<u32, (u64, Instant)>,
    ) -> Result<(), ProjectorError> {
        let current = self.store.group_generation(stage).await?;
        if current != generation {
            return Err(ProjectorError::GroupMoved {
                stage,
                generation: current,
            });
        }
        let topic = stage.topic();
        let applied = self.store.consumer_offsets(stage).await?;
        let mine = self.status.partitions(stage);
        let (mut my_lag, mut lag) = (0u64, 0u64);
        for partition in 0..self.log.partitions(topic) {
            let at = applied.get(&partition).copied().unwrap_or(0);
            let end = self.log.end_offset(topic, partition).await?;
            lag += end.saturating_sub(at);
            if mine.contains(&partition) {
                my_lag += end.saturating_sub(at);
            }
            if end <= at {
                progress.remove(&partition);
                continue;
            }
            let (seen, since) = progress.entry(partition).or_insert((at, Instant::now()));
            if *seen != at {
                *seen = at;
                *since = Instant::now();
            } else if since.elapsed() >= stall_timeout {
                let secs = since.elapsed().as_secs();
                let generation = self
                    .store
                    .advance_group_generation(stage, generation)
                    .await?;
                return Err(ProjectorError::Stalled {
                    stage,
                    partition,
                    secs,
                    generation,
                });
            }
        }
        self.status.lag(stage, my_lag, self.ready_max_lag);
        // The same figure the batches report, also while the stage is idle or stuck.
        telemetry::projector_lag(stage, lag);
        Ok(())
    }

    /// Measures the stage's lag over the partitions it holds (for readiness), from the
    /// projection's offsets `applied`.
    async fn measure_ready(
        &self,
        stage: Stage,
        applied: &BTreeMap<u32, u64>,
    ) -> Result<(), ProjectorError> {
        let topic = stage.topic();
        let mut lag = 0u64;
        for p in self.status.partitions(stage) {
            let end = self.log.end_offset(topic, p).await?;
            lag += end.saturating_sub(applied.get(&p).copied().unwrap_or(0));
        }
        self.status.lag(stage, lag, self.ready_max_lag);
        Ok(())
    }

    /// Records of the stage's topic the projection has not applied, over every partition
    /// (those no replica serves included): the same figure on every replica.
    async fn lag(&self, stage: Stage) -> Result<u64, ProjectorError> {
        let topic = stage.topic();
        let applied = self.store.consumer_offsets(stage).await?;
        let mut lag = 0;
        for p in 0..self.log.partitions(topic) {
            let end = self.log.end_offset(topic, p).await?;
            lag += end.saturating_sub(applied.get(&p).copied().unwrap_or(0));
        }
        Ok(lag)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_while_slow_and_grow_back_while_fast() {
        let ms = Duration::from_millis;
        // Slow: halve what was taken, never below the floor.
        assert_eq!(next_batch_max(2048, 2048, ms(3000), BATCH_TARGET), 1024);
        assert_eq!(next_batch_max(2048, 300, ms(3000), BATCH_TARGET), 150);
        assert_eq!(
            next_batch_max(20, 20, ms(3000), BATCH_TARGET),
            MIN_BATCH_RECORDS
        );
        // Fast and full: double, never above the ceiling.
        assert_eq!(next_batch_max(64, 64, ms(10), BATCH_TARGET), 128);
        assert_eq!(
            next_batch_max(2048, 2048, ms(10), BATCH_TARGET),
            MAX_BATCH_RECORDS
        );
        // Fast but short (the consumer had no more): no evidence more would be fast.
        assert_eq!(next_batch_max(64, 10, ms(10), BATCH_TARGET), 64);
        // Within the target: keep.
        assert_eq!(next_batch_max(512, 512, ms(600), BATCH_TARGET), 512);
        // The inbox stage's shorter target while the fanout works, the long one while it is
        // quiet.
        assert_eq!(
            next_batch_max(2048, 2048, ms(200), batch_target(Stage::Inbox, false)),
            1024
        );
        assert_eq!(
            next_batch_max(2048, 2048, ms(200), batch_target(Stage::Inbox, true)),
            2048
        );
        assert_eq!(
            next_batch_max(256, 256, ms(40), batch_target(Stage::Inbox, true)),
            512
        );
        for quiet in [false, true] {
            assert_eq!(
                next_batch_max(2048, 2048, ms(200), batch_target(Stage::Fanout, quiet)),
                2048
            );
        }
    }

    #[test]
    fn only_records_an_earlier_owner_could_read_are_recovered() {
        let two_batches = 2 * MAX_BATCH_RECORDS as u64;
        // A fresh store on an empty log, or a clean restart: nothing an earlier owner read
        // is unrecorded, so no record appended from now on is checked.
        assert_eq!(recover_below_offset(0, 0), 0);
        assert_eq!(recover_below_offset(700, 700), 700);
        // A backlog after a crash: what was in the log, up to two batches past the stored
        // offset.
        assert_eq!(recover_below_offset(700, 900), 900);
        assert_eq!(
            recover_below_offset(700, 700 + 3 * two_batches),
            700 + two_batches
        );
        assert_eq!(recover_below_offset(u64::MAX - 1, u64::MAX), u64::MAX);
    }

    #[test]
    fn the_fanout_is_quiet_before_its_first_batch_and_a_while_after_its_last() {
        let activity = FanoutActivity::new();
        assert!(activity.quiet(), "no batch yet");
        activity.busy();
        assert!(!activity.quiet(), "a batch just now");
        // A last batch a little over FANOUT_QUIET ago (1 ms after an epoch further back).
        let epoch = Instant::now()
            .checked_sub(FANOUT_QUIET + Duration::from_millis(20))
            .expect("the clock runs longer than that");
        let earlier = FanoutActivity {
            epoch,
            last: AtomicU64::new(2),
        };
        assert!(earlier.quiet());
        earlier.busy();
        assert!(!earlier.quiet());
    }
}
