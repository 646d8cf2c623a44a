//! A notification entering inboxes: for one user ([`NotificationAdded`]), or for several users
//! of one user-events partition in one record ([`NotificationsAdded`]).

use serde::{Deserialize, Serialize};

use super::*;

/// A notification entered a user's inbox; its log offset is the row's seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAdded {
    pub user_id: String,
    pub notification_id: String,
    pub event_type: String,
    pub source: String,
    pub payload: String,
    #[serde(default)]
    pub priority: Priority,
    pub collapse_key: Option<String>,
    pub deliver_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub traceparent: Option<String>,
    /// How it reaches the user (their preferences at expansion); `live` in older records.
    #[serde(default)]
    pub delivery: Delivery,
}

/// Most recipients in one [`NotificationsAdded`] record: with user ids of at most
/// [`crate::ids::MAX_ID_LEN`] bytes and a payload of at most [`MAX_PAYLOAD_BYTES`], a record
/// stays under 256 KiB, below the log's 1 MiB record bound and a Kafka broker's default.
pub const MAX_ADDED_RECIPIENTS: usize = 1024;

/// One recipient of a [`NotificationsAdded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedRecipient {
    pub user_id: String,
    pub delivery: Delivery,
}

/// One notification entering the inboxes of several users of one user-events partition, in one
/// record: how fanout writes a notification for a group, a topic or everyone, so the log holds
/// its content once per partition instead of once per user. It means exactly a
/// [`NotificationAdded`] per recipient, in the order listed, each at the record's offset (so
/// every recipient's row has that offset as its seq; each user's events stay in log order).
/// Readers expand it ([`Event::into_user_events`]); nothing downstream of decoding sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsAdded {
    pub notification_id: String,
    pub event_type: String,
    pub source: String,
    pub payload: String,
    #[serde(default)]
    pub priority: Priority,
    pub collapse_key: Option<String>,
    pub deliver_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub traceparent: Option<String>,
    pub recipients: Vec<AddedRecipient>,
}

impl NotificationsAdded {
    /// The content of `added` for these recipients.
    pub fn of(added: &NotificationAdded, recipients: Vec<AddedRecipient>) -> NotificationsAdded {
        NotificationsAdded {
            notification_id: added.notification_id.clone(),
            event_type: added.event_type.clone(),
            source: added.source.clone(),
            payload: added.payload.clone(),
            priority: added.priority,
            collapse_key: added.collapse_key.clone(),
            deliver_at: added.deliver_at,
            expires_at: added.expires_at,
            created_at: added.created_at,
            traceparent: added.traceparent.clone(),
            recipients,
        }
    }

    /// The `NotificationAdded` of one recipient.
    pub fn added(&self, recipient: &AddedRecipient) -> NotificationAdded {
        NotificationAdded {
            user_id: recipient.user_id.clone(),
            notification_id: self.notification_id.clone(),
            event_type: self.event_type.clone(),
            source: self.source.clone(),
            payload: self.payload.clone(),
            priority: self.priority,
            collapse_key: self.collapse_key.clone(),
            deliver_at: self.deliver_at,
            expires_at: self.expires_at,
            created_at: self.created_at,
            traceparent: self.traceparent.clone(),
            delivery: recipient.delivery,
        }
    }

    /// Whether `user_id` is among the recipients.
    pub fn names(&self, user_id: &str) -> bool {
        self.recipients.iter().any(|r| r.user_id == user_id)
    }

    /// A `NotificationAdded` per recipient, in order.
    pub fn expand(&self) -> Vec<NotificationAdded> {
        self.recipients.iter().map(|r| self.added(r)).collect()
    }
}
