//! Property test of the session state machine against a model of the world around it: one
//! user's log partition (with other users' records between), an inbox projection that trails
//! the log, a hub that delivers every event from `live_from` on, a send queue drained by a
//! writer, and a device that receives frames in order, dedupes by id and ACKs.
//!
//! Any interleaving of read answers, live events, ACKs, produced notifications, marks from
//! other devices, projection progress, writer progress, ticks and reconnects must give, per
//! session: first sends in increasing seq, no id first-sent twice, `replayed` between the
//! replayed and the live notifications, nothing sent again after its ACK was handled; and in the
//! end every notification the device had not acknowledged reaches it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use herald_core::cursor::{Cursor, Epoch};
use herald_core::delivery::DeliveryConfig;
use herald_core::model::{Delivery, MarkChange, NotificationAcked, NotificationAdded, UserEvent};
use herald_core::projection::{InboxRow, PageBound};
use herald_core::protocol::{ClientFrame, Close, ServerFrame};
use herald_core::session::{
    Action, Hello, Input, Io, Outgoing, Session, SessionConfig, Start, added_row,
};
use proptest::prelude::*;

const USER: &str = "u";
const DEVICE: &str = "d";
const EPOCH: Epoch = Epoch(7);
const CAPACITY: usize = 16;

fn config() -> SessionConfig {
    SessionConfig {
        delivery: DeliveryConfig {
            max_in_flight: 3,
            max_queued: 10_000,
            max_in_flight_bytes: usize::MAX,
            max_queued_bytes: usize::MAX,
            backoff_initial_ms: 100,
            backoff_max_ms: 400,
            max_redeliveries: 2,
        },
        replay_page: 4,
        gap_chunk: 3,
        max_held: 100_000,
        send_reserve: 2,
        ..SessionConfig::default()
    }
}

/// A notification; ids starting with `q` are quiet (the user's preferences keep them off
/// devices: inbox-only or muted) and must never be sent.
fn added(id: &str) -> UserEvent {
    let delivery = match id.as_bytes() {
        [b'q', .., last] if last % 2 == 0 => Delivery::Inbox,
        [b'q', ..] => Delivery::Muted,
        _ => Delivery::Live,
    };
    UserEvent::Added(NotificationAdded {
        user_id: USER.into(),
        notification_id: id.into(),
        event_type: "t".into(),
        source: "s".into(),
        payload: "{}".into(),
        priority: Default::default(),
        collapse_key: None,
        deliver_at: None,
        expires_at: None,
        created_at: 0,
        traceparent: None,
        delivery,
    })
}

fn acked(device: &str, ids: Vec<String>, up_to: Option<i64>) -> UserEvent {
    UserEvent::Acked(NotificationAcked {
        user_id: USER.into(),
        device_id: device.into(),
        notification_ids: ids,
        up_to,
        at: 0,
    })
}

fn read_elsewhere(ids: Vec<String>) -> UserEvent {
    UserEvent::Read(MarkChange {
        user_id: USER.into(),
        device_id: Some("elsewhere".into()),
        notification_ids: ids,
        up_to: None,
        at: 0,
    })
}

/// A stream of choices the test draws from (proptest shrinks it).
struct Dice {
    rolls: Vec<u32>,
    at: usize,
}

impl Dice {
    fn roll(&mut self, n: u32) -> u32 {
        let r = self.rolls.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        if n == 0 { 0 } else { r % n }
    }

    fn done(&self) -> bool {
        self.at >= self.rolls.len()
    }
}

/// The user's partition: offsets 0.. with this user's events at some of them (the others are
/// other users' records).
#[derive(Default)]
struct Log {
    events: BTreeMap<u64, UserEvent>,
    end: u64,
}

impl Log {
    fn append(&mut self, ev: UserEvent) -> u64 {
        let at = self.end;
        self.events.insert(at, ev);
        self.end += 1;
        at
    }

    fn other_user(&mut self) {
        self.end += 1;
    }

    /// The first seq of every notification id, in the log before `before`.
    fn first_seqs(&self, before: u64) -> BTreeMap<String, u64> {
        let mut first = BTreeMap::new();
        for (o, ev) in self.events.range(..before) {
            if let UserEvent::Added(a) = ev {
                first.entry(a.notification_id.clone()).or_insert(*o);
            }
        }
        first
    }

    /// What the projection holds for the device after applying offsets below `applied`: rows
    /// by seq, and the ones the device has ACKed (by id, or by cumulative cursor, each only
    /// covering what precedes the ACK).
    fn projection(&self, applied: u64) -> (BTreeMap<u64, String>, BTreeSet<u64>) {
        let mut rows = BTreeMap::new();
        let mut by_id: HashMap<String, u64> = HashMap::new();
        let mut acked = BTreeSet::new();
        let mut cursor: Option<u64> = None;
        for (o, ev) in self.events.range(..applied) {
            match ev {
                UserEvent::Added(a) if !by_id.contains_key(&a.notification_id) => {
                    by_id.insert(a.notification_id.clone(), *o);
                    rows.insert(*o, a.notification_id.clone());
                }
                UserEvent::Progress(p) if p.device_id == DEVICE => {
                    for id in &p.acked_ids {
                        if let Some(s) = by_id.get(id).filter(|s| **s < *o) {
                            acked.insert(*s);
                        }
                    }
                    if let Some(u) = p.acked_up_to.and_then(|u| u64::try_from(u).ok()) {
                        let c = u.min(o - 1);
                        cursor = Some(cursor.map_or(c, |x| x.max(c)));
                    }
                }
                UserEvent::Acked(a) if a.device_id == DEVICE => {
                    for id in &a.notification_ids {
                        if let Some(s) = by_id.get(id).filter(|s| **s < *o) {
                            acked.insert(*s);
                        }
                    }
                    if let Some(u) = a.up_to.and_then(|u| u64::try_from(u).ok()) {
                        let c = u.min(o - 1);
                        cursor = Some(cursor.map_or(c, |x| x.max(c)));
                    }
                }
                _ => {}
            }
        }
        if let Some(c) = cursor {
            acked.extend(rows.range(..=c).map(|(s, _)| *s));
        }
        (rows, acked)
    }

