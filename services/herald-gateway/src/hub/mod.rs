//! The live hub: one tail of the user-events topic per gateway, following only the partitions
//! of the users it has sessions for, fanned out to the sessions of each event's user.
//!
//! The boundary guarantee lives here: [`Hub::register`] returns `live_from`, the hub's position
//! in the user's partition, under the same lock that dispatch holds while it advances positions
//! and hands out events. Every event at or after `live_from` reaches the session's queue; every
//! event before it is the session's to read from the projection and the log (see
//! ARCHITECTURE.md, invariant 10).
//!
//! Partition affinity: a partition is followed from the moment a session of one of its users
//! registers (from the partition's end then) until [`FOLLOW_LINGER`] after its last session
//! left. A gateway that the load balancer sends the users of a share of the partitions reads
//! only that share of the log (docs/operations.md, "Running a cluster"); any gateway still
//! serves any user.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use herald_core::codec::{self, SchemaKind};
use herald_core::model::{Event, UserEvent};
use herald_core::partition::partition_for;
use herald_core::protocol::Close;
use herald_ports::log::{EventLog, LogError, LogTail, StoredRecord, Topic};
use herald_ports::telemetry;

use crate::queue::{self, TrySendError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Live events that may wait for one session; more makes it a slow consumer.
pub const SESSION_LIVE_QUEUE: usize = 1024;
/// Records the hub takes from the log per batch.
const HUB_BATCH: usize = 2048;
/// Recent records the hub keeps per partition for the log gaps of connecting sessions.
pub const RECENT_RECORDS: usize = 4096;
/// Bytes of recent records (keys and values) the hub keeps, over all partitions; each
/// partition gets an equal share.
pub const RECENT_BYTES: usize = 16 * 1024 * 1024;
/// How long the hub keeps following a partition after its last session there ended, so a
/// device that reconnects (or its neighbour) finds the partition warm.
pub const FOLLOW_LINGER: Duration = Duration::from_secs(30);
/// Users whose sessions changed that the hub remembers for presence (`take_presence_changes`);
/// past this it forgets them and says so, and presence publishes a whole snapshot instead.
pub const MAX_PRESENCE_CHANGES: usize = 100_000;
/// How often the hub looks for partitions to stop following.
const LINGER_CHECK: Duration = Duration::from_secs(1);

/// What a record kept in [`Recent`] counts against the hub's recent bytes: its key, value and
/// headers.
fn record_bytes(r: &StoredRecord) -> usize {
    let headers: usize = r
        .record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    r.record.key.len() + r.record.value.len() + headers
}

/// The latest records of one partition, complete from `complete_from` on: a session whose gap
/// starts there or later reads it here instead of from the log (a burst of connecting sessions
/// would otherwise each read the same partition's records from storage).
struct Recent {
    records: VecDeque<StoredRecord>,
    bytes: usize,
    complete_from: u64,
}

impl Recent {
    fn from(offset: u64) -> Recent {
        Recent {
            records: VecDeque::new(),
            bytes: 0,
            complete_from: offset,
        }
    }
}

/// One partition of the user-events topic as the hub sees it.
struct Part {
    /// Whether the hub follows the partition (it has sessions there, or had within
    /// [`FOLLOW_LINGER`]).
    followed: bool,
    /// Bumped each time the partition is followed anew; the tail task follows it again (from
    /// `position`) when it sees a generation it has not applied.
    generation: u64,
    /// The next offset the hub hands out.
    position: u64,
    /// Registered sessions of the partition's users.
    sessions: usize,
    /// Since when the partition has had no session.
    idle_since: Option<Instant>,
    recent: Recent,
}

impl Part {
    fn new() -> Part {
        Part {
            followed: false,
            generation: 0,
            position: 0,
            sessions: 0,
            idle_since: None,
            recent: Recent::from(0),
        }
    }

    fn sessions_changed(&mut self, before: usize, after: usize) {
        self.sessions = self.sessions + after - before;
        if self.sessions == 0 {
            self.idle_since.get_or_insert_with(Instant::now);
        } else {
            self.idle_since = None;
        }
    }
}

#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub partition: u32,
    pub offset: u64,
    pub event: Arc<UserEvent>,
}

/// A request to end a session, with the close it should send.
#[derive(Default)]
pub struct Kick {
    /// The reason, once kicked, and the session's task waiting for it.
    state: Mutex<(Option<Close>, Option<Waker>)>,
}

