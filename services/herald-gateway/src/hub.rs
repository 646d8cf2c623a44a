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

/// A record as a connecting session's log gap needs it: whose it is and its bytes.
pub struct RecentRecord {
    pub offset: u64,
    pub key: String,
    pub value: Vec<u8>,
}

/// The latest records of one partition, complete from `complete_from` on: a session whose gap
/// starts there or later reads it here instead of from the log (a burst of connecting sessions
/// would otherwise each read the same partition's records from storage).
struct Recent {
    records: VecDeque<Arc<RecentRecord>>,
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
    reason: Mutex<Option<Close>>,
    notify: Notify,
}

impl Kick {
    pub fn kick(&self, close: Close) {
        let mut r = self.reason.lock().expect("kick lock");
        if r.is_none() {
            *r = Some(close);
        }
        self.notify.notify_one();
    }

    /// Resolves once kicked, with the reason.
    pub async fn kicked(&self) -> Close {
        loop {
            if let Some(c) = *self.reason.lock().expect("kick lock") {
                return c;
            }
            self.notify.notified().await;
        }
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
    /// here are decoded (the key says whose a record is), and deliveries, device progress and
    /// connections (which sessions have no use for: each is the echo of something a session
    /// did) are skipped by their schema, undecoded. Runs under the lock that `register` takes,
    /// so a session never misses an event at or after its `live_from`.
    fn dispatch(&self, records: Vec<StoredRecord>) {
        let mut guard = self.state.lock().expect("hub lock");
        let st = &mut *guard;
        let mut read: Vec<(u32, u64)> = Vec::new();
        for r in records {
            let part = &mut st.parts[r.partition as usize];
            if !part.followed || r.offset < part.position {
                continue; // not followed any more, or already dispatched
            }
            part.position = r.offset + 1;
            match read.last_mut() {
                Some((p, n)) if *p == r.partition => *n += 1,
                _ => read.push((r.partition, 1)),
            }
            if let Some(entries) = st.sessions.get_mut(&r.record.key)
                && !matches!(
                    codec::Registry::global().peek(&r.record.value),
                    Ok((
                        SchemaKind::Delivered | SchemaKind::Connected | SchemaKind::Progress,
                        _
                    ))
                )
                && let Ok(Event::User(event)) = codec::decode(&r.record.value)
            {
                let event = Arc::new(event);
                let (partition, offset) = (r.partition, r.offset);
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
                part.sessions_changed(before, after);
                if after == 0 {
                    st.sessions.remove(&r.record.key);
                }
                if after != before {
                    note_changed(&mut st.changed, &r.record.key);
                }
            }
            let recent = &mut part.recent;
            let record = RecentRecord {
                offset: r.offset,
                key: r.record.key,
                value: r.record.value,
            };
            recent.bytes += record.key.len() + record.value.len();
            recent.records.push_back(Arc::new(record));
            while recent.records.len() > RECENT_RECORDS || recent.bytes > st.recent_bytes {
                let Some(old) = recent.records.pop_front() else {
                    break;
                };
                recent.bytes -= old.key.len() + old.value.len();
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
    pub fn recent(&self, partition: u32, from: u64, max: usize) -> Option<Vec<Arc<RecentRecord>>> {
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
mod tests {
    use herald_ports::log::Record;

    use super::*;

    /// A hub on a fresh embedded log whose partitions are all followed from `start`.
    async fn hub(partitions: u32, start: u64, recent_bytes: usize) -> (Hub, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let log = herald_embedded::EmbeddedLog::open(
            &dir.path().join("log.db"),
            herald_embedded::Access::ReadWrite,
            herald_embedded::LogOptions {
                requests_partitions: None,
                user_partitions: Some(partitions),
            },
        )
        .await
        .unwrap();
        let h = Hub::new(Arc::new(log), recent_bytes * partitions as usize);
        for part in &mut h.state.lock().unwrap().parts {
            part.followed = true;
            part.position = start;
            part.recent = Recent::from(start);
        }
        (h, dir)
    }

    fn record(partition: u32, offset: u64, key: &str) -> StoredRecord {
        StoredRecord {
            topic: Topic::UserEvents,
            partition,
            offset,
            record: Record {
                partition,
                key: key.to_owned(),
                value: vec![0; 10],
                headers: Vec::new(),
                timestamp_ms: 0,
            },
        }
    }

    fn offsets(records: Option<Vec<Arc<RecentRecord>>>) -> Option<Vec<u64>> {
        records.map(|rs| rs.iter().map(|r| r.offset).collect())
    }

    #[tokio::test]
    async fn recent_records_answer_only_gaps_they_hold_whole() {
        let (h, _dir) = hub(2, 5, RECENT_BYTES).await;
        h.dispatch((5..10).map(|o| record(0, o, "u")).collect());
        h.dispatch(vec![record(1, 5, "v")]);
        // From the hub's start on, in order, up to max.
        assert_eq!(offsets(h.recent(0, 5, 3)), Some(vec![5, 6, 7]));
        assert_eq!(offsets(h.recent(0, 8, 100)), Some(vec![8, 9]));
        assert_eq!(offsets(h.recent(1, 5, 100)), Some(vec![5]));
        // At the end: nothing yet, but nothing missed either.
        assert_eq!(offsets(h.recent(0, 10, 100)), Some(vec![]));
        // Before the hub started: the log has to answer.
        assert_eq!(offsets(h.recent(0, 4, 100)), None);
        // A re-read record is not kept twice.
        h.dispatch(vec![record(0, 9, "u")]);
        assert_eq!(offsets(h.recent(0, 9, 100)), Some(vec![9]));
    }

    fn read_by(user: &str, at: i64) -> UserEvent {
        UserEvent::Read(herald_core::model::MarkChange {
            user_id: user.into(),
            device_id: None,
            notification_ids: vec![format!("n{at}")],
            up_to: None,
            at,
        })
    }

    async fn append(log: &dyn EventLog, event: &UserEvent) -> u64 {
        let record =
            herald_ports::records::user_event_record(event, log.partitions(Topic::UserEvents), 0)
                .unwrap();
        log.append(Topic::UserEvents, vec![record]).await.unwrap()[0].offset
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hub_follows_the_partitions_of_its_sessions_and_drops_idle_ones() {
        let (mut h, _dir) = hub(4, 0, RECENT_BYTES).await;
        for part in &mut h.state.get_mut().unwrap().parts {
            *part = Part::new();
        }
        h.linger = Duration::from_millis(300);
        let log = h.log.clone();
        let shutdown = CancellationToken::new();
        let h = Hub::spawn(h, shutdown.clone()).await.unwrap();
        let u = "u-affine";
        let pu = partition_for(u, 4);
        let v = (0..100)
            .map(|i| format!("v{i}"))
            .find(|v| partition_for(v, 4) != pu)
            .unwrap();
        // Before any session, nothing is followed; records appended now are the log's.
        append(log.as_ref(), &read_by(u, 1)).await;
        append(log.as_ref(), &read_by(&v, 1)).await;
        assert_eq!(h.followed(), vec![]);

        // A session follows its user's partition from the partition's end.
        let end = log.end_offset(Topic::UserEvents, pu).await.unwrap();
        let mut reg = h.register(u, "d1").await.unwrap();
        assert_eq!((reg.partition, reg.live_from), (pu, end));
        assert_eq!(h.followed(), vec![(pu, end)]);
        let mine = append(log.as_ref(), &read_by(u, 2)).await;
        append(log.as_ref(), &read_by(&v, 2)).await;
        let got = tokio::time::timeout(Duration::from_secs(30), reg.rx.recv())
            .await
            .expect("the live event within 30 s")
            .unwrap();
        assert_eq!((got.partition, got.offset), (pu, mine));
        // The other user's partition was never read.
        assert_eq!(h.followed().len(), 1);
        assert_eq!(h.followed()[0].0, pu);

        // Idle past the linger: not followed any more.
        h.unregister(u, reg.id);
        wait_until("the idle partition dropped", || h.followed().is_empty()).await;
        assert!(
            h.recent(pu, mine, 10).is_none(),
            "no recent records of a dropped partition"
        );

        // Back again: followed from the new end; what came meanwhile is before `live_from`.
        let meanwhile = append(log.as_ref(), &read_by(u, 3)).await;
        let reg = h.register(u, "d1").await.unwrap();
        assert_eq!(reg.live_from, meanwhile + 1);
        let next = append(log.as_ref(), &read_by(u, 4)).await;
        let mut rx = reg.rx;
        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the live event within 30 s")
            .unwrap();
        assert_eq!(
            got.offset, next,
            "the first live event is the first after live_from"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn evicted_records_move_the_complete_mark() {
        // Room for two records of 11 bytes (a 1-byte key and 10 bytes of value) per partition.
        let (h, _dir) = hub(1, 0, 22).await;
        h.dispatch((0..5).map(|o| record(0, o, "u")).collect());
        assert_eq!(offsets(h.recent(0, 3, 100)), Some(vec![3, 4]));
        assert_eq!(offsets(h.recent(0, 2, 100)), None);
        let (h, _dir) = hub(1, 0, RECENT_BYTES).await;
        h.dispatch(
            (0..RECENT_RECORDS as u64 + 3)
                .map(|o| record(0, o, "u"))
                .collect(),
        );
        assert_eq!(offsets(h.recent(0, 2, 1)), None);
        assert_eq!(offsets(h.recent(0, 3, 1)), Some(vec![3]));
    }
}
