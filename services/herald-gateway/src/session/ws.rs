//! The WebSocket transport of `herald.v1`: the socket, polled by the session's own task in
//! both directions (queued frames out, messages in as [`Incoming`]), the hello timeout and the
//! close handshake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, Stream};
use herald_core::cursor::Epoch;
use herald_core::protocol::{
    ClientFrame, Close, MAX_CLOSE_REASON, ServerFrame, parse_client_frame, truncate_utf8,
    write_notification_json,
};
use herald_core::session::{Ending, Hello};

use super::{End, Incoming, Out, Outbox, Transport, next_io};
use crate::auth::User;
use crate::config::SEND_QUEUE;
use crate::limits::{ConnectionGuard, TokenBucket};
use crate::queue;
use crate::state::AppState;

/// How long the server waits for the peer's Close after sending its own, and how much longer
/// its close frame may then take to leave before the connection is dropped: a peer that does
/// not read cannot hold a socket, its queue or its connection slot longer than this.
pub const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Most bytes buffered for writing on one socket (a frame is at most about 66 KiB: 64 KiB of
/// data and its fields).
pub const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// Frames gather in the socket's write buffer up to this size before it is written out (the
/// session flushes anyway once no live event is waiting).
pub const WRITE_BUFFER: usize = 16 * 1024;
/// The socket's read buffer, allocated for the session's whole life: client frames are small
/// (an ACK is under 100 bytes, a hello under 300), a larger frame is read in several steps
/// (tungstenite reserves room for a frame's whole length once it has its header), and a burst
/// of ACKs takes one read per 512 bytes. Every idle connection holds it: 1 KiB was a sixth of
/// an idle connection's memory.
pub const READ_BUFFER: usize = 512;
/// Errors read past while waiting for the peer's Close, at most.
const CLOSE_DRAIN_ERRORS: usize = 64;

fn close_msg(ending: &Ending) -> Message {
    let reason = truncate_utf8(&ending.reason, MAX_CLOSE_REASON);
    Message::Close(Some(CloseFrame {
        code: ending.close.code(),
        reason: Utf8Bytes::from(reason.to_owned()),
    }))
}

fn text(f: &ServerFrame) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(f).expect("frames serialize"),
    ))
}

/// The message for one queued frame.
fn message(out: Out, epoch: Epoch) -> Option<Message> {
    match out {
        Out::Notification { row, attempt } => {
            let mut json = String::with_capacity(row.payload.len() + 320);
            write_notification_json(&row, epoch, attempt, &mut json);
            Some(Message::Text(Utf8Bytes::from(json)))
        }
        Out::Frame(f) => Some(text(&f)),
        Out::Ping => Some(Message::Ping(Default::default())),
        Out::Close(..) => None,
    }
}

fn stream_error(e: axum::Error) -> End {
    let text = e.to_string();
    // tungstenite's "Control frame too big" is a protocol error (a ping or close over 125
    // bytes), not a message over the size limit.
    if text.contains("Control frame") {
        End::close(
            Close::ProtocolError,
            "control frames carry at most 125 bytes",
        )
    } else if text.contains("too long") || text.contains("Space limit") || text.contains("too big")
    {
        End::close(Close::MessageTooBig, "frames are limited to 64 KiB")
    } else if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        End::close(Close::InvalidPayload, "text frames must be UTF-8")
    } else if text.contains("protocol error") {
        End::close(Close::ProtocolError, "WebSocket protocol error")
    } else {
        End::ClientGone
    }
}

/// Maps what the socket read to transport-neutral input.
fn incoming(m: Option<Result<Message, axum::Error>>) -> Incoming {
    match m {
        None | Some(Ok(Message::Close(_))) => Incoming::End(End::ClientGone),
        Some(Err(e)) => Incoming::End(stream_error(e)),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Control,
        Some(Ok(Message::Binary(_))) => Incoming::End(End::close(
            Close::ProtocolError,
            "binary frames are not part of herald.v1",
        )),
        Some(Ok(Message::Text(t))) => match parse_client_frame(t.as_str()) {
            Ok(f) => Incoming::Frame(f),
            Err(e) => Incoming::End(End::close(Close::ProtocolError, e)),
        },
    }
}

