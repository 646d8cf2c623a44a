//! The projection contract, continued: timers, RBAC, the store's identity, consumer-group
//! generations and leases (what keeps the projector's stages running).

use super::*;

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
