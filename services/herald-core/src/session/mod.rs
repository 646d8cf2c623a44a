//! A device's session as a pure state machine: everything that decides what a device receives.
//!
//! The gateway's transports (WebSocket, SSE) own the sockets, the hub subscription and the
//! timers; they feed a [`Session`] [`Input`]s and perform the [`Action`]s it returns, in order.
//! No I/O, no clock, no tasks here: the caller passes the time and the state of its send queue
//! ([`Io`]) with every input, and asks [`Session::next_wake`] when to come back with a
//! [`Input::Tick`].
//!
//! What it decides:
//! * **the replay → live merge** (invariant 10 in ARCHITECTURE.md). The transport subscribes to
//!   live events first and learns `live_from`, the first offset the subscription will deliver,
//!   and `projection_applied`, the inbox projection's applied offset read *after* subscribing.
//!   The session then reads the device's pending rows from the projection (page by page), then
//!   the user's log records in `[projection_applied, live_from)`, and only then processes the
//!   live events it held meanwhile. Offers at or below the highest seq already offered are
//!   dropped ([`Delivery`]), so the overlap of the three sources is never sent twice, and since
//!   they cover every offset, nothing falls in a gap. `replayed` goes out once everything up to
//!   the highest replayed seq has been sent;
//! * **what is a duplicate**: a notification id this session already holds, or recently settled
//!   or gave up on (the last `recent_ids` of them), is not offered again, even at another seq (a
//!   repeated expansion after a crash); an ACK by id settles the notification whatever seq it
//!   came with;
//! * **ACKs, deliveries and marks**: ACK frames settle at once; first sends and ACKs are
//!   gathered and appended as one `DeviceProgress` event at most `progress_flush_ms` later; an echoed ACK's `up_to` is clamped below its own offset (as the fold does); marks
//!   from other devices become `mark` frames;
//! * **flow**: notifications are sent only while the send queue has room beyond a reserve kept
//!   for other frames; a queue that stays full with no progress by the writer for the
//!   slow-consumer timeout ends the session (4008); replay reads are issued only while the
//!   delivery queue has room for a page, so a large backlog replays at the client's pace.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::cursor::{Cursor, Epoch};
use crate::delivery::{Delivery, DeliveryConfig, Offer};
use crate::ids::validate_id;
use crate::model::{DeviceProgress, MarkChange, NotificationAdded, UserEvent};
use crate::projection::{InboxRow, PageBound};
use crate::protocol::{ClientFrame, Close, ServerFrame};

/// The default of [`SessionConfig::replay_page_bytes`]: 1 MiB.
pub const REPLAY_PAGE_BYTES: usize = 1 << 20;
/// The default of [`SessionConfig::max_held_bytes`]: 8 MiB.
pub const MAX_HELD_BYTES: usize = 8 << 20;

/// What a live event held during a replay weighs: its size and its strings that grow with the
/// request (a notification's payload and ids, a mark's ids).
pub fn event_bytes(ev: &UserEvent) -> usize {
    let strings = match ev {
        UserEvent::Added(a) => {
            a.payload.len()
                + a.notification_id.len()
                + a.event_type.len()
                + a.source.len()
                + a.user_id.len()
                + a.collapse_key.as_ref().map_or(0, String::len)
        }
        UserEvent::Read(m)
        | UserEvent::Unread(m)
        | UserEvent::Archived(m)
        | UserEvent::Unarchived(m) => {
            m.user_id.len()
                + m.device_id.as_ref().map_or(0, String::len)
                + m.notification_ids.iter().map(String::len).sum::<usize>()
        }
        UserEvent::Progress(p) => {
            p.acked_ids.iter().map(String::len).sum::<usize>() + 8 * p.delivered.len()
        }
        _ => 0,
    };
    std::mem::size_of::<UserEvent>() + strings
}

