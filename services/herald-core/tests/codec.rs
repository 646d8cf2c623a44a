//! Avro single-object encoding: round trips, schema evolution, and bad input.

use apache_avro::Schema;
use herald_core::CoreError;
use herald_core::codec::{self, Registry, SchemaKind};
use herald_core::model::*;
use proptest::prelude::*;
use serde::Serialize;

fn request() -> NotificationRequest {
    NotificationRequest {
        notification_id: herald_core::ids::notification_id("billing", "invoice-7"),
        idempotency_key: "invoice-7".into(),
        producer: "billing".into(),
        recipients: Recipients {
            users: vec!["alice".into(), "bob".into()],
            groups: vec!["finance".into()],
            topic: Some("invoices".into()),
            everyone: false,
        },
        event_type: "invoice.created".into(),
        source: "billing-service".into(),
        payload: r#"{"amount":42}"#.into(),
        collapse_key: Some("invoice-7".into()),
        deliver_at: Some(1_700_000_000_000),
        expires_at: None,
        created_at: 1_699_999_999_000,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        priority: Priority::High,
    }
}

fn every_user_event() -> Vec<UserEvent> {
    let mark = MarkChange {
        user_id: "alice".into(),
        device_id: Some("phone".into()),
        notification_ids: vec!["n1".into(), "n2".into()],
        up_to: Some(17),
        at: 5,
    };
    vec![
        UserEvent::Added(request().added_for("alice")),
        UserEvent::Delivered(NotificationDelivered {
            user_id: "alice".into(),
            device_id: "phone".into(),
            notification_id: "n1".into(),
            at: 3,
        }),
        UserEvent::Acked(NotificationAcked {
            user_id: "alice".into(),
            device_id: "phone".into(),
            notification_ids: vec!["n1".into()],
            up_to: None,
            at: 4,
        }),
        UserEvent::Read(mark.clone()),
        UserEvent::Unread(MarkChange {
            device_id: None,
            ..mark.clone()
        }),
        UserEvent::Archived(mark.clone()),
        UserEvent::Unarchived(mark),
        UserEvent::Expired(NotificationExpired {
            user_id: "alice".into(),
            notification_id: "n1".into(),
            at: 9,
        }),
        UserEvent::Added(NotificationAdded {
            delivery: Delivery::Muted,
            ..request().added_for("bob")
        }),
        UserEvent::Preferences(PreferencesChanged {
            user_id: "alice".into(),
            event_types: vec![PreferenceRule {
                name: "approval.requested".into(),
                live: false,
                inbox: true,
            }],
            topics: vec![PreferenceRule {
                name: "incidents".into(),
                live: true,
                inbox: false,
            }],
            at: 11,
        }),
    ]
}

#[test]
fn every_record_kind_round_trips() {
    for e in every_user_event() {
        let bytes = codec::encode_user_event(&e).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(codec::decode(&bytes).unwrap(), Event::User(e));
    }
    for r in [
        RequestRecord::Notification(Box::new(request())),
        RequestRecord::Directory(DirectoryChange {
            op: DirectoryOp::JoinGroup,
            user_id: "alice".into(),
            target: Some("finance".into()),
            roles: vec!["admin".into()],
            at: 1,
        }),
        RequestRecord::Role(RoleDefinition {
            role: "ops".into(),
            topics: vec!["incidents".into(), "*".into()],
            at: 2,
        }),
    ] {
        let bytes = codec::encode_request(&r).unwrap();
        assert_eq!(codec::decode(&bytes).unwrap(), Event::Request(r));
    }
    let many = users_added();
    let bytes = codec::encode_users_added(&many).unwrap();
    assert_eq!(codec::decode(&bytes).unwrap(), Event::UsersAdded(many));
}

fn users_added() -> NotificationsAdded {
    let recipients = ["alice", "bob", "carol"]
        .into_iter()
        .zip([Delivery::Live, Delivery::Muted, Delivery::Inbox])
        .map(|(user, delivery)| AddedRecipient {
            user_id: user.into(),
            delivery,
        })
        .collect();
    NotificationsAdded::of(&request().added_for(""), recipients)
}

