//! WebSocket sessions end to end: a real server on a loopback port, the real embedded log and
//! projection, the real projector, and the Rust client.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{ClientError, Credentials, Inbox, connect, open};
use herald_core::protocol::{ClientFrame, ServerFrame};
use herald_gateway::{AuthConfig, GatewayConfig};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

mod common;

use common::*;

/// Reads frames until `n` distinct notifications arrived (acking each), returning
/// (ids of first sends in order, seqs of first sends, whether `replayed` came, frames seen).
async fn collect(
    c: &mut herald_client::Connection,
    n: usize,
    ack: bool,
) -> (Vec<String>, Vec<u64>, bool) {
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    let mut replayed = false;
    let mut distinct = HashSet::new();
    while distinct.len() < n {
        let f = tokio::time::timeout(GUARD, c.next())
            .await
            .expect("frames stopped")
            .unwrap();
        match f {
            ServerFrame::Notification {
                id, seq, attempt, ..
            } => {
                if attempt == 1 {
                    ids.push(id.clone());
                    seqs.push(seq);
                }
                distinct.insert(id.clone());
                if ack {
                    c.ack(&[id], None).await.unwrap();
                }
            }
            ServerFrame::Replayed { .. } => replayed = true,
            _ => {}
        }
    }
    (ids, seqs, replayed)
}

fn assert_unique_increasing(ids: &[String], seqs: &[u64]) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "no notification is first-sent twice in a session"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "per-user order: {seqs:?}"
    );
}

/// `ids` (with their `seqs`) were each sent once, in order, and are exactly `posted`.
fn assert_all_once_in_order(ids: &[String], seqs: &[u64], posted: &[String]) {
    assert_unique_increasing(ids, seqs);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        posted.iter().collect::<HashSet<_>>(),
        "every posted notification and nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replays_unacked_exactly_once_then_goes_live() {
    let srv = server(config(), true).await;
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(srv.post(&["alice"], &format!("r{i}")).await);
    }
    let mut inbox = Inbox::new();
    let (mut c, info) = connect(&srv.ws, &bearer("alice"), "phone", None)
        .await
        .unwrap();
    inbox.on_session(&info);
    assert!(!info.resumed && !info.reset);
    let mut got = Vec::new();
    let mut saw_replayed = false;
    while got.len() < 5 {
        match tokio::time::timeout(GUARD, c.next())
            .await
            .unwrap()
            .unwrap()
        {
            f @ ServerFrame::Notification { .. } => {
                if let Some(n) = inbox.on_notification(&f) {
                    got.push(n);
                }
            }
            ServerFrame::Replayed { .. } => saw_replayed = true,
            _ => {}
        }
    }
    assert_eq!(
        got.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        posted,
        "in order"
    );
    // ACK the first three cumulatively, then disconnect.
    c.ack(&[], Some(&got[2].cursor)).await.unwrap();
    if !saw_replayed {
        loop {
            if let ServerFrame::Replayed { .. } = tokio::time::timeout(GUARD, c.next())
                .await
                .unwrap()
                .unwrap()
            {
                break;
            }
        }
    }
    // Let the ACK land in the projection before resuming.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.close().await;
    let (mut c, info) = connect(&srv.ws, &bearer("alice"), "phone", Some(&got[2].cursor))
        .await
        .unwrap();
    assert!(info.resumed);
    let (ids, seqs, _) = collect(&mut c, 2, true).await;
    assert_eq!(ids, posted[3..].to_vec(), "only the unacknowledged ones");
    assert_unique_increasing(&ids, &seqs);
    // Live from here.
    let live = srv.post(&["alice"], "live").await;
    let (ids, _, _) = collect(&mut c, 1, true).await;
    assert_eq!(ids, vec![live]);
    srv.shutdown.cancel();
}

