//! `EmbeddedProjection::with_writes_on`: write transactions run on the given runtime's blocking
//! threads (the server gives it a pool of lower priority); reads stay where they were.

use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::projection::{DirectoryReader, ProjectionWriter, Stage};

fn expansion(id: &str) -> Vec<(String, Vec<String>)> {
    vec![(id.to_owned(), vec!["u1".to_owned()])]
}

#[tokio::test]
async fn writes_run_on_the_given_runtime_and_reads_do_not() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pool = tokio::runtime::Builder::new_current_thread()
        .thread_name("herald-test-writes")
        .build()
        .expect("a runtime");
    let store = EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
        .await
        .expect("the projection opens")
        .with_writes_on(pool.handle().clone());
    store
        .record_expansions(Stage::Fanout, &expansion("n1"), &[(0, 1)])
        .await
        .expect("a write on the pool");
    assert_eq!(store.expanded(&["n1".into()]).await.unwrap(), vec!["n1"]);

    // With the pool gone a write has nowhere to run: an error, not a hang, and not a write on
    // the caller's threads. Reads do not use the pool.
    pool.shutdown_background();
    let refused = store
        .record_expansions(Stage::Fanout, &expansion("n2"), &[(0, 2)])
        .await;
    assert!(refused.is_err(), "the write ran without its pool");
    assert!(store.expanded(&["n2".into()]).await.unwrap().is_empty());
    assert_eq!(store.expanded(&["n1".into()]).await.unwrap(), vec!["n1"]);
}