impl Kick {
    pub fn kick(&self, close: Close) {
        let waiting = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.0.get_or_insert(close);
            st.1.take()
        };
        if let Some(w) = waiting {
            w.wake();
        }
    }

    /// The reason, if kicked already.
    pub fn reason(&self) -> Option<Close> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Ready once kicked, with the reason (polled: an idle session keeps no future for it).
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Close> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = st.0 {
            return Poll::Ready(c);
        }
        if !st.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.1 = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Resolves once kicked, with the reason.
    pub async fn kicked(&self) -> Close {
        std::future::poll_fn(|cx| self.poll_kicked(cx)).await
    }
}

struct Entry {
    id: u64,
    device_id: String,
    tx: queue::Sender<LiveEvent>,
    kick: Arc<Kick>,
}

struct State {
    parts: Vec<Part>,
    /// Bytes of recent records each partition may keep.
    recent_bytes: usize,
    sessions: HashMap<String, Vec<Entry>>,
    next_id: u64,
    /// Users whose sessions changed since presence last looked (`None`: too many to list).
    changed: Option<HashSet<String>>,
    /// Whether the tail is open (`Err`: why not), for readiness.
    tail: Result<(), String>,
}

/// Hands `event` (at `offset` of partition `part_ix`) to each session of `user`; a session whose
/// queue is full is kicked as a slow consumer, and a closed one is dropped.
fn hand_out(st: &mut State, part_ix: usize, user: &str, offset: u64, event: Arc<UserEvent>) {
    let Some(entries) = st.sessions.get_mut(user) else {
        return;
    };
    let partition = part_ix as u32;
    let before = entries.len();
    entries.retain(|e| {
        let live = LiveEvent {
            partition,
            offset,
            event: event.clone(),
        };
        match e.tx.try_send(live) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                e.kick.kick(Close::SlowConsumer);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    });
    let after = entries.len();
    st.parts[part_ix].sessions_changed(before, after);
    if after == 0 {
        st.sessions.remove(user);
    }
    if after != before {
        note_changed(&mut st.changed, user);
    }
}

/// Notes that `user`'s sessions changed (for presence), forgetting all when there are too many.
fn note_changed(changed: &mut Option<HashSet<String>>, user: &str) {
    if let Some(users) = changed {
        if users.len() >= MAX_PRESENCE_CHANGES {
            *changed = None;
        } else if !users.contains(user) {
            users.insert(user.to_owned());
        }
    }
}

pub struct Hub {
    log: Arc<dyn EventLog>,
    partitions: u32,
    state: Mutex<State>,
    /// Wakes the tail task when a partition is to be followed.
    follow: Notify,
    /// How long an idle partition stays followed ([`FOLLOW_LINGER`]).
    linger: Duration,
}

/// What a session gets when it registers.
pub struct Registration {
    pub id: u64,
    pub rx: queue::Receiver<LiveEvent>,
    pub kick: Arc<Kick>,
    pub partition: u32,
    /// Every event of the partition at or after this offset will arrive on `rx`.
    pub live_from: u64,
}

impl Hub {
    fn new(log: Arc<dyn EventLog>, recent_bytes: usize) -> Hub {
        let partitions = log.partitions(Topic::UserEvents);
        Hub {
            log,
            partitions,
            state: Mutex::new(State {
                parts: (0..partitions).map(|_| Part::new()).collect(),
                recent_bytes: recent_bytes / partitions.max(1) as usize,
                sessions: HashMap::new(),
                next_id: 1,
                changed: Some(HashSet::new()),
                tail: Err("the tail has not opened yet".into()),
            }),
            follow: Notify::new(),
            linger: FOLLOW_LINGER,
        }
    }

    /// Opens the tail (following nothing until sessions register) and runs it until `shutdown`.
    pub async fn start(
        log: Arc<dyn EventLog>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Hub>, LogError> {
        Self::spawn(Hub::new(log, RECENT_BYTES), shutdown).await
    }

    async fn spawn(hub: Hub, shutdown: CancellationToken) -> Result<Arc<Hub>, LogError> {
        let log = hub.log.clone();
        let hub = Arc::new(hub);
        let mut first = Some(log.tail(Topic::UserEvents).await?);
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                let tail = match first.take() {
                    Some(t) => Ok(t),
                    None => h.log.tail(Topic::UserEvents).await,
                };
                let result = match tail {
                    Ok(tail) => h.run(tail, shutdown.clone()).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "live hub lost the log; retrying");
                        h.state.lock().expect("hub lock").tail = Err(e.to_string());
                        h.kick_all(Close::InternalError);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Ok(hub)
    }

    async fn run(
        &self,
        mut tail: Box<dyn LogTail>,
        shutdown: CancellationToken,
    ) -> Result<(), LogError> {
        // The generation of each partition the tail follows (`None`: not followed).
        let mut applied: Vec<Option<u64>> = vec![None; self.partitions as usize];
        self.state.lock().expect("hub lock").tail = Ok(());
        let mut linger = tokio::time::interval(LINGER_CHECK);
        loop {
            self.reconcile(tail.as_mut(), &mut applied)?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.follow.notified() => {}
                _ = linger.tick() => {}
                records = tail.next(HUB_BATCH) => self.dispatch(records?),
            }
        }
    }