/// A backlog larger than the live events a session holds during its replay: every replayed row
/// echoes back as a live `Delivered` (and, acked, an `Acked`) event of the same user, which
/// must not count as live traffic that overflows the hold (found by the resume benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_replay_hold_arrives_whole() {
    let config = GatewayConfig {
        producer_rate: 1e6,
        producer_burst: 1e6,
        ..config()
    };
    let srv = server(config, true).await;
    const N: usize = 10_000; // echoes well past MAX_HELD (4 × SESSION_LIVE_QUEUE)
    let http = http();
    let posts = (0..N).map(|i| {
        let (http, url) = (http.clone(), format!("{}/v1/notifications", srv.http));
        async move {
            let r = http
                .post(url)
                .json(&json!({"recipients": {"users": ["alice"]}, "event_type": "t", "source": "ws-test", "data": {"i": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    });
    futures_util::stream::iter(posts)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    // The whole backlog in the projection first, so what comes live is only the echo.
    srv.wait_unread("alice", N as u64).await;
    let (mut c, _) = connect(&srv.ws, &bearer("alice"), "phone", None)
        .await
        .unwrap();
    // Acknowledge cumulatively every 64, as a client under a backlog should. On a loaded
    // machine some notifications are resent (attempt > 1) before the ACK arrives: those are
    // redeliveries, not first sends, and the client dedupes them by id.
    let (mut ids, mut seqs) = (Vec::new(), Vec::new());
    let mut distinct = HashSet::new();
    while distinct.len() < N {
        let f = tokio::time::timeout(GUARD, c.next())
            .await
            .expect("frames stopped")
            .unwrap();
        if let ServerFrame::Notification {
            id,
            seq,
            cursor,
            attempt,
            ..
        } = f
        {
            if attempt == 1 {
                ids.push(id.clone());
                seqs.push(seq);
            }
            if distinct.insert(id) && (distinct.len() % 64 == 0 || distinct.len() == N) {
                c.ack(&[], Some(&cursor)).await.unwrap();
            }
        }
    }
    assert_eq!(ids.len(), N, "each notification is first-sent once");
    assert_unique_increasing(&ids, &seqs);
    srv.shutdown.cancel();
}

/// The projection lags the log (its inbox stage is paused, then resumed mid-session): the
/// session fills the gap from the log, and neither a gap nor a duplicate appears at the
/// replay/live boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_under_projection_lag_has_no_gap_and_no_duplicate() {
    let mut srv = server(config(), false).await;
    let mut posted = Vec::new();
    for i in 0..40 {
        posted.push(srv.post(&["alice", "bob"], &format!("lag-a{i}")).await);
    }
    let (mut c, _) = connect(&srv.ws, &bearer("alice"), "phone", None)
        .await
        .unwrap();
    // Catch the projection up while the session runs, and keep producing.
    let producer = {
        let http = srv.http.clone();
        tokio::spawn(async move {
            let client = common::http();
            let mut ids = Vec::new();
            for i in 0..40 {
                let v: Value = client
                    .post(format!("{http}/v1/notifications"))
                    .header("idempotency-key", format!("lag-b{i}"))
                    .json(&json!({"recipients": {"users": ["alice"]}, "event_type": "t", "source": "s"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.push(v["notification_id"].as_str().unwrap().to_owned());
            }
            ids
        })
    };
    srv.start_inbox();
    let later = producer.await.unwrap();
    posted.extend(later);
    let (ids, seqs, replayed) = collect(&mut c, 80, true).await;
    assert!(replayed);
    assert_eq!(ids.len(), 80);
    assert_all_once_in_order(&ids, &seqs, &posted);

    // Pause the projection again and resume a second device mid-stream.
    srv.stop_inbox();
    for i in 0..20 {
        posted.push(srv.post(&["alice"], &format!("lag-c{i}")).await);
    }
    let (mut d, _) = connect(&srv.ws, &bearer("alice"), "laptop", None)
        .await
        .unwrap();
    srv.start_inbox();
    let (ids, seqs, _) = collect(&mut d, 100, true).await;
    assert_all_once_in_order(&ids, &seqs, &posted);
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_authenticated_before_upgrading() {
    let cfg = GatewayConfig {
        allowed_origins: vec![],
        max_connections_per_user: 1,
        ..config()
    };
    let srv = server(cfg, true).await;
    let refused = |r: Result<herald_client::Connection, ClientError>| match r {
        Err(ClientError::Refused { status, body }) => (status, body),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got a socket"),
    };
    let none_alg = {
        use base64_shim::encode;
        format!(
            "{}.{}.",
            encode(br#"{"alg":"none","typ":"JWT"}"#),
            encode(
                format!(
                    r#"{{"sub":"alice","exp":{}}}"#,
                    herald_gateway::auth::now_secs() + 600
                )
                .as_bytes()
            )
        )
    };
    let wrong_key = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "alice", "exp": herald_gateway::auth::now_secs() + 600}),
        &EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    for (creds, what) in [
        (Credentials::None, "no credentials"),
        (Credentials::Bearer("garbage".into()), "malformed"),
        (Credentials::Bearer(token("alice", -120)), "expired"),
        (Credentials::Bearer(wrong_key), "wrong key"),
        (Credentials::Bearer(none_alg), "alg none"),
        (Credentials::Ticket("nope".into()), "unknown ticket"),
    ] {
        let (status, body) = refused(open(&srv.ws, &creds, true).await);
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains("unauthorized"), "{what}: {body}");
    }
    // Tickets are single use.
    let ticket = Credentials::Ticket(srv.ticket("alice").await);
    let (c, info) = connect(&srv.ws, &ticket, "browser", None).await.unwrap();
    assert_eq!(info.user_id, "alice");
    let (status, _) = refused(open(&srv.ws, &ticket, true).await);
    assert_eq!(status, 401, "a ticket works once");
    // Per-user limit (1): a second connection of alice is refused.
    let (status, body) = refused(open(&srv.ws, &bearer("alice"), true).await);
    assert_eq!(status, 429, "{body}");
    c.close().await;
    // The subprotocol is required.
    let (status, body) = refused(open(&srv.ws, &bearer("bob"), false).await);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("subprotocol_required"));
    srv.shutdown.cancel();
}

/// Minimal base64url without padding, to forge an `alg: none` token.
mod base64_shim {
    pub fn encode(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

async fn expect_close(c: &mut herald_client::Connection) -> (u16, String) {
    loop {
        match tokio::time::timeout(GUARD, c.next())
            .await
            .expect("no close")
        {
            Err(ClientError::Closed { code, reason }) => return (code, reason),
            Err(e) => panic!("expected a close frame, got {e}"),
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_with_documented_codes() {
    use tokio_tungstenite::tungstenite::Message;
    let srv = server(
        GatewayConfig {
            hello_timeout: Duration::from_millis(300),
            ..config()
        },
        true,
    )
    .await;
    let cases: Vec<(Vec<Message>, u16)> = vec![
        (vec![Message::text(r#"{"type":"ack","ids":[]}"#)], 4000),
        (vec![Message::text("{not json")], 4000),
        (vec![Message::text(r#"{"type":"teleport"}"#)], 4000),
        (vec![Message::binary(vec![1, 2, 3])], 4000),
        (
            vec![Message::text(r#"{"type":"hello","device_id":"bad id!"}"#)],
            4000,
        ),
        (
            vec![Message::text(
                r#"{"type":"hello","device_id":"d","cursor":"junk"}"#,
            )],
            4000,
        ),
        (
            vec![
                Message::text(r#"{"type":"hello","device_id":"d"}"#),
                Message::text(r#"{"type":"hello","device_id":"d"}"#),
            ],
            4000,
        ),
        (vec![Message::text("x".repeat(70 * 1024))], 1009),
        // A control frame over 125 bytes is a protocol error, not a message too big.
        (vec![Message::Ping(vec![7u8; 126].into())], 4000),
        (vec![], 4001),
    ];
    for (frames, code) in cases {
        let mut c = open(&srv.ws, &bearer("carol"), true).await.unwrap();
        for f in frames.clone() {
            c.send_raw(f).await.unwrap();
        }
        let (got, reason) = expect_close(&mut c).await;
        assert_eq!(got, code, "{frames:?}: {reason}");
        assert!(!reason.is_empty());
    }
    // A bad id inside a frame is a non-fatal error; the session goes on.
    let (mut c, _) = connect(&srv.ws, &bearer("carol"), "d", None).await.unwrap();
    c.send(&ClientFrame::Ack {
        ids: vec!["bad id".into()],
        up_to: None,
    })
    .await
    .unwrap();
    c.send(&ClientFrame::Ping {}).await.unwrap();
    let mut saw_error = false;
    loop {
        match tokio::time::timeout(GUARD, c.next())
            .await
            .unwrap()
            .unwrap()
        {
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, "invalid_request");
                saw_error = true;
            }
            ServerFrame::Pong => break,
            _ => {}
        }
    }
    assert!(saw_error);
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_notifications_are_redelivered_within_the_window() {
    let mut cfg = config();
    cfg.delivery.max_in_flight = 2;
    let srv = server(cfg, true).await;
    for i in 0..3 {
        srv.post(&["dave"], &format!("w{i}")).await;
    }
    let (mut c, _) = connect(&srv.ws, &bearer("dave"), "d", None).await.unwrap();
    let mut attempts: HashMap<u64, Vec<u32>> = HashMap::new();
    // Without ACKs: only the first two are in flight, and each is resent.
    while attempts.values().filter(|a| a.len() >= 2).count() < 2 {
        if let ServerFrame::Notification { seq, attempt, .. } =
            tokio::time::timeout(GUARD, c.next())
                .await
                .unwrap()
                .unwrap()
        {
            attempts.entry(seq).or_default().push(attempt);
        }
    }
    assert_eq!(attempts.len(), 2, "the window holds two: {attempts:?}");
    for a in attempts.values() {
        assert_eq!(a[..2], [1, 2]);
    }
    // ACK everything sent so far: the third comes.
    let seqs: Vec<u64> = attempts.keys().copied().collect();
    let max = *seqs.iter().max().unwrap();
    let epoch = match tokio::time::timeout(GUARD, c.next())
        .await
        .expect("a frame")
        .unwrap()
    {
        ServerFrame::Notification { cursor, .. } => cursor.split('-').next().unwrap().to_owned(),
        _ => unreachable!(),
    };
    c.ack(&[], Some(&format!("{epoch}-{max}"))).await.unwrap();
    loop {
        if let ServerFrame::Notification {
            seq, attempt: 1, ..
        } = tokio::time::timeout(GUARD, c.next())
            .await
            .unwrap()
            .unwrap()
        {
            assert!(seq > max);
            break;
        }
    }
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_reach_the_users_other_devices_and_never_another_user() {
    let srv = server(config(), true).await;
    let id = srv.post(&["erin"], "m1").await;
    let bob_id = srv.post(&["frank"], "m2").await;
    let (mut phone, _) = connect(&srv.ws, &bearer("erin"), "phone", None)
        .await
        .unwrap();
    let (mut laptop, _) = connect(&srv.ws, &bearer("erin"), "laptop", None)
        .await
        .unwrap();
    collect(&mut phone, 1, true).await;
    collect(&mut laptop, 1, true).await;
    // Presence shows both devices of erin.
    let presence: Value = http()
        .get(format!("{}/v1/presence", srv.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let erin = presence["online"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == "erin")
        .unwrap()
        .clone();
    let mut devices: Vec<&str> = erin["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, vec!["laptop", "phone"]);
    // Erin reads on the phone; the laptop hears of it.
    phone
        .send(&ClientFrame::Read {
            ids: vec![id.clone()],
            up_to: None,
        })
        .await
        .unwrap();
    loop {
        if let ServerFrame::Mark {
            kind,
            ids,
            device_id,
            ..
        } = tokio::time::timeout(GUARD, laptop.next())
            .await
            .unwrap()
            .unwrap()
        {
            assert_eq!(
                (kind.as_str(), ids, device_id.as_deref()),
                ("read", vec![id.clone()], Some("phone"))
            );
            break;
        }
    }
    // Erin tries to read and archive Frank's notification, over WS and HTTP: nothing changes for Frank.
    phone
        .send(&ClientFrame::Read {
            ids: vec![bob_id.clone()],
            up_to: None,
        })
        .await
        .unwrap();
    let resp = http()
        .post(format!("{}/v1/inbox/archive", srv.http))
        .bearer_auth(token("erin", 600))
        .json(&json!({"ids": [bob_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frank: Value = http()
        .get(format!("{}/v1/inbox", srv.http))
        .bearer_auth(token("frank", 600))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(frank["unread_count"], 1);
    assert_eq!(frank["items"][0]["read"], false);
    assert_eq!(frank["items"][0]["archived"], false);
    // And the inbox API needs a token.
    let anon = http()
        .get(format!("{}/v1/inbox", srv.http))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires_and_one_that_never_expires_outlives_it() {
    let srv = server(config(), true).await;
    // Expired a second ago, within the 5 s of clock skew the upgrade allows: the session runs
    // until the skew is spent too, then closes with 4002 (token expired).
    let (mut short, _) = connect(
        &srv.ws,
        &Credentials::Bearer(token("ines", -1)),
        "phone",
        None,
    )
    .await
    .unwrap();
    // `exp` at u64::MAX: no `Instant` reaches it; the session has no expiry (no panic, no
    // early close).
    let forever = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "ines", "exp": u64::MAX}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let (mut long, _) = connect(&srv.ws, &Credentials::Bearer(forever), "laptop", None)
        .await
        .unwrap();
    // Delivered to the session inside the skew (it was closed at once before).
    let id = srv.post(&["ines"], "within-skew").await;
    let (ids, _, _) = collect(&mut short, 1, true).await;
    assert_eq!(ids, std::slice::from_ref(&id));
    let (code, reason) = expect_close(&mut short).await;
    assert_eq!(code, 4002, "{reason}");
    // The session without expiry still delivers.
    let later = srv.post(&["ines"], "after-expiry").await;
    let (ids, _, _) = collect(&mut long, 2, true).await;
    assert_eq!(ids, [id, later]);
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_of_a_device_replaces_the_first_and_shutdown_says_going_away() {
    let srv = server(config(), true).await;
    let (mut first, _) = connect(&srv.ws, &bearer("gina"), "phone", None)
        .await
        .unwrap();
    let (mut second, _) = connect(&srv.ws, &bearer("gina"), "phone", None)
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut first).await;
    assert_eq!(code, 4010, "{reason}");
    srv.shutdown.cancel();
    let (code, reason) = expect_close(&mut second).await;
    assert_eq!(code, 1001, "{reason}");
}

/// Reads SSE `data:` frames until `pred` says stop.
async fn sse_frames(
    resp: reqwest::Response,
    mut stop: impl FnMut(&[ServerFrame]) -> bool,
) -> Vec<ServerFrame> {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut frames = Vec::new();
    while !stop(&frames) {
        let chunk = tokio::time::timeout(GUARD, body.next())
            .await
            .expect("SSE stalled")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    frames.push(serde_json::from_str(data).unwrap());
                }
            }
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_fallback_replays_and_acks_over_http() {
    let srv = server(config(), true).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(srv.post(&["hana"], &format!("sse{i}")).await);
    }
    let http = http();
    let open_sse = || {
        http.get(format!("{}/v1/sse?device_id=tablet", srv.http))
            .bearer_auth(token("hana", 600))
            .send()
    };
    let resp = open_sse().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A 202 means the request is durable; expansion follows, so some may come live.
    let notifications = |f: &[ServerFrame]| {
        f.iter()
            .filter(|x| matches!(x, ServerFrame::Notification { .. }))
            .count()
    };
    let frames = sse_frames(resp, |f| notifications(f) >= 3).await;
    assert!(matches!(frames[0], ServerFrame::Session { .. }));
    let got: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Notification { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(got, ids);
    // ACK the first two over HTTP; a new stream replays only the third.
    let ack = http
        .post(format!("{}/v1/ack", srv.http))
        .bearer_auth(token("hana", 600))
        .json(&json!({"device_id": "tablet", "ids": [ids[0], ids[1]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames = sse_frames(open_sse().await.unwrap(), |f| {
        f.iter().any(|x| matches!(x, ServerFrame::Replayed { .. }))
    })
    .await;
    let again: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Notification { id, attempt: 1, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![ids[2].clone()]);
    // Bad input is refused before the stream starts.
    let bad = http
        .get(format!("{}/v1/sse?device_id=bad%20id", srv.http))
        .bearer_auth(token("hana", 600))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let anon = http
        .get(format!("{}/v1/sse?device_id=t", srv.http))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_topics_and_roles_are_managed_through_the_api_as_events() {
    let srv = server(config(), true).await;
    let http = http();
    let put = |path: String, body: Option<Value>| {
        let req = http.put(format!("{}{path}", srv.http));
        match body {
            Some(b) => req.json(&b),
            None => req,
        }
        .send()
    };
    for (path, body) in [
        (
            "/v1/roles/ops".to_string(),
            Some(json!({"topics": ["incidents"]})),
        ),
        (
            "/v1/users/olaf".to_string(),
            Some(json!({"roles": ["ops"]})),
        ),
        ("/v1/topics/incidents/subscribers/olaf".to_string(), None),
        ("/v1/topics/payroll/subscribers/olaf".to_string(), None),
        ("/v1/topics/payroll/subscribers/pia".to_string(), None),
        ("/v1/groups/team/members/olaf".to_string(), None),
        ("/v1/groups/team/members/pia".to_string(), None),
    ] {
        let r = put(path.clone(), body).await.unwrap();
        assert_eq!(r.status(), 202, "{path}");
    }
    let post = |recipients: Value, key: &str| {
        http.post(format!("{}/v1/notifications", srv.http))
            .header("idempotency-key", key)
            .json(&json!({"recipients": recipients, "event_type": "t", "source": "s"}))
            .send()
    };
    post(json!({"groups": ["team"]}), "g1").await.unwrap();
    post(json!({"topic": "incidents"}), "t1").await.unwrap();
    post(json!({"topic": "payroll"}), "t2").await.unwrap();
    let r = http
        .delete(format!("{}/v1/groups/team/members/pia", srv.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    post(json!({"groups": ["team"]}), "g2").await.unwrap();
    let inbox = |user: &'static str| {
        let srv = &srv;
        async move {
            let v = srv.get_json("/v1/inbox", user).await;
            let mut keys: Vec<String> = v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect();
            keys.sort();
            keys
        }
    };
    let id = |k: &str| herald_core::ids::notification_id("dev", k);
    let mut olaf_expected = vec![id("g1"), id("t1"), id("g2")];
    olaf_expected.sort();
    let mut pia_expected = vec![id("g1"), id("t2")];
    pia_expected.sort();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (olaf, pia) = (inbox("olaf").await, inbox("pia").await);
        if olaf == olaf_expected && pia == pia_expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "olaf (ops: incidents only) {olaf:?}, pia (no roles, left team) {pia:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bad names are refused with a reason.
    let r = put("/v1/groups/bad%20id/members/x".into(), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = put("/v1/roles/r".into(), Some(json!({"topics": ["no spaces"]})))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = put("/v1/roles/r".into(), Some(json!({"topic": []})))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_jwks_keys_verify_tokens() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey};
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(include_bytes!("keys/ec-private.pem")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("idp-1".into());
    let jwks = serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap();
    let cfg = |auth: AuthConfig| GatewayConfig { auth, ..config() };
    let sign = |alg: Algorithm, key: &EncodingKey, kid: Option<&str>| {
        let mut h = Header::new(alg);
        h.kid = kid.map(Into::into);
        let exp = herald_gateway::auth::now_secs() + 600;
        jsonwebtoken::encode(&h, &json!({"sub": "kim", "exp": exp}), key).unwrap()
    };
    // PEM public keys.
    let srv = server(
        cfg(AuthConfig {
            rs256_public_pems: vec![include_bytes!("keys/rsa-public.pem").to_vec()],
            es256_public_pems: vec![include_bytes!("keys/ec-public.pem").to_vec()],
            ..Default::default()
        }),
        true,
    )
    .await;
    for (alg, key) in [(Algorithm::RS256, &rsa), (Algorithm::ES256, &ec)] {
        let (_, info) = connect(
            &srv.ws,
            &Credentials::Bearer(sign(alg, key, None)),
            "d",
            None,
        )
        .await
        .unwrap();
        assert_eq!(info.user_id, "kim", "{alg:?}");
    }
    // An HS256 token is refused when no secret is configured.
    let hs = token("kim", 600);
    assert!(matches!(
        open(&srv.ws, &Credentials::Bearer(hs), true).await,
        Err(ClientError::Refused { status: 401, .. })
    ));
    srv.shutdown.cancel();
    // A JWKS document, with key ids.
    let srv = server(
        cfg(AuthConfig {
            jwks: vec![jwks],
            ..Default::default()
        }),
        true,
    )
    .await;
    let (_, info) = connect(
        &srv.ws,
        &Credentials::Bearer(sign(Algorithm::RS256, &rsa, Some("idp-1"))),
        "d",
        None,
    )
    .await
    .unwrap();
    assert_eq!(info.user_id, "kim");
    let wrong_kid = sign(Algorithm::RS256, &rsa, Some("idp-2"));
    assert!(matches!(
        open(&srv.ws, &Credentials::Bearer(wrong_kid), true).await,
        Err(ClientError::Refused { status: 401, .. })
    ));
    let es = sign(Algorithm::ES256, &ec, Some("idp-1"));
    assert!(matches!(
        open(&srv.ws, &Credentials::Bearer(es), true).await,
        Err(ClientError::Refused { status: 401, .. })
    ));
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_origin_rate_and_silent_peers_are_enforced() {
    let srv = server(
        GatewayConfig {
            allowed_origins: vec!["https://app.example".into()],
            heartbeat_interval: Duration::from_millis(200),
            pong_timeout: Duration::from_millis(200),
            frame_rate: 5.0,
            frame_burst: 10.0,
            ..config()
        },
        true,
    )
    .await;
    // Origin allowlist: a foreign Origin is refused with 403 before the upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = srv.ws.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "herald.v1".parse().unwrap());
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("lea", 600)).parse().unwrap(),
    );
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut req = srv.ws.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "herald.v1".parse().unwrap());
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("lea", 600)).parse().unwrap(),
    );
    req.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("allowed origin");
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"hello","device_id":"d"}"#,
    ))
    .await
    .unwrap();
    // A peer that stops reading never answers pings: it is reaped with 4011.
    tokio::time::sleep(Duration::from_millis(900)).await;
    use futures_util::StreamExt;
    let mut code = None;
    while let Some(Ok(m)) = tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
        if let tokio_tungstenite::tungstenite::Message::Close(Some(f)) = m {
            code = Some(u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(4011), "silent peer reaped");
    srv.shutdown.cancel();

    // Frames beyond the per-connection rate: 4009 (the origin check needs no Origin here).
    let srv = server(
        GatewayConfig {
            frame_rate: 5.0,
            frame_burst: 10.0,
            ..config()
        },
        true,
    )
    .await;
    let (mut c, _) = connect(&srv.ws, &bearer("lea"), "d", None).await.unwrap();
    for _ in 0..30 {
        if c.send(&ClientFrame::Ping {}).await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut c).await.0, 4009);
    srv.shutdown.cancel();
}

/// A client that ACKs each notification by id as it arrives (clients/js does) through a replay
/// far larger than the frame rate allows in a second is not rate limited: an ACK answering a
/// notification frame sent takes no token. ACKs beyond those still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_what_was_sent_are_not_rate_limited_and_more_are() {
    let srv = server(
        GatewayConfig {
            frame_rate: 5.0,
            frame_burst: 10.0,
            ..config()
        },
        true,
    )
    .await;
    const N: usize = 200;
    for i in 0..N {
        srv.post(&["ivy"], &format!("ivy-{i}")).await;
    }
    srv.wait_unread("ivy", N as u64).await;
    let (mut c, _) = connect(&srv.ws, &bearer("ivy"), "d", None).await.unwrap();
    let (ids, seqs, _) = collect(&mut c, N, true).await;
    assert_eq!(ids.len(), N);
    assert_unique_increasing(&ids, &seqs);
    // Still open: a ping is answered (the bucket was never drawn on by the ACKs).
    c.send(&ClientFrame::Ping {}).await.unwrap();
    while !matches!(
        tokio::time::timeout(GUARD, c.next())
            .await
            .expect("a pong")
            .unwrap(),
        ServerFrame::Pong
    ) {}
    // ACKs of nothing the server sent take tokens: a burst of them is closed with 4009.
    for _ in 0..N {
        if c.ack(&["n-none".into()], None).await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut c).await.0, 4009);
    srv.shutdown.cancel();
}

/// Posts 600 notifications of 48 KiB each (about 29 MB, more than a socket's buffers hold) to
/// `user` and waits until the projection has them all; their ids, in order.
async fn backlog_of_large(srv: &Server, user: &str) -> Vec<String> {
    backlog_of(srv, user, 600).await
}

/// `n` notifications of 48 KiB each for `user`, in its projection; their ids in order.
async fn backlog_of(srv: &Server, user: &str, n: u64) -> Vec<String> {
    let big = "x".repeat(48 * 1024);
    let http = http();
    let mut ids = Vec::new();
    for i in 0..n {
        let v: Value = http
            .post(format!("{}/v1/notifications", srv.http))
            .header("idempotency-key", format!("big-{user}-{i}"))
            .json(&json!({"recipients": {"users": [user]}, "event_type": "t", "source": "s", "data": big}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(v["notification_id"].as_str().unwrap().to_owned());
    }
    srv.wait_unread(user, n).await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_loses_nothing() {
    let mut cfg = config();
    // A window this wide (by count and by weight) sends the whole backlog: the send queue fills.
    cfg.delivery.max_in_flight = 4000;
    cfg.delivery.max_in_flight_bytes = usize::MAX;
    cfg.slow_consumer_timeout = Duration::from_millis(800);
    let srv = server(cfg, true).await;
    let ids = backlog_of_large(&srv, "max").await;
    // All 600 are in the projection: connect and do not read.
    let (mut slow, _) = connect(&srv.ws, &bearer("max"), "phone", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // ~29 MB were due; the socket buffers hold a few MB, then the send queue stays full: 4008.
    let (code, _) = expect_close(&mut slow).await;
    assert_eq!(code, 4008);
    // Nothing is lost: a reader that keeps up gets all of them.
    let (mut c, _) = connect(&srv.ws, &bearer("max"), "phone", None)
        .await
        .unwrap();
    let (got, seqs, _) = collect(&mut c, 600, true).await;
    assert_all_once_in_order(&got, &seqs, &ids);
    srv.shutdown.cancel();
}

/// A device that reads but does not ACK, with a backlog of large notifications: the window is
/// bounded by weight (1 MiB) as well as by count, so it is sent about 1 MiB of them, not the
/// whole window's count (29 MB here); once it ACKs, the rest comes, each once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_bounded_by_weight() {
    let mut cfg = config();
    cfg.delivery.max_in_flight = 4000;
    let srv = server(cfg, true).await;
    let ids = backlog_of_large(&srv, "wes").await;
    let (mut c, _) = connect(&srv.ws, &bearer("wes"), "phone", None)
        .await
        .unwrap();
    let mut first = Vec::new();
    let quiet = Duration::from_millis(1500);
    while let Ok(f) = tokio::time::timeout(quiet, c.next()).await {
        if let ServerFrame::Notification { id, attempt: 1, .. } = f.unwrap() {
            first.push(id);
        }
    }
    let most = herald_core::delivery::MAX_IN_FLIGHT_BYTES / (48 * 1024) + 1;
    assert!(
        !first.is_empty() && first.len() <= most,
        "{} sent before any ACK (at most {most})",
        first.len()
    );
    c.ack(&first, None).await.unwrap();
    let (got, _, _) = collect(&mut c, 600 - first.len(), true).await;
    let all: Vec<String> = first.into_iter().chain(got).collect();
    assert_eq!(all, ids, "each once, in order");
    srv.shutdown.cancel();
}

/// Devices that read but do not ACK, each with a backlog of large notifications: unbudgeted,
/// each session holds a window (1 MiB) and a page of its backlog (1 MiB). With a budget of
/// 2 MiB for all sessions (`max_session_bytes`), four of them hold about that together, and a
/// fifth device that ACKs still gets its whole backlog, once each and in order. When they
/// close, the budget is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_together_hold_about_their_budget() {
    const BUDGET: usize = 2 << 20;
    let mut cfg = config();
    cfg.max_session_bytes = BUDGET;
    let srv = server(cfg, true).await;
    let mut stuck = Vec::new();
    for u in 0..4 {
        let user = format!("stuck{u}");
        backlog_of(&srv, &user, 60).await;
        let (mut c, _) = connect(&srv.ws, &bearer(&user), "phone", None)
            .await
            .unwrap();
        let quiet = Duration::from_millis(500);
        while tokio::time::timeout(quiet, c.next()).await.is_ok() {}
        stuck.push(c);
    }
    // A row weighs its payload and a little more; a session holding nothing reads one row
    // whatever the budget says, and a read may bring one over.
    let slack = 4 * 2 * 50 * 1024;
    let held = srv.state.session_bytes.used();
    assert!(
        held >= BUDGET / 2 && held <= BUDGET + slack,
        "the four sessions hold {held} bytes, against a budget of {BUDGET}"
    );
    let ids = backlog_of(&srv, "reader", 60).await;
    let (mut c, _) = connect(&srv.ws, &bearer("reader"), "phone", None)
        .await
        .unwrap();
    let (got, _, _) = collect(&mut c, 60, true).await;
    assert_eq!(got, ids, "each once, in order");
    drop((c, stuck));
    let deadline = std::time::Instant::now() + GUARD;
    while srv.state.session_bytes.used() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sessions' bytes were not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.shutdown.cancel();
}

/// A repeated expansion (the same notification appended again at a later seq, as a fanout that
/// crashed between its appends could have done) is not sent to a device as a new notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_expansion_is_not_sent_as_a_new_notification() {
    use herald_ports::Topic;
    let srv = server(config(), true).await;
    let (mut c, _) = connect(&srv.ws, &bearer("rep"), "d1", None).await.unwrap();
    let first = srv.post(&["rep"], "rep-1").await;
    let seq = loop {
        if let ServerFrame::Notification { id, seq, .. } = tokio::time::timeout(GUARD, c.next())
            .await
            .unwrap()
            .unwrap()
            && id == first
        {
            break seq;
        }
    };
    // The same notification appended again, straight into the user's partition.
    let added = herald_core::model::UserEvent::Added(herald_core::model::NotificationAdded {
        user_id: "rep".into(),
        notification_id: first.clone(),
        event_type: "t".into(),
        source: "ws-test".into(),
        payload: "{}".into(),
        priority: Default::default(),
        collapse_key: None,
        deliver_at: None,
        expires_at: None,
        created_at: 1,
        traceparent: None,
        delivery: herald_core::model::Delivery::Live,
    });
    let record = srv.state.user_event_record(&added).unwrap();
    srv.state
        .log
        .append(Topic::UserEvents, vec![record])
        .await
        .unwrap();
    // A later notification is the barrier: the repeat precedes it in the user's partition.
    let later = srv.post(&["rep"], "rep-2").await;
    loop {
        match tokio::time::timeout(GUARD, c.next())
            .await
            .unwrap()
            .unwrap()
        {
            ServerFrame::Notification { id, seq: s, .. } if id == first => {
                assert_eq!(s, seq, "the repeat was sent as a new notification")
            }
            ServerFrame::Notification { id, .. } if id == later => break,
            _ => {}
        }
    }
    // An ACK by id settles the notification whatever seq the repeat would have had: once the
    // projection has it, a reconnect of the device replays neither.
    c.ack(&[first.clone(), later.clone()], None).await.unwrap();
    c.close().await;
    use herald_ports::InboxReader;
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let now = herald_gateway::clock::now_ms();
        // Both rows in the projection (not merely not applied yet), then, read after them,
        // neither pending: the ACK, which follows them in the log, is applied.
        let mut rows = 0;
        for id in [&first, &later] {
            rows += srv.store.row("rep", id).await.unwrap().is_some() as usize;
        }
        let pending = srv
            .store
            .pending(
                "rep",
                "d1",
                None,
                now,
                herald_ports::projection::PageBound::rows(100),
            )
            .await
            .unwrap();
        if rows == 2
            && !pending
                .iter()
                .any(|r| r.notification_id == first || r.notification_id == later)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ACKs by id never cleared the rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut c, _) = connect(&srv.ws, &bearer("rep"), "d1", None).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, c.next())
            .await
            .unwrap()
            .unwrap()
        {
            ServerFrame::Notification { id, .. } => {
                assert!(
                    id != first && id != later,
                    "{id} was replayed after its ACK"
                )
            }
            ServerFrame::Replayed { .. } => break,
            _ => {}
        }
    }
    srv.shutdown.cancel();
}

/// "Everyone" includes users who only ever connected: opening a session makes a user known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_reaches_users_who_have_only_connected() {
    let srv = server(config(), true).await;
    let mut clients = Vec::new();
    for u in ["e1", "e2", "e3"] {
        clients.push(connect(&srv.ws, &bearer(u), "d", None).await.unwrap().0);
    }
    // Each connection appends a `DeviceConnected` in the background; wait until the directory
    // resolves "everyone" to all three users.
    use herald_ports::DirectoryReader;
    let everyone = herald_core::model::Recipients {
        everyone: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let known = srv.store.resolve(&everyone).await.unwrap();
        if ["e1", "e2", "e3"]
            .iter()
            .all(|u| known.iter().any(|k| k == u))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never known: {known:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp: Value = http()
        .post(format!("{}/v1/notifications", srv.http))
        .json(&json!({"recipients": {"everyone": true}, "event_type": "t", "source": "ws-test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = resp["notification_id"].as_str().unwrap().to_owned();
    for c in &mut clients {
        loop {
            if let ServerFrame::Notification { id: got, .. } = tokio::time::timeout(GUARD, c.next())
                .await
                .unwrap()
                .unwrap()
                && got == id
            {
                break;
            }
        }
    }
    srv.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_marks_reach_the_log_in_the_order_it_sent_them() {
    let srv = server(config(), true).await;
    let id = srv.post(&["gina"], "o1").await;
    let (mut phone, _) = connect(&srv.ws, &bearer("gina"), "phone", None)
        .await
        .unwrap();
    let (mut laptop, _) = connect(&srv.ws, &bearer("gina"), "laptop", None)
        .await
        .unwrap();
    collect(&mut phone, 1, true).await;
    collect(&mut laptop, 1, true).await;
    // Read, unread, read, … of one notification, as fast as the phone can send them: each is
    // a toggle, so only the order they were sent in gives the right end state.
    const MARKS: usize = 400;
    for i in 0..MARKS {
        let frame = if i % 2 == 0 {
            ClientFrame::Read {
                ids: vec![id.clone()],
                up_to: None,
            }
        } else {
            ClientFrame::Unread {
                ids: vec![id.clone()],
            }
        };
        phone.send(&frame).await.unwrap();
    }
    // The laptop hears the marks in the log's order.
    let mut kinds = Vec::with_capacity(MARKS);
    while kinds.len() < MARKS {
        if let ServerFrame::Mark { kind, ids, .. } = tokio::time::timeout(GUARD, laptop.next())
            .await
            .unwrap()
            .unwrap()
        {
            assert_eq!(ids, vec![id.clone()]);
            kinds.push(kind);
        }
    }
    let sent: Vec<&str> = (0..MARKS)
        .map(|i| if i % 2 == 0 { "read" } else { "unread" })
        .collect();
    assert_eq!(kinds, sent, "marks reached the log out of the order sent");
    // And the inbox ends as the last mark left it.
    srv.wait_unread("gina", 1).await;
    let inbox = srv.get_json("/v1/inbox", "gina").await;
    assert_eq!(inbox["items"][0]["read"], false);
    srv.shutdown.cancel();
}

/// An SSE peer that stops reading is closed as a slow consumer; its close event cannot reach
/// it, and the connection is dropped within the close handshake's time, freeing its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_peer_that_stops_reading_does_not_keep_its_slot() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config();
    // A window this wide (by count and by weight) sends the whole backlog: the queue fills.
    cfg.delivery.max_in_flight = 4000;
    cfg.delivery.max_in_flight_bytes = usize::MAX;
    cfg.slow_consumer_timeout = Duration::from_millis(800);
    cfg.max_connections_per_user = 1;
    let srv = server(cfg, true).await;
    backlog_of_large(&srv, "nell").await;
    let http = http();
    // A peer with a small receive buffer that sends its request and never reads.
    let addr: std::net::SocketAddr = srv.http.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(addr).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET /v1/sse?device_id=phone HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {}\r\n\r\n",
                token("nell", 600)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Its one slot is taken: a second stream is refused while the first holds it …
    let second = || {
        http.get(format!("{}/v1/sse?device_id=laptop", srv.http))
            .bearer_auth(token("nell", 600))
            .send()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(second().await.unwrap().status(), 429);
    // … until the server has given up on it: ~29 MB were due, the queue stays full (4008
    // after 0.8 s), the close event cannot be written, and the connection is dropped.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let resp = second().await.unwrap();
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck stream still holds the user's slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stuck);
    srv.shutdown.cancel();
}

/// A silent peer is closed when its interval plus the pong timeout have passed since it last
/// showed a sign of life, not at the heartbeat tick after that (which is up to an interval
/// later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_at_interval_plus_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = server(
        GatewayConfig {
            heartbeat_interval: Duration::from_secs(3),
            pong_timeout: Duration::from_millis(100),
            ..config()
        },
        true,
    )
    .await;
    let mut req = srv.ws.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "herald.v1".parse().unwrap());
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("mo", 600)).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(r#"{"type":"hello","device_id":"d"}"#))
        .await
        .unwrap();
    // Silent (nothing read, so the ping at 3 s is not answered) until 4.5 s: the server gave
    // up at 3.1 s. Had it waited for its next tick (6 s), the pong that reading sends now would
    // keep the session open.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut code = None;
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(Some(f)) = m {
                code = Some(u16::from(f.code));
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    assert_eq!(
        code,
        Some(4011),
        "closed when its silence passed interval + timeout"
    );
    srv.shutdown.cancel();
}

/// A request body that does not all arrive within the body read timeout is answered `408
/// request_timeout`, and the request ends: with the plain JSON type and with another that is
/// JSON too (read through axum's own check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config();
    cfg.http.body_read_timeout = Duration::from_millis(500);
    let srv = server(cfg, true).await;
    let addr = srv.http.trim_start_matches("http://").to_owned();
    for content_type in ["application/json", "application/json; charset=utf-8"] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // 100 bytes announced, 15 sent, then nothing.
        let head = format!(
            "POST /v1/notifications HTTP/1.1\r\nHost: herald\r\nContent-Type: {content_type}\r\n\
             Content-Length: 100\r\n\r\n{{\"recipients\":"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(GUARD, c.read_to_end(&mut answer))
            .await
            .expect("answered and closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{content_type}: {answer}"
        );
        assert!(
            answer.contains(r#""code":"request_timeout""#),
            "{content_type}: {answer}"
        );
    }
    srv.shutdown.cancel();
}
