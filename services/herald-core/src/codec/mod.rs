//! Avro single-object encoding of every Herald record.
//!
//! A record is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer
//! schema's canonical form, then the Avro binary datum. Decoding looks the writer schema up by
//! fingerprint in a registry that holds the current schemas *and* every older version in
//! `schemas/avro/history/`, and resolves older writers to the current reader schema, so records
//! written before a field (with a default) was added still decode.
//!
//! Bad input never panics: too short, wrong marker, unknown fingerprint, a datum that does not
//! parse, or trailing bytes each give a typed [`CoreError`]. No string or array may claim more
//! than [`MAX_AVRO_ALLOCATION`], so a corrupt length prefix cannot ask for gigabytes.
//!
//! The schemas are parsed (with apache-avro) once, for their fingerprints; the data itself is
//! encoded and decoded by hand ([`binary`], [`records`]), field by field in schema order, with
//! no intermediate value tree: that was most of the time Herald spent per record. The
//! hand-written codec is checked byte for byte against apache-avro on the schema files.

mod binary;
mod records;

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use serde::Serialize;

use crate::CoreError;
use crate::model::*;
use binary::{Reader, Writer};

/// Largest single allocation the Avro decoder may make for one field (a corrupt length prefix
/// is refused rather than honoured).
pub const MAX_AVRO_ALLOCATION: usize = 8 * 1024 * 1024;
/// Length of the single-object header: marker (2) + fingerprint (8).
pub const HEADER_LEN: usize = 10;
const MARKER: [u8; 2] = [0xC3, 0x01];

/// The kinds of record Herald writes; each has one current schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    NotificationRequest,
    DirectoryChange,
    Added,
    Delivered,
    Acked,
    Read,
    Unread,
    Archived,
    Expired,
    RoleDefinition,
    Connected,
    Progress,
    Preferences,
    Unarchived,
    UsersAdded,
}

impl SchemaKind {
    pub const ALL: [SchemaKind; 15] = [
        SchemaKind::NotificationRequest,
        SchemaKind::DirectoryChange,
        SchemaKind::Added,
        SchemaKind::Delivered,
        SchemaKind::Acked,
        SchemaKind::Read,
        SchemaKind::Unread,
        SchemaKind::Archived,
        SchemaKind::Expired,
        SchemaKind::RoleDefinition,
        SchemaKind::Connected,
        SchemaKind::Progress,
        SchemaKind::Preferences,
        SchemaKind::Unarchived,
        SchemaKind::UsersAdded,
    ];

    /// The record's full Avro name, also carried in the `herald-schema` header.
    pub fn name(self) -> &'static str {
        match self {
            SchemaKind::NotificationRequest => "dev.herald.events.NotificationRequest",
            SchemaKind::DirectoryChange => "dev.herald.events.DirectoryChange",
            SchemaKind::Added => "dev.herald.events.NotificationAdded",
            SchemaKind::Delivered => "dev.herald.events.NotificationDelivered",
            SchemaKind::Acked => "dev.herald.events.NotificationAcked",
            SchemaKind::Read => "dev.herald.events.NotificationsRead",
            SchemaKind::Unread => "dev.herald.events.NotificationsUnread",
            SchemaKind::Archived => "dev.herald.events.NotificationsArchived",
            SchemaKind::Expired => "dev.herald.events.NotificationExpired",
            SchemaKind::RoleDefinition => "dev.herald.events.RoleDefinition",
            SchemaKind::Connected => "dev.herald.events.DeviceConnected",
            SchemaKind::Progress => "dev.herald.events.DeviceProgress",
            SchemaKind::Preferences => "dev.herald.events.PreferencesChanged",
            SchemaKind::Unarchived => "dev.herald.events.NotificationsUnarchived",
            SchemaKind::UsersAdded => "dev.herald.events.NotificationsAdded",
        }
    }

    fn current_text(self) -> &'static str {
        match self {
            SchemaKind::NotificationRequest => {
                include_str!("../../../../schemas/avro/notification_request.avsc")
            }
            SchemaKind::DirectoryChange => {
                include_str!("../../../../schemas/avro/directory_change.avsc")
            }
            SchemaKind::Added => include_str!("../../../../schemas/avro/notification_added.avsc"),
            SchemaKind::Delivered => {
                include_str!("../../../../schemas/avro/notification_delivered.avsc")
            }
            SchemaKind::Acked => include_str!("../../../../schemas/avro/notification_acked.avsc"),
            SchemaKind::Read => include_str!("../../../../schemas/avro/notifications_read.avsc"),
            SchemaKind::Unread => {
                include_str!("../../../../schemas/avro/notifications_unread.avsc")
            }
            SchemaKind::Archived => {
                include_str!("../../../../schemas/avro/notifications_archived.avsc")
            }
            SchemaKind::Expired => {
                include_str!("../../../../schemas/avro/notification_expired.avsc")
            }
            SchemaKind::RoleDefinition => {
                include_str!("../../../../schemas/avro/role_definition.avsc")
            }
            SchemaKind::Connected => include_str!("../../../../schemas/avro/device_connected.avsc"),
            SchemaKind::Progress => include_str!("../../../../schemas/avro/device_progress.avsc"),
            SchemaKind::Preferences => {
                include_str!("../../../../schemas/avro/preferences_changed.avsc")
            }
            SchemaKind::Unarchived => {
                include_str!("../../../../schemas/avro/notifications_unarchived.avsc")
            }
            SchemaKind::UsersAdded => {
                include_str!("../../../../schemas/avro/notifications_added.avsc")
            }
        }
    }
}

