//! Unit tests of the delivery state machine.
use super::*;

impl Weigh for () {
    fn bytes(&self) -> usize {
        0
    }
}

/// A `u64` item weighs its value modulo 13: items of several weights for the byte bounds.
impl Weigh for u64 {
    fn bytes(&self) -> usize {
        (*self % 13) as usize
    }
}

fn cfg(window: usize) -> DeliveryConfig {
    DeliveryConfig {
        max_in_flight: window,
        max_queued: 10,
        max_in_flight_bytes: usize::MAX,
        max_queued_bytes: usize::MAX,
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
        max_in_flight_bytes: usize::MAX,
        max_queued_bytes: usize::MAX,
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
            max_in_flight_bytes: 30,
            max_queued_bytes: 60,
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
            // The weights kept follow the items, and stay within their bounds (one item over
            // at most: the last one taken).
            let flying: usize = d.in_flight.values().map(|f| f.item.bytes()).sum();
            let queued: usize = d.queued.values().map(Weigh::bytes).sum();
            proptest::prop_assert_eq!(d.in_flight_bytes(), flying);
            proptest::prop_assert_eq!(d.queued_bytes(), queued);
            proptest::prop_assert!(flying < 30 + 13);
            proptest::prop_assert!(queued <= 60);
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

#[test]
fn the_window_and_the_queue_are_bounded_by_weight_too() {
    let mut d = Delivery::new(DeliveryConfig {
        max_in_flight_bytes: 10,
        max_queued_bytes: 12,
        ..cfg(100)
    });
    // "aaaa" weighs 4: the queue takes three (12 bytes), then overflows by weight.
    for s in 1..=3 {
        assert_eq!(d.offer(s, "aaaa"), Offer::Queued);
    }
    assert_eq!(d.offer(4, "aaaa"), Offer::Overflow);
    assert_eq!(d.queued_bytes(), 12);
    // The window takes items while it holds under 10 bytes: three (12).
    assert_eq!(seqs(&d.poll(0)), vec![(1, 1), (2, 1), (3, 1)]);
    assert_eq!((d.in_flight_bytes(), d.queued_bytes()), (12, 0));
    for s in 4..=6 {
        assert_eq!(
            d.offer(s, "aaaa"),
            Offer::Queued,
            "room again after the poll"
        );
    }
    assert!(d.poll(0).is_empty(), "the window is full by weight");
    assert!(!d.has_work(0));
    d.settle(1);
    assert_eq!(seqs(&d.poll(0)), vec![(4, 1)]);
    // An item heavier than a bound on its own is still taken into an empty queue and window.
    let mut d = Delivery::new(DeliveryConfig {
        max_in_flight_bytes: 2,
        max_queued_bytes: 2,
        ..cfg(100)
    });
    assert_eq!(d.offer(1, "heavy"), Offer::Queued);
    assert_eq!(d.offer(2, "x"), Offer::Overflow);
    assert_eq!(seqs(&d.poll(0)), vec![(1, 1)]);
    assert_eq!(d.offer(2, "heavy"), Offer::Queued);
    assert!(d.poll(0).is_empty(), "one heavy item fills the window");
    assert!(d.ack(1, 1));
    assert_eq!(d.in_flight_bytes(), 0);
    assert_eq!(seqs(&d.poll(1)), vec![(2, 1)]);
}
