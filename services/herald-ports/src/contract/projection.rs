//! The projection contract. Stores are compared with the reference fold.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::model::*;
use herald_core::partition::partition_for;

use super::generate::{added, end_offsets, reference, user_log};
use crate::projection::*;

const PARTITIONS: u32 = 4;
const NOW: i64 = 1_700_000_000_000 + 5_000_000_000;

/// Opens the store under test. A second `open` opens the same storage, as a restart would.
#[async_trait]
pub trait ProjectionHarness: Send + Sync {
    type Store: ProjectionStore;
    async fn open(&self) -> Self::Store;
}

async fn apply_in_batches<S: ProjectionStore>(
    store: &S,
    consumer: Stage,
    events: &[Positioned<UserEvent>],
    batch: usize,
) {
    for chunk in events.chunks(batch.max(1)) {
        store
            .apply_user_events(consumer, chunk, &end_offsets(chunk))
            .await
            .unwrap();
    }
}

async fn assert_matches_reference<S: ProjectionStore>(store: &S, events: &[Positioned<UserEvent>]) {
    let expected = reference(events).snapshot;
    let got = store.snapshot().await.unwrap();
    let diff = expected.diff(&got, 20);
    assert!(
        diff.is_empty(),
        "store differs from the reference fold:\n{}",
        diff.join("\n")
    );
    let broken = got.check_invariants();
    assert!(
        broken.is_empty(),
        "invariants broken:\n{}",
        broken.join("\n")
    );
}

fn pos(partition: u32, offset: u64, event: UserEvent) -> Positioned<UserEvent> {
    Positioned {
        partition,
        offset,
        event,
    }
}

/// One user's events, placed in that user's partition with consecutive offsets.
fn for_user(user: &str, events: Vec<UserEvent>) -> Vec<Positioned<UserEvent>> {
    let p = partition_for(user, PARTITIONS);
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| pos(p, i as u64, e))
        .collect()
}

pub async fn applies_like_the_reference_fold<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let events = user_log(1, 600, 12, PARTITIONS);
    apply_in_batches(&store, Stage::Inbox, &events, 37).await;
    assert_matches_reference(&store, &events).await;
    for user in ["user-0", "user-5"] {
        let expected = reference(&events)
            .snapshot
            .rows
            .values()
            .filter(|r| r.user_id == user && r.counts_as_unread())
            .count() as u64;
        assert_eq!(store.unread_count(user).await.unwrap(), expected);
    }
}

pub async fn reapplying_any_suffix_changes_nothing<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let events = user_log(2, 300, 6, PARTITIONS);
    apply_in_batches(&store, Stage::Inbox, &events, 50).await;
    // Redeliver suffixes of different lengths, in log order, as an at-least-once source would.
    for start in [250usize, 120, 0] {
        apply_in_batches(&store, Stage::Inbox, &events[start..], 23).await;
        assert_matches_reference(&store, &events).await;
    }
}

/// A replica that lost its partitions in a rebalance may still write one stale batch: events the
/// store has applied already, older than newer ones it has also applied. They change nothing.
pub async fn a_stale_batch_changes_nothing<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let events = user_log(5, 300, 6, PARTITIONS);
    apply_in_batches(&store, Stage::Inbox, &events, 50).await;
    for (start, end) in [(0usize, 150usize), (100, 290), (10, 40)] {
        apply_in_batches(&store, Stage::Inbox, &events[start..end], 17).await;
        assert_matches_reference(&store, &events).await;
    }
}

pub async fn offsets_are_stored_with_the_writes<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    assert!(
        store
            .consumer_offsets(Stage::Inbox)
            .await
            .unwrap()
            .is_empty()
    );
    let events = user_log(3, 100, 5, PARTITIONS);
    apply_in_batches(&store, Stage::Inbox, &events, 100).await;
    let stored = store.consumer_offsets(Stage::Inbox).await.unwrap();
    let expected: std::collections::BTreeMap<u32, u64> = end_offsets(&events).into_iter().collect();
    assert_eq!(stored, expected);
    assert!(
        store
            .consumer_offsets(Stage::Fanout)
            .await
            .unwrap()
            .is_empty()
    );
    // An empty batch can still move offsets (e.g. past undecodable records).
    store
        .apply_user_events(Stage::Inbox, &[], &[(0, 1_000)])
        .await
        .unwrap();
    assert_eq!(
        store.consumer_offsets(Stage::Inbox).await.unwrap()[&0],
        1_000
    );
}

