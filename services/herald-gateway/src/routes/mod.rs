//! The HTTP API, one module per resource, each group of routes behind the check of who may
//! call it (a layer, so a route cannot forget it):
//!
//! | group | who | routes |
//! |---|---|---|
//! | [`notifications`], [`directory`] | producers | `POST /v1/notifications[/batch]`, users, groups, topics, roles |
//! | [`inbox`], [`preferences`], ticket minting | users (Bearer JWT) | `/v1/inbox…`, `POST /v1/ack`, `/v1/preferences`, `POST /v1/ws-ticket` |
//! | [`realtime`] | users (Bearer JWT or ticket), allowed origins | `GET /v1/ws`, `GET /v1/sse` |
//! | [`ops`] | operators | `/v1/audit/…`, `/v1/status`, `/v1/presence`, `/metrics` |
//! | [`web`], [`openapi`] | anyone | `/healthz`, `/herald.js`, `/v1/openapi.json`; `herald dev`: `/`, `/demo.js`, `/demo.css`, `/favicon.svg`, `POST /v1/dev/token` |
//! | [`health`] | anyone | `/readyz` |
//!
//! Every request is counted and timed by [`front`] under its route template
//! (`herald_http_requests_total`, `herald_http_request_duration_seconds`).

pub mod directory;
#[doc(hidden)]
pub mod fuzzing;
mod guard;
pub mod health;
pub mod inbox;
pub mod notifications;
pub mod openapi;
pub mod ops;
pub mod preferences;
pub mod realtime;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::AppError;
use crate::extract::{Admission, AuthUser, Operator, Producer};
use crate::limits::MAX_BODY_BYTES;
use crate::state::AppState;
use guard::GuardLayer;

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let producers = notifications::routes()
        .merge(directory::routes())
        .route_layer(GuardLayer::new(state.clone(), require_producer));
    let users = inbox::routes()
        .merge(preferences::routes())
        .merge(realtime::ticket_routes())
        .route_layer(GuardLayer::new(state.clone(), require_user));
    let realtime = realtime::routes().route_layer(from_fn_with_state(state.clone(), realtime_user));
    let operators = ops::routes().route_layer(GuardLayer::new(state.clone(), require_operator));
    let routes = Router::new()
        .merge(producers)
        .merge(users)
        .merge(realtime)
        .merge(operators)
        .merge(web::routes())
        .merge(openapi::routes())
        .merge(health::routes());
    outer_layers(routes).with_state(state)
}

/// What wraps every route: the 404/405 fallbacks, the body limit, tracing, a panic in a
/// handler answered as `500 internal_error` instead of a dropped connection, and [`front`]
/// (request metrics, [`unambiguous`]).
pub fn outer_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(front))
}

/// The outermost layer, one for what every request goes through: a layer of its own each cost
/// single requests 5–7% more server CPU in the ingest benchmark (docs/benchmarks.md). Counts
/// and times every request under its route template ([`MatchedPath`]: `/v1/audit/{id}`, never
/// the id itself, so the label stays bounded), `unmatched` when no route matched; the time runs
/// to the response head (a WebSocket's 101, an SSE stream's headers), and a panic's 500 is
/// counted too. Inside that, [`unambiguous`].
///
/// [`MatchedPath`]: axum::extract::MatchedPath
pub async fn front(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let response = unambiguous(req, next).await;
    herald_ports::telemetry::http_request(
        route.as_ref().map_or("unmatched", |m| m.as_str()),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Refuses a request the server would have to guess about, before any route sees it
/// ([`ambiguity`]), and says `Connection: close` on an answer given before the request's body
/// was read to its end (such a refusal, a caller refused before its body is read, a route that
/// takes none): the server will not read the rest, so it closes the connection after the answer,
/// and a client told so does not send its next request on a connection that is going away.
/// hyper alone would keep the connection when the whole body happened to be in its buffer
/// already, and close it when it was not, which a client cannot tell apart: one rule instead,
/// at the cost of a new connection after such an answer (RFC 9112 §9.6 lets a server close).
async fn unambiguous(req: Request, next: Next) -> Response {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let headers = req.headers();
    let body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|n| n.as_bytes() != b"0");
    let close = |mut response: Response| {
        response
            .headers_mut()
            .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
        response
    };
    if let Some(refused) = ambiguity(headers, body) {
        let response = refused.into_response();
        return if body { close(response) } else { response };
    }
    if !body {
        return next.run(req).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        axum::body::Body::new(ReadToEnd {
            inner,
            ended: ended.clone(),
        })
    });
    let response = next.run(req).await;
    if ended.load(Ordering::Acquire) {
        response
    } else {
        close(response)
    }
}

