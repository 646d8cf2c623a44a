//! The projector: Herald's stream processor, written once against the ports.
//!
//! Two stages, each a consumer group on one topic:
//! * **fanout** (`requests` → `user-events`): expands each notification request into one
//!   `NotificationAdded` per recipient, appended to the recipient's partition, and applies
//!   directory changes. A request whose notification id is already expanded is skipped, so a
//!   producer retry never creates a second notification.
//! * **inbox** (`user-events` → projection): folds per-user events into the projection store.
//!
//! Effects come before offsets: the fanout appends the user events (durably) *before* it records
//! the request as expanded together with its offset; the inbox stage stores its offsets in the
//! same transaction as the writes (embedded) or after them, and commits the log's group offsets
//! last. A crash in between replays a suffix, which the idempotent fold absorbs; a duplicate
//! `NotificationAdded` from a repeated expansion is a no-op in the fold (same id, same user).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_core::codec;
use herald_core::model::{DirectoryChange, Event, NotificationRequest, RequestRecord, UserEvent};
use herald_ports::log::{ConsumerEvent, EventLog, LogError, StoredRecord, Topic};
use herald_ports::projection::{Positioned, ProjectionError, ProjectionStore, Stage};
use herald_ports::records::user_event_record;
use herald_ports::telemetry;
use tokio_util::sync::CancellationToken;

/// Most records a stage takes from the log per batch.
pub const MAX_BATCH_RECORDS: usize = 2048;
/// Most per-user records appended by the fanout in one call.
pub const FANOUT_APPEND_CHUNK: usize = 4096;
/// Least time between two projection-lag measurements of a stage.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// How often the timer stage looks for due scheduled requests and expired rows.
pub const TIMER_INTERVAL: Duration = Duration::from_millis(250);
/// Most scheduled requests or expiring rows handled per timer tick.
const TIMER_BATCH: usize = 512;
/// How long the timer stage remembers an `Expired` it appended (so it does not append it again
/// while the projection catches up; a repeat would be harmless, only wasteful).
const EXPIRED_MEMORY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("cannot encode a user event: {0}")]
    Encode(#[from] herald_core::CoreError),
}