/// Older writer schemas that must still decode, by kind.
const HISTORY: &[(SchemaKind, &str)] = &[
    (
        SchemaKind::NotificationRequest,
        include_str!("../../../../schemas/avro/history/notification_request.v1.avsc"),
    ),
    (
        SchemaKind::Added,
        include_str!("../../../../schemas/avro/history/notification_added.v1.avsc"),
    ),
];

/// A writer schema the registry knows, by fingerprint.
struct WriterSchema {
    kind: SchemaKind,
    /// Not the current schema of its kind (an older version that still decodes).
    historical: bool,
}

/// All known schemas, by kind (current) and by fingerprint (current and historical).
pub struct Registry {
    current: HashMap<SchemaKind, (Schema, [u8; 8])>,
    by_fingerprint: HashMap<u64, WriterSchema>,
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

impl Registry {
    fn build() -> Registry {
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        let mut current = HashMap::new();
        let mut by_fingerprint = HashMap::new();
        for kind in SchemaKind::ALL {
            let schema = Schema::parse_str(kind.current_text())
                .unwrap_or_else(|e| panic!("built-in schema {} is invalid: {e}", kind.name()));
            let fp = fingerprint(&schema);
            by_fingerprint.insert(
                u64::from_le_bytes(fp),
                WriterSchema {
                    kind,
                    historical: false,
                },
            );
            current.insert(kind, (schema, fp));
        }
        for (kind, text) in HISTORY {
            let schema = Schema::parse_str(text)
                .unwrap_or_else(|e| panic!("historical schema of {} is invalid: {e}", kind.name()));
            by_fingerprint.insert(
                u64::from_le_bytes(fingerprint(&schema)),
                WriterSchema {
                    kind: *kind,
                    historical: true,
                },
            );
        }
        Registry {
            current,
            by_fingerprint,
        }
    }

    /// The process-wide registry of built-in schemas.
    pub fn global() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(Registry::build)
    }

    /// Current schema and fingerprint of a kind.
    pub fn current(&self, kind: SchemaKind) -> (&Schema, u64) {
        let (schema, fp) = &self.current[&kind];
        (schema, u64::from_le_bytes(*fp))
    }

    /// The header of a record of `kind` (marker and current fingerprint), with room for `datum`
    /// bytes after it.
    fn start(&self, kind: SchemaKind, datum: usize) -> Vec<u8> {
        let (_, fp) = &self.current[&kind];
        let mut buf = Vec::with_capacity(HEADER_LEN + datum);
        buf.extend_from_slice(&MARKER);
        buf.extend_from_slice(fp);
        buf
    }

    /// Encodes a test-only value with an explicit (e.g. historical) schema.
    pub fn encode_with_schema<T: Serialize>(
        schema: &Schema,
        value: &T,
    ) -> Result<Vec<u8>, CoreError> {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&MARKER);
        buf.extend_from_slice(&fingerprint(schema));
        apache_avro::write_avro_datum_ref(schema, value, &mut buf).map_err(|e| {
            CoreError::Encode {
                schema: "explicit",
                reason: e.to_string(),
            }
        })?;
        Ok(buf)
    }

    /// Reads the header of a record: its kind and fingerprint.
    pub fn peek(&self, bytes: &[u8]) -> Result<(SchemaKind, u64), CoreError> {
        let fp = header_fingerprint(bytes)?;
        let writer = self
            .by_fingerprint
            .get(&fp)
            .ok_or(CoreError::UnknownFingerprint(fp))?;
        Ok((writer.kind, fp))
    }

    /// Decodes any Herald record.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, CoreError> {
        let fp = header_fingerprint(bytes)?;
        let writer = self
            .by_fingerprint
            .get(&fp)
            .ok_or(CoreError::UnknownFingerprint(fp))?;
        let mut r = Reader::new(
            &bytes[HEADER_LEN..],
            writer.kind.name(),
            MAX_AVRO_ALLOCATION,
        );
        let event = match writer.kind {
            SchemaKind::NotificationRequest => Event::Request(RequestRecord::Notification(
                Box::new(records::read_request(&mut r, writer.historical)?),
            )),
            SchemaKind::DirectoryChange => {
                Event::Request(RequestRecord::Directory(records::read_directory(&mut r)?))
            }
            SchemaKind::RoleDefinition => {
                Event::Request(RequestRecord::Role(records::read_role(&mut r)?))
            }
            SchemaKind::Added => Event::User(UserEvent::Added(records::read_added(
                &mut r,
                writer.historical,
            )?)),
            SchemaKind::Delivered => {
                Event::User(UserEvent::Delivered(records::read_delivered(&mut r)?))
            }
            SchemaKind::Acked => Event::User(UserEvent::Acked(records::read_acked(&mut r)?)),
            SchemaKind::Read => Event::User(UserEvent::Read(records::read_mark(&mut r)?)),
            SchemaKind::Unread => Event::User(UserEvent::Unread(records::read_mark(&mut r)?)),
            SchemaKind::Archived => Event::User(UserEvent::Archived(records::read_mark(&mut r)?)),
            SchemaKind::Unarchived => {
                Event::User(UserEvent::Unarchived(records::read_mark(&mut r)?))
            }
            SchemaKind::Expired => Event::User(UserEvent::Expired(records::read_expired(&mut r)?)),
            SchemaKind::Connected => {
                Event::User(UserEvent::Connected(records::read_connected(&mut r)?))
            }
            SchemaKind::Progress => {
                Event::User(UserEvent::Progress(records::read_progress(&mut r)?))
            }
            SchemaKind::Preferences => {
                Event::User(UserEvent::Preferences(records::read_preferences(&mut r)?))
            }
            SchemaKind::UsersAdded => Event::UsersAdded(records::read_users_added(&mut r)?),
        };
        r.finish()?;
        Ok(event)
    }
}

