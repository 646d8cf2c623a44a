//! WebSocket sessions of protocol `herald.v1`.
//!
//! A session is one loop over: client frames, live events from the hub, the delivery timer,
//! the heartbeat, replay steps, kicks and shutdown. Frames go out through a writer task with a
//! bounded queue; a full queue is a slow consumer and ends the session (nothing is lost: the
//! device resumes from its cursor).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use herald_core::cursor::{Cursor, Epoch};
use herald_core::delivery::{Delivery, Offer};
use herald_core::ids::validate_id;
use herald_core::model::{MarkChange, NotificationAcked, NotificationDelivered, UserEvent};
use herald_core::projection::InboxRow;
use herald_core::protocol::{ClientFrame, Close, ServerFrame, parse_client_frame};
use herald_ports::log::Topic;
use herald_ports::records::user_event_record;
use tokio::sync::{mpsc, oneshot};

use crate::api::{AppState, now_ms, rfc3339};
use crate::hub::{LiveEvent, Registration, SESSION_LIVE_QUEUE};

/// Frames waiting for the writer.
pub const SEND_QUEUE: usize = 512;
/// Room in the send queue kept for marks, errors and pings: notifications only use the rest, so
/// the server's own bursts (a replay) never overflow the queue.
const SEND_RESERVE: usize = 64;
/// How long the server waits for the peer's Close after sending its own.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// How often a session whose send queue is full looks again.
const BLOCKED_RECHECK: Duration = Duration::from_millis(20);
/// Rows read from the projection per replay step.
const REPLAY_PAGE: usize = 256;
/// Records read from the log per gap step.
const GAP_CHUNK: usize = 1024;
/// Live events held while the replay runs; more is a slow consumer.
const MAX_HELD: usize = SESSION_LIVE_QUEUE * 4;

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

struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    st: AppState,
    user: String,
    device: String,
    epoch: Epoch,
    reg: Registration,
    delivery: Delivery<Arc<InboxRow>>,
    ids: HashMap<String, u64>,
    out: mpsc::Sender<Out>,
    phase: Phase,
    projection_applied: u64,
    held: Vec<LiveEvent>,
    replay_high: Option<u64>,
    replayed_sent: bool,
    delivered: Vec<UserEvent>,
    /// Since when notifications have been waiting for room in the send queue with no progress
    /// by the writer.
    blocked_since: Option<Instant>,
    /// Send-queue room after the last pump (more room now means the writer made progress).
    last_room: usize,
    /// ACKs received since the last pump, appended as one event.
    ack_ids: Vec<String>,
    ack_up_to: Option<i64>,
}

/// Why a session ended.
pub enum End {
    Close(Close, String),
    ClientGone,
}

/// What a session sends, whatever the transport.
pub enum Out {
    /// Boxed: the queue allocates its slots 32 at a time, and an unboxed frame (about 220
    /// bytes) made that first block alone about 7 KiB of every idle session.
    Frame(Box<ServerFrame>),
    Ping,
    /// The last thing an SSE stream says (a WebSocket closes with a close frame instead).
    Close(Close, String),
}

/// What a session receives, whatever the transport.
pub enum Incoming {
    Frame(ClientFrame),
    /// Any sign of life (pings, pongs).
    Activity,
    End(End),
}

pub type IncomingStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Incoming> + Send>>;

fn close_msg(close: Close, reason: &str) -> Message {
    let mut reason = reason.to_owned();
    reason.truncate(120);
    Message::Close(Some(CloseFrame {
        code: close.code(),
        reason: Utf8Bytes::from(reason),
    }))
}

fn frame(f: &ServerFrame) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(f).expect("frames serialize"),
    ))
}

/// Maps WebSocket messages to transport-neutral input.
fn ws_incoming(stream: futures_util::stream::SplitStream<WebSocket>) -> IncomingStream {
    Box::pin(stream.map(|m| match m {
        Err(e) => Incoming::End(stream_error(e)),
        Ok(Message::Close(_)) => Incoming::End(End::ClientGone),
        Ok(Message::Ping(_) | Message::Pong(_)) => Incoming::Activity,
        Ok(Message::Binary(_)) => Incoming::End(End::Close(
            Close::ProtocolError,
            "binary frames are not part of herald.v1".into(),
        )),
        Ok(Message::Text(t)) => match parse_client_frame(t.as_str()) {
            Ok(f) => Incoming::Frame(f),
            Err(e) => Incoming::End(End::Close(Close::ProtocolError, e)),
        },
    }))
}

