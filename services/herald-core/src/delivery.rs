//! The per-device delivery state machine: what to send, what is in flight, what to resend when.
//!
//! No I/O and no clock: the caller passes `now_ms` and asks for the next deadline (timers as
//! data). Items are offered in increasing `seq`; an offer at or below the highest seq already
//! offered is a duplicate (the replay→live merge relies on this). Sends go out lowest seq first,
//! at most `max_in_flight` unacknowledged at once (JetStream's MaxAckPending). An unacknowledged
//! item is resent with exponential backoff, `max_redeliveries` times at most, then left for the
//! device's next resume.
//!
//! When to resend is TCP's problem on top of TCP, and solved the same way (RFC 6298): the wait
//! is the device's retransmission timeout, estimated from its ACKs' round trips (smoothed RTT
//! plus four times its variation, Karn's rule: no sample from a resent item), at least
//! `backoff_initial_ms`, [`UNMEASURED_RTO_MS`] before the first sample, doubling per resend up
//! to `backoff_max_ms`. The connection is one ordered stream, so an unACKed item is resent only
//! when there is a sign that the device passed it: it ACKed something sent after it, or it ACKed
//! nothing for a whole timeout. While the device keeps ACKing what was sent before it, it is
//! still reading its way there, and the timer starts again from that ACK: a device that is
//! behind (a loaded machine, a burst) is not sent its backlog twice.
//!
//! The floor is 1 s by default, as RFC 6298 rounds the RTO up to: a resend on a live ordered
//! connection only helps a device whose app dropped a notification without ACKing it (MQTT 5
//! forbids such resends altogether; JetStream waits 30 s), while a resend too early doubles
//! the work of a device that is merely behind. Measured (docs/benchmarks.md, eighteenth stop):
//! with a 100 ms fixed wait, a fanout whose clients ACK each notification by id was resent
//! 112k times for 100k deliveries.

use std::collections::{BTreeMap, BTreeSet};

/// Knobs of delivery; defaults match docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Most unacknowledged sends at once.
    pub max_in_flight: usize,
    /// Most items waiting to be sent (beyond the window); more is a slow consumer.
    pub max_queued: usize,
    /// The shortest wait before a redelivery: the floor of the device's retransmission timeout.
    pub backoff_initial_ms: u64,
    /// Longest wait between redeliveries (and the cap of the timeout).
    pub backoff_max_ms: u64,
    /// Resends after the first send, at most.
    pub max_redeliveries: u32,
}

/// The retransmission timeout before a device's first ACK round trip is measured (RFC 6298's
/// initial RTO), within `backoff_initial_ms..=backoff_max_ms`: a fresh connection's first burst
/// is not resent at the shortest wait just because nothing is known about the device yet.
pub const UNMEASURED_RTO_MS: u64 = 1_000;

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 256,
            max_queued: 4096,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 4_000,
            max_redeliveries: 3,
        }
    }
}

