//! Fuzzing Herald's parsers with a mutation fuzzer: every client frame, every HTTP body and
//! query type (through exactly the parsing and validation its handler runs), Avro single-object
//! decoding of every schema, cursors and times. Inputs start from valid seeds and are mutated
//! (bit flips, byte edits, splices, JSON- and Avro-shaped tokens); each must give a value or a
//! typed error, never a panic, and what parses must round-trip.
//!
//! The test suite runs `HERALD_FUZZ_ITERS` inputs per target (default 20,000); `just fuzz` runs
//! a million or more in release mode. `HERALD_FUZZ_SEED` replays a run.

use std::panic::{AssertUnwindSafe, catch_unwind};

use herald_core::codec;
use herald_core::cursor::{Cursor, Epoch};
use herald_core::model::*;
use herald_core::protocol::{ClientFrame, parse_client_frame};
use herald_gateway::routes::fuzzing::{Input, check};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn iterations() -> usize {
    std::env::var("HERALD_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn rng(target: &str) -> (SmallRng, u64) {
    let seed = std::env::var("HERALD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mixed = seed
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    (SmallRng::seed_from_u64(mixed), seed)
}

/// Tokens that tend to break JSON and Avro readers.
const TOKENS: &[&[u8]] = &[
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"9223372036854775807",
    b"253402300800000",
    b",",
    b":",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
    b"\xc3\x01",
    b"\xe2\x80\x8b",
    b"%00",
    b"%ff",
    b"&",
    b"=",
];

/// A random JSON scalar, biased to values validators care about.
fn scalar(rng: &mut SmallRng) -> serde_json::Value {
    use serde_json::json;
    match rng.random_range(0..14) {
        0 => json!(null),
        1 => json!(rng.random_bool(0.5)),
        2 => json!(rng.random::<i64>()),
        3 => json!(i64::MAX),
        4 => json!(-1),
        5 => json!(253_402_300_800_000i64),
        6 => json!(1.5e300),
        7 => json!(""),
        8 => json!("x".repeat(rng.random_range(100..70_000))),
        9 => json!("bad id!"),
        10 => json!("ok-id_1.2:3@x"),
        11 => json!("2026-02-30T00:00:00Z"),
        12 => json!("\u{0}\u{7f}é\u{10ffff}"),
        _ => json!(format!(
            "{:08x}-{}",
            rng.random::<u32>(),
            rng.random::<u64>()
        )),
    }
}

/// A structural mutation of a JSON value: a node replaced, removed, added or re-typed.
fn mutate_json(rng: &mut SmallRng, v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) if !map.is_empty() && rng.random_bool(0.75) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..5) {
                0 => {
                    map.remove(k);
                }
                1 => {
                    map.insert(format!("unknown{}", rng.random::<u8>()), scalar(rng));
                }
                _ => mutate_json(rng, map.get_mut(k).expect("key exists")),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_bool(0.75) => {
            let i = rng.random_range(0..items.len());
            match rng.random_range(0..4) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    // Long arrays, but never past what a body may be: nested copies of copies
                    // grew one mutant to gigabytes (the test was killed for memory).
                    let copy = items[i].clone();
                    let size = serde_json::to_vec(&copy).map_or(1, |b| b.len()).max(1);
                    let room = MAX_INPUT
                        .saturating_sub(serde_json::to_vec(&*items).map_or(0, |b| b.len()));
                    for _ in 0..rng.random_range(1..1500).min(room / size) {
                        items.push(copy.clone());
                    }
                }
                _ => mutate_json(rng, &mut items[i]),
            }
        }
        _ => {
            *v = match rng.random_range(0..4) {
                0 => Value::Array(vec![v.take()]),
                1 => serde_json::json!({"x": v.take()}),
                _ => scalar(rng),
            }
        }
    }
}

/// The largest input tried: an HTTP body is refused past `MAX_BODY_BYTES` before it is parsed,
/// and frames are smaller still.
const MAX_INPUT: usize = herald_gateway::MAX_BODY_BYTES;