/// Runs one WebSocket session from the upgraded socket to the end.
pub async fn run(st: AppState, user: crate::auth::User, socket: WebSocket) {
    let (mut sink, stream) = socket.split();
    let mut incoming = ws_incoming(stream);
    let (out, mut out_rx) = mpsc::channel::<Out>(SEND_QUEUE);
    let (close_tx, mut close_rx) = oneshot::channel::<Message>();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                c = &mut close_rx => {
                    if let Ok(c) = c {
                        let _ = sink.send(c).await;
                    }
                    break;
                }
                m = out_rx.recv() => match m {
                    Some(Out::Frame(f)) => if sink.send(frame(&f)).await.is_err() { break },
                    Some(Out::Ping) => if sink.send(Message::Ping(Default::default())).await.is_err() { break },
                    Some(Out::Close(..)) | None => break,
                },
            }
        }
        let _ = sink.close().await;
    });
    // hello, within the timeout.
    let hello = tokio::time::timeout(st.config.hello_timeout, async {
        loop {
            match incoming.next().await {
                None => return Err(End::ClientGone),
                Some(Incoming::Activity) => continue,
                Some(Incoming::End(e)) => return Err(e),
                Some(Incoming::Frame(f)) => return Ok(f),
            }
        }
    })
    .await;
    let end = match hello {
        Err(_) => End::Close(Close::HelloTimeout, "send hello first".into()),
        Ok(Err(end)) => end,
        Ok(Ok(ClientFrame::Hello { device_id, cursor })) => {
            serve(&st, &user, device_id, cursor, &mut incoming, out, true).await
        }
        Ok(Ok(_)) => End::Close(Close::ProtocolError, "the first frame must be hello".into()),
    };
    if let End::Close(close, reason) = end {
        tracing::debug!(user = %user.id, code = close.code(), reason, "closing session");
        let _ = close_tx.send(close_msg(close, &reason));
        // The close handshake: read (and drop) what the peer still sends until its Close, so
        // the socket is not torn down under data in flight (which would reset the connection
        // and could lose our close frame on the client's side).
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(m) = incoming.next().await {
                if matches!(m, Incoming::End(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Runs one Server-Sent Events session: the same session, with no client frames (ACKs and
/// marks arrive over HTTP, and reach the session through the log like any other event).
pub fn run_sse(
    st: AppState,
    user: crate::auth::User,
    device: String,
    cursor: Option<String>,
) -> mpsc::Receiver<Out> {
    let (out, out_rx) = mpsc::channel::<Out>(SEND_QUEUE);
    tokio::spawn(async move {
        let mut incoming: IncomingStream = Box::pin(futures_util::stream::pending());
        let closer = out.clone();
        if let End::Close(close, reason) =
            serve(&st, &user, device, cursor, &mut incoming, out, false).await
        {
            let _ = closer.send(Out::Close(close, reason)).await;
        }
    });
    out_rx
}

/// The session after `hello`, on any transport. With `reap_silent`, a peer that shows no sign
/// of life for a heartbeat interval plus the pong timeout is closed.
pub async fn serve(
    st: &AppState,
    user: &crate::auth::User,
    device: String,
    cursor: Option<String>,
    incoming: &mut IncomingStream,
    out: mpsc::Sender<Out>,
    reap_silent: bool,
) -> End {
    let cfg = st.config.clone();
    if let Err(e) = validate_id("device_id", &device) {
        return End::Close(Close::ProtocolError, e.to_string());
    }
    let epoch = st.log.epoch();
    let (after, reset) = match cursor.as_deref().map(str::parse::<Cursor>) {
        None => (None, false),
        Some(Err(e)) => return End::Close(Close::ProtocolError, e.to_string()),
        Some(Ok(c)) if c.matches(epoch) => (Some(c.seq), false),
        Some(Ok(_)) => (None, true),
    };
    // Subscribe first, then read history (projection, then the log gap), then merge.
    let reg = st.hub.register(&user.id, &device);
    let projection_applied = match st.store.consumer_offsets(herald_projector::INBOX).await {
        Ok(o) => o.get(&reg.partition).copied().unwrap_or(0),
        Err(e) => {
            st.hub.unregister(&user.id, reg.id);
            return End::Close(Close::InternalError, e.to_string());
        }
    };
    let mut s = Session {
        st: st.clone(),
        user: user.id.clone(),
        device: device.clone(),
        epoch,
        delivery: Delivery::new(cfg.delivery),
        ids: HashMap::new(),
        out,
        phase: Phase::Projection { after },
        projection_applied,
        held: Vec::new(),
        replay_high: None,
        replayed_sent: false,
        delivered: Vec::new(),
        blocked_since: None,
        last_room: SEND_QUEUE,
        ack_ids: Vec::new(),
        ack_up_to: None,
        reg,
    };
    if let Some(a) = after {
        s.delivery.skip_through(a);
    }
    let session_id = format!("{}-{}", s.reg.id, uuid::Uuid::new_v4().simple());
    let hello_back = ServerFrame::Session {
        session_id,
        user_id: user.id.clone(),
        device_id: device.clone(),
        epoch: epoch.to_string(),
        resumed: after.is_some(),
        reset,
        heartbeat_ms: cfg.heartbeat_interval.as_millis() as u64,
        max_in_flight: cfg.delivery.max_in_flight,
    };
    let end = match s.send(&hello_back) {
        Err(end) => end,
        Ok(()) => s.run(incoming, user.exp, reap_silent).await,
    };
    s.flush_delivered();
    st.hub.unregister(&user.id, s.reg.id);
    end
}

fn stream_error(e: axum::Error) -> End {
    let text = e.to_string();
    if text.contains("too long") || text.contains("Space limit") || text.contains("too big") {
        End::Close(Close::MessageTooBig, "frames are limited to 64 KiB".into())
    } else {
        End::ClientGone
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

impl Session {
    fn send(&self, f: &ServerFrame) -> Result<(), End> {
        self.push(Out::Frame(Box::new(f.clone())))
    }

    fn push(&self, out: Out) -> Result<(), End> {
        match self.out.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(End::Close(Close::SlowConsumer, "send queue full".into()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::ClientGone),
        }
    }

    fn replaying(&self) -> bool {
        !matches!(self.phase, Phase::Done)
    }

    async fn run(&mut self, incoming: &mut IncomingStream, exp: u64, reap_silent: bool) -> End {
        let cfg = self.st.config.clone();
        let shutdown = self.st.shutdown.clone();
        let kick = self.reg.kick.clone();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat_interval);
        heartbeat.tick().await;
        let mut last_seen = Instant::now();
        let mut bucket = TokenBucket {
            tokens: cfg.frame_burst,
            rate: cfg.frame_rate,
            burst: cfg.frame_burst,
            at: Instant::now(),
        };
        let expires_in = Duration::from_secs(exp.saturating_sub(crate::auth::now_secs()));
        let token_expiry = tokio::time::sleep(expires_in);
        tokio::pin!(token_expiry);
        loop {
            let mut deadline = self
                .delivery
                .next_deadline()
                .map(|d| {
                    let wait = (d - now_ms()).max(0) as u64;
                    tokio::time::Instant::now() + Duration::from_millis(wait)
                })
                .unwrap_or_else(far_future);
            if let Some(since) = self.blocked_since {
                if since.elapsed() > cfg.slow_consumer_timeout {
                    return End::Close(
                        Close::SlowConsumer,
                        "the connection does not keep up".into(),
                    );
                }
                deadline = deadline.min(tokio::time::Instant::now() + BLOCKED_RECHECK);
            }
            let replay_ready = self.replaying() && self.delivery.room() >= REPLAY_PAGE;
            let step: Result<(), End> = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(Close::GoingAway, "server shutting down; reconnect".into()),
                c = kick.kicked() => return End::Close(c, c.name().into()),
                _ = &mut token_expiry => return End::Close(Close::TokenExpired, "token expired; reconnect with a new one".into()),
                _ = self.out.closed() => return End::ClientGone,
                m = incoming.next() => {
                    last_seen = Instant::now();
                    match m {
                        None => return End::ClientGone,
                        Some(Incoming::End(end)) => return end,
                        Some(Incoming::Activity) => Ok(()),
                        Some(Incoming::Frame(f)) => {
                            if !bucket.take() {
                                Err(End::Close(Close::RateLimited, "too many frames per second".into()))
                            } else {
                                self.client_frame(f)
                            }
                        }
                    }
                }
                live = self.reg.rx.recv() => match live {
                    // ACKs and deliveries (the replay's own echo: one Delivered per replayed
                    // row) only settle what was sent; they need no ordering against the replay.
                    Some(ev) if self.replaying()
                        && matches!(*ev.event, UserEvent::Acked(_) | UserEvent::Delivered(_)) =>
                    {
                        self.event(ev.offset, &ev.event, true)
                    }
                    Some(ev) if self.replaying() => {
                        if self.held.len() >= MAX_HELD {
                            Err(End::Close(Close::SlowConsumer, "too many live events during replay".into()))
                        } else {
                            self.held.push(ev);
                            Ok(())
                        }
                    }
                    Some(ev) => self.event(ev.offset, &ev.event, true),
                    None => Err(End::Close(Close::SlowConsumer, "live queue overflow".into())),
                },
                _ = tokio::time::sleep_until(deadline) => Ok(()),
                _ = heartbeat.tick() => {
                    if reap_silent && last_seen.elapsed() > cfg.heartbeat_interval + cfg.pong_timeout {
                        Err(End::Close(Close::HeartbeatTimeout, "no pong".into()))
                    } else {
                        self.push(Out::Ping)
                    }
                }
                _ = std::future::ready(()), if replay_ready => self.replay_step().await,
            };
            if let Err(end) = step.and_then(|()| self.pump()) {
                return end;
            }
        }
    }

    /// One step of the replay: a page of the projection, or a chunk of the log gap.
    async fn replay_step(&mut self) -> Result<(), End> {
        let internal = |e: &dyn std::fmt::Display| End::Close(Close::InternalError, e.to_string());
        match self.phase {
            Phase::Projection { after } => {
                let rows = self
                    .st
                    .store
                    .pending(&self.user, &self.device, after, now_ms(), REPLAY_PAGE)
                    .await
                    .map_err(|e| internal(&e))?;
                let full = rows.len() == REPLAY_PAGE;
                let last = rows.last().map(|r| r.seq);
                for row in rows {
                    self.offer(Arc::new(row))?;
                }
                self.phase = if full {
                    Phase::Projection { after: last }
                } else {
                    Phase::Gap {
                        from: self.projection_applied,
                        to: self.reg.live_from,
                    }
                };
            }
            Phase::Gap { from, to } if from < to => {
                let want = ((to - from) as usize).min(GAP_CHUNK);
                let records = self
                    .st
                    .log
                    .read(Topic::UserEvents, self.reg.partition, from, want)
                    .await
                    .map_err(|e| internal(&e))?;
                let next = records.last().map_or(to, |r| (r.offset + 1).min(to));
                let user = self.user.clone();
                for r in records
                    .iter()
                    .filter(|r| r.offset < to && r.record.key == user)
                {
                    if let Ok(herald_core::model::Event::User(ev)) =
                        herald_core::codec::decode(&r.record.value)
                    {
                        self.event(r.offset, &ev, false)?;
                    }
                }
                self.phase = Phase::Gap { from: next, to };
            }
            Phase::Gap { .. } => {
                self.phase = Phase::Done;
                for ev in std::mem::take(&mut self.held) {
                    self.event(ev.offset, &ev.event, true)?;
                }
            }
            Phase::Done => {}
        }
        Ok(())
    }

    fn offer(&mut self, row: Arc<InboxRow>) -> Result<(), End> {
        let seq = row.seq;
        let id = row.notification_id.clone();
        match self.delivery.offer(seq, row) {
            Offer::Queued => {
                self.ids.insert(id, seq);
                if self.replaying() {
                    self.replay_high = Some(self.replay_high.map_or(seq, |h| h.max(seq)));
                }
                Ok(())
            }
            Offer::Duplicate => Ok(()),
            Offer::Overflow => Err(End::Close(
                Close::SlowConsumer,
                "delivery queue full".into(),
            )),
        }
    }

    /// An event of this user's partition, from the log gap (`live = false`) or the hub.
    fn event(&mut self, offset: u64, ev: &UserEvent, live: bool) -> Result<(), End> {
        if ev.user_id() != self.user {
            return Ok(());
        }
        match ev {
            UserEvent::Added(a) => {
                let row = added_row(a, offset);
                if row.due(now_ms()) {
                    self.offer(Arc::new(row))?;
                }
            }
            UserEvent::Acked(a) if a.device_id == self.device => {
                for id in &a.notification_ids {
                    if let Some(seq) = self.ids.remove(id) {
                        self.delivery.settle(seq);
                    }
                }
                if let (Some(up_to), Some(last)) = (
                    a.up_to.and_then(|u| u64::try_from(u).ok()),
                    offset.checked_sub(1),
                ) {
                    self.delivery.settle_through(up_to.min(last));
                }
            }
            UserEvent::Read(m) | UserEvent::Unread(m) | UserEvent::Archived(m) => {
                if matches!(ev, UserEvent::Archived(_)) {
                    for id in &m.notification_ids {
                        if let Some(seq) = self.ids.remove(id) {
                            self.delivery.settle(seq);
                        }
                    }
                }
                if live && m.device_id.as_deref() != Some(self.device.as_str()) {
                    self.send(&ServerFrame::Mark {
                        kind: ev.kind().to_owned(),
                        ids: m.notification_ids.clone(),
                        up_to: m.up_to.and_then(|u| u64::try_from(u).ok()).map(|seq| {
                            Cursor {
                                epoch: self.epoch,
                                seq,
                            }
                            .to_string()
                        }),
                        device_id: m.device_id.clone(),
                        cursor: Cursor {
                            epoch: self.epoch,
                            seq: offset,
                        }
                        .to_string(),
                    })?;
                }
            }
            UserEvent::Expired(x) => {
                if let Some(seq) = self.ids.remove(&x.notification_id) {
                    self.delivery.settle(seq);
                }
                if live {
                    self.send(&ServerFrame::Mark {
                        kind: "expired".into(),
                        ids: vec![x.notification_id.clone()],
                        up_to: None,
                        device_id: None,
                        cursor: Cursor {
                            epoch: self.epoch,
                            seq: offset,
                        }
                        .to_string(),
                    })?;
                }
            }
            UserEvent::Acked(_) | UserEvent::Delivered(_) => {}
        }
        Ok(())
    }

    fn client_frame(&mut self, f: ClientFrame) -> Result<(), End> {
        let ids_of = |ids: &[String]| -> Result<(), String> {
            ids.iter()
                .try_for_each(|i| validate_id("ids", i).map_err(|e| e.to_string()))
        };
        let parse_up_to = |s: &Option<String>| -> Result<Option<i64>, String> {
            match s.as_deref().map(str::parse::<Cursor>) {
                None => Ok(None),
                Some(Ok(c)) if c.matches(self.epoch) => Ok(Some(c.seq.min(i64::MAX as u64) as i64)),
                Some(Ok(_)) => Err("cursor from another epoch".into()),
                Some(Err(e)) => Err(e.to_string()),
            }
        };
        let event = match f {
            ClientFrame::Hello { .. } => {
                return Err(End::Close(
                    Close::ProtocolError,
                    "hello was already sent".into(),
                ));
            }
            ClientFrame::Ping => return self.send(&ServerFrame::Pong),
            ClientFrame::Ack { ids, up_to } => {
                let up_to = match ids_of(&ids).and_then(|()| parse_up_to(&up_to)) {
                    Ok(u) => u,
                    Err(e) => return self.error("invalid_request", &e),
                };
                for id in &ids {
                    if let Some(seq) = self.ids.remove(id) {
                        self.delivery.settle(seq);
                    }
                }
                if let Some(u) = up_to {
                    self.delivery.settle_through(u as u64);
                    self.ack_up_to = Some(self.ack_up_to.map_or(u, |a| a.max(u)));
                }
                // Coalesced: every ACK since the last pump becomes one event (see flush_acks).
                self.ack_ids.extend(ids);
                return Ok(());
            }
            ClientFrame::Read { ids, up_to } => {
                let up_to = match ids_of(&ids).and_then(|()| parse_up_to(&up_to)) {
                    Ok(u) => u,
                    Err(e) => return self.error("invalid_request", &e),
                };
                UserEvent::Read(self.mark(ids, up_to))
            }
            ClientFrame::Unread { ids } => {
                if let Err(e) = ids_of(&ids) {
                    return self.error("invalid_request", &e);
                }
                UserEvent::Unread(self.mark(ids, None))
            }
            ClientFrame::Archive { ids } => {
                if let Err(e) = ids_of(&ids) {
                    return self.error("invalid_request", &e);
                }
                UserEvent::Archived(self.mark(ids, None))
            }
        };
        crate::api::append_user_event(&self.st, event);
        Ok(())
    }

    fn mark(&self, ids: Vec<String>, up_to: Option<i64>) -> MarkChange {
        MarkChange {
            user_id: self.user.clone(),
            device_id: Some(self.device.clone()),
            notification_ids: ids,
            up_to,
            at: now_ms(),
        }
    }

    fn error(&self, code: &str, message: &str) -> Result<(), End> {
        self.send(&ServerFrame::Error {
            code: code.into(),
            message: message.into(),
        })
    }

    /// Sends what delivery says is due, as far as the send queue has room, with `replayed` at
    /// the replay/live boundary.
    fn pump(&mut self) -> Result<(), End> {
        let now = now_ms();
        let progressed = self.out.capacity() > self.last_room;
        let room = self.out.capacity().saturating_sub(SEND_RESERVE);
        let sends = self.delivery.poll_limited(now, room);
        if self.delivery.has_work(now) && self.out.capacity() <= SEND_RESERVE + sends.len() {
            // Waiting for room: a slow consumer only if the writer makes no progress at all.
            if progressed || self.blocked_since.is_none() {
                self.blocked_since = Some(Instant::now());
            }
        } else {
            self.blocked_since = None;
        }
        for s in sends {
            if !self.replayed_sent
                && !self.replaying()
                && self.replay_high.is_none_or(|h| s.seq > h)
            {
                self.send_replayed()?;
            }
            let row = &s.item;
            self.send(&ServerFrame::Notification {
                id: row.notification_id.clone(),
                cursor: Cursor {
                    epoch: self.epoch,
                    seq: row.seq,
                }
                .to_string(),
                seq: row.seq,
                event_type: row.event_type.clone(),
                source: row.source.clone(),
                created_at: rfc3339(row.created_at),
                data: serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null),
                priority: row.priority.as_str().to_owned(),
                collapse_key: row.collapse_key.clone(),
                attempt: s.attempt,
            })?;
            if s.attempt == 1 {
                self.delivered
                    .push(UserEvent::Delivered(NotificationDelivered {
                        user_id: self.user.clone(),
                        device_id: self.device.clone(),
                        notification_id: row.notification_id.clone(),
                        at: now_ms(),
                    }));
            }
        }
        if !self.replayed_sent
            && !self.replaying()
            && self
                .replay_high
                .is_none_or(|h| !self.delivery.has_queued_through(h))
        {
            self.send_replayed()?;
        }
        self.flush_delivered();
        self.last_room = self.out.capacity();
        Ok(())
    }

    fn send_replayed(&mut self) -> Result<(), End> {
        self.replayed_sent = true;
        let cursor = self.replay_high.map(|seq| {
            Cursor {
                epoch: self.epoch,
                seq,
            }
            .to_string()
        });
        self.send(&ServerFrame::Replayed { cursor })
    }

    /// Appends the ACKs gathered since the last flush as one `Acked` event.
    fn flush_acks(&mut self) {
        if self.ack_ids.is_empty() && self.ack_up_to.is_none() {
            return;
        }
        let mut ids = std::mem::take(&mut self.ack_ids);
        ids.sort();
        ids.dedup();
        let event = UserEvent::Acked(NotificationAcked {
            user_id: self.user.clone(),
            device_id: self.device.clone(),
            notification_ids: ids,
            up_to: self.ack_up_to.take(),
            at: now_ms(),
        });
        crate::api::append_user_event(&self.st, event);
    }

    fn flush_delivered(&mut self) {
        self.flush_acks();
        if self.delivered.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.delivered);
        crate::api::append_user_events(&self.st, events);
    }
}

fn added_row(a: &herald_core::model::NotificationAdded, seq: u64) -> InboxRow {
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
        read: false,
        archived: false,
        expired: false,
        superseded: false,
    }
}

/// Builds the record of a user event (used by HTTP and WS appends).
pub fn record_of(st: &AppState, ev: &UserEvent) -> Option<herald_ports::log::Record> {
    match user_event_record(ev, st.log.partitions(Topic::UserEvents), now_ms()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a user event");
            None
        }
    }
}