/// Knobs of a session. Defaults match docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub delivery: DeliveryConfig,
    /// Announced in the `session` frame.
    pub heartbeat_ms: u64,
    /// Pending rows read from the projection per replay step, at most.
    pub replay_page: usize,
    /// Bytes ([`crate::delivery::Weigh`]) of pending rows a replay queues beyond the window, at
    /// most (one row is always taken): a read brings about that much ([`PageBound`]), and its
    /// answer is cut there, the rest read again later. With `replay_page` alone, a device that
    /// stopped reading held a page of 256 notifications of up to 64 KiB each.
    pub replay_page_bytes: usize,
    /// Log records read per step of the replay's log gap.
    pub gap_chunk: usize,
    /// Live events held while the replay runs (and after it, until there is room for them);
    /// more is a slow consumer.
    pub max_held: usize,
    /// Bytes of live events held while the replay runs (and after it, until there is room for
    /// them), by [`event_bytes`]; more is a slow consumer. The events are the hub's, shared with the user's other sessions: this bounds
    /// what one stuck replay keeps alive.
    pub max_held_bytes: usize,
    /// Send-queue slots kept for marks, errors and pongs: notifications only use the rest.
    pub send_reserve: usize,
    /// How long the send queue may stay full with no progress by the writer.
    pub slow_consumer_timeout_ms: i64,
    /// How often a session waiting for send-queue room looks again.
    pub blocked_recheck_ms: i64,
    /// How soon a replay waiting for the gateway's budget ([`Io::spare_bytes`]) looks again;
    /// twice as long each time it still waits, up to 16 times this.
    pub budget_recheck_ms: i64,
    /// Notification ids settled or given up on (after the last redelivery) remembered to drop
    /// repeats of them: the most recent this many.
    pub recent_ids: usize,
    /// Deliveries and ACKs are appended as one `DeviceProgress` at most this long after the
    /// first of them, or once `progress_max` have gathered.
    pub progress_flush_ms: i64,
    pub progress_max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            delivery: DeliveryConfig::default(),
            heartbeat_ms: 25_000,
            replay_page: 256,
            replay_page_bytes: REPLAY_PAGE_BYTES,
            gap_chunk: 1024,
            max_held: 4096,
            max_held_bytes: MAX_HELD_BYTES,
            send_reserve: 64,
            slow_consumer_timeout_ms: 10_000,
            blocked_recheck_ms: 20,
            budget_recheck_ms: 100,
            recent_ids: 4096,
            progress_flush_ms: 100,
            progress_max: 512,
        }
    }
}

/// Why a session ends, as the transport says it: a close code and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub close: Close,
    pub reason: String,
}

impl Ending {
    pub fn new(close: Close, reason: impl Into<String>) -> Ending {
        Ending {
            close,
            reason: reason.into(),
        }
    }
}

/// A validated `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub device_id: String,
    /// The device's cursor, when it belongs to this log's epoch.
    pub after: Option<u64>,
    /// The device sent a cursor of another epoch: it must drop it (`reset: true`).
    pub reset: bool,
}

impl Hello {
    /// Checks a `hello` frame's fields against the log's epoch.
    pub fn parse(device_id: String, cursor: Option<&str>, epoch: Epoch) -> Result<Hello, Ending> {
        validate_id("device_id", &device_id)
            .map_err(|e| Ending::new(Close::ProtocolError, e.to_string()))?;
        let (after, reset) = match cursor.map(str::parse::<Cursor>) {
            None => (None, false),
            Some(Err(e)) => return Err(Ending::new(Close::ProtocolError, e.to_string())),
            Some(Ok(c)) if c.matches(epoch) => (Some(c.seq), false),
            Some(Ok(_)) => (None, true),
        };
        Ok(Hello {
            device_id,
            after,
            reset,
        })
    }
}

