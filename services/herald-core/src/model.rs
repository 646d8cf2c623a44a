//! Notification requests, recipients, per-user events and directory changes.
//!
//! Field names match the Avro schemas in `schemas/avro/` one to one; times are Unix epoch
//! milliseconds.

use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::ids::validate_id;

mod added;
mod preferences;
pub use added::*;
pub use preferences::*;

/// Largest accepted JSON payload of one notification, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most recipients (users + groups) named in one request.
pub const MAX_NAMED_RECIPIENTS: usize = 10_000;
/// Longest accepted event type, source or collapse key, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// Delivery priority of a notification.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            "urgent" => Ok(Priority::Urgent),
            other => Err(CoreError::invalid(
                "priority",
                format!("{other:?} is not one of low, normal, high, urgent"),
            )),
        }
    }
}

/// Who receives a notification. The union of all parts, each user once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Recipients {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub everyone: bool,
}

impl Recipients {
    /// The users, sorted and each once, when the request names users only: no directory
    /// lookup is needed to resolve it.
    pub fn only_users(&self) -> Option<Vec<String>> {
        if !self.groups.is_empty() || self.topic.is_some() || self.everyone {
            return None;
        }
        let users: std::collections::BTreeSet<&String> = self.users.iter().collect();
        Some(users.into_iter().cloned().collect())
    }

    pub fn validate(&self) -> Result<(), CoreError> {
        if self.users.is_empty() && self.groups.is_empty() && self.topic.is_none() && !self.everyone
        {
            return Err(CoreError::invalid(
                "recipients",
                "name at least one of users, groups, topic or everyone",
            ));
        }
        if self.users.len() + self.groups.len() > MAX_NAMED_RECIPIENTS {
            return Err(CoreError::invalid(
                "recipients",
                format!("at most {MAX_NAMED_RECIPIENTS} users and groups per request"),
            ));
        }
        for u in &self.users {
            validate_id("recipients.users", u)?;
        }
        for g in &self.groups {
            validate_id("recipients.groups", g)?;
        }
        if let Some(t) = &self.topic {
            validate_id("recipients.topic", t)?;
        }
        Ok(())
    }
}

/// A producer's request: one record on the requests topic, keyed by `notification_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRequest {
    pub notification_id: String,
    pub idempotency_key: String,
    pub producer: String,
    pub recipients: Recipients,
    pub event_type: String,
    pub source: String,
    /// JSON document as text.
    pub payload: String,
    pub collapse_key: Option<String>,
    pub deliver_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub traceparent: Option<String>,
    #[serde(default)]
    pub priority: Priority,
}