/// One mutation of `input` (with `others` to splice from), at most [`MAX_INPUT`] bytes.
fn mutate(rng: &mut SmallRng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = mutate_unbounded(rng, input, others);
    v.truncate(MAX_INPUT);
    v
}

fn mutate_unbounded(rng: &mut SmallRng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_bool(0.5)
        && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(input)
    {
        for _ in 0..rng.random_range(1..=3) {
            mutate_json(rng, &mut value);
        }
        return serde_json::to_vec(&value).expect("a value serializes");
    }
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 32));
                let piece = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, piece);
            }
            5 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                let i = rng.random_range(0..=len);
                if rng.random_bool(0.5) && i < len {
                    let end = (i + t.len()).min(len);
                    v.splice(i..end, t.iter().copied());
                } else {
                    v.splice(i..i, t.iter().copied());
                }
            }
            6 if !others.is_empty() => {
                let o = &others[rng.random_range(0..others.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=o.len());
                v.truncate(cut);
                v.extend_from_slice(&o[from..]);
            }
            7 if len > 0 => v.truncate(rng.random_range(0..len)),
            _ => {
                // Repeat a piece many times (long strings, deep nesting).
                if len > 0 {
                    let a = rng.random_range(0..len);
                    let b = rng.random_range(a..=len.min(a + 4));
                    let piece = v[a..b].to_vec();
                    for _ in 0..rng.random_range(1..200) {
                        v.extend_from_slice(&piece);
                    }
                }
            }
        }
    }
    v
}

/// Runs `each` on `iterations()` mutated inputs; a panic fails the test with the input.
/// `each` says whether the input was accepted; a run must see both outcomes (a fuzzer that only
/// produces garbage, or only valid inputs, tests little).
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, mut each: impl FnMut(&[u8]) -> bool) {
    let (mut rng, seed) = rng(target);
    let n = iterations();
    let mut corpus = seeds.clone();
    let mut accepted = 0usize;
    for s in &seeds {
        accepted += usize::from(run_one(target, seed, s, &mut each));
    }
    for i in 0..n {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, &seeds);
        accepted += usize::from(run_one(target, seed, &input, &mut each));
        // Keep some mutants as bases, so mutations stack up (bounded).
        if i % 7 == 0 && input.len() < 64 * 1024 {
            if corpus.len() < 1024 {
                corpus.push(input);
            } else {
                let at = rng.random_range(seeds.len()..corpus.len());
                corpus[at] = input;
            }
        }
    }
    let total = n + seeds.len();
    println!("fuzz {target}: {total} inputs, {accepted} accepted (seed {seed})");
    assert!(
        accepted > 0 && accepted < total,
        "fuzz {target}: {accepted} of {total} accepted"
    );
}