/// Where the session starts: what the transport learned when it subscribed.
#[derive(Debug, Clone)]
pub struct Start {
    pub user_id: String,
    pub hello: Hello,
    pub epoch: Epoch,
    pub session_id: String,
    /// The user's partition of the user-events topic.
    pub partition: u32,
    /// Every event of the user's partition at or after this offset arrives as [`Input::Live`].
    pub live_from: u64,
    /// The inbox projection's applied offset in the user's partition, read after subscribing.
    pub projection_applied: u64,
}

/// The transport's state at the moment of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    pub now_ms: i64,
    /// Free slots in the send queue.
    pub room: usize,
    /// Frames the writer has put on the wire so far (any progress counts).
    pub written: u64,
    /// Bytes the transport's budget for all its sessions has free, each session charged its
    /// [`Session::memory_bytes`]; `usize::MAX` when there is no such budget. A replay reads
    /// only while half a page (`replay_page_bytes`) of it is free, and asks for no more than
    /// is free, unless no notification is in flight or queued (then it reads a row at least):
    /// its backlog waits in the store instead of in memory.
    pub spare_bytes: usize,
}

/// What happens to a session.
#[derive(Debug, Clone)]
pub enum Input {
    /// The answer to [`Action::ReadPending`].
    Pending(Vec<InboxRow>),
    /// The answer to [`Action::ReadLog`]: this user's events among the records read, and the
    /// offset after the last record read (of any user), `None` when nothing was read (which
    /// ends the session: the range it asked for holds records).
    Log {
        events: Vec<(u64, UserEvent)>,
        next: Option<u64>,
    },
    /// A live event of the user's partition.
    Live { offset: u64, event: Arc<UserEvent> },
    /// A frame from the device.
    Client(ClientFrame),
    /// A read the session asked for failed.
    ReadFailed(String),
    /// Time passed (see [`Session::next_wake`]) or the send queue drained.
    Tick,
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A notification: rendered by [`crate::protocol::notification_frame`].
    Notification { row: Arc<InboxRow>, attempt: u32 },
    /// Boxed: frames wait in bounded queues, and most of them are notifications.
    Frame(Box<ServerFrame>),
}

/// What the transport must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Outgoing),
    /// Read the rows the device has not acknowledged, with `seq > after`, oldest first, as
    /// many as `bound` takes; answer with [`Input::Pending`].
    ReadPending {
        after: Option<u64>,
        bound: PageBound,
    },
    /// Read up to `max` records of the user's partition from offset `from`; answer with
    /// [`Input::Log`].
    ReadLog {
        from: u64,
        max: usize,
    },
    /// Append these events to the user's partition (deliveries, ACKs, marks).
    Append(Vec<UserEvent>),
    /// End the session with this close; nothing follows.
    Close(Ending),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading pending rows from the projection, after this seq.
    Projection {
        after: Option<u64>,
    },
    /// Reading the log between the projection's applied offset and the live start.
    Gap {
        from: u64,
        to: u64,
    },
    Done,
}

/// One device's session. See the module docs.
#[derive(Debug)]
pub struct Session {
    /// Shared by every session of a gateway (the struct is larger than a pointer).
    cfg: Arc<SessionConfig>,
    user: String,
    device: String,
    epoch: Epoch,
    delivery: Delivery<Arc<InboxRow>>,
    /// Notification id → seq, of everything queued or in flight.
    ids: HashMap<String, u64>,
    recent: RecentIds,
    phase: Phase,
    projection_applied: u64,
    live_from: u64,
    /// A read (pending rows or log) is out.
    reading: bool,
    /// The bound of the last pending-rows read: a page that full may have more behind it.
    asked: PageBound,
    /// The bytes the read that is out may queue: counted in [`Session::memory_bytes`] until its
    /// answer comes, so a budget shared by many sessions is not promised twice.
    reserved: usize,
    /// Whether the read that is out was sized by the budget (its room less than the session's
    /// own): its answer is cut at `reserved`, else at the session's own room then.
    budget_bound: bool,
    /// How many times in a row the replay would have read but the budget
    /// ([`Io::spare_bytes`]) had no room: it looks again later, less often each time.
    budget_waits: u32,
    /// Live events held while the replay runs, and after it until the queue has room for them
    /// (every live event goes behind them meanwhile); what they weigh.
    held: VecDeque<(u64, Arc<UserEvent>)>,
    held_bytes: usize,
    replay_high: Option<u64>,
    replayed_sent: bool,
    /// Seqs first sent, and ACKs, since the last `DeviceProgress`; and since when.
    delivered: Vec<i64>,
    ack_ids: Vec<String>,
    ack_up_to: Option<i64>,
    progress_since: Option<i64>,
    /// Frames this session has asked the transport to send.
    frames_out: u64,
    /// Since when notifications have waited for send-queue room with no progress by the writer.
    blocked_since: Option<i64>,
    last_written: u64,
    closed: bool,
}

