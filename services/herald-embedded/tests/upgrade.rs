//! A projection file written before preferences (the schema as it was, `projection_v1.sql`)
//! opens with this version: its rows gain `live` (they were all live), its expansions gain
//! `users` (their recipients stay in `expansion_users`), and the new tables work.

use herald_embedded::{Access, EmbeddedProjection};
use herald_ports::Stage;
use herald_ports::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_from_before_preferences_opens_with_its_rows_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("projection.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("projection_v1.sql"))
            .unwrap();
        conn.execute(
            "INSERT INTO inbox VALUES ('alice', 0, 'n0', 't', 's', '{}', 'normal', NULL, 1, NULL, \
             NULL, 0, 0, 0, 0)",
            [],
        )
        .unwrap();
        conn.execute("INSERT INTO unread VALUES ('alice', 1)", [])
            .unwrap();
        conn.execute_batch(
            "INSERT INTO expansions VALUES ('n0', 2); \
             INSERT INTO expansion_users VALUES ('n0', 'alice'), ('n0', 'bob');",
        )
        .unwrap();
    }
    // Read-only (as `herald audit` opens it), the old file is not changed, and still reads.
    let reader = EmbeddedProjection::open(&path, Access::ReadOnly)
        .await
        .expect("an old projection opens read-only");
    assert_eq!(
        reader.expansion_of("n0").await.unwrap(),
        vec!["alice", "bob"]
    );
    drop(reader);
    let store = EmbeddedProjection::open(&path, Access::ReadWrite)
        .await
        .expect("an old projection opens");
    let row = store
        .row("alice", "n0")
        .await
        .unwrap()
        .expect("the old row");
    assert!(row.live && !row.read, "{row:?}");
    assert_eq!(
        store
            .pending(
                "alice",
                "phone",
                None,
                i64::MAX / 2,
                herald_ports::projection::PageBound::rows(10)
            )
            .await
            .unwrap()
            .len(),
        1,
        "an old row is still pending for a device"
    );
    assert!(store.preferences("alice").await.unwrap().is_empty());
    // An old expansion reads as before; a new one, and a repeat of the old, record as now.
    assert_eq!(
        store.expansion_of("n0").await.unwrap(),
        vec!["alice", "bob"]
    );
    store
        .record_expansions(
            Stage::Fanout,
            &[
                ("n1".into(), vec!["carol".into()]),
                ("n0".into(), vec!["dave".into()]),
            ],
            &[(0, 2)],
        )
        .await
        .unwrap();
    assert_eq!(store.expansion_of("n1").await.unwrap(), vec!["carol"]);
    assert_eq!(
        store.expansion_of("n0").await.unwrap(),
        vec!["alice", "bob", "dave"]
    );
    let ids = vec!["n0".to_string(), "n1".to_string(), "n2".to_string()];
    let mut expanded = store.expanded(&ids).await.unwrap();
    expanded.sort();
    assert_eq!(expanded, vec!["n0", "n1"]);
    drop(store);
    // And again: opening an upgraded file changes nothing.
    let store = EmbeddedProjection::open(&path, Access::ReadWrite)
        .await
        .unwrap();
    assert!(store.row("alice", "n0").await.unwrap().unwrap().live);
    // Its inbox keeps the layout it was made with (the contract suite runs on it too); a new
    // store's inbox is a rowid table.
    assert!(
        table_sql(&path, "inbox").contains("WITHOUT ROWID"),
        "{}",
        table_sql(&path, "inbox")
    );
    let fresh = dir.path().join("fresh.db");
    drop(
        EmbeddedProjection::open(&fresh, Access::ReadWrite)
            .await
            .unwrap(),
    );
    assert!(
        !table_sql(&fresh, "inbox").contains("WITHOUT ROWID"),
        "{}",
        table_sql(&fresh, "inbox")
    );
    // Likewise its index by notification id: keyed by the user first in the old file, by the
    // id first in a new one.
    assert!(
        index_sql(&path, "inbox_by_id").contains("(user_id, notification_id)"),
        "{}",
        index_sql(&path, "inbox_by_id")
    );
    assert!(
        index_sql(&fresh, "inbox_by_id").contains("(notification_id, user_id)"),
        "{}",
        index_sql(&fresh, "inbox_by_id")
    );
    // A recipient list that does not parse is an error, never an empty expansion.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE expansions SET users = '[\"carol\"' WHERE notification_id = 'n1'",
            [],
        )
        .unwrap();
    assert!(store.expansion_of("n1").await.is_err());
}