/// One WebSocket session from the upgraded socket to the end, on one task: the session's
/// loop polls the socket in both directions ([`Socket`]), so an idle connection is one task,
/// one socket and two small queues.
///
/// The socket is wrapped before the future is built, so that the future (which every connected
/// device keeps for its whole life) holds it once, not also as a moved-from argument.
pub fn run(
    st: AppState,
    user: User,
    socket: WebSocket,
    guard: ConnectionGuard,
) -> impl Future<Output = ()> + Send + 'static {
    let epoch = st.log.epoch();
    let (outbox, rx, written) = Outbox::new(SEND_QUEUE);
    let mut io = Socket {
        socket,
        rx,
        written,
        epoch,
        unflushed: 0,
        dirty: false,
    };
    async move {
        session(&st, &user, &mut io, outbox, epoch).await;
        drop(guard);
    }
}

/// The socket of a WebSocket session and the queue of frames for it.
struct Socket {
    socket: WebSocket,
    rx: queue::Receiver<Out>,
    /// Frames on the wire (flushed), which the session reads as its writer's progress.
    written: Arc<AtomicU64>,
    epoch: Epoch,
    /// Frames handed to the socket since its last flush.
    unflushed: u64,
    /// Bytes wait in the socket's buffer for a flush.
    dirty: bool,
}

impl Socket {
    /// Hands queued frames to the socket while it has room, then flushes if `flush`. Whether
    /// any frame left the queue or reached the wire; `Err` once the peer is gone.
    fn poll_write(&mut self, cx: &mut Context<'_>, flush: bool) -> Result<bool, ()> {
        let mut moved = false;
        loop {
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => break,
            }
            let Some(out) = self.rx.try_recv() else {
                break;
            };
            // The session numbers its own frames (not the heartbeat's pings).
            let counted = matches!(out, Out::Notification { .. } | Out::Frame(_));
            let Some(msg) = message(out, self.epoch) else {
                return Err(());
            };
            Pin::new(&mut self.socket).start_send(msg).map_err(|_| ())?;
            self.unflushed += u64::from(counted);
            self.dirty = true;
            moved = true;
        }
        if self.dirty && flush {
            match Pin::new(&mut self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.written.fetch_add(self.unflushed, Ordering::Relaxed);
                    self.unflushed = 0;
                    self.dirty = false;
                    moved = true;
                }
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => {}
            }
        }
        Ok(moved)
    }

    /// Ends the connection. With a `close` to send, frames still queued are handed to the
    /// socket first while it takes them without waiting, and dropped beyond that (the session
    /// is over); then `close` is sent, and what the peer still sends is read and dropped until its Close, for
    /// at most [`CLOSE_HANDSHAKE`]: the socket is not torn down under data in flight (which
    /// would reset the connection and could lose the close frame on the client's side). After
    /// an oversized or malformed message the rest of it is still on its way, so errors are
    /// read past too. The close frame gets [`CLOSE_HANDSHAKE`] more to leave: a peer that does
    /// not read cannot hold the socket, the queue or the connection slot any longer.
    async fn finish(&mut self, close: Option<Message>) {
        if close.is_some() {
            // What the session's last turn queued goes first, as far as the socket takes it
            // without waiting; the rest is dropped.
            std::future::poll_fn(|cx| {
                let _ = self.poll_write(cx, false);
                Poll::Ready(())
            })
            .await;
        }
        while self.rx.try_recv().is_some() {}
        let mut read = close.is_some();
        let mut close = close;
        let mut sent = false;
        let mut errors = 0;
        let socket = &mut self.socket;
        let read_for = tokio::time::sleep(CLOSE_HANDSHAKE);
        tokio::pin!(read_for);
        let _ = tokio::time::timeout(
            2 * CLOSE_HANDSHAKE,
            std::future::poll_fn(|cx| {
                if let Some(msg) = close.take() {
                    match Pin::new(&mut *socket).poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            sent = Pin::new(&mut *socket).start_send(msg).is_err();
                        }
                        Poll::Ready(Err(_)) => sent = true,
                        Poll::Pending => close = Some(msg),
                    }
                }
                if close.is_none() && !sent {
                    // Flushes the close frame (or, when the peer closed first, the reply).
                    sent = Pin::new(&mut *socket).poll_close(cx).is_ready();
                }
                while read {
                    if read_for.as_mut().poll(cx).is_ready() {
                        read = false;
                        break;
                    }
                    match Pin::new(&mut *socket).poll_next(cx) {
                        Poll::Pending => break,
                        Poll::Ready(m) => match incoming(m) {
                            Incoming::End(End::ClientGone) => read = false,
                            Incoming::End(_) => {
                                errors += 1;
                                read = errors < CLOSE_DRAIN_ERRORS;
                            }
                            _ => {}
                        },
                    }
                }
                if sent && !read {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }),
        )
        .await;
    }
}

