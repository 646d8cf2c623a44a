//! [`Guard`]: a route group's check of its callers, as a layer of its own kind.
//!
//! `axum::middleware::from_fn` boxes the inner service and the future of every request; a
//! layer made of it cost single requests 5–7% more server CPU in the ingest benchmark
//! (docs/benchmarks.md). A check that only looks at the request's head and puts what it found
//! into its extensions needs neither: it answers at once, or passes the request on.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};

use crate::AppError;
use crate::state::AppState;

/// A check of a request's head: `Ok` puts what it found into the request's extensions.
pub type Check = fn(&AppState, &mut Request) -> Result<(), AppError>;

/// Layers a route group behind `check`.
#[derive(Clone)]
pub struct GuardLayer {
    st: AppState,
    check: Check,
}

impl GuardLayer {
    pub fn new(st: AppState, check: Check) -> Self {
        Self { st, check }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            st: self.st.clone(),
            check: self.check,
        }
    }
}

/// A route's service behind a [`Check`]: refused requests never reach it.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    st: AppState,
    check: Check,
}

impl<S> tower::Service<Request> for Guard<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match (self.check)(&self.st, &mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refused) => Either::Left(ready(Ok(refused.into_response()))),
        }
    }
}