impl DeliveryConfig {
    /// Wait after send number `attempt` (1 = first send) before the next one, for a
    /// retransmission timeout of `rto_ms`: doubling per send, at most `backoff_max_ms`.
    pub fn backoff_ms(&self, rto_ms: u64, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(32);
        rto_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms.max(self.backoff_initial_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight<T> {
    item: T,
    attempt: u32,
    due_ms: i64,
    /// The transport's number of the frame that carries the latest send (0: not told).
    frame: u64,
    /// When the latest send was handed out, and its number among all sends.
    sent_ms: i64,
    sent_no: u64,
}

/// Something to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send<T> {
    pub seq: u64,
    pub item: T,
    /// 1 for the first send, 2.. for redeliveries.
    pub attempt: u32,
}

/// Result of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// At or below the highest seq already offered: already handled.
    Duplicate,
    /// The queue is full: the consumer is too slow.
    Overflow,
}

#[derive(Debug, Clone)]
pub struct Delivery<T> {
    config: DeliveryConfig,
    queued: BTreeMap<u64, T>,
    in_flight: BTreeMap<u64, InFlight<T>>,
    /// `(due_ms, seq)` of every item in flight: what is due and the next deadline without a
    /// walk through the window (the session asks on every input, with up to `max_in_flight`
    /// items in flight).
    deadlines: BTreeSet<(i64, u64)>,
    highest_offered: Option<u64>,
    gave_up: u64,
    /// The items given up on since the last [`Delivery::take_given_up`].
    given_up_items: Vec<T>,
    /// Sends handed out so far (first sends and resends): each send's number.
    sends: u64,
    /// The highest send number the device has ACKed, and when its latest ACK came.
    acked_no: u64,
    last_ack_ms: Option<i64>,
    /// The smoothed round trip times 8 and its variation times 4 (RFC 6298, scaled as Linux
    /// keeps them), in ms; `None` until the first sample.
    srtt8: Option<u64>,
    rttvar4: u64,
}

impl<T: Clone> Delivery<T> {
    pub fn new(config: DeliveryConfig) -> Self {
        Delivery {
            config,
            queued: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            highest_offered: None,
            gave_up: 0,
            given_up_items: Vec::new(),
            sends: 0,
            acked_no: 0,
            last_ack_ms: None,
            srtt8: None,
            rttvar4: 0,
        }
    }

    /// The device's retransmission timeout now: smoothed RTT plus four times its variation,
    /// within `backoff_initial_ms..=backoff_max_ms`; [`UNMEASURED_RTO_MS`] before a sample.
    pub fn rto_ms(&self) -> u64 {
        let (floor, cap) = (
            self.config.backoff_initial_ms,
            self.config
                .backoff_max_ms
                .max(self.config.backoff_initial_ms),
        );
        match self.srtt8 {
            None => UNMEASURED_RTO_MS.clamp(floor, cap),
            Some(s8) => (s8 / 8 + self.rttvar4.max(1)).clamp(floor, cap),
        }
    }

    /// One round trip measured: from a first send to its ACK.
    fn sample(&mut self, rtt_ms: u64) {
        match self.srtt8 {
            None => {
                self.srtt8 = Some(rtt_ms.saturating_mul(8));
                self.rttvar4 = rtt_ms.saturating_mul(2);
            }
            Some(s8) => {
                let err = (s8 / 8).abs_diff(rtt_ms);
                self.rttvar4 = self.rttvar4 - self.rttvar4 / 4 + err;
                self.srtt8 = Some(s8 - s8 / 8 + rtt_ms);
            }
        }
    }

    /// The device ACKed, at `now_ms`, an item sent `attempt` times, the last time at `sent_ms`
    /// as send number `sent_no`. Only an item sent once says how far the device has read and
    /// how long the round trip took: the ACK of a resent item may be the ACK of its first copy
    /// (Karn's rule).
    fn acked(&mut self, sent_no: u64, attempt: u32, sent_ms: i64, now_ms: i64) {
        self.last_ack_ms = Some(self.last_ack_ms.map_or(now_ms, |t| t.max(now_ms)));
        if attempt == 1 {
            self.acked_no = self.acked_no.max(sent_no);
            self.sample(now_ms.saturating_sub(sent_ms).max(0) as u64);
        }
    }

    /// Offers the item at `seq`.
    pub fn offer(&mut self, seq: u64, item: T) -> Offer {
        if self.highest_offered.is_some_and(|h| seq <= h) {
            return Offer::Duplicate;
        }
        if self.queued.len() >= self.config.max_queued {
            return Offer::Overflow;
        }
        self.highest_offered = Some(seq);
        self.queued.insert(seq, item);
        Offer::Queued
    }

    /// Everything at or below `seq` counts as offered (e.g. the device's resume cursor).
    pub fn skip_through(&mut self, seq: u64) {
        self.highest_offered = Some(self.highest_offered.map_or(seq, |h| h.max(seq)));
    }

    /// How many more items may be offered before the queue is full.
    pub fn room(&self) -> usize {
        self.config.max_queued.saturating_sub(self.queued.len())
    }