    /// `pending(after, limit)` against the projection at `applied`.
    fn pending(&self, applied: u64, after: Option<u64>, bound: PageBound) -> Vec<InboxRow> {
        let (rows, acked) = self.projection(applied);
        let rows = rows
            .iter()
            .filter(|(s, _)| after.is_none_or(|a| **s > a) && !acked.contains(*s))
            .map(|(s, id)| match &self.events[s] {
                UserEvent::Added(a) => {
                    assert_eq!(&a.notification_id, id);
                    Ok::<_, Infallible>(added_row(a, *s))
                }
                _ => unreachable!(),
            });
        answer(bound, rows)
    }
}

/// What one session did, for the per-session checks.
#[derive(Default)]
struct Trace {
    first_sends: Vec<(u64, String)>,
    /// Index into `first_sends` where `replayed` came, and its cursor.
    replayed: Option<(usize, Option<u64>)>,
    /// What the device ACKed in this session (by id, and cumulatively by seq), and sends of
    /// it the session asked for after handling the ACK.
    acked: HashSet<String>,
    acked_through: Option<u64>,
    sent_after_ack: Vec<String>,
}

/// The device: what it received (deduped by id) and its cursor.
#[derive(Default)]
struct Device {
    received: BTreeMap<String, u64>,
    unacked: Vec<String>,
    cursor: Option<u64>,
}

struct Run {
    log: Log,
    applied: u64,
    device: Device,
}

enum SessionEnd {
    /// Closed by the session (e.g. slow consumer): reconnect.
    Closed,
    /// The script disconnected the device.
    Disconnected,
    /// Drained: nothing more to do.
    Quiet,
}