fn run_one(target: &str, seed: u64, input: &[u8], each: &mut impl FnMut(&[u8]) -> bool) -> bool {
    match catch_unwind(AssertUnwindSafe(|| each(input))) {
        Ok(accepted) => accepted,
        Err(_) => panic!(
            "fuzz {target} (HERALD_FUZZ_SEED={seed}): panicked on {:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn strings(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn client_frames() {
    let seeds = strings(&[
        r#"{"type":"hello","device_id":"phone-1","cursor":"00c0ffee-42"}"#,
        r#"{"type":"hello","device_id":"d","cursor":null}"#,
        r#"{"type":"ack","ids":["a","b"],"up_to":"00c0ffee-7"}"#,
        r#"{"type":"read","ids":["x"],"up_to":null}"#,
        r#"{"type":"unread","ids":["x"]}"#,
        r#"{"type":"archive","ids":["x","y"]}"#,
        r#"{"type":"ping"}"#,
    ]);
    fuzz("client_frames", seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let Ok(frame) = parse_client_frame(&text) else {
            return false;
        };
        let again = serde_json::to_string(&frame).unwrap();
        assert_eq!(parse_client_frame(&again), Ok(frame.clone()), "{again}");
        if let ClientFrame::Hello { device_id, cursor } = frame {
            let _ = herald_core::session::Hello::parse(device_id, cursor.as_deref(), Epoch(1));
        }
        true
    });
}

fn samples() -> Vec<Event> {
    let request = NotificationRequest {
        notification_id: herald_core::ids::notification_id("p", "k"),
        idempotency_key: "k".into(),
        producer: "p".into(),
        recipients: Recipients {
            users: vec!["alice".into(), "bob".into()],
            groups: vec!["g".into()],
            topic: Some("t".into()),
            everyone: false,
        },
        event_type: "approval.requested".into(),
        source: "s".into(),
        payload: r#"{"a":[1,2,{"b":null}]}"#.into(),
        collapse_key: Some("c".into()),
        deliver_at: Some(1),
        expires_at: Some(2),
        created_at: 3,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        priority: Priority::Urgent,
    };
    let mark = MarkChange {
        user_id: "alice".into(),
        device_id: Some("d".into()),
        notification_ids: vec!["n1".into(), "n2".into()],
        up_to: Some(9),
        at: 4,
    };
    vec![
        Event::Request(RequestRecord::Notification(Box::new(request.clone()))),
        Event::Request(RequestRecord::Directory(DirectoryChange {
            op: DirectoryOp::JoinGroup,
            user_id: "alice".into(),
            target: Some("g".into()),
            roles: vec!["r".into()],
            at: 5,
        })),
        Event::Request(RequestRecord::Role(RoleDefinition {
            role: "r".into(),
            topics: vec!["*".into(), "t".into()],
            at: 6,
        })),
        Event::User(UserEvent::Added(request.added_for("alice"))),
        Event::UsersAdded(NotificationsAdded::of(
            &request.added_for(""),
            vec![
                AddedRecipient {
                    user_id: "alice".into(),
                    delivery: Delivery::Live,
                },
                AddedRecipient {
                    user_id: "bob".into(),
                    delivery: Delivery::Inbox,
                },
            ],
        )),
        Event::User(UserEvent::Delivered(NotificationDelivered {
            user_id: "alice".into(),
            device_id: "d".into(),
            notification_id: "n1".into(),
            at: 7,
        })),
        Event::User(UserEvent::Acked(NotificationAcked {
            user_id: "alice".into(),
            device_id: "d".into(),
            notification_ids: vec!["n1".into()],
            up_to: Some(3),
            at: 8,
        })),
        Event::User(UserEvent::Read(mark.clone())),
        Event::User(UserEvent::Unread(mark.clone())),
        Event::User(UserEvent::Archived(mark.clone())),
        Event::User(UserEvent::Unarchived(mark)),
        Event::User(UserEvent::Expired(NotificationExpired {
            user_id: "alice".into(),
            notification_id: "n1".into(),
            at: 9,
        })),
        Event::User(UserEvent::Connected(DeviceConnected {
            user_id: "alice".into(),
            device_id: "d".into(),
            at: 10,
        })),
        Event::User(UserEvent::Progress(DeviceProgress {
            user_id: "alice".into(),
            device_id: "d".into(),
            delivered: vec![3, 5, 8],
            acked_ids: vec!["n1".into()],
            acked_up_to: Some(2),
            at: 11,
        })),
        Event::User(UserEvent::Preferences(PreferencesChanged {
            user_id: "alice".into(),
            event_types: vec![PreferenceRule {
                name: "t".into(),
                live: false,
                inbox: true,
            }],
            topics: vec![PreferenceRule {
                name: "news".into(),
                live: true,
                inbox: false,
            }],
            at: 12,
        })),
    ]
}

fn encode(e: &Event) -> Vec<u8> {
    match e {
        Event::Request(r) => codec::encode_request(r).unwrap(),
        Event::User(u) => codec::encode_user_event(u).unwrap(),
        Event::UsersAdded(many) => codec::encode_users_added(many).unwrap(),
    }
}

#[test]
fn avro_single_object_decoding_of_every_schema() {
    let events = samples();
    assert_eq!(
        events.len(),
        codec::SchemaKind::ALL.len(),
        "a sample of every schema"
    );
    let seeds: Vec<Vec<u8>> = events.iter().map(encode).collect();
    for (e, bytes) in events.iter().zip(&seeds) {
        assert_eq!(&codec::decode(bytes).unwrap(), e);
    }
    fuzz("avro", seeds, |input| {
        let Ok(event) = codec::decode(input) else {
            return false;
        };
        assert_eq!(codec::decode(&encode(&event)).unwrap(), event);
        true
    });
}

#[test]
fn cursors_and_times() {
    let seeds = strings(&[
        "00c0ffee-42",
        "ffffffff-18446744073709551615",
        "2026-11-30T05:24:24.123Z",
        "1970-01-01T01:00:00+01:00",
    ]);
    fuzz("cursors_and_times", seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let mut accepted = false;
        if let Ok(c) = text.parse::<Cursor>() {
            assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
            accepted = true;
        }
        if let Ok(ms) = herald_core::time::parse_rfc3339("t", &text) {
            let again = herald_core::time::format_rfc3339_millis(ms);
            assert_eq!(herald_core::time::parse_rfc3339("t", &again), Ok(ms));
            accepted = true;
        }
        accepted
    });
}

