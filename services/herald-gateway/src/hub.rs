//! The live hub: one tail of the user-events topic per gateway, fanned out to the sessions of
//! each event's user.
//!
//! The boundary guarantee lives here: [`Hub::register`] returns `live_from`, the hub's position
//! in the user's partition, under the same lock that dispatch holds while it advances positions
//! and hands out events. Every event at or after `live_from` reaches the session's queue; every
//! event before it is the session's to read from the projection and the log (see
//! ARCHITECTURE.md, invariant 10).

use std::collections::HashMap;
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
    sessions: HashMap<String, Vec<Entry>>,
    next_id: u64,
}

pub struct Hub {
    partitions: u32,
    state: Mutex<State>,
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
        let hub = Arc::new(Hub {
            partitions,
            state: Mutex::new(State {
                positions,
                sessions: HashMap::new(),
                next_id: 1,
            }),
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
                    for p in ps {
                        consumer.seek(p, positions[p as usize])?;
                    }
                }
                ConsumerEvent::Revoked(_) => {}
                ConsumerEvent::Records(records) => self.dispatch(&records),
            }
        }
    }

    /// Hands each record to the sessions of its user. Only records of users with a session
    /// here are decoded (the key says whose a record is), and deliveries, device progress and
    /// connections (which sessions have no use for: each is the echo of something a session
    /// did) are skipped by their schema, undecoded. Runs under the lock that `register` takes, so a session never
    /// misses an event at or after its `live_from`.
    fn dispatch(&self, records: &[StoredRecord]) {
        let mut st = self.state.lock().expect("hub lock");
        for r in records {
            let pos = &mut st.positions[r.partition as usize];
            if r.offset < *pos {
                continue; // already dispatched (a consumer restart re-read it)
            }
            *pos = r.offset + 1;
            let Some(entries) = st.sessions.get_mut(&r.record.key) else {
                continue;
            };
            if matches!(
                codec::Registry::global().peek(&r.record.value),
                Ok((
                    SchemaKind::Delivered | SchemaKind::Connected | SchemaKind::Progress,
                    _
                ))
            ) {
                continue;
            }
            let Ok(Event::User(event)) = codec::decode(&r.record.value) else {
                continue;
            };
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

    pub fn kick_all(&self, close: Close) {
        let st = self.state.lock().expect("hub lock");
        for entries in st.sessions.values() {
            for e in entries {
                e.kick.kick(close);
            }
        }
    }
}