impl Run {
    /// Runs one session, with dice deciding what happens next; `drain` runs it to quiescence
    /// with a fast writer and a device that ACKs everything.
    fn session(&mut self, dice: &mut Dice, drain: bool) -> (Trace, SessionEnd) {
        let mut cfg = config();
        if dice.roll(2) == 1 {
            // Bounds by weight that cut in: a row here weighs a little over 200 bytes, so the
            // window holds two at most and a replay queues about two (its pages cut and read
            // again, then sized by the rows' weight).
            cfg.delivery.max_in_flight_bytes = 300;
            cfg.replay_page_bytes = 450;
        }
        // The gateway's budget for all sessions (`Io::spare_bytes`): none, spent (replays read a
        // row at a time, when the session holds nothing), or now spent, now free.
        let budget = dice.roll(3);
        let spare = |dice: &mut Dice| match budget {
            1 => 0,
            2 if dice.roll(2) == 0 => 0,
            _ => usize::MAX,
        };
        let mut trace = Trace::default();
        let live_from = self.log.end;
        let hello = Hello::parse(
            DEVICE.into(),
            self.device
                .cursor
                .map(|seq| Cursor { epoch: EPOCH, seq }.to_string())
                .as_deref(),
            EPOCH,
        )
        .unwrap();
        let mut now = 1_000_000i64;
        let mut queued = 0usize;
        let mut written = 0u64;
        let io = |now: i64, queued: usize, written: u64, spare_bytes: usize| Io {
            now_ms: now,
            room: CAPACITY - queued,
            written,
            spare_bytes,
        };
        let (mut session, first) = Session::new(
            cfg,
            Start {
                user_id: USER.into(),
                hello,
                epoch: EPOCH,
                session_id: "s".into(),
                partition: 0,
                live_from,
                projection_applied: self.applied,
            },
            io(now, queued, written, spare(dice)),
        );
        // What the replay owes the device: every live notification (not quiet by the user's
        // preferences) before `live_from` above its cursor that it had not acknowledged by then.
        let owed: BTreeMap<u64, String> = {
            let (rows, acked) = self.log.projection(live_from);
            let cursor = self.device.cursor;
            rows.into_iter()
                .filter(|(s, id)| {
                    cursor.is_none_or(|c| *s > c) && !acked.contains(s) && !id.starts_with('q')
                })
                .collect()
        };
        let mut emitted_first: HashSet<String> = HashSet::new();
        let mut hub = live_from;
        let mut read: Option<Action> = None;
        let mut frames: VecDeque<Outgoing> = VecDeque::new();
        let mut actions = first;
        let mut quiet_rounds = 0;
        loop {
            // Perform the actions.
            for a in std::mem::take(&mut actions) {
                match a {
                    Action::Send(f) => {
                        if let Outgoing::Frame(frame) = &f
                            && matches!(**frame, ServerFrame::Replayed { .. })
                        {
                            let missing: Vec<&String> = owed
                                .iter()
                                .filter(|(s, id)| {
                                    !emitted_first.contains(*id)
                                        && !trace.acked.contains(*id)
                                        && trace.acked_through.is_none_or(|t| **s > t)
                                })
                                .map(|(_, id)| id)
                                .collect();
                            assert!(missing.is_empty(), "replayed before {missing:?} was sent");
                        }
                        if let Outgoing::Notification { row, attempt: 1 } = &f {
                            emitted_first.insert(row.notification_id.clone());
                        }
                        if let Outgoing::Notification { row, .. } = &f
                            && (trace.acked.contains(&row.notification_id)
                                || trace.acked_through.is_some_and(|t| row.seq <= t))
                        {
                            trace.sent_after_ack.push(row.notification_id.clone());
                        }
                        if queued >= CAPACITY {
                            // The real shell closes a session whose queue overflows.
                            return (trace, SessionEnd::Closed);
                        }
                        queued += 1;
                        frames.push_back(f);
                    }
                    Action::ReadPending { .. } | Action::ReadLog { .. } => {
                        assert!(read.is_none(), "one read at a time");
                        read = Some(a);
                    }
                    Action::Append(events) => {
                        for ev in events {
                            self.log.append(ev);
                        }
                    }
                    Action::Close(_) => return (trace, SessionEnd::Closed),
                }
            }
            let choice = if drain {
                // Everything gets its turn: the writer, the device's ACKs, the read, the hub,
                // and time.
                quiet_rounds += 1;
                match quiet_rounds % 6 {
                    0 => 0,
                    1 => 1,
                    2 => 2,
                    3 => 3,
                    4 => 5,
                    _ => 6,
                }
            } else {
                if dice.done() {
                    return (trace, SessionEnd::Disconnected);
                }
                dice.roll(10)
            };
            let input = match choice {
                // The writer puts frames on the wire; the device receives them.
                0 => {
                    let n = if drain {
                        CAPACITY
                    } else {
                        dice.roll(4) as usize
                    };
                    for _ in 0..n {
                        let Some(f) = frames.pop_front() else { break };
                        queued -= 1;
                        written += 1;
                        self.receive(f, &mut trace);
                    }
                    Input::Tick
                }
                // The device ACKs something it received (by id, or everything up to its cursor).
                1 => {
                    if self.device.unacked.is_empty() {
                        Input::Tick
                    } else if drain || dice.roll(3) > 0 {
                        let take = if drain {
                            self.device.unacked.len()
                        } else {
                            1 + dice.roll(self.device.unacked.len() as u32) as usize
                        };
                        let ids: Vec<String> = self.device.unacked.drain(..take).collect();
                        trace.acked.extend(ids.iter().cloned());
                        Input::Client(ClientFrame::Ack { ids, up_to: None })
                    } else {
                        let cursor = self.device.cursor.expect("received something");
                        self.device.unacked.clear();
                        trace.acked_through =
                            Some(trace.acked_through.map_or(cursor, |t| t.max(cursor)));
                        Input::Client(ClientFrame::Ack {
                            ids: vec![],
                            up_to: Some(
                                Cursor {
                                    epoch: EPOCH,
                                    seq: cursor,
                                }
                                .to_string(),
                            ),
                        })
                    }
                }
                // The read the session asked for is answered.
                2 => match read.take() {
                    Some(Action::ReadPending { after, bound }) => {
                        Input::Pending(self.log.pending(self.applied, after, bound))
                    }
                    Some(Action::ReadLog { from, max }) => {
                        let to = (from + max as u64).min(self.log.end);
                        Input::Log {
                            events: self
                                .log
                                .events
                                .range(from..to)
                                .map(|(o, e)| (*o, e.clone()))
                                .collect(),
                            next: (to > from).then_some(to),
                        }
                    }
                    _ => Input::Tick,
                },
                // The hub delivers the next live event (deliveries are not forwarded).
                3 => {
                    let next = self
                        .log
                        .events
                        .range(hub..)
                        .next()
                        .map(|(o, e)| (*o, e.clone()));
                    match next {
                        Some((o, ev)) => {
                            hub = o + 1;
                            if matches!(ev, UserEvent::Delivered(_) | UserEvent::Progress(_)) {
                                Input::Tick
                            } else {
                                Input::Live {
                                    offset: o,
                                    event: Arc::new(ev),
                                }
                            }
                        }
                        None => {
                            hub = self.log.end;
                            Input::Tick
                        }
                    }
                }
                // A producer notifies the user (sometimes a repeat of a notification the device
                // has not acknowledged: a repeated expansion), or someone else writes.
                4 => {
                    match dice.roll(6) {
                        0 => self.log.other_user(),
                        1 => {
                            let unacked: Vec<String> = self.device.unacked.clone();
                            if let Some(id) = unacked.first() {
                                self.log.append(added(id));
                            }
                        }
                        2 => {
                            let ids: Vec<String> =
                                self.device.received.keys().take(2).cloned().collect();
                            self.log.append(read_elsewhere(ids));
                        }
                        3 => {
                            let id = format!("q{}", self.log.end);
                            self.log.append(added(&id));
                        }
                        _ => {
                            let id = format!("n{}", self.log.end);
                            self.log.append(added(&id));
                        }
                    }
                    Input::Tick
                }
                // The projection applies more of the log.
                5 => {
                    let step = if drain {
                        u64::MAX
                    } else {
                        1 + dice.roll(4) as u64
                    };
                    self.applied = self.applied.saturating_add(step).min(self.log.end);
                    Input::Tick
                }
                // Time passes.
                _ => {
                    now += if drain { 150 } else { dice.roll(300) as i64 };
                    Input::Tick
                }
            };
            if drain {
                let idle = frames.is_empty()
                    && read.is_none()
                    && self.device.unacked.is_empty()
                    && hub >= self.log.end
                    && !session.replaying()
                    && session.in_flight() == 0;
                if idle && matches!(input, Input::Tick) {
                    return (trace, SessionEnd::Quiet);
                }
                assert!(quiet_rounds < 100_000, "the session never went quiet");
            }
            actions = session.handle(io(now, queued, written, spare(dice)), input);
            assert_eq!(
                session.tracked(),
                session.in_flight() + session.queued(),
                "the session remembers an id for exactly what is queued or in flight"
            );
        }
    }

    /// The device gets a frame.
    fn receive(&mut self, f: Outgoing, trace: &mut Trace) {
        match f {
            Outgoing::Notification { row, attempt } => {
                let id = row.notification_id.clone();
                assert!(
                    !id.starts_with('q'),
                    "{id} is not live (the user's preferences) but was sent"
                );
                if attempt == 1 {
                    trace.first_sends.push((row.seq, id.clone()));
                }
                if !self.device.received.contains_key(&id) {
                    self.device.received.insert(id.clone(), row.seq);
                    self.device.unacked.push(id);
                    self.device.cursor =
                        Some(self.device.cursor.map_or(row.seq, |c| c.max(row.seq)));
                }
            }
            Outgoing::Frame(f) => {
                if let ServerFrame::Replayed { cursor } = *f {
                    assert!(trace.replayed.is_none(), "one replayed per session");
                    let seq = cursor.map(|c| c.parse::<Cursor>().unwrap().seq);
                    trace.replayed = Some((trace.first_sends.len(), seq));
                }
            }
        }
    }
}

