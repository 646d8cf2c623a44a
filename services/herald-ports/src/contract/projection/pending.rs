//! The projection contract, continued: what a device has not acknowledged (`InboxReader::pending`),
//! after ACKs by id and cumulative ones, under load, and within its `PageBound`.

use super::*;

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