    /// Acknowledged by the device at `now_ms`, by seq: settled, and its round trip measured.
    pub fn ack(&mut self, seq: u64, now_ms: i64) -> bool {
        match self.in_flight.remove(&seq) {
            Some(f) => {
                self.deadlines.remove(&(f.due_ms, seq));
                self.acked(f.sent_no, f.attempt, f.sent_ms, now_ms);
                true
            }
            None => self.queued.remove(&seq).is_some(),
        }
    }

    /// Like [`Delivery::settle_through`], for the device's cumulative ACK at `now_ms`: the round
    /// trip of the newest item it covers is measured (it was the last one the device read).
    pub fn ack_through(&mut self, seq: u64, now_ms: i64, settled: impl FnMut(T)) -> usize {
        // The newest item sent once that the ACK covers: the furthest the device has read.
        let newest = self
            .in_flight
            .range(..=seq)
            .filter(|(_, f)| f.attempt == 1)
            .max_by_key(|(_, f)| f.sent_no)
            .map(|(_, f)| (f.sent_no, f.sent_ms));
        match newest {
            Some((sent_no, sent_ms)) => self.acked(sent_no, 1, sent_ms, now_ms),
            None if self.in_flight.range(..=seq).next().is_some() => {
                self.acked(0, 2, 0, now_ms);
            }
            None => {}
        }
        self.settle_through(seq, settled)
    }

    /// Settled without an ACK from the device (archived, expired, superseded, or ACKed through
    /// another channel), by seq.
    pub fn settle(&mut self, seq: u64) -> bool {
        let flew = match self.in_flight.remove(&seq) {
            Some(f) => {
                self.deadlines.remove(&(f.due_ms, seq));
                true
            }
            None => false,
        };
        flew | self.queued.remove(&seq).is_some()
    }