    /// Makes the tail follow what the partitions say: newly followed ones from their position,
    /// and none that has been idle for [`FOLLOW_LINGER`] (those stop being followed here, under
    /// the lock `register` takes, so a session never registers on a partition about to be
    /// dropped).
    fn reconcile(
        &self,
        tail: &mut dyn LogTail,
        applied: &mut [Option<u64>],
    ) -> Result<(), LogError> {
        let mut st = self.state.lock().expect("hub lock");
        let mut followed = 0;
        for (p, part) in st.parts.iter_mut().enumerate() {
            if part.followed
                && part.sessions == 0
                && part.idle_since.is_some_and(|t| t.elapsed() >= self.linger)
            {
                part.followed = false;
                part.recent = Recent::from(part.position);
            }
            match (part.followed, applied[p]) {
                (true, Some(g)) if g == part.generation => {}
                (true, _) => {
                    tail.follow(p as u32, part.position)?;
                    applied[p] = Some(part.generation);
                    tracing::debug!(partition = p, from = part.position, "live hub follows");
                }
                (false, Some(_)) => {
                    tail.unfollow(p as u32)?;
                    applied[p] = None;
                    tracing::debug!(partition = p, "live hub stopped following (idle)");
                }
                (false, None) => {}
            }
            followed += usize::from(part.followed);
        }
        telemetry::hub_partitions_followed(followed);
        Ok(())
    }

    /// Hands each record to the sessions of its user. Only records of users with a session
    /// here are decoded (the key says whose a record is; a notification added for several
    /// users is decoded once, and handed to those of its recipients with a session here as
    /// their own `Added`), and deliveries, device progress and
    /// connections (which sessions have no use for: each is the echo of something a session
    /// did) are skipped by their schema, undecoded. Runs under the lock that `register` takes,
    /// so a session never misses an event at or after its `live_from`.
    fn dispatch(&self, records: Vec<StoredRecord>) {
        let mut guard = self.state.lock().expect("hub lock");
        let st = &mut *guard;
        let mut read: Vec<(u32, u64)> = Vec::new();
        for r in records {
            let part_ix = r.partition as usize;
            let part = &mut st.parts[part_ix];
            if !part.followed || r.offset < part.position {
                continue; // not followed any more, or already dispatched
            }
            part.position = r.offset + 1;
            match read.last_mut() {
                Some((p, n)) if *p == r.partition => *n += 1,
                _ => read.push((r.partition, 1)),
            }
            let kind = codec::Registry::global()
                .peek(&r.record.value)
                .map(|(kind, _)| kind);
            if matches!(kind, Ok(SchemaKind::UsersAdded)) {
                // A notification for several users: decoded once, and each recipient with a
                // session here gets its own `Added`.
                if let Ok(Event::UsersAdded(many)) = codec::decode(&r.record.value) {
                    for recipient in &many.recipients {
                        // A recipient of another partition would be a corrupt record: its
                        // sessions follow that partition, not this one.
                        if st.sessions.contains_key(&recipient.user_id)
                            && partition_for(&recipient.user_id, self.partitions) == r.partition
                        {
                            let event = Arc::new(UserEvent::Added(many.added(recipient)));
                            hand_out(st, part_ix, &recipient.user_id, r.offset, event);
                        }
                    }
                }
            } else if st.sessions.contains_key(&r.record.key)
                && !matches!(
                    kind,
                    Ok(SchemaKind::Delivered | SchemaKind::Connected | SchemaKind::Progress)
                )
                && let Ok(Event::User(event)) = codec::decode(&r.record.value)
            {
                hand_out(st, part_ix, &r.record.key, r.offset, Arc::new(event));
            }
            let part = &mut st.parts[part_ix];
            let recent = &mut part.recent;
            recent.bytes += record_bytes(&r);
            recent.records.push_back(r);
            while recent.records.len() > RECENT_RECORDS || recent.bytes > st.recent_bytes {
                let Some(old) = recent.records.pop_front() else {
                    break;
                };
                recent.bytes -= record_bytes(&old);
                recent.complete_from = old.offset + 1;
            }
        }
        drop(guard);
        for (p, n) in read {
            telemetry::hub_records_read(p, n);
        }
    }

