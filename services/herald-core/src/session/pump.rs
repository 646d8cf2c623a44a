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
        let sends = self
            .delivery
            .poll_limited(now, room.saturating_sub(1), io.written);
        self.forget_given_up();
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
                self.progress_since.get_or_insert(now);
                self.delivered.push(s.seq as i64);
            }
            // Its redelivery timer runs from when the writer has put this frame on the wire.
            let frame = self.frames_out + out.frames as u64 + 1;
            self.delivery.sent_as(s.seq, frame);
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
        self.flush(now, false, out.actions);
        Ok(())
    }

    pub(super) fn send_replayed(&mut self, out: &mut Out<'_>) {
        self.replayed_sent = true;
        let cursor = self.replay_high.map(|seq| self.cursor(seq));
        out.frame(ServerFrame::Replayed { cursor });
    }

    /// Appends the deliveries and ACKs gathered as one `DeviceProgress`, when the oldest has
    /// waited `progress_flush_ms`, when `progress_max` have gathered, or when `force`d (the
    /// session ends).
    pub(super) fn flush(&mut self, now_ms: i64, force: bool, actions: &mut Vec<Action>) {
        let Some(since) = self.progress_since else {
            return;
        };
        let gathered = self.delivered.len() + self.ack_ids.len();
        if !force && now_ms - since < self.cfg.progress_flush_ms && gathered < self.cfg.progress_max
        {
            return;
        }
        let mut ids = std::mem::take(&mut self.ack_ids);
        ids.sort();
        ids.dedup();
        actions.push(Action::Append(vec![UserEvent::Progress(DeviceProgress {
            user_id: self.user.clone(),
            device_id: self.device.clone(),
            delivered: std::mem::take(&mut self.delivered),
            acked_ids: ids,
            acked_up_to: self.ack_up_to.take(),
            at: now_ms,
        })]));
        self.progress_since = None;
    }
}
