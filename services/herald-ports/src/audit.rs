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
    /// Log records read to answer.
    #[serde(default)]
    pub scanned_records: u64,
    /// False when the scan stopped at its budget: the entries are what it found until then.
    #[serde(default = "yes")]
    pub complete: bool,
}

fn yes() -> bool {
    true
}

/// How much of the log one audit may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditBudget {
    pub max_records: u64,
}

impl AuditBudget {
    /// For the CLI, where the operator waits for the whole answer.
    pub const UNLIMITED: AuditBudget = AuditBudget {
        max_records: u64::MAX,
    };
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
    /// Audits `id`: a notification id if any request or expansion knows it, else a user id,
    /// reading at most `budget` log records.
    async fn audit(&self, id: &str, budget: AuditBudget) -> Result<AuditReport, AuditError>;
}