pub async fn concurrent_writers_on_disjoint_partitions_match_the_reference<H: ProjectionHarness>(
    h: &H,
) {
    let store = Arc::new(h.open().await);
    let events = user_log(4, 800, 16, PARTITIONS);
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.partition == p)
            .cloned()
            .collect();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            apply_in_batches(store.as_ref(), Stage::Inbox, &mine, 9).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_matches_reference(store.as_ref(), &events).await;
    let stored = store.consumer_offsets(Stage::Inbox).await.unwrap();
    assert_eq!(stored, end_offsets(&events).into_iter().collect());
}

pub async fn pending_is_what_the_device_has_not_acknowledged<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "alice";
    let mut future = added(u, "n-future");
    future.deliver_at = Some(NOW + 60_000);
    let mut gone = added(u, "n-expired");
    gone.expires_at = Some(NOW - 1);
    let ack = |device: &str, ids: &[&str], up_to: Option<i64>| {
        UserEvent::Acked(NotificationAcked {
            user_id: u.into(),
            device_id: device.into(),
            notification_ids: ids.iter().map(|s| s.to_string()).collect(),
            up_to,
            at: NOW,
        })
    };
    let events = for_user(
        u,
        vec![
            UserEvent::Added(added(u, "n0")), // 0
            UserEvent::Added(added(u, "n1")), // 1
            UserEvent::Added(added(u, "n2")), // 2
            UserEvent::Added(added(u, "n3")), // 3
            UserEvent::Added(future),         // 4: not due yet
            UserEvent::Added(gone),           // 5: past expires_at
            UserEvent::Added(added(u, "n6")), // 6
            ack("phone", &[], Some(1)),       // 7: phone has 0..=1
            ack("phone", &["n3"], None),      // 8: and n3 by id
            UserEvent::Archived(MarkChange {
                // 9: n6 archived everywhere
                user_id: u.into(),
                device_id: Some("laptop".into()),
                notification_ids: vec!["n6".into()],
                up_to: None,
                at: NOW,
            }),
            UserEvent::Added(added(u, "n10")), // 10
            UserEvent::Added(added("bob", "n-bob")),
        ],
    );
    let seqs = |rows: Vec<herald_core::projection::InboxRow>| -> Vec<u64> {
        rows.iter().map(|r| r.seq).collect()
    };
    apply_in_batches(&store, Stage::Inbox, &events, 4).await;
    let phone = store.pending(u, "phone", None, NOW, 100).await.unwrap();
    assert_eq!(seqs(phone), vec![2, 10]);
    let laptop = store.pending(u, "laptop", None, NOW, 100).await.unwrap();
    assert_eq!(seqs(laptop), vec![0, 1, 2, 3, 10], "laptop acked nothing");
    let after = store.pending(u, "laptop", Some(2), NOW, 100).await.unwrap();
    assert_eq!(seqs(after), vec![3, 10], "strictly after the resume cursor");
    let limited = store.pending(u, "laptop", None, NOW, 2).await.unwrap();
    assert_eq!(seqs(limited), vec![0, 1]);
    let later = store
        .pending(u, "laptop", Some(3), NOW + 120_000, 100)
        .await
        .unwrap();
    assert_eq!(seqs(later), vec![4, 10], "the scheduled one is due later");
    assert_eq!(store.device_cursor(u, "phone").await.unwrap(), Some(1));
    assert_eq!(store.device_cursor(u, "laptop").await.unwrap(), None);
    assert!(
        store.pending("bob", "phone", None, NOW, 100).await.unwrap()[0].notification_id == "n-bob"
    );
    assert!(
        store.row(u, "n-bob").await.unwrap().is_none(),
        "no cross-user lookup"
    );
}

