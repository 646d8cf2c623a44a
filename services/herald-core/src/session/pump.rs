//! The pump: what is due goes out as far as the send queue has room, `replayed` at the
//! boundary, and the deliveries and ACKs gathered are appended.

use super::*;

impl Session {
    /// Sends what delivery says is due, as far as the send queue has room, with `replayed` at
    /// the replay/live boundary; then appends the deliveries and ACKs gathered.
    pub(super) fn pump(&mut self, io: Io, out: &mut Out<'_>) -> Result<(), Ending> {
        let now = io.now_ms;
        let progressed = io.written > self.last_written;
        self.last_written = io.written;
        let free = io.room.saturating_sub(out.frames);
        let room = free.saturating_sub(self.cfg.send_reserve);
        // `replayed` may need a slot of its own.
        let sends = self.delivery.poll_limited(now, room.saturating_sub(1));
        if self.delivery.has_work(now) && free <= self.cfg.send_reserve + sends.len() + 1 {
            // Waiting for room: a slow consumer only if the writer makes no progress at all.
            if progressed || self.blocked_since.is_none() {
                self.blocked_since = Some(now);
            }
        } else {
            self.blocked_since = None;
        }
        if self
            .blocked_since
            .is_some_and(|since| now - since > self.cfg.slow_consumer_timeout_ms)
        {
            return Err(Ending::new(
                Close::SlowConsumer,
                "the connection does not keep up",
            ));
        }
        for s in sends {
            if !self.replayed_sent
                && !self.replaying()
                && self.replay_high.is_none_or(|h| s.seq > h)
            {
                self.send_replayed(out);
            }
            if s.attempt == 1 {
                self.delivered
                    .push(UserEvent::Delivered(NotificationDelivered {
                        user_id: self.user.clone(),
                        device_id: self.device.clone(),
                        notification_id: s.item.notification_id.clone(),
                        at: now,
                    }));
            }
            out.send(Outgoing::Notification {
                row: s.item,
                attempt: s.attempt,
            });
        }
        if !self.replayed_sent
            && !self.replaying()
            && self
                .replay_high
                .is_none_or(|h| !self.delivery.has_queued_through(h))
        {
            self.send_replayed(out);
        }
        self.flush_into(now, out);
        Ok(())
    }

    pub(super) fn send_replayed(&mut self, out: &mut Out<'_>) {
        self.replayed_sent = true;
        let cursor = self.replay_high.map(|seq| self.cursor(seq));
        out.frame(ServerFrame::Replayed { cursor });
    }

    pub(super) fn flush_into(&mut self, now_ms: i64, out: &mut Out<'_>) {
        self.flush(now_ms, out.actions);
    }

    /// Appends the ACKs gathered since the last flush as one `Acked` event, and the deliveries.
    pub(super) fn flush(&mut self, now_ms: i64, actions: &mut Vec<Action>) {
        let mut events = Vec::new();
        if !self.ack_ids.is_empty() || self.ack_up_to.is_some() {
            let mut ids = std::mem::take(&mut self.ack_ids);
            ids.sort();
            ids.dedup();
            events.push(UserEvent::Acked(NotificationAcked {
                user_id: self.user.clone(),
                device_id: self.device.clone(),
                notification_ids: ids,
                up_to: self.ack_up_to.take(),
                at: now_ms,
            }));
        }
        events.append(&mut self.delivered);
        if !events.is_empty() {
            actions.push(Action::Append(events));
        }
    }
}
