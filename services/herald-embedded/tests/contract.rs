//! The embedded adapters run the shared contract suites on real SQLite files in temp dirs.

use async_trait::async_trait;
use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};
use herald_ports::contract::log::LogHarness;
use herald_ports::contract::projection::ProjectionHarness;

struct LogDir(tempfile::TempDir);

#[async_trait]
impl LogHarness for LogDir {
    type Log = EmbeddedLog;
    async fn open(&self) -> EmbeddedLog {
        EmbeddedLog::open(
            &self.0.path().join("log.db"),
            Access::ReadWrite,
            LogOptions::default(),
        )
        .await
        .expect("open embedded log")
    }
}

struct ProjectionDir(tempfile::TempDir);

#[async_trait]
impl ProjectionHarness for ProjectionDir {
    type Store = EmbeddedProjection;
    async fn open(&self) -> EmbeddedProjection {
        EmbeddedProjection::open(&self.0.path().join("projection.db"), Access::ReadWrite)
            .await
            .expect("open embedded projection")
    }
}

/// A store first created by an old build (the schema of `projection_v1.sql`: the inbox keyed by
/// `(user_id, seq)` WITHOUT ROWID, no `live` or inline expansions), upgraded on open: the
/// contract holds for its layout as for a new store's.
struct OldLayoutDir(tempfile::TempDir);

#[async_trait]
impl ProjectionHarness for OldLayoutDir {
    type Store = EmbeddedProjection;
    async fn open(&self) -> EmbeddedProjection {
        let path = self.0.path().join("projection.db");
        old_file(&path, include_str!("projection_v1.sql"));
        EmbeddedProjection::open(&path, Access::ReadWrite)
            .await
            .expect("open the old projection")
    }
}

/// A log first created by an old build (the schema of `log_v1.sql`: `records` keyed by
/// `(topic, partition, offset)` WITHOUT ROWID), opened by this one: the contract holds for its
/// layout as for a new log's.
struct OldLayoutLogDir(tempfile::TempDir);

#[async_trait]
impl LogHarness for OldLayoutLogDir {
    type Log = EmbeddedLog;
    async fn open(&self) -> EmbeddedLog {
        let path = self.0.path().join("log.db");
        old_file(&path, include_str!("log_v1.sql"));
        EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
            .await
            .expect("open the old log")
    }
}

/// A log created by a build between 2026-12-02 and f5af648 (format 1, `records` a rowid table:
/// `001_log_records.sql`), opened by this one.
struct RowidLogDir(tempfile::TempDir);

#[async_trait]
impl LogHarness for RowidLogDir {
    type Log = EmbeddedLog;
    async fn open(&self) -> EmbeddedLog {
        let path = self.0.path().join("log.db");
        let sql = format!(
            "{}\nCREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;\n\
             INSERT INTO meta VALUES ('instance', '5f0c5e4e-0000-4000-8000-000000000002'), \
             ('format', '1'), ('partitions.requests', '1'), ('partitions.user-events', '8');",
            include_str!("../../../schemas/sql/sqlite/001_log_records.sql")
        );
        old_file(&path, &sql);
        let log = EmbeddedLog::open(&path, Access::ReadWrite, LogOptions::default())
            .await
            .expect("open the format-1 log");
        assert_eq!(log.format(), herald_embedded::LogFormat::Rows);
        log
    }
}

/// Makes `path` as an old build left it (its schema `sql`), unless the test made it already.
fn old_file(path: &std::path::Path, sql: &str) {
    if !path.exists() {
        rusqlite::Connection::open(path)
            .and_then(|c| c.execute_batch(sql))
            .expect("an old build's file");
    }
}

mod log {
    use super::*;
    herald_ports::log_contract_tests!(LogDir(tempfile::tempdir().unwrap()));
}

mod old_layout_log {
    use super::*;
    herald_ports::log_contract_tests!(OldLayoutLogDir(tempfile::tempdir().unwrap()));
}

mod rowid_log {
    use super::*;
    herald_ports::log_contract_tests!(RowidLogDir(tempfile::tempdir().unwrap()));
}

mod projection {
    use super::*;
    herald_ports::projection_contract_tests!(ProjectionDir(tempfile::tempdir().unwrap()));
}

mod old_layout_projection {
    use super::*;
    herald_ports::projection_contract_tests!(OldLayoutDir(tempfile::tempdir().unwrap()));
}
