//! Sessions: the I/O shell around [`herald_core::session::Session`].
//!
//! The state machine decides what a device receives; this module only performs its actions:
//! it subscribes to the hub, reads the projection and the log when asked, queues frames for the
//! transport's writer, appends events, and feeds the machine its inputs (client frames, live
//! events, read results, ticks). Transport concerns stay here too: the hello timeout, the
//! heartbeat, token expiry, kicks, shutdown and the client frame rate. Each transport
//! ([`ws`], [`sse`]) is a [`Transport`]: a source of [`Incoming`] that also moves the [`Out`]
//! frames queued in the session's [`Outbox`] toward the peer.

pub mod appends;
pub mod sse;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use herald_core::codec;
use herald_core::projection::{InboxRow, PageBound};
use herald_core::protocol::{ClientFrame, Close, ServerFrame};
use herald_core::session::{Action, Ending, Hello, Input, Io, Outgoing, Session, Start};
use herald_ports::log::{StoredRecord, Topic};
use herald_ports::projection::Stage;

use crate::auth::User;
use crate::clock::{now_ms, now_secs};
use crate::config::SEND_RESERVE;
use crate::hub::Registration;
use crate::limits::{Charge, TokenBucket};
use crate::queue::{self, TrySendError};
use crate::state::AppState;

/// What a session sends, whatever the transport.
pub enum Out {
    /// Rendered by the writer (`herald_core::protocol::notification_frame`).
    Notification {
        row: Arc<InboxRow>,
        attempt: u32,
    },
    /// Boxed: the queue allocates its slots 32 at a time, and an unboxed frame (about 220
    /// bytes) made that first block alone about 7 KiB of every idle session.
    Frame(Box<ServerFrame>),
    Ping,
    /// The last thing an SSE stream says (a WebSocket closes with a close frame instead).
    Close(Close, String),
}

/// Why a session ended.
pub enum End {
    Close(Ending),
    ClientGone,
}

impl End {
    fn close(close: Close, reason: impl Into<String>) -> End {
        End::Close(Ending::new(close, reason))
    }

    /// The close code sent, `None` when the client went first (for metrics).
    pub fn code(&self) -> Option<u16> {
        match self {
            End::Close(ending) => Some(ending.close.code()),
            End::ClientGone => None,
        }
    }
}

/// What a session receives, whatever the transport.
pub enum Incoming {
    Frame(ClientFrame),
    /// A WebSocket control frame from the peer, a ping (the transport answers it) or a pong: a
    /// sign of life, and a frame that counts against the client frame rate as any other (a
    /// flood of either costs the server as much as one of text frames).
    Control,
    /// Not input: queued frames left the outbox while the session was not reading (it may
    /// read again).
    Wrote,
    End(End),
}

/// A session's connection, polled by the session's own task.
pub trait Transport: Send {
    /// Moves the frames queued in the outbox toward the peer (and flushes them when `flush`),
    /// then, when `reading`, waits for the next input. Ready with input, or, when not
    /// reading, with [`Incoming::Wrote`] once frames left the queue.
    fn poll_io(&mut self, cx: &mut Context<'_>, reading: bool, flush: bool) -> Poll<Incoming>;
}

/// The next [`Transport::poll_io`] result.
pub fn next_io<T: Transport>(
    io: &mut T,
    reading: bool,
    flush: bool,
) -> impl Future<Output = Incoming> + '_ {
    std::future::poll_fn(move |cx| io.poll_io(cx, reading, flush))
}

/// The sending half of a transport: a bounded queue to its writer, and how many frames the
/// writer has put on the wire.
#[derive(Clone)]
pub struct Outbox {
    tx: queue::Sender<Out>,
    written: Arc<AtomicU64>,
}

impl Outbox {
    pub fn new(capacity: usize) -> (Outbox, queue::Receiver<Out>, Arc<AtomicU64>) {
        let (tx, rx) = queue::bounded(capacity);
        let written = Arc::new(AtomicU64::new(0));
        (
            Outbox {
                tx,
                written: written.clone(),
            },
            rx,
            written,
        )
    }

    /// Free slots in the queue.
    fn room(&self) -> usize {
        self.tx.capacity()
    }

    /// The state the session machine is told of, with `spare_bytes` of the sessions' budget.
    fn io(&self, spare_bytes: usize) -> Io {
        Io {
            now_ms: now_ms(),
            room: self.tx.capacity(),
            written: self.written.load(Ordering::Relaxed),
            spare_bytes,
        }
    }

