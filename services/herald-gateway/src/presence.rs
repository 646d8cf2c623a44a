//! Presence across gateways: each gateway publishes who is connected to it on the presence bus
//! (`herald_ports::PresenceBus`) and keeps a view of every other gateway's sessions from the
//! bus; `GET /v1/presence` answers from its own sessions and that view.
//!
//! What a gateway publishes, as JSON records keyed by its id (a fresh id per process):
//! - `changes`: the users whose sessions changed, each with the devices connected now (an empty
//!   list: gone), every [`PRESENCE_FLUSH`] when something changed;
//! - `snapshot`: every user and device connected, every `presence_interval` (5 s by default),
//!   in parts of at most [`SNAPSHOT_CHUNK_USERS`] users; a reader replaces what it holds for
//!   that gateway when the last part arrives;
//! - `gone`: when it shuts down.
//!
//! Staleness: a connect or disconnect reaches the other gateways within [`PRESENCE_FLUSH`]
//! plus the bus's latency; a gateway that dies without `gone` drops out of the others' views
//! after three of its intervals; a gateway that just started knows every other gateway's
//! sessions after one interval (its answer says `complete: false` until then). A single-process
//! deployment (the embedded log) has no bus: its own sessions are the whole cluster's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_ports::presence::{MAX_PRESENCE_RECORD_BYTES, PresenceBus, PresenceFeed};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// How often a gateway publishes the changes to its sessions.
pub const PRESENCE_FLUSH: Duration = Duration::from_millis(200);
/// Users per snapshot record.
pub const SNAPSHOT_CHUNK_USERS: usize = 1000;
/// Users in one `changes` record (more go in several).
const CHANGES_CHUNK_USERS: usize = 1000;
/// Other gateways a view holds; records of more are dropped (with a warning).
pub const MAX_PRESENCE_GATEWAYS: usize = 1024;
/// Users a view holds per other gateway; a gateway that reports more is cut short.
pub const MAX_PRESENCE_USERS_PER_GATEWAY: usize = 1_000_000;
/// Devices a view holds per user and gateway.
const MAX_DEVICES: usize = 64;
/// A gateway not heard from for this many of its intervals is gone.
const EXPIRY_INTERVALS: u32 = 3;

#[derive(Debug, Serialize, Deserialize)]
struct UserDevices {
    user: String,
    devices: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Changes {
        gateway: String,
        users: Vec<UserDevices>,
    },
    Snapshot {
        gateway: String,
        interval_ms: u64,
        seq: u64,
        part: u32,
        last: bool,
        users: Vec<UserDevices>,
    },
    Gone {
        gateway: String,
    },
}

/// What a view knows of another gateway.
struct Peer {
    heard: Instant,
    interval: Duration,
    users: HashMap<String, Vec<String>>,
    /// A snapshot being received: its seq and the users so far.
    building: Option<(u64, HashMap<String, Vec<String>>)>,
}

/// One gateway in a presence answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GatewayPresence {
    pub id: String,
    /// Whether this is the gateway that answers.
    pub this: bool,
    pub users: usize,
    /// Milliseconds since the gateway was last heard from (0 for this one).
    pub heard_ms_ago: u64,
}

/// Who is connected to the cluster, as one gateway sees it now.
pub struct ClusterView {
    /// Every connected user with their devices, by user.
    pub online: Vec<(String, Vec<String>)>,
    /// The gateways this one knows of, itself first.
    pub gateways: Vec<GatewayPresence>,
    /// Whether this gateway has read the bus for a whole interval.
    pub complete: bool,
}

/// The cluster's presence as one gateway sees it.
pub struct ClusterPresence {
    id: String,
    interval: Duration,
    bus: Option<Arc<dyn PresenceBus>>,
    started: Instant,
    peers: Mutex<HashMap<String, Peer>>,
}