/// Preferences: the newest document per user (read by the gateway and by fanout, kept over a
/// reopen); notifications the user's preferences kept quiet are in the inbox (a muted one
/// read, not counted) but never pending for a device.
pub async fn preferences_are_the_newest_document_and_quiet_rows_are_not_pending<
    H: ProjectionHarness,
>(
    h: &H,
) {
    let store = h.open().await;
    let u = "dora";
    let doc = |live: bool, muted_topic: &str| PreferencesChanged {
        user_id: u.into(),
        event_types: vec![PreferenceRule {
            name: "chat.message".into(),
            live,
            inbox: true,
        }],
        topics: vec![PreferenceRule {
            name: muted_topic.into(),
            live: true,
            inbox: false,
        }],
        at: NOW,
    };
    let with = |id: &str, delivery: Delivery| {
        let mut a = added(u, id);
        a.delivery = delivery;
        UserEvent::Added(a)
    };
    let events = for_user(
        u,
        vec![
            UserEvent::Preferences(doc(true, "news")),       // 0
            with("n1", Delivery::Live),                      // 1
            with("n2", Delivery::Inbox),                     // 2
            with("n3", Delivery::Muted),                     // 3
            UserEvent::Preferences(doc(false, "incidents")), // 4
            with("n5", Delivery::Live),                      // 5
        ],
    );
    apply_in_batches(&store, Stage::Inbox, &events, 2).await;
    assert_matches_reference(&store, &events).await;
    let newest = doc(false, "incidents").preferences();
    assert_eq!(store.preferences(u).await.unwrap(), newest);
    assert_eq!(
        store.preferences("nobody").await.unwrap(),
        Preferences::default()
    );
    let found = store
        .preferences_of(&["nobody".to_string(), u.to_string()])
        .await
        .unwrap();
    assert_eq!(found, vec![(u.to_string(), newest.clone())]);
    assert!(store.preferences_of(&[]).await.unwrap().is_empty());
    let seqs = |rows: Vec<herald_core::projection::InboxRow>| -> Vec<u64> {
        rows.iter().map(|r| r.seq).collect()
    };
    assert_eq!(
        seqs(store.pending(u, "phone", None, NOW, 100).await.unwrap()),
        vec![1, 5],
        "inbox-only and muted rows are never pending"
    );
    let q = |filter| InboxQuery {
        before: None,
        limit: 100,
        filter,
        now_ms: NOW,
    };
    assert_eq!(
        seqs(store.inbox(u, &q(InboxFilter::Inbox)).await.unwrap()),
        vec![5, 3, 2, 1],
        "all of them are in the inbox"
    );
    assert_eq!(
        seqs(store.inbox(u, &q(InboxFilter::Unread)).await.unwrap()),
        vec![5, 2, 1],
        "the muted one is read"
    );
    assert_eq!(store.unread_count(u).await.unwrap(), 3);
    let muted = store.row(u, "n3").await.unwrap().unwrap();
    assert!(muted.read && !muted.live);
    let quiet = store.row(u, "n2").await.unwrap().unwrap();
    assert!(!quiet.read && !quiet.live);
    assert!(store.row(u, "n1").await.unwrap().unwrap().live);
    // Re-applying the older document (a replayed suffix) does not bring it back.
    apply_in_batches(&store, Stage::Inbox, &events[..1], 1).await;
    assert_eq!(store.preferences(u).await.unwrap(), newest);
    drop(store);
    let reopened = h.open().await;
    assert_eq!(reopened.preferences(u).await.unwrap(), newest);
}

pub async fn pending_under_load_is_ordered_and_complete<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "loaded";
    let n = 3_000u64;
    let mut events: Vec<UserEvent> = (0..n)
        .map(|i| UserEvent::Added(added(u, &format!("n{i}"))))
        .collect();
    // Ack every third by id, and everything below 500 cumulatively.
    events.push(UserEvent::Acked(NotificationAcked {
        user_id: u.into(),
        device_id: "d".into(),
        notification_ids: (0..n)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("n{i}"))
            .collect(),
        up_to: Some(499),
        at: NOW,
    }));
    let events = for_user(u, events);
    apply_in_batches(&store, Stage::Inbox, &events, 500).await;
    let expected: Vec<u64> = (500..n).filter(|i| i % 3 != 0).collect();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = store.pending(u, "d", after, NOW, 250).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().seq);
        got.extend(page.into_iter().map(|r| r.seq));
    }
    assert_eq!(got, expected);
}

