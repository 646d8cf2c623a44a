//! The projection fold: behaviour of each event, and property tests over random logs.

use herald_core::batch::{self, BatchState};
use herald_core::mem::MemProjection;
use herald_core::model::*;
use herald_core::projection::ProjectionState;
use proptest::prelude::*;

fn added(user: &str, id: &str, collapse: Option<&str>) -> UserEvent {
    UserEvent::Added(NotificationAdded {
        user_id: user.into(),
        notification_id: id.into(),
        event_type: "t".into(),
        source: "s".into(),
        payload: "{}".into(),
        priority: Priority::Normal,
        collapse_key: collapse.map(Into::into),
        deliver_at: None,
        expires_at: None,
        created_at: 0,
        traceparent: None,
        delivery: herald_core::model::Delivery::Live,
    })
}

fn mark(user: &str, ids: &[&str], up_to: Option<i64>) -> MarkChange {
    MarkChange {
        user_id: user.into(),
        device_id: Some("d".into()),
        notification_ids: ids.iter().map(|s| s.to_string()).collect(),
        up_to,
        at: 1,
    }
}

fn acked(user: &str, device: &str, ids: &[&str], up_to: Option<i64>) -> UserEvent {
    UserEvent::Acked(NotificationAcked {
        user_id: user.into(),
        device_id: device.into(),
        notification_ids: ids.iter().map(|s| s.to_string()).collect(),
        up_to,
        at: 1,
    })
}

fn fold(events: &[UserEvent]) -> MemProjection {
    MemProjection::fold_all(events.iter().enumerate().map(|(i, e)| (i as u64, e)))
}

fn unread(m: &MemProjection, user: &str) -> u64 {
    m.snapshot.unread.get(user).copied().unwrap_or(0)
}

fn added_as(user: &str, id: &str, delivery: Delivery) -> UserEvent {
    let UserEvent::Added(a) = added(user, id, None) else {
        unreachable!()
    };
    UserEvent::Added(NotificationAdded { delivery, ..a })
}

#[test]
fn a_muted_notification_is_stored_read_and_an_inbox_only_one_unread_neither_live() {
    let m = fold(&[
        added_as("a", "muted", Delivery::Muted),
        added_as("a", "quiet", Delivery::Inbox),
        added("a", "loud", None),
    ]);
    let row = |seq: u64| &m.snapshot.rows[&("a".to_string(), seq)];
    assert!(row(0).read && !row(0).live, "muted: read, not live");
    assert!(!row(1).read && !row(1).live, "inbox only: unread, not live");
    assert!(!row(2).read && row(2).live, "live by default");
    assert_eq!(unread(&m, "a"), 2, "the muted one is not counted");
    assert!(m.snapshot.check_invariants().is_empty());
    // Marking the muted one unread counts it like any other row.
    let mut m = m;
    m.apply(3, &UserEvent::Unread(mark("a", &["muted"], None)));
    assert_eq!(unread(&m, "a"), 3);
}

#[test]
fn the_newest_preferences_event_is_the_users_document() {
    let prefs = |live: bool| PreferencesChanged {
        user_id: "a".into(),
        event_types: vec![PreferenceRule {
            name: "t".into(),
            live,
            inbox: true,
        }],
        topics: vec![],
        at: 1,
    };
    let m = fold(&[
        UserEvent::Preferences(prefs(false)),
        UserEvent::Preferences(prefs(true)),
    ]);
    assert_eq!(m.snapshot.preferences["a"], prefs(true).preferences());
    assert!(m.snapshot.rows.is_empty() && m.snapshot.unread.is_empty());
}

#[test]
fn duplicate_added_is_a_no_op() {
    let m = fold(&[added("a", "n1", None), added("a", "n1", None)]);
    assert_eq!(m.snapshot.rows.len(), 1);
    assert_eq!(m.snapshot.rows[&("a".into(), 0)].notification_id, "n1");
    assert_eq!(unread(&m, "a"), 1);
}

