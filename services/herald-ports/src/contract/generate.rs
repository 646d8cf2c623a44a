//! Deterministic generators of realistic event logs for contract and property tests.

use herald_core::model::*;
use herald_core::partition::partition_for;

use crate::projection::Positioned;

/// A small deterministic PRNG (SplitMix64) so suites need no extra dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn added(user: &str, id: &str) -> NotificationAdded {
    NotificationAdded {
        user_id: user.into(),
        notification_id: id.into(),
        event_type: "approval.requested".into(),
        source: "contract".into(),
        payload: format!(r#"{{"id":"{id}"}}"#),
        priority: Priority::Normal,
        collapse_key: None,
        deliver_at: None,
        expires_at: None,
        created_at: 1_700_000_000_000,
        traceparent: None,
        delivery: herald_core::model::Delivery::Live,
    }
}

/// One user's events, placed in that user's partition (of `partitions`) with consecutive
/// offsets from 0.
pub fn placed(user: &str, partitions: u32, events: Vec<UserEvent>) -> Vec<Positioned<UserEvent>> {
    let partition = herald_core::partition::partition_for(user, partitions);
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Positioned {
            partition,
            offset: i as u64,
            event,
        })
        .collect()
}

/// A device's ACKs as its session appends them: by id (`ids`) and cumulative (`up_to`).
pub fn progress(user: &str, device: &str, ids: &[&str], up_to: Option<i64>) -> UserEvent {
    UserEvent::Progress(herald_core::model::DeviceProgress {
        user_id: user.into(),
        device_id: device.into(),
        delivered: vec![],
        acked_ids: ids.iter().map(|s| s.to_string()).collect(),
        acked_up_to: up_to,
        at: 1_700_000_000_000,
    })
}

/// `n` events over `users` users and `partitions` partitions, placed like the real pipeline
/// places them (user → `partition_for`), with per-partition offsets. Mostly additions, then
/// deliveries, ACKs by id and cumulative, reads (by id and up to), unreads, archives, expiries
/// and collapse keys, all referring to rows that exist.
pub fn user_log(seed: u64, n: usize, users: usize, partitions: u32) -> Vec<Positioned<UserEvent>> {
    let mut rng = Rng::new(seed);
    let mut next_offset = vec![0u64; partitions as usize];
    // (user, id, seq) of rows added so far, per user index.
    let mut rows: Vec<Vec<(String, u64)>> = vec![Vec::new(); users];
    let mut out = Vec::with_capacity(n);
    let devices = ["phone", "laptop"];
    for i in 0..n {
        let u = rng.below(users as u64) as usize;
        let user = format!("user-{u}");
        let partition = partition_for(&user, partitions);
        let offset = next_offset[partition as usize];
        let pick = |rng: &mut Rng, rows: &Vec<(String, u64)>| -> Option<(String, u64)> {
            if rows.is_empty() {
                None
            } else {
                Some(rows[rng.below(rows.len() as u64) as usize].clone())
            }
        };
        let roll = rng.below(100);
        let event = if roll >= 98 && rng.chance(50) {
            // The user replaces their preferences (a document of a few rules).
            let rule = |rng: &mut Rng, name: &str| PreferenceRule {
                name: name.into(),
                live: rng.chance(50),
                inbox: rng.chance(50),
            };
            UserEvent::Preferences(PreferencesChanged {
                user_id: user.clone(),
                event_types: vec![rule(&mut rng, "approval.requested")],
                topics: if rng.chance(50) {
                    vec![rule(&mut rng, "incidents"), rule(&mut rng, "news")]
                } else {
                    vec![]
                },
                at: 1_700_000_000_000 + i as i64,
            })
        } else if roll >= 98 {
            // A device connects (a user may exist with no notification yet).
            UserEvent::Connected(DeviceConnected {
                user_id: user.clone(),
                device_id: devices[rng.below(2) as usize].to_string(),
                at: 1_700_000_000_000 + i as i64,
            })
        } else if roll < 45 || rows[u].is_empty() {
            let id = format!("n-{i}");
            let mut a = added(&user, &id);
            if rng.chance(20) {
                a.collapse_key = Some(format!("order-{}", rng.below(3)));
            }
            if rng.chance(10) {
                a.deliver_at = Some(1_700_000_000_000 + rng.below(2) as i64 * 10_000_000_000);
            }
            if rng.chance(10) {
                a.expires_at = Some(1_700_000_000_000 + 1 + rng.below(2) as i64 * 10_000_000_000);
            }
            if rng.chance(10) {
                // The user's preferences at expansion: inbox only, or muted.
                a.delivery = if rng.chance(50) {
                    Delivery::Inbox
                } else {
                    Delivery::Muted
                };
            }
            rows[u].push((id.clone(), offset));
            UserEvent::Added(a)
        } else {
            let (id, seq) = pick(&mut rng, &rows[u]).expect("rows exist");
            let device = devices[rng.below(2) as usize].to_string();
            let at = 1_700_000_000_000 + i as i64;
            match roll {
                45..=54 => UserEvent::Delivered(NotificationDelivered {
                    user_id: user.clone(),
                    device_id: device,
                    notification_id: id,
                    at,
                }),
                55..=62 => UserEvent::Acked(NotificationAcked {
                    user_id: user.clone(),
                    device_id: device,
                    notification_ids: if rng.chance(50) { vec![id] } else { vec![] },
                    up_to: rng.chance(50).then_some(seq as i64),
                    at,
                }),
                63..=69 => UserEvent::Progress(DeviceProgress {
                    user_id: user.clone(),
                    device_id: device,
                    delivered: vec![seq as i64],
                    acked_ids: if rng.chance(50) { vec![id] } else { vec![] },
                    acked_up_to: rng.chance(30).then_some(seq as i64),
                    at,
                }),
                70..=81 => UserEvent::Read(MarkChange {
                    user_id: user.clone(),
                    device_id: Some(device),
                    notification_ids: vec![id],
                    up_to: rng.chance(30).then_some(seq as i64),
                    at,
                }),
                82..=88 => UserEvent::Unread(MarkChange {
                    user_id: user.clone(),
                    device_id: Some(device),
                    notification_ids: vec![id],
                    up_to: None,
                    at,
                }),
                89..=95 => UserEvent::Archived(MarkChange {
                    user_id: user.clone(),
                    device_id: None,
                    notification_ids: vec![id],
                    up_to: None,
                    at,
                }),
                _ => UserEvent::Expired(NotificationExpired {
                    user_id: user.clone(),
                    notification_id: id,
                    at,
                }),
            }
        };
        next_offset[partition as usize] += 1;
        out.push(Positioned {
            partition,
            offset,
            event,
        });
    }
    out
}

/// The reference projection of a positioned log.
pub fn reference(events: &[Positioned<UserEvent>]) -> herald_core::mem::MemProjection {
    herald_core::mem::MemProjection::fold_all(events.iter().map(|p| (p.offset, &p.event)))
}

/// The next offset of each partition after `events`.
pub fn end_offsets(events: &[Positioned<UserEvent>]) -> Vec<(u32, u64)> {
    let mut ends = std::collections::BTreeMap::new();
    for p in events {
        let e = ends.entry(p.partition).or_insert(0);
        *e = (*e).max(p.offset + 1);
    }
    ends.into_iter().collect()
}