impl ClusterPresence {
    pub fn new(bus: Option<Arc<dyn PresenceBus>>, interval: Duration) -> ClusterPresence {
        ClusterPresence {
            id: uuid::Uuid::new_v4().simple().to_string(),
            interval,
            bus,
            started: Instant::now(),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// This gateway's id on the bus.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts publishing `hub`'s sessions and reading the other gateways' (no-op without a
    /// bus). Publishes `gone` at `shutdown`.
    pub async fn start(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<(), herald_ports::LogError> {
        let Some(bus) = self.bus.clone() else {
            return Ok(());
        };
        let feed = bus.feed().await?;
        let me = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { me.read(feed, stop).await });
        let me = self.clone();
        tokio::spawn(async move { me.publish(bus, hub, shutdown).await });
        Ok(())
    }

    async fn publish(&self, bus: Arc<dyn PresenceBus>, hub: Arc<Hub>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PRESENCE_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot: Option<Instant> = None;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let changes = hub.take_presence_changes();
            let snapshot_due = last_snapshot.is_none_or(|t| t.elapsed() >= self.interval);
            let records = match changes {
                Some(changes) if !snapshot_due => changes
                    .chunks(CHANGES_CHUNK_USERS)
                    .map(|chunk| Wire::Changes {
                        gateway: self.id.clone(),
                        users: user_devices(chunk),
                    })
                    .collect(),
                // Due, or more changes than the hub could list: all of it.
                _ => {
                    seq += 1;
                    last_snapshot = Some(Instant::now());
                    self.snapshot(&hub, seq)
                }
            };
            for record in records {
                if let Err(e) = self.send(bus.as_ref(), &record).await {
                    tracing::warn!(error = %e, "presence: publishing failed; the next snapshot repairs it");
                    last_snapshot = None;
                    break;
                }
            }
        }
        let gone = Wire::Gone {
            gateway: self.id.clone(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send(bus.as_ref(), &gone)).await;
    }

    fn snapshot(&self, hub: &Hub, seq: u64) -> Vec<Wire> {
        let online = hub.online();
        let chunks: Vec<&[(String, Vec<String>)]> = if online.is_empty() {
            vec![&[]]
        } else {
            online.chunks(SNAPSHOT_CHUNK_USERS).collect()
        };
        let parts = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| Wire::Snapshot {
                gateway: self.id.clone(),
                interval_ms: self.interval.as_millis() as u64,
                seq,
                part: i as u32,
                last: i + 1 == parts,
                users: user_devices(chunk),
            })
            .collect()
    }

    async fn send(
        &self,
        bus: &dyn PresenceBus,
        record: &Wire,
    ) -> Result<(), herald_ports::LogError> {
        let value = serde_json::to_vec(record).expect("presence records serialize");
        if value.len() > MAX_PRESENCE_RECORD_BYTES {
            return Err(herald_ports::LogError::RecordTooLarge {
                size: value.len(),
                max: MAX_PRESENCE_RECORD_BYTES,
            });
        }
        bus.publish(&self.id, value).await
    }

    async fn read(&self, mut feed: Box<dyn PresenceFeed>, shutdown: CancellationToken) {
        loop {
            let records = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = feed.next() => r,
            };
            match records {
                Ok(records) => {
                    for r in records {
                        match serde_json::from_slice::<Wire>(&r) {
                            Ok(w) => self.apply(w),
                            Err(e) => {
                                tracing::warn!(error = %e, "presence: a record no gateway of this version wrote; skipped")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence: reading the bus failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    fn apply(&self, w: Wire) {
        let gateway = match &w {
            Wire::Changes { gateway, .. }
            | Wire::Snapshot { gateway, .. }
            | Wire::Gone { gateway } => gateway,
        };
        if *gateway == self.id {
            return;
        }
        let mut peers = self.peers.lock().expect("presence lock");
        if let Wire::Gone { gateway } = &w {
            peers.remove(gateway);
            return;
        }
        if !peers.contains_key(gateway) && peers.len() >= MAX_PRESENCE_GATEWAYS {
            tracing::warn!(
                gateway,
                "presence: more than {MAX_PRESENCE_GATEWAYS} gateways; ignoring this one"
            );
            return;
        }
        let peer = peers.entry(gateway.clone()).or_insert_with(|| Peer {
            heard: Instant::now(),
            interval: self.interval,
            users: HashMap::new(),
            building: None,
        });
        peer.heard = Instant::now();
        match w {
            Wire::Changes { users, .. } => {
                for u in users {
                    set(&mut peer.users, u.user.clone(), u.devices.clone());
                    if let Some((_, b)) = &mut peer.building {
                        set(b, u.user, u.devices);
                    }
                }
            }
            Wire::Snapshot {
                interval_ms,
                seq,
                part,
                last,
                users,
                ..
            } => {
                peer.interval = Duration::from_millis(interval_ms.max(100));
                if part == 0 {
                    peer.building = Some((seq, HashMap::new()));
                }
                match &mut peer.building {
                    Some((s, b)) if *s == seq => {
                        for u in users {
                            set(b, u.user, u.devices);
                        }
                    }
                    // A part of a snapshot whose start we missed: wait for the next one.
                    _ => return,
                }
                if last && let Some((_, b)) = peer.building.take() {
                    peer.users = b;
                }
            }
            Wire::Gone { .. } => {}
        }
    }

    /// Every connected user with their devices over the cluster (`hub`: this gateway's own
    /// sessions), the gateways it knows, and whether the view is complete (this gateway has
    /// read the bus for a whole interval).
    pub fn cluster(&self, hub: &Hub) -> ClusterView {
        let own = hub.online();
        let mut gateways = vec![GatewayPresence {
            id: self.id.clone(),
            this: true,
            users: own.len(),
            heard_ms_ago: 0,
        }];
        let mut all: BTreeMap<String, BTreeSet<String>> = own
            .into_iter()
            .map(|(u, ds)| (u, ds.into_iter().collect()))
            .collect();
        let mut peers = self.peers.lock().expect("presence lock");
        peers.retain(|_, p| p.heard.elapsed() < p.interval * EXPIRY_INTERVALS);
        for (id, p) in peers.iter() {
            gateways.push(GatewayPresence {
                id: id.clone(),
                this: false,
                users: p.users.len(),
                heard_ms_ago: p.heard.elapsed().as_millis() as u64,
            });
            for (u, ds) in &p.users {
                all.entry(u.clone()).or_default().extend(ds.iter().cloned());
            }
        }
        gateways[1..].sort_by(|a, b| a.id.cmp(&b.id));
        let complete =
            self.bus.is_none() || self.started.elapsed() >= self.interval + PRESENCE_FLUSH;
        ClusterView {
            online: all
                .into_iter()
                .map(|(u, ds)| (u, ds.into_iter().collect()))
                .collect(),
            gateways,
            complete,
        }
    }
}

fn user_devices(users: &[(String, Vec<String>)]) -> Vec<UserDevices> {
    users
        .iter()
        .map(|(user, devices)| UserDevices {
            user: user.clone(),
            devices: devices.clone(),
        })
        .collect()
}

/// Sets (or, with no devices, removes) a user's devices, within the view's bounds.
fn set(users: &mut HashMap<String, Vec<String>>, user: String, mut devices: Vec<String>) {
    if devices.is_empty() {
        users.remove(&user);
        return;
    }
    if users.len() >= MAX_PRESENCE_USERS_PER_GATEWAY && !users.contains_key(&user) {
        return;
    }
    devices.truncate(MAX_DEVICES);
    users.insert(user, devices);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ud(user: &str, devices: &[&str]) -> UserDevices {
        UserDevices {
            user: user.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn snapshot(seq: u64, part: u32, last: bool, users: Vec<UserDevices>) -> Wire {
        Wire::Snapshot {
            gateway: "g2".into(),
            interval_ms: 1000,
            seq,
            part,
            last,
            users,
        }
    }

    fn users_of(p: &ClusterPresence, gateway: &str) -> BTreeMap<String, Vec<String>> {
        let peers = p.peers.lock().unwrap();
        peers
            .get(gateway)
            .map(|peer| peer.users.clone().into_iter().collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_view_follows_snapshots_changes_and_goodbyes() {
        let p = ClusterPresence::new(None, Duration::from_secs(1));
        // A snapshot counts once its last part is in; changes apply meanwhile too.
        p.apply(snapshot(1, 0, false, vec![ud("a", &["phone"])]));
        assert!(users_of(&p, "g2").is_empty());
        p.apply(Wire::Changes {
            gateway: "g2".into(),
            users: vec![ud("b", &["laptop"])],
        });
        p.apply(snapshot(1, 1, true, vec![ud("c", &["tv"])]));
        let want: BTreeMap<String, Vec<String>> = [
            ("a".to_owned(), vec!["phone".to_owned()]),
            ("b".to_owned(), vec!["laptop".to_owned()]),
            ("c".to_owned(), vec!["tv".to_owned()]),
        ]
        .into();
        assert_eq!(users_of(&p, "g2"), want);
        // A change with no devices: gone. A part of a snapshot whose start was missed changes
        // nothing; the next whole snapshot replaces everything.
        p.apply(Wire::Changes {
            gateway: "g2".into(),
            users: vec![ud("a", &[])],
        });
        p.apply(snapshot(2, 1, true, vec![ud("x", &["y"])]));
        assert_eq!(users_of(&p, "g2").len(), 2);
        p.apply(snapshot(3, 0, true, vec![ud("d", &["watch"])]));
        assert_eq!(users_of(&p, "g2").keys().collect::<Vec<_>>(), vec!["d"]);
        // Its own records are not a peer's; `gone` removes the peer.
        p.apply(Wire::Changes {
            gateway: p.id().to_owned(),
            users: vec![ud("me", &["self"])],
        });
        assert!(!p.peers.lock().unwrap().contains_key(p.id()));
        p.apply(Wire::Gone {
            gateway: "g2".into(),
        });
        assert!(p.peers.lock().unwrap().is_empty());
    }

    #[test]
    fn records_keep_their_shape_on_the_wire() {
        let w = Wire::Changes {
            gateway: "g".into(),
            users: vec![ud("u", &["d"])],
        };
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"kind":"changes","gateway":"g","users":[{"user":"u","devices":["d"]}]}"#
        );
    }
}