fn check_session(trace: &Trace) {
    let seqs: Vec<u64> = trace.first_sends.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "first sends in increasing seq: {seqs:?}"
    );
    let ids: HashSet<&String> = trace.first_sends.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), trace.first_sends.len(), "an id first-sent twice");
    assert!(
        trace.sent_after_ack.is_empty(),
        "sent after its ACK was handled: {:?}",
        trace.sent_after_ack
    );
    if let Some((at, cursor)) = trace.replayed {
        for (i, (seq, _)) in trace.first_sends.iter().enumerate() {
            let replayed_part = cursor.is_some_and(|c| *seq <= c);
            assert_eq!(
                i < at,
                replayed_part,
                "replayed (cursor {cursor:?}) must separate the replay from live: {seqs:?}"
            );
        }
    }
}

/// Builds a history of `n` steps and returns the run with its projection somewhere behind.
fn history(dice: &mut Dice, n: usize) -> Run {
    let mut log = Log::default();
    let mut device = Device::default();
    let mut ids: Vec<(String, u64)> = Vec::new();
    for _ in 0..n {
        match dice.roll(8) {
            0 => log.other_user(),
            1 if !ids.is_empty() => {
                // The device ACKed some by id in an earlier session.
                let (id, seq) = ids[dice.roll(ids.len() as u32) as usize].clone();
                log.append(acked(DEVICE, vec![id.clone()], None));
                device.received.insert(id, seq);
            }
            2 if !ids.is_empty() => {
                let (id, _) = &ids[dice.roll(ids.len() as u32) as usize];
                log.append(acked("other", vec![id.clone()], None));
            }
            3 if !ids.is_empty() => {
                let (id, _) = &ids[dice.roll(ids.len() as u32) as usize];
                log.append(read_elsewhere(vec![id.clone()]));
            }
            4 => {
                // Quiet by the user's preferences: in the projection, never sent.
                let id = format!("q{}", log.end);
                log.append(added(&id));
            }
            _ => {
                let id = format!("n{}", log.end);
                let seq = log.append(added(&id));
                ids.push((id, seq));
            }
        }
    }
    // Sometimes the device resumes from a cursor, having processed everything up to it.
    if !ids.is_empty() && dice.roll(2) == 0 {
        let (_, seq) = ids[dice.roll(ids.len() as u32) as usize];
        device.cursor = Some(seq);
        for (id, s) in &ids {
            if *s <= seq {
                device.received.insert(id.clone(), *s);
            }
        }
    }
    let applied = dice.roll(log.end as u32 + 1) as u64;
    Run {
        log,
        applied,
        device,
    }
}

fn run_case(rolls: Vec<u32>, history_len: usize, reconnects: usize) {
    let mut dice = Dice { rolls, at: 0 };
    let mut run = history(&mut dice, history_len);
    let already: HashSet<String> = run.device.received.keys().cloned().collect();
    let per_session = dice.rolls.len().saturating_sub(dice.at) / (reconnects + 1);
    for _ in 0..reconnects {
        let from = dice.at.min(dice.rolls.len());
        let mut part = Dice {
            rolls: dice.rolls[from..(from + per_session).min(dice.rolls.len())].to_vec(),
            at: 0,
        };
        dice.at += per_session;
        let (trace, _end) = run.session(&mut part, false);
        check_session(&trace);
    }
    let (trace, end) = run.session(&mut dice, true);
    check_session(&trace);
    assert!(
        matches!(end, SessionEnd::Quiet),
        "the last session ends quiet"
    );
    // No gap: every notification of the user (first copy) the device had not processed before
    // has reached it.
    for (id, _) in run.log.first_seqs(run.log.end) {
        if id.starts_with('q') {
            continue; // not live: checked in `receive`
        }
        assert!(
            already.contains(&id) || run.device.received.contains_key(&id),
            "{id} never reached the device"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_gives_no_gap_no_duplicate_first_send_and_order(
        rolls in prop::collection::vec(any::<u32>(), 0..400),
        history_len in 0usize..40,
        reconnects in 0usize..3,
    ) {
        run_case(rolls, history_len, reconnects);
    }
}

/// The start of a session of a device without a cursor.
fn fresh_start(live_from: u64, projection_applied: u64) -> Start {
    Start {
        user_id: USER.into(),
        hello: Hello::parse(DEVICE.into(), None, EPOCH).unwrap(),
        epoch: EPOCH,
        session_id: "s".into(),
        partition: 0,
        live_from,
        projection_applied,
    }
}

/// What a store answers a read bounded by `bound` from `rows`, in order.
fn answer(
    bound: PageBound,
    rows: impl Iterator<Item = Result<InboxRow, Infallible>>,
) -> Vec<InboxRow> {
    bound.take(rows).unwrap_or_else(|never| match never {})
}

#[test]
fn a_repeated_expansion_is_not_sent_again_and_an_ack_by_id_settles_it() {
    // n0 at seq 0 reaches the device; a repeat of it at seq 1 (a repeated expansion after a
    // crash) arrives live. It is not a new notification.
    let mut log = Log::default();
    log.append(added("n0"));
    let mut run = Run {
        log,
        applied: 1,
        device: Device::default(),
    };
    let live_from = run.log.end;
    let (mut s, first) = Session::new(
        config(),
        fresh_start(live_from, 1),
        Io {
            now_ms: 0,
            room: CAPACITY,
            written: 0,
            spare_bytes: usize::MAX,
        },
    );
    assert!(
        first
            .iter()
            .any(|a| matches!(a, Action::ReadPending { .. }))
    );
    let io = Io {
        now_ms: 0,
        room: CAPACITY,
        written: 0,
        spare_bytes: usize::MAX,
    };
    let sent = |actions: &[Action]| -> Vec<(String, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Outgoing::Notification { row, attempt }) => {
                    Some((row.notification_id.clone(), *attempt))
                }
                _ => None,
            })
            .collect()
    };
    let a = s.handle(
        io,
        Input::Pending(run.log.pending(1, None, PageBound::rows(4))),
    );
    assert_eq!(sent(&a), vec![("n0".to_string(), 1)]);
    let repeat = run.log.append(added("n0"));
    let a = s.handle(
        io,
        Input::Live {
            offset: repeat,
            event: Arc::new(added("n0")),
        },
    );
    assert!(sent(&a).is_empty(), "the repeat is not a new notification");
    s.handle(
        io,
        Input::Client(ClientFrame::Ack {
            ids: vec!["n0".into()],
            up_to: None,
        }),
    );
    assert_eq!(s.in_flight(), 0, "the ACK by id settled it");
    let later = Io {
        now_ms: 60_000,
        room: CAPACITY,
        written: 1,
        spare_bytes: usize::MAX,
    };
    assert!(
        sent(&s.handle(later, Input::Tick)).is_empty(),
        "never redelivered"
    );
    run.applied = run.log.end;
}