    fn push(&self, out: Out) -> Result<(), End> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(End::close(Close::SlowConsumer, "send queue full")),
            Err(TrySendError::Closed(_)) => Err(End::ClientGone),
        }
    }

    /// Queues the last frame of an SSE stream (waits for room: the session is over).
    pub async fn close(&self, close: Close, reason: String) {
        let _ = self.tx.send(Out::Close(close, reason)).await;
    }
}

type Read = Pin<Box<dyn Future<Output = Input> + Send>>;

/// How often a session that stopped reading (its send queue had no room) looks again.
const ROOM_RECHECK: Duration = Duration::from_millis(20);

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// A page of the user's partition (from the hub's recent records or the log) as the machine's
/// log input: this user's events, and where the next page starts.
fn gap_input(records: &[StoredRecord], user: &str) -> Input {
    Input::Log {
        next: records.last().map(|r| r.offset + 1),
        events: records
            .iter()
            // The user's own records, and notifications added for several users (keyed by
            // the notification), of which the user's part is taken.
            .filter(|r| r.record.key == user || codec::is_users_added(&r.record.value))
            .flat_map(|r| {
                codec::decode(&r.record.value)
                    .map(|event| event.into_events_of(user))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|ev| (r.offset, ev))
            })
            .collect(),
    }
}

/// The session after `hello`, on any transport, until it ends. With `reap_silent`, a peer that
/// shows no sign of life for a heartbeat interval plus the pong timeout is closed.
pub async fn serve<T: Transport>(
    st: &AppState,
    user: &User,
    hello: Box<Hello>,
    io: &mut T,
    outbox: &Outbox,
    reap_silent: bool,
) -> End {
    st.announce(&user.id, &hello.device_id);
    // Subscribe first, then read history (projection, then the log gap), then merge.
    let mut reg = match st.hub.register(&user.id, &hello.device_id).await {
        Ok(reg) => reg,
        Err(e) => {
            tracing::error!(error = %e, "the live hub could not follow the user's partition");
            return End::close(Close::InternalError, "the log is unavailable");
        }
    };
    let end = drive(st, user, hello, io, outbox, reap_silent, &mut reg).await;
    st.hub.unregister(&user.id, reg.id);
    end
}

/// Performs a session's actions: frames to the outbox, reads as the next read, appends
/// gathered into one.
struct Shell<'a> {
    st: &'a AppState,
    user: &'a str,
    device: String,
    partition: u32,
    outbox: &'a Outbox,
    meter: herald_ports::telemetry::SessionMeter,
    /// Notification frames queued for the client, first sends and resends.
    notifications: AtomicU64,
    /// The session's deliveries, ACKs and marks on their way to the log, in order.
    appends: appends::Appends,
}

impl Shell<'_> {
    fn perform(&self, actions: Vec<Action>, read: &mut Option<Read>) -> Result<(), End> {
        let mut appends = Vec::new();
        let mut result = Ok(());
        for action in actions {
            match action {
                Action::Send(Outgoing::Notification { row, attempt }) => {
                    self.meter
                        .notification(&self.st.meters, &row, attempt, now_ms());
                    self.notifications.fetch_add(1, Ordering::Relaxed);
                    result = self.outbox.push(Out::Notification { row, attempt });
                }
                Action::Send(Outgoing::Frame(f)) => {
                    self.meter.frame(&f);
                    result = self.outbox.push(Out::Frame(f));
                }
                Action::ReadPending { after, bound } => {
                    *read = Some(self.read_pending(after, bound))
                }
                Action::ReadLog { from, max } => *read = Some(self.read_log(from, max)),
                Action::Append(events) => appends.extend(events),
                Action::Close(ending) => result = Err(End::Close(ending)),
            }
            if result.is_err() {
                break;
            }
        }
        if !appends.is_empty() {
            let records = appends
                .iter()
                .filter_map(|e| match self.st.user_event_record(e) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a user event");
                        None
                    }
                })
                .collect();
            if let Err(refused) = self.appends.push(records) {
                let reason = match refused {
                    appends::Refused::Failed(e) => format!("the log refused an append: {e}"),
                    appends::Refused::Full => {
                        "the log is not taking this session's acknowledgements".into()
                    }
                };
                // Ahead of whatever else ended the session: the device must not take its ACKs
                // and marks as kept.
                result = Err(End::close(Close::InternalError, reason));
            }
        }
        result
    }

    fn read_pending(&self, after: Option<u64>, bound: PageBound) -> Read {
        let (inbox, user, device) = (
            self.st.inbox.clone(),
            self.user.to_owned(),
            self.device.clone(),
        );
        Box::pin(async move {
            match inbox.pending(&user, &device, after, now_ms(), bound).await {
                Ok(rows) => Input::Pending(rows),
                Err(e) => Input::ReadFailed(e.to_string()),
            }
        })
    }

    fn read_log(&self, from: u64, max: usize) -> Read {
        // The hub keeps the latest records of each partition: a gap that starts among them
        // is read there, without a storage read (or a task) per connecting session.
        if let Some(records) = self.st.hub.recent(self.partition, from, max) {
            return Box::pin(std::future::ready(gap_input(&records, self.user)));
        }
        let (log, user, partition) = (self.st.log.clone(), self.user.to_owned(), self.partition);
        Box::pin(async move {
            match log.read(Topic::UserEvents, partition, from, max).await {
                Ok(records) => gap_input(&records, &user),
                Err(e) => Input::ReadFailed(e.to_string()),
            }
        })
    }
}