#[test]
fn read_unread_archive_expire_keep_the_count_exact() {
    let m = fold(&[
        added("a", "n1", None),
        added("a", "n2", None),
        added("a", "n3", None),
        UserEvent::Read(mark("a", &["n1", "n1"], None)),
    ]);
    assert_eq!(unread(&m, "a"), 2, "a duplicated id is read once");
    let m = fold(&[
        added("a", "n1", None),
        added("a", "n2", None),
        added("a", "n3", None),
        UserEvent::Read(mark("a", &[], Some(1))),
        UserEvent::Unread(mark("a", &["n1"], None)),
        UserEvent::Archived(mark("a", &["n1"], None)),
        UserEvent::Expired(NotificationExpired {
            user_id: "a".into(),
            notification_id: "n3".into(),
            at: 2,
        }),
    ]);
    let rows = &m.snapshot.rows;
    assert!(rows[&("a".into(), 0)].archived && !rows[&("a".into(), 0)].read);
    assert!(rows[&("a".into(), 1)].read);
    assert!(rows[&("a".into(), 2)].expired);
    assert_eq!(unread(&m, "a"), 0);
    assert!(m.snapshot.check_invariants().is_empty());
}

#[test]
fn a_newer_collapse_key_supersedes_the_older_row() {
    let m = fold(&[
        added("a", "n1", Some("order-1")),
        added("a", "n2", Some("order-1")),
        added("a", "n3", Some("order-2")),
    ]);
    assert!(m.snapshot.rows[&("a".into(), 0)].superseded);
    assert!(!m.snapshot.rows[&("a".into(), 1)].superseded);
    assert_eq!(unread(&m, "a"), 2);
}

#[test]
fn unarchive_lists_the_row_again_and_the_newer_collapse_key_row_wins() {
    let m = fold(&[
        added("a", "n1", None),
        UserEvent::Archived(mark("a", &["n1"], None)),
        UserEvent::Unarchived(mark("a", &["n1"], None)),
    ]);
    let row = &m.snapshot.rows[&("a".into(), 0)];
    assert!(!row.archived && row.listed());
    assert_eq!(unread(&m, "a"), 1, "unread again once back in the list");
    // n1 is archived when n2 arrives with its key, so n2 supersedes nothing; unarchiving n1
    // must not list two rows of one key: the newer, n2, stays.
    let m = fold(&[
        added("a", "n1", Some("k")),
        UserEvent::Archived(mark("a", &["n1"], None)),
        added("a", "n2", Some("k")),
        UserEvent::Unarchived(mark("a", &["n1"], None)),
    ]);
    assert!(m.snapshot.rows[&("a".into(), 0)].superseded);
    assert!(m.snapshot.rows[&("a".into(), 2)].listed());
    assert_eq!(unread(&m, "a"), 1);
    assert!(m.snapshot.check_invariants().is_empty());
    // The other way round: the newer row comes back over an older listed one.
    let m = fold(&[
        added("a", "n1", Some("k")),
        UserEvent::Archived(mark("a", &["n1"], None)),
        added("a", "n2", Some("k")),
        UserEvent::Archived(mark("a", &["n2"], None)),
        UserEvent::Unarchived(mark("a", &["n1"], None)),
        UserEvent::Unarchived(mark("a", &["n2"], None)),
    ]);
    assert!(m.snapshot.rows[&("a".into(), 0)].superseded);
    assert!(m.snapshot.rows[&("a".into(), 2)].listed());
    assert_eq!(unread(&m, "a"), 1);
    assert!(m.snapshot.check_invariants().is_empty());
}

#[test]
fn acks_are_per_device_and_the_cursor_never_moves_back() {
    let m = fold(&[
        added("a", "n1", None),
        added("a", "n2", None),
        acked("a", "phone", &["n2"], Some(0)),
        acked("a", "phone", &[], Some(0)),
        acked("a", "laptop", &[], Some(1)),
        acked("a", "phone", &[], Some(1)),
        acked("a", "phone", &[], Some(0)),
    ]);
    let c = &m.snapshot.cursors;
    assert_eq!(c[&("a".into(), "phone".into())], 1);
    assert_eq!(c[&("a".into(), "laptop".into())], 1);
    assert!(m.snapshot.acks.contains(&("a".into(), "phone".into(), 1)));
    assert!(!m.snapshot.acks.contains(&("a".into(), "laptop".into(), 1)));
}

