//! The audit port: every event about a notification or a user, in log order. The projector
//! implements it over the log and the projection; the gateway serves it to operators without
//! depending on the projector.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::log::LogError;
use crate::projection::ProjectionError;

/// One line of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the event happened (producer / device time), Unix ms.
    pub at_ms: i64,
    /// When the record was appended, Unix ms.
    pub logged_ms: i64,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub event: String,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSubject {
    Notification,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub subject: AuditSubject,
    pub id: String,
    pub entries: Vec<AuditEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

#[async_trait]
pub trait Auditor: Send + Sync + 'static {
    /// Audits `id`: a notification id if any request or expansion knows it, else a user id.
    async fn audit(&self, id: &str) -> Result<AuditReport, AuditError>;
}
