//! The per-device delivery state machine: what to send, what is in flight, what to resend when.
//!
//! No I/O and no clock: the caller passes `now_ms` and asks for the next deadline (timers as
//! data). Items are offered in increasing `seq`; an offer at or below the highest seq already
//! offered is a duplicate (the replay→live merge relies on this). Sends go out lowest seq first,
//! at most `max_in_flight` unacknowledged at once (JetStream's MaxAckPending), and at most
//! `max_in_flight_bytes` of them by weight ([`Weigh`]; Kafka's `fetch.max.bytes` next to its
//! record counts); the queue behind the window is bounded the same two ways. An unacknowledged
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
    /// Most bytes ([`Weigh`]) unacknowledged at once: no new send while the window holds this
    /// many (one item is always allowed, whatever it weighs). With `max_in_flight` alone, a
    /// device that stopped reading held 256 notifications of up to 64 KiB each (16 MiB).
    pub max_in_flight_bytes: usize,
    /// Most items waiting to be sent (beyond the window); more is a slow consumer.
    pub max_queued: usize,
    /// Most bytes ([`Weigh`]) waiting to be sent (beyond the window); more is a slow consumer
    /// (one item is always taken, whatever it weighs).
    pub max_queued_bytes: usize,
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

/// What an item weighs in [`DeliveryConfig::max_in_flight_bytes`] and
/// [`DeliveryConfig::max_queued_bytes`]: about the memory it holds.
pub trait Weigh {
    fn bytes(&self) -> usize;
}

impl Weigh for &str {
    fn bytes(&self) -> usize {
        self.len()
    }
}

impl<T: Weigh> Weigh for std::sync::Arc<T> {
    fn bytes(&self) -> usize {
        T::bytes(self)
    }
}

/// The default of [`DeliveryConfig::max_in_flight_bytes`]: 1 MiB.
pub const MAX_IN_FLIGHT_BYTES: usize = 1 << 20;
/// The default of [`DeliveryConfig::max_queued_bytes`]: 8 MiB.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 256,
            max_in_flight_bytes: MAX_IN_FLIGHT_BYTES,
            max_queued: 4096,
            max_queued_bytes: MAX_QUEUED_BYTES,
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
        rto_ms.saturating_mul(1u64 << shift).min(self.cap_ms())
    }

    /// The longest wait: `backoff_max_ms`, never under `backoff_initial_ms`.
    fn cap_ms(&self) -> u64 {
        self.backoff_max_ms.max(self.backoff_initial_ms)
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
    /// What the items in `queued` and in `in_flight` weigh ([`Weigh`]).
    queued_bytes: usize,
    in_flight_bytes: usize,
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

impl<T: Clone + Weigh> Delivery<T> {
    pub fn new(config: DeliveryConfig) -> Self {
        Delivery {
            config,
            queued: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            queued_bytes: 0,
            in_flight_bytes: 0,
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
        let (floor, cap) = (self.config.backoff_initial_ms, self.config.cap_ms());
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

    /// An ACK from the device came at `now_ms`.
    fn note_ack(&mut self, now_ms: i64) {
        self.last_ack_ms = Some(self.last_ack_ms.map_or(now_ms, |t| t.max(now_ms)));
    }

    /// The device ACKed an item sent once, as send number `sent_no` at `sent_ms`: it has read
    /// that far, and the round trip is a sample. (The ACK of a resent item proves neither: it
    /// may be the ACK of its first copy, Karn's rule.)
    fn acked_first_send(&mut self, sent_no: u64, sent_ms: i64, now_ms: i64) {
        self.acked_no = self.acked_no.max(sent_no);
        self.sample(now_ms.saturating_sub(sent_ms).max(0) as u64);
    }

    /// Offers the item at `seq`.
    pub fn offer(&mut self, seq: u64, item: T) -> Offer {
        if self.highest_offered.is_some_and(|h| seq <= h) {
            return Offer::Duplicate;
        }
        let bytes = item.bytes();
        if self.queued.len() >= self.config.max_queued
            || (!self.queued.is_empty()
                && self.queued_bytes.saturating_add(bytes) > self.config.max_queued_bytes)
        {
            return Offer::Overflow;
        }
        self.highest_offered = Some(seq);
        self.queued.insert(seq, item);
        self.queued_bytes += bytes;
        Offer::Queued
    }

    /// Everything at or below `seq` counts as offered (e.g. the device's resume cursor).
    pub fn skip_through(&mut self, seq: u64) {
        self.highest_offered = Some(self.highest_offered.map_or(seq, |h| h.max(seq)));
    }

    /// How many more items may be offered before the queue is full by count (it may be full
    /// by bytes sooner: [`DeliveryConfig::max_queued_bytes`]).
    pub fn room(&self) -> usize {
        self.config.max_queued.saturating_sub(self.queued.len())
    }

    /// Acknowledged by the device at `now_ms`, by seq: settled, and its round trip measured.
    pub fn ack(&mut self, seq: u64, now_ms: i64) -> bool {
        match self.take_in_flight(seq) {
            Some(f) => {
                self.note_ack(now_ms);
                if f.attempt == 1 {
                    self.acked_first_send(f.sent_no, f.sent_ms, now_ms);
                }
                true
            }
            None => self.take_queued(seq).is_some(),
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
        if self.in_flight.range(..=seq).next().is_some() {
            self.note_ack(now_ms);
        }
        if let Some((sent_no, sent_ms)) = newest {
            self.acked_first_send(sent_no, sent_ms, now_ms);
        }
        self.settle_through(seq, settled)
    }

    /// Settled without an ACK from the device (archived, expired, superseded, or ACKed through
    /// another channel), by seq.
    pub fn settle(&mut self, seq: u64) -> bool {
        let flew = self.take_in_flight(seq).is_some();
        flew | self.take_queued(seq).is_some()
    }

    /// Takes the item at `seq` out of the window, with its deadline.
    fn take_in_flight(&mut self, seq: u64) -> Option<InFlight<T>> {
        let f = self.in_flight.remove(&seq)?;
        self.deadlines.remove(&(f.due_ms, seq));
        self.in_flight_bytes -= f.item.bytes();
        Some(f)
    }

    /// Takes the item at `seq` out of the queue.
    fn take_queued(&mut self, seq: u64) -> Option<T> {
        let item = self.queued.remove(&seq)?;
        self.queued_bytes -= item.bytes();
        Some(item)
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
            self.in_flight_bytes -= f.item.bytes();
            settled(f.item);
            n += 1;
        }
        while let Some(first) = self.queued.first_entry()
            && *first.key() <= seq
        {
            let item = first.remove();
            self.queued_bytes -= item.bytes();
            settled(item);
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

    /// What the queued items weigh ([`Weigh`]).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// What the items in flight weigh ([`Weigh`]).
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Whether the window takes another first send: under both of its bounds (an empty window
    /// takes one item whatever it weighs).
    fn window_open(&self) -> bool {
        self.in_flight.len() < self.config.max_in_flight
            && (self.in_flight.is_empty() || self.in_flight_bytes < self.config.max_in_flight_bytes)
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
                if let Some(f) = self.take_in_flight(seq) {
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
        while self.window_open() && out.len() < max {
            let Some((seq, item)) = self.queued.pop_first() else {
                break;
            };
            let bytes = item.bytes();
            self.queued_bytes -= bytes;
            self.in_flight_bytes += bytes;
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
        (!self.queued.is_empty() && self.window_open())
            || self.next_deadline().is_some_and(|d| d <= now_ms)
    }

    /// When `poll` next has something to do, if anything is in flight.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests;
