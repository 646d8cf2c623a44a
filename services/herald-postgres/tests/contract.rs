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