/// A notification added for several users means exactly a `NotificationAdded` per recipient,
/// in order, each with its own delivery; for one user, only that user's.
#[test]
fn a_notification_added_for_several_users_expands_to_each_users_added() {
    let many = users_added();
    let expected: Vec<UserEvent> = many
        .recipients
        .iter()
        .map(|r| {
            UserEvent::Added(NotificationAdded {
                delivery: r.delivery,
                ..request().added_for(&r.user_id)
            })
        })
        .collect();
    let event = codec::decode(&codec::encode_users_added(&many).unwrap()).unwrap();
    assert_eq!(event.clone().into_user_events().unwrap(), expected);
    assert_eq!(
        event.clone().into_events_of("bob"),
        vec![expected[1].clone()]
    );
    assert!(event.into_events_of("dave").is_empty());
    let single = Event::User(expected[0].clone());
    assert_eq!(
        single.clone().into_events_of("alice"),
        vec![expected[0].clone()]
    );
    assert!(single.into_events_of("bob").is_empty());
}

/// CRC-64-AVRO (Rabin) as written in the Avro specification, independent of apache-avro.
fn spec_fingerprint(canonical: &str) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
        }
        *slot = fp;
    }
    let mut fp = EMPTY;
    for b in canonical.bytes() {
        fp = (fp >> 8) ^ table[((fp ^ b as u64) & 0xff) as usize];
    }
    fp
}

#[test]
fn header_carries_the_spec_fingerprint_little_endian() {
    let registry = Registry::global();
    for kind in SchemaKind::ALL {
        let (schema, fp) = registry.current(kind);
        assert_eq!(fp, spec_fingerprint(&schema.canonical_form()), "{kind:?}");
    }
    let bytes = codec::encode_request(&RequestRecord::Notification(Box::new(request()))).unwrap();
    let (_, fp) = registry.current(SchemaKind::NotificationRequest);
    assert_eq!(&bytes[2..10], &fp.to_le_bytes());
}

/// The request as version 1 of the schema knew it: no priority field.
#[derive(Serialize)]
struct RequestV1 {
    notification_id: String,
    idempotency_key: String,
    producer: String,
    recipients: Recipients,
    event_type: String,
    source: String,
    payload: String,
    collapse_key: Option<String>,
    deliver_at: Option<i64>,
    expires_at: Option<i64>,
    created_at: i64,
    traceparent: Option<String>,
}

#[test]
fn a_v1_request_decodes_under_v2_with_the_default_priority() {
    let v1 = Schema::parse_str(include_str!(
        "../../../schemas/avro/history/notification_request.v1.avsc"
    ))
    .unwrap();
    let r = request();
    let old = RequestV1 {
        notification_id: r.notification_id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        producer: r.producer.clone(),
        recipients: r.recipients.clone(),
        event_type: r.event_type.clone(),
        source: r.source.clone(),
        payload: r.payload.clone(),
        collapse_key: r.collapse_key.clone(),
        deliver_at: r.deliver_at,
        expires_at: r.expires_at,
        created_at: r.created_at,
        traceparent: r.traceparent.clone(),
    };
    let bytes = Registry::encode_with_schema(&v1, &old).unwrap();
    let (_, v2_fp) = Registry::global().current(SchemaKind::NotificationRequest);
    assert_ne!(&bytes[2..10], &v2_fp.to_le_bytes(), "v1 and v2 differ");
    let decoded = codec::decode(&bytes).unwrap();
    let expected = NotificationRequest {
        priority: Priority::Normal,
        ..r
    };
    assert_eq!(
        decoded,
        Event::Request(RequestRecord::Notification(Box::new(expected)))
    );
}

