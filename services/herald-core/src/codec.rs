//! Avro single-object encoding of every Herald record.
//!
//! A record is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer
//! schema's canonical form, then the Avro binary datum. Decoding looks the writer schema up by
//! fingerprint in a registry that holds the current schemas *and* every older version in
//! `schemas/avro/history/`, and resolves older writers to the current reader schema, so records
//! written before a field (with a default) was added still decode.
//!
//! Bad input never panics: too short, wrong marker, unknown fingerprint, a datum that does not
//! parse, or trailing bytes each give a typed [`CoreError`]. Avro's allocation cap is set to
//! [`MAX_AVRO_ALLOCATION`] so a corrupt length prefix cannot ask for gigabytes.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CoreError;
use crate::model::*;

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
}

impl SchemaKind {
    pub const ALL: [SchemaKind; 11] = [
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
        }
    }

    fn current_text(self) -> &'static str {
        match self {
            SchemaKind::NotificationRequest => {
                include_str!("../../../schemas/avro/notification_request.avsc")
            }
            SchemaKind::DirectoryChange => {
                include_str!("../../../schemas/avro/directory_change.avsc")
            }
            SchemaKind::Added => include_str!("../../../schemas/avro/notification_added.avsc"),
            SchemaKind::Delivered => {
                include_str!("../../../schemas/avro/notification_delivered.avsc")
            }
            SchemaKind::Acked => include_str!("../../../schemas/avro/notification_acked.avsc"),
            SchemaKind::Read => include_str!("../../../schemas/avro/notifications_read.avsc"),
            SchemaKind::Unread => include_str!("../../../schemas/avro/notifications_unread.avsc"),
            SchemaKind::Archived => {
                include_str!("../../../schemas/avro/notifications_archived.avsc")
            }
            SchemaKind::Expired => include_str!("../../../schemas/avro/notification_expired.avsc"),
            SchemaKind::RoleDefinition => {
                include_str!("../../../schemas/avro/role_definition.avsc")
            }
            SchemaKind::Connected => include_str!("../../../schemas/avro/device_connected.avsc"),
        }
    }
}

/// Older writer schemas that must still decode, by kind.
const HISTORY: &[(SchemaKind, &str)] = &[(
    SchemaKind::NotificationRequest,
    include_str!("../../../schemas/avro/history/notification_request.v1.avsc"),
)];

struct Writer {
    schema: Schema,
    kind: SchemaKind,
    current: bool,
}

/// All known schemas, by kind (current) and by fingerprint (current and historical).
pub struct Registry {
    current: HashMap<SchemaKind, (Schema, [u8; 8])>,
    by_fingerprint: HashMap<u64, Writer>,
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
                Writer {
                    schema: schema.clone(),
                    kind,
                    current: true,
                },
            );
            current.insert(kind, (schema, fp));
        }
        for (kind, text) in HISTORY {
            let schema = Schema::parse_str(text)
                .unwrap_or_else(|e| panic!("historical schema of {} is invalid: {e}", kind.name()));
            by_fingerprint.insert(
                u64::from_le_bytes(fingerprint(&schema)),
                Writer {
                    schema,
                    kind: *kind,
                    current: false,
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

    /// Encodes `value` with the current schema of `kind`.
    pub fn encode<T: Serialize>(&self, kind: SchemaKind, value: &T) -> Result<Vec<u8>, CoreError> {
        let (schema, fp) = &self.current[&kind];
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&MARKER);
        buf.extend_from_slice(fp);
        apache_avro::write_avro_datum_ref(schema, value, &mut buf).map_err(|e| {
            CoreError::Encode {
                schema: kind.name(),
                reason: e.to_string(),
            }
        })?;
        Ok(buf)
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

    fn decode_as<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(SchemaKind, T), CoreError> {
        let fp = header_fingerprint(bytes)?;
        let writer = self
            .by_fingerprint
            .get(&fp)
            .ok_or(CoreError::UnknownFingerprint(fp))?;
        let corrupt = |reason: String| CoreError::Corrupt {
            schema: writer.kind.name(),
            reason,
        };
        let mut rest = &bytes[HEADER_LEN..];
        let reader_schema = if writer.current {
            None
        } else {
            Some(&self.current[&writer.kind].0)
        };
        let value = apache_avro::from_avro_datum(&writer.schema, &mut rest, reader_schema)
            .map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", rest.len())));
        }
        let typed = apache_avro::from_value::<T>(&value).map_err(|e| corrupt(e.to_string()))?;
        Ok((writer.kind, typed))
    }

    /// Decodes any Herald record.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, CoreError> {
        let (kind, _) = self.peek(bytes)?;
        Ok(match kind {
            SchemaKind::NotificationRequest => {
                Event::Request(RequestRecord::Notification(self.decode_as(bytes)?.1))
            }
            SchemaKind::DirectoryChange => {
                Event::Request(RequestRecord::Directory(self.decode_as(bytes)?.1))
            }
            SchemaKind::Added => Event::User(UserEvent::Added(self.decode_as(bytes)?.1)),
            SchemaKind::Delivered => Event::User(UserEvent::Delivered(self.decode_as(bytes)?.1)),
            SchemaKind::Acked => Event::User(UserEvent::Acked(self.decode_as(bytes)?.1)),
            SchemaKind::Read => Event::User(UserEvent::Read(self.decode_as(bytes)?.1)),
            SchemaKind::Unread => Event::User(UserEvent::Unread(self.decode_as(bytes)?.1)),
            SchemaKind::Archived => Event::User(UserEvent::Archived(self.decode_as(bytes)?.1)),
            SchemaKind::Expired => Event::User(UserEvent::Expired(self.decode_as(bytes)?.1)),
            SchemaKind::RoleDefinition => {
                Event::Request(RequestRecord::Role(self.decode_as(bytes)?.1))
            }
            SchemaKind::Connected => Event::User(UserEvent::Connected(self.decode_as(bytes)?.1)),
        })
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
    let r = Registry::global();
    match event {
        UserEvent::Added(e) => r.encode(SchemaKind::Added, e),
        UserEvent::Delivered(e) => r.encode(SchemaKind::Delivered, e),
        UserEvent::Acked(e) => r.encode(SchemaKind::Acked, e),
        UserEvent::Read(e) => r.encode(SchemaKind::Read, e),
        UserEvent::Unread(e) => r.encode(SchemaKind::Unread, e),
        UserEvent::Archived(e) => r.encode(SchemaKind::Archived, e),
        UserEvent::Expired(e) => r.encode(SchemaKind::Expired, e),
        UserEvent::Connected(e) => r.encode(SchemaKind::Connected, e),
    }
}

/// Encodes a requests-topic record with its current schema.
pub fn encode_request(record: &RequestRecord) -> Result<Vec<u8>, CoreError> {
    let r = Registry::global();
    match record {
        RequestRecord::Notification(n) => r.encode(SchemaKind::NotificationRequest, n),
        RequestRecord::Directory(d) => r.encode(SchemaKind::DirectoryChange, d),
        RequestRecord::Role(role) => r.encode(SchemaKind::RoleDefinition, role),
    }
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
        UserEvent::Expired(_) => SchemaKind::Expired,
        UserEvent::Connected(_) => SchemaKind::Connected,
    }
}