/// What makes a request ambiguous, if anything:
/// * a body in a `Content-Encoding` other than `identity`, or sent with a transfer coding other
///   than `chunked` (the server decodes none): `415 unsupported_media_type`, rather than a
///   compressed body read as JSON;
/// * a `Content-Length` over [`MAX_BODY_BYTES`]: `413 payload_too_large` at once, rather than
///   after waiting for a body that would be refused anyway;
/// * more than one `Origin` (which one would the allowlist check?): `400 invalid_request`;
/// * more than one credential: two `Authorization` or two `X-Api-Key` headers, or one of each
///   (which caller is it?): `400 invalid_request`, rather than the first one found.
///
/// A body framed both by `Content-Length` and `Transfer-Encoding` never gets here: hyper reads
/// it by its chunks and closes the connection after the answer (RFC 9112 §6.1), so nothing
/// after it on that connection is read as another request.
fn ambiguity(headers: &axum::http::HeaderMap, body: bool) -> Option<AppError> {
    use axum::http::header::{
        AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, ORIGIN, TRANSFER_ENCODING,
    };
    let codings = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
    };
    if body
        && let Some(other) = codings(CONTENT_ENCODING).find(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Some(AppError::UnsupportedEncoding(
            "Content-Encoding",
            other.to_owned(),
        ));
    }
    if let Some(other) = codings(TRANSFER_ENCODING).find(|e| !e.eq_ignore_ascii_case("chunked")) {
        return Some(AppError::UnsupportedEncoding(
            "Transfer-Encoding",
            other.to_owned(),
        ));
    }
    if headers
        .get(CONTENT_LENGTH)
        .and_then(|n| n.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Some(AppError::TooLarge(MAX_BODY_BYTES));
    }
    if headers.get_all(ORIGIN).iter().nth(1).is_some() {
        return Some(AppError::Invalid(
            "a request may carry one Origin header at most".into(),
        ));
    }
    let credentials =
        headers.get_all(AUTHORIZATION).iter().count() + headers.get_all("x-api-key").iter().count();
    (credentials > 1).then(|| {
        AppError::Invalid(
            "send one credential: one Authorization or one X-Api-Key header, not both".into(),
        )
    })
}

/// A request body that notes when it was read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    ended: Arc<AtomicBool>,
}

impl axum::body::HttpBody for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer when a handler panicked.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a handler panicked");
    tracing::error!(panic = what, "request handler panicked");
    AppError::Internal("the request failed on the server".into()).into_response()
}

fn require_user(st: &AppState, req: &mut Request) -> Result<(), AppError> {
    let user = st.auth.user(req.headers())?;
    req.extensions_mut().insert(AuthUser(user));
    Ok(())
}

fn require_producer(st: &AppState, req: &mut Request) -> Result<(), AppError> {
    let producer = st.auth.producer(req.headers(), &st.config.open_producer)?;
    req.extensions_mut().insert(Producer(producer));
    Ok(())
}

fn require_operator(st: &AppState, req: &mut Request) -> Result<(), AppError> {
    let operator = st.auth.operator(req.headers())?;
    req.extensions_mut().insert(Operator(operator));
    Ok(())
}

#[derive(Deserialize)]
struct TicketParam {
    #[serde(default)]
    ticket: Option<String>,
}

/// WebSocket and SSE: the origin is checked first (a refused origin spends no ticket), then the
/// user comes from `?ticket=` (browsers) or the Bearer token. The handler checks the request and
/// takes the connection's slot ([`Admission::admit`]); a ticket redeemed for a request that ends
/// without a connection (refused by the handler or the limits) is put back here.
async fn realtime_user(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    if !st.config.allowed_origins.is_empty() {
        let origin = req
            .headers()
            .get("origin")
            .and_then(|o| o.to_str().ok())
            .unwrap_or("");
        if !st.config.allowed_origins.iter().any(|o| o == origin) {
            return Err(AppError::OriginForbidden(origin.to_owned()));
        }
    }
    let Query(p) = Query::<TicketParam>::try_from_uri(req.uri())?;
    let (user, ticket) = match p.ticket {
        Some(t) => {
            let claimed = st.auth.claim_ticket(&t)?;
            (claimed.user().clone(), Some(claimed))
        }
        None => (st.auth.user(req.headers())?, None),
    };
    let admission = Admission::new(user.id.clone(), ticket);
    req.extensions_mut().insert(AuthUser(user));
    req.extensions_mut().insert(admission.clone());
    let response = next.run(req).await;
    if let Some(claimed) = admission.unused_ticket() {
        st.auth.put_back_ticket(claimed);
    }
    Ok(response)
}
