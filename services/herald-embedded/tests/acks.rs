//! How the embedded projection keeps ACKs by id: a device that acknowledges its notifications
//! by id, in order (what the JS client and most services do), leaves one cursor, not a row per
//! notification; only ids past a gap are kept one by one, until the gap is filled, and rows the
//! device is never sent stop no cursor. What is pending is the same either way (the contract
//! suite's `acks_by_id_in_any_order_leave_the_rest_pending` and
//! `acks_by_id_around_rows_never_sent_leave_nothing_pending`).

use herald_core::model::{Delivery, UserEvent};
use herald_core::partition::partition_for;
use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::contract::generate::{self, added, end_offsets, placed};
use herald_ports::projection::{Positioned, ProjectionWriter, Snapshots, Stage};

fn progress(user: &str, device: &str, ids: &[&str]) -> UserEvent {
    generate::progress(user, device, ids, None)
}

#[tokio::test]
async fn in_order_acks_by_id_move_the_cursor_and_keep_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
        .await
        .unwrap();
    let u = "dana";
    let mut events: Vec<UserEvent> = (0..5)
        .map(|i| UserEvent::Added(added(u, &format!("n{i}")))) // 0..=4
        .collect();
    events.extend([
        progress(u, "phone", &["n0"]),        // 5
        progress(u, "phone", &["n2", "n1"]),  // 6
        progress(u, "phone", &["n4"]),        // 7: n3 not yet
        progress(u, "tablet", &["n0", "n1"]), // 8
    ]);
    let partition = partition_for(u, 4);
    let events = placed(u, 4, events);
    store
        .apply_user_events(Stage::Inbox, &events, &end_offsets(&events))
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    let key = |d: &str| (u.to_owned(), d.to_owned());
    assert_eq!(snap.cursors.get(&key("phone")), Some(&2));
    assert_eq!(snap.cursors.get(&key("tablet")), Some(&1));
    let rows: Vec<_> = snap.acks.iter().cloned().collect();
    assert_eq!(
        rows,
        vec![(u.to_owned(), "phone".to_owned(), 4)],
        "only the ACK past the gap is kept by id"
    );

    // The gap filled: the cursor moves over n3 (this ACK) and n4 (acknowledged by id before),
    // and the ACK by id the cursor now covers is gone.
    let fill = Positioned {
        partition,
        offset: 9,
        event: progress(u, "phone", &["n3"]),
    };
    let fill = [fill];
    store
        .apply_user_events(Stage::Inbox, &fill, &end_offsets(&fill))
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.cursors.get(&key("phone")), Some(&4));
    assert!(snap.acks.is_empty(), "{:?}", snap.acks);
    let pending = herald_ports::projection::InboxReader::pending(
        &store,
        u,
        "phone",
        None,
        1_700_000_000_000,
        herald_ports::projection::PageBound::rows(10),
    )
    .await
    .unwrap();
    assert!(
        pending.is_empty(),
        "phone acknowledged n0..=n4: {pending:?}"
    );
}

/// The table of ACKs by id stays as small as the device's gaps: a device whose user mutes an
/// event type (rows kept off its devices) and that ACKs a little out of order, as a client
/// handling notifications concurrently does, ends with its cursor at its last ACK and no rows.
#[tokio::test]
async fn rows_never_sent_and_filled_gaps_leave_no_acks_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
        .await
        .unwrap();
    let u = "finn";
    let mut events = Vec::new();
    // 50 rounds: a muted row, two live ones, and their ACKs in the wrong order.
    for round in 0..50 {
        let mut muted = added(u, &format!("m{round}"));
        muted.delivery = Delivery::Muted;
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        events.extend([
            UserEvent::Added(muted),
            UserEvent::Added(added(u, &a)),
            UserEvent::Added(added(u, &b)),
            progress(u, "phone", &[&b]),
            progress(u, "phone", &[&a]),
        ]);
    }
    let events = placed(u, 4, events);
    for chunk in events.chunks(7) {
        store
            .apply_user_events(Stage::Inbox, chunk, &end_offsets(chunk))
            .await
            .unwrap();
    }
    let snap = store.snapshot().await.unwrap();
    let last_b = events
        .iter()
        .rev()
        .find_map(|p| match &p.event {
            UserEvent::Added(a) if a.notification_id == "b49" => Some(p.offset),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        snap.cursors.get(&(u.to_owned(), "phone".to_owned())),
        Some(&last_b)
    );
    assert!(
        snap.acks.is_empty(),
        "{} rows: {:?}",
        snap.acks.len(),
        snap.acks
    );
}
