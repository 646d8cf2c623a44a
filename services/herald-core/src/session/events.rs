//! Events of the user's partition (from the log gap or live), offers, and what settles a
//! notification.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::*;

impl Session {
    pub(super) fn live(
        &mut self,
        offset: u64,
        event: Arc<UserEvent>,
        io: Io,
        out: &mut Out<'_>,
    ) -> Result<(), Ending> {
        // ACKs and deliveries only settle what was sent; they need no ordering against the
        // replay (and holding them would fill the hold with a replay's own echo). Anything else
        // waits behind the replay, and behind the events held before it.
        if (self.replaying() || !self.held.is_empty())
            && !matches!(*event, UserEvent::Acked(_) | UserEvent::Delivered(_))
        {
            let bytes = event_bytes(&event);
            if self.held.len() >= self.cfg.max_held
                || (!self.held.is_empty()
                    && self.held_bytes.saturating_add(bytes) > self.cfg.max_held_bytes)
            {
                return Err(Ending::new(
                    Close::SlowConsumer,
                    "too many live events waiting behind the replay",
                ));
            }
            self.held_bytes += bytes;
            self.held.push_back((offset, event));
            return Ok(());
        }
        self.event(offset, &event, true, io, out)
    }

    /// Settles a notification by id, whatever seq it came with.
    pub(super) fn settle_id(&mut self, id: &str) {
        if let Some(seq) = forget(&mut self.ids, &mut self.recent, self.cfg.recent_ids, id) {
            self.delivery.settle(seq);
        }
    }

    /// The device has processed these ids and everything up to `up_to`: settle them, and never
    /// offer them again in this session, even if a replay read finds them later (the projection
    /// may not have applied the ACK yet).
    ///
    /// `acked_at` is when this device's own ACK frame came (its round trip is measured, and
    /// it shows how far the device has read); `None` for ACKs read back from the log.
    pub(super) fn processed(&mut self, ids: &[String], up_to: Option<u64>, acked_at: Option<i64>) {
        for id in ids {
            let held = forget(&mut self.ids, &mut self.recent, self.cfg.recent_ids, id);
            if let Some(seq) = held {
                match acked_at {
                    Some(now) => self.delivery.ack(seq, now),
                    None => self.delivery.settle(seq),
                };
            }
            if !self.recent.contains(id) {
                self.recent.insert(id.clone(), self.cfg.recent_ids);
            }
        }
        if let Some(u) = up_to {
            let (ids, recent, cap) = (&mut self.ids, &mut self.recent, self.cfg.recent_ids);
            let forget_row = |row: Arc<InboxRow>| {
                forget(ids, recent, cap, &row.notification_id);
            };
            match acked_at {
                Some(now) => self.delivery.ack_through(u, now, forget_row),
                None => self.delivery.settle_through(u, forget_row),
            };
            self.delivery.skip_through(u);
        }
    }

    pub(super) fn offer(&mut self, row: Arc<InboxRow>) -> Result<(), Ending> {
        let seq = row.seq;
        if !row.live {
            // The user's preferences keep it off their devices (it is in the inbox).
            return Ok(());
        }
        if self.ids.contains_key(&row.notification_id) || self.recent.contains(&row.notification_id)
        {
            // A repeated expansion of a notification this session already has: the projection
            // keeps the first seq (invariant 4), and so does the device.
            return Ok(());
        }
        match self.delivery.offer(seq, row.clone()) {
            Offer::Queued => {
                self.ids.insert(row.notification_id.clone(), seq);
                if self.replaying() {
                    self.replay_high = Some(self.replay_high.map_or(seq, |h| h.max(seq)));
                }
                Ok(())
            }
            Offer::Duplicate => Ok(()),
            Offer::Overflow => Err(Ending::new(Close::SlowConsumer, "delivery queue full")),
        }
    }

    pub(super) fn cursor(&self, seq: u64) -> String {
        Cursor {
            epoch: self.epoch,
            seq,
        }
        .to_string()
    }