fn validate_label(field: &'static str, v: &str) -> Result<(), CoreError> {
    if v.is_empty() || v.len() > MAX_LABEL_LEN {
        return Err(CoreError::invalid(
            field,
            format!("must be 1..={MAX_LABEL_LEN} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(CoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl NotificationRequest {
    /// Checks every field a producer controls. The notification id must be the one derived from
    /// producer and idempotency key, so a forged id cannot collide with another producer's.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.validate_content()?;
        if !crate::ids::is_notification_id(
            &self.notification_id,
            &self.producer,
            &self.idempotency_key,
        ) {
            return Err(CoreError::invalid(
                "notification_id",
                "is not the id of producer and idempotency_key (docs/producers.md)",
            ));
        }
        Ok(())
    }

    /// Checks every field but the notification id: for a request whose id was just derived
    /// from its producer and key, where checking it again would hash twice.
    pub fn validate_content(&self) -> Result<(), CoreError> {
        self.validate_written()?;
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&self.payload) {
            return Err(CoreError::invalid("payload", format!("is not JSON: {e}")));
        }
        Ok(())
    }

    /// [`NotificationRequest::validate_content`] for a request whose payload serde_json has
    /// just parsed (the HTTP path): JSON by construction, so its syntax is not parsed a second
    /// time (its size is still checked).
    pub fn validate_written(&self) -> Result<(), CoreError> {
        validate_id("producer", &self.producer)?;
        validate_id("idempotency_key", &self.idempotency_key)?;
        self.recipients.validate()?;
        validate_label("event_type", &self.event_type)?;
        validate_label("source", &self.source)?;
        if let Some(k) = &self.collapse_key {
            validate_label("collapse_key", k)?;
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(CoreError::invalid(
                "payload",
                format!(
                    "is {} bytes, at most {MAX_PAYLOAD_BYTES} allowed",
                    self.payload.len()
                ),
            ));
        }
        crate::time::check_ms("created_at", self.created_at)?;
        if let Some(d) = self.deliver_at {
            crate::time::check_ms("deliver_at", d)?;
        }
        if let Some(e) = self.expires_at {
            crate::time::check_ms("expires_at", e)?;
        }
        if let (Some(d), Some(e)) = (self.deliver_at, self.expires_at)
            && e <= d
        {
            return Err(CoreError::invalid(
                "expires_at",
                "must be later than deliver_at",
            ));
        }
        Ok(())
    }

    /// The inbox event this request produces for one recipient.
    pub fn added_for(&self, user_id: &str) -> NotificationAdded {
        NotificationAdded {
            user_id: user_id.to_owned(),
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
            delivery: Delivery::Live,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationDelivered {
    pub user_id: String,
    pub device_id: String,
    pub notification_id: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAcked {
    pub user_id: String,
    pub device_id: String,
    #[serde(default)]
    pub notification_ids: Vec<String>,
    pub up_to: Option<i64>,
    pub at: i64,
}

/// A change of the user's own marks (read, unread, archived). Same shape for the three kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkChange {
    pub user_id: String,
    pub device_id: Option<String>,
    #[serde(default)]
    pub notification_ids: Vec<String>,
    pub up_to: Option<i64>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationExpired {
    pub user_id: String,
    pub notification_id: String,
    pub at: i64,
}

/// A user's device opened a session: the user exists from here on (for `everyone`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConnected {
    pub user_id: String,
    pub device_id: String,
    pub at: i64,
}

/// What one device's session did in one flush: first sends (by seq) and ACKs, coalesced into
/// one event (a delivery or an ACK still is an event in the log, just not one record each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    pub user_id: String,
    pub device_id: String,
    /// Seqs of the notifications sent to the device for the first time.
    #[serde(default)]
    pub delivered: Vec<i64>,
    /// Notifications the device acknowledged by id.
    #[serde(default)]
    pub acked_ids: Vec<String>,
    /// Everything up to this seq acknowledged (cumulatively).
    pub acked_up_to: Option<i64>,
    pub at: i64,
}

/// Every event on the per-user topic. All of a user's events live in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserEvent {
    Added(NotificationAdded),
    Delivered(NotificationDelivered),
    Acked(NotificationAcked),
    Read(MarkChange),
    Unread(MarkChange),
    Archived(MarkChange),
    /// Taken out of the archive (by id).
    Unarchived(MarkChange),
    Expired(NotificationExpired),
    Connected(DeviceConnected),
    Progress(DeviceProgress),
    Preferences(PreferencesChanged),
}

impl UserEvent {
    pub fn user_id(&self) -> &str {
        match self {
            UserEvent::Added(e) => &e.user_id,
            UserEvent::Delivered(e) => &e.user_id,
            UserEvent::Acked(e) => &e.user_id,
            UserEvent::Read(e)
            | UserEvent::Unread(e)
            | UserEvent::Archived(e)
            | UserEvent::Unarchived(e) => &e.user_id,
            UserEvent::Expired(e) => &e.user_id,
            UserEvent::Connected(e) => &e.user_id,
            UserEvent::Progress(e) => &e.user_id,
            UserEvent::Preferences(e) => &e.user_id,
        }
    }

    /// Short, stable name of the event kind (used in headers, metrics and audit output).
    pub fn kind(&self) -> &'static str {
        match self {
            UserEvent::Added(_) => "added",
            UserEvent::Delivered(_) => "delivered",
            UserEvent::Acked(_) => "acked",
            UserEvent::Read(_) => "read",
            UserEvent::Unread(_) => "unread",
            UserEvent::Archived(_) => "archived",
            UserEvent::Unarchived(_) => "unarchived",
            UserEvent::Expired(_) => "expired",
            UserEvent::Connected(_) => "connected",
            UserEvent::Progress(_) => "device_progress",
            UserEvent::Preferences(_) => "preferences",
        }
    }

    /// The device that caused the event, if any.
    pub fn device_id(&self) -> Option<&str> {
        match self {
            UserEvent::Delivered(e) => Some(&e.device_id),
            UserEvent::Acked(e) => Some(&e.device_id),
            UserEvent::Read(e)
            | UserEvent::Unread(e)
            | UserEvent::Archived(e)
            | UserEvent::Unarchived(e) => e.device_id.as_deref(),
            UserEvent::Connected(e) => Some(&e.device_id),
            UserEvent::Progress(e) => Some(&e.device_id),
            UserEvent::Added(_) | UserEvent::Expired(_) | UserEvent::Preferences(_) => None,
        }
    }

    /// Whether the event concerns notification `id` (named, or covered by `up_to`).
    pub fn mentions(&self, id: &str, seq_of_id: Option<u64>) -> bool {
        let covered = |up_to: Option<i64>| match (up_to, seq_of_id) {
            (Some(u), Some(s)) => u >= 0 && s <= u as u64,
            _ => false,
        };
        match self {
            UserEvent::Added(e) => e.notification_id == id,
            UserEvent::Delivered(e) => e.notification_id == id,
            UserEvent::Expired(e) => e.notification_id == id,
            UserEvent::Connected(_) | UserEvent::Preferences(_) => false,
            UserEvent::Progress(e) => {
                e.acked_ids.iter().any(|n| n == id)
                    || covered(e.acked_up_to)
                    || seq_of_id.is_some_and(|s| e.delivered.contains(&(s as i64)))
            }
            UserEvent::Acked(e) => e.notification_ids.iter().any(|n| n == id) || covered(e.up_to),
            UserEvent::Read(e)
            | UserEvent::Unread(e)
            | UserEvent::Archived(e)
            | UserEvent::Unarchived(e) => {
                e.notification_ids.iter().any(|n| n == id) || covered(e.up_to)
            }
        }
    }

    /// Event time (for Added: the request's creation time).
    pub fn at(&self) -> i64 {
        match self {
            UserEvent::Added(e) => e.created_at,
            UserEvent::Delivered(e) => e.at,
            UserEvent::Acked(e) => e.at,
            UserEvent::Read(e)
            | UserEvent::Unread(e)
            | UserEvent::Archived(e)
            | UserEvent::Unarchived(e) => e.at,
            UserEvent::Expired(e) => e.at,
            UserEvent::Connected(e) => e.at,
            UserEvent::Progress(e) => e.at,
            UserEvent::Preferences(e) => e.at,
        }
    }
}

/// Directory operations: who exists, who is in which group, who follows which topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectoryOp {
    UpsertUser,
    JoinGroup,
    LeaveGroup,
    SubscribeTopic,
    UnsubscribeTopic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryChange {
    pub op: DirectoryOp,
    pub user_id: String,
    pub target: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub at: i64,
}

impl DirectoryChange {
    pub fn validate(&self) -> Result<(), CoreError> {
        validate_id("user_id", &self.user_id)?;
        match (self.op, &self.target) {
            (DirectoryOp::UpsertUser, None) => Ok(()),
            (DirectoryOp::UpsertUser, Some(_)) => Err(CoreError::invalid(
                "target",
                "must be empty for upsert_user",
            )),
            (_, Some(t)) => validate_id("target", t),
            (_, None) => Err(CoreError::invalid(
                "target",
                "names the group or topic and is required",
            )),
        }
    }
}

/// Which topics users with `role` may receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDefinition {
    pub role: String,
    #[serde(default)]
    pub topics: Vec<String>,
    pub at: i64,
}

impl RoleDefinition {
    pub fn validate(&self) -> Result<(), CoreError> {
        validate_id("role", &self.role)?;
        for t in &self.topics {
            if t != "*" {
                validate_id("topics", t)?;
            }
        }
        Ok(())
    }

    /// Whether users of a role with these topics may receive `topic`.
    pub fn allows(topics: &[String], topic: &str) -> bool {
        topics.iter().any(|t| t == "*" || t == topic)
    }
}

/// Every record on the requests topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestRecord {
    Notification(Box<NotificationRequest>),
    Directory(DirectoryChange),
    Role(RoleDefinition),
}