#[test]
fn a_v1_added_event_decodes_under_v2_as_live() {
    let v1 = Schema::parse_str(include_str!(
        "../../../schemas/avro/history/notification_added.v1.avsc"
    ))
    .unwrap();
    #[derive(Serialize)]
    struct V1Added {
        user_id: String,
        notification_id: String,
        event_type: String,
        source: String,
        payload: String,
        priority: Priority,
        collapse_key: Option<String>,
        deliver_at: Option<i64>,
        expires_at: Option<i64>,
        created_at: i64,
        traceparent: Option<String>,
    }
    let old = V1Added {
        user_id: "alice".into(),
        notification_id: "n1".into(),
        event_type: "t".into(),
        source: "s".into(),
        payload: "{}".into(),
        priority: Priority::Urgent,
        collapse_key: None,
        deliver_at: None,
        expires_at: Some(5),
        created_at: 1,
        traceparent: None,
    };
    let bytes = Registry::encode_with_schema(&v1, &old).unwrap();
    let (_, v2_fp) = Registry::global().current(SchemaKind::Added);
    assert_ne!(&bytes[2..10], &v2_fp.to_le_bytes(), "v1 and v2 differ");
    let Event::User(UserEvent::Added(a)) = codec::decode(&bytes).unwrap() else {
        panic!("an added event");
    };
    assert_eq!(
        a.delivery,
        Delivery::Live,
        "records before preferences are live"
    );
    assert_eq!(a.priority, Priority::Urgent);
    assert_eq!(a.expires_at, Some(5));
}

#[test]
fn unknown_fingerprint_is_a_typed_error() {
    let mut bytes = codec::encode_user_event(&every_user_event()[1]).unwrap();
    bytes[2] ^= 0xff;
    assert!(matches!(
        codec::decode(&bytes),
        Err(CoreError::UnknownFingerprint(_))
    ));
}

#[test]
fn truncated_wrong_marker_and_trailing_bytes_are_typed_errors() {
    assert_eq!(codec::decode(&[0xC3]), Err(CoreError::Truncated { len: 1 }));
    let good = codec::encode_user_event(&every_user_event()[2]).unwrap();
    let mut wrong = good.clone();
    wrong[0] = 0x00;
    assert_eq!(codec::decode(&wrong), Err(CoreError::NotSingleObject));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        codec::decode(&trailing),
        Err(CoreError::Corrupt { .. })
    ));
    let cut = &good[..good.len() - 1];
    assert!(matches!(codec::decode(cut), Err(CoreError::Corrupt { .. })));
}

#[test]
fn a_huge_length_prefix_is_refused_not_allocated() {
    let (_, fp) = Registry::global().current(SchemaKind::Expired);
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fp.to_le_bytes());
    // user_id: string with zig-zag length 2^40.
    bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    assert!(matches!(
        codec::decode(&bytes),
        Err(CoreError::Corrupt { .. })
    ));
}

proptest! {
    /// Any bytes after a valid header decode or fail with a typed error, never panic.
    #[test]
    fn random_bodies_never_panic(kind_ix in 0usize..SchemaKind::ALL.len(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_, fp) = Registry::global().current(SchemaKind::ALL[kind_ix]);
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&fp.to_le_bytes());
        bytes.extend_from_slice(&body);
        let _ = codec::decode(&bytes);
    }

    /// Flipping bytes of a valid record never panics.
    #[test]
    fn corrupted_records_never_panic(ix in 0usize..9, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = codec::encode_user_event(&every_user_event()[ix]).unwrap();
        let p = pos.index(bytes.len());
        bytes[p] = byte;
        let _ = codec::decode(&bytes);
    }
}

/// apache-avro encoding of `value` with the schema file's current schema (the reference).
fn reference<T: Serialize>(kind: SchemaKind, value: &T) -> Vec<u8> {
    let (schema, _) = Registry::global().current(kind);
    Registry::encode_with_schema(schema, value).unwrap()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._:@-]{0,12}", any::<String>(), "\\PC{0,300}",]
}

fn ids() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..5)
}