/// The statement that created the file's table `name`.
fn table_sql(path: &std::path::Path, name: &str) -> String {
    schema_sql(path, "table", name)
}

/// The statement that created the file's index `name`.
fn index_sql(path: &std::path::Path, name: &str) -> String {
    schema_sql(path, "index", name)
}

fn schema_sql(path: &std::path::Path, kind: &str, name: &str) -> String {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = ?1 AND name = ?2",
            [kind, name],
            |r| r.get(0),
        )
        .unwrap()
}

/// A log made by an old build (format 1, records keyed WITHOUT ROWID) keeps its layout and its
/// records, and takes appends after them, as rows; a new log keeps its records in batches.
#[tokio::test]
async fn an_old_log_keeps_its_layout_and_a_new_one_keeps_batches() {
    use herald_embedded::{EmbeddedLog, LogFormat, LogOptions};
    use herald_ports::log::{EventLog, Record, Topic};
    let dir = tempfile::tempdir().unwrap();
    let record = |v: &str| Record {
        partition: 0,
        key: "alice".into(),
        timestamp_ms: 1,
        headers: Vec::new(),
        value: v.as_bytes().to_vec(),
    };
    let old = dir.path().join("old.db");
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch(include_str!("log_v1.sql"))
        .unwrap();
    let log = EmbeddedLog::open(&old, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    log.append(Topic::UserEvents, vec![record("a")])
        .await
        .unwrap();
    drop(log);
    let log = EmbeddedLog::open(&old, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    assert_eq!(log.format(), LogFormat::Rows);
    let appended = log
        .append(Topic::UserEvents, vec![record("b")])
        .await
        .unwrap();
    assert_eq!(appended[0].offset, 1);
    let values: Vec<Vec<u8>> = log
        .read(Topic::UserEvents, 0, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record.value.clone())
        .collect();
    assert_eq!(values, vec![b"a".to_vec(), b"b".to_vec()]);
    drop(log);
    assert!(
        table_sql(&old, "records").contains("WITHOUT ROWID"),
        "{}",
        table_sql(&old, "records")
    );
    assert_eq!(count(&old, "SELECT count(*) FROM records"), 2);
    assert_eq!(count(&old, "SELECT count(*) FROM batches"), 0);
    let fresh = dir.path().join("fresh.db");
    let log = EmbeddedLog::open(&fresh, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    assert_eq!(log.format(), LogFormat::Batches);
    log.append(Topic::UserEvents, vec![record("a"), record("b")])
        .await
        .unwrap();
    drop(log);
    assert_eq!(
        count(&fresh, "SELECT count(*) FROM batches"),
        1,
        "one row for both"
    );
    // A build from before format 2 ignores `meta.format`; what it runs at start-up (its schema,
    // then each partition's end) fails on the new log instead of finding it empty.
    let old_build = rusqlite::Connection::open(&fresh).unwrap();
    old_build
        .execute_batch(include_str!(
            "../../../schemas/sql/sqlite/001_log_records.sql"
        ))
        .unwrap();
    let err = old_build
        .query_row(
            "SELECT max(offset) FROM records WHERE topic = ?1 AND partition = ?2",
            [1, 0],
            |r| r.get::<_, Option<i64>>(0),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("log_format_2_needs_a_newer_herald"),
        "{err}"
    );
    drop(old_build);
    // Read-only, as `herald audit` and `herald replay` open it, from the file.
    let reader = EmbeddedLog::open(&fresh, Access::ReadOnly, LogOptions::default())
        .await
        .unwrap();
    assert_eq!(reader.format(), LogFormat::Batches);
    let values: Vec<Vec<u8>> = reader
        .read(Topic::UserEvents, 0, 1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record.value.clone())
        .collect();
    assert_eq!(values, vec![b"b".to_vec()]);
    assert_eq!(reader.end_offset(Topic::UserEvents, 0).await.unwrap(), 2);
}

/// A file where a build from before format 2 made the schema and stopped before its `meta`
/// (an empty `records` table) becomes a new log of format 2; one with records and no `meta` is
/// refused.
#[tokio::test]
async fn an_unfinished_old_file_becomes_a_new_log_and_a_file_of_orphan_records_is_refused() {
    use herald_embedded::{EmbeddedLog, LogFormat, LogOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(include_str!(
        "../../../schemas/sql/sqlite/001_log_records.sql"
    ))
    .unwrap();
    let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    assert_eq!(log.format(), LogFormat::Batches);
    drop(log);
    let orphans = dir.path().join("orphans.db");
    let conn = rusqlite::Connection::open(&orphans).unwrap();
    conn.execute_batch(include_str!(
        "../../../schemas/sql/sqlite/001_log_records.sql"
    ))
    .unwrap();
    conn.execute(
        "INSERT INTO records VALUES (1, 0, 0, 'alice', 0, x'00000000', x'00')",
        [],
    )
    .unwrap();
    let err = EmbeddedLog::open(&orphans, Access::ReadWrite, LogOptions::default())
        .await
        .err()
        .expect("records without meta are refused");
    assert!(err.to_string().contains("no `meta`"), "{err}");
}

/// The file itself refuses a row that overlaps or leaves a gap after its partition's last row
/// (a second writer, a bug), so a read can never return an offset twice or skip one.
#[tokio::test]
async fn a_stored_row_must_follow_its_partitions_last() {
    use herald_embedded::{EmbeddedLog, LogOptions};
    use herald_ports::log::{EventLog, Record, Topic};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    let record = Record {
        partition: 0,
        key: "alice".into(),
        timestamp_ms: 1,
        headers: Vec::new(),
        value: b"v".to_vec(),
    };
    log.append(Topic::UserEvents, vec![record.clone(), record.clone()])
        .await
        .unwrap();
    drop(log);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let insert = |end: i64, count: i64| {
        conn.execute(
            "INSERT INTO batches VALUES (1, 0, ?1, ?2, x'01')",
            [end, count],
        )
    };
    for (end, count, what) in [
        (3, 2, "overlap"),
        (4, 1, "gap"),
        (2, 0, "empty"),
        (1, 1, "first again"),
    ] {
        let err = insert(end, count).expect_err(what).to_string();
        assert!(err.contains("must start where"), "{what}: {err}");
    }
    // The next row in line is taken (here: one the decoder will refuse as damaged data).
    insert(3, 1).unwrap();
    drop(conn);
    let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .unwrap();
    assert_eq!(log.end_offset(Topic::UserEvents, 0).await.unwrap(), 3);
    assert_eq!(log.read(Topic::UserEvents, 0, 0, 2).await.unwrap().len(), 2);
    let err = log.read(Topic::UserEvents, 0, 2, 1).await.unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// A log of a format this build does not know is refused with a message, not misread.
#[tokio::test]
async fn a_log_of_an_unknown_format_is_refused() {
    use herald_embedded::{EmbeddedLog, LogOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    drop(
        EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
            .await
            .unwrap(),
    );
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE meta SET value = '3' WHERE key = 'format'", [])
        .unwrap();
    let err = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
        .await
        .err()
        .expect("format 3 is refused");
    assert!(err.to_string().contains("format 3"), "{err}");
}

fn count(path: &std::path::Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}