impl Transport for Socket {
    fn poll_io(&mut self, cx: &mut Context<'_>, reading: bool, flush: bool) -> Poll<Incoming> {
        let wrote = match self.poll_write(cx, flush) {
            Ok(wrote) => wrote,
            Err(()) => return Poll::Ready(Incoming::End(End::ClientGone)),
        };
        if reading {
            Pin::new(&mut self.socket).poll_next(cx).map(incoming)
        } else if wrote {
            Poll::Ready(Incoming::Wrote)
        } else {
            Poll::Pending
        }
    }
}

async fn session(st: &AppState, user: &User, io: &mut Socket, outbox: Outbox, epoch: Epoch) {
    let _connected = herald_ports::telemetry::SessionGauge::open("ws");
    // hello, within the timeout. The match ends before the session starts, so the session's
    // future does not also keep the frame it came from.
    let hello: Result<Box<Hello>, End> = {
        // Control frames before the hello take from a frame-rate bucket of their own (carrying
        // it into the session grew every connection by about 550 bytes, measured).
        let mut bucket =
            TokenBucket::new(st.config.frame_rate, st.config.frame_burst, Instant::now());
        let first = tokio::time::timeout(st.config.hello_timeout, async {
            loop {
                match next_io(io, true, true).await {
                    Incoming::Wrote => continue,
                    Incoming::Control => {
                        if bucket.take(1.0, Instant::now()).is_err() {
                            return Err(End::close(
                                Close::RateLimited,
                                "too many frames per second",
                            ));
                        }
                    }
                    Incoming::End(e) => return Err(e),
                    Incoming::Frame(f) => return Ok(f),
                }
            }
        })
        .await;
        match first {
            Err(_) => Err(End::close(Close::HelloTimeout, "send hello first")),
            Ok(Err(end)) => Err(end),
            Ok(Ok(ClientFrame::Hello { device_id, cursor })) => {
                Hello::parse(device_id, cursor.as_deref(), epoch)
                    .map(Box::new)
                    .map_err(End::Close)
            }
            Ok(Ok(_)) => Err(End::close(
                Close::ProtocolError,
                "the first frame must be hello",
            )),
        }
    };
    let end = match hello {
        Ok(hello) => super::serve(st, user, hello, io, &outbox, true).await,
        Err(end) => end,
    };
    drop(outbox);
    herald_ports::telemetry::session_closed("ws", end.code());
    let close = match end {
        End::Close(ending) => {
            tracing::debug!(user = %user.id, code = ending.close.code(), reason = %ending.reason, "closing session");
            Some(close_msg(&ending))
        }
        End::ClientGone => None,
    };
    io.finish(close).await;
}
