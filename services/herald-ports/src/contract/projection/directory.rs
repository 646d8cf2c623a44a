//! The projection contract, continued: what the fanout reads and records, the directory
//! (groups, topics, everyone) and its bookkeeping of expanded requests (`DirectoryReader`,
//! `ProjectionWriter::record_expansions`).

use super::*;

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
    // A repeated record (after a crash, or a race with the timer stage) adds to the recipients;
    // a large expansion keeps all of its own, sorted. 4,100 is more than a store keeps in the
    // expansion's own row (the embedded one keeps up to 4,096 there).
    let many: Vec<String> = (0..4100).rev().map(|i| format!("m{i:04}")).collect();
    store
        .record_expansions(
            Stage::Fanout,
            &[
                ("a".into(), vec!["u3".into(), "u2".into()]),
                ("b".into(), many.clone()),
            ],
            &[(1, 12)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.expansion_of("a").await.unwrap(),
        vec!["u1", "u2", "u3"]
    );
    let mut sorted = many;
    sorted.sort();
    assert_eq!(store.expansion_of("b").await.unwrap(), sorted);
    let mut got = store.expanded(&ids).await.unwrap();
    got.sort();
    assert_eq!(got, vec!["a", "b", "c"]);
    // One id twice in one call (a store may gather a call's records into one statement): the
    // recipients of both, once each.
    store
        .record_expansions(
            Stage::Fanout,
            &[
                ("d".into(), vec!["u2".into(), "u1".into()]),
                ("d".into(), vec!["u1".into(), "u3".into()]),
            ],
            &[(1, 13)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.expansion_of("d").await.unwrap(),
        vec!["u1", "u2", "u3"]
    );
    assert_eq!(store.expanded(&["d".to_string()]).await.unwrap(), vec!["d"]);
}
