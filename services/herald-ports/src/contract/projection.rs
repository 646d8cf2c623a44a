//! The projection contract. Stores are compared with the reference fold.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::model::*;

use super::generate::{added, end_offsets, placed, progress, reference, user_log};
use crate::projection::*;

mod directory;
mod operations;
pub use directory::*;
pub use operations::*;

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
    placed(user, PARTITIONS, events)
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
    let phone = store
        .pending(u, "phone", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(seqs(phone), vec![2, 10]);
    let laptop = store
        .pending(u, "laptop", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(seqs(laptop), vec![0, 1, 2, 3, 10], "laptop acked nothing");
    let after = store
        .pending(u, "laptop", Some(2), NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(seqs(after), vec![3, 10], "strictly after the resume cursor");
    let limited = store
        .pending(u, "laptop", None, NOW, PageBound::rows(2))
        .await
        .unwrap();
    assert_eq!(seqs(limited), vec![0, 1]);
    let later = store
        .pending(u, "laptop", Some(3), NOW + 120_000, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(seqs(later), vec![4, 10], "the scheduled one is due later");
    assert_eq!(store.device_cursor(u, "phone").await.unwrap(), Some(1));
    assert_eq!(store.device_cursor(u, "laptop").await.unwrap(), None);
    assert!(
        store
            .pending("bob", "phone", None, NOW, PageBound::rows(100))
            .await
            .unwrap()[0]
            .notification_id
            == "n-bob"
    );
    assert!(
        store.row(u, "n-bob").await.unwrap().is_none(),
        "no cross-user lookup"
    );
}

/// A device's ACKs by id, as its sessions append them (`DeviceProgress`): in order, several at
/// once, out of order, repeated, for a row added after the ACK, for an id the user does not
/// have. A store may keep them as ids or move the device's cursor over them (see
/// `ProjectionState::advances_cursors_by_id`); what is pending comes out the same.
pub async fn acks_by_id_in_any_order_leave_the_rest_pending<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "carol";
    let acked = |device: &str, ids: &[&str]| progress(u, device, ids, None);
    let mut events: Vec<UserEvent> = (0..6)
        .map(|i| UserEvent::Added(added(u, &format!("n{i}")))) // 0..=5
        .collect();
    events.extend([
        acked("phone", &["n0"]),           // 6
        acked("phone", &["n1"]),           // 7
        acked("phone", &["n3", "n2"]),     // 8
        acked("phone", &["n5"]),           // 9: before n4
        acked("phone", &["n4", "n1"]),     // 10: the gap, and n1 again
        acked("laptop", &["n1"]),          // 11: not n0
        UserEvent::Added(added(u, "n12")), // 12
        acked("phone", &["nope", "n12"]),  // 13
        acked("phone", &["n15"]),          // 14: before n15 exists
        UserEvent::Added(added(u, "n15")), // 15
    ]);
    let events = for_user(u, events);
    apply_in_batches(&store, Stage::Inbox, &events, 3).await;
    let seqs = |rows: Vec<herald_core::projection::InboxRow>| -> Vec<u64> {
        rows.iter().map(|r| r.seq).collect()
    };
    let phone = store
        .pending(u, "phone", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(
        seqs(phone),
        vec![15],
        "phone acknowledged everything before n15"
    );
    let laptop = store
        .pending(u, "laptop", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(seqs(laptop), vec![0, 2, 3, 4, 5, 12, 15]);
    let resumed = store
        .pending(u, "laptop", Some(3), NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(seqs(resumed), vec![4, 5, 12, 15]);
    assert_matches_reference(&store, &events).await;
}

/// ACKs by id around rows a device is never sent: one the user's preferences keep off their
/// devices, one superseded by a newer row of its collapse key, one expired. None of them waits
/// for an ACK, so none may leave what follows pending, nor become pending itself.
pub async fn acks_by_id_around_rows_never_sent_leave_nothing_pending<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "erin";
    let acked = |ids: &[&str]| progress(u, "phone", ids, None);
    let keyed = |id: &str| {
        let mut a = added(u, id);
        a.collapse_key = Some("order-9".into());
        UserEvent::Added(a)
    };
    let mut quiet = added(u, "n1");
    quiet.delivery = Delivery::Inbox;
    let events = for_user(
        u,
        vec![
            UserEvent::Added(added(u, "n0")), // 0
            UserEvent::Added(quiet),          // 1: never sent
            keyed("n2"),                      // 2: superseded by n3
            keyed("n3"),                      // 3
            UserEvent::Added(added(u, "n4")), // 4: expires at 10
            UserEvent::Added(added(u, "n5")), // 5
            acked(&["n0"]),                   // 6
            acked(&["n5"]),                   // 7: before n3
            acked(&["n3"]),                   // 8: the gap
            UserEvent::Added(added(u, "n9")), // 9
            UserEvent::Expired(NotificationExpired {
                user_id: u.into(),
                notification_id: "n4".into(),
                at: NOW,
            }), // 10
            acked(&["n9"]),                   // 11
            UserEvent::Added(added(u, "n12")), // 12
        ],
    );
    apply_in_batches(&store, Stage::Inbox, &events, 2).await;
    let pending = store
        .pending(u, "phone", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    let seqs: Vec<u64> = pending.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        vec![12],
        "everything sendable before n12 is acknowledged"
    );
    let laptop = store
        .pending(u, "laptop", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    let seqs: Vec<u64> = laptop.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        vec![0, 3, 5, 9, 12],
        "another device: what is sent at all"
    );
    assert_matches_reference(&store, &events).await;
}

/// A notification expanded to a user twice (the fanout stage re-expanded a request after a
/// crash: the same id again, at a later offset) is in the inbox once, as first added: the
/// repeat changes no row, no unread count and no collapse key's holder, whether it comes in
/// the batch of the first or in a later one.
pub async fn a_repeated_notification_is_in_the_inbox_once<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "alice";
    let keyed = |id: &str, key: &str| {
        let mut a = added(u, id);
        a.collapse_key = Some(key.into());
        UserEvent::Added(a)
    };
    let events = for_user(
        u,
        vec![
            UserEvent::Added(added(u, "n0")), // 0
            keyed("n1", "order-7"),           // 1
            UserEvent::Added(added(u, "n0")), // 2: n0 again, same batch
            keyed("n3", "order-7"),           // 3: supersedes n1
            keyed("n1", "order-7"),           // 4: n1 again, a later batch
            UserEvent::Added(added(u, "n0")), // 5: and n0
            UserEvent::Added(added(u, "n6")), // 6
        ],
    );
    apply_in_batches(&store, Stage::Inbox, &events, 4).await;
    assert_matches_reference(&store, &events).await;
    let rows = store.snapshot().await.unwrap().rows;
    let mut ids: Vec<(u64, String, bool)> = rows
        .values()
        .filter(|r| r.user_id == u)
        .map(|r| (r.seq, r.notification_id.clone(), r.superseded))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            (0, "n0".to_string(), false),
            (1, "n1".to_string(), true),
            (3, "n3".to_string(), false),
            (6, "n6".to_string(), false),
        ],
        "each id once, at its first offset; n1 stays superseded by n3"
    );
    assert_eq!(store.unread_count(u).await.unwrap(), 3, "n0, n3 and n6");
    let phone = store
        .pending(u, "phone", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    let seqs: Vec<u64> = phone.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![0, 3, 6]);
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
        seqs(
            store
                .pending(u, "phone", None, NOW, PageBound::rows(100))
                .await
                .unwrap()
        ),
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
        let page = store
            .pending(u, "d", after, NOW, PageBound::rows(250))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().seq);
        got.extend(page.into_iter().map(|r| r.seq));
    }
    assert_eq!(got, expected);
}

