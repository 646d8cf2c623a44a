//! The live hub: one tail of the user-events topic per gateway, fanned out to the sessions of
//! each event's user.
//!
//! The boundary guarantee lives here: [`Hub::register`] returns `live_from`, the hub's position
//! in the user's partition, under the same lock that dispatch holds while it advances positions
//! and hands out events. Every event at or after `live_from` reaches the session's queue; every
//! event before it is the session's to read from the projection and the log (see
//! ARCHITECTURE.md, invariant 10).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::codec::{self, SchemaKind};
use herald_core::model::{Event, UserEvent};
use herald_core::partition::partition_for;
use herald_core::protocol::Close;
use herald_ports::log::{ConsumerEvent, EventLog, StoredRecord, Topic};

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
    positions: Vec<u64>,
    recent: Vec<Recent>,
    /// Bytes of recent records each partition may keep.
    recent_bytes: usize,
    sessions: HashMap<String, Vec<Entry>>,
    next_id: u64,
}

pub struct Hub {
    partitions: u32,
    state: Mutex<State>,
    /// The consumer group of the current tail and its partitions (`None` while it waits).
    assignment: Mutex<(String, Option<Vec<u32>>)>,
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
    /// Starts tailing the log from its current end.
    pub async fn start(
        log: Arc<dyn EventLog>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Hub>, herald_ports::LogError> {
        let partitions = log.partitions(Topic::UserEvents);
        let mut positions = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            positions.push(log.end_offset(Topic::UserEvents, p).await?);
        }
        let recent = positions
            .iter()
            .map(|&p| Recent {
                records: VecDeque::new(),
                bytes: 0,
                complete_from: p,
            })
            .collect();
        let hub = Arc::new(Hub {
            partitions,
            state: Mutex::new(State {
                positions,
                recent,
                recent_bytes: RECENT_BYTES / partitions.max(1) as usize,
                sessions: HashMap::new(),
                next_id: 1,
            }),
            assignment: Mutex::new((String::new(), None)),
        });
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                match h.tail(log.clone(), shutdown.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "live hub lost the log; retrying");
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

    async fn tail(
        &self,
        log: Arc<dyn EventLog>,
        shutdown: CancellationToken,
    ) -> Result<(), herald_ports::LogError> {
        let group = format!("gateway-{}", uuid::Uuid::new_v4().simple());
        *self.assignment.lock().expect("hub lock") = (group.clone(), None);
        tracing::info!(group, "live hub started; waiting for partitions");
        let waiting_since = std::time::Instant::now();
        let mut consumer = log.consumer(Topic::UserEvents, &group).await?;
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                e = consumer.next(HUB_BATCH) => e?,
            };
            match event {
                ConsumerEvent::Assigned(ps) => {
                    let positions = self.state.lock().expect("hub lock").positions.clone();
                    for p in &ps {
                        consumer.seek(*p, positions[*p as usize])?;
                    }
                    tracing::info!(group, partitions = ?ps, waited = ?waiting_since.elapsed(), "live hub assigned");
                    self.assignment.lock().expect("hub lock").1 = Some(ps);
                }
                ConsumerEvent::Revoked(_) => self.assignment.lock().expect("hub lock").1 = None,
                ConsumerEvent::Records(records) => self.dispatch(records),
            }
        }
    }

    /// Hands each record to the sessions of its user. Only records of users with a session
    /// here are decoded (the key says whose a record is), and deliveries, device progress and
    /// connections (which sessions have no use for: each is the echo of something a session
    /// did) are skipped by their schema, undecoded. Runs under the lock that `register` takes, so a session never
    /// misses an event at or after its `live_from`.
    fn dispatch(&self, records: Vec<StoredRecord>) {
        let mut guard = self.state.lock().expect("hub lock");
        let st = &mut *guard;
        for r in records {
            let pos = &mut st.positions[r.partition as usize];
            if r.offset < *pos {
                continue; // already dispatched (a consumer restart re-read it)
            }
            *pos = r.offset + 1;
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
                if entries.is_empty() {
                    st.sessions.remove(&r.record.key);
                }
            }
            let recent = &mut st.recent[r.partition as usize];
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
    }

    /// Up to `max` records of `partition` from offset `from` on, when the hub still holds every
    /// record from there (`None`: read the log).
    pub fn recent(&self, partition: u32, from: u64, max: usize) -> Option<Vec<Arc<RecentRecord>>> {
        let st = self.state.lock().expect("hub lock");
        let recent = st.recent.get(partition as usize)?;
        if from < recent.complete_from {
            return None;
        }
        let start = recent.records.partition_point(|r| r.offset < from);
        Some(recent.records.range(start..).take(max).cloned().collect())
    }

    /// Registers a session of `user` on `device`; an older session of the same device is
    /// kicked with [`Close::Replaced`].
    pub fn register(&self, user: &str, device: &str) -> Registration {
        let partition = partition_for(user, self.partitions);
        let (tx, rx) = queue::bounded(SESSION_LIVE_QUEUE);
        let kick = Arc::new(Kick::default());
        let mut st = self.state.lock().expect("hub lock");
        let id = st.next_id;
        st.next_id += 1;
        let live_from = st.positions[partition as usize];
        let entries = st.sessions.entry(user.to_owned()).or_default();
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
        Registration {
            id,
            rx,
            kick,
            partition,
            live_from,
        }
    }

    pub fn unregister(&self, user: &str, id: u64) {
        let mut st = self.state.lock().expect("hub lock");
        if let Some(entries) = st.sessions.get_mut(user) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                st.sessions.remove(user);
            }
        }
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

    /// The partitions the hub's tail holds, `None` while it waits for them (readiness).
    pub fn assignment(&self) -> Option<Vec<u32>> {
        self.assignment.lock().expect("hub lock").1.clone()
    }

    /// The consumer group of the hub's tail.
    pub fn group(&self) -> String {
        self.assignment.lock().expect("hub lock").0.clone()
    }

    /// The next offset the hub hands out, per partition.
    pub fn positions(&self) -> Vec<u64> {
        self.state.lock().expect("hub lock").positions.clone()
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

    fn hub(partitions: u32, start: u64, recent_bytes: usize) -> Hub {
        Hub {
            partitions,
            state: Mutex::new(State {
                positions: vec![start; partitions as usize],
                recent: (0..partitions)
                    .map(|_| Recent {
                        records: VecDeque::new(),
                        bytes: 0,
                        complete_from: start,
                    })
                    .collect(),
                recent_bytes,
                sessions: HashMap::new(),
                next_id: 1,
            }),
            assignment: Mutex::new((String::new(), None)),
        }
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

    #[test]
    fn recent_records_answer_only_gaps_they_hold_whole() {
        let h = hub(2, 5, RECENT_BYTES);
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

    #[test]
    fn evicted_records_move_the_complete_mark() {
        // Room for two records of 11 bytes (a 1-byte key and 10 bytes of value) per partition.
        let h = hub(1, 0, 22);
        h.dispatch((0..5).map(|o| record(0, o, "u")).collect());
        assert_eq!(offsets(h.recent(0, 3, 100)), Some(vec![3, 4]));
        assert_eq!(offsets(h.recent(0, 2, 100)), None);
        let h = hub(1, 0, RECENT_BYTES);
        h.dispatch(
            (0..RECENT_RECORDS as u64 + 3)
                .map(|o| record(0, o, "u"))
                .collect(),
        );
        assert_eq!(offsets(h.recent(0, 2, 1)), None);
        assert_eq!(offsets(h.recent(0, 3, 1)), Some(vec![3]));
    }
}