async fn drive<T: Transport>(
    st: &AppState,
    user: &User,
    hello: Box<Hello>,
    io: &mut T,
    outbox: &Outbox,
    reap_silent: bool,
    reg: &mut Registration,
) -> End {
    let projection_applied = match st.inbox.consumer_offsets(Stage::Inbox).await {
        Ok(o) => o.get(&reg.partition).copied().unwrap_or(0),
        Err(e) => return End::close(Close::InternalError, e.to_string()),
    };
    let shell = Shell {
        st,
        user: &user.id,
        device: hello.device_id.clone(),
        partition: reg.partition,
        outbox,
        meter: Default::default(),
        notifications: Default::default(),
        appends: appends::Appends::new(st.log.clone()),
    };
    let start = Start {
        user_id: user.id.clone(),
        hello: *hello,
        epoch: st.log.epoch(),
        session_id: format!("{}-{}", reg.id, uuid::Uuid::new_v4().simple()),
        partition: reg.partition,
        live_from: reg.live_from,
        projection_applied,
    };
    let (mut session, actions) = Session::new(
        st.session.clone(),
        start,
        outbox.io(st.session_bytes.spare()),
    );
    // Given back when the session ends.
    let mut charge = st.session_bytes.account();
    charge.set(session.memory_bytes());
    let mut read: Option<Read> = None;
    let end = match shell.perform(actions, &mut read) {
        Err(end) => end,
        Ok(()) => {
            run(
                st,
                &shell,
                &mut session,
                &mut charge,
                &mut read,
                io,
                user.exp,
                reap_silent,
                reg,
            )
            .await
        }
    };
    // Whatever ended it, the ACKs and deliveries gathered still go to the log.
    let _ = shell.perform(session.finish(now_ms()), &mut read);
    end
}