pub async fn inbox_pages_newest_first_with_filters<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "carol";
    let mut events: Vec<UserEvent> = (0..10)
        .map(|i| UserEvent::Added(added(u, &format!("n{i}"))))
        .collect();
    events.push(UserEvent::Read(MarkChange {
        user_id: u.into(),
        device_id: None,
        notification_ids: vec![],
        up_to: Some(3),
        at: NOW,
    }));
    events.push(UserEvent::Archived(MarkChange {
        user_id: u.into(),
        device_id: None,
        notification_ids: vec!["n9".into(), "n0".into()],
        up_to: None,
        at: NOW,
    }));
    let events = for_user(u, events);
    apply_in_batches(&store, Stage::Inbox, &events, 5).await;
    let q = |filter, before, limit| InboxQuery {
        before,
        limit,
        filter,
        now_ms: NOW,
    };
    let seqs = |rows: Vec<herald_core::projection::InboxRow>| -> Vec<u64> {
        rows.iter().map(|r| r.seq).collect()
    };
    let page1 = store
        .inbox(u, &q(InboxFilter::Inbox, None, 4))
        .await
        .unwrap();
    assert_eq!(seqs(page1), vec![8, 7, 6, 5]);
    let page2 = store
        .inbox(u, &q(InboxFilter::Inbox, Some(5), 4))
        .await
        .unwrap();
    assert_eq!(seqs(page2), vec![4, 3, 2, 1]);
    let unread = store
        .inbox(u, &q(InboxFilter::Unread, None, 100))
        .await
        .unwrap();
    assert_eq!(seqs(unread), vec![8, 7, 6, 5, 4]);
    let archived = store
        .inbox(u, &q(InboxFilter::Archived, None, 100))
        .await
        .unwrap();
    assert_eq!(seqs(archived), vec![9, 0]);
    assert_eq!(store.unread_count(u).await.unwrap(), 5);
    assert_eq!(store.unread_count("nobody").await.unwrap(), 0);
    let row = store.row(u, "n4").await.unwrap().unwrap();
    assert_eq!((row.seq, row.read), (4, false));
    assert_eq!(row.payload, r#"{"id":"n4"}"#);
}

pub async fn directory_resolves_groups_topics_and_everyone<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let change = |op, user: &str, target: Option<&str>| DirectoryChange {
        op,
        user_id: user.into(),
        target: target.map(Into::into),
        roles: vec![],
        at: NOW,
    };
    let changes = vec![
        change(DirectoryOp::UpsertUser, "zed", None),
        change(DirectoryOp::JoinGroup, "ann", Some("ops")),
        change(DirectoryOp::JoinGroup, "ben", Some("ops")),
        change(DirectoryOp::JoinGroup, "cat", Some("ops")),
        change(DirectoryOp::LeaveGroup, "cat", Some("ops")),
        change(DirectoryOp::SubscribeTopic, "dan", Some("releases")),
        change(DirectoryOp::SubscribeTopic, "ann", Some("releases")),
        change(DirectoryOp::UnsubscribeTopic, "ann", Some("releases")),
    ];
    store
        .apply_directory(Stage::Fanout, &changes, &[(0, 8)])
        .await
        .unwrap();
    // Replaying the same changes is harmless.
    store
        .apply_directory(Stage::Fanout, &changes, &[(0, 8)])
        .await
        .unwrap();
    assert_eq!(store.consumer_offsets(Stage::Fanout).await.unwrap()[&0], 8);
    let r = |users: &[&str], groups: &[&str], topic: Option<&str>, everyone| Recipients {
        users: users.iter().map(|s| s.to_string()).collect(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        topic: topic.map(Into::into),
        everyone,
    };
    assert_eq!(
        store.resolve(&r(&[], &["ops"], None, false)).await.unwrap(),
        vec!["ann", "ben"]
    );
    assert_eq!(
        store
            .resolve(&r(&["ben", "eve"], &["ops"], Some("releases"), false))
            .await
            .unwrap(),
        vec!["ann", "ben", "dan", "eve"]
    );
    assert!(
        store
            .resolve(&r(&[], &["nope"], None, false))
            .await
            .unwrap()
            .is_empty()
    );
    // Users who received a notification are known too.
    store
        .apply_user_events(
            Stage::Inbox,
            &for_user("fay", vec![UserEvent::Added(added("fay", "n"))]),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        store.resolve(&r(&[], &[], None, true)).await.unwrap(),
        vec!["ann", "ben", "cat", "dan", "fay", "zed"]
    );
}