fn header_fingerprint(bytes: &[u8]) -> Result<u64, CoreError> {
    if bytes.len() < HEADER_LEN {
        return Err(CoreError::Truncated { len: bytes.len() });
    }
    if bytes[..2] != MARKER {
        return Err(CoreError::NotSingleObject);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok(u64::from_le_bytes(fp))
}

/// Encodes a user event with its current schema.
pub fn encode_user_event(event: &UserEvent) -> Result<Vec<u8>, CoreError> {
    let kind = user_event_kind(event);
    let datum = match event {
        UserEvent::Added(a) => a.payload.len() + 128,
        _ => 96,
    };
    let mut buf = Registry::global().start(kind, datum);
    let w = &mut Writer { buf: &mut buf };
    match event {
        UserEvent::Added(e) => records::added(w, e),
        UserEvent::Delivered(e) => records::delivered(w, e),
        UserEvent::Acked(e) => records::acked(w, e),
        UserEvent::Read(e)
        | UserEvent::Unread(e)
        | UserEvent::Archived(e)
        | UserEvent::Unarchived(e) => records::mark(w, e),
        UserEvent::Expired(e) => records::expired(w, e),
        UserEvent::Connected(e) => records::connected(w, e),
        UserEvent::Progress(e) => records::progress(w, e),
        UserEvent::Preferences(e) => records::preferences(w, e),
    }
    Ok(buf)
}

/// Encodes a notification added for several users with its current schema.
pub fn encode_users_added(added: &NotificationsAdded) -> Result<Vec<u8>, CoreError> {
    let datum = added.payload.len() + 128 + added.recipients.len() * 40;
    let mut buf = Registry::global().start(SchemaKind::UsersAdded, datum);
    records::users_added(&mut Writer { buf: &mut buf }, added);
    Ok(buf)
}

/// Encodes a requests-topic record with its current schema.
pub fn encode_request(record: &RequestRecord) -> Result<Vec<u8>, CoreError> {
    let (kind, datum) = match record {
        RequestRecord::Notification(n) => (SchemaKind::NotificationRequest, n.payload.len() + 256),
        RequestRecord::Directory(_) => (SchemaKind::DirectoryChange, 96),
        RequestRecord::Role(_) => (SchemaKind::RoleDefinition, 96),
    };
    let mut buf = Registry::global().start(kind, datum);
    let w = &mut Writer { buf: &mut buf };
    match record {
        RequestRecord::Notification(n) => records::request(w, n),
        RequestRecord::Directory(d) => records::directory(w, d),
        RequestRecord::Role(r) => records::role(w, r),
    }
    Ok(buf)
}

/// Whether `bytes` is a `NotificationsAdded` (a notification for several users, keyed by the
/// notification, not by a user): read from its header, without decoding it.
pub fn is_users_added(bytes: &[u8]) -> bool {
    matches!(
        Registry::global().peek(bytes),
        Ok((SchemaKind::UsersAdded, _))
    )
}

/// Decodes any Herald record.
pub fn decode(bytes: &[u8]) -> Result<Event, CoreError> {
    Registry::global().decode(bytes)
}

/// The schema kind of a user event.
pub fn user_event_kind(event: &UserEvent) -> SchemaKind {
    match event {
        UserEvent::Added(_) => SchemaKind::Added,
        UserEvent::Delivered(_) => SchemaKind::Delivered,
        UserEvent::Acked(_) => SchemaKind::Acked,
        UserEvent::Read(_) => SchemaKind::Read,
        UserEvent::Unread(_) => SchemaKind::Unread,
        UserEvent::Archived(_) => SchemaKind::Archived,
        UserEvent::Unarchived(_) => SchemaKind::Unarchived,
        UserEvent::Expired(_) => SchemaKind::Expired,
        UserEvent::Connected(_) => SchemaKind::Connected,
        UserEvent::Progress(_) => SchemaKind::Progress,
        UserEvent::Preferences(_) => SchemaKind::Preferences,
    }
}