#[test]
fn an_ack_cannot_reach_past_its_own_position() {
    let m = fold(&[
        added("a", "n1", None),
        acked("a", "phone", &[], Some(1_000)),
    ]);
    assert_eq!(m.snapshot.cursors[&("a".into(), "phone".into())], 0);
}

#[test]
fn events_never_touch_another_users_rows_or_later_rows() {
    let early = vec![
        UserEvent::Read(mark("a", &["n1"], None)),
        added("a", "n1", None),
        added("b", "n2", None),
        UserEvent::Read(mark("a", &["n2"], None)),
        acked("a", "phone", &["n2"], None),
    ];
    let m = fold(&early);
    assert!(
        !m.snapshot.rows[&("a".into(), 1)].read,
        "the read came before the row"
    );
    assert!(
        !m.snapshot.rows[&("b".into(), 2)].read,
        "b's row is not a's"
    );
    assert!(m.snapshot.acks.is_empty(), "a cannot ack b's row");
    assert_eq!(unread(&m, "a"), 1);
    assert_eq!(unread(&m, "b"), 1);

    let mut later = early;
    later.push(UserEvent::Read(mark("a", &[], Some(100))));
    later.push(added("a", "n3", None));
    let m = fold(&later);
    // The read-all at offset 5 covers a's row at seq 1, not b's row, not n3 added after it.
    assert!(m.snapshot.rows[&("a".into(), 1)].read);
    assert!(!m.snapshot.rows[&("b".into(), 2)].read);
    assert!(!m.snapshot.rows[&("a".into(), 6)].read);
    assert_eq!(unread(&m, "a"), 1);
}

// ---------------------------------------------------------------------------------------------
// Property tests

const USERS: [&str; 3] = ["u0", "u1", "u2"];
const IDS: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];
const DEVICES: [&str; 2] = ["d0", "d1"];

fn arb_ids() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(prop::sample::select(&IDS[..]).prop_map(String::from), 0..3)
}

fn arb_up_to() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), (-1i64..60).prop_map(Some)]
}

fn arb_event() -> impl Strategy<Value = UserEvent> {
    let user = prop::sample::select(&USERS[..]).prop_map(String::from);
    let id = prop::sample::select(&IDS[..]).prop_map(String::from);
    let device = prop::sample::select(&DEVICES[..]).prop_map(String::from);
    let collapse = prop_oneof![Just(None), Just(Some("k0")), Just(Some("k1"))];
    let mark = || {
        (
            prop::sample::select(&USERS[..]).prop_map(String::from),
            arb_ids(),
            arb_up_to(),
        )
            .prop_map(|(u, ids, up_to)| MarkChange {
                user_id: u,
                device_id: None,
                notification_ids: ids,
                up_to,
                at: 7,
            })
    };
    prop_oneof![
        4 => (user.clone(), id.clone(), collapse).prop_map(|(u, n, c)| added(&u, &n, c)),
        1 => (user.clone(), device.clone(), id.clone()).prop_map(|(u, d, n)| UserEvent::Delivered(NotificationDelivered { user_id: u, device_id: d, notification_id: n, at: 3 })),
        2 => (user.clone(), device, arb_ids(), arb_up_to()).prop_map(|(u, d, ids, up_to)| UserEvent::Acked(NotificationAcked { user_id: u, device_id: d, notification_ids: ids, up_to, at: 4 })),
        2 => mark().prop_map(UserEvent::Read),
        1 => mark().prop_map(UserEvent::Unread),
        1 => mark().prop_map(UserEvent::Archived),
        1 => mark().prop_map(UserEvent::Unarchived),
        1 => (user, id).prop_map(|(u, n)| UserEvent::Expired(NotificationExpired { user_id: u, notification_id: n, at: 9 })),
    ]
}

