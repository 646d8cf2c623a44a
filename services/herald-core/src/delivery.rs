//! The per-device delivery state machine: what to send, what is in flight, what to resend when.
//!
//! No I/O and no clock: the caller passes `now_ms` and asks for the next deadline (timers as
//! data). Items are offered in increasing `seq`; an offer at or below the highest seq already
//! offered is a duplicate (the replay→live merge relies on this). Sends go out lowest seq first,
//! at most `max_in_flight` unacknowledged at once (JetStream's MaxAckPending). An unacknowledged
//! item is resent with exponential backoff, `max_redeliveries` times at most, then left for the
//! device's next resume.

use std::collections::{BTreeMap, BTreeSet};

/// Knobs of delivery; defaults match docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Most unacknowledged sends at once.
    pub max_in_flight: usize,
    /// Most items waiting to be sent (beyond the window); more is a slow consumer.
    pub max_queued: usize,
    /// Wait before the first redelivery.
    pub backoff_initial_ms: u64,
    /// Longest wait between redeliveries.
    pub backoff_max_ms: u64,
    /// Resends after the first send, at most.
    pub max_redeliveries: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 256,
            max_queued: 4096,
            backoff_initial_ms: 100,
            backoff_max_ms: 2_000,
            max_redeliveries: 3,
        }
    }
}

impl DeliveryConfig {
    /// Wait after send number `attempt` (1 = first send) before the next one.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(32);
        self.backoff_initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight<T> {
    item: T,
    attempt: u32,
    due_ms: i64,
    /// The transport's number of the frame that carries the latest send (0: not told).
    frame: u64,
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

    /// Acknowledged (or gone: archived, expired, superseded) by seq.
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
        for seq in due {
            if out.len() >= max {
                return out;
            }
            let f = self.in_flight.get_mut(&seq).expect("due seq is in flight");
            self.deadlines.remove(&(f.due_ms, seq));
            if f.frame > written {
                f.due_ms = now_ms + self.config.backoff_ms(f.attempt) as i64;
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
            f.due_ms = now_ms + self.config.backoff_ms(f.attempt) as i64;
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
            let due_ms = now_ms + self.config.backoff_ms(1) as i64;
            self.deadlines.insert((due_ms, seq));
            self.in_flight.insert(
                seq,
                InFlight {
                    item: item.clone(),
                    attempt: 1,
                    due_ms,
                    frame: 0,
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
            ..Default::default()
        }
    }

    fn seqs(sends: &[Send<&str>]) -> Vec<(u64, u32)> {
        sends.iter().map(|s| (s.seq, s.attempt)).collect()
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
        let mut d = Delivery::new(DeliveryConfig {
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
        let mut d = Delivery::new(cfg(5));
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
        let mut d = Delivery::new(cfg(4));
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

    proptest::proptest! {
        /// Any mix of offers, polls (with and without frames written), sent_as, settles and
        /// cumulative ACKs: the deadline index holds exactly the in-flight items' deadlines,
        /// and a poll sends what was due, lowest seq first.
        #[test]
        fn the_deadline_index_follows_the_window(
            ops in proptest::collection::vec((0u8..6, 0u64..40, 0i64..400), 1..200)
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
