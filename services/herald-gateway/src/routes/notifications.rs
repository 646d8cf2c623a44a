//! `POST /v1/notifications` and `POST /v1/notifications/batch` (producers).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use herald_core::ids::notification_id;
use herald_core::model::{NotificationRequest, Priority, Recipients, RequestRecord};
use herald_ports::log::Topic;
use herald_ports::records::request_record;
use herald_ports::telemetry;
use serde::{Deserialize, Serialize};

use crate::AppError;
use crate::clock::now_ms;
use crate::extract::{AppJson, ObjectOnly, Producer};
use crate::state::AppState;

/// Most notifications in one batch request.
pub const MAX_BATCH_NOTIFICATIONS: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/notifications", post(post_notification))
        .route("/v1/notifications/batch", post(post_batch))
}

/// A time given as Unix milliseconds or an RFC 3339 string.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TimeInput {
    /// Any whole number JSON gives (up to `u64::MAX`): one past `i64` is of the right type, out
    /// of range. One variant, so the schema's `oneOf` is an integer or a string, never both
    /// integer branches at once.
    Millis(#[serde(deserialize_with = "whole_number")] i128),
    Text(String),
}

/// A JSON whole number, negative or up to `u64::MAX` (serde's untagged enums take no `i128`
/// by themselves).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = i128;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E>(self, v: i64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<i128, E> {
            Ok(v.into())
        }
    }
    d.deserialize_any(Whole)
}

impl TimeInput {
    fn to_ms(&self, field: &'static str) -> Result<i64, AppError> {
        match self {
            TimeInput::Millis(ms) => i64::try_from(*ms).map_err(|_| {
                herald_core::CoreError::Invalid {
                    field,
                    reason: format!("{ms} is past 9999-12-31 (Unix ms)"),
                }
                .into()
            }),
            TimeInput::Text(t) => Ok(herald_core::time::parse_rfc3339(field, t)?),
        }
    }
}

/// `recipients` as the API takes it: an object with these fields and no others.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RecipientsBody {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    everyone: bool,
}