/// Collects the actions of one input, counting the frames among them.
struct Out<'a> {
    actions: &'a mut Vec<Action>,
    frames: usize,
}

impl Out<'_> {
    fn send(&mut self, f: Outgoing) {
        self.frames += 1;
        self.actions.push(Action::Send(f));
    }

    fn frame(&mut self, f: ServerFrame) {
        self.send(Outgoing::Frame(Box::new(f)));
    }
}

impl Session {
    /// A session after `hello`; the first actions send the `session` frame and start the replay.
    pub fn new(cfg: impl Into<Arc<SessionConfig>>, start: Start, io: Io) -> (Session, Vec<Action>) {
        let cfg = cfg.into();
        let mut delivery = Delivery::new(cfg.delivery);
        if let Some(a) = start.hello.after {
            delivery.skip_through(a);
        }
        let mut s = Session {
            cfg,
            user: start.user_id,
            device: start.hello.device_id,
            epoch: start.epoch,
            delivery,
            ids: HashMap::new(),
            recent: RecentIds::default(),
            phase: Phase::Projection {
                after: start.hello.after,
            },
            projection_applied: start.projection_applied,
            live_from: start.live_from,
            reading: false,
            asked: PageBound::rows(0),
            reserved: 0,
            budget_bound: false,
            budget_waits: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            replay_high: None,
            replayed_sent: false,
            delivered: Vec::new(),
            ack_ids: Vec::new(),
            ack_up_to: None,
            progress_since: None,
            frames_out: 0,
            blocked_since: None,
            last_written: io.written,
            closed: false,
        };
        let mut actions = Vec::new();
        let mut out = Out {
            actions: &mut actions,
            frames: 0,
        };
        out.frame(ServerFrame::Session {
            session_id: start.session_id,
            user_id: s.user.clone(),
            device_id: s.device.clone(),
            epoch: s.epoch.to_string(),
            resumed: start.hello.after.is_some(),
            reset: start.hello.reset,
            heartbeat_ms: s.cfg.heartbeat_ms,
            max_in_flight: s.cfg.delivery.max_in_flight,
            partition: start.partition,
        });
        s.settle_replay_and_pump(io, &mut out);
        s.frames_out += out.frames as u64;
        (s, actions)
    }

    pub fn user_id(&self) -> &str {
        &self.user
    }

    pub fn device_id(&self) -> &str {
        &self.device
    }

    /// Whether the replay (projection and log gap) is still running.
    pub fn replaying(&self) -> bool {
        self.phase != Phase::Done
    }

