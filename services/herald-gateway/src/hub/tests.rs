//! The hub's unit tests: recent records, eviction, and following partitions.

use herald_ports::log::Record;

use super::*;

/// A hub on a fresh embedded log whose partitions are all followed from `start`.
async fn hub(partitions: u32, start: u64, recent_bytes: usize) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = herald_embedded::EmbeddedLog::open(
        &dir.path().join("log.db"),
        herald_embedded::Access::ReadWrite,
        herald_embedded::LogOptions {
            requests_partitions: None,
            user_partitions: Some(partitions),
            ..herald_embedded::LogOptions::default()
        },
    )
    .await
    .unwrap();
    let h = Hub::new(Arc::new(log), recent_bytes * partitions as usize);
    for part in &mut h.state.lock().unwrap().parts {
        part.followed = true;
        part.position = start;
        part.recent = Recent::from(start);
    }
    (h, dir)
}

fn record(partition: u32, offset: u64, key: &str) -> StoredRecord {
    StoredRecord {
        topic: Topic::UserEvents,
        partition,
        offset,
        record: Arc::new(Record {
            partition,
            key: key.to_owned(),
            value: vec![0; 10],
            headers: Vec::new(),
            timestamp_ms: 0,
        }),
    }
}

fn offsets(records: Option<Vec<StoredRecord>>) -> Option<Vec<u64>> {
    records.map(|rs| rs.iter().map(|r| r.offset).collect())
}

#[tokio::test]
async fn recent_records_answer_only_gaps_they_hold_whole() {
    let (h, _dir) = hub(2, 5, RECENT_BYTES).await;
    h.dispatch((5..10).map(|o| record(0, o, "u")).collect());
    h.dispatch(vec![record(1, 5, "v")]);
    // From the hub's start on, in order, up to max.
    assert_eq!(offsets(h.recent(0, 5, 3)), Some(vec![5, 6, 7]));
    assert_eq!(offsets(h.recent(0, 8, 100)), Some(vec![8, 9]));
    assert_eq!(offsets(h.recent(1, 5, 100)), Some(vec![5]));
    // At the end: nothing yet, but nothing missed either.
    assert_eq!(offsets(h.recent(0, 10, 100)), Some(vec![]));
    // Before the hub started: the log has to answer.
    assert_eq!(offsets(h.recent(0, 4, 100)), None);
    // A re-read record is not kept twice.
    h.dispatch(vec![record(0, 9, "u")]);
    assert_eq!(offsets(h.recent(0, 9, 100)), Some(vec![9]));
}

fn read_by(user: &str, at: i64) -> UserEvent {
    UserEvent::Read(herald_core::model::MarkChange {
        user_id: user.into(),
        device_id: None,
        notification_ids: vec![format!("n{at}")],
        up_to: None,
        at,
    })
}