impl From<RecipientsBody> for Recipients {
    fn from(r: RecipientsBody) -> Recipients {
        Recipients {
            users: r.users,
            groups: r.groups,
            topic: r.topic,
            everyone: r.everyone,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationBody {
    #[schema(value_type = RecipientsBody)]
    recipients: ObjectOnly<RecipientsBody>,
    event_type: String,
    source: String,
    /// Written out as compact JSON while it is parsed ([`CompactJson`]).
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Option<CompactJson>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    collapse_key: Option<String>,
    #[serde(default)]
    deliver_at: Option<TimeInput>,
    #[serde(default)]
    expires_at: Option<TimeInput>,
    /// Alternative to the `Idempotency-Key` header.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The answer for one accepted notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    notification_id: String,
    idempotency_key: String,
    partition: u32,
    offset: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedBatch {
    accepted: Vec<Accepted>,
}

impl Accepted {
    /// Appends this answer's JSON, as serde_json writes it. Both ids are checked to hold only
    /// `[A-Za-z0-9._:@-]` before a request is accepted, so nothing needs escaping and the
    /// bytes are copied as they are; serde_json's escaping scan and map machinery were 6% of an
    /// async worker's samples while it accepted batches. An id that would need escaping
    /// (none can) goes through serde_json.
    fn write_json(&self, out: &mut Vec<u8>) {
        fn plain(s: &str) -> bool {
            s.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        }
        if !(plain(&self.notification_id) && plain(&self.idempotency_key)) {
            serde_json::to_writer(&mut *out, self).expect("an answer serializes");
            return;
        }
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"notification_id\":\"");
        out.extend_from_slice(self.notification_id.as_bytes());
        out.extend_from_slice(b"\",\"idempotency_key\":\"");
        out.extend_from_slice(self.idempotency_key.as_bytes());
        out.extend_from_slice(b"\",\"partition\":");
        out.extend_from_slice(n.format(self.partition).as_bytes());
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(n.format(self.offset).as_bytes());
        out.push(b'}');
    }
}

/// A 202 with `body`, JSON.
fn accepted_response(body: Vec<u8>) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
}

/// One answer's body.
fn one_json(accepted: &Accepted) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    accepted.write_json(&mut out);
    out
}

/// A batch's body: `{"accepted":[...]}`.
fn batch_json(accepted: &[Accepted]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 160 * accepted.len());
    out.extend_from_slice(b"{\"accepted\":[");
    for (i, a) in accepted.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        a.write_json(&mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    #[schema(value_type = Vec<NotificationBody>)]
    notifications: Vec<ObjectOnly<NotificationBody>>,
}

/// Send one notification (202 once it is durable in the log).
#[utoipa::path(post, path = "/v1/notifications", tag = "producers", request_body = NotificationBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Alternative to `idempotency_key`")),
    responses((status = 202, description = "Durable in the log", body = Accepted), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry with the same key", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn post_notification(
    State(st): State<AppState>,
    Producer(producer): Producer,
    headers: HeaderMap,
    body: Result<AppJson<NotificationBody>, AppError>,
) -> Result<impl IntoResponse, AppError> {
    let accepted = accept(&st, &producer, &headers, body).await?;
    telemetry::notifications_accepted(1);
    Ok(accepted_response(one_json(&accepted)))
}

async fn accept(
    st: &AppState,
    producer: &str,
    headers: &HeaderMap,
    body: Result<AppJson<NotificationBody>, AppError>,
) -> Result<Accepted, AppError> {
    take_tokens(st, producer, 1)?;
    let AppJson(body) = body?;
    let header_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| AppError::Invalid("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()?;
    let request = build_request(producer, body, header_key, traceparent(headers))?;
    let mut accepted = append_requests(st, vec![request]).await?;
    Ok(accepted.remove(0))
}

/// `POST /v1/notifications/batch`: many notifications, validated all or none, appended in one
/// call; the answers come in the same order. Each may carry its own `idempotency_key`.
/// Send 1 to 1,000 notifications in one request, all or none.
#[utoipa::path(post, path = "/v1/notifications/batch", tag = "producers", request_body = BatchBody,
    responses((status = 202, description = "All durable in the log", body = AcceptedBatch), (status = "4XX", description = "Refused: see the error code", body = crate::routes::openapi::ErrorBody), (status = 503, description = "The log could not make it durable; retry", body = crate::routes::openapi::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
async fn post_batch(
    State(st): State<AppState>,
    Producer(producer): Producer,
    headers: HeaderMap,
    body: Result<AppJson<BatchBody>, AppError>,
) -> Result<impl IntoResponse, AppError> {
    let accepted = accept_batch(&st, &producer, &headers, body).await?;
    telemetry::notifications_accepted(accepted.len());
    Ok(accepted_response(batch_json(&accepted)))
}

async fn accept_batch(
    st: &AppState,
    producer: &str,
    headers: &HeaderMap,
    body: Result<AppJson<BatchBody>, AppError>,
) -> Result<Vec<Accepted>, AppError> {
    let AppJson(body) = body?;
    let n = body.notifications.len();
    if headers.contains_key("idempotency-key") {
        return Err(AppError::Invalid(
            "a batch takes an idempotency_key per notification, not the Idempotency-Key header"
                .into(),
        ));
    }
    let requests = batch_requests(producer, body, traceparent(headers))?;
    take_tokens(st, producer, n)?;
    append_requests(st, requests).await
}

/// A batch body's requests, each validated and with a key of its own (the whole batch or an
/// error naming the bad item).
pub(crate) fn batch_requests(
    producer: &str,
    body: BatchBody,
    traceparent: Option<String>,
) -> Result<Vec<NotificationRequest>, AppError> {
    let n = body.notifications.len();
    if n == 0 || n > MAX_BATCH_NOTIFICATIONS {
        return Err(AppError::Invalid(format!(
            "a batch holds 1 to {MAX_BATCH_NOTIFICATIONS} notifications, not {n}"
        )));
    }
    let mut requests = Vec::with_capacity(n);
    let mut ids = std::collections::HashSet::with_capacity(n);
    for (i, ObjectOnly(body)) in body.notifications.into_iter().enumerate() {
        let request = build_request(producer, body, None, traceparent.clone())
            .map_err(|e| AppError::Invalid(format!("notifications[{i}]: {e}")))?;
        if !ids.insert(request.notification_id.clone()) {
            return Err(AppError::Invalid(format!(
                "notifications[{i}]: idempotency_key repeats an earlier one in this batch"
            )));
        }
        requests.push(request);
    }
    Ok(requests)
}

/// Takes one token per notification from the producer's bucket (all or none). A batch larger
/// than the bucket itself is refused as invalid: a `429` would tell the producer to retry
/// something no wait lets through.
fn take_tokens(st: &AppState, producer: &str, n: usize) -> Result<(), AppError> {
    let burst = st.producers.burst();
    if n as f64 > burst {
        return Err(AppError::Invalid(format!(
            "a batch of {n} notifications is over the producer's burst of {burst} \
             (--producer-burst): send it in smaller batches"
        )));
    }
    st.producers
        .take(producer, n)
        .map_err(|retry_after_secs| AppError::RateLimited {
            role: "producer",
            caller: producer.to_owned(),
            retry_after_secs,
        })
}

/// A notification request from one body: the key from the body or the header (`header_key`),
/// validated.
pub(crate) fn build_request(
    producer: &str,
    body: NotificationBody,
    header_key: Option<String>,
    traceparent: Option<String>,
) -> Result<NotificationRequest, AppError> {
    let now = now_ms();
    let key = match (header_key, body.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(AppError::Invalid(
                "Idempotency-Key header and idempotency_key field differ".into(),
            ));
        }
        (Some(k), _) | (None, Some(k)) => k,
        // No key: the request cannot be retried safely, like an HTTP POST without one. The
        // generated key makes a time-ordered id (`herald_core::ids::notification_id`).
        (None, None) => herald_core::ids::generated_key(now),
    };
    let priority = match &body.priority {
        Some(p) => p.parse::<Priority>()?,
        None => Priority::Normal,
    };
    let request = NotificationRequest {
        notification_id: notification_id(producer, &key),
        idempotency_key: key,
        producer: producer.to_owned(),
        recipients: body.recipients.0.into(),
        event_type: body.event_type,
        source: body.source,
        payload: body.data.map_or_else(|| "null".to_owned(), |d| d.0),
        collapse_key: body.collapse_key,
        deliver_at: body
            .deliver_at
            .as_ref()
            .map(|t| t.to_ms("deliver_at"))
            .transpose()?,
        expires_at: body
            .expires_at
            .as_ref()
            .map(|t| t.to_ms("expires_at"))
            .transpose()?,
        created_at: now,
        traceparent,
        priority,
    };
    // The id was derived just above (checking it again would hash the key twice), and the
    // payload was written by serde_json while it parsed `data`.
    request.validate_written()?;
    Ok(request)
}

/// A JSON value as the compact text serde_json writes for it, made while it is parsed: the
/// same parse as a `serde_json::Value` (its checks, limits and error messages), without the
/// tree. Parsing `data` into a `Value` (a `BTreeMap` per object, a `String` per key) and writing
/// it again was about a tenth of the server's samples with a 600-byte object. Keys come out in
/// the order written (a `Value` sorts them); a repeated key stays repeated, and every JSON
/// reader Herald feeds (serde_json, a browser's `JSON.parse`) keeps its last value, as a
/// `Value` did.
#[derive(Debug)]
pub(crate) struct CompactJson(pub(crate) String);

impl<'de> Deserialize<'de> for CompactJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        serde::de::DeserializeSeed::deserialize(Compact(&mut out), d)?;
        // Only JSON text written from `&str`s and numbers: UTF-8.
        Ok(CompactJson(
            String::from_utf8(out).map_err(serde::de::Error::custom)?,
        ))
    }
}

/// The key serde_json reserves for raw values, as written.
const RAW_VALUE_TOKEN: &[u8] = b"\"$serde_json::private::RawValue\"";

/// Writes the value it is given into its buffer ([`CompactJson`]).
struct Compact<'a>(&'a mut Vec<u8>);