fn opt_long() -> impl Strategy<Value = Option<i64>> {
    proptest::option::of(any::<i64>())
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Low),
        Just(Priority::Normal),
        Just(Priority::High),
        Just(Priority::Urgent)
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        Just(Delivery::Live),
        Just(Delivery::Inbox),
        Just(Delivery::Muted)
    ]
}

fn rules() -> impl Strategy<Value = Vec<PreferenceRule>> {
    proptest::collection::vec(
        (text(), any::<bool>(), any::<bool>()).prop_map(|(name, live, inbox)| PreferenceRule {
            name,
            live,
            inbox,
        }),
        0..5,
    )
}

fn added_event() -> impl Strategy<Value = NotificationAdded> {
    (
        (
            text(),
            text(),
            text(),
            text(),
            text(),
            priority(),
            delivery(),
        ),
        (
            proptest::option::of(text()),
            opt_long(),
            opt_long(),
            any::<i64>(),
        ),
        proptest::option::of(text()),
    )
        .prop_map(
            |(
                (user_id, notification_id, event_type, source, payload, priority, delivery),
                (ck, d, e, c),
                tp,
            )| {
                NotificationAdded {
                    user_id,
                    notification_id,
                    event_type,
                    source,
                    payload,
                    priority,
                    collapse_key: ck,
                    deliver_at: d,
                    expires_at: e,
                    created_at: c,
                    traceparent: tp,
                    delivery,
                }
            },
        )
}