pub mod audit;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Next offsets after `records`, per partition.
fn next_offsets(records: &[StoredRecord], into: &mut BTreeMap<u32, u64>) {
    for r in records {
        let e = into.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
}

fn offsets_vec(m: &BTreeMap<u32, u64>) -> Vec<(u32, u64)> {
    m.iter().map(|(p, o)| (*p, *o)).collect()
}

/// The projector over a log and a projection store.
pub struct Projector<L: ?Sized, P: ?Sized> {
    log: Arc<L>,
    store: Arc<P>,
}

impl<L: ?Sized, P: ?Sized> Clone for Projector<L, P> {
    fn clone(&self) -> Self {
        Projector {
            log: self.log.clone(),
            store: self.store.clone(),
        }
    }
}

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    pub fn new(log: Arc<L>, store: Arc<P>) -> Self {
        Projector { log, store }
    }

    /// Runs all stages (fanout, inbox, timers) until `shutdown` is cancelled or one fails.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let fanout = self.run_stage(Stage::Fanout, shutdown.clone());
        let inbox = self.run_stage(Stage::Inbox, shutdown.clone());
        let timers = self.run_timers(shutdown.clone());
        let result = tokio::try_join!(fanout, inbox, timers).map(|_| ());
        if result.is_err() {
            shutdown.cancel();
        }
        result
    }

    /// Runs only the fanout stage (requests → user events) until `shutdown`.
    pub async fn run_fanout(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        self.run_stage(Stage::Fanout, shutdown).await
    }

    /// Runs only the inbox stage (user events → projection) until `shutdown`.
    pub async fn run_inbox(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        self.run_stage(Stage::Inbox, shutdown).await
    }

    /// The timer stage: expands scheduled requests when their `deliver_at` comes, and appends
    /// `Expired` events for rows whose `expires_at` passed.
    pub async fn run_timers(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let mut tick = tokio::time::interval(TIMER_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recent: std::collections::HashMap<(String, String), Instant> = Default::default();
        // The first expansion of due requests after a start may repeat one an earlier timer
        // stage appended and crashed before recording.
        let mut first = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = now_ms();
            let due = self.store.due(now, TIMER_BATCH).await?;
            if !due.is_empty() {
                let requests: Vec<NotificationRequest> = due
                    .iter()
                    .filter_map(|(id, bytes)| match codec::decode(bytes) {
                        Ok(Event::Request(RequestRecord::Notification(n))) => Some(*n),
                        _ => {
                            tracing::warn!(notification_id = %id, "undecodable scheduled request");
                            None
                        }
                    })
                    .collect();
                tracing::debug!(due = requests.len(), "expanding scheduled requests");
                let recovering: HashSet<String> = if first {
                    requests.iter().map(|r| r.notification_id.clone()).collect()
                } else {
                    HashSet::new()
                };
                self.expand_now(&requests, &BTreeMap::new(), &recovering)
                    .await?;
                first = false;
            }
            recent.retain(|_, at| at.elapsed() < EXPIRED_MEMORY);
            let expiring: Vec<(String, String)> = self
                .store
                .expiring(now, TIMER_BATCH)
                .await?
                .into_iter()
                .filter(|k| !recent.contains_key(k))
                .collect();
            if !expiring.is_empty() {
                let partitions = self.log.partitions(Topic::UserEvents);
                let mut records = Vec::with_capacity(expiring.len());
                for (user, id) in &expiring {
                    let ev = UserEvent::Expired(herald_core::model::NotificationExpired {
                        user_id: user.clone(),
                        notification_id: id.clone(),
                        at: now,
                    });
                    records.push(user_event_record(&ev, partitions, now)?);
                }
                self.log.append(Topic::UserEvents, records).await?;
                for k in expiring {
                    recent.insert(k, Instant::now());
                }
            }
        }
    }

    async fn run_stage(
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
    async fn dead_letter(
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

    /// Folds a batch of per-user events into the projection.
    #[tracing::instrument(level = "debug", skip_all, fields(records = records.len()))]
    pub async fn inbox_batch(&self, records: &[StoredRecord]) -> Result<(), ProjectorError> {
        let mut events = Vec::with_capacity(records.len());
        for r in records {
            match codec::decode(&r.record.value) {
                Ok(Event::User(event)) => events.push(Positioned {
                    partition: r.partition,
                    offset: r.offset,
                    event,
                }),
                Ok(Event::Request(_)) => {
                    self.dead_letter(Stage::Inbox, r, "a request record on the user-events topic")
                        .await?
                }
                Err(e) => self.dead_letter(Stage::Inbox, r, &e.to_string()).await?,
            }
        }
        let mut offsets = BTreeMap::new();
        next_offsets(records, &mut offsets);
        self.store
            .apply_user_events(Stage::Inbox, &events, &offsets_vec(&offsets))
            .await?;
        Ok(())
    }

    /// Expands a batch of requests and applies directory changes, in log order.
    #[tracing::instrument(level = "debug", skip_all, fields(records = records.len()))]
    pub async fn fanout_batch(
        &self,
        records: &[StoredRecord],
        recover_below: &BTreeMap<u32, u64>,
    ) -> Result<(), ProjectorError> {
        let mut offsets = BTreeMap::new();
        let mut run_requests: Vec<NotificationRequest> = Vec::new();
        // Ids of requests an earlier owner may have expanded without recording it.
        let recovering: HashSet<String> = records
            .iter()
            .filter(|r| {
                recover_below
                    .get(&r.partition)
                    .is_some_and(|b| r.offset < *b)
            })
            .map(|r| r.record.key.clone())
            .collect();
        let mut run_directory: Vec<DirectoryChange> = Vec::new();
        for r in records {
            match codec::decode(&r.record.value) {
                Ok(Event::Request(RequestRecord::Notification(n))) => {
                    if !run_directory.is_empty() {
                        self.store
                            .apply_directory(Stage::Fanout, &run_directory, &offsets_vec(&offsets))
                            .await?;
                        run_directory.clear();
                    }
                    match n.validate() {
                        Ok(()) => run_requests.push(*n),
                        Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
                    }
                }
                Ok(Event::Request(RequestRecord::Directory(d))) => {
                    if !run_requests.is_empty() {
                        self.expand(&run_requests, &offsets, &recovering).await?;
                        run_requests.clear();
                    }
                    match d.validate() {
                        Ok(()) => run_directory.push(d),
                        Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
                    }
                }
                Ok(Event::Request(RequestRecord::Role(role))) => {
                    // A role definition stands alone: flush what came before it, in order.
                    if !run_directory.is_empty() {
                        self.store
                            .apply_directory(Stage::Fanout, &run_directory, &offsets_vec(&offsets))
                            .await?;
                        run_directory.clear();
                    }
                    if !run_requests.is_empty() {
                        self.expand(&run_requests, &offsets, &recovering).await?;
                        run_requests.clear();
                    }
                    next_offsets(std::slice::from_ref(r), &mut offsets);
                    match role.validate() {
                        Ok(()) => {
                            self.store
                                .define_roles(Stage::Fanout, &[role], &offsets_vec(&offsets))
                                .await?
                        }
                        Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
                    }
                    continue;
                }
                Ok(Event::User(_)) => {
                    self.dead_letter(Stage::Fanout, r, "a user event on the requests topic")
                        .await?
                }
                Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
            }
            next_offsets(std::slice::from_ref(r), &mut offsets);
        }
        if !run_directory.is_empty() {
            self.store
                .apply_directory(Stage::Fanout, &run_directory, &offsets_vec(&offsets))
                .await?;
        }
        if !run_requests.is_empty() || run_directory.is_empty() {
            self.expand(&run_requests, &offsets, &recovering).await?;
        }
        Ok(())
    }

    /// Schedules requests whose `deliver_at` is in the future, expands the others.
    async fn expand(
        &self,
        requests: &[NotificationRequest],
        offsets: &BTreeMap<u32, u64>,
        recovering: &HashSet<String>,
    ) -> Result<(), ProjectorError> {
        let now = now_ms();
        let (later, now_due): (Vec<&NotificationRequest>, Vec<&NotificationRequest>) = requests
            .iter()
            .partition(|r| r.deliver_at.is_some_and(|d| d > now));
        if !later.is_empty() {
            let mut entries = Vec::with_capacity(later.len());
            for r in later {
                let bytes =
                    codec::encode_request(&RequestRecord::Notification(Box::new(r.clone())))?;
                entries.push((
                    r.notification_id.clone(),
                    r.deliver_at.unwrap_or(now),
                    bytes,
                ));
            }
            self.store.schedule(Stage::Fanout, &entries, &[]).await?;
        }
        let now_due: Vec<NotificationRequest> = now_due.into_iter().cloned().collect();
        self.expand_now(&now_due, offsets, recovering).await
    }

    /// Expands requests whose ids are not yet expanded; records them with `offsets`. For the
    /// ids in `recovering`, recipients that already have the notification (an earlier expansion
    /// that crashed before it was recorded) are skipped, so a crash never repeats an expansion.
    #[tracing::instrument(level = "debug", skip_all, fields(requests = requests.len()))]
    async fn expand_now(
        &self,
        requests: &[NotificationRequest],
        offsets: &BTreeMap<u32, u64>,
        recovering: &HashSet<String>,
    ) -> Result<(), ProjectorError> {
        let ids: Vec<String> = requests.iter().map(|r| r.notification_id.clone()).collect();
        let done: HashSet<String> = self.store.expanded(&ids).await?.into_iter().collect();
        let mut resolved: Vec<(&NotificationRequest, Vec<String>)> = Vec::new();
        for req in requests {
            if done.contains(&req.notification_id) {
                continue;
            }
            // Most requests name users only: those need no round trip to the store.
            let users = match req.recipients.only_users() {
                Some(users) => users,
                None => self.store.resolve(&req.recipients).await?,
            };
            resolved.push((req, users));
        }
        let delivered = self.already_added(&resolved, recovering).await?;
        let partitions = self.log.partitions(Topic::UserEvents);
        let now = now_ms();
        let mut seen = BTreeSet::new();
        let mut expansions = Vec::new();
        let mut records = Vec::new();
        let mut duplicates = 0;
        duplicates += requests.len() - resolved.len();
        for (req, users) in resolved {
            if !seen.insert(req.notification_id.clone()) {
                duplicates += 1;
                continue;
            }
            for u in &users {
                if delivered.contains(&(u.clone(), req.notification_id.clone())) {
                    continue;
                }
                records.push(user_event_record(
                    &UserEvent::Added(req.added_for(u)),
                    partitions,
                    now,
                )?);
                if records.len() >= FANOUT_APPEND_CHUNK {
                    self.log
                        .append(Topic::UserEvents, std::mem::take(&mut records))
                        .await?;
                }
            }
            tracing::debug!(notification_id = %req.notification_id, recipients = users.len(), "expanded");
            expansions.push((req.notification_id.clone(), users));
        }
        if !records.is_empty() {
            self.log.append(Topic::UserEvents, records).await?;
        }
        // Only now, with the user events durable, is the request recorded as expanded.
        self.store
            .record_expansions(Stage::Fanout, &expansions, &offsets_vec(offsets))
            .await?;
        telemetry::projector_expanded(expansions.len(), duplicates);
        Ok(())
    }
}

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// Of the (recipient, notification) pairs of the `recovering` requests among `resolved`,
    /// those whose `NotificationAdded` is already in the log: in the projection (rows) or in
    /// the part of user-events the inbox stage has not applied yet. The applied offsets are
    /// read first, so together the two cover the whole log.
    async fn already_added(
        &self,
        resolved: &[(&NotificationRequest, Vec<String>)],
        recovering: &HashSet<String>,
    ) -> Result<HashSet<(String, String)>, ProjectorError> {
        let mut found = HashSet::new();
        let wanted: Vec<&(&NotificationRequest, Vec<String>)> = resolved
            .iter()
            .filter(|(r, _)| recovering.contains(&r.notification_id))
            .collect();
        if wanted.is_empty() {
            return Ok(found);
        }
        let ids: HashSet<&str> = wanted
            .iter()
            .map(|(r, _)| r.notification_id.as_str())
            .collect();
        let users: HashSet<&str> = wanted
            .iter()
            .flat_map(|(_, us)| us.iter().map(String::as_str))
            .collect();
        let applied = self.store.consumer_offsets(Stage::Inbox).await?;
        for p in 0..self.log.partitions(Topic::UserEvents) {
            let mut at = applied.get(&p).copied().unwrap_or(0);
            let end = self.log.end_offset(Topic::UserEvents, p).await?;
            while at < end {
                let chunk = self
                    .log
                    .read(
                        Topic::UserEvents,
                        p,
                        at,
                        ((end - at) as usize).min(MAX_BATCH_RECORDS),
                    )
                    .await?;
                let Some(last) = chunk.last() else { break };
                at = last.offset + 1;
                for r in chunk
                    .iter()
                    .filter(|r| users.contains(r.record.key.as_str()))
                {
                    if let Ok(Event::User(UserEvent::Added(a))) = codec::decode(&r.record.value)
                        && ids.contains(a.notification_id.as_str())
                    {
                        found.insert((a.user_id, a.notification_id));
                    }
                }
            }
        }
        for (req, us) in wanted {
            for u in us {
                let key = (u.clone(), req.notification_id.clone());
                if !found.contains(&key) && self.store.row(u, &req.notification_id).await?.is_some()
                {
                    found.insert(key);
                }
            }
        }
        if !found.is_empty() {
            tracing::info!(
                recipients = found.len(),
                "recovery: skipping recipients an interrupted expansion already reached"
            );
        }
        Ok(found)
    }
}

