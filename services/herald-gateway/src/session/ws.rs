//! The WebSocket transport of `herald.v1`: a reader mapping messages to [`Incoming`], a writer
//! task draining the [`Outbox`], the hello timeout and the close handshake.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use herald_core::cursor::Epoch;
use herald_core::protocol::{
    ClientFrame, Close, MAX_CLOSE_REASON, ServerFrame, parse_client_frame, truncate_utf8,
    write_notification_json,
};
use herald_core::session::{Ending, Hello};
use tokio::sync::oneshot;

use super::{End, Incoming, IncomingStream, Out, Outbox};
use crate::auth::User;
use crate::config::SEND_QUEUE;
use crate::limits::ConnectionGuard;
use crate::queue;
use crate::state::AppState;

/// How long the server waits for the peer's Close after sending its own, and how long the
/// writer may then take to finish before it is aborted and the connection dropped: a peer that
/// does not read cannot hold a socket, its queue or its connection slot longer than this.
pub const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Most bytes buffered for writing on one socket (a frame is at most about 66 KiB: 64 KiB of
/// data and its fields).
pub const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// Frames gather in the socket's write buffer up to this size before it is written out (the
/// writer flushes after each batch anyway).
pub const WRITE_BUFFER: usize = 16 * 1024;
/// The socket's read buffer, allocated for the session's whole life: client frames are small
/// (an ACK is under 100 bytes), and a larger frame is read in several steps (tungstenite
/// reserves room for a frame's whole length once it has its header).
pub const READ_BUFFER: usize = 1024;
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

/// Most frames the writer hands to the socket before one flush (one system call, or a few,
/// for a burst instead of one per frame).
const WRITE_BATCH: usize = 64;

fn stream_error(e: axum::Error) -> End {
    let text = e.to_string();
    if text.contains("too long") || text.contains("Space limit") || text.contains("too big") {
        End::close(Close::MessageTooBig, "frames are limited to 64 KiB")
    } else if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        End::close(Close::InvalidPayload, "text frames must be UTF-8")
    } else if text.contains("protocol error") {
        End::close(Close::ProtocolError, "WebSocket protocol error")
    } else {
        End::ClientGone
    }
}

/// Maps WebSocket messages to transport-neutral input.
fn incoming(stream: futures_util::stream::SplitStream<WebSocket>) -> IncomingStream {
    Box::pin(stream.map(|m| match m {
        Err(e) => Incoming::End(stream_error(e)),
        Ok(Message::Close(_)) => Incoming::End(End::ClientGone),
        Ok(Message::Ping(_)) => Incoming::Ping,
        Ok(Message::Pong(_)) => Incoming::Activity,
        Ok(Message::Binary(_)) => Incoming::End(End::close(
            Close::ProtocolError,
            "binary frames are not part of herald.v1",
        )),
        Ok(Message::Text(t)) => match parse_client_frame(t.as_str()) {
            Ok(f) => Incoming::Frame(f),
            Err(e) => Incoming::End(End::close(Close::ProtocolError, e)),
        },
    }))
}

/// One WebSocket session from the upgraded socket to the end. The socket is split and the
/// writer started here, outside the returned future, so that the future (which every connected
/// device keeps for its whole life) holds only what the session needs: the shared state by
/// `Arc`, the halves' handles and the session itself, not a moved-from socket and state too.
pub fn run(
    st: Arc<AppState>,
    user: User,
    socket: WebSocket,
    guard: ConnectionGuard,
) -> impl Future<Output = ()> + Send + 'static {
    let epoch = st.log.epoch();
    let (sink, stream) = socket.split();
    let incoming = incoming(stream);
    let (outbox, out_rx, written) = Outbox::new(SEND_QUEUE);
    let (close_tx, close_rx) = oneshot::channel::<Message>();
    let writer = tokio::spawn(write(sink, out_rx, close_rx, written, epoch));
    async move {
        session(&st, &user, incoming, outbox, close_tx, writer, epoch).await;
        drop(guard);
    }
}

/// The writer: drains the outbox into the socket, a batch per flush, until the session ends
/// (its close frame, or the outbox closing).
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut out_rx: queue::Receiver<Out>,
    mut close_rx: oneshot::Receiver<Message>,
    written: Arc<AtomicU64>,
    epoch: Epoch,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            c = &mut close_rx => {
                if let Ok(c) = c {
                    let _ = sink.send(c).await;
                }
                break;
            }
            n = out_rx.recv_many(&mut batch, WRITE_BATCH) => {
                // A frame, and whatever else is queued behind it (up to a batch), then one
                // flush.
                if n == 0 {
                    break;
                }
                let mut counted = 0;
                let mut open = true;
                for out in batch.drain(..) {
                    // The session numbers its own frames (not the heartbeat's pings).
                    counted += u64::from(matches!(out, Out::Notification { .. } | Out::Frame(_)));
                    match message(out, epoch) {
                        Some(msg) if open => open = sink.feed(msg).await.is_ok(),
                        _ => open = false,
                    }
                }
                if !open || sink.flush().await.is_err() {
                    break;
                }
                written.fetch_add(counted, Ordering::Relaxed);
            }
        }
    }
    let _ = sink.close().await;
}

async fn session(
    st: &AppState,
    user: &User,
    mut incoming: IncomingStream,
    outbox: Outbox,
    close_tx: oneshot::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
    epoch: Epoch,
) {
    let _connected = herald_ports::telemetry::SessionGauge::open("ws");
    // hello, within the timeout.
    let hello = tokio::time::timeout(st.config.hello_timeout, async {
        loop {
            match incoming.next().await {
                None => return Err(End::ClientGone),
                Some(Incoming::Activity | Incoming::Ping) => continue,
                Some(Incoming::End(e)) => return Err(e),
                Some(Incoming::Frame(f)) => return Ok(f),
            }
        }
    })
    .await;
    let end = match hello {
        Err(_) => End::close(Close::HelloTimeout, "send hello first"),
        Ok(Err(end)) => end,
        Ok(Ok(ClientFrame::Hello { device_id, cursor })) => {
            match Hello::parse(device_id, cursor.as_deref(), epoch) {
                Ok(hello) => super::serve(st, user, hello, &mut incoming, &outbox, true).await,
                Err(ending) => End::Close(ending),
            }
        }
        Ok(Ok(_)) => End::close(Close::ProtocolError, "the first frame must be hello"),
    };
    drop(outbox);
    herald_ports::telemetry::session_closed("ws", end.code());
    if let End::Close(ending) = end {
        tracing::debug!(user = %user.id, code = ending.close.code(), reason = %ending.reason, "closing session");
        let _ = close_tx.send(close_msg(&ending));
        // The close handshake: read (and drop) what the peer still sends until its Close, so
        // the socket is not torn down under data in flight (which would reset the connection
        // and could lose our close frame on the client's side). Read past errors too: after an
        // oversized or malformed message, the rest of it is still on its way.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            let mut errors = 0;
            while let Some(m) = incoming.next().await {
                match m {
                    Incoming::End(End::ClientGone) => break,
                    Incoming::End(_) => {
                        errors += 1;
                        if errors >= CLOSE_DRAIN_ERRORS {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        })
        .await;
    }
    // The writer gets a bounded time to finish; a peer that does not read cannot keep it (and
    // with it the socket, the queue and the connection slot) any longer.
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_HANDSHAKE, &mut writer)
        .await
        .is_err()
    {
        tracing::debug!(user = %user.id, "aborting the writer of a peer that does not read");
        writer.abort();
        let _ = writer.await;
    }
}