fn request_record() -> impl Strategy<Value = NotificationRequest> {
    (
        added_event(),
        (
            text(),
            text(),
            ids(),
            ids(),
            proptest::option::of(text()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(a, (key, producer, users, groups, topic, everyone))| NotificationRequest {
                notification_id: a.notification_id,
                idempotency_key: key,
                producer,
                recipients: Recipients {
                    users,
                    groups,
                    topic,
                    everyone,
                },
                event_type: a.event_type,
                source: a.source,
                payload: a.payload,
                collapse_key: a.collapse_key,
                deliver_at: a.deliver_at,
                expires_at: a.expires_at,
                created_at: a.created_at,
                traceparent: a.traceparent,
                priority: a.priority,
            },
        )
}

fn mark() -> impl Strategy<Value = MarkChange> {
    (
        text(),
        proptest::option::of(text()),
        ids(),
        opt_long(),
        any::<i64>(),
    )
        .prop_map(
            |(user_id, device_id, notification_ids, up_to, at)| MarkChange {
                user_id,
                device_id,
                notification_ids,
                up_to,
                at,
            },
        )
}

fn op() -> impl Strategy<Value = DirectoryOp> {
    prop_oneof![
        Just(DirectoryOp::UpsertUser),
        Just(DirectoryOp::JoinGroup),
        Just(DirectoryOp::LeaveGroup),
        Just(DirectoryOp::SubscribeTopic),
        Just(DirectoryOp::UnsubscribeTopic)
    ]
}

/// Checks the hand-written codec against apache-avro on the schema file: the same bytes, and
/// each decodes the other's.
fn same_as_reference<T: Serialize>(kind: SchemaKind, value: &T, ours: Vec<u8>, event: Event) {
    let theirs = reference(kind, value);
    assert_eq!(
        ours, theirs,
        "{kind:?}: the bytes differ from apache-avro's"
    );
    assert_eq!(codec::decode(&theirs).unwrap(), event);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn user_events_encode_byte_for_byte_as_the_schema_files_say(
        a in added_event(),
        m in mark(),
        (user, device, id, at) in (text(), text(), text(), any::<i64>()),
        (ack_ids, up_to) in (ids(), opt_long()),
        seqs in proptest::collection::vec(any::<i64>(), 0..6),
        (event_types, topics) in (rules(), rules()),
    ) {
        let ids_again = ack_ids.clone();
        let events = [
            (SchemaKind::Added, UserEvent::Added(a.clone())),
            (SchemaKind::Read, UserEvent::Read(m.clone())),
            (SchemaKind::Unread, UserEvent::Unread(m.clone())),
            (SchemaKind::Archived, UserEvent::Archived(m.clone())),
            (SchemaKind::Unarchived, UserEvent::Unarchived(m.clone())),
            (SchemaKind::Delivered, UserEvent::Delivered(NotificationDelivered {
                user_id: user.clone(), device_id: device.clone(), notification_id: id.clone(), at,
            })),
            (SchemaKind::Acked, UserEvent::Acked(NotificationAcked {
                user_id: user.clone(), device_id: device.clone(), notification_ids: ack_ids.clone(), up_to, at,
            })),
            (SchemaKind::Expired, UserEvent::Expired(NotificationExpired {
                user_id: user.clone(), notification_id: id.clone(), at,
            })),
            (SchemaKind::Connected, UserEvent::Connected(DeviceConnected {
                user_id: user.clone(), device_id: device.clone(), at,
            })),
            (SchemaKind::Progress, UserEvent::Progress(DeviceProgress {
                user_id: user.clone(), device_id: device.clone(), delivered: seqs,
                acked_ids: ids_again, acked_up_to: up_to, at,
            })),
            (SchemaKind::Preferences, UserEvent::Preferences(PreferencesChanged {
                user_id: user.clone(), event_types, topics, at,
            })),
        ];
        for (kind, ev) in events {
            let ours = codec::encode_user_event(&ev).unwrap();
            let value: &dyn erased::Value = match &ev {
                UserEvent::Added(x) => x,
                UserEvent::Read(x) | UserEvent::Unread(x) | UserEvent::Archived(x) | UserEvent::Unarchived(x) => x,
                UserEvent::Delivered(x) => x,
                UserEvent::Acked(x) => x,
                UserEvent::Expired(x) => x,
                UserEvent::Connected(x) => x,
                UserEvent::Progress(x) => x,
                UserEvent::Preferences(x) => x,
            };
            value.check(kind, ours, Event::User(ev.clone()));
        }
    }

    #[test]
    fn notifications_added_encode_byte_for_byte_as_the_schema_file_says(
        a in added_event(),
        recipients in proptest::collection::vec((text(), delivery()), 0..5),
    ) {
        let recipients = recipients
            .into_iter()
            .map(|(user_id, delivery)| AddedRecipient { user_id, delivery })
            .collect();
        let many = NotificationsAdded::of(&a, recipients);
        let ours = codec::encode_users_added(&many).unwrap();
        same_as_reference(SchemaKind::UsersAdded, &many, ours, Event::UsersAdded(many.clone()));
    }

    #[test]
    fn requests_encode_byte_for_byte_as_the_schema_files_say(
        n in request_record(),
        (op, user, target, roles, at) in (op(), text(), proptest::option::of(text()), ids(), any::<i64>()),
        (role, topics) in (text(), ids()),
    ) {
        let records = [
            (SchemaKind::NotificationRequest, RequestRecord::Notification(Box::new(n))),
            (SchemaKind::DirectoryChange, RequestRecord::Directory(DirectoryChange {
                op, user_id: user, target, roles, at,
            })),
            (SchemaKind::RoleDefinition, RequestRecord::Role(RoleDefinition { role, topics, at })),
        ];
        for (kind, rec) in records {
            let ours = codec::encode_request(&rec).unwrap();
            let value: &dyn erased::Value = match &rec {
                RequestRecord::Notification(x) => x.as_ref(),
                RequestRecord::Directory(x) => x,
                RequestRecord::Role(x) => x,
            };
            value.check(kind, ours, Event::Request(rec.clone()));
        }
    }
}

/// Lets one loop check records of different types against the reference.
mod erased {
    use super::*;

    pub trait Value {
        fn check(&self, kind: SchemaKind, ours: Vec<u8>, event: Event);
    }

    impl<T: Serialize> Value for T {
        fn check(&self, kind: SchemaKind, ours: Vec<u8>, event: Event) {
            same_as_reference(kind, self, ours, event);
        }
    }
}
