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
    use herald_ports::contract::generate::{added, end_offsets, placed, progress};
    use herald_ports::projection::{Positioned, ProjectionWriter, Snapshots, Stage};

    let Some(db) = TestDb::new() else { return };
    let store = PostgresProjection::connect(&db.url).await.unwrap();
    let u = "gus";
    let ack = |ids: &[&str], up_to: Option<i64>| progress(u, "phone", ids, up_to);
    let events = vec![
        UserEvent::Added(added(u, "n0")), // 0
        UserEvent::Added(added(u, "n1")), // 1
        UserEvent::Added(added(u, "n2")), // 2
        UserEvent::Added(added(u, "n3")), // 3
        ack(&["n1", "n3"], None),         // 4
        ack(&[], Some(1)),                // 5: covers n1, not n3
        ack(&["n2"], Some(0)),            // 6: n2 by id, same batch as 7
        ack(&[], Some(2)),                // 7: covers n2
    ];
    let events = placed(u, 4, events);
    // Applies `batch`; the seqs of the `acks` rows and the phone's cursor after it.
    let apply = async |batch: &[Positioned<UserEvent>]| {
        store
            .apply_user_events(Stage::Inbox, batch, &end_offsets(batch))
            .await
            .unwrap();
        let snap = store.snapshot().await.unwrap();
        let rows: Vec<u64> = snap.acks.iter().map(|(_, _, seq)| *seq).collect();
        (
            rows,
            snap.cursors
                .get(&(u.to_owned(), "phone".to_owned()))
                .copied(),
        )
    };
    let (first, second) = events.split_at(6);
    let (rows, _) = apply(first).await;
    assert_eq!(rows, vec![3], "n1 is under the cursor (1), n3 is not");
    let (rows, cursor) = apply(second).await;
    assert_eq!(
        rows,
        vec![3],
        "n2's ACK by id went with the cursor's move to 2"
    );
    assert_eq!(cursor, Some(2));
}