#[test]
fn a_hub_behind_the_projection_does_not_resend_what_the_projection_settled() {
    // The hub's position (`live_from` = 0) is behind the projection's (`applied` = 3) when the
    // device connects: n0 and n1 were added and ACKed by this device, all applied, so nothing
    // is pending. The live events the hub still has to hand out (offsets 0..3) are what the
    // pending read already covered: neither goes out again, and the live n3 after them does.
    let mut log = Log::default();
    log.append(added("n0"));
    log.append(added("n1"));
    log.append(acked(DEVICE, vec!["n0".into(), "n1".into()], None));
    let applied = log.end;
    let io = Io {
        now_ms: 0,
        room: CAPACITY,
        written: 0,
        spare_bytes: usize::MAX,
    };
    let (mut s, _) = Session::new(config(), fresh_start(0, applied), io);
    let sent = |actions: &[Action]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Outgoing::Notification { row, .. }) => {
                    Some(row.notification_id.clone())
                }
                _ => None,
            })
            .collect()
    };
    let mut all = sent(&s.handle(
        io,
        Input::Pending(log.pending(applied, None, PageBound::rows(4))),
    ));
    let n3 = log.append(added("n3"));
    for offset in 0..=n3 {
        let event = Arc::new(log.events[&offset].clone());
        all.extend(sent(&s.handle(io, Input::Live { offset, event })));
    }
    assert_eq!(all, ["n3"]);
}

#[test]
fn a_log_read_that_finds_nothing_in_the_gap_ends_the_session_instead_of_skipping_it() {
    // The projection applied nothing; the hub's position is 3: offsets 0..3 are read from the
    // log. A read that finds no record there (a log that lost them, or a reader that skipped
    // them) must not let the session go on: it would send what follows, and the device's
    // cursor would pass them for good.
    let mut log = Log::default();
    for id in ["n0", "n1", "n2"] {
        log.append(added(id));
    }
    let io = Io {
        now_ms: 0,
        room: CAPACITY,
        written: 0,
        spare_bytes: usize::MAX,
    };
    let (mut s, _) = Session::new(config(), fresh_start(log.end, 0), io);
    let a = s.handle(io, Input::Pending(vec![]));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::ReadLog { from: 0, .. })),
        "{a:?}"
    );
    let n3 = log.append(added("n3"));
    let a = s.handle(
        io,
        Input::Live {
            offset: n3,
            event: Arc::new(added("n3")),
        },
    );
    assert!(
        !a.iter().any(|a| matches!(a, Action::Send(_))),
        "held: {a:?}"
    );
    let a = s.handle(
        io,
        Input::Log {
            events: vec![],
            next: None,
        },
    );
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Close(e) if e.close == Close::InternalError)),
        "{a:?}"
    );
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::Send(Outgoing::Notification { .. }))),
        "n3 is not sent past the unread gap: {a:?}"
    );
}

#[test]
fn what_a_device_never_acks_is_given_up_and_forgotten() {
    // A device that reads every frame and never ACKs: each notification is sent, redelivered
    // twice (`max_redeliveries`), then given up (left for the next resume). The session keeps
    // nothing about it but its id among the last `recent_ids` settled or given up: a repeat of
    // one of those is not sent again in this session, and an older one is forgotten.
    let mut log = Log::default();
    let live_from = log.end;
    let mut now = 0;
    let mut written = 0;
    let io = |now, written| Io {
        now_ms: now,
        room: CAPACITY,
        written,
        spare_bytes: usize::MAX,
    };
    // The writer puts every frame on the wire at once: `written` counts them all.
    let frames = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send(_)))
            .count() as u64
    };
    let count = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send(Outgoing::Notification { .. })))
            .count()
    };
    let cfg = SessionConfig {
        recent_ids: 16,
        ..config()
    };
    let (mut s, a) = Session::new(cfg, fresh_start(live_from, 0), io(now, written));
    written += frames(&a);
    let a = s.handle(io(now, written), Input::Pending(Vec::new()));
    written += frames(&a);
    let mut sends = 0;
    for i in 0..50 {
        let offset = log.append(added(&format!("n{i}")));
        let event = Arc::new(log.events[&offset].clone());
        let a = s.handle(io(now, written), Input::Live { offset, event });
        sends += count(&a);
        written += frames(&a);
        for _ in 0..10 {
            now += 500;
            let a = s.handle(io(now, written), Input::Tick);
            sends += count(&a);
            written += frames(&a);
        }
    }
    assert_eq!(sends, 50 * 3, "each sent once and redelivered twice");
    assert_eq!((s.in_flight(), s.queued(), s.tracked()), (0, 0, 0));
    let offset = log.append(added("n49"));
    let event = Arc::new(log.events[&offset].clone());
    let a = s.handle(io(now, written), Input::Live { offset, event });
    assert_eq!(
        count(&a),
        0,
        "a repeat of a recent given-up one is not sent again"
    );
    let offset = log.append(added("n0"));
    let event = Arc::new(log.events[&offset].clone());
    let a = s.handle(io(now, written), Input::Live { offset, event });
    assert_eq!(count(&a), 1, "one given up 50 ago is no longer remembered");
}

