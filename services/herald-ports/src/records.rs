//! How Herald events become log records: key, partition, Avro value and headers.

use herald_core::codec::{self, Registry, SchemaKind};
use herald_core::model::{NotificationsAdded, RequestRecord, UserEvent};
use herald_core::partition::partition_for;

use crate::log::{HEADER_FINGERPRINT, HEADER_SCHEMA, HEADER_TRACEPARENT, Record};

fn headers(kind: SchemaKind, traceparent: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let (_, fp) = Registry::global().current(kind);
    let mut h = vec![
        (HEADER_SCHEMA.to_owned(), kind.name().as_bytes().to_vec()),
        (HEADER_FINGERPRINT.to_owned(), hex16(fp).to_vec()),
    ];
    if let Some(t) = traceparent {
        h.push((HEADER_TRACEPARENT.to_owned(), t.as_bytes().to_vec()));
    }
    h
}

/// `fp` as 16 lowercase hex digits (what `format!("{fp:016x}")` writes, without the
/// formatting machinery: this runs for every record).
fn hex16(fp: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((fp >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// A per-user event as a record: key = user id, partition = `partition_for(user id)`.
pub fn user_event_record(
    event: &UserEvent,
    partitions: u32,
    now_ms: i64,
) -> Result<Record, herald_core::CoreError> {
    let traceparent = match event {
        UserEvent::Added(a) => a.traceparent.as_deref(),
        _ => None,
    };
    Ok(Record {
        partition: partition_for(event.user_id(), partitions),
        key: event.user_id().to_owned(),
        value: codec::encode_user_event(event)?,
        headers: headers(codec::user_event_kind(event), traceparent),
        timestamp_ms: now_ms,
    })
}

/// A notification added for several users of user-events partition `partition` (each
/// recipient's `partition_for` is `partition`; the caller groups them): key = notification id.
pub fn users_added_record(
    added: &NotificationsAdded,
    partition: u32,
    now_ms: i64,
) -> Result<Record, herald_core::CoreError> {
    debug_assert!(added.recipients.len() >= 2);
    Ok(Record {
        partition,
        key: added.notification_id.clone(),
        value: codec::encode_users_added(added)?,
        headers: headers(SchemaKind::UsersAdded, added.traceparent.as_deref()),
        timestamp_ms: now_ms,
    })
}

/// A requests-topic record: notification requests keyed by notification id, directory changes
/// by user id.
pub fn request_record(
    record: &RequestRecord,
    partitions: u32,
    now_ms: i64,
) -> Result<Record, herald_core::CoreError> {
    let (key, kind, traceparent) = match record {
        RequestRecord::Notification(n) => (
            n.notification_id.as_str(),
            SchemaKind::NotificationRequest,
            n.traceparent.as_deref(),
        ),
        RequestRecord::Directory(d) => (d.user_id.as_str(), SchemaKind::DirectoryChange, None),
        RequestRecord::Role(r) => (r.role.as_str(), SchemaKind::RoleDefinition, None),
    };
    Ok(Record {
        partition: partition_for(key, partitions),
        key: key.to_owned(),
        value: codec::encode_request(record)?,
        headers: headers(kind, traceparent),
        timestamp_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use herald_core::ids::MAX_ID_LEN;
    use herald_core::model::{
        AddedRecipient, Delivery, MAX_ADDED_RECIPIENTS, MAX_LABEL_LEN, MAX_PAYLOAD_BYTES,
        NotificationAdded, NotificationsAdded, Priority,
    };

    use super::*;
    use crate::log::MAX_RECORD_BYTES;

    #[test]
    fn fingerprints_are_written_as_sixteen_hex_digits() {
        for fp in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef, 1 << 63] {
            assert_eq!(hex16(fp).as_slice(), format!("{fp:016x}").as_bytes());
        }
    }

    /// The largest `NotificationsAdded` the fanout can write (every field at its bound) fits
    /// in a log record with room to spare.
    #[test]
    fn the_largest_several_user_record_fits_a_log_record() {
        let label = "l".repeat(MAX_LABEL_LEN);
        let content = NotificationAdded {
            user_id: String::new(),
            notification_id: "n".repeat(MAX_ID_LEN),
            event_type: label.clone(),
            source: label.clone(),
            payload: "p".repeat(MAX_PAYLOAD_BYTES),
            priority: Priority::Urgent,
            collapse_key: Some(label.clone()),
            deliver_at: Some(i64::MAX),
            expires_at: Some(i64::MAX),
            created_at: i64::MAX,
            traceparent: Some(label),
            delivery: Delivery::Live,
        };
        let recipients = (0..MAX_ADDED_RECIPIENTS)
            .map(|i| AddedRecipient {
                user_id: format!("{i:0>width$}", width = MAX_ID_LEN),
                delivery: Delivery::Muted,
            })
            .collect();
        let record =
            users_added_record(&NotificationsAdded::of(&content, recipients), 0, 0).unwrap();
        let size = record.key.len()
            + record.value.len()
            + record
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        assert!(size < 256 * 1024, "{size} bytes");
        assert!(size < MAX_RECORD_BYTES);
    }
}