pub async fn expansions_are_recorded<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let ids = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    assert!(store.expanded(&ids).await.unwrap().is_empty());
    store
        .record_expansions(
            Stage::Fanout,
            &[
                ("a".into(), vec!["u1".into(), "u2".into()]),
                ("c".into(), vec![]),
            ],
            &[(1, 10)],
        )
        .await
        .unwrap();
    let mut got = store.expanded(&ids).await.unwrap();
    got.sort();
    assert_eq!(got, vec!["a", "c"]);
    assert_eq!(store.expansion_of("a").await.unwrap(), vec!["u1", "u2"]);
    assert!(store.expansion_of("b").await.unwrap().is_empty());
    assert_eq!(store.consumer_offsets(Stage::Fanout).await.unwrap()[&1], 10);
}

pub async fn state_survives_reopen<H: ProjectionHarness>(h: &H) {
    let events = user_log(9, 200, 5, PARTITIONS);
    {
        let store = h.open().await;
        apply_in_batches(&store, Stage::Inbox, &events, 64).await;
    }
    let store = h.open().await;
    assert_matches_reference(&store, &events).await;
    assert_eq!(
        store.consumer_offsets(Stage::Inbox).await.unwrap(),
        end_offsets(&events).into_iter().collect()
    );
}

pub async fn scheduled_requests_come_due_and_expired_rows_are_found<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    store
        .schedule(
            Stage::Fanout,
            &[
                ("late".into(), NOW + 1_000, b"L".to_vec()),
                ("early".into(), NOW - 1_000, b"E".to_vec()),
                ("early".into(), NOW - 1_000, b"E".to_vec()),
            ],
            &[(0, 3)],
        )
        .await
        .unwrap();
    assert_eq!(store.consumer_offsets(Stage::Fanout).await.unwrap()[&0], 3);
    assert_eq!(
        store.due(NOW, 10).await.unwrap(),
        vec![("early".to_string(), b"E".to_vec())]
    );
    let mut both = store.due(NOW + 1_000, 10).await.unwrap();
    both.sort();
    assert_eq!(both.len(), 2);
    // Expanding removes it from the schedule; an expanded id is never scheduled again.
    store
        .record_expansions(Stage::Fanout, &[("early".into(), vec!["u".into()])], &[])
        .await
        .unwrap();
    store
        .schedule(
            Stage::Fanout,
            &[("early".into(), NOW - 1_000, b"E".to_vec())],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        store.due(NOW + 1_000, 10).await.unwrap(),
        vec![("late".to_string(), b"L".to_vec())]
    );

    let u = "ivy";
    let mut soon = added(u, "soon");
    soon.expires_at = Some(NOW - 1);
    let mut later = added(u, "later");
    later.expires_at = Some(NOW + 60_000);
    let mut archived = added(u, "archived");
    archived.expires_at = Some(NOW - 1);
    let events = for_user(
        u,
        vec![
            UserEvent::Added(soon),
            UserEvent::Added(later),
            UserEvent::Added(archived),
            UserEvent::Archived(MarkChange {
                user_id: u.into(),
                device_id: None,
                notification_ids: vec!["archived".into()],
                up_to: None,
                at: NOW,
            }),
        ],
    );
    apply_in_batches(&store, Stage::Inbox, &events, 10).await;
    assert_eq!(
        store.expiring(NOW, 10).await.unwrap(),
        vec![(u.to_string(), "soon".to_string())]
    );
    let p = events[0].partition;
    store
        .apply_user_events(
            Stage::Inbox,
            &[pos(
                p,
                4,
                UserEvent::Expired(NotificationExpired {
                    user_id: u.into(),
                    notification_id: "soon".into(),
                    at: NOW,
                }),
            )],
            &[(p, 5)],
        )
        .await
        .unwrap();
    assert!(store.expiring(NOW, 10).await.unwrap().is_empty());
    assert_eq!(store.unread_count(u).await.unwrap(), 1);
}

