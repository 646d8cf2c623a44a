//! Errors as HTTP responses with stable codes.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(String),
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body has the wrong shape: {0}")]
    WrongShape(String),
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    /// A request body in a coding the server does not decode: the header, and the coding.
    #[error("{0} {1:?} is not supported: send the body uncompressed")]
    UnsupportedEncoding(&'static str, String),
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("no such route")]
    NotFound,
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("origin {0:?} is not allowed")]
    OriginForbidden(String),
    #[error("offer the WebSocket subprotocol herald.v1")]
    SubprotocolRequired,
    #[error("too many connections: {0}")]
    TooManyConnections(String),
    #[error("{role} {caller} is over its rate limit; retry in {retry_after_secs} s")]
    RateLimited {
        /// producer, operator, user
        role: &'static str,
        caller: String,
        retry_after_secs: u64,
    },
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the log is unavailable: {0}")]
    LogUnavailable(String),
    #[error("the projection is unavailable: {0}")]
    ProjectionUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Invalid(_) | AppError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            AppError::WrongShape(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::UnsupportedMediaType | AppError::UnsupportedEncoding(..) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) | AppError::OriginForbidden(_) => StatusCode::FORBIDDEN,
            AppError::SubprotocolRequired => StatusCode::BAD_REQUEST,
            AppError::TooManyConnections(_) | AppError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::LogUnavailable(_) | AppError::ProjectionUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code (documented in docs/protocol.md).
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Invalid(_) => "invalid_request",
            AppError::MalformedJson(_) => "malformed_json",
            AppError::WrongShape(_) => "invalid_json_shape",
            AppError::UnsupportedMediaType | AppError::UnsupportedEncoding(..) => {
                "unsupported_media_type"
            }
            AppError::TooLarge(_) => "payload_too_large",
            AppError::RequestTimeout(_) => "request_timeout",
            AppError::NotFound => "not_found",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::OriginForbidden(_) => "origin_forbidden",
            AppError::SubprotocolRequired => "subprotocol_required",
            AppError::TooManyConnections(_) => "too_many_connections",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::LogUnavailable(_) => "log_unavailable",
            AppError::ProjectionUnavailable(_) => "projection_unavailable",
            AppError::Internal(_) => "internal_error",
            AppError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut resp = (self.status(), Json(body)).into_response();
        if let AppError::RateLimited {
            retry_after_secs, ..
        } = &self
            && let Ok(v) = axum::http::HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => AppError::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => AppError::WrongShape(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                AppError::TooLarge(crate::limits::MAX_BODY_BYTES)
            }
            // The body's framing broke (a bad chunk size, trailers over hyper's bound): no
            // JSON was there to be malformed. Or it did not come in time.
            JsonRejection::BytesRejection(e) => match crate::serve::BodyTimedOut::in_chain(&e) {
                Some(t) => AppError::RequestTimeout(t.to_string()),
                None => AppError::Invalid(format!("the body could not be read: {}", e.body_text())),
            },
            other => AppError::MalformedJson(other.body_text()),
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::Invalid(r.body_text())
    }
}

impl From<herald_core::CoreError> for AppError {
    fn from(e: herald_core::CoreError) -> Self {
        AppError::Invalid(e.to_string())
    }
}

impl From<herald_ports::LogError> for AppError {
    fn from(e: herald_ports::LogError) -> Self {
        AppError::LogUnavailable(e.to_string())
    }
}

impl From<herald_ports::ProjectionError> for AppError {
    fn from(e: herald_ports::ProjectionError) -> Self {
        AppError::ProjectionUnavailable(e.to_string())
    }
}

impl From<herald_ports::AuditError> for AppError {
    fn from(e: herald_ports::AuditError) -> Self {
        match e {
            herald_ports::AuditError::Log(l) => l.into(),
            herald_ports::AuditError::Projection(p) => p.into(),
        }
    }
}

impl From<crate::limits::Refused> for AppError {
    fn from(r: crate::limits::Refused) -> Self {
        match r {
            crate::limits::Refused::Global => {
                AppError::TooManyConnections("the server is at its connection limit".into())
            }
            crate::limits::Refused::PerUser(max) => {
                AppError::TooManyConnections(format!("at most {max} connections per user"))
            }
        }
    }
}