    /// Up to `max` records of `partition` from offset `from` on, when the hub still holds every
    /// record from there (`None`: read the log).
    pub fn recent(&self, partition: u32, from: u64, max: usize) -> Option<Vec<StoredRecord>> {
        let st = self.state.lock().expect("hub lock");
        let part = st.parts.get(partition as usize)?;
        if !part.followed || from < part.recent.complete_from {
            return None;
        }
        let records = &part.recent.records;
        let start = records.partition_point(|r| r.offset < from);
        Some(records.range(start..).take(max).cloned().collect())
    }

    /// Registers a session of `user` on `device`; an older session of the same device is
    /// kicked with [`Close::Replaced`]. The user's partition is followed from here on (from its
    /// end, read from the log, if it was not followed yet).
    pub async fn register(&self, user: &str, device: &str) -> Result<Registration, LogError> {
        let partition = partition_for(user, self.partitions);
        let followed = self.state.lock().expect("hub lock").parts[partition as usize].followed;
        let end = if followed {
            None
        } else {
            Some(self.log.end_offset(Topic::UserEvents, partition).await?)
        };
        let (tx, rx) = queue::bounded(SESSION_LIVE_QUEUE);
        let kick = Arc::new(Kick::default());
        let mut guard = self.state.lock().expect("hub lock");
        let st = &mut *guard;
        let part = &mut st.parts[partition as usize];
        if !part.followed {
            // Followed since we looked (by another session), or lingering then dropped: either
            // way `end` was read after the partition was last followed, so it is no older.
            let end = match end {
                Some(end) => end.max(part.position),
                None => part.position,
            };
            part.followed = true;
            part.generation += 1;
            part.position = end;
            part.recent = Recent::from(end);
            self.follow.notify_one();
        }
        let id = st.next_id;
        st.next_id += 1;
        let live_from = part.position;
        let entries = st.sessions.entry(user.to_owned()).or_default();
        let before = entries.len();
        entries.retain(|e| {
            if e.device_id == device {
                e.kick.kick(Close::Replaced);
                false
            } else {
                true
            }
        });
        entries.push(Entry {
            id,
            device_id: device.to_owned(),
            tx,
            kick: kick.clone(),
        });
        part.sessions_changed(before, entries.len());
        note_changed(&mut st.changed, user);
        Ok(Registration {
            id,
            rx,
            kick,
            partition,
            live_from,
        })
    }

    pub fn unregister(&self, user: &str, id: u64) {
        let mut guard = self.state.lock().expect("hub lock");
        let st = &mut *guard;
        if let Some(entries) = st.sessions.get_mut(user) {
            let before = entries.len();
            entries.retain(|e| e.id != id);
            let after = entries.len();
            st.parts[partition_for(user, self.partitions) as usize].sessions_changed(before, after);
            if after == 0 {
                st.sessions.remove(user);
            }
            if after != before {
                note_changed(&mut st.changed, user);
            }
        }
    }

    /// The users whose sessions changed since the last call, each with the devices connected
    /// now (none: gone), or `None` when there were more than [`MAX_PRESENCE_CHANGES`] (then
    /// [`online`](Self::online) says who is here).
    pub fn take_presence_changes(&self) -> Option<Vec<(String, Vec<String>)>> {
        let mut st = self.state.lock().expect("hub lock");
        let changed = st.changed.replace(HashSet::new())?;
        Some(
            changed
                .into_iter()
                .map(|u| {
                    let devices = st
                        .sessions
                        .get(&u)
                        .map(|es| es.iter().map(|e| e.device_id.clone()).collect())
                        .unwrap_or_default();
                    (u, devices)
                })
                .collect(),
        )
    }

    /// Connected users and their devices (presence).
    pub fn online(&self) -> Vec<(String, Vec<String>)> {
        let st = self.state.lock().expect("hub lock");
        let mut out: Vec<(String, Vec<String>)> = st
            .sessions
            .iter()
            .map(|(u, es)| (u.clone(), es.iter().map(|e| e.device_id.clone()).collect()))
            .collect();
        out.sort();
        out
    }

    /// Whether the tail is open (`Err`: why not), for readiness.
    pub fn tail_status(&self) -> Result<(), String> {
        self.state.lock().expect("hub lock").tail.clone()
    }

    /// The followed partitions and the next offset the hub hands out in each.
    pub fn followed(&self) -> Vec<(u32, u64)> {
        let st = self.state.lock().expect("hub lock");
        st.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.followed)
            .map(|(i, p)| (i as u32, p.position))
            .collect()
    }

    pub fn kick_all(&self, close: Close) {
        let st = self.state.lock().expect("hub lock");
        for entries in st.sessions.values() {
            for e in entries {
                e.kick.kick(close);
            }
        }
    }
}

#[cfg(test)]
mod tests;