#[allow(clippy::too_many_arguments)]
async fn run<T: Transport>(
    st: &AppState,
    shell: &Shell<'_>,
    session: &mut Session,
    charge: &mut Charge<'_>,
    read: &mut Option<Read>,
    io: &mut T,
    exp: u64,
    reap_silent: bool,
    reg: &mut Registration,
) -> End {
    let cfg = st.config.clone();
    let shutdown = st.shutdown.clone();
    let kick = reg.kick.clone();
    let mut last_seen = tokio::time::Instant::now();
    // A peer silent this long after its last sign of life is closed (4011), on time: the
    // deadline is one of the timer's, not looked at only when a ping is due.
    let silence = cfg.heartbeat_interval + cfg.pong_timeout;
    let mut bucket = TokenBucket::new(cfg.frame_rate, cfg.frame_burst, Instant::now());
    // ACK frames up to one per notification frame sent take no token. A client may ACK each
    // notification by id as it arrives (clients/js does), and a replay of thousands runs at the
    // pace of those ACKs; what the server sends bounds them. Other frames, and ACKs beyond that,
    // take from the bucket.
    let mut answered: u64 = 0;
    // One timer for every deadline (the session's next wake, the heartbeat, token expiry, the
    // room recheck): an idle session holds one `Sleep`, not one per deadline.
    let started = tokio::time::Instant::now();
    // `None`: an expiry too far away to be an `Instant` (a token that never expires). With the
    // clock skew the upgrade allowed the token: one it took within that skew would otherwise be
    // closed as soon as its session started.
    let token_expires = started.checked_add(Duration::from_secs(
        exp.saturating_add(crate::auth::JWT_LEEWAY_SECS)
            .saturating_sub(now_secs()),
    ));
    let mut next_heartbeat = started + cfg.heartbeat_interval;
    let timer = tokio::time::sleep_until(far_future());
    tokio::pin!(timer);
    // Registered with the token once, not on every turn (each registration and its removal
    // take the token's lock: ~2% of the server's samples in a broadcast's profile).
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    loop {
        let instant = tokio::time::Instant::now();
        // Checked on every turn, so that a session kept busy cannot outrun them.
        if token_expires.is_some_and(|at| instant >= at) {
            return End::close(
                Close::TokenExpired,
                "token expired; reconnect with a new one",
            );
        }
        if reap_silent && instant >= last_seen + silence {
            return End::close(Close::HeartbeatTimeout, "no pong");
        }
        if instant >= next_heartbeat {
            if let Err(end) = shell.outbox.push(Out::Ping) {
                return end;
            }
            next_heartbeat += cfg.heartbeat_interval;
            if next_heartbeat <= instant {
                // Late by a whole interval (a stalled runtime): no burst of pings.
                next_heartbeat = instant + cfg.heartbeat_interval;
            }
        }
        let now = now_ms();
        let mut wake = session.next_wake(now).map_or_else(far_future, |at| {
            instant + Duration::from_millis((at - now).max(0) as u64)
        });
        // Client frames are read only while their answers (pongs, errors) have room in the send
        // queue: a burst waits in the socket (TCP pushes back on the client) instead of
        // overflowing the queue. While waiting, look again soon.
        let reading = shell.outbox.room() > SEND_RESERVE;
        if !reading {
            wake = wake.min(instant + ROOM_RECHECK);
        }
        let mut deadline = wake.min(next_heartbeat);
        if let Some(at) = token_expires {
            deadline = deadline.min(at);
        }
        if reap_silent {
            deadline = deadline.min(last_seen + silence);
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // Frames are flushed once no live event is waiting: a burst goes out in one write.
        let flush = reg.rx.is_empty();
        let input = tokio::select! {
            biased;
            () = &mut shutting_down => return End::close(Close::GoingAway, "server shutting down; reconnect"),
            c = kick.kicked() => return End::close(c, c.name()),
            m = next_io(io, reading, flush) => {
                if !matches!(m, Incoming::Wrote) {
                    last_seen = tokio::time::Instant::now();
                }
                match m {
                    Incoming::End(end) => return end,
                    Incoming::Wrote => continue,
                    Incoming::Control => {
                        if bucket.take(1.0, Instant::now()).is_err() {
                            return End::close(Close::RateLimited, "too many frames per second");
                        }
                        continue;
                    }
                    Incoming::Frame(f) => {
                        let ack = matches!(f, ClientFrame::Ack { .. });
                        if ack && answered < shell.notifications.load(Ordering::Relaxed) {
                            answered += 1;
                        } else if bucket.take(1.0, Instant::now()).is_err() {
                            return End::close(Close::RateLimited, "too many frames per second");
                        }
                        if ack { st.meters.ack_ws(); }
                        Input::Client(f)
                    }
                }
            }
            live = reg.rx.recv() => match live {
                Some(ev) => Input::Live { offset: ev.offset, event: ev.event },
                // The hub drops a session's queue right after kicking it (replaced, or its queue
                // overflowed); a poll between the two sees the closed queue first.
                None => {
                    return match kick.reason() {
                        Some(c) => End::close(c, c.name()),
                        None => End::close(Close::SlowConsumer, "live queue overflow"),
                    };
                }
            },
            input = async { read.as_mut().expect("guarded by is_some").await }, if read.is_some() => {
                *read = None;
                input
            }
            () = &mut timer => {
                if tokio::time::Instant::now() < wake {
                    // The heartbeat or the token: handled at the top of the loop.
                    continue;
                }
                Input::Tick
            }
        };
        // Only a replay reads against the budget: a session past it need not sum the shards.
        let spare = if session.replaying() {
            st.session_bytes.spare()
        } else {
            usize::MAX
        };
        let actions = session.handle(shell.outbox.io(spare), input);
        charge.set(session.memory_bytes());
        if let Err(end) = shell.perform(actions, read) {
            return end;
        }
    }
}
