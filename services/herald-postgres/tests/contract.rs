//! The projection contract suite on a real, throwaway PostgreSQL (see `herald_postgres::testing`).

use async_trait::async_trait;
use herald_ports::contract::projection::ProjectionHarness;
use herald_postgres::PostgresProjection;
use herald_postgres::testing::TestDb;

struct Db(TestDb);

#[async_trait]
impl ProjectionHarness for Db {
    type Store = PostgresProjection;
    async fn open(&self) -> PostgresProjection {
        PostgresProjection::connect(&self.0.url)
            .await
            .expect("connect to PostgreSQL")
    }
}

herald_ports::projection_contract_tests!(match TestDb::new() {
    Some(db) => Db(db),
    None => return,
});
#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresProjection::connect(&format!("postgres://herald@127.0.0.1:{port}/x"))
        .await
        .err()
        .expect("no server there");
    assert!(
        err.to_string().contains("cannot connect to PostgreSQL"),
        "{err}"
    );
}

/// ACKs by id are kept only past a device's cursor: a cumulative ACK that covers them deletes
/// them, in the same batch as their insert or a later one.
#[tokio::test]
async fn a_cursor_deletes_the_acks_by_id_it_covers() {
    use herald_core::model::UserEvent;
    use herald_core::partition::partition_for;
    use herald_ports::contract::generate::{added, end_offsets, progress};
    use herald_ports::projection::{Positioned, ProjectionWriter, Snapshots, Stage};

    let Some(db) = TestDb::new() else { return };
    let store = PostgresProjection::connect(&db.url).await.unwrap();
    let u = "gus";
    let partition = partition_for(u, 4);
    let ack = |ids: &[&str], up_to: Option<i64>| progress(u, "phone", ids, up_to);
    let events: Vec<Positioned<UserEvent>> = [
        UserEvent::Added(added(u, "n0")), // 0
        UserEvent::Added(added(u, "n1")), // 1
        UserEvent::Added(added(u, "n2")), // 2
        UserEvent::Added(added(u, "n3")), // 3
        ack(&["n1", "n3"], None),         // 4
        ack(&[], Some(1)),                // 5: covers n1, not n3
        ack(&["n2"], Some(0)),            // 6: n2 by id, same batch as 7
        ack(&[], Some(2)),                // 7: covers n2
    ]
    .into_iter()
    .enumerate()
    .map(|(i, event)| Positioned {
        partition,
        offset: i as u64,
        event,
    })
    .collect();
    let rows = |snap: &herald_core::mem::ProjectionSnapshot| -> Vec<u64> {
        snap.acks.iter().map(|(_, _, seq)| *seq).collect()
    };
    let (first, second) = events.split_at(6);
    store
        .apply_user_events(Stage::Inbox, first, &end_offsets(first))
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    assert_eq!(
        rows(&snap),
        vec![3],
        "n1 is under the cursor (1), n3 is not"
    );
    store
        .apply_user_events(Stage::Inbox, second, &end_offsets(second))
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    assert_eq!(
        rows(&snap),
        vec![3],
        "n2's ACK by id went with the cursor's move to 2"
    );
    let key = (u.to_owned(), "phone".to_owned());
    assert_eq!(snap.cursors.get(&key), Some(&2));
}
