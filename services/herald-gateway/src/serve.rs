//! The HTTP server loop: accepts connections and serves the router over HTTP/1.1 (with
//! WebSocket upgrades), with what `axum::serve` does not offer: a header read timeout that also
//! closes idle keep-alive and silent connections, TCP_NODELAY, and a bounded graceful
//! shutdown. HTTP/2 is not offered: Herald's clients speak HTTP/1.1 (WebSockets need it), and
//! HTTP/2's protocol sniffing would wait for a silent connection's first bytes without bound.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// A handle to the connection a request came on, in the request's extensions: cancelling it
/// drops the connection (its socket, and the response in progress). For a response that
/// cannot end by itself while its peer does not read: an SSE stream whose close event the peer
/// does not take (`session::sse`). Absent where the router is called without this server loop.
#[derive(Clone, Debug, Default)]
pub struct ConnectionAbort(pub CancellationToken);

/// How the server treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// A request's headers must arrive within this time of the connection becoming ready for
    /// one: it closes trickling clients, silent connections and idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in progress.
    pub graceful_timeout: Duration,
    /// A request's whole body must arrive within this time of the first time it keeps the
    /// server waiting (`408 request_timeout` otherwise): a client that trickles a body cannot
    /// hold a request open for long.
    pub body_read_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_read_timeout: Duration::from_secs(15),
            graceful_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits (at
/// most `graceful_timeout`) for requests in progress. Upgraded connections (WebSockets) are
/// not waited for: their sessions end on the gateway's own shutdown signal.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: HttpOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let (stop, stopped) = watch::channel(false);
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let abort = ConnectionAbort::default();
        let aborted = abort.0.clone();
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: axum::extract::Request<Incoming>| {
                req.extensions_mut().insert(abort.clone());
                req.map(|body| DeadlineBody::new(body, options.body_read_timeout))
            },
        ));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // Dropped with its socket: nothing of it is waited for.
                () = aborted.cancelled() => Ok(()),
                _ = stopped.changed() => {
                    // Finish the request in progress, take no new one.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    connections.close();
    if tokio::time::timeout(options.graceful_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress at shutdown");
    }
}

/// The error a request body gives when it has not all arrived within
/// [`HttpOptions::body_read_timeout`] (the extractors answer `408 request_timeout`).
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl BodyTimedOut {
    /// The [`BodyTimedOut`] in `e`'s chain of sources, if that is why a body could not be read.
    pub(crate) fn in_chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut at = Some(e);
        while let Some(e) = at {
            if let Some(t) = e.downcast_ref::<Self>() {
                return Some(t);
            }
            at = e.source();
        }
        None
    }
}

/// A request body that must end within a time of the first time it keeps the server waiting
/// (its first read, for a body that does not come with its headers). A body that never makes
/// the server wait (a GET's, or a small one that arrived with the headers) registers no timer,
/// and the timer is dropped once the body has ended.
struct DeadlineBody {
    body: Incoming,
    limit: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl DeadlineBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        DeadlineBody {
            body,
            limit,
            deadline: None,
            ended: false,
        }
    }
}

impl DeadlineBody {
    /// Ends the body with [`BodyTimedOut`].
    fn timed_out(&mut self) -> Box<dyn std::error::Error + Send + Sync> {
        self.ended = true;
        self.deadline = None;
        Box::new(BodyTimedOut(self.limit))
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(this.timed_out())));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(Into::into))),
            Poll::Pending => {
                // The clock starts the first time the body keeps the server waiting: a body
                // that came with its headers (most) never registers a timer.
                if this.deadline.is_none() {
                    let mut deadline = Box::pin(tokio::time::sleep(this.limit));
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(this.timed_out())));
                    }
                    this.deadline = Some(deadline);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
