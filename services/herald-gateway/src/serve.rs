//! The HTTP server loop: accepts connections and serves the router over HTTP/1.1 (with
//! WebSocket upgrades), with what `axum::serve` does not offer: a header read timeout that also
//! closes idle keep-alive and silent connections, TCP_NODELAY, and a bounded graceful
//! shutdown. HTTP/2 is not offered: Herald's clients speak HTTP/1.1 (WebSockets need it), and
//! HTTP/2's protocol sniffing would wait for a silent connection's first bytes without bound.

use std::future::Future;
use std::time::Duration;

use axum::Router;
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
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_read_timeout: Duration::from_secs(15),
            graceful_timeout: Duration::from_secs(10),
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
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(abort.clone());
                req
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
