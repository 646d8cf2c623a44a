//! The projection port on ScyllaDB (or Cassandra), with the `scylla` driver.
//!
//! ScyllaDB has no multi-statement transactions, and Herald does not use lightweight
//! transactions on the hot path. Exactness comes from three rules (the schema,
//! `schemas/cql/001_projection.cql`, explains each table):
//!
//! 1. **The fold runs in the adapter**, over [`BatchState`]: the facts a batch reads are fetched
//!    concurrently up front ([`prefetch`]), a fact it missed is fetched and the event
//!    folded again, and the batch's writes are flushed at the end.
//! 2. **Every cell a user event writes is stamped `USING TIMESTAMP offset + 1`** (log order,
//!    not wall-clock): a write caused by an older event never overwrites one caused by a newer
//!    event, so retries, replays and a stale replica's batch cannot move state backwards.
//! 3. **The writes of one event go in one LOGGED batch**, so a crash leaves whole events
//!    applied, and the next attempt folds over them without change. Consumer offsets are
//!    written after the batch, stamped with the offset itself (they never move back).
//!
//! Statements are prepared (token-aware routing follows from that), run at the configured
//! consistency (QUORUM by default), and marked idempotent so the driver may retry them.
//!
//! One file a role: `config` (the URL), `schema` (the CQL schema's statements), `layout` (how
//! rows map onto the schema: buckets, hours, shards, timestamps), `statements` (every prepared
//! statement), `session` (paged reads, point reads, scans, logged batches), `writes` (a fold
//! write as statements), then the port's roles: `writer` (`AppliedOffsets` and
//! `ProjectionWriter`), `reader` (`InboxReader`), `directory` (`DirectoryReader`), `timers`
//! (`TimerQueries`) and `snapshot` (`Snapshots`). This file connects.
//!
//! [`BatchState`]: herald_core::batch::BatchState
//! [`prefetch`]: herald_core::batch::prefetch
#![forbid(unsafe_code)]

mod config;
mod directory;
mod layout;
mod reader;
mod schema;
mod session;
mod snapshot;
mod statements;
mod timers;
mod writer;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use herald_ports::projection::ProjectionError;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

pub use config::ScyllaConfig;
pub use schema::schema_statements;
use statements::Statements;

/// Offsets per inbox bucket (`bucket = seq >> INBOX_BUCKET_BITS`): bounds every per-user
/// partition to 65,536 rows.
pub const INBOX_BUCKET_BITS: u32 = 16;
/// Shards of a group's, topic's or expansion's member set.
pub const MEMBER_SHARDS: i32 = 16;
/// Reads in flight at once while prefetching a batch's facts.
pub const FETCH_CONCURRENCY: usize = 32;
/// Users whose writes are flushed at once.
pub const WRITE_CONCURRENCY: usize = 16;
/// Statements per batch (one event's writes are never split, so a batch may exceed this
/// when a single event writes more, e.g. "mark all read" over a large inbox).
pub const MAX_BATCH_STATEMENTS: usize = 200;
/// How long connecting to the cluster may take before start-up fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A keyspace made before preferences has no `inbox.live`: add it (CQL has no
/// `ADD COLUMN IF NOT EXISTS`; rows without it read as live).
async fn add_live_column(session: &Session, keyspace: &str) -> Result<(), ProjectionError> {
    let found = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = 'inbox' AND column_name = 'live'",
            (keyspace,),
        )
        .await
        .map(|r| {
            r.into_rows_result()
                .map(|rows| rows.rows_num() > 0)
                .unwrap_or(false)
        })
        .map_err(|e| ProjectionError::Config(format!("reading the ScyllaDB schema: {e}")))?;
    if !found {
        session
            .query_unpaged(format!("ALTER TABLE {keyspace}.inbox ADD live boolean"), ())
            .await
            .map_err(|e| ProjectionError::Config(format!("adding inbox.live: {e}")))?;
        session
            .await_schema_agreement()
            .await
            .map_err(|e| ProjectionError::Config(format!("ScyllaDB schema agreement: {e}")))?;
    }
    Ok(())
}

/// The ScyllaDB projection store. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaProjection {
    session: Arc<Session>,
    st: Arc<Statements>,
    config: Arc<ScyllaConfig>,
    store_id: Arc<str>,
}

impl ScyllaProjection {
    /// Connects (`scylla://host:9042/keyspace`, see [`ScyllaConfig::from_url`]), creates the
    /// keyspace and tables if missing, and prepares every statement.
    pub async fn connect(url: &str) -> Result<Self, ProjectionError> {
        Self::connect_with(ScyllaConfig::from_url(url)?).await
    }

    pub async fn connect_with(config: ScyllaConfig) -> Result<Self, ProjectionError> {
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(CONNECT_TIMEOUT);
        if let Some((user, password)) = &config.credentials {
            builder = builder.user(user, password);
        }
        let session = tokio::time::timeout(CONNECT_TIMEOUT * 2, builder.build())
            .await
            .map_err(|_| {
                ProjectionError::Config(format!(
                    "cannot connect to ScyllaDB at {}: timed out after {:?}",
                    config.nodes.join(","),
                    CONNECT_TIMEOUT * 2
                ))
            })?
            .map_err(|e| {
                ProjectionError::Config(format!(
                    "cannot connect to ScyllaDB at {}: {e}",
                    config.nodes.join(",")
                ))
            })?;
        for cql in schema_statements(&config) {
            session.query_unpaged(cql.as_str(), ()).await.map_err(|e| {
                ProjectionError::Config(format!("applying the ScyllaDB schema ({cql:.60}…): {e}"))
            })?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| ProjectionError::Config(format!("ScyllaDB schema agreement: {e}")))?;
        add_live_column(&session, &config.keyspace).await?;
        let st = Statements::prepare(&session, &config.keyspace, config.consistency).await?;
        let mut store = ScyllaProjection {
            session: Arc::new(session),
            st: Arc::new(st),
            config: Arc::new(config),
            store_id: "".into(),
        };
        store.store_id = store.name_store().await?.into();
        Ok(store)
    }

    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    /// The store's id: the first writer's wins without a lightweight transaction, because each
    /// writes its candidate stamped `i64::MAX - now`, so the earliest write has the latest
    /// timestamp. (Replicas whose first starts race may read different ids until they restart:
    /// they then project in groups of their own, which the offset fence keeps correct.)
    async fn name_store(&self) -> Result<String, ProjectionError> {
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        self.session
            .execute_unpaged(&self.st.name_store, (&candidate, i64::MAX - now_micros))
            .await
            .map_err(|e| ProjectionError::Storage(format!("naming the store: {e}")))?;
        let id: Option<(String,)> = self.one(&self.st.meta_of, ("store_id",)).await?;
        Ok(id.map_or(candidate, |(id,)| id))
    }
}
