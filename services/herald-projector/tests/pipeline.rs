//! The projector on the real embedded log and projection (SQLite files in a temp dir).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::ids::notification_id;
use herald_core::model::*;
use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};
use herald_ports::Stage;
use herald_ports::log::{EventLog, Topic};
use herald_ports::prelude::*;
use herald_ports::records::request_record;
use herald_projector::{Projector, rebuild};
use tokio_util::sync::CancellationToken;

struct Env {
    dir: tempfile::TempDir,
    log: Arc<EmbeddedLog>,
    store: Arc<EmbeddedProjection>,
}

async fn open(dir: tempfile::TempDir) -> Env {
    let log = EmbeddedLog::open(
        &dir.path().join("log.db"),
        Access::ReadWrite,
        LogOptions::default(),
    )
    .await
    .unwrap();
    let store = EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
        .await
        .unwrap();
    Env {
        dir,
        log: Arc::new(log),
        store: Arc::new(store),
    }
}

fn request(producer: &str, key: &str, recipients: Recipients) -> NotificationRequest {
    NotificationRequest {
        notification_id: notification_id(producer, key),
        idempotency_key: key.into(),
        producer: producer.into(),
        recipients,
        event_type: "approval.requested".into(),
        source: "tests".into(),
        payload: format!(r#"{{"key":"{key}"}}"#),
        collapse_key: None,
        deliver_at: None,
        expires_at: None,
        created_at: 1,
        traceparent: None,
        priority: Priority::Normal,
    }
}

fn users(list: &[&str]) -> Recipients {
    Recipients {
        users: list.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A directory change of `user` (a group or topic as `target`, roles for an `UpsertUser`).
fn directory(op: DirectoryOp, user: &str, target: Option<&str>, roles: &[&str]) -> RequestRecord {
    RequestRecord::Directory(DirectoryChange {
        op,
        user_id: user.into(),
        target: target.map(Into::into),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        at: 1,
    })
}

async fn append_requests(env: &Env, records: &[RequestRecord]) {
    let partitions = env.log.partitions(Topic::Requests);
    let recs = records
        .iter()
        .map(|r| request_record(r, partitions, 1).unwrap())
        .collect();
    env.log.append(Topic::Requests, recs).await.unwrap();
}

/// Waits until both stages have consumed everything in the log.
async fn caught_up(env: &Env) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut behind = false;
        for (topic, stage) in [
            (Topic::Requests, Stage::Fanout),
            (Topic::UserEvents, Stage::Inbox),
        ] {
            let offsets = env.store.consumer_offsets(stage).await.unwrap();
            for p in 0..env.log.partitions(topic) {
                let end = env.log.end_offset(topic, p).await.unwrap();
                if offsets.get(&p).copied().unwrap_or(0) < end {
                    behind = true;
                }
            }
        }
        if !behind {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projector did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(env: &Env) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let p = Projector::new(env.log.clone(), env.store.clone());
    let t = token.clone();
    let handle = tokio::spawn(async move { p.run(t).await.unwrap() });
    (token, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_idempotency_key_creates_one_notification() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let (stop, handle) = spawn(&env);
    let r = request("billing", "inv-1", users(&["alice", "bob"]));
    // The producer retried twice: three identical records on the log.
    append_requests(
        &env,
        &[
            RequestRecord::Notification(Box::new(r.clone())),
            RequestRecord::Notification(Box::new(r.clone())),
        ],
    )
    .await;
    caught_up(&env).await;
    append_requests(&env, &[RequestRecord::Notification(Box::new(r.clone()))]).await;
    caught_up(&env).await;
    let snap = env.store.snapshot().await.unwrap();
    for user in ["alice", "bob"] {
        let rows: Vec<_> = snap
            .rows
            .values()
            .filter(|row| row.user_id == user)
            .collect();
        assert_eq!(rows.len(), 1, "{user} has exactly one notification");
        assert_eq!(rows[0].notification_id, r.notification_id);
        assert_eq!(env.store.unread_count(user).await.unwrap(), 1);
    }
    // Exactly one Added per recipient reached the log.
    let mut added = 0;
    for p in 0..env.log.partitions(Topic::UserEvents) {
        added += env
            .log
            .read(Topic::UserEvents, p, 0, 100)
            .await
            .unwrap()
            .len();
    }
    assert_eq!(added, 2);
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_topics_and_everyone_expand_in_log_order() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let (stop, handle) = spawn(&env);
    let dir = |op, user: &str, target: Option<&str>| directory(op, user, target, &[]);
    append_requests(
        &env,
        &[
            dir(DirectoryOp::JoinGroup, "ann", Some("ops")),
            dir(DirectoryOp::JoinGroup, "ben", Some("ops")),
            dir(DirectoryOp::SubscribeTopic, "cat", Some("releases")),
            dir(DirectoryOp::UpsertUser, "dan", None),
        ],
    )
    .await;
    caught_up(&env).await;
    let to_group = request(
        "p",
        "g",
        Recipients {
            groups: vec!["ops".into()],
            ..Default::default()
        },
    );
    let to_topic = request(
        "p",
        "t",
        Recipients {
            topic: Some("releases".into()),
            ..Default::default()
        },
    );
    let to_all = request(
        "p",
        "all",
        Recipients {
            everyone: true,
            ..Default::default()
        },
    );
    append_requests(
        &env,
        &[
            RequestRecord::Notification(Box::new(to_group.clone())),
            RequestRecord::Notification(Box::new(to_topic.clone())),
            RequestRecord::Notification(Box::new(to_all.clone())),
        ],
    )
    .await;
    caught_up(&env).await;
    assert_eq!(
        env.store
            .expansion_of(&to_group.notification_id)
            .await
            .unwrap(),
        vec!["ann", "ben"]
    );
    assert_eq!(
        env.store
            .expansion_of(&to_topic.notification_id)
            .await
            .unwrap(),
        vec!["cat"]
    );
    assert_eq!(
        env.store
            .expansion_of(&to_all.notification_id)
            .await
            .unwrap(),
        vec!["ann", "ben", "cat", "dan"]
    );
    assert_eq!(env.store.unread_count("ann").await.unwrap(), 2);
    assert_eq!(env.store.unread_count("dan").await.unwrap(), 1);
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_skipped_and_the_projector_keeps_going() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let (stop, handle) = spawn(&env);
    env.log
        .append(
            Topic::Requests,
            vec![herald_ports::log::Record {
                partition: 0,
                key: "junk".into(),
                value: b"\xC3\x01not avro at all".to_vec(),
                headers: vec![],
                timestamp_ms: 1,
            }],
        )
        .await
        .unwrap();
    let r = request("p", "after-junk", users(&["alice"]));
    append_requests(&env, &[RequestRecord::Notification(Box::new(r.clone()))]).await;
    caught_up(&env).await;
    assert!(
        env.store
            .row("alice", &r.notification_id)
            .await
            .unwrap()
            .is_some()
    );
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_resume_and_a_rebuild_equals_the_live_projection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let env = open(dir).await;
    for round in 0..3 {
        let (stop, handle) = spawn(&env);
        for i in 0..20 {
            let to: Vec<String> = (0..3)
                .map(|u| format!("user-{}", (i + u + round) % 7))
                .collect();
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            let r = request("p", &format!("r{round}-{i}"), users(&to));
            append_requests(&env, &[RequestRecord::Notification(Box::new(r))]).await;
        }
        // Stop at an arbitrary point, possibly mid-batch, then start again.
        tokio::time::sleep(Duration::from_millis(5 * round as u64)).await;
        stop.cancel();
        handle.await.unwrap();
    }
    let (stop, handle) = spawn(&env);
    caught_up(&env).await;
    stop.cancel();
    handle.await.unwrap();

    let live = env.store.snapshot().await.unwrap();
    assert_eq!(
        live.rows.len(),
        3 * 20 * 3,
        "every request reached its 3 recipients once"
    );
    assert!(live.check_invariants().is_empty());

    let fresh = EmbeddedProjection::open(&path.join("rebuilt.db"), Access::ReadWrite)
        .await
        .unwrap();
    let applied = rebuild(
        env.log.as_ref(),
        &fresh,
        &BTreeMap::new(),
        &BTreeMap::new(),
        &(),
    )
    .await
    .unwrap();
    assert!(applied >= 180);
    let rebuilt = fresh.snapshot().await.unwrap();
    let diff = live.diff(&rebuilt, 10);
    assert!(diff.is_empty(), "{diff:#?}");
    drop(env.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_notifications_appear_when_due_and_leave_when_expired() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let (stop, handle) = spawn(&env);
    let now = herald_projector::now_ms();
    let mut r = request("p", "scheduled", users(&["olga"]));
    r.deliver_at = Some(now + 700);
    r.expires_at = Some(now + 1_800);
    append_requests(&env, &[RequestRecord::Notification(Box::new(r.clone()))]).await;
    caught_up(&env).await;
    // Accepted, but not expanded before its time: no row, no unread.
    assert!(
        env.store
            .row("olga", &r.notification_id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(env.store.unread_count("olga").await.unwrap(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env
        .store
        .row("olga", &r.notification_id)
        .await
        .unwrap()
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "never became due");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        herald_projector::now_ms() >= now + 700,
        "not before deliver_at"
    );
    assert_eq!(env.store.unread_count("olga").await.unwrap(), 1);
    // After expires_at, an Expired event takes it out of the inbox and the count.
    loop {
        let row = env
            .store
            .row("olga", &r.notification_id)
            .await
            .unwrap()
            .unwrap();
        if row.expired {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(herald_projector::now_ms() >= now + 1_800);
    assert_eq!(env.store.unread_count("olga").await.unwrap(), 0);
    assert!(
        env.store
            .snapshot()
            .await
            .unwrap()
            .check_invariants()
            .is_empty()
    );
    stop.cancel();
    handle.await.unwrap();
}

/// How many times each recipient of `id` was added in user-events (a `NotificationAdded`, or
/// its place in a `NotificationsAdded`).
async fn added_records(env: &Env, id: &str) -> BTreeMap<String, usize> {
    let mut by_user = BTreeMap::new();
    for (_, _, users) in records_of(env, id).await {
        for u in users {
            *by_user.entry(u).or_default() += 1;
        }
    }
    by_user
}

/// The user-events records that hold `id`: (partition, offset, recipients in the record).
async fn records_of(env: &Env, id: &str) -> Vec<(u32, u64, Vec<String>)> {
    let mut out = Vec::new();
    for p in 0..env.log.partitions(Topic::UserEvents) {
        let end = env.log.end_offset(Topic::UserEvents, p).await.unwrap();
        for r in env
            .log
            .read(Topic::UserEvents, p, 0, end as usize)
            .await
            .unwrap()
        {
            let users: Vec<String> = match herald_core::codec::decode(&r.record.value).unwrap() {
                Event::User(UserEvent::Added(a)) if a.notification_id == id => vec![a.user_id],
                Event::UsersAdded(many) if many.notification_id == id => {
                    assert_eq!(r.record.key, id, "keyed by the notification");
                    many.recipients.into_iter().map(|r| r.user_id).collect()
                }
                _ => continue,
            };
            out.push((p, r.offset, users));
        }
    }
    out
}

/// A notification to many users is one record per user-events partition, holding every
/// recipient of that partition (one user alone gets a plain `NotificationAdded`); each
/// recipient's row has that record's offset as its seq, and a rebuild reads it the same way.
/// With `with_single_user_records` (for a rolling upgrade), it is a record per recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_to_many_users_is_a_record_per_partition() {
    for single in [false, true] {
        let env = open(tempfile::tempdir().unwrap()).await;
        let token = CancellationToken::new();
        let p = Projector::new(env.log.clone(), env.store.clone()).with_single_user_records(single);
        let t = token.clone();
        let handle = tokio::spawn(async move { p.run(t).await.unwrap() });
        let everyone: Vec<String> = (0..40).map(|i| format!("user-{i:02}")).collect();
        let upserts: Vec<RequestRecord> = everyone
            .iter()
            .map(|u| directory(DirectoryOp::UpsertUser, u, None, &[]))
            .collect();
        append_requests(&env, &upserts).await;
        caught_up(&env).await;
        let to_all = request(
            "p",
            "many",
            Recipients {
                everyone: true,
                ..Default::default()
            },
        );
        let id = to_all.notification_id.clone();
        append_requests(&env, &[RequestRecord::Notification(Box::new(to_all))]).await;
        caught_up(&env).await;
        token.cancel();
        handle.await.unwrap();

        let partitions = env.log.partitions(Topic::UserEvents);
        let records = records_of(&env, &id).await;
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for u in &everyone {
            by_partition
                .entry(herald_core::partition::partition_for(u, partitions))
                .or_default()
                .push(u.clone());
        }
        if single {
            assert_eq!(records.len(), everyone.len(), "a record per recipient");
        } else {
            assert!(
                by_partition.len() < everyone.len(),
                "users share partitions"
            );
            let got: BTreeMap<u32, Vec<String>> = records
                .iter()
                .map(|(p, _, users)| (*p, users.clone()))
                .collect();
            assert_eq!(
                got, by_partition,
                "one record per partition, its users in order"
            );
        }
        for (p, offset, users) in &records {
            for u in users {
                assert_eq!(herald_core::partition::partition_for(u, partitions), *p);
                let row = env.store.row(u, &id).await.unwrap().expect("a row");
                assert_eq!(row.seq, *offset, "{u}: the record's offset is the seq");
            }
        }
        assert_eq!(
            added_records(&env, &id).await,
            everyone
                .iter()
                .map(|u| (u.clone(), 1))
                .collect::<BTreeMap<_, _>>()
        );
        // The audit shows each recipient's `added`, by notification and by user.
        let budget = herald_ports::audit::AuditBudget::UNLIMITED;
        let report =
            herald_projector::audit::audit(env.log.as_ref(), env.store.as_ref(), &id, budget)
                .await
                .unwrap();
        let mut added: Vec<String> = report
            .entries
            .iter()
            .filter(|e| e.event == "added")
            .map(|e| e.user_id.clone().unwrap())
            .collect();
        added.sort();
        assert_eq!(added, everyone);
        let report =
            herald_projector::audit::audit(env.log.as_ref(), env.store.as_ref(), "user-07", budget)
                .await
                .unwrap();
        let mine: Vec<&herald_ports::audit::AuditEntry> = report
            .entries
            .iter()
            .filter(|e| e.event == "added")
            .collect();
        assert_eq!(mine.len(), 1, "{:?}", report.entries);
        assert_eq!(mine[0].user_id.as_deref(), Some("user-07"));
        assert!(mine[0].detail.contains(&id));

        let live = env.store.snapshot().await.unwrap();
        assert_eq!(live.rows.len(), everyone.len());
        let fresh = EmbeddedProjection::open(&env.dir.path().join("rebuilt.db"), Access::ReadWrite)
            .await
            .unwrap();
        rebuild(
            env.log.as_ref(),
            &fresh,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &(),
        )
        .await
        .unwrap();
        let diff = live.diff(&fresh.snapshot().await.unwrap(), 10);
        assert!(diff.is_empty(), "{diff:#?}");
    }
}

/// A batch of several-user records that expands to more events than one store call takes
/// (MAX_APPLY_EVENTS; the inbox stage then splits it) is applied whole: every recipient gets
/// its row, and the stage's offset reaches the partition's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expansion_larger_than_one_store_call_is_applied_whole() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let partitions = env.log.partitions(Topic::UserEvents);
    let members: Vec<String> = (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| herald_core::partition::partition_for(u, partitions) == 0)
        .take(1000)
        .collect();
    let records = 10;
    assert!(records * members.len() > herald_projector::MAX_APPLY_EVENTS);
    let appended: Vec<_> = (0..records)
        .map(|i| {
            let req = request("p", &format!("big-{i}"), users(&["x"]));
            let many = NotificationsAdded::of(
                &req.added_for(""),
                members
                    .iter()
                    .map(|u| AddedRecipient {
                        user_id: u.clone(),
                        delivery: Delivery::Live,
                    })
                    .collect(),
            );
            herald_ports::records::users_added_record(&many, 0, 1).unwrap()
        })
        .collect();
    env.log.append(Topic::UserEvents, appended).await.unwrap();
    let token = CancellationToken::new();
    let p = Projector::new(env.log.clone(), env.store.clone());
    let t = token.clone();
    let inbox = tokio::spawn(async move { p.run_inbox(t).await.unwrap() });
    let end = env.log.end_offset(Topic::UserEvents, 0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env
        .store
        .consumer_offsets(Stage::Inbox)
        .await
        .unwrap()
        .get(&0)
        .copied()
        .unwrap_or(0)
        < end
    {
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    inbox.await.unwrap();
    let live = env.store.snapshot().await.unwrap();
    assert_eq!(live.rows.len(), records * members.len());
    assert_eq!(
        env.store.unread_count(&members[0]).await.unwrap(),
        records as u64
    );
}

/// A fanout that appended some recipients' events and crashed before recording the expansion:
/// the next one appends only what is missing, whether the inbox stage had applied the earlier
/// events (rows) or not (still in the log's tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expansion_interrupted_before_it_was_recorded_is_not_repeated() {
    for (applied_before_restart, several) in
        [(false, false), (true, false), (false, true), (true, true)]
    {
        let env = open(tempfile::tempdir().unwrap()).await;
        let partitions = env.log.partitions(Topic::UserEvents);
        // Two users of one partition (alice, bob), and carol.
        let names: Vec<String> = (0..64).map(|i| format!("user-{i}")).collect();
        let bob = names[1..]
            .iter()
            .find(|u| {
                herald_core::partition::partition_for(u, partitions)
                    == herald_core::partition::partition_for(&names[0], partitions)
            })
            .expect("two users share a partition");
        let (alice, carol) = (names[0].as_str(), "carol");
        let req = request("p", "interrupted", users(&[alice, bob, carol]));
        let id = req.notification_id.clone();
        append_requests(&env, &[RequestRecord::Notification(Box::new(req.clone()))]).await;
        // What the crashed fanout got to append: alice's and bob's events (as one record for
        // both, or one each), not carol's.
        let records = if several {
            let many = NotificationsAdded::of(
                &req.added_for(""),
                [alice, bob.as_str()]
                    .iter()
                    .map(|u| AddedRecipient {
                        user_id: u.to_string(),
                        delivery: Delivery::Live,
                    })
                    .collect(),
            );
            vec![
                herald_ports::records::users_added_record(
                    &many,
                    herald_core::partition::partition_for(alice, partitions),
                    1,
                )
                .unwrap(),
            ]
        } else {
            [alice, bob.as_str()]
                .iter()
                .map(|u| {
                    herald_ports::records::user_event_record(
                        &UserEvent::Added(req.added_for(u)),
                        partitions,
                        1,
                    )
                    .unwrap()
                })
                .collect()
        };
        env.log.append(Topic::UserEvents, records).await.unwrap();
        if applied_before_restart {
            let token = CancellationToken::new();
            let p = Projector::new(env.log.clone(), env.store.clone());
            let t = token.clone();
            let inbox = tokio::spawn(async move { p.run_inbox(t).await.unwrap() });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while env.store.row(bob, &id).await.unwrap().is_none() {
                assert!(tokio::time::Instant::now() < deadline, "never applied");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            token.cancel();
            inbox.await.unwrap();
        }
        let (token, handle) = spawn(&env);
        caught_up(&env).await;
        token.cancel();
        handle.await.unwrap();
        let expected: BTreeMap<String, usize> = [alice, bob.as_str(), carol]
            .iter()
            .map(|u| (u.to_string(), 1))
            .collect();
        assert_eq!(
            added_records(&env, &id).await,
            expected,
            "one NotificationAdded per recipient (applied before restart: \
             {applied_before_restart}, one record for several: {several})"
        );
        for u in [alice, bob.as_str(), carol] {
            assert!(env.store.row(u, &id).await.unwrap().is_some(), "{u}");
        }
    }
}

/// The fanout stage writes a batch's record while it expands the next, so a crash can leave two
/// batches expanded and not recorded: an expansion interrupted two batches past the stored
/// offset (more than one batch's records after it) is recovered, not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expansion_interrupted_two_batches_past_the_stored_offset_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    // One requests partition: the interrupted request's offset is its place in the whole list.
    let log = EmbeddedLog::open(
        &dir.path().join("log.db"),
        Access::ReadWrite,
        LogOptions {
            requests_partitions: Some(1),
            ..LogOptions::default()
        },
    )
    .await
    .unwrap();
    let store = EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
        .await
        .unwrap();
    let env = Env {
        dir,
        log: Arc::new(log),
        store: Arc::new(store),
    };
    let ahead = herald_projector::MAX_BATCH_RECORDS + 5;
    let before: Vec<RequestRecord> = (0..ahead)
        .map(|i| {
            let user = format!("user-{}", i % 50);
            RequestRecord::Notification(Box::new(request("p", &format!("n{i}"), users(&[&user]))))
        })
        .collect();
    append_requests(&env, &before).await;
    let req = request("p", "interrupted", users(&["alice", "carol"]));
    let id = req.notification_id.clone();
    append_requests(&env, &[RequestRecord::Notification(Box::new(req.clone()))]).await;
    // What the crashed fanout got to append of it: alice's event, not carol's.
    let partitions = env.log.partitions(Topic::UserEvents);
    let alice = herald_ports::records::user_event_record(
        &UserEvent::Added(req.added_for("alice")),
        partitions,
        1,
    )
    .unwrap();
    env.log
        .append(Topic::UserEvents, vec![alice])
        .await
        .unwrap();
    let (token, handle) = spawn(&env);
    caught_up(&env).await;
    token.cancel();
    handle.await.unwrap();
    let expected: BTreeMap<String, usize> =
        [("alice".to_string(), 1), ("carol".to_string(), 1)].into();
    assert_eq!(
        added_records(&env, &id).await,
        expected,
        "one NotificationAdded per recipient, {ahead} requests past the stored offset"
    );
    assert_eq!(
        env.store.expanded(std::slice::from_ref(&id)).await.unwrap(),
        vec![id.clone()]
    );
}

/// The embedded log, with one consumer call made to fail (as a Kafka consumer fails when a
/// rebalance outdates its seek), and reads of the requests topic held until a user-events read
/// has been answered (at most `hold_requests`): everything else is the real log. Each read it
/// answers is noted, in the order answered.
struct FailingOnce {
    inner: Arc<EmbeddedLog>,
    failures: Arc<std::sync::atomic::AtomicUsize>,
    hold_requests: Duration,
    reads: std::sync::Mutex<Vec<Topic>>,
}

struct FailingConsumer {
    inner: Box<dyn herald_ports::LogConsumer>,
    failures: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl herald_ports::LogConsumer for FailingConsumer {
    async fn next(
        &mut self,
        max: usize,
    ) -> Result<herald_ports::ConsumerEvent, herald_ports::LogError> {
        let event = self.inner.next(max).await?;
        let records = matches!(event, herald_ports::ConsumerEvent::Records(_));
        let take = |n: usize| n.checked_sub(1);
        if records
            && self
                .failures
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    take,
                )
                .is_ok()
        {
            return Err(herald_ports::LogError::Storage(
                "injected: Seek error: Local: Outdated".into(),
            ));
        }
        Ok(event)
    }
    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), herald_ports::LogError> {
        self.inner.seek(partition, offset)
    }
    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), herald_ports::LogError> {
        self.inner.commit(offsets).await
    }
}

#[async_trait::async_trait]
impl EventLog for FailingOnce {
    fn epoch(&self) -> herald_core::cursor::Epoch {
        self.inner.epoch()
    }
    fn partitions(&self, topic: Topic) -> u32 {
        self.inner.partitions(topic)
    }
    async fn append(
        &self,
        topic: Topic,
        records: Vec<herald_ports::Record>,
    ) -> Result<Vec<herald_ports::Appended>, herald_ports::LogError> {
        self.inner.append(topic, records).await
    }
    async fn read(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<herald_ports::StoredRecord>, herald_ports::LogError> {
        if topic == Topic::Requests {
            // Held until a user-events read has been answered, at most `hold_requests`.
            let until = tokio::time::Instant::now() + self.hold_requests;
            while tokio::time::Instant::now() < until
                && !self.reads.lock().unwrap().contains(&Topic::UserEvents)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let records = self.inner.read(topic, partition, from, max).await?;
        self.reads.lock().unwrap().push(topic);
        Ok(records)
    }
    async fn end_offset(
        &self,
        topic: Topic,
        partition: u32,
    ) -> Result<u64, herald_ports::LogError> {
        self.inner.end_offset(topic, partition).await
    }
    async fn consumer(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn herald_ports::LogConsumer>, herald_ports::LogError> {
        Ok(Box::new(FailingConsumer {
            inner: self.inner.consumer(topic, group).await?,
            failures: self.failures.clone(),
        }))
    }
    async fn tail(
        &self,
        topic: Topic,
    ) -> Result<Box<dyn herald_ports::LogTail>, herald_ports::LogError> {
        self.inner.tail(topic).await
    }
    async fn dead_letter(
        &self,
        record: &herald_ports::StoredRecord,
        reason: &str,
    ) -> Result<(), herald_ports::LogError> {
        self.inner.dead_letter(record, reason).await
    }
    async fn dead_letters(
        &self,
        max: usize,
    ) -> Result<Vec<herald_ports::log::DeadLetter>, herald_ports::LogError> {
        self.inner.dead_letters(max).await
    }
}

/// A stage whose consumer fails starts again and catches up; the projector does not exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consumer_restarts_its_stage_instead_of_stopping_the_projector() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let log = Arc::new(FailingOnce {
        inner: env.log.clone(),
        failures: failures.clone(),
        hold_requests: Duration::ZERO,
        reads: Default::default(),
    });
    let token = CancellationToken::new();
    let projector = Projector::new(log, env.store.clone());
    let t = token.clone();
    let task = tokio::spawn(async move { projector.run(t).await });
    for k in 0..3 {
        let req = request("p", &format!("restart-{k}"), users(&["alice"]));
        append_requests(&env, &[RequestRecord::Notification(Box::new(req))]).await;
    }
    caught_up(&env).await;
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "both failures happened"
    );
    assert_eq!(env.store.unread_count("alice").await.unwrap(), 3);
    assert!(!task.is_finished(), "the projector is still running");
    token.cancel();
    assert!(task.await.unwrap().is_ok());
}

/// `herald replay` reads the two topics side by side: here the reads of the requests topic (the
/// directory) are held back until a user-events read is answered, so the user events are
/// applied before the directory changes, and the rebuilt projection still equals the live one,
/// roles included (`UpsertUser` replaces a user's roles, a user event's `KnowUser` only adds a
/// user it has not seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_applies_the_user_events_before_the_directory_equals_the_live_projection() {
    let env = open(tempfile::tempdir().unwrap()).await;
    let (stop, handle) = spawn(&env);
    append_requests(
        &env,
        &[
            directory(DirectoryOp::UpsertUser, "ann", None, &["admin"]),
            directory(DirectoryOp::JoinGroup, "ben", Some("ops"), &[]),
            directory(DirectoryOp::UpsertUser, "cat", None, &["lead"]),
            directory(DirectoryOp::UpsertUser, "cat", None, &["viewer"]),
        ],
    )
    .await;
    caught_up(&env).await;
    for (i, to) in [
        users(&["ann", "ben"]),
        users(&["cat", "dan"]),
        Recipients {
            groups: vec!["ops".into()],
            ..Default::default()
        },
        Recipients {
            everyone: true,
            ..Default::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let r = request("p", &format!("order-{i}"), to);
        append_requests(&env, &[RequestRecord::Notification(Box::new(r))]).await;
    }
    caught_up(&env).await;
    stop.cancel();
    handle.await.unwrap();
    let live = env.store.snapshot().await.unwrap();
    assert_eq!(live.users["ann"], vec!["admin".to_string()]);
    assert_eq!(live.users["cat"], vec!["viewer".to_string()]);
    assert!(
        live.users["dan"].is_empty(),
        "dan is known from his inbox only"
    );

    let log = FailingOnce {
        inner: env.log.clone(),
        failures: Default::default(),
        hold_requests: Duration::from_secs(10),
        reads: Default::default(),
    };
    let fresh = EmbeddedProjection::open(&env.dir.path().join("rebuilt.db"), Access::ReadWrite)
        .await
        .unwrap();
    rebuild(&log, &fresh, &BTreeMap::new(), &BTreeMap::new(), &())
        .await
        .unwrap();
    let reads = log.reads.lock().unwrap().clone();
    assert_eq!(
        reads.first(),
        Some(&Topic::UserEvents),
        "the user events were read while the requests were: {reads:?}"
    );
    let rebuilt = fresh.snapshot().await.unwrap();
    let diff = live.diff(&rebuilt, 10);
    assert!(diff.is_empty(), "{diff:#?}");
    assert_eq!(rebuilt.users, live.users);
}