    /// An event of this user's partition, from the log gap (`live = false`) or live.
    pub(super) fn event(
        &mut self,
        offset: u64,
        ev: &UserEvent,
        live: bool,
        io: Io,
        out: &mut Out<'_>,
    ) -> Result<(), Ending> {
        if ev.user_id() != self.user {
            return Ok(());
        }
        match ev {
            UserEvent::Added(_) if offset < self.projection_applied => {
                // The hub was behind the projection when this session subscribed
                // (`live_from < projection_applied`): the pending rows were read from a
                // projection that holds this notification, so it was offered then if it is
                // still pending for this device, and must not be if it is not (acknowledged).
            }
            UserEvent::Added(a) => {
                let row = added_row(a, offset);
                // Not live (the user's preferences): in the inbox, never pushed.
                if row.live && row.due(io.now_ms) {
                    self.offer(Arc::new(row))?;
                }
            }
            UserEvent::Acked(a) if a.device_id == self.device => {
                self.echoed_acks(offset, &a.notification_ids, a.up_to);
            }
            UserEvent::Progress(p) if p.device_id == self.device => {
                self.echoed_acks(offset, &p.acked_ids, p.acked_up_to);
            }
            UserEvent::Read(m)
            | UserEvent::Unread(m)
            | UserEvent::Archived(m)
            | UserEvent::Unarchived(m) => {
                if matches!(ev, UserEvent::Archived(_)) {
                    for id in &m.notification_ids {
                        self.settle_id(id);
                    }
                }
                if live && m.device_id.as_deref() != Some(self.device.as_str()) {
                    out.frame(ServerFrame::Mark {
                        kind: ev.kind().to_owned(),
                        ids: m.notification_ids.clone(),
                        up_to: m
                            .up_to
                            .and_then(|u| u64::try_from(u).ok())
                            .map(|seq| self.cursor(seq)),
                        device_id: m.device_id.clone(),
                        cursor: self.cursor(offset),
                    });
                }
            }
            UserEvent::Expired(x) => {
                self.settle_id(&x.notification_id);
                if live {
                    out.frame(ServerFrame::Mark {
                        kind: "expired".into(),
                        ids: vec![x.notification_id.clone()],
                        up_to: None,
                        device_id: None,
                        cursor: self.cursor(offset),
                    });
                }
            }
            UserEvent::Acked(_)
            | UserEvent::Delivered(_)
            | UserEvent::Connected(_)
            | UserEvent::Progress(_)
            | UserEvent::Preferences(_) => {}
        }
        Ok(())
    }

    /// This device's ACKs read back from the log (sent over HTTP, or by an earlier session),
    /// clamped like the fold: an ACK covers only what precedes it in the log.
    fn echoed_acks(&mut self, offset: u64, ids: &[String], up_to: Option<i64>) {
        let up_to = match (
            up_to.and_then(|u| u64::try_from(u).ok()),
            offset.checked_sub(1),
        ) {
            (Some(up_to), Some(last)) => Some(up_to.min(last)),
            _ => None,
        };
        self.processed(ids, up_to, None);
    }

    /// Forgets what delivery gave up on after its last redelivery (left for the next resume),
    /// as if settled: `ids` holds only what is queued or in flight, and a repeat of it is not
    /// offered again in this session.
    pub(super) fn forget_given_up(&mut self) {
        for row in self.delivery.take_given_up() {
            forget(
                &mut self.ids,
                &mut self.recent,
                self.cfg.recent_ids,
                &row.notification_id,
            );
        }
    }
}

/// Takes `id` out of what the session has queued or in flight into its recent ids (keeping at
/// most `cap`); the seq it was held at, if it was.
fn forget(
    ids: &mut HashMap<String, u64>,
    recent: &mut RecentIds,
    cap: usize,
    id: &str,
) -> Option<u64> {
    let (id, seq) = ids.remove_entry(id)?;
    recent.insert(id, cap);
    Some(seq)
}

/// Notification ids settled or given up on recently, at most `recent_ids`, oldest first out.
#[derive(Debug, Default)]
pub(super) struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    pub(super) fn insert(&mut self, id: String, cap: usize) {
        if cap == 0 || self.set.contains(&id) {
            return;
        }
        if self.order.len() >= cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}