    /// Acknowledged cumulatively: everything at or below `seq`, each item settled handed to
    /// `settled` (in no particular order); how many there were.
    pub fn settle_through(&mut self, seq: u64, mut settled: impl FnMut(T)) -> usize {
        // Lowest first: an ACK usually settles a few items at the low end of the window, which
        // costs that many removals (a split would rebuild the path to the rest).
        let mut n = 0;
        while let Some(first) = self.in_flight.first_entry()
            && *first.key() <= seq
        {
            let (seq, f) = first.remove_entry();
            self.deadlines.remove(&(f.due_ms, seq));
            settled(f.item);
            n += 1;
        }
        while let Some(first) = self.queued.first_entry()
            && *first.key() <= seq
        {
            settled(first.remove());
            n += 1;
        }
        n
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Items given up on after their last redelivery (left for the next resume).
    pub fn gave_up(&self) -> u64 {
        self.gave_up
    }

    /// The items given up on since the last call, so the caller can forget what it kept about
    /// them. A poll gives up only what was in flight: drained after every poll (as the session
    /// does), this holds at most `max_in_flight` items.
    pub fn take_given_up(&mut self) -> Vec<T> {
        std::mem::take(&mut self.given_up_items)
    }

    /// Whether any item at or below `seq` is still queued (never sent).
    pub fn has_queued_through(&self, seq: u64) -> bool {
        self.queued.range(..=seq).next().is_some()
    }

    /// What to send at `now_ms`: due redeliveries first, then new items while the window has room.
    pub fn poll(&mut self, now_ms: i64) -> Vec<Send<T>> {
        self.poll_limited(now_ms, usize::MAX, u64::MAX)
    }

    /// The send of `seq` just handed out travels as the transport's frame number `frame`.
    pub fn sent_as(&mut self, seq: u64, frame: u64) {
        if let Some(f) = self.in_flight.get_mut(&seq) {
            f.frame = frame;
        }
    }

    /// Like [`Delivery::poll`], but at most `max` sends; what does not fit stays due. A send
    /// whose frame the transport has not written yet (`written` frames so far) is not resent
    /// when its timer runs out: the timer starts again, so the wait runs from (at least) the
    /// write, and a queue that does not drain makes redelivery back off instead of piling up.
    /// A written send is resent only once the device ACKed something sent after it, or ACKed
    /// nothing for a whole wait (see the module's documentation).
    pub fn poll_limited(&mut self, now_ms: i64, max: usize, written: u64) -> Vec<Send<T>> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        let mut due: Vec<u64> = self
            .deadlines
            .range(..=(now_ms, u64::MAX))
            .map(|(_, seq)| *seq)
            .collect();
        // Lowest seq first, as the window goes out.
        due.sort_unstable();
        let rto = self.rto_ms();
        for seq in due {
            if out.len() >= max {
                return out;
            }
            let f = self.in_flight.get_mut(&seq).expect("due seq is in flight");
            self.deadlines.remove(&(f.due_ms, seq));
            let wait = self.config.backoff_ms(rto, f.attempt) as i64;
            // Not written yet: the wait starts again. Written, but the device has ACKed nothing
            // sent after it: it waits a whole timeout from the device's latest ACK, if that
            // came later than the send (the device is still reading towards it).
            let wait_from = if f.frame > written {
                Some(now_ms)
            } else if self.acked_no <= f.sent_no {
                Some(f.sent_ms.max(self.last_ack_ms.unwrap_or(i64::MIN)))
            } else {
                None
            };
            if let Some(from) = wait_from
                && from.saturating_add(wait) > now_ms
            {
                f.due_ms = from.saturating_add(wait);
                self.deadlines.insert((f.due_ms, seq));
                continue;
            }
            if f.attempt > self.config.max_redeliveries {
                if let Some(f) = self.in_flight.remove(&seq) {
                    self.given_up_items.push(f.item);
                }
                self.gave_up += 1;
                continue;
            }
            f.attempt += 1;
            self.sends += 1;
            f.sent_no = self.sends;
            f.sent_ms = now_ms;
            f.due_ms = now_ms + self.config.backoff_ms(rto, f.attempt) as i64;
            self.deadlines.insert((f.due_ms, seq));
            f.frame = 0;
            out.push(Send {
                seq,
                item: f.item.clone(),
                attempt: f.attempt,
            });
        }
        while self.in_flight.len() < self.config.max_in_flight && out.len() < max {
            let Some((seq, item)) = self.queued.pop_first() else {
                break;
            };
            let due_ms = now_ms + self.config.backoff_ms(rto, 1) as i64;
            self.deadlines.insert((due_ms, seq));
            self.sends += 1;
            self.in_flight.insert(
                seq,
                InFlight {
                    item: item.clone(),
                    attempt: 1,
                    due_ms,
                    frame: 0,
                    sent_ms: now_ms,
                    sent_no: self.sends,
                },
            );
            out.push(Send {
                seq,
                item,
                attempt: 1,
            });
        }
        out
    }

    /// Whether `poll` at `now_ms` would send something, given room.
    pub fn has_work(&self, now_ms: i64) -> bool {
        (!self.queued.is_empty() && self.in_flight.len() < self.config.max_in_flight)
            || self.next_deadline().is_some_and(|d| d <= now_ms)
    }

    /// When `poll` next has something to do, if anything is in flight.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: usize) -> DeliveryConfig {
        DeliveryConfig {
            max_in_flight: window,
            max_queued: 10,
            backoff_initial_ms: 100,
            backoff_max_ms: 2_000,
            max_redeliveries: 3,
        }
    }

    fn seqs(sends: &[Send<&str>]) -> Vec<(u64, u32)> {
        sends.iter().map(|s| (s.seq, s.attempt)).collect()
    }

