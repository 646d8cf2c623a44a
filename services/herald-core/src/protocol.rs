//! WebSocket frames of protocol `herald.v1` (docs/protocol.md) and its close codes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The subprotocol name; it carries the protocol version.
pub const SUBPROTOCOL: &str = "herald.v1";

/// Largest accepted client frame, in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Most ids in one `ack`, `read`, `unread` or `archive` frame.
pub const MAX_IDS_PER_FRAME: usize = 1000;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Hello {
        device_id: String,
        #[serde(default)]
        cursor: Option<String>,
    },
    Ack {
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        up_to: Option<String>,
    },
    Read {
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        up_to: Option<String>,
    },
    Unread {
        #[serde(default)]
        ids: Vec<String>,
    },
    Archive {
        #[serde(default)]
        ids: Vec<String>,
    },
    /// A struct variant (with no fields) so that unknown fields are refused here too.
    Ping {},
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Session {
        session_id: String,
        user_id: String,
        device_id: String,
        epoch: String,
        resumed: bool,
        reset: bool,
        heartbeat_ms: u64,
        max_in_flight: usize,
        /// The user's partition of the user-events topic: clients pass it back as `partition`
        /// when they reconnect, so a load balancer can send every user of a partition to the
        /// same gateway (docs/operations.md, "Running a cluster").
        #[serde(default)]
        partition: u32,
    },
    Notification {
        id: String,
        cursor: String,
        seq: u64,
        event_type: String,
        source: String,
        created_at: String,
        data: Value,
        priority: String,
        collapse_key: Option<String>,
        attempt: u32,
    },
    Replayed {
        cursor: Option<String>,
    },
    Mark {
        kind: String,
        ids: Vec<String>,
        up_to: Option<String>,
        device_id: Option<String>,
        /// The change's own position; pass it as `after` to read an inbox that includes it.
        cursor: String,
    },
    Pong,
    Error {
        code: String,
        message: String,
    },
}

/// Server-initiated close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    GoingAway,
    MessageTooBig,
    ProtocolError,
    HelloTimeout,
    TokenExpired,
    SlowConsumer,
    RateLimited,
    Replaced,
    HeartbeatTimeout,
    InternalError,
    InvalidPayload,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::GoingAway => 1001,
            Close::MessageTooBig => 1009,
            Close::ProtocolError => 4000,
            Close::HelloTimeout => 4001,
            Close::TokenExpired => 4002,
            Close::SlowConsumer => 4008,
            Close::RateLimited => 4009,
            Close::Replaced => 4010,
            Close::HeartbeatTimeout => 4011,
            Close::InternalError => 4500,
            Close::InvalidPayload => 1007,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Close::GoingAway => "going_away",
            Close::MessageTooBig => "message_too_big",
            Close::ProtocolError => "protocol_error",
            Close::HelloTimeout => "hello_timeout",
            Close::TokenExpired => "token_expired",
            Close::SlowConsumer => "slow_consumer",
            Close::RateLimited => "rate_limited",
            Close::Replaced => "replaced",
            Close::HeartbeatTimeout => "heartbeat_timeout",
            Close::InternalError => "internal_error",
            Close::InvalidPayload => "invalid_payload",
        }
    }
}

/// The `notification` frame of an inbox row, for attempt `attempt` (1 = first send).
pub fn notification_frame(
    row: &crate::projection::InboxRow,
    epoch: crate::cursor::Epoch,
    attempt: u32,
) -> ServerFrame {
    ServerFrame::Notification {
        id: row.notification_id.clone(),
        cursor: crate::cursor::Cursor {
            epoch,
            seq: row.seq,
        }
        .to_string(),
        seq: row.seq,
        event_type: row.event_type.clone(),
        source: row.source.clone(),
        created_at: crate::time::format_rfc3339_millis(row.created_at),
        data: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
        priority: row.priority.as_str().to_owned(),
        collapse_key: row.collapse_key.clone(),
        attempt,
    }
}

