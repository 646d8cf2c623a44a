//! Entry points for fuzzing every HTTP body and query type through exactly the parsing and
//! validation code its handler runs (everything but the append). Used by the gateway's fuzz
//! tests (`tests/fuzz.rs`, and `just fuzz` for long runs); not part of the API.

use axum::extract::Query;
use herald_core::cursor::Epoch;
use serde::de::DeserializeOwned;

use super::{directory, inbox, notifications, ops, realtime, web};
use crate::AppError;
use crate::extract::ObjectOnly;

/// What a fuzz input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Notification,
    Batch,
    Read,
    Unread,
    Archive,
    Unarchive,
    Ack,
    Preferences,
    User,
    Role,
    DevLogin,
    InboxQuery,
    SseQuery,
    AuditQuery,
}

impl Input {
    pub const ALL: [Input; 14] = [
        Input::Notification,
        Input::Batch,
        Input::Read,
        Input::Unread,
        Input::Archive,
        Input::Unarchive,
        Input::Ack,
        Input::Preferences,
        Input::User,
        Input::Role,
        Input::DevLogin,
        Input::InboxQuery,
        Input::SseQuery,
        Input::AuditQuery,
    ];

    /// Whether the input is a query string (else a JSON body).
    pub fn is_query(self) -> bool {
        matches!(
            self,
            Input::InboxQuery | Input::SseQuery | Input::AuditQuery
        )
    }
}

const EPOCH: Epoch = Epoch(0x00c0_ffee);

fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice::<ObjectOnly<T>>(bytes)
        .map(|ObjectOnly(v)| v)
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => AppError::WrongShape(e.to_string()),
            _ => AppError::MalformedJson(e.to_string()),
        })
}

fn query<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let text = std::str::from_utf8(bytes).map_err(|e| AppError::Invalid(e.to_string()))?;
    let uri: axum::http::Uri = format!("/x?{text}")
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| AppError::Invalid(e.to_string()))?;
    Ok(Query::<T>::try_from_uri(&uri)?.0)
}

/// Parses and validates `bytes` as `input` the way its handler does.
pub fn check(input: Input, bytes: &[u8]) -> Result<(), AppError> {
    let user = || "fuzz-user".to_owned();
    match input {
        Input::Notification => {
            notifications::build_request("fuzz", json(bytes)?, None, None)?;
        }
        Input::Batch => {
            notifications::batch_requests("fuzz", json(bytes)?, None)?;
        }
        Input::Read | Input::Unread | Input::Archive | Input::Unarchive => {
            let kind = match input {
                Input::Read => inbox::Mark::Read,
                Input::Unread => inbox::Mark::Unread,
                Input::Archive => inbox::Mark::Archive,
                _ => inbox::Mark::Unarchive,
            };
            inbox::mark_event(EPOCH, user(), json(bytes)?, kind, 0)?;
        }
        Input::Ack => {
            inbox::ack_event(EPOCH, user(), json(bytes)?, 0)?;
        }
        Input::Preferences => {
            let preferences: herald_core::model::Preferences = json(bytes)?;
            preferences.validate()?;
        }
        Input::User => {
            directory::user_record(user(), json(bytes)?)?;
        }
        Input::Role => {
            directory::role_record("fuzz-role".into(), json(bytes)?)?;
        }
        Input::DevLogin => web::dev_login(&json(bytes)?)?,
        Input::InboxQuery => {
            inbox::page_of(&query(bytes)?)?;
        }
        Input::SseQuery => {
            realtime::sse_hello(query(bytes)?, EPOCH)?;
        }
        Input::AuditQuery => {
            let _: ops::AuditParams = query(bytes)?;
        }
    }
    Ok(())
}
