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

mod log {
    use super::*;
    herald_ports::log_contract_tests!(LogDir(tempfile::tempdir().unwrap()));
}

mod projection {
    use super::*;
    herald_ports::projection_contract_tests!(ProjectionDir(tempfile::tempdir().unwrap()));
}
