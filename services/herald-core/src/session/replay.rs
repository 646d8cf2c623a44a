//! The replay: pending rows from the projection, then the log gap, then the held live events.

use std::sync::Arc;

use crate::delivery::Weigh;

use super::*;

/// Records a log-gap read asks for while the budget is spent (`Io::spare_bytes`), instead of
/// `gap_chunk`: such a read takes one event and leaves the rest to be read again.
pub(super) const LEAN_GAP_CHUNK: usize = 32;

impl Session {
    pub(super) fn pending(&mut self, rows: Vec<InboxRow>) -> Result<(), Ending> {
        self.reading = false;
        let reserved = std::mem::take(&mut self.reserved);
        let Phase::Projection { .. } = self.phase else {
            return Ok(());
        };
        // The store stops at the bound: a page that reached it may have more behind it.
        let weight = rows.iter().map(Weigh::bytes).fold(0, usize::saturating_add);
        let full = self.asked.full(rows.len(), weight);
        // Queued as the store bounded the read (`PageBound::take`): rows while those taken
        // weigh no more than the room, up to `replay_page_bytes` and the room the read was
        // asked with, so the row that took the page past it stays and is not read again; one
        // row at least. Only a room that shrank since the ask (live events queued meanwhile)
        // leaves rows to be read again. A read is asked for only while less than half of
        // that waits, for about the room there is.
        let keep = PageBound {
            limit: rows.len(),
            max_bytes: self.read_room(reserved),
        };
        let read = rows.len();
        let kept = keep
            .take(rows.into_iter().map(Ok::<_, std::convert::Infallible>))
            .unwrap_or_else(|never| match never {});
        let cut = kept.len() < read;
        let mut last = None;
        for row in kept {
            last = Some(row.seq);
            self.offer(Arc::new(row))?;
        }
        self.phase = if full || cut {
            Phase::Projection { after: last }
        } else {
            Phase::Gap {
                from: self.projection_applied,
                to: self.live_from,
            }
        };
        Ok(())
    }

    pub(super) fn log(
        &mut self,
        events: Vec<(u64, UserEvent)>,
        next: Option<u64>,
        io: Io,
        out: &mut Out<'_>,
    ) -> Result<(), Ending> {
        self.reading = false;
        let reserved = std::mem::take(&mut self.reserved);
        let Phase::Gap { from, to } = self.phase else {
            return Ok(());
        };
        let Some(next) = next else {
            // The log has a record at every offset below the hub's position (`to`), so a read
            // from `from` < `to` that found none lost them or skipped them. Going on would send
            // what follows, and the device's cursor would pass them: the session ends instead,
            // and the device resumes on a new one.
            return Err(Ending::new(
                Close::InternalError,
                format!("the log returned no record at offsets {from}..{to}, which it holds"),
            ));
        };
        // As a page: what queues up to `replay_page_bytes` and the room the read was asked with
        // (one notification at least: events that queue nothing, the device's progress or
        // marks, do not count), the rest read again from the first event not taken.
        let start = self.delivery.queued_bytes();
        let limit = start + self.read_room(reserved);
        let mut from = next.min(to);
        for (offset, ev) in events.iter().filter(|(o, _)| *o < to) {
            let queued = self.delivery.queued_bytes();
            if queued > start && queued >= limit {
                from = *offset;
                break;
            }
            self.event(*offset, ev, false, io, out)?;
        }
        self.phase = Phase::Gap { from, to };
        Ok(())
    }

    /// Moves the replay on (finishing it when the log gap is read), sends what is due, and asks
    /// for the next replay read when there is room for it.
    pub(super) fn settle_replay_and_pump(&mut self, io: Io, out: &mut Out<'_>) {
        match self.settle_and_pump(io, out) {
            Ok(()) => self.request_read(io, out),
            Err(end) => self.close(end, io.now_ms, out),
        }
    }

    /// [`Session::finish_replay`] and [`Session::pump`], again while held live events were
    /// released and more wait: what the pump sent may have made room for them (what still
    /// waits after that is looked at again by `next_wake`).
    fn settle_and_pump(&mut self, io: Io, out: &mut Out<'_>) -> Result<(), Ending> {
        loop {
            let held = self.held.len();
            self.finish_replay(io, out)?;
            self.pump(io, out)?;
            if self.held.is_empty() || self.held.len() == held {
                return Ok(());
            }
        }
    }