pub async fn rbac_limits_topics_by_role<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let user = |op, u: &str, target: Option<&str>, roles: &[&str]| DirectoryChange {
        op,
        user_id: u.into(),
        target: target.map(Into::into),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        at: NOW,
    };
    store
        .apply_directory(
            Stage::Fanout,
            &[
                user(DirectoryOp::UpsertUser, "ops1", None, &["ops"]),
                user(DirectoryOp::UpsertUser, "root", None, &["admin"]),
                user(DirectoryOp::UpsertUser, "guest", None, &["nobody"]),
                user(DirectoryOp::SubscribeTopic, "ops1", Some("incidents"), &[]),
                user(DirectoryOp::SubscribeTopic, "ops1", Some("payroll"), &[]),
                user(DirectoryOp::SubscribeTopic, "root", Some("payroll"), &[]),
                user(DirectoryOp::SubscribeTopic, "guest", Some("incidents"), &[]),
                user(DirectoryOp::SubscribeTopic, "plain", Some("payroll"), &[]),
            ],
            &[],
        )
        .await
        .unwrap();
    store
        .define_roles(
            Stage::Fanout,
            &[
                RoleDefinition {
                    role: "ops".into(),
                    topics: vec!["incidents".into()],
                    at: NOW,
                },
                RoleDefinition {
                    role: "admin".into(),
                    topics: vec!["*".into()],
                    at: NOW,
                },
            ],
            &[(0, 9)],
        )
        .await
        .unwrap();
    let topic = |t: &str| Recipients {
        topic: Some(t.into()),
        ..Default::default()
    };
    // ops1 may get incidents but not payroll; root gets all; guest's role is undefined (nothing);
    // plain has no roles (everything they follow).
    assert_eq!(
        store.resolve(&topic("incidents")).await.unwrap(),
        vec!["ops1"]
    );
    assert_eq!(
        store.resolve(&topic("payroll")).await.unwrap(),
        vec!["plain", "root"]
    );
    // Direct recipients are not filtered by topic rules.
    let direct = Recipients {
        users: vec!["guest".into()],
        ..Default::default()
    };
    assert_eq!(store.resolve(&direct).await.unwrap(), vec!["guest"]);
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.roles["admin"], vec!["*"]);
    assert_eq!(snap.users["ops1"], vec!["ops"]);
    assert_eq!(store.consumer_offsets(Stage::Fanout).await.unwrap()[&0], 9);
}

/// A store names itself once: every open of the same storage gives the same id.
pub async fn a_store_keeps_one_id<H: ProjectionHarness>(h: &H) {
    let first = h.open().await;
    let id = first.store_id().to_owned();
    assert!(!id.is_empty() && id != "unnamed", "{id:?}");
    drop(first);
    assert_eq!(h.open().await.store_id(), id, "the id survives a reopen");
}