#[test]
fn a_mark_of_nothing_is_an_error_frame_and_appends_nothing() {
    let io = Io {
        now_ms: 0,
        room: CAPACITY,
        written: 0,
        spare_bytes: usize::MAX,
    };
    let (mut s, _) = Session::new(config(), fresh_start(0, 0), io);
    let _ = s.handle(io, Input::Pending(Vec::new()));
    let answers = |actions: &[Action]| -> (usize, Vec<String>) {
        let appends = actions
            .iter()
            .filter(|a| matches!(a, Action::Append(_)))
            .count();
        let errors = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Outgoing::Frame(f)) => match f.as_ref() {
                    ServerFrame::Error { code, .. } => Some(code.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        (appends, errors)
    };
    for frame in [
        ClientFrame::Read {
            ids: vec![],
            up_to: None,
        },
        ClientFrame::Unread { ids: vec![] },
        ClientFrame::Archive { ids: vec![] },
    ] {
        let a = s.handle(io, Input::Client(frame.clone()));
        assert_eq!(
            answers(&a),
            (0, vec!["invalid_request".to_string()]),
            "{frame:?}"
        );
    }
    // A mark that names something is appended.
    let a = s.handle(
        io,
        Input::Client(ClientFrame::Unread {
            ids: vec!["n0".into()],
        }),
    );
    assert_eq!(answers(&a), (1, vec![]));
}

/// A live notification `id` whose payload is a JSON string of `bytes` characters.
fn large(id: &str, bytes: usize) -> NotificationAdded {
    let UserEvent::Added(mut a) = added(id) else {
        unreachable!()
    };
    a.payload = format!("\"{}\"", "x".repeat(bytes));
    a
}

/// A moment with a send queue of room to spare and nothing written yet.
const ROOMY: Io = Io {
    now_ms: 0,
    room: 10_000,
    written: 0,
    spare_bytes: usize::MAX,
};

/// A device that stopped reading, with a backlog of large notifications: the session holds about
/// `max_in_flight_bytes` in flight and `replay_page_bytes` queued, not a window of 256 of them
/// (16 MiB at 64 KiB each) and a page of 256 behind it, and stops reading the projection.
#[test]
fn a_device_that_does_not_read_pins_a_bounded_number_of_bytes() {
    const BACKLOG: u64 = 256;
    let row = |seq: u64| herald_core::session::added_row(&large(&format!("n{seq}"), 60_000), seq);
    let io = ROOMY;
    let cfg = SessionConfig::default();
    let (mut s, mut actions) = Session::new(cfg, fresh_start(BACKLOG, BACKLOG), io);
    let (mut sends, mut reads, mut read_rows) = (0, 0, 0);
    for _ in 0..100 {
        let mut next = None;
        for a in actions.drain(..) {
            match a {
                Action::Send(Outgoing::Notification { .. }) => sends += 1,
                Action::ReadPending { after, bound } => {
                    let from = after.map_or(0, |a| a + 1);
                    let rows = answer(bound, (from..BACKLOG).map(|seq| Ok(row(seq))));
                    reads += 1;
                    read_rows += rows.len();
                    next = Some(Input::Pending(rows));
                }
                _ => {}
            }
        }
        match next {
            Some(input) => actions = s.handle(io, input),
            None => break,
        }
    }
    let (window, queue) = (cfg.delivery.max_in_flight_bytes, cfg.replay_page_bytes);
    let row_bytes = herald_core::delivery::Weigh::bytes(&row(0));
    assert!(
        s.delivery_bytes() <= window + queue + 2 * row_bytes,
        "holds {} bytes",
        s.delivery_bytes()
    );
    assert_eq!(
        s.in_flight(),
        sends,
        "nothing ACKed: every send is in flight"
    );
    assert!(sends <= window / row_bytes + 1, "{sends} sent");
    assert!(s.queued() >= 1, "a backlog waits");
    assert!(
        reads >= 2,
        "a page is bounded by bytes, not only by rows ({reads} reads)"
    );
    // No room shrank between a read's ask and its answer here: every row read was kept.
    assert_eq!(
        read_rows,
        s.in_flight() + s.queued(),
        "rows read and dropped, to be read again"
    );
}

/// A device that reads and ACKs each notification, with a backlog of large ones: each row is
/// read from the projection once (a read only while less than half a page's bytes waits,
/// for about the room there is), not once per ACK, and all are sent once, in order.
#[test]
fn a_backlog_of_large_rows_is_read_once() {
    const BACKLOG: u64 = 600;
    let row = |seq: u64| herald_core::session::added_row(&large(&format!("n{seq}"), 10_000), seq);
    let io = ROOMY;
    let (mut s, first) = Session::new(SessionConfig::default(), fresh_start(BACKLOG, BACKLOG), io);
    let mut inputs: std::collections::VecDeque<Input> = std::collections::VecDeque::new();
    let (mut sent, mut read_rows) = (Vec::new(), 0usize);
    let mut take = |actions: Vec<Action>, inputs: &mut std::collections::VecDeque<Input>| {
        for a in actions {
            match a {
                Action::Send(Outgoing::Notification { row, attempt: 1 }) => {
                    sent.push(row.seq);
                    inputs.push_back(Input::Client(ClientFrame::Ack {
                        ids: vec![row.notification_id.clone()],
                        up_to: None,
                    }));
                }
                Action::ReadPending { after, bound } => {
                    let from = after.map_or(0, |a| a + 1);
                    let rows = answer(bound, (from..BACKLOG).map(|seq| Ok(row(seq))));
                    read_rows += rows.len();
                    // A read answers before the ACKs already on their way: the worst case.
                    inputs.push_front(Input::Pending(rows));
                }
                _ => {}
            }
        }
    };
    take(first, &mut inputs);
    let mut steps = 0;
    while let Some(input) = inputs.pop_front() {
        steps += 1;
        assert!(steps < 100_000, "no end");
        let actions = s.handle(io, input);
        take(actions, &mut inputs);
    }
    assert_eq!(
        sent,
        (0..BACKLOG).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(
        read_rows, BACKLOG as usize,
        "each row read once: a read's rows are all kept"
    );
}

/// Live events that arrive while a replay runs are held, bounded by bytes as well as by count:
/// large notifications past `max_held_bytes` end the session as a slow consumer (it resumes
/// later), long before `max_held` of them.
#[test]
fn live_events_held_during_a_replay_are_bounded_by_bytes() {
    let io = ROOMY;
    let cfg = SessionConfig::default();
    let (mut s, first) = Session::new(cfg, fresh_start(0, 0), io);
    assert!(
        first
            .iter()
            .any(|a| matches!(a, Action::ReadPending { .. })),
        "the replay reads first"
    );
    let mut held = 0;
    let ending = loop {
        let event = Arc::new(UserEvent::Added(large(&format!("n{held}"), 60_000)));
        let actions = s.handle(
            io,
            Input::Live {
                offset: held,
                event,
            },
        );
        if let Some(Action::Close(end)) = actions.iter().find(|a| matches!(a, Action::Close(_))) {
            break end.clone();
        }
        held += 1;
        assert!(held < cfg.max_held as u64, "held {held} without a close");
    };
    assert_eq!(ending.close, Close::SlowConsumer);
    let most = cfg.max_held_bytes / 60_000 + 1;
    assert!(held as usize <= most, "{held} held (at most {most})");
}

/// Sessions that share a budget (`Io::spare_bytes`, each charged its `memory_bytes`): four
/// devices that connect to a backlog of large notifications and stop reading, and one that reads
/// and ACKs. Unbudgeted, each of the four holds a window and a page (about 2 MiB); with a budget
/// of 3 MiB all five together hold about that, and the reading device still gets its whole
/// backlog, once each, in order, however little of the budget the others leave it.
#[test]
fn sessions_that_share_a_budget_hold_about_that_and_each_moves_on() {
    const BACKLOG: u64 = 100;
    const LIMIT: usize = 3 << 20;
    const DEVICES: usize = 5;
    const READER: usize = DEVICES - 1;
    let row = |seq: u64| herald_core::session::added_row(&large(&format!("n{seq}"), 60_000), seq);
    let row_bytes = herald_core::delivery::Weigh::bytes(&row(0));
    let cfg = SessionConfig::default();
    let spare = |sessions: &[Session]| {
        LIMIT.saturating_sub(sessions.iter().map(Session::memory_bytes).sum::<usize>())
    };
    let io = |now_ms: i64, spare_bytes: usize| Io {
        now_ms,
        spare_bytes,
        ..ROOMY
    };
    let mut sessions = Vec::new();
    let mut inputs: Vec<VecDeque<Input>> = vec![VecDeque::new(); DEVICES];
    let mut first = Vec::new();
    for _ in 0..DEVICES {
        let (s, actions) =
            Session::new(cfg, fresh_start(BACKLOG, BACKLOG), io(0, spare(&sessions)));
        sessions.push(s);
        first.push(actions);
    }
    let (mut sent, mut most) = (Vec::new(), 0usize);
    // What the device does with a session's actions: reads answer at once, the reader ACKs what
    // it is sent.
    let mut take = |d: usize, actions: Vec<Action>, inputs: &mut Vec<VecDeque<Input>>| {
        for a in actions {
            match a {
                Action::Send(Outgoing::Notification { row, attempt: 1 }) if d == READER => {
                    sent.push(row.seq);
                    inputs[d].push_back(Input::Client(ClientFrame::Ack {
                        ids: vec![row.notification_id.clone()],
                        up_to: None,
                    }));
                }
                Action::ReadPending { after, bound } => {
                    let from = after.map_or(0, |a| a + 1);
                    let rows = answer(bound, (from..BACKLOG).map(|seq| Ok(row(seq))));
                    inputs[d].push_back(Input::Pending(rows));
                }
                _ => {}
            }
        }
    };
    for (d, actions) in first.into_iter().enumerate() {
        take(d, actions, &mut inputs);
    }
    // Each round (1 ms, far from any redelivery) gives every session its next input, or a tick
    // when it asked for one.
    for now in 1..2_000i64 {
        for d in 0..DEVICES {
            let input = match inputs[d].pop_front() {
                Some(input) => input,
                None if sessions[d].next_wake(now).is_some_and(|at| at <= now + 100) => Input::Tick,
                None => continue,
            };
            let spare_bytes = spare(&sessions);
            let actions = sessions[d].handle(io(now, spare_bytes), input);
            take(d, actions, &mut inputs);
            most = most.max(sessions.iter().map(Session::memory_bytes).sum());
        }
    }
    assert_eq!(
        sent,
        (0..BACKLOG).collect::<Vec<_>>(),
        "each once, in order"
    );
    // A read may bring a row over what it was sized for, and a session that holds nothing reads
    // a row whatever the budget says.
    assert!(
        most <= LIMIT + 2 * DEVICES * row_bytes,
        "held {most} bytes at most, against a budget of {LIMIT}"
    );
    let stuck: usize = sessions[..READER].iter().map(Session::memory_bytes).sum();
    assert!(
        stuck >= LIMIT / 2,
        "the devices that stopped reading hold what they could ({stuck} bytes)"
    );
}

/// A replay waits for the budget while the session holds something, asks again after
/// `budget_recheck_ms`, and reads a row at a time when it holds nothing; a read's room is
/// counted until its answer comes.
#[test]
fn a_replay_reads_within_the_budget() {
    const BACKLOG: u64 = 10;
    let row = |seq: u64| herald_core::session::added_row(&large(&format!("n{seq}"), 60_000), seq);
    let cfg = SessionConfig::default();
    let none = Io {
        spare_bytes: 0,
        ..ROOMY
    };
    let (mut s, first) = Session::new(cfg, fresh_start(BACKLOG, BACKLOG), none);
    let reads = |actions: &[Action]| -> Vec<PageBound> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ReadPending { bound, .. } => Some(*bound),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        reads(&first),
        vec![PageBound {
            limit: cfg.replay_page,
            max_bytes: 0
        }],
        "holds nothing: one row whatever the budget"
    );
    assert_eq!(s.memory_bytes(), 0, "no room to reserve");
    let sent = s.handle(none, Input::Pending(vec![row(0)]));
    assert!(
        reads(&sent).is_empty(),
        "holds a row now: waits for the budget"
    );
    assert!(s.memory_bytes() >= herald_core::delivery::Weigh::bytes(&row(0)));
    assert_eq!(
        s.next_wake(0),
        Some(cfg.budget_recheck_ms),
        "and looks again"
    );
    let roomy = s.handle(ROOMY, Input::Tick);
    let bound = reads(&roomy);
    assert_eq!(bound.len(), 1, "room again: reads");
    assert!(
        bound[0].max_bytes >= cfg.replay_page_bytes / 2,
        "a page by the room there is ({bound:?})"
    );
    assert!(
        s.memory_bytes() >= cfg.replay_page_bytes / 2,
        "the read's room is reserved until its answer ({} bytes)",
        s.memory_bytes()
    );
}

/// With the budget spent, a session that holds nothing still replays its log gap, asking for
/// fewer records a read (each read takes one event); with room, whole chunks.
#[test]
fn a_log_gap_is_read_in_short_chunks_while_the_budget_is_spent() {
    let gap_read = |spare_bytes: usize| {
        let io = Io {
            spare_bytes,
            ..ROOMY
        };
        let (mut s, _) = Session::new(SessionConfig::default(), fresh_start(500, 0), io);
        s.handle(io, Input::Pending(Vec::new()))
            .into_iter()
            .find_map(|a| match a {
                Action::ReadLog { from, max } => Some((from, max)),
                _ => None,
            })
    };
    assert_eq!(gap_read(0), Some((0, 32)));
    assert_eq!(gap_read(usize::MAX), Some((0, 500)));
    // A read takes a notification at least, past events that queue none (the device's
    // progress), and the next read starts at the first event it did not take.
    let spent = Io {
        spare_bytes: 0,
        ..ROOMY
    };
    let (mut s, _) = Session::new(SessionConfig::default(), fresh_start(500, 0), spent);
    s.handle(spent, Input::Pending(Vec::new()));
    let progress = |at: i64| {
        UserEvent::Progress(herald_core::model::DeviceProgress {
            user_id: USER.into(),
            device_id: "other".into(),
            delivered: vec![],
            acked_ids: vec![],
            acked_up_to: None,
            at,
        })
    };
    let events = vec![
        (0, progress(0)),
        (1, progress(1)),
        (2, added("n2")),
        (3, added("n3")),
    ];
    let actions = s.handle(
        spent,
        Input::Log {
            events,
            next: Some(4),
        },
    );
    let sent: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outgoing::Notification { row, .. }) => Some(row.notification_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, ["n2"]);
    assert!(
        actions.iter().all(|a| !matches!(a, Action::ReadLog { .. })),
        "a notification in flight: the next read waits for the budget"
    );
    let acked = s.handle(
        spent,
        Input::Client(ClientFrame::Ack {
            ids: vec!["n2".into()],
            up_to: None,
        }),
    );
    assert!(
        acked
            .iter()
            .any(|a| matches!(a, Action::ReadLog { from: 3, max: 32 })),
        "{acked:?}"
    );
}

