//! Per-user preferences: which event types and topics reach a user live, in the inbox, or
//! muted, and the event that records a change of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::CoreError;

/// Most rules (event types and topics together) in one user's preferences.
pub const MAX_PREFERENCE_RULES: usize = 200;

/// How a notification reaches one recipient: decided by the recipient's preferences when the
/// projector expands the request, carried on `NotificationAdded`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Pushed to connected devices and counted as unread (the default, and every record
    /// written before preferences existed).
    #[default]
    Live,
    /// In the inbox and unread, but not pushed to devices.
    Inbox,
    /// Muted: not pushed, and stored already read (still findable in the inbox).
    Muted,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Live => "live",
            Delivery::Inbox => "inbox",
            Delivery::Muted => "muted",
        }
    }
}

/// One preference rule's channels: `live` (pushed to connected devices) and `inbox` (counted
/// as unread in the inbox). `inbox: false` mutes, whatever `live` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Channels {
    #[serde(default = "yes")]
    pub live: bool,
    #[serde(default = "yes")]
    pub inbox: bool,
}

fn yes() -> bool {
    true
}

impl Channels {
    /// The delivery this rule asks for.
    pub fn delivery(self) -> Delivery {
        if !self.inbox {
            Delivery::Muted
        } else if !self.live {
            Delivery::Inbox
        } else {
            Delivery::Live
        }
    }
}

/// A user's notification preferences: rules by event type and by topic. The JSON document of
/// `GET`/`PUT /v1/preferences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default)]
    pub event_types: BTreeMap<String, Channels>,
    #[serde(default)]
    pub topics: BTreeMap<String, Channels>,
}

impl Preferences {
    /// Names like everywhere else (event types as labels, topics as ids), and at most
    /// [`MAX_PREFERENCE_RULES`] rules in all.
    pub fn validate(&self) -> Result<(), CoreError> {
        let n = self.event_types.len() + self.topics.len();
        if n > MAX_PREFERENCE_RULES {
            return Err(CoreError::invalid(
                "preferences",
                format!(
                    "has {n} rules, at most {MAX_PREFERENCE_RULES} (event types and topics together) allowed"
                ),
            ));
        }
        for t in self.event_types.keys() {
            validate_label("event_types", t)?;
        }
        for t in self.topics.keys() {
            validate_id("topics", t)?;
        }
        Ok(())
    }

    /// The delivery of a notification of `event_type`, sent to `topic` if it was: the rules
    /// for its event type and its topic both apply, and the stricter wins (muted over
    /// inbox-only over live).
    pub fn delivery(&self, event_type: &str, topic: Option<&str>) -> Delivery {
        let by_type = self.event_types.get(event_type).map(|c| c.delivery());
        let by_topic = topic.and_then(|t| self.topics.get(t)).map(|c| c.delivery());
        by_type
            .into_iter()
            .chain(by_topic)
            .max()
            .unwrap_or(Delivery::Live)
    }

    pub fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.topics.is_empty()
    }
}

/// One rule as the log stores it (Avro has no maps of records here: a list, sorted by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceRule {
    pub name: String,
    pub live: bool,
    pub inbox: bool,
}

/// The user replaced their preferences with these. Topic: user-events, key: user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencesChanged {
    pub user_id: String,
    #[serde(default)]
    pub event_types: Vec<PreferenceRule>,
    #[serde(default)]
    pub topics: Vec<PreferenceRule>,
    pub at: i64,
}

fn rules(map: &BTreeMap<String, Channels>) -> Vec<PreferenceRule> {
    map.iter()
        .map(|(name, c)| PreferenceRule {
            name: name.clone(),
            live: c.live,
            inbox: c.inbox,
        })
        .collect()
}

fn rule_map(rules: &[PreferenceRule]) -> BTreeMap<String, Channels> {
    rules
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                Channels {
                    live: r.live,
                    inbox: r.inbox,
                },
            )
        })
        .collect()
}

impl PreferencesChanged {
    pub fn new(user_id: &str, preferences: &Preferences, at: i64) -> PreferencesChanged {
        PreferencesChanged {
            user_id: user_id.to_owned(),
            event_types: rules(&preferences.event_types),
            topics: rules(&preferences.topics),
            at,
        }
    }

    /// The document (a name given twice keeps its last rule).
    pub fn preferences(&self) -> Preferences {
        Preferences {
            event_types: rule_map(&self.event_types),
            topics: rule_map(&self.topics),
        }
    }
}