/// A page of pending rows stops at the first row that takes its weight past the bound's bytes
/// (that row included, one row at least), and pages read so bring every row once, in order.
/// Rows the device acknowledged do not count.
pub async fn pending_stops_at_its_byte_bound<H: ProjectionHarness>(h: &H) {
    let store = h.open().await;
    let u = "heavy";
    // Small and large payloads in turn, so a page sized by rows meets heavier ones.
    let sizes = [10usize, 20, 30_000, 10, 60_000, 5, 5, 40_000, 10, 20];
    let mut events: Vec<UserEvent> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let mut n = added(u, &format!("n{i}"));
            // One of them not ASCII: a store that weighs text in characters counts fewer than
            // its bytes, and must still bring every row the bound takes (rows it reads past
            // the cut are not seen here: the exact cut hides them).
            let pad = if i == 1 { "é" } else { "x" };
            n.payload = format!(r#"{{"pad":"{}"}}"#, pad.repeat(*size));
            UserEvent::Added(n)
        })
        .collect();
    events.push(UserEvent::Acked(NotificationAcked {
        user_id: u.into(),
        device_id: "d".into(),
        notification_ids: vec!["n4".into()],
        up_to: None,
        at: NOW,
    }));
    let events = for_user(u, events);
    apply_in_batches(&store, Stage::Inbox, &events, 4).await;
    let all = store
        .pending(u, "d", None, NOW, PageBound::rows(100))
        .await
        .unwrap();
    assert_eq!(all.len(), sizes.len() - 1, "n4 was acknowledged");
    let weight = |rows: &[herald_core::projection::InboxRow]| -> Vec<usize> {
        rows.iter()
            .map(herald_core::delivery::Weigh::bytes)
            .collect()
    };
    let w = weight(&all);
    let mut bounds = vec![
        0,
        1,
        w[0],
        w[0] + 1,
        w[0] + w[1] + w[2] - 1,
        w[0] + w[1] + w[2],
    ];
    bounds.push(w.iter().sum::<usize>() - 1);
    bounds.push(usize::MAX);
    for max_bytes in bounds {
        let bound = PageBound {
            limit: 100,
            max_bytes,
        };
        let page = store.pending(u, "d", None, NOW, bound).await.unwrap();
        let expected = bound
            .take(all.iter().cloned().map(Ok::<_, std::convert::Infallible>))
            .unwrap();
        assert_eq!(page, expected, "max_bytes {max_bytes}");
        assert!(!page.is_empty(), "one row at least");
        let first: usize = weight(&page).iter().rev().skip(1).sum();
        assert!(first <= max_bytes, "no row after the one past the bound");
    }
    let limit_0 = PageBound {
        limit: 0,
        max_bytes: usize::MAX,
    };
    let page = store.pending(u, "d", None, NOW, limit_0).await.unwrap();
    assert_eq!(
        page,
        all[..1],
        "a limit of 0 reads one row, as 0 bytes does"
    );
    // Pages of about two large rows bring all of them, once each and in order.
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let bound = PageBound {
            limit: 4,
            max_bytes: 70_000,
        };
        let page = store.pending(u, "d", after, NOW, bound).await.unwrap();
        let full = bound.full(page.len(), weight(&page).iter().sum());
        after = page.last().map(|r| r.seq);
        got.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(got, all);
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