/// A live notification held while a spent budget paces the replay does not stop it: once the
/// device has ACKed what it was sent, the replay reads its next row, though the held event is
/// still counted in `memory_bytes`.
#[test]
fn a_held_live_event_does_not_stall_a_replay_under_a_spent_budget() {
    const BACKLOG: u64 = 3;
    let row = |seq: u64| herald_core::session::added_row(&large(&format!("n{seq}"), 1_000), seq);
    let spent = Io {
        spare_bytes: 0,
        ..ROOMY
    };
    let reads = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::ReadPending { .. }))
            .count()
    };
    let (mut s, first) = Session::new(
        SessionConfig::default(),
        fresh_start(BACKLOG, BACKLOG),
        spent,
    );
    assert_eq!(reads(&first), 1);
    let live = Arc::new(UserEvent::Added(large("live", 1_000)));
    s.handle(
        spent,
        Input::Live {
            offset: BACKLOG,
            event: live,
        },
    );
    let mut sent = Vec::new();
    let mut input = Input::Pending(vec![row(0)]);
    for _ in 0..20 {
        let actions = s.handle(spent, input);
        let ids: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Outgoing::Notification { row, attempt: 1 }) => {
                    Some(row.notification_id.clone())
                }
                _ => None,
            })
            .collect();
        sent.extend(ids.iter().cloned());
        input = if reads(&actions) == 1 {
            let next = sent.len() as u64;
            Input::Pending((next..BACKLOG).take(1).map(row).collect())
        } else if !ids.is_empty() {
            Input::Client(ClientFrame::Ack { ids, up_to: None })
        } else {
            break;
        };
    }
    assert_eq!(
        sent,
        ["n0", "n1", "n2", "live"],
        "the backlog, then the live one"
    );
}