/// Found by the property below: an unarchive redelivered after a crash met a row of its collapse
/// key added after it, and superseded the unarchived row although its own later archive was
/// redelivered too.
#[test]
fn a_redelivered_unarchive_ignores_rows_added_after_it() {
    let events = vec![
        added("u1", "n1", Some("k1")),
        UserEvent::Unarchived(mark("u1", &["n1"], None)),
        UserEvent::Archived(mark("u1", &["n1"], None)),
        added("u1", "n2", Some("k1")),
    ];
    let reference = fold(&events);
    let mut m = MemProjection::new();
    for (i, e) in events.iter().enumerate() {
        m.apply(i as u64, e);
    }
    for (i, e) in events.iter().enumerate() {
        m.apply(i as u64, e); // the whole log again
    }
    assert!(m.snapshot.check_invariants().is_empty());
    let diff = reference.snapshot.diff(&m.snapshot, 10);
    assert!(diff.is_empty(), "{diff:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For a random log with random crash points, where each restart resumes from an offset at
    /// or before the crash (at-least-once redelivery of a suffix), the incrementally built
    /// projection equals one fold over the whole log, and the unread count equals the list.
    #[test]
    fn crash_and_redeliver_suffix_equals_one_fold(
        events in proptest::collection::vec(arb_event(), 0..60),
        crashes in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..6),
    ) {
        let reference = fold(&events);
        prop_assert!(reference.snapshot.check_invariants().is_empty(), "{:?}", reference.snapshot.check_invariants());

        // Turn the crash list into (crash_at, resume_from <= crash_at) pairs in log order.
        let mut points: Vec<(usize, usize)> = crashes
            .iter()
            .map(|(c, r)| {
                let crash = c.index(events.len() + 1);
                (crash, r.index(crash + 1))
            })
            .collect();
        points.sort();

        let mut m = MemProjection::new();
        let mut next = 0usize;
        for (crash, resume) in points {
            while next < crash.max(next) {
                m.apply(next as u64, &events[next]);
                next += 1;
            }
            next = resume.min(next); // redeliver from an earlier committed offset
            prop_assert!(m.snapshot.check_invariants().is_empty());
        }
        while next < events.len() {
            m.apply(next as u64, &events[next]);
            next += 1;
        }
        prop_assert!(m.snapshot.check_invariants().is_empty(), "{:?}", m.snapshot.check_invariants());
        let diff = reference.snapshot.diff(&m.snapshot, 10);
        prop_assert!(diff.is_empty(), "{:#?}", diff);
    }

    /// Applying every event twice in a row changes nothing compared with once.
    #[test]
    fn every_event_is_idempotent(events in proptest::collection::vec(arb_event(), 0..60)) {
        let once = fold(&events);
        let mut twice = MemProjection::new();
        for (i, e) in events.iter().enumerate() {
            twice.apply(i as u64, e);
            twice.apply(i as u64, e);
        }
        prop_assert_eq!(once.snapshot, twice.snapshot);
    }

    /// Folding batches through [`BatchState`] (facts fetched from the store as of the batch's
    /// start, with or without prefetching, writes flushed at the end) equals one fold.
    #[test]
    fn batches_over_fetched_facts_equal_one_fold(
        events in proptest::collection::vec(arb_event(), 0..60),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        prefetching in any::<bool>(),
    ) {
        let reference = fold(&events);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(events.len() + 1)).collect();
        cuts.push(events.len());
        cuts.sort();
        let mut store = MemProjection::new();
        let mut start = 0;
        for end in cuts {
            let batch = &events[start..end];
            let mut state = BatchState::new();
            if prefetching {
                for need in batch::prefetch(batch) {
                    let Ok(fact) = batch::answer(&mut store, &need);
                    state.fill(&need, fact).unwrap();
                }
            }
            for (i, e) in batch.iter().enumerate() {
                let mut rounds = 0;
                loop {
                    match state.try_apply((start + i) as u64, e) {
                        Ok(_) => break,
                        Err(need) => {
                            let Ok(fact) = batch::answer(&mut store, &need);
                            state.fill(&need, fact).unwrap();
                        }
                    }
                    rounds += 1;
                    prop_assert!(rounds < 100, "no progress");
                }
            }
            for (_, w) in state.into_writes() {
                let Ok(()) = store.write(w);
            }
            start = end;
        }
        let diff = reference.snapshot.diff(&store.snapshot, 10);
        prop_assert!(diff.is_empty(), "{:#?}", diff);
    }
}