async fn append(log: &dyn EventLog, event: &UserEvent) -> u64 {
    let record =
        herald_ports::records::user_event_record(event, log.partitions(Topic::UserEvents), 0)
            .unwrap();
    log.append(Topic::UserEvents, vec![record]).await.unwrap()[0].offset
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_follows_the_partitions_of_its_sessions_and_drops_idle_ones() {
    let (mut h, _dir) = hub(4, 0, RECENT_BYTES).await;
    for part in &mut h.state.get_mut().unwrap().parts {
        *part = Part::new();
    }
    h.linger = Duration::from_millis(300);
    let log = h.log.clone();
    let shutdown = CancellationToken::new();
    let h = Hub::spawn(h, shutdown.clone()).await.unwrap();
    let u = "u-affine";
    let pu = partition_for(u, 4);
    let v = (0..100)
        .map(|i| format!("v{i}"))
        .find(|v| partition_for(v, 4) != pu)
        .unwrap();
    // Before any session, nothing is followed; records appended now are the log's.
    append(log.as_ref(), &read_by(u, 1)).await;
    append(log.as_ref(), &read_by(&v, 1)).await;
    assert_eq!(h.followed(), vec![]);

    // A session follows its user's partition from the partition's end.
    let end = log.end_offset(Topic::UserEvents, pu).await.unwrap();
    let mut reg = h.register(u, "d1").await.unwrap();
    assert_eq!((reg.partition, reg.live_from), (pu, end));
    assert_eq!(h.followed(), vec![(pu, end)]);
    let mine = append(log.as_ref(), &read_by(u, 2)).await;
    append(log.as_ref(), &read_by(&v, 2)).await;
    let got = tokio::time::timeout(Duration::from_secs(30), reg.rx.recv())
        .await
        .expect("the live event within 30 s")
        .unwrap();
    assert_eq!((got.partition, got.offset), (pu, mine));
    // The other user's partition was never read.
    assert_eq!(h.followed().len(), 1);
    assert_eq!(h.followed()[0].0, pu);

    // Idle past the linger: not followed any more.
    h.unregister(u, reg.id);
    wait_until("the idle partition dropped", || h.followed().is_empty()).await;
    assert!(
        h.recent(pu, mine, 10).is_none(),
        "no recent records of a dropped partition"
    );

    // Back again: followed from the new end; what came meanwhile is before `live_from`.
    let meanwhile = append(log.as_ref(), &read_by(u, 3)).await;
    let reg = h.register(u, "d1").await.unwrap();
    assert_eq!(reg.live_from, meanwhile + 1);
    let next = append(log.as_ref(), &read_by(u, 4)).await;
    let mut rx = reg.rx;
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the live event within 30 s")
        .unwrap();
    assert_eq!(
        got.offset, next,
        "the first live event is the first after live_from"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn evicted_records_move_the_complete_mark() {
    // Room for two records of 11 bytes (a 1-byte key and 10 bytes of value) per partition.
    let (h, _dir) = hub(1, 0, 22).await;
    h.dispatch((0..5).map(|o| record(0, o, "u")).collect());
    assert_eq!(offsets(h.recent(0, 3, 100)), Some(vec![3, 4]));
    assert_eq!(offsets(h.recent(0, 2, 100)), None);
    let (h, _dir) = hub(1, 0, RECENT_BYTES).await;
    h.dispatch(
        (0..RECENT_RECORDS as u64 + 3)
            .map(|o| record(0, o, "u"))
            .collect(),
    );
    assert_eq!(offsets(h.recent(0, 2, 1)), None);
    assert_eq!(offsets(h.recent(0, 3, 1)), Some(vec![3]));
}

/// A notification added for several users is decoded once and reaches the sessions of each
/// recipient here as that user's own `Added`, at the record's offset; others get nothing.
#[tokio::test]
async fn a_notification_for_several_users_reaches_each_recipient_as_its_own() {
    use herald_core::model::{AddedRecipient, Delivery, NotificationAdded, NotificationsAdded};
    let (h, _dir) = hub(1, 0, RECENT_BYTES).await;
    let mut a = h.register("a", "d").await.unwrap();
    let mut b = h.register("b", "d").await.unwrap();
    let mut c = h.register("c", "d").await.unwrap();
    let content = NotificationAdded {
        user_id: String::new(),
        notification_id: "n1".into(),
        event_type: "t".into(),
        source: "s".into(),
        payload: "{}".into(),
        priority: Default::default(),
        collapse_key: None,
        deliver_at: None,
        expires_at: None,
        created_at: 1,
        traceparent: None,
        delivery: Delivery::Live,
    };
    let recipients = [
        ("a", Delivery::Live),
        ("x", Delivery::Live),
        ("b", Delivery::Inbox),
    ]
    .into_iter()
    .map(|(u, delivery)| AddedRecipient {
        user_id: u.into(),
        delivery,
    })
    .collect();
    let many = NotificationsAdded::of(&content, recipients);
    let record = herald_ports::records::users_added_record(&many, 0, 0).unwrap();
    h.dispatch(vec![StoredRecord {
        topic: Topic::UserEvents,
        partition: 0,
        offset: 0,
        record: Arc::new(record),
    }]);
    for (reg, user, delivery) in [
        (&mut a, "a", Delivery::Live),
        (&mut b, "b", Delivery::Inbox),
    ] {
        let got = reg.rx.try_recv().expect("an event for each recipient");
        assert_eq!(got.offset, 0);
        let UserEvent::Added(added) = got.event.as_ref() else {
            panic!("an Added, got {:?}", got.event);
        };
        assert_eq!(
            added,
            &NotificationAdded {
                user_id: user.into(),
                delivery,
                ..content.clone()
            }
        );
        assert!(reg.rx.try_recv().is_none(), "one event each");
    }
    assert!(c.rx.try_recv().is_none(), "not a recipient");
}
