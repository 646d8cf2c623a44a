//! The projection contract suite on a real ScyllaDB (or Cassandra) cluster, given by
//! `HERALD_SCYLLA_URI` (e.g. `scylla://127.0.0.1:9042`; `infra/` starts one). Without it the
//! suite prints why it is skipped: no ScyllaDB server can run on the development machine,
//! and nothing here pretends to be one. Each test gets a keyspace of its own.

use async_trait::async_trait;
use herald_ports::contract::projection::ProjectionHarness;
use herald_scylla::ScyllaProjection;

struct Cluster {
    url: String,
}

impl Cluster {
    fn from_env() -> Option<Cluster> {
        let Ok(base) = std::env::var("HERALD_SCYLLA_URI") else {
            // Once per run, and past the test harness's output capture (which only takes the
            // print macros), so the skip shows in a plain `cargo test`.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the ScyllaDB projection contract suite needs a cluster: \
                     set HERALD_SCYLLA_URI=scylla://HOST:9042 (no ScyllaDB server runs on this machine)"
                );
            });
            return None;
        };
        let base = base.trim_end_matches('/');
        let keyspace = format!(
            "herald_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Some(Cluster {
            url: format!("{base}/{keyspace}?replication_factor=1"),
        })
    }
}

#[async_trait]
impl ProjectionHarness for Cluster {
    type Store = ScyllaProjection;
    async fn open(&self) -> ScyllaProjection {
        ScyllaProjection::connect(&self.url)
            .await
            .expect("connect to ScyllaDB")
    }
}

herald_ports::projection_contract_tests!(match Cluster::from_env() {
    Some(c) => c,
    None => return,
});

#[tokio::test]
async fn an_unreachable_cluster_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ScyllaProjection::connect(&format!("scylla://127.0.0.1:{port}/x"))
        .await
        .err()
        .expect("no server there");
    assert!(
        err.to_string()
            .contains("cannot connect to ScyllaDB at 127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn a_malformed_url_is_a_clear_error() {
    let err = ScyllaProjection::connect("scylla://h/not-a-keyspace!")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("keyspace name"), "{err}");
}