/// Progress of a rebuild, for progress bars.
pub trait Progress: Send + Sync {
    fn total(&self, records: u64);
    fn advance(&self, records: u64);
}

impl Progress for () {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Rebuilds a projection from the log into `store` (which should be empty): directory changes
/// from the requests topic up to `requests_end`, and every per-user event up to `events_end`
/// (exclusive next offsets per partition; missing partitions are read to their end). Nothing is
/// appended to the log.
pub async fn rebuild<L: EventLog + ?Sized, P: ProjectionStore + ?Sized>(
    log: &L,
    store: &P,
    requests_end: &BTreeMap<u32, u64>,
    events_end: &BTreeMap<u32, u64>,
    progress: &dyn Progress,
) -> Result<u64, ProjectorError> {
    let mut ends = Vec::new();
    let mut total = 0;
    for topic in [Topic::Requests, Topic::UserEvents] {
        let given = if topic == Topic::Requests {
            requests_end
        } else {
            events_end
        };
        for p in 0..log.partitions(topic) {
            let end = match given.get(&p) {
                Some(e) => *e,
                None => log.end_offset(topic, p).await?,
            };
            total += end;
            ends.push((topic, p, end));
        }
    }
    progress.total(total);
    let mut applied = 0;
    for (topic, p, end) in ends {
        let mut at = 0;
        while at < end {
            let max = ((end - at) as usize).min(MAX_BATCH_RECORDS * 4);
            let records = log.read(topic, p, at, max).await?;
            if records.is_empty() {
                break;
            }
            at = records.last().map_or(at, |r| r.offset + 1);
            match topic {
                Topic::Requests => {
                    // Directory changes and role definitions, in log order.
                    let mut changes: Vec<DirectoryChange> = Vec::new();
                    for r in &records {
                        match codec::decode(&r.record.value) {
                            Ok(Event::Request(RequestRecord::Directory(d))) => changes.push(d),
                            Ok(Event::Request(RequestRecord::Role(role))) => {
                                store
                                    .apply_directory(
                                        Stage::Fanout,
                                        &std::mem::take(&mut changes),
                                        &[],
                                    )
                                    .await?;
                                store.define_roles(Stage::Fanout, &[role], &[]).await?;
                            }
                            _ => {}
                        }
                    }
                    store
                        .apply_directory(Stage::Fanout, &changes, &[(p, at)])
                        .await?;
                }
                Topic::UserEvents => {
                    let events: Vec<Positioned<UserEvent>> = records
                        .iter()
                        .filter_map(|r| match codec::decode(&r.record.value) {
                            Ok(Event::User(event)) => Some(Positioned {
                                partition: p,
                                offset: r.offset,
                                event,
                            }),
                            _ => None,
                        })
                        .collect();
                    store
                        .apply_user_events(Stage::Inbox, &events, &[(p, at)])
                        .await?;
                }
            }
            applied += records.len() as u64;
            progress.advance(records.len() as u64);
        }
    }
    Ok(applied)
}