    /// Notifications sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.delivery.in_flight()
    }

    /// Notifications waiting to be sent (beyond the window).
    pub fn queued(&self) -> usize {
        self.delivery.queued()
    }

    /// What the notifications in flight and queued weigh ([`crate::delivery::Weigh`]): about
    /// the memory the session holds for them (live events held during a replay are apart).
    pub fn delivery_bytes(&self) -> usize {
        self.delivery.in_flight_bytes() + self.delivery.queued_bytes()
    }

    /// What the session holds by weight: the notifications in flight and queued, the live
    /// events held, and the room a replay read that is out was sized for. What a transport
    /// charges against a budget of all its sessions ([`Io::spare_bytes`]).
    pub fn memory_bytes(&self) -> usize {
        self.delivery_bytes() + self.held_bytes + self.reserved
    }

    /// Notification ids this session remembers as queued or in flight (its duplicate check);
    /// always `in_flight() + queued()`.
    pub fn tracked(&self) -> usize {
        self.ids.len()
    }

    /// Handles one input; returns what to do, in order. After an [`Action::Close`] the session
    /// is over and every further input returns nothing.
    pub fn handle(&mut self, io: Io, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.closed {
            return actions;
        }
        let mut out = Out {
            actions: &mut actions,
            frames: 0,
        };
        let step = match input {
            Input::Pending(rows) => self.pending(rows),
            Input::Log { events, next } => self.log(events, next, io, &mut out),
            Input::Live { offset, event } => self.live(offset, event, io, &mut out),
            Input::Client(frame) => self.client(frame, io, &mut out),
            Input::ReadFailed(e) => Err(Ending::new(Close::InternalError, e)),
            Input::Tick => Ok(()),
        };
        match step {
            Ok(()) => self.settle_replay_and_pump(io, &mut out),
            Err(end) => self.close(end, io.now_ms, &mut out),
        }
        self.frames_out += out.frames as u64;
        actions
    }

    /// The last actions when the transport ends the session: ACKs and deliveries not yet
    /// appended.
    pub fn finish(&mut self, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.flush(now_ms, true, &mut actions);
        self.closed = true;
        actions
    }

    /// When to come back with [`Input::Tick`] at the latest (Unix ms), if anything waits for
    /// time: a redelivery, a send queue without room, deliveries and ACKs to append, or a
    /// replay waiting for the budget.
    pub fn next_wake(&self, now_ms: i64) -> Option<i64> {
        let blocked = self
            .blocked_since
            .map(|_| now_ms + self.cfg.blocked_recheck_ms);
        let flush = self.progress_since.map(|s| s + self.cfg.progress_flush_ms);
        // Live events held after the replay, waiting for room.
        let held = (self.phase == Phase::Done && !self.held.is_empty())
            .then_some(now_ms + self.cfg.blocked_recheck_ms);
        // 1, 2, 4, 8, then 16 times `budget_recheck_ms`: many sessions waiting for a spent
        // budget do not all look again every 100 ms.
        let budget = (self.budget_waits > 0)
            .then(|| now_ms + (self.cfg.budget_recheck_ms << (self.budget_waits - 1).min(4)));
        [self.delivery.next_deadline(), blocked, flush, held, budget]
            .into_iter()
            .flatten()
            .min()
    }

    fn close(&mut self, end: Ending, now_ms: i64, out: &mut Out<'_>) {
        self.flush(now_ms, true, out.actions);
        out.actions.push(Action::Close(end));
        self.closed = true;
    }
}

/// The inbox row a `NotificationAdded` at `seq` stands for.
pub fn added_row(a: &NotificationAdded, seq: u64) -> InboxRow {
    InboxRow {
        user_id: a.user_id.clone(),
        seq,
        notification_id: a.notification_id.clone(),
        event_type: a.event_type.clone(),
        source: a.source.clone(),
        payload: a.payload.clone(),
        priority: a.priority,
        collapse_key: a.collapse_key.clone(),
        created_at: a.created_at,
        deliver_at: a.deliver_at,
        expires_at: a.expires_at,
        read: a.delivery == crate::model::Delivery::Muted,
        archived: false,
        expired: false,
        superseded: false,
        live: a.delivery == crate::model::Delivery::Live,
    }
}

mod client;
mod events;
mod pump;
mod replay;

use events::RecentIds;