    /// A device whose first ACK came back at once (seq 0, at 0 ms): its wait is the floor,
    /// `backoff_initial_ms`.
    fn measured(config: DeliveryConfig) -> Delivery<&'static str> {
        let mut d = Delivery::new(config);
        d.offer(0, "warm-up");
        assert_eq!(seqs(&d.poll(0)), vec![(0, 1)]);
        assert!(d.ack(0, 0));
        assert_eq!(d.rto_ms(), config.backoff_initial_ms);
        d
    }

    #[test]
    fn sends_in_seq_order_within_the_window() {
        let mut d = Delivery::new(cfg(2));
        for s in [3, 5, 9] {
            assert_eq!(d.offer(s, "x"), Offer::Queued);
        }
        assert_eq!(seqs(&d.poll(0)), vec![(3, 1), (5, 1)]);
        assert!(d.poll(0).is_empty(), "window full");
        d.settle(3);
        assert_eq!(seqs(&d.poll(1)), vec![(9, 1)]);
    }

    #[test]
    fn offers_at_or_below_the_highest_are_duplicates() {
        let mut d = Delivery::new(cfg(4));
        assert_eq!(d.offer(5, "a"), Offer::Queued);
        assert_eq!(d.offer(5, "a"), Offer::Duplicate);
        assert_eq!(d.offer(4, "b"), Offer::Duplicate);
        d.skip_through(10);
        assert_eq!(d.offer(7, "c"), Offer::Duplicate);
        assert_eq!(d.offer(11, "d"), Offer::Queued);
    }

    #[test]
    fn redelivers_with_backoff_then_gives_up() {
        let mut d = measured(DeliveryConfig {
            max_in_flight: 4,
            max_queued: 4,
            backoff_initial_ms: 100,
            backoff_max_ms: 250,
            max_redeliveries: 3,
        });
        d.offer(1, "a");
        assert_eq!(seqs(&d.poll(0)), vec![(1, 1)]);
        assert_eq!(d.next_deadline(), Some(100));
        assert!(d.poll(99).is_empty());
        assert_eq!(seqs(&d.poll(100)), vec![(1, 2)]);
        assert_eq!(d.next_deadline(), Some(300), "200 ms after the 2nd send");
        assert_eq!(seqs(&d.poll(300)), vec![(1, 3)]);
        assert_eq!(d.next_deadline(), Some(550), "capped at 250 ms");
        assert_eq!(seqs(&d.poll(550)), vec![(1, 4)]);
        assert!(
            d.poll(10_000).is_empty(),
            "3 redeliveries, then left for resume"
        );
        assert_eq!(d.gave_up(), 1);
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.take_given_up(), vec!["a"], "handed back once");
        assert!(d.take_given_up().is_empty());
    }

    #[test]
    fn cumulative_acks_settle_queued_and_in_flight() {
        let mut d = Delivery::new(cfg(2));
        for (s, x) in (1..=5).zip(["a", "b", "c", "d", "e"]) {
            d.offer(s, x);
        }
        d.poll(0);
        let mut settled = Vec::new();
        assert_eq!(d.settle_through(3, |x| settled.push(x)), 3);
        settled.sort();
        assert_eq!(settled, ["a", "b", "c"], "in flight (a, b) and queued (c)");
        assert_eq!((d.in_flight(), d.queued()), (0, 2));
        assert_eq!(seqs(&d.poll(0)), vec![(4, 1), (5, 1)]);
    }

    #[test]
    fn a_limited_poll_leaves_the_rest_due() {
        let mut d = measured(cfg(5));
        for s in 1..=4 {
            d.offer(s, "x");
        }
        assert_eq!(seqs(&d.poll_limited(0, 2, u64::MAX)), vec![(1, 1), (2, 1)]);
        assert!(d.has_work(0));
        assert_eq!(seqs(&d.poll_limited(0, 0, u64::MAX)), vec![]);
        // Redeliveries due and new items share the limit; nothing is skipped or bumped.
        assert_eq!(
            seqs(&d.poll_limited(100, 3, u64::MAX)),
            vec![(1, 2), (2, 2), (3, 1)]
        );
        assert_eq!(seqs(&d.poll_limited(100, 5, u64::MAX)), vec![(4, 1)]);
        assert!(!d.has_work(100));
    }

    #[test]
    fn a_send_not_yet_written_is_not_resent_and_its_timer_starts_again() {
        let mut d = measured(cfg(4));
        d.offer(1, "a");
        assert_eq!(seqs(&d.poll_limited(0, 4, 0)), vec![(1, 1)]);
        d.sent_as(1, 5);
        // Due at 100, but the writer has put only 4 frames on the wire: not resent.
        assert!(d.poll_limited(100, 4, 4).is_empty());
        assert_eq!(d.next_deadline(), Some(200), "the wait starts again");
        assert!(
            d.poll_limited(150, 4, 5).is_empty(),
            "written now, not yet due"
        );
        assert_eq!(seqs(&d.poll_limited(200, 4, 5)), vec![(1, 2)]);
        // The resend has no frame yet: it is due on its timer alone.
        assert_eq!(seqs(&d.poll_limited(400, 4, 5)), vec![(1, 3)]);
    }

    #[test]
    fn an_unmeasured_device_waits_the_initial_timeout() {
        let mut d = Delivery::new(cfg(4));
        d.offer(1, "a");
        d.poll(0);
        assert_eq!(d.rto_ms(), UNMEASURED_RTO_MS);
        assert_eq!(d.next_deadline(), Some(UNMEASURED_RTO_MS as i64));
        assert!(d.poll(UNMEASURED_RTO_MS as i64 - 1).is_empty());
        assert_eq!(seqs(&d.poll(UNMEASURED_RTO_MS as i64)), vec![(1, 2)]);
        // Within the configured bounds.
        let d: Delivery<()> = Delivery::new(DeliveryConfig {
            backoff_max_ms: 300,
            ..cfg(4)
        });
        assert_eq!(d.rto_ms(), 300);
    }

    #[test]
    fn the_wait_follows_the_measured_round_trip() {
        let mut d = Delivery::new(cfg(4));
        let mut now = 0;
        let mut seq = 0;
        let mut round_trip = |d: &mut Delivery<&str>, rtt: i64| {
            seq += 1;
            d.offer(seq, "x");
            assert_eq!(seqs(&d.poll(now)), vec![(seq, 1)]);
            now += rtt;
            assert!(d.ack(seq, now));
        };
        // RFC 6298: the first sample R gives SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR.
        round_trip(&mut d, 300);
        assert_eq!(d.rto_ms(), 900);
        // Steady round trips: the variation decays, the timeout closes in on them.
        for _ in 0..30 {
            round_trip(&mut d, 300);
        }
        assert!((300..320).contains(&d.rto_ms()), "{}", d.rto_ms());
        // A slower device (a loaded machine): the timeout grows with it, up to the cap.
        for _ in 0..30 {
            round_trip(&mut d, 3_000);
        }
        assert_eq!(d.rto_ms(), 2_000, "capped at backoff_max_ms");
        // A fast one: the floor.
        for _ in 0..60 {
            round_trip(&mut d, 2);
        }
        assert_eq!(d.rto_ms(), 100, "at least backoff_initial_ms");
        // Karn's rule: the ACK of a resent item says nothing about the round trip.
        d.offer(1_000, "y");
        d.poll(now);
        now += 100;
        assert_eq!(seqs(&d.poll(now)), vec![(1_000, 2)]);
        now += 5_000;
        assert!(d.ack(1_000, now));
        assert_eq!(d.rto_ms(), 100);
        // Nor does a settle that is not the device's ACK (archived, expired, another channel).
        d.offer(1_001, "z");
        d.poll(now);
        assert!(d.settle(1_001));
        assert_eq!(d.rto_ms(), 100);
    }

    #[test]
    fn a_device_still_reading_is_not_sent_its_backlog_again() {
        let mut d = measured(cfg(8));
        for s in 1..=5 {
            d.offer(s, "x");
        }
        assert_eq!(d.poll(0).len(), 5);
        // The device ACKs the oldest ones, late: it is reading its way through the rest.
        assert!(d.ack(1, 90));
        assert!(d.poll(100).is_empty(), "the wait runs from the latest ACK");
        let due = 90 + d.rto_ms() as i64;
        assert_eq!(d.next_deadline(), Some(due));
        assert!(d.ack(2, due - 10));
        assert!(d.poll(due).is_empty());
        let due = due - 10 + d.rto_ms() as i64;
        assert_eq!(d.next_deadline(), Some(due));
        // Then nothing for a whole timeout: resent.
        assert_eq!(seqs(&d.poll(due)), vec![(3, 2), (4, 2), (5, 2)]);
    }

    #[test]
    fn an_item_the_device_passed_is_resent_when_due() {
        let mut d = measured(cfg(8));
        for s in 1..=3 {
            d.offer(s, "x");
        }
        d.poll(0);
        // The device ACKed 2 but not 1 (it read past 1): 1 is resent on its timer, 3 waits on.
        assert!(d.ack(2, 60));
        assert_eq!(seqs(&d.poll(100)), vec![(1, 2)]);
        assert_eq!(d.next_deadline(), Some(60 + d.rto_ms() as i64));
        // A cumulative ACK past an item counts as having read it too.
        let mut d = measured(cfg(8));
        for s in 1..=3 {
            d.offer(s, "x");
        }
        d.poll(0);
        assert_eq!(d.ack_through(2, 60, |_| {}), 2);
        assert_eq!(
            seqs(&d.poll(100)),
            vec![],
            "3 was sent with 1 and 2, the device reads on"
        );
        d.offer(4, "x");
        d.poll(110);
        d.ack(4, 150);
        assert_eq!(
            seqs(&d.poll(160)),
            vec![(3, 2)],
            "4 was ACKed: 3 is missing"
        );
    }

    proptest::proptest! {
        /// Any mix of offers, polls (with and without frames written), sent_as, settles, ACKs
        /// and cumulative ACKs (settled or ACKed by the device): the deadline index holds exactly the in-flight items' deadlines,
        /// and a poll sends what was due, lowest seq first.
        #[test]
        fn the_deadline_index_follows_the_window(
            ops in proptest::collection::vec((0u8..8, 0u64..40, 0i64..400), 1..200)
        ) {
            let mut d = Delivery::new(DeliveryConfig {
                max_in_flight: 8,
                max_queued: 16,
                backoff_initial_ms: 100,
                backoff_max_ms: 400,
                max_redeliveries: 2,
            });
            let (mut now, mut next_seq, mut frames) = (0i64, 1u64, 0u64);
            for (op, n, dt) in ops {
                now += dt;
                match op {
                    0 => {
                        d.offer(next_seq, next_seq);
                        next_seq += 1 + n % 3;
                    }
                    1 | 2 => {
                        let due: Vec<u64> = d
                            .in_flight
                            .iter()
                            .filter(|(_, f)| f.due_ms <= now)
                            .map(|(s, _)| *s)
                            .collect();
                        let written = if op == 1 { u64::MAX } else { frames / 2 };
                        let sends = d.poll_limited(now, (n % 10) as usize, written);
                        let resent: Vec<u64> =
                            sends.iter().filter(|s| s.attempt > 1).map(|s| s.seq).collect();
                        proptest::prop_assert!(resent.windows(2).all(|w| w[0] < w[1]));
                        proptest::prop_assert!(resent.iter().all(|s| due.contains(s)));
                        for s in &sends {
                            frames += 1;
                            d.sent_as(s.seq, frames);
                        }
                        d.take_given_up();
                    }
                    3 => {
                        d.settle(n);
                    }
                    4 => {
                        d.settle_through(n, |_| {});
                    }
                    5 => {
                        d.ack(n, now);
                    }
                    6 => {
                        d.ack_through(n, now, |_| {});
                    }
                    _ => frames += n,
                }
                let index: Vec<(i64, u64)> = d.deadlines.iter().copied().collect();
                let mut walked: Vec<(i64, u64)> =
                    d.in_flight.iter().map(|(s, f)| (f.due_ms, *s)).collect();
                walked.sort_unstable();
                proptest::prop_assert_eq!(d.next_deadline(), walked.first().map(|(due, _)| *due));
                proptest::prop_assert_eq!(index, walked);
            }
        }
    }

    #[test]
    fn a_full_queue_overflows() {
        let mut d = Delivery::new(cfg(1));
        for s in 0..10 {
            assert_eq!(d.offer(s, "x"), Offer::Queued);
        }
        assert_eq!(d.room(), 0);
        assert_eq!(d.offer(10, "x"), Offer::Overflow);
        d.poll(0);
        assert_eq!(d.offer(10, "x"), Offer::Queued);
    }
}