fn body_seeds(input: Input) -> Vec<Vec<u8>> {
    let notification = r#"{"recipients":{"users":["alice"],"groups":["g"],"topic":"t","everyone":false},"event_type":"e","source":"s","data":{"x":[1,"2",null]},"priority":"high","collapse_key":"c","deliver_at":"2026-12-01T09:00:00Z","expires_at":1896115600000,"idempotency_key":"k-1"}"#;
    match input {
        Input::Notification => strings(&[
            notification,
            r#"{"recipients":{"everyone":true},"event_type":"e","source":"s"}"#,
        ]),
        Input::Batch => vec![
            format!(
                r#"{{"notifications":[{notification},{}]}}"#,
                notification.replace("k-1", "k-2")
            )
            .into_bytes(),
        ],
        Input::Read => strings(&[
            r#"{"ids":["a","b"],"up_to":"00c0ffee-3","device_id":"d"}"#,
            r#"{"up_to":"00c0ffee-3"}"#,
        ]),
        Input::Unread | Input::Archive => strings(&[r#"{"ids":["a"],"device_id":"d"}"#]),
        Input::Ack => strings(&[r#"{"device_id":"d","ids":["a"],"up_to":"00c0ffee-9"}"#]),
        Input::Unarchive => strings(&[r#"{"ids":["a","b"]}"#]),
        Input::Preferences => strings(&[
            r#"{"event_types":{"billing.invoice":{"live":false,"inbox":true}},"topics":{"deploys":{"live":false,"inbox":false}}}"#,
            r#"{"event_types":{},"topics":{}}"#,
        ]),
        Input::User => strings(&[r#"{"roles":["ops","admin"]}"#, "{}"]),
        Input::Role => strings(&[r#"{"topics":["*","incidents"]}"#]),
        Input::DevLogin => strings(&[r#"{"user_id":"alice"}"#]),
        Input::InboxQuery => strings(&[
            "filter=unread&before=10&limit=20&after=00c0ffee-3",
            "filter=archived",
        ]),
        Input::SseQuery => strings(&["device_id=tab&cursor=00c0ffee-4&ticket=abc"]),
        Input::AuditQuery => strings(&["max_records=10"]),
    }
}

#[test]
fn every_http_body_and_query() {
    for input in Input::ALL {
        let seeds = body_seeds(input);
        for s in &seeds {
            assert!(
                check(input, s).is_ok(),
                "{input:?} seed is valid: {:?}",
                check(input, s).unwrap_err().to_string()
            );
        }
        fuzz(&format!("body {input:?}"), seeds, |bytes| {
            match check(input, bytes) {
                Ok(()) => true,
                Err(e) => {
                    assert!(
                        e.status().is_client_error(),
                        "{input:?}: a bad input is a 4xx, not {} ({e})",
                        e.status()
                    );
                    false
                }
            }
        });
    }
}
