//! The projection contract. Stores are compared with the reference fold.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::model::*;

use super::generate::{added, end_offsets, placed, progress, reference, user_log};
use crate::projection::*;

mod directory;
mod operations;
mod pending;
pub use directory::*;
pub use operations::*;
pub use pending::*;

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
