//! The Server-Sent Events transport: the same session with no client frames (ACKs and marks
//! arrive over HTTP and reach the session through the log like any other event). Frames are
//! `data:` lines, the heartbeat a `: ping` comment, and the end an `event: close`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::response::sse::Event;
use futures_util::Stream;
use herald_core::cursor::Epoch;
use herald_core::protocol::notification_frame;
use herald_core::session::Hello;
use serde::Serialize;

use super::{End, Incoming, Out, Outbox, Transport};
use crate::auth::User;
use crate::config::SEND_QUEUE;
use crate::limits::ConnectionGuard;
use crate::serve::ConnectionAbort;
use crate::session::ws::CLOSE_HANDSHAKE;
use crate::state::AppState;

#[derive(Serialize)]
struct CloseEvent<'a> {
    code: u16,
    name: &'a str,
    reason: &'a str,
}

/// The session's side of an SSE response: no client frames (the response body reads the
/// queue itself); the session ends when the body is dropped (the client went away).
struct Body {
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Transport for Body {
    fn poll_io(&mut self, cx: &mut Context<'_>, _reading: bool, _flush: bool) -> Poll<Incoming> {
        self.gone
            .as_mut()
            .poll(cx)
            .map(|()| Incoming::End(End::ClientGone))
    }
}

/// Starts a session and returns its frames as an SSE stream, which holds `guard` (the
/// connection's slot) until it ends. When the session ends, its close event must be taken by
/// the peer within [`CLOSE_HANDSHAKE`] (the time a WebSocket peer gets for its close), or
/// `abort` drops the connection: a peer that stopped reading (the session ended it as a slow
/// consumer) would otherwise keep the response, its queue and the slot for as long as it kept
/// the socket open.
pub fn stream(
    st: AppState,
    user: User,
    hello: Hello,
    guard: ConnectionGuard,
    abort: Option<ConnectionAbort>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let epoch = st.log.epoch();
    let (outbox, rx, written) = Outbox::new(SEND_QUEUE);
    // Cancelled when the stream has handed out its last event (or is dropped).
    let taken = tokio_util::sync::CancellationToken::new();
    let closed = taken.clone();
    tokio::spawn(async move {
        let _connected = herald_ports::telemetry::SessionGauge::open("sse");
        let tx = outbox.tx.clone();
        let mut io = Body {
            gone: Box::pin(async move { tx.closed().await }),
        };
        let end = super::serve(&st, &user, Box::new(hello), &mut io, &outbox, false).await;
        herald_ports::telemetry::session_closed("sse", end.code());
        if let End::Close(ending) = end {
            let deadline = tokio::time::Instant::now() + CLOSE_HANDSHAKE;
            let delivered = async {
                outbox.close(ending.close, ending.reason).await;
                closed.cancelled().await;
            };
            if tokio::time::timeout_at(deadline, delivered).await.is_err()
                && let Some(abort) = abort
            {
                abort.0.cancel();
            }
        }
    });
    futures_util::stream::unfold(
        (rx, guard, written, taken.drop_guard(), false),
        move |(mut rx, guard, written, taken, done): (
            crate::queue::Receiver<Out>,
            ConnectionGuard,
            Arc<AtomicU64>,
            tokio_util::sync::DropGuard,
            bool,
        )| async move {
            if done {
                return None;
            }
            let out = rx.recv().await?;
            // The session numbers its own frames (not the heartbeat's pings).
            let counted = matches!(out, Out::Notification { .. } | Out::Frame(_));
            let (event, last) = event(out, epoch);
            if counted {
                written.fetch_add(1, Ordering::Relaxed);
            }
            Some((Ok(event), (rx, guard, written, taken, last)))
        },
    )
}

/// The SSE event for one queued frame, and whether it is the last.
fn event(out: Out, epoch: Epoch) -> (Event, bool) {
    let data = |f: &herald_core::protocol::ServerFrame| {
        Event::default().data(serde_json::to_string(f).expect("frames serialize"))
    };
    match out {
        Out::Notification { row, attempt } => {
            (data(&notification_frame(&row, epoch, attempt)), false)
        }
        Out::Frame(f) => (data(&f), false),
        Out::Ping => (Event::default().comment("ping"), false),
        Out::Close(c, reason) => {
            let body = CloseEvent {
                code: c.code(),
                name: c.name(),
                reason: &reason,
            };
            let e = Event::default()
                .event("close")
                .data(serde_json::to_string(&body).expect("close events serialize"));
            (e, true)
        }
    }
}