/// The `notification` frame of an inbox row as JSON text, written straight into `out`: the
/// same frame as [`notification_frame`] serializes to (a test checks), without building it.
/// The payload, JSON already, is spliced in as it is (it was checked when the request was
/// accepted; a payload that does not parse, which only a corrupt log could hold, is `null`, as
/// in the frame).
pub fn write_notification_json(
    row: &crate::projection::InboxRow,
    epoch: crate::cursor::Epoch,
    attempt: u32,
    out: &mut String,
) {
    let mut digits = itoa::Buffer::new();
    out.push_str(r#"{"type":"notification","id":"#);
    json_str(&row.notification_id, out);
    out.push_str(r#","cursor":""#);
    epoch.write_hex(out);
    out.push('-');
    let seq = digits.format(row.seq);
    out.push_str(seq);
    out.push_str(r#"","seq":"#);
    out.push_str(seq);
    out.push_str(r#","event_type":"#);
    json_str(&row.event_type, out);
    out.push_str(r#","source":"#);
    json_str(&row.source, out);
    out.push_str(r#","created_at":""#);
    crate::time::write_rfc3339_millis(row.created_at, out);
    out.push_str(r#"","data":"#);
    if serde_json::from_str::<serde::de::IgnoredAny>(&row.payload).is_ok() {
        out.push_str(&row.payload);
    } else {
        out.push_str("null");
    }
    out.push_str(r#","priority":""#);
    out.push_str(row.priority.as_str());
    out.push_str(r#"","collapse_key":"#);
    match &row.collapse_key {
        Some(k) => json_str(k, out),
        None => out.push_str("null"),
    }
    out.push_str(r#","attempt":"#);
    out.push_str(digits.format(attempt));
    out.push('}');
}

/// `s` as a JSON string literal.
fn json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Most bytes of a close frame's reason (RFC 6455 leaves 123 after the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parses a client frame; the error says what is wrong, for the close reason.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    let frame: ClientFrame =
        serde_json::from_str(text).map_err(|e| truncate_utf8(&e.to_string(), 100).to_owned())?;
    let ids = match &frame {
        ClientFrame::Ack { ids, .. }
        | ClientFrame::Read { ids, .. }
        | ClientFrame::Unread { ids }
        | ClientFrame::Archive { ids } => ids.len(),
        _ => 0,
    };
    if ids > MAX_IDS_PER_FRAME {
        return Err(format!("at most {MAX_IDS_PER_FRAME} ids per frame"));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_client_frame(r#"{"type":"hello","device_id":"d1","cursor":null}"#).unwrap(),
            ClientFrame::Hello {
                device_id: "d1".into(),
                cursor: None
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ack","up_to":"00000001-5"}"#).unwrap(),
            ClientFrame::Ack {
                ids: vec![],
                up_to: Some("00000001-5".into())
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping {}
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"device_id":"d"}"#,
            r#"{"type":"hello"}"#,
            r#"{"type":"hello","device_id":5}"#,
            r#"{"type":"hello","device_id":"d","extra":1}"#,
            r#"{"type":"ack","ids":"x"}"#,
            r#"{"type":"ping","extra":1}"#,
            r#"{"type":"ping","device_id":"d"}"#,
        ] {
            assert!(parse_client_frame(bad).is_err(), "{bad}");
        }
        let many = format!(
            r#"{{"type":"ack","ids":[{}]}}"#,
            vec!["\"x\""; MAX_IDS_PER_FRAME + 1].join(",")
        );
        assert!(parse_client_frame(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn errors_and_reasons_are_cut_at_character_boundaries() {
        // Found by the fuzzer: a parse error quoting multi-byte text was cut inside a character.
        let bad = format!("\"{}\"", "é".repeat(80));
        assert!(parse_client_frame(&bad).unwrap_err().len() <= 100);
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 5), "abc");
    }

    proptest::proptest! {
        /// The written frame is the serialized frame (as JSON values; the payload spliced).
        #[test]
        fn a_written_notification_is_the_serialized_frame(
            id in "\\PC{0,20}", event_type in "\\PC{0,20}", source in ".{0,20}",
            collapse in proptest::option::of(".{0,10}"),
            payload in proptest::prop_oneof![
                proptest::strategy::Just("{\"a\":[1,2.5,\"x\\n\",null]}".to_string()),
                proptest::strategy::Just("\"just a string\"".to_string()),
                proptest::strategy::Just("not json".to_string()),
                ".{0,10}",
            ],
            seq in proptest::num::u64::ANY, created_at in proptest::num::i64::ANY,
            attempt in proptest::num::u32::ANY,
            epoch in proptest::num::u32::ANY,
        ) {
            let row = crate::projection::InboxRow {
                user_id: "u".into(),
                seq,
                notification_id: id,
                event_type,
                source,
                payload,
                priority: crate::model::Priority::High,
                collapse_key: collapse,
                created_at,
                deliver_at: None,
                expires_at: None,
                read: false,
                archived: false,
                expired: false,
                superseded: false,
                live: true,
            };
            let epoch = crate::cursor::Epoch(epoch);
            let mut written = String::new();
            write_notification_json(&row, epoch, attempt, &mut written);
            let serialized = serde_json::to_string(&notification_frame(&row, epoch, attempt)).unwrap();
            let a: Value = serde_json::from_str(&written).unwrap();
            let b: Value = serde_json::from_str(&serialized).unwrap();
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn server_frames_are_tagged_json() {
        let f = ServerFrame::Replayed { cursor: None };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"type":"replayed","cursor":null}"#
        );
    }
}