    /// Whether the replay may read another page: only when less than a page of rows, and less
    /// than half of `replay_page_bytes`, waits to be sent, so a session holds at most about two
    /// pages of rows, and `replay_page_bytes`, of a backlog beyond its window, whatever the
    /// backlog's size (a peer that does not read pins no more than that), and each read brings
    /// half of that at least.
    pub(super) fn replay_room(&self) -> bool {
        self.delivery.queued() < self.cfg.replay_page
            && self.delivery.queued_bytes() < self.cfg.replay_page_bytes / 2
    }

    /// What the session's own bound leaves for a replay's rows: `replay_page_bytes` less what
    /// is queued.
    fn own_room(&self) -> usize {
        self.cfg
            .replay_page_bytes
            .saturating_sub(self.delivery.queued_bytes())
    }

    /// What a read's answer may queue: the room it was asked with when the budget sized it,
    /// else the session's own room now (which the sends since the read may have grown).
    fn read_room(&self, reserved: usize) -> usize {
        if self.budget_bound {
            self.own_room().min(reserved)
        } else {
            self.own_room()
        }
    }

    pub(super) fn finish_replay(&mut self, io: Io, out: &mut Out<'_>) -> Result<(), Ending> {
        if let Phase::Gap { from, to } = self.phase
            && from >= to
            && !self.reading
            && self.replay_room()
        {
            self.phase = Phase::Done;
        }
        // The live events held meanwhile, as the delivery queue and the send queue take them
        // (marks are frames of their own): all at once, they could overflow either for a
        // client that keeps up. What waits is looked at again shortly (`next_wake`).
        while self.phase == Phase::Done
            && self.replay_room()
            && io.room.saturating_sub(out.frames) > self.cfg.send_reserve
        {
            let Some((offset, ev)) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= event_bytes(&ev);
            self.event(offset, &ev, true, io, out)?;
        }
        Ok(())
    }

    /// Asks for the replay's next read when it has one to make and there is room for it: the
    /// session's own (`replay_room`), and the transport's budget (`io.spare_bytes`): half a
    /// page of it at least, unless nothing waits for the device (no notification in flight or
    /// queued; live events held for after the replay may: they wait for the replay), and then
    /// a row at least, so every replay moves on. What the read may queue is reserved until its
    /// answer.
    pub(super) fn request_read(&mut self, io: Io, out: &mut Out<'_>) {
        let wants = match self.phase {
            Phase::Projection { .. } => true,
            Phase::Gap { from, to } => from < to,
            Phase::Done => false,
        };
        if !wants || self.reading || !self.replay_room() {
            self.budget_waits = 0;
            return;
        }
        let own = self.own_room();
        let room = own.min(io.spare_bytes);
        let spent = room < self.cfg.replay_page_bytes / 2;
        if spent && self.delivery_bytes() > 0 {
            self.budget_waits = self.budget_waits.saturating_add(1);
            return;
        }
        self.budget_waits = 0;
        match self.phase {
            Phase::Projection { after } => {
                // As many rows as a page holds, and rows only until they weigh `room`: the
                // store reads no further.
                self.asked = PageBound {
                    limit: self.cfg.replay_page,
                    max_bytes: room,
                };
                out.actions.push(Action::ReadPending {
                    after,
                    bound: self.asked,
                })
            }
            Phase::Gap { from, to } => {
                // With the budget spent, a read takes one event and the rest is read again:
                // fewer records a read, not a whole chunk each time.
                let chunk = if spent {
                    self.cfg.gap_chunk.min(LEAN_GAP_CHUNK)
                } else {
                    self.cfg.gap_chunk
                };
                out.actions.push(Action::ReadLog {
                    from,
                    max: ((to - from) as usize).min(chunk),
                })
            }
            Phase::Done => return,
        }
        self.reading = true;
        self.reserved = room;
        self.budget_bound = room < own;
    }
}
