//! The bulk mode `herald replay` builds a fresh projection in: what it builds equals an ordinary
//! store's, a file whose rebuild did not finish is refused by every open, and a finished one is
//! an ordinary projection (WAL) that opens and reads as usual.

use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::Stage;
use herald_ports::contract::generate::{end_offsets, reference, user_log};
use herald_ports::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_rebuild_is_refused_until_finished_then_opens_as_a_projection() {
    let dir = tempfile::tempdir().unwrap();
    let events = user_log(7, 300, 5, 3);
    let offsets = end_offsets(&events);
    let expected = reference(&events).snapshot;

    // Killed before it finished: every open refuses the file, and so does a second rebuild.
    let crashed = dir.path().join("crashed.db");
    let store = EmbeddedProjection::create_for_rebuild(&crashed)
        .await
        .unwrap();
    store
        .apply_user_events(Stage::Inbox, &events, &offsets)
        .await
        .unwrap();
    drop(store);
    for access in [Access::ReadOnly, Access::ReadWrite] {
        let err = EmbeddedProjection::open(&crashed, access)
            .await
            .err()
            .expect("an unfinished rebuild is not a projection");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
    let err = EmbeddedProjection::create_for_rebuild(&crashed)
        .await
        .err()
        .expect("a rebuild builds into a fresh file");
    assert!(err.to_string().contains("already exists"), "{err}");

    // Finished: the same projection as the reference fold, durable, in WAL mode, and an
    // ordinary store for every open after it.
    let done = dir.path().join("done.db");
    let store = EmbeddedProjection::create_for_rebuild(&done).await.unwrap();
    for batch in events.chunks(64) {
        store
            .apply_user_events(Stage::Inbox, batch, &end_offsets(batch))
            .await
            .unwrap();
    }
    let journal = |path: &std::path::Path| -> String {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    };
    assert_ne!(journal(&done), "wal", "no WAL while it is built");
    let err = store
        .snapshot()
        .await
        .expect_err("no reads while it is built (a reader's connection would turn it to WAL)");
    assert!(err.to_string().contains("being rebuilt"), "{err}");
    assert_ne!(journal(&done), "wal");
    store.finish_rebuild().await.unwrap();
    let diff = expected.diff(&store.snapshot().await.unwrap(), 10);
    assert!(diff.is_empty(), "{diff:#?}");
    drop(store);
    assert_eq!(journal(&done), "wal");
    for access in [Access::ReadOnly, Access::ReadWrite] {
        let store = EmbeddedProjection::open(&done, access).await.unwrap();
        let diff = expected.diff(&store.snapshot().await.unwrap(), 10);
        assert!(diff.is_empty(), "{access:?}: {diff:#?}");
        assert_eq!(
            store.consumer_offsets(Stage::Inbox).await.unwrap(),
            end_offsets(&events).into_iter().collect()
        );
    }
}