/// Any decoded Herald record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Request(RequestRecord),
    User(UserEvent),
    /// A user-events record that is a `NotificationAdded` for each of several users.
    UsersAdded(NotificationsAdded),
}

impl Event {
    /// The per-user events of a user-events record, in order: its one event, or an `Added`
    /// per recipient of a [`NotificationsAdded`] (all at the record's offset). `None` for a
    /// requests-topic record.
    pub fn into_user_events(self) -> Option<Vec<UserEvent>> {
        match self {
            Event::User(e) => Some(vec![e]),
            Event::UsersAdded(many) => {
                Some(many.expand().into_iter().map(UserEvent::Added).collect())
            }
            Event::Request(_) => None,
        }
    }

    /// The events of user `user_id` in a user-events record (see [`Event::into_user_events`]).
    pub fn into_events_of(self, user_id: &str) -> Vec<UserEvent> {
        match self {
            Event::User(e) if e.user_id() == user_id => vec![e],
            Event::UsersAdded(many) => many
                .recipients
                .iter()
                .filter(|r| r.user_id == user_id)
                .map(|r| UserEvent::Added(many.added(r)))
                .collect(),
            Event::User(_) | Event::Request(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_request_whose_id_is_not_derived_from_its_key_is_refused() {
        let mut request = NotificationRequest {
            notification_id: crate::ids::notification_id("billing", "k1"),
            idempotency_key: "k1".into(),
            producer: "billing".into(),
            recipients: Recipients {
                users: vec!["alice".into()],
                ..Recipients::default()
            },
            event_type: "invoice.paid".into(),
            source: "billing".into(),
            payload: "{}".into(),
            collapse_key: None,
            deliver_at: None,
            expires_at: None,
            created_at: 1_700_000_000_000,
            traceparent: None,
            priority: Priority::Normal,
        };
        assert!(request.validate().is_ok());
        // Another producer's id for the same key: a forgery `validate` must catch, and the only
        // thing `validate_content` leaves out.
        request.notification_id = crate::ids::notification_id("shipping", "k1");
        let err = request.validate().unwrap_err();
        assert!(err.to_string().contains("notification_id"), "{err}");
        assert!(request.validate_content().is_ok());
        // A payload that is not JSON (a record written to the log by other means than the
        // HTTP API): `validate_content` refuses it; `validate_written`, for payloads serde_json
        // has just parsed, checks only its size.
        request.payload = "{not json".into();
        let err = request.validate_content().unwrap_err();
        assert!(err.to_string().contains("payload"), "{err}");
        assert!(request.validate_written().is_ok());
        request.payload = "0".repeat(MAX_PAYLOAD_BYTES + 1);
        assert!(request.validate_written().is_err());
        request.payload = "{}".into();
        request.event_type = String::new();
        assert!(request.validate_content().is_err());
        assert!(request.validate_written().is_err());
    }

    #[test]
    fn a_rule_for_the_type_or_the_topic_applies_and_mute_wins() {
        let c = |live, inbox| Channels { live, inbox };
        let prefs = Preferences {
            event_types: [
                ("chat".to_string(), c(false, true)),
                ("spam".to_string(), c(true, false)),
            ]
            .into(),
            topics: [
                ("news".to_string(), c(true, false)),
                ("ops".to_string(), c(false, true)),
            ]
            .into(),
        };
        assert_eq!(prefs.delivery("other", None), Delivery::Live);
        assert_eq!(prefs.delivery("other", Some("elsewhere")), Delivery::Live);
        assert_eq!(prefs.delivery("chat", None), Delivery::Inbox);
        assert_eq!(prefs.delivery("spam", None), Delivery::Muted);
        assert_eq!(prefs.delivery("other", Some("ops")), Delivery::Inbox);
        assert_eq!(
            prefs.delivery("chat", Some("news")),
            Delivery::Muted,
            "mute wins"
        );
        assert_eq!(
            prefs.delivery("spam", Some("ops")),
            Delivery::Muted,
            "mute wins"
        );
        assert_eq!(
            prefs.delivery("news", None),
            Delivery::Live,
            "a topic rule does not match an event type of the same name"
        );
        let round = PreferencesChanged::new("u", &prefs, 1).preferences();
        assert_eq!(round, prefs);
    }

    #[test]
    fn preferences_are_bounded_and_named_like_everything_else() {
        let on = Channels {
            live: true,
            inbox: true,
        };
        let many = Preferences {
            event_types: (0..=MAX_PREFERENCE_RULES)
                .map(|i| (format!("t{i}"), on))
                .collect(),
            topics: BTreeMap::new(),
        };
        let e = many.validate().unwrap_err().to_string();
        assert!(e.contains("at most 200"), "{e}");
        let bad_topic = Preferences {
            topics: [("has space".to_string(), on)].into(),
            ..Preferences::default()
        };
        assert!(bad_topic.validate().is_err());
        let bad_type = Preferences {
            event_types: [(String::new(), on)].into(),
            ..Preferences::default()
        };
        assert!(bad_type.validate().is_err());
        let doc: Preferences =
            serde_json::from_str(r#"{"event_types": {"chat": {"live": false}}}"#).unwrap();
        assert_eq!(
            doc.event_types["chat"],
            Channels {
                live: false,
                inbox: true
            }
        );
        assert!(serde_json::from_str::<Preferences>(r#"{"mute": {}}"#).is_err());
    }

    #[test]
    fn only_users_resolves_without_the_directory_and_nothing_else_does() {
        let users = |u: &[&str]| Recipients {
            users: u.iter().map(|s| s.to_string()).collect(),
            ..Recipients::default()
        };
        assert_eq!(
            users(&["b", "a", "b"]).only_users(),
            Some(vec!["a".to_string(), "b".to_string()]),
            "sorted, each once, as ProjectionStore::resolve answers"
        );
        for needs_directory in [
            Recipients {
                groups: vec!["g".into()],
                ..users(&["a"])
            },
            Recipients {
                topic: Some("t".into()),
                ..users(&["a"])
            },
            Recipients {
                everyone: true,
                ..users(&[])
            },
        ] {
            assert_eq!(needs_directory.only_users(), None);
        }
    }
}
