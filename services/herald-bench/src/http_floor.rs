//! The HTTP floor of durable ingest: a server that takes Herald's two ingest requests
//! (`POST /v1/notifications`, `POST /v1/notifications/batch`) through Herald's own server loop
//! (`herald_gateway::serve`: hyper's HTTP/1.1, keep-alive, TCP_NODELAY), parses each body as
//! JSON (into a `serde_json::Value`, about what extracting Herald's typed bodies costs) and
//! answers 202 with a body of Herald's shape, storing and checking nothing (no middleware, no
//! producer auth, no rate limit). About what a server answering these requests over HTTP/1.1
//! reaches on this machine with the suite's client: the ingest scenario measures it in the same
//! run as raw SQLite and Herald, so the ingest targets (fractions of raw SQLite) can be read
//! against what HTTP with this client allows.
//! Started as its own process (`herald-bench http-floor`), as every server under test is.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

/// Serves until SIGTERM or Ctrl-C.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/notifications", post(one))
        .route("/v1/notifications/batch", post(batch));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    herald_gateway::serve(
        listener,
        app,
        herald_gateway::HttpOptions::default(),
        shutdown,
    )
    .await;
    Ok(())
}

/// Offsets for the answers: each accepted notification gets the next one, as a log would give.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// One answer, the shape and size of Herald's to a request without a key
/// (`routes/notifications.rs`: a UUID's 36 characters, the key `herald:` and another, a
/// partition and an offset).
fn write_accepted(out: &mut Vec<u8>) {
    let offset = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        offset >> 32,
        (offset >> 16) & 0xffff,
        offset & 0xffff,
        0,
        offset
    );
    out.extend_from_slice(
        format!(
            "{{\"notification_id\":\"{id}\",\"idempotency_key\":\"herald:{id}\",\"partition\":{},\"offset\":{offset}}}",
            offset % 8
        )
        .as_bytes(),
    );
}

fn accepted(body: Vec<u8>) -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn bad_request() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"error":"invalid_json"}"#,
    )
        .into_response()
}

async fn one(body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => {
            let mut out = Vec::with_capacity(160);
            write_accepted(&mut out);
            accepted(out)
        }
        _ => bad_request(),
    }
}

async fn batch(body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_request();
    };
    let Some(list) = v["notifications"].as_array() else {
        return bad_request();
    };
    let mut out = Vec::with_capacity(16 + 160 * list.len());
    out.extend_from_slice(b"{\"accepted\":[");
    for i in 0..list.len() {
        if i > 0 {
            out.push(b',');
        }
        write_accepted(&mut out);
    }
    out.extend_from_slice(b"]}");
    accepted(out)
}
