//! How the embedded projection keeps ACKs by id: a device that acknowledges its notifications
//! by id, in order (what the JS client and most services do), leaves one cursor, not a row per
//! notification; only ids past a gap are kept one by one. What is pending is the same either way
//! (the contract suite's `acks_by_id_in_any_order_leave_the_rest_pending`).

use herald_core::model::{DeviceProgress, UserEvent};
use herald_core::partition::partition_for;
use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::contract::generate::{added, end_offsets};
use herald_ports::projection::{Positioned, ProjectionWriter, Snapshots, Stage};

fn progress(user: &str, device: &str, ids: &[&str]) -> UserEvent {
    UserEvent::Progress(DeviceProgress {
        user_id: user.into(),
        device_id: device.into(),
        delivered: vec![],
        acked_ids: ids.iter().map(|s| s.to_string()).collect(),
        acked_up_to: None,
        at: 1_700_000_000_000,
    })
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
    let events: Vec<Positioned<UserEvent>> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Positioned {
            partition,
            offset: i as u64,
            event,
        })
        .collect();
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

    // The gap filled: the cursor moves over n3 (this ACK) but stops at n4, whose ACK is a row.
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
    assert_eq!(snap.cursors.get(&key("phone")), Some(&3));
    let pending = herald_ports::projection::InboxReader::pending(
        &store,
        u,
        "phone",
        None,
        1_700_000_000_000,
        10,
    )
    .await
    .unwrap();
    assert!(
        pending.is_empty(),
        "phone acknowledged n0..=n4: {pending:?}"
    );
}
