//! Extractors: JSON bodies and query strings whose rejections are [`AppError`]s, and the
//! callers the route groups' auth layers establish.
//!
//! A handler never sees a `HeaderMap` for auth nor a `JsonRejection`: it takes `AppJson<T>`,
//! `AppQuery<T>`, and one of [`AuthUser`], [`Producer`], [`Operator`] (and, on the realtime
//! routes, an [`Admission`]). Those are put in the request's extensions by the layer of the
//! handler's route group (`routes::app`), which runs before any extractor; a handler outside
//! its group fails with 500 rather than run unauthenticated.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Json, Path, Query, Request};
use axum::http::request::Parts;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};

use crate::AppError;
use crate::auth::User;
use crate::auth::tickets::Claimed;
use crate::limits::{ConnectionGuard, ConnectionLimits};

/// A JSON body, which must be an object; a bad one is `400 malformed_json`,
/// `422 invalid_json_shape`, `413` or `415`.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        if !plain_json(req.headers()) {
            // axum decides what else is JSON, and answers 415 for what is not.
            let Json(ObjectOnly(v)) = Json::<ObjectOnly<T>>::from_request(req, state)
                .await
                .map_err(|e: JsonRejection| AppError::from(e))?;
            return Ok(AppJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| AppError::from(JsonRejection::from(e)))?;
        // axum's `Json` tracks the path of every value it parses, for the error message; a
        // body that parses needs none of it (parsing was a fifth of the batch endpoint's
        // samples, much of it that). One that does not is parsed again by axum, for the same
        // message.
        match serde_json::from_slice::<ObjectOnly<T>>(&bytes) {
            Ok(ObjectOnly(v)) => Ok(AppJson(v)),
            Err(_) => {
                let Json(ObjectOnly(v)) =
                    Json::<ObjectOnly<T>>::from_bytes(&bytes).map_err(AppError::from)?;
                Ok(AppJson(v))
            }
        }
    }
}

/// Whether the request says `Content-Type: application/json` exactly (any case), the type
/// every client sends; anything else goes through axum's own check.
fn plain_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"))
}

/// A struct that only deserializes from a JSON object. serde lets a struct be written as an
/// array of its fields in order (`[["id"], null, "laptop"]`), which the API documents nowhere:
/// this refuses it (`422 invalid_json_shape`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(PhantomData)).map(ObjectOnly)
    }
}

/// A query string; a bad one is `400 invalid_request`.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(v) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e: QueryRejection| AppError::from(e))?;
        Ok(AppQuery(v))
    }
}

/// Path parameters; one that cannot be read (not UTF-8 once percent-decoded, say) is
/// `400 invalid_request` with the JSON error body, as every other error.
pub struct AppPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for AppPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(v) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| AppError::Invalid(e.body_text()))?;
        Ok(AppPath(v))
    }
}

/// The authenticated user (set by the user and realtime groups' layers).
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

/// The authenticated producer's name (set by the producer group's layer).
#[derive(Debug, Clone)]
pub struct Producer(pub String);

/// The authenticated operator's name (set by the operator group's layer).
#[derive(Debug, Clone)]
pub struct Operator(pub String);

fn established<T: Clone + Send + Sync + 'static>(parts: &Parts, what: &str) -> Result<T, AppError> {
    parts.extensions.get::<T>().cloned().ok_or_else(|| {
        tracing::error!(
            route = %parts.uri.path(),
            "a handler asked for the {what} outside its route group"
        );
        AppError::Internal(format!("no {what} was established for this route"))
    })
}

/// A realtime request on its way to a connection: the user the realtime layer established and
/// the ticket it redeemed for them, if any. The handler checks the request first, then
/// [`Admission::admit`]s it, which takes the connection's slot from the limits (see
/// [`crate::limits::ConnectionLimits`]). A ticket whose request ends without a connection (a
/// bad request, or a slot the limits refuse) is put back by the layer when the response is
/// made, so a client can retry with it; once admitted, it is spent. Shared only so that the
/// layer sees what became of it.
#[derive(Clone)]
pub struct Admission(std::sync::Arc<std::sync::Mutex<Pending>>);

struct Pending {
    user_id: String,
    ticket: Option<Claimed>,
    admitted: bool,
}

impl Admission {
    pub fn new(user_id: String, ticket: Option<Claimed>) -> Self {
        Admission(std::sync::Arc::new(std::sync::Mutex::new(Pending {
            user_id,
            ticket,
            admitted: false,
        })))
    }

    /// The connection's slot, held by the session for its whole life; the ticket is spent.
    /// `429` if the limits refuse (the ticket then goes back).
    pub fn admit(
        &self,
        limits: &std::sync::Arc<ConnectionLimits>,
    ) -> Result<ConnectionGuard, AppError> {
        let mut p = self.0.lock().expect("admission lock");
        if p.admitted {
            return Err(AppError::Internal("a connection was admitted twice".into()));
        }
        let guard = limits.acquire(&p.user_id)?;
        p.admitted = true;
        p.ticket = None;
        Ok(guard)
    }

    /// The ticket, if the request ended without a connection.
    pub fn unused_ticket(&self) -> Option<Claimed> {
        self.0.lock().expect("admission lock").ticket.take()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admission {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parts.extensions.remove::<Admission>().ok_or_else(|| {
            tracing::error!(route = %parts.uri.path(), "no admission for this route");
            AppError::Internal("no admission was made for this route".into())
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        established(parts, "user")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Producer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        established(parts, "producer")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        established(parts, "operator")
    }
}