/// A stage's consumer-group generation starts at 0, only moves forward, moves once for
/// replicas that saw the same one, is kept per stage, and survives a reopen.
pub async fn group_generations_only_move_forward<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    for stage in Stage::ALL {
        assert_eq!(store.group_generation(stage).await.unwrap(), 0, "{stage}");
    }
    assert_eq!(
        store
            .advance_group_generation(Stage::Inbox, 0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .advance_group_generation(Stage::Inbox, 0)
            .await
            .unwrap(),
        1,
        "a second replica that saw generation 0 does not move it again"
    );
    assert_eq!(
        store
            .advance_group_generation(Stage::Inbox, 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .advance_group_generation(Stage::Inbox, 0)
            .await
            .unwrap(),
        2,
        "never backwards"
    );
    assert_eq!(store.group_generation(Stage::Inbox).await.unwrap(), 2);
    assert_eq!(
        store.group_generation(Stage::Fanout).await.unwrap(),
        0,
        "per stage"
    );
    drop(store);
    let reopened = h.open().await;
    assert_eq!(reopened.group_generation(Stage::Inbox).await.unwrap(), 2);
    assert_eq!(
        reopened
            .advance_group_generation(Stage::Fanout, 7)
            .await
            .unwrap(),
        8
    );
}

/// A lease has one holder at a time: a free lease is taken, its holder renews it, another
/// replica cannot take it until it expires (by the caller's clock) or is released, and then
/// exactly one of two replicas trying at once gets it. Leases are kept per name and survive a
/// reopen.
pub async fn a_lease_has_one_holder_until_it_expires<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let ttl = 10_000;
    assert_eq!(store.lease(TIMER_LEASE).await.unwrap(), None, "never taken");
    let a = store
        .acquire_lease(TIMER_LEASE, "a", NOW, ttl)
        .await
        .unwrap();
    assert_eq!(
        a,
        Lease {
            holder: "a".into(),
            expires_at_ms: NOW + ttl
        },
        "a free lease is taken"
    );
    let b = store
        .acquire_lease(TIMER_LEASE, "b", NOW + 1_000, ttl)
        .await
        .unwrap();
    assert_eq!(b.holder, "a", "held and unexpired: b does not get it");
    assert_eq!(b.expires_at_ms, NOW + ttl, "and b's try moves nothing");
    let renewed = store
        .acquire_lease(TIMER_LEASE, "a", NOW + 5_000, ttl)
        .await
        .unwrap();
    assert_eq!(
        renewed.expires_at_ms,
        NOW + 5_000 + ttl,
        "the holder renews"
    );
    let still = store
        .acquire_lease(TIMER_LEASE, "b", NOW + ttl + 1_000, ttl)
        .await
        .unwrap();
    assert_eq!(still.holder, "a", "the renewal pushed the expiry on");
    // a stops renewing (it was killed): once its lease expired, b takes it.
    let expired_at = NOW + 5_000 + ttl;
    let taken = store
        .acquire_lease(TIMER_LEASE, "b", expired_at, ttl)
        .await
        .unwrap();
    assert_eq!(
        taken,
        Lease {
            holder: "b".into(),
            expires_at_ms: expired_at + ttl
        },
        "an expired lease is taken over"
    );
    let late = store
        .acquire_lease(TIMER_LEASE, "a", expired_at + 1, ttl)
        .await
        .unwrap();
    assert_eq!(
        late.holder, "b",
        "the old holder coming back does not get it back"
    );
    // Release: only the holder's counts.
    store.release_lease(TIMER_LEASE, "a").await.unwrap();
    assert_eq!(store.lease(TIMER_LEASE).await.unwrap().unwrap().holder, "b");
    store.release_lease(TIMER_LEASE, "b").await.unwrap();
    let now = expired_at + 2;
    // Two replicas trying at once on a released lease: exactly one holds it after both.
    let (x, y) = tokio::join!(
        store.acquire_lease(TIMER_LEASE, "x", now, ttl),
        store.acquire_lease(TIMER_LEASE, "y", now, ttl)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let holder = store.lease(TIMER_LEASE).await.unwrap().unwrap().holder;
    assert!(holder == "x" || holder == "y", "{holder}");
    assert_eq!(
        (x.holder.as_str(), y.holder.as_str()),
        (holder.as_str(), holder.as_str()),
        "both were told the one holder"
    );
    // Per name, and kept across a reopen.
    assert_eq!(store.lease("other").await.unwrap(), None);
    drop(store);
    let reopened = h.open().await;
    assert_eq!(
        reopened.lease(TIMER_LEASE).await.unwrap().unwrap().holder,
        holder
    );
}
