//! Per-user preferences end to end: `GET`/`PUT /v1/preferences` over a real server, the real
//! embedded log and projection, the real projector, and the Rust client on a live socket.

use std::collections::HashMap;

use herald_client::connect;
use herald_core::protocol::ServerFrame;
use serde_json::{Value, json};

mod common;

use common::*;

async fn put_preferences(srv: &Server, user: &str, body: &Value) -> (u16, Value) {
    let resp = http()
        .put(format!("{}/v1/preferences", srv.http))
        .bearer_auth(token(user, 3600))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_preferences(srv: &Server, user: &str) -> Value {
    srv.get_json("/v1/preferences", user).await
}

/// Produces one notification and returns its id.
async fn produce(srv: &Server, recipients: Value, event_type: &str, key: &str) -> String {
    let resp: Value = http()
        .post(format!("{}/v1/notifications", srv.http))
        .json(
            &json!({"recipients": recipients, "event_type": event_type, "source": "prefs-test",
                      "idempotency_key": key}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["notification_id"]
        .as_str()
        .expect("accepted")
        .to_owned()
}

/// Reads frames until notification `until` arrives; returns the ids of every notification seen
/// (ACKing each) and whether `replayed` came.
async fn notifications_until(c: &mut herald_client::Connection, until: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let f = tokio::time::timeout(GUARD, c.next())
            .await
            .expect("frames stopped")
            .unwrap();
        if let ServerFrame::Notification { id, .. } = f {
            c.ack(std::slice::from_ref(&id), None).await.unwrap();
            let done = id == until;
            seen.push(id);
            if done {
                return seen;
            }
        }
    }
}

async fn wait_replayed(c: &mut herald_client::Connection) {
    loop {
        let f = tokio::time::timeout(GUARD, c.next())
            .await
            .expect("frames stopped")
            .unwrap();
        if let ServerFrame::Replayed { .. } = f {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_and_inbox_only_notifications_stay_off_the_socket_and_in_the_inbox() {
    let srv = server(config(), true).await;
    assert_eq!(
        get_preferences(&srv, "alice").await,
        json!({"event_types": {}, "topics": {}}),
        "empty by default"
    );
    let doc = json!({
        "event_types": {
            "chat.spam": {"live": true, "inbox": false},
            "chat.quiet": {"live": false, "inbox": true},
        },
        "topics": {"digest": {"live": false, "inbox": false}},
    });
    let (status, stored) = put_preferences(&srv, "alice", &doc).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored, doc, "the answer is the stored document");
    assert_eq!(get_preferences(&srv, "alice").await, doc);
    assert_eq!(
        get_preferences(&srv, "bob").await,
        json!({"event_types": {}, "topics": {}}),
        "preferences are per user"
    );
    // Alice follows the digest topic (so a topic notification reaches her).
    let subscribed = http()
        .put(format!("{}/v1/topics/digest/subscribers/alice", srv.http))
        .send()
        .await
        .unwrap();
    assert_eq!(subscribed.status().as_u16(), 202);

    let (mut phone, _) = connect(&srv.ws, &bearer("alice"), "phone", None)
        .await
        .unwrap();
    wait_replayed(&mut phone).await;
    let users = json!({"users": ["alice", "bob"]});
    let muted = produce(&srv, users.clone(), "chat.spam", "m1").await;
    let quiet = produce(&srv, users.clone(), "chat.quiet", "q1").await;
    let by_topic = produce(&srv, json!({"topic": "digest"}), "weekly", "d1").await;
    let live = produce(&srv, users.clone(), "chat.message", "l1").await;
    let seen = notifications_until(&mut phone, &live).await;
    assert_eq!(
        seen,
        vec![live.clone()],
        "the muted, inbox-only and muted-topic notifications are not pushed"
    );

    // All four are in the inbox: the muted ones read, the inbox-only one unread.
    srv.wait_unread("alice", 2).await;
    let page = srv.get_json("/v1/inbox", "alice").await;
    let read: HashMap<String, bool> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["read"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        read,
        HashMap::from([
            (muted.clone(), true),
            (quiet.clone(), false),
            (by_topic, true),
            (live.clone(), false),
        ]),
        "{page}"
    );
    assert_eq!(page["unread_count"], 2);
    // Bob has no preferences: the same notifications reach him live and unread.
    srv.wait_unread("bob", 3).await;

    // A device that connects later replays only what is live for it.
    let (mut laptop, _) = connect(&srv.ws, &bearer("alice"), "laptop", None)
        .await
        .unwrap();
    let replayed = notifications_until(&mut laptop, &live).await;
    assert_eq!(replayed, vec![live], "nothing quiet is replayed either");

    // Clearing the preferences: the next one of a muted type is live again.
    let (status, _) = put_preferences(&srv, "alice", &json!({})).await;
    assert_eq!(status, 200);
    let again = produce(&srv, users, "chat.spam", "m2").await;
    assert_eq!(notifications_until(&mut phone, &again).await, vec![again]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_preferences_get_clear_errors() {
    let srv = server(config(), true).await;
    let on = json!({"live": true, "inbox": true});
    let many: serde_json::Map<String, Value> = (0..=200)
        .map(|i| (format!("type-{i}"), on.clone()))
        .collect();
    let (status, body) = put_preferences(&srv, "alice", &json!({"event_types": many})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("200"),
        "{body}"
    );
    let (status, body) =
        put_preferences(&srv, "alice", &json!({"topics": {"has space": on}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("topics"),
        "{body}"
    );
    let (status, body) = put_preferences(&srv, "alice", &json!({"mute": ["x"]})).await;
    assert_eq!(status, 422, "unknown field: {body}");
    let (status, body) = put_preferences(
        &srv,
        "alice",
        &json!({"event_types": {"t": {"live": "no"}}}),
    )
    .await;
    assert_eq!(status, 422, "wrong type: {body}");
    let anonymous = http()
        .put(format!("{}/v1/preferences", srv.http))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(
        get_preferences(&srv, "alice").await,
        json!({"event_types": {}, "topics": {}}),
        "nothing refused was stored"
    );
}