impl Compact<'_> {
    fn write<T: Serialize + ?Sized, E: serde::de::Error>(self, v: &T) -> Result<(), E> {
        serde_json::to_writer(&mut *self.0, v).map_err(E::custom)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Compact<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Compact<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.write(&v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.write(&v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.write(&v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        // As a `Value` writes it (a parsed JSON number is finite).
        self.write(&serde_json::Value::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.write(v)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(b'[');
        let mut first = true;
        loop {
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            if seq.next_element_seed(Compact(&mut *out))?.is_none() {
                out.truncate(mark);
                break;
            }
            first = false;
        }
        out.push(b']');
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push(b'{');
        let mut first = true;
        loop {
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            if map.next_key_seed(Compact(&mut *out))?.is_none() {
                out.truncate(mark);
                break;
            }
            // serde_json (with its `raw_value` feature, which axum turns on) reads an object
            // whose first key is this token as an embedded raw value, not as an object: a
            // `Value` refuses most such objects and turns the rest into something else, and
            // the inbox API and SSE read payloads as `Value`s. Refused here outright.
            if first && out[mark..] == *RAW_VALUE_TOKEN {
                return Err(serde::de::Error::custom(
                    "data holds an object whose first key is serde_json's private raw-value token",
                ));
            }
            out.push(b':');
            map.next_value_seed(Compact(&mut *out))?;
            first = false;
        }
        out.push(b'}');
        Ok(())
    }
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.len() <= 128)
        .map(str::to_owned)
}

/// Appends requests in one call and answers for each. 202 only once the append is durable.
async fn append_requests(
    st: &AppState,
    requests: Vec<NotificationRequest>,
) -> Result<Vec<Accepted>, AppError> {
    let partitions = st.log.partitions(Topic::Requests);
    // Each request moves into its record; only the two ids the answer names are kept.
    let mut ids = Vec::with_capacity(requests.len());
    let records = requests
        .into_iter()
        .map(|r| {
            ids.push((r.notification_id.clone(), r.idempotency_key.clone()));
            request_record(
                &RequestRecord::Notification(Box::new(r)),
                partitions,
                now_ms(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let appended = st.log.append(Topic::Requests, records).await?;
    Ok(ids
        .into_iter()
        .zip(appended)
        .map(|((notification_id, idempotency_key), at)| {
            tracing::debug!(%notification_id, partition = at.partition, offset = at.offset, "notification accepted");
            Accepted {
                notification_id,
                idempotency_key,
                partition: at.partition,
                offset: at.offset,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(key: &str, partition: u32, offset: u64) -> Accepted {
        Accepted {
            notification_id: notification_id("billing", key),
            idempotency_key: key.to_owned(),
            partition,
            offset,
        }
    }

    /// The hand-written bodies are serde_json's, byte for byte, for ids made of every allowed
    /// character and for integers at their bounds; an id that needs escaping (the ids' checks
    /// refuse it before this) still comes out as valid JSON.
    #[test]
    fn bodies_are_what_serde_json_writes() {
        let answers = vec![
            accepted("k1", 0, 0),
            accepted("Az09._:@-", u32::MAX, u64::MAX),
            accepted("needs \"escaping\"\\\n\u{7f}é", 3, 12_345),
        ];
        for a in &answers {
            assert_eq!(one_json(a), serde_json::to_vec(a).unwrap());
        }
        let batch = AcceptedBatch { accepted: answers };
        assert_eq!(
            batch_json(&batch.accepted),
            serde_json::to_vec(&batch).unwrap()
        );
        assert_eq!(batch_json(&[]), br#"{"accepted":[]}"#);
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, nested a few levels, with strings that hold quotes, backslashes,
    /// whitespace and non-ASCII characters.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            "[ \\t\\n\"\\\\a-zé€😀{}:,]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[ \"\\\\a-zé]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn compact(json: &str) -> Result<String, serde_json::Error> {
        serde_json::from_str::<CompactJson>(json).map(|c| c.0)
    }

    proptest! {
        /// Pretty-printed or compact, `data` is stored as a `Value` parsed from the same text
        /// is written (whose keys are sorted here, as written).
        #[test]
        fn data_is_what_a_value_of_it_writes(v in json()) {
            for text in [serde_json::to_string(&v).unwrap(), serde_json::to_string_pretty(&v).unwrap()] {
                let want = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap()).unwrap();
                prop_assert_eq!(&compact(&text).unwrap(), &want);
            }
        }
    }

    /// What a `Value` refuses is refused, with its message: numbers out of range, lone
    /// surrogates, nesting past serde_json's limit, bad syntax.
    #[test]
    fn data_a_value_refuses_is_refused_alike() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            "1e400",
            r#""\ud800""#,
            deep.as_str(),
            "[1,]",
            r#"{"a" 1}"#,
            "tru",
        ] {
            let want = serde_json::from_str::<serde_json::Value>(bad).unwrap_err();
            let got = compact(bad).unwrap_err();
            assert_eq!(got.to_string(), want.to_string(), "{bad}");
            assert_eq!(got.classify(), want.classify(), "{bad}");
        }
        // An object that serde_json reads as an embedded raw value: refused (a `Value` refuses
        // the first and turns the second into `[1,2]`); as a later key it is any key.
        for bad in [
            r#"{"$serde_json::private::RawValue":1}"#,
            r#"[{"$serde_json::private::RawValue":"[1,2]"}]"#,
            r#"{"\u0024serde_json::private::RawValue":"[1,2]"}"#,
        ] {
            let err = compact(bad).unwrap_err();
            assert!(err.to_string().contains("raw-value token"), "{bad}: {err}");
        }
        assert!(compact(r#"{"a":1,"$serde_json::private::RawValue":2}"#).is_ok());
    }

    fn request(body: &str) -> NotificationRequest {
        let body: NotificationBody = serde_json::from_str(body).unwrap();
        build_request("billing", body, Some("k1".into()), None).unwrap()
    }

    #[test]
    fn data_keeps_its_key_order_and_loses_its_whitespace() {
        let r = request(
            r#"{"recipients": {"users": ["alice"]}, "event_type": "e", "source": "s",
                "data": {
                    "zeta": 1, "alpha": [1.50, 1e3, 123456789012345678901234567890],
                    "text": "two  spaces,\ttab \" quote \\ backslash \n"
                }}"#,
        );
        // Keys in the order written; numbers and strings as a `Value` writes them.
        assert_eq!(
            r.payload,
            r#"{"zeta":1,"alpha":[1.5,1000.0,1.2345678901234568e+29],"text":"two  spaces,\ttab \" quote \\ backslash \n"}"#
        );
        for (data, payload) in [
            ("", "null"),
            (r#", "data": null"#, "null"),
            (r#", "data": "x""#, r#""x""#),
        ] {
            let r = request(&format!(
                r#"{{"recipients": {{"users": ["alice"]}}, "event_type": "e", "source": "s"{data}}}"#
            ));
            assert_eq!(r.payload, payload, "{data}");
        }
    }
}
