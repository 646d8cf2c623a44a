//! The projection port on ScyllaDB (or Cassandra), with the `scylla` driver.
//!
//! ScyllaDB has no multi-statement transactions, and Herald does not use lightweight
//! transactions on the hot path. Exactness comes from three rules (the schema,
//! `schemas/cql/001_projection.cql`, explains each table):
//!
//! 1. **The fold runs in the adapter**, over [`BatchState`]: the facts a batch reads are fetched
//!    concurrently up front ([`batch::prefetch`]), a fact it missed is fetched and the event
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
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt, stream};
use herald_core::batch::{self, BatchState, Fact, Need};
use herald_core::mem::ProjectionSnapshot;
use herald_core::model::{DirectoryChange, Priority, Recipients, RoleDefinition, UserEvent};
use herald_core::projection::{self, DirectoryWrite, InboxRow, Write};
use herald_ports::projection::*;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

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

const SCHEMA: &str = include_str!("../../../schemas/cql/001_projection.cql");
const HOUR_MS: i64 = 3_600_000;
/// `delivered` keeps the first delivery: stamped `FIRST_WINS - offset`, the earliest wins.
const FIRST_WINS: i64 = 1 << 62;
const ROW_COLUMNS: &str = "user_id, seq, notification_id, event_type, source, payload, priority, \
     collapse_key, created_at, deliver_at, expires_at, read, archived, expired, superseded";

type RowTuple = (
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    bool,
    bool,
    bool,
    bool,
);

fn to_row(t: RowTuple) -> InboxRow {
    InboxRow {
        user_id: t.0,
        seq: t.1 as u64,
        notification_id: t.2,
        event_type: t.3,
        source: t.4,
        payload: t.5,
        priority: t.6.parse().unwrap_or(Priority::Normal),
        collapse_key: t.7,
        created_at: t.8,
        deliver_at: t.9,
        expires_at: t.10,
        read: t.11,
        archived: t.12,
        expired: t.13,
        superseded: t.14,
    }
}

fn bucket(seq: u64) -> i64 {
    (seq >> INBOX_BUCKET_BITS) as i64
}

fn hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

/// The timestamp of an hour's end, in microseconds: pruning an hour row is stamped with it, so
/// an entry written into that hour later (at a later wall-clock time) re-creates the row.
fn hour_end_micros(hour: i64) -> i64 {
    (hour + 1).saturating_mul(HOUR_MS).saturating_mul(1000)
}

/// The shard of a member set a user falls in (stable across processes and versions).
fn shard(user_id: &str) -> i32 {
    (herald_core::partition::partition_for(user_id, MEMBER_SHARDS as u32)) as i32
}

/// Wall-clock microseconds, strictly increasing within this process: directory changes are
/// applied in log order, and a later one must win even within the same microsecond.
fn monotonic_micros() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

fn storage(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ProjectionError + '_ {
    move |e| ProjectionError::Storage(format!("ScyllaDB {what}: {e}"))
}

fn big(v: impl TryInto<i64>) -> Option<CqlValue> {
    Some(CqlValue::BigInt(v.try_into().unwrap_or(i64::MAX)))
}

fn text(v: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(v.to_owned()))
}

/// Where the projection lives and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// The keyspace's replication map, as CQL.
    pub replication: String,
    pub consistency: Consistency,
    pub credentials: Option<(String, String)>,
}

impl ScyllaConfig {
    /// Parses `scylla://[user:password@]host[:port][,host[:port]…][/keyspace][?options]`.
    /// Options: `consistency` (default QUORUM), `replication_factor` (default 3, with
    /// NetworkTopologyStrategy), or `replication` (a whole CQL replication map).
    pub fn from_url(url: &str) -> Result<Self, ProjectionError> {
        let bad = |why: &str| {
            ProjectionError::Config(format!(
                "{why} in ScyllaDB URL {url:?} (expected scylla://host:9042[,host…]/keyspace?consistency=QUORUM)"
            ))
        };
        let rest = url
            .strip_prefix("scylla://")
            .ok_or_else(|| bad("no scylla:// scheme"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth_hosts, keyspace) = rest.split_once('/').unwrap_or((rest, "herald"));
        let (credentials, hosts) = match auth_hosts.rsplit_once('@') {
            Some((auth, hosts)) => {
                let (u, p) = auth
                    .split_once(':')
                    .ok_or_else(|| bad("user without :password"))?;
                (Some((u.to_owned(), p.to_owned())), hosts)
            }
            None => (None, auth_hosts),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_owned()
                } else {
                    format!("{h}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err(bad("no host"));
        }
        let keyspace = if keyspace.is_empty() {
            "herald"
        } else {
            keyspace
        };
        if !keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || keyspace.len() > 48
        {
            return Err(bad(
                "a keyspace name must be letters, digits and _ (at most 48)",
            ));
        }
        let mut config = ScyllaConfig {
            nodes,
            keyspace: keyspace.to_ascii_lowercase(),
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            consistency: Consistency::Quorum,
            credentials,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("an option without ="))?;
            match k {
                "consistency" => {
                    config.consistency =
                        parse_consistency(v).ok_or_else(|| bad("unknown consistency"))?
                }
                "replication_factor" => {
                    let rf: u8 = v
                        .parse()
                        .map_err(|_| bad("replication_factor is not a number"))?;
                    config.replication = format!(
                        "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
                    );
                }
                "replication" => {
                    if v.contains(';') {
                        return Err(bad("replication must be one CQL map"));
                    }
                    config.replication = v.replace("%20", " ");
                }
                other => return Err(bad(&format!("unknown option {other:?}"))),
            }
        }
        Ok(config)
    }
}

fn parse_consistency(s: &str) -> Option<Consistency> {
    Some(match s.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return None,
    })
}

/// The schema's statements with the keyspace and replication filled in.
pub fn schema_statements(config: &ScyllaConfig) -> Vec<String> {
    let text: String = SCHEMA
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{keyspace}", &config.keyspace)
                .replace("{replication}", &config.replication)
        })
        .collect()
}

/// One statement with its values, ready for a batch.
struct Stmt {
    st: PreparedStatement,
    values: Vec<Option<CqlValue>>,
}

macro_rules! statements {
    ($($name:ident = $cql:expr;)*) => {
        struct Statements { $($name: PreparedStatement,)* }
        impl Statements {
            async fn prepare(session: &Session, ks: &str, consistency: Consistency) -> Result<Self, ProjectionError> {
                Ok(Statements { $($name: {
                    let cql = format!($cql).replace("{ks}", ks);
                    let mut st = session.prepare(cql.as_str()).await.map_err(|e| {
                        ProjectionError::Config(format!("preparing {}: {e}", stringify!($name)))
                    })?;
                    st.set_consistency(consistency);
                    st.set_is_idempotent(true);
                    st
                },)* })
            }
        }
    };
}

statements! {
    id_seq = "SELECT seq FROM {{ks}}.inbox_ids WHERE user_id = ? AND notification_id = ?";
    row_at = "SELECT {ROW_COLUMNS} FROM {{ks}}.inbox WHERE user_id = ? AND bucket = ? AND seq = ?";
    collapse_seq = "SELECT seq FROM {{ks}}.collapse_holders WHERE user_id = ? AND collapse_key = ? LIMIT 1";
    all_buckets = "SELECT bucket FROM {{ks}}.inbox_buckets WHERE user_id = ?";
    buckets_down = "SELECT bucket FROM {{ks}}.inbox_buckets WHERE user_id = ? AND bucket <= ?";
    buckets_up = "SELECT bucket FROM {{ks}}.inbox_buckets WHERE user_id = ? AND bucket >= ? ORDER BY bucket ASC";
    rows_down = "SELECT {ROW_COLUMNS} FROM {{ks}}.inbox WHERE user_id = ? AND bucket = ? AND seq < ?";
    rows_up = "SELECT {ROW_COLUMNS} FROM {{ks}}.inbox WHERE user_id = ? AND bucket = ? AND seq > ? ORDER BY seq ASC";
    unread_seqs = "SELECT seq FROM {{ks}}.unread_rows WHERE user_id = ? AND bucket = ?";
    count_of = "SELECT n FROM {{ks}}.unread_counts WHERE user_id = ?";
    cursor_of = "SELECT seq FROM {{ks}}.cursors WHERE user_id = ? AND device_id = ?";
    acks_in = "SELECT seq FROM {{ks}}.acks WHERE user_id = ? AND device_id = ? AND bucket = ?";
    offsets_of = "SELECT partition, next_offset FROM {{ks}}.consumer_offsets WHERE consumer = ?";
    expansion = "SELECT notification_id FROM {{ks}}.expansions WHERE notification_id = ?";
    expansion_shard = "SELECT user_id FROM {{ks}}.expansion_users WHERE notification_id = ? AND shard = ?";
    group_shard = "SELECT user_id FROM {{ks}}.group_members WHERE group_id = ? AND shard = ?";
    topic_shard = "SELECT user_id FROM {{ks}}.topic_subscribers WHERE topic = ? AND shard = ?";
    roles_of = "SELECT roles FROM {{ks}}.users WHERE user_id = ?";
    topics_of = "SELECT topics FROM {{ks}}.roles WHERE role = ?";
    scheduled_due = "SELECT due_at FROM {{ks}}.scheduled WHERE notification_id = ?";
    schedule_hours = "SELECT hour FROM {{ks}}.schedule_hours WHERE one = 0 AND hour <= ?";
    due_in = "SELECT notification_id, request FROM {{ks}}.scheduled_by_time WHERE hour = ? AND due_at <= ? LIMIT ?";
    expiry_hours = "SELECT hour FROM {{ks}}.expiry_hours WHERE one = 0 AND hour <= ?";
    expiring_in = "SELECT user_id, notification_id FROM {{ks}}.expiry_by_time WHERE hour = ? AND expires_at <= ? LIMIT ?";

    put_row = "INSERT INTO {{ks}}.inbox (bucket, {ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";
    put_bucket = "INSERT INTO {{ks}}.inbox_buckets (user_id, bucket) VALUES (?, ?) USING TIMESTAMP ?";
    put_id = "INSERT INTO {{ks}}.inbox_ids (user_id, notification_id, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    put_unread = "INSERT INTO {{ks}}.unread_rows (user_id, bucket, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_unread = "DELETE FROM {{ks}}.unread_rows USING TIMESTAMP ? WHERE user_id = ? AND bucket = ? AND seq = ?";
    put_collapse = "INSERT INTO {{ks}}.collapse_holders (user_id, collapse_key, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_collapse = "DELETE FROM {{ks}}.collapse_holders USING TIMESTAMP ? WHERE user_id = ? AND collapse_key = ? AND seq = ?";
    put_expiry = "INSERT INTO {{ks}}.expiry_by_time (hour, expires_at, user_id, seq, notification_id) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    del_expiry = "DELETE FROM {{ks}}.expiry_by_time USING TIMESTAMP ? WHERE hour = ? AND expires_at = ? AND user_id = ? AND seq = ?";
    put_expiry_hour = "INSERT INTO {{ks}}.expiry_hours (one, hour) VALUES (0, ?) USING TIMESTAMP ?";
    del_expiry_hour = "DELETE FROM {{ks}}.expiry_hours USING TIMESTAMP ? WHERE one = 0 AND hour = ?";
    set_count = "INSERT INTO {{ks}}.unread_counts (user_id, n) VALUES (?, ?) USING TIMESTAMP ?";
    put_ack = "INSERT INTO {{ks}}.acks (user_id, device_id, bucket, seq) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
    set_cursor = "INSERT INTO {{ks}}.cursors (user_id, device_id, seq) VALUES (?, ?, ?) USING TIMESTAMP ?";
    put_delivered = "INSERT INTO {{ks}}.delivered (user_id, device_id, bucket, seq, at) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?";
    know_user = "INSERT INTO {{ks}}.users (user_id) VALUES (?) USING TIMESTAMP ?";
    set_offset = "INSERT INTO {{ks}}.consumer_offsets (consumer, partition, next_offset) VALUES (?, ?, ?) USING TIMESTAMP ?";
    set_roles = "INSERT INTO {{ks}}.users (user_id, roles) VALUES (?, ?) USING TIMESTAMP ?";
    define_role = "INSERT INTO {{ks}}.roles (role, topics) VALUES (?, ?) USING TIMESTAMP ?";
    add_member = "INSERT INTO {{ks}}.group_members (group_id, shard, user_id) VALUES (?, ?, ?) USING TIMESTAMP ?";
    del_member = "DELETE FROM {{ks}}.group_members USING TIMESTAMP ? WHERE group_id = ? AND shard = ? AND user_id = ?";
    subscribe = "INSERT INTO {{ks}}.topic_subscribers (topic, shard, user_id) VALUES (?, ?, ?) USING TIMESTAMP ?";
    unsubscribe = "DELETE FROM {{ks}}.topic_subscribers USING TIMESTAMP ? WHERE topic = ? AND shard = ? AND user_id = ?";
    put_expansion = "INSERT INTO {{ks}}.expansions (notification_id, recipients) VALUES (?, ?)";
    put_expansion_user = "INSERT INTO {{ks}}.expansion_users (notification_id, shard, user_id) VALUES (?, ?, ?)";
    del_scheduled = "DELETE FROM {{ks}}.scheduled WHERE notification_id = ?";
    del_scheduled_at = "DELETE FROM {{ks}}.scheduled_by_time WHERE hour = ? AND due_at = ? AND notification_id = ?";
    put_scheduled = "INSERT INTO {{ks}}.scheduled (notification_id, due_at) VALUES (?, ?)";
    put_scheduled_at = "INSERT INTO {{ks}}.scheduled_by_time (hour, due_at, notification_id, request) VALUES (?, ?, ?, ?)";
    put_schedule_hour = "INSERT INTO {{ks}}.schedule_hours (one, hour) VALUES (0, ?) USING TIMESTAMP ?";
    del_schedule_hour = "DELETE FROM {{ks}}.schedule_hours USING TIMESTAMP ? WHERE one = 0 AND hour = ?";
}

/// The ScyllaDB projection store. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaProjection {
    session: Arc<Session>,
    st: Arc<Statements>,
    config: Arc<ScyllaConfig>,
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
        let st = Statements::prepare(&session, &config.keyspace, config.consistency).await?;
        Ok(ScyllaProjection {
            session: Arc::new(session),
            st: Arc::new(st),
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    /// The rows of a (possibly large) result, paged as they are read.
    async fn stream<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<impl futures_util::Stream<Item = Result<R, ProjectionError>> + Unpin, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        Ok(self
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(|e| storage("read")(&e))?
            .rows_stream::<R>()
            .map_err(|e| storage("read")(&e))?
            .map_err(|e| storage("read")(&e)))
    }

    /// All rows of a (possibly large) result, paged.
    async fn all<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.stream(st, values).await?.try_collect().await
    }

    /// The first row of a point read.
    async fn one<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Option<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| storage("read")(&e))?
            .into_rows_result()
            .map_err(|e| storage("read")(&e))?
            .maybe_first_row::<R>()
            .map_err(|e| storage("read")(&e))
    }

    /// Runs statements as logged batches of at most [`MAX_BATCH_STATEMENTS`], never splitting
    /// a group (one event's writes), one batch after the other.
    async fn run_batches(&self, groups: Vec<Vec<Stmt>>) -> Result<(), ProjectionError> {
        let mut pending: Vec<Stmt> = Vec::new();
        for group in groups {
            if !pending.is_empty() && pending.len() + group.len() > MAX_BATCH_STATEMENTS {
                self.run_batch(std::mem::take(&mut pending)).await?;
            }
            pending.extend(group);
        }
        if !pending.is_empty() {
            self.run_batch(pending).await?;
        }
        Ok(())
    }

    async fn run_batch(&self, stmts: Vec<Stmt>) -> Result<(), ProjectionError> {
        let mut b = Batch::new(BatchType::Logged);
        b.set_consistency(self.config.consistency);
        b.set_is_idempotent(true);
        let mut values = Vec::with_capacity(stmts.len());
        for s in stmts {
            b.append_statement(s.st);
            values.push(s.values);
        }
        self.session
            .batch(&b, values)
            .await
            .map_err(|e| storage("write")(&e))?;
        Ok(())
    }

    async fn fetch(&self, need: &Need) -> Result<Fact, ProjectionError> {
        Ok(match need {
            Need::Row {
                user_id,
                notification_id,
            } => Fact::Row(self.row(user_id, notification_id).await?),
            Need::CollapseHolder { user_id, key } => {
                let seq: Option<(i64,)> = self.one(&self.st.collapse_seq, (user_id, key)).await?;
                match seq {
                    Some((seq,)) => Fact::Row(self.row_at(user_id, seq as u64).await?),
                    None => Fact::Row(None),
                }
            }
            Need::Unread { user_id } => {
                let buckets: Vec<(i64,)> = self.all(&self.st.all_buckets, (user_id,)).await?;
                let mut seqs = Vec::new();
                for (b,) in buckets {
                    let s: Vec<(i64,)> = self.all(&self.st.unread_seqs, (user_id, b)).await?;
                    seqs.extend(s.into_iter().map(|(s,)| s as u64));
                }
                let rows: Vec<Option<InboxRow>> = stream::iter(seqs)
                    .map(|seq| self.row_at(user_id, seq))
                    .buffer_unordered(FETCH_CONCURRENCY)
                    .try_collect()
                    .await?;
                Fact::Rows(rows.into_iter().flatten().filter(|r| !r.read).collect())
            }
            Need::UnreadCount { user_id } => {
                let n: Option<(i64,)> = self.one(&self.st.count_of, (user_id,)).await?;
                Fact::Count(n.map_or(0, |(n,)| n.max(0) as u64))
            }
            Need::Cursor { user_id, device_id } => {
                Fact::Cursor(self.device_cursor(user_id, device_id).await?)
            }
        })
    }

    async fn row_at(&self, user_id: &str, seq: u64) -> Result<Option<InboxRow>, ProjectionError> {
        let r: Option<RowTuple> = self
            .one(&self.st.row_at, (user_id, bucket(seq), seq as i64))
            .await?;
        Ok(r.map(to_row))
    }

    /// The statements of one write, stamped with its event's offset.
    fn statements_of(&self, offset: u64, write: Write) -> Vec<Stmt> {
        let st = &self.st;
        let ts = big(offset.saturating_add(1));
        let s = |st: &PreparedStatement, values: Vec<Option<CqlValue>>| Stmt {
            st: st.clone(),
            values,
        };
        match write {
            Write::PutRow(r) => {
                let (user, seq, b) = (text(&r.user_id), big(r.seq), big(bucket(r.seq)));
                let mut out = vec![
                    s(
                        &st.put_row,
                        vec![
                            b.clone(),
                            user.clone(),
                            seq.clone(),
                            text(&r.notification_id),
                            text(&r.event_type),
                            text(&r.source),
                            text(&r.payload),
                            text(r.priority.as_str()),
                            r.collapse_key.as_deref().and_then(text),
                            big(r.created_at),
                            r.deliver_at.and_then(big),
                            r.expires_at.and_then(big),
                            Some(CqlValue::Boolean(r.read)),
                            Some(CqlValue::Boolean(r.archived)),
                            Some(CqlValue::Boolean(r.expired)),
                            Some(CqlValue::Boolean(r.superseded)),
                            ts.clone(),
                        ],
                    ),
                    s(&st.put_bucket, vec![user.clone(), b.clone(), ts.clone()]),
                    s(
                        &st.put_id,
                        vec![
                            user.clone(),
                            text(&r.notification_id),
                            seq.clone(),
                            ts.clone(),
                        ],
                    ),
                ];
                out.push(if r.read {
                    s(
                        &st.del_unread,
                        vec![ts.clone(), user.clone(), b.clone(), seq.clone()],
                    )
                } else {
                    s(
                        &st.put_unread,
                        vec![user.clone(), b.clone(), seq.clone(), ts.clone()],
                    )
                });
                if let Some(key) = &r.collapse_key {
                    out.push(if r.listed() {
                        s(
                            &st.put_collapse,
                            vec![user.clone(), text(key), seq.clone(), ts.clone()],
                        )
                    } else {
                        s(
                            &st.del_collapse,
                            vec![ts.clone(), user.clone(), text(key), seq.clone()],
                        )
                    });
                }
                if let Some(at) = r.expires_at {
                    let h = big(hour(at));
                    if r.listed() {
                        out.push(s(
                            &st.put_expiry,
                            vec![
                                h.clone(),
                                big(at),
                                user.clone(),
                                seq.clone(),
                                text(&r.notification_id),
                                ts.clone(),
                            ],
                        ));
                        out.push(s(&st.put_expiry_hour, vec![h, big(monotonic_micros())]));
                    } else {
                        out.push(s(&st.del_expiry, vec![ts, h, big(at), user, seq]));
                    }
                }
                out
            }
            Write::SetUnreadCount { user_id, count } => {
                vec![s(&st.set_count, vec![text(&user_id), big(count), ts])]
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => vec![s(
                &st.put_ack,
                vec![
                    text(&user_id),
                    text(&device_id),
                    big(bucket(seq)),
                    big(seq),
                    ts,
                ],
            )],
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => vec![s(
                &st.set_cursor,
                // The largest cursor wins whatever order the writes land in.
                vec![
                    text(&user_id),
                    text(&device_id),
                    big(seq),
                    big(seq.saturating_add(1)),
                ],
            )],
            Write::MarkDelivered {
                user_id,
                device_id,
                seq,
                at,
            } => vec![s(
                &st.put_delivered,
                vec![
                    text(&user_id),
                    text(&device_id),
                    big(bucket(seq)),
                    big(seq),
                    big(at),
                    big(FIRST_WINS - offset.min(FIRST_WINS as u64 - 1) as i64),
                ],
            )],
            Write::KnowUser { user_id } => vec![s(&st.know_user, vec![text(&user_id), ts])],
        }
    }

    fn directory_statements(&self, w: DirectoryWrite) -> Stmt {
        let st = &self.st;
        let ts = big(monotonic_micros());
        let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
        // A member set's key: (name, shard of the user), user.
        let member =
            |name: &str, user: &str| vec![text(name), Some(CqlValue::Int(shard(user))), text(user)];
        let (st, values) = match w {
            DirectoryWrite::UpsertUser { user_id, roles } => {
                (&st.set_roles, vec![text(&user_id), text(&json(&roles)), ts])
            }
            DirectoryWrite::KnowUser { user_id } => (&st.know_user, vec![text(&user_id), ts]),
            DirectoryWrite::AddMember { group, user_id } => (
                &st.add_member,
                [member(&group, &user_id), vec![ts]].concat(),
            ),
            DirectoryWrite::RemoveMember { group, user_id } => (
                &st.del_member,
                [vec![ts], member(&group, &user_id)].concat(),
            ),
            DirectoryWrite::Subscribe { topic, user_id } => {
                (&st.subscribe, [member(&topic, &user_id), vec![ts]].concat())
            }
            DirectoryWrite::Unsubscribe { topic, user_id } => (
                &st.unsubscribe,
                [vec![ts], member(&topic, &user_id)].concat(),
            ),
            DirectoryWrite::DefineRole { role, topics } => {
                (&st.define_role, vec![text(&role), text(&json(&topics)), ts])
            }
        };
        Stmt {
            st: st.clone(),
            values,
        }
    }

    async fn store_offsets(
        &self,
        consumer: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let stmts = offsets
            .iter()
            .map(|&(p, o)| Stmt {
                st: self.st.set_offset.clone(),
                // Stamped with the offset itself: the largest wins, offsets never move back.
                values: vec![
                    text(consumer),
                    Some(CqlValue::Int(p as i32)),
                    big(o),
                    big(o),
                ],
            })
            .collect();
        self.run_batches(vec![stmts]).await
    }

    async fn members(
        &self,
        st: &PreparedStatement,
        name: &str,
    ) -> Result<Vec<String>, ProjectionError> {
        let shards: Vec<Vec<(String,)>> = stream::iter(0..MEMBER_SHARDS)
            .map(|shard| self.all(st, (name, shard)))
            .buffer_unordered(MEMBER_SHARDS as usize)
            .try_collect()
            .await?;
        Ok(shards.into_iter().flatten().map(|(u,)| u).collect())
    }

    /// RBAC: whether `user` may receive `topic` (no roles: yes; else one of its roles lists it).
    async fn topic_allowed(&self, user: &str, topic: &str) -> Result<bool, ProjectionError> {
        let roles: Option<(Option<String>,)> = self.one(&self.st.roles_of, (user,)).await?;
        let roles: Vec<String> = roles
            .and_then(|(r,)| r)
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default();
        if roles.is_empty() {
            return Ok(true);
        }
        for role in roles {
            let topics: Option<(Option<String>,)> = self.one(&self.st.topics_of, (&role,)).await?;
            let topics: Vec<String> = topics
                .and_then(|(t,)| t)
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            if RoleDefinition::allows(&topics, topic) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Entries of an hour-bucketed time index at or before `now_ms`, earliest first, pruning
    /// past hours that have emptied.
    async fn time_index<R>(
        &self,
        hours: &PreparedStatement,
        entries: &PreparedStatement,
        prune: &PreparedStatement,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let now_hour = hour(now_ms);
        let hours: Vec<(i64,)> = self.all(hours, (now_hour,)).await?;
        let mut out = Vec::new();
        for (h,) in hours {
            if out.len() >= limit {
                break;
            }
            let left = (limit - out.len()).min(i32::MAX as usize) as i32;
            let found: Vec<R> = self.all(entries, (h, now_ms, left)).await?;
            if found.is_empty() && h < now_hour {
                self.session
                    .execute_unpaged(prune, (hour_end_micros(h), h))
                    .await
                    .map_err(|e| storage("prune")(&e))?;
            }
            out.extend(found);
        }
        Ok(out)
    }

    /// A snapshot and the consumer offsets it covers. ScyllaDB has no consistent snapshot:
    /// the offsets are read before and after, and a change in between (a projector running)
    /// is retried, then reported.
    pub async fn snapshot_with_offsets(
        &self,
    ) -> Result<(ProjectionSnapshot, BTreeMap<String, BTreeMap<u32, u64>>), ProjectionError> {
        for _ in 0..3 {
            let before = self.all_offsets().await?;
            let s = self.snapshot().await?;
            if self.all_offsets().await? == before {
                return Ok((s, before));
            }
        }
        Err(ProjectionError::Storage(
            "the ScyllaDB projection kept changing while it was read: stop the projectors to \
             compare it"
                .into(),
        ))
    }

    async fn all_offsets(&self) -> Result<BTreeMap<String, BTreeMap<u32, u64>>, ProjectionError> {
        let ks = &self.config.keyspace;
        let rows: Vec<(String, i32, i64)> = self
            .scan(&format!(
                "SELECT consumer, partition, next_offset FROM {ks}.consumer_offsets"
            ))
            .await?;
        let mut out: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        for (c, p, o) in rows {
            out.entry(c).or_default().insert(p as u32, o as u64);
        }
        Ok(out)
    }

    /// A whole table, by token range (snapshots and tests only).
    async fn scan<R>(&self, cql: &str) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let mut st = scylla::statement::Statement::new(cql);
        st.set_consistency(self.config.consistency);
        self.session
            .query_iter(st, ())
            .await
            .map_err(|e| storage("scan")(&e))?
            .rows_stream::<R>()
            .map_err(|e| storage("scan")(&e))?
            .try_collect()
            .await
            .map_err(|e| storage("scan")(&e))
    }
}

#[async_trait]
impl AppliedOffsets for ScyllaProjection {
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError> {
        let consumer = stage.name();
        let rows: Vec<(i32, i64)> = self.all(&self.st.offsets_of, (consumer,)).await?;
        Ok(rows
            .into_iter()
            .map(|(p, o)| (p as u32, o as u64))
            .collect())
    }
}

#[async_trait]
impl ProjectionWriter for ScyllaProjection {
    async fn apply_user_events(
        &self,
        stage: Stage,
        events: &[Positioned<UserEvent>],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        // A replica that lost its partitions may still deliver a stale batch: skip what the
        // stored offsets cover (the timestamps make any race here harmless, see the module).
        let applied = self.consumer_offsets(stage).await?;
        let events: Vec<&Positioned<UserEvent>> =
            events.iter().filter(|e| !e.covered_by(&applied)).collect();
        let mut state = BatchState::new();
        let needs = batch::prefetch(events.iter().map(|e| &e.event));
        let facts: Vec<(Need, Fact)> = stream::iter(needs)
            .map(|need| async move {
                let fact = self.fetch(&need).await?;
                Ok::<_, ProjectionError>((need, fact))
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        for (need, fact) in facts {
            state
                .fill(&need, fact)
                .map_err(|e| ProjectionError::Corrupt(e.to_string()))?;
        }
        for e in &events {
            while let Err(need) = state.try_apply(e.offset, &e.event) {
                let fact = self.fetch(&need).await?;
                state
                    .fill(&need, fact)
                    .map_err(|e| ProjectionError::Corrupt(e.to_string()))?;
            }
        }
        // Per user, one group of statements per event, in log order.
        let mut by_user: BTreeMap<String, Vec<(u64, Vec<Stmt>)>> = BTreeMap::new();
        for (offset, w) in state.into_writes() {
            let user = match &w {
                Write::PutRow(r) => r.user_id.clone(),
                Write::SetUnreadCount { user_id, .. }
                | Write::AckSeq { user_id, .. }
                | Write::SetDeviceCursor { user_id, .. }
                | Write::MarkDelivered { user_id, .. }
                | Write::KnowUser { user_id } => user_id.clone(),
            };
            let groups = by_user.entry(user).or_default();
            let stmts = self.statements_of(offset, w);
            match groups.last_mut() {
                Some((o, g)) if *o == offset => g.extend(stmts),
                _ => groups.push((offset, stmts)),
            }
        }
        stream::iter(by_user.into_values())
            .map(|groups| self.run_batches(groups.into_iter().map(|(_, g)| g).collect()))
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        self.store_offsets(consumer, offsets).await
    }

    async fn apply_directory(
        &self,
        stage: Stage,
        changes: &[DirectoryChange],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let stmts = changes
            .iter()
            .flat_map(projection::fold_directory)
            .map(|w| vec![self.directory_statements(w)])
            .collect();
        self.run_batches(stmts).await?;
        self.store_offsets(consumer, offsets).await
    }

    async fn define_roles(
        &self,
        stage: Stage,
        roles: &[RoleDefinition],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let stmts = roles
            .iter()
            .map(|r| vec![self.directory_statements(projection::fold_role(r))])
            .collect();
        self.run_batches(stmts).await?;
        self.store_offsets(consumer, offsets).await
    }

    async fn record_expansions(
        &self,
        stage: Stage,
        expansions: &[(String, Vec<String>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        for (id, users) in expansions {
            // Who first, then the marker: "expanded" implies the audit list is complete.
            let who = users
                .iter()
                .map(|u| {
                    vec![Stmt {
                        st: self.st.put_expansion_user.clone(),
                        values: vec![text(id), Some(CqlValue::Int(shard(u))), text(u)],
                    }]
                })
                .collect();
            self.run_batches(who).await?;
            let mut marker = vec![
                Stmt {
                    st: self.st.put_expansion.clone(),
                    values: vec![text(id), big(users.len())],
                },
                Stmt {
                    st: self.st.del_scheduled.clone(),
                    values: vec![text(id)],
                },
            ];
            let due: Option<(i64,)> = self.one(&self.st.scheduled_due, (id,)).await?;
            if let Some((due,)) = due {
                marker.push(Stmt {
                    st: self.st.del_scheduled_at.clone(),
                    values: vec![big(hour(due)), big(due), text(id)],
                });
            }
            self.run_batches(vec![marker]).await?;
        }
        self.store_offsets(consumer, offsets).await
    }

    async fn schedule(
        &self,
        stage: Stage,
        requests: &[(String, i64, Vec<u8>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let ids: Vec<String> = requests.iter().map(|(id, ..)| id.clone()).collect();
        let done: BTreeSet<String> = self.expanded(&ids).await?.into_iter().collect();
        let groups = requests
            .iter()
            .filter(|(id, ..)| !done.contains(id))
            .map(|(id, due, request)| {
                vec![
                    Stmt {
                        st: self.st.put_scheduled.clone(),
                        values: vec![text(id), big(*due)],
                    },
                    Stmt {
                        st: self.st.put_scheduled_at.clone(),
                        values: vec![
                            big(hour(*due)),
                            big(*due),
                            text(id),
                            Some(CqlValue::Blob(request.clone())),
                        ],
                    },
                    Stmt {
                        st: self.st.put_schedule_hour.clone(),
                        values: vec![big(hour(*due)), big(monotonic_micros())],
                    },
                ]
            })
            .collect();
        self.run_batches(groups).await?;
        self.store_offsets(consumer, offsets).await
    }
}

#[async_trait]
impl InboxReader for ScyllaProjection {
    async fn inbox(&self, user_id: &str, q: &InboxQuery) -> Result<Vec<InboxRow>, ProjectionError> {
        let before = q.before.unwrap_or(u64::MAX).min(i64::MAX as u64);
        let limit = q.limit.min(MAX_PAGE);
        if before == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let buckets: Vec<(i64,)> = self
            .all(&self.st.buckets_down, (user_id, bucket(before - 1)))
            .await?;
        let mut out = Vec::new();
        for (b,) in buckets {
            let mut rows = self
                .stream::<RowTuple>(&self.st.rows_down, (user_id, b, before as i64))
                .await?;
            while let Some(t) = rows.try_next().await? {
                let r = to_row(t);
                let wanted = match q.filter {
                    InboxFilter::Inbox => !r.archived,
                    InboxFilter::Unread => !r.archived && !r.read,
                    InboxFilter::Archived => r.archived,
                };
                if wanted && r.shown(q.now_ms) {
                    out.push(r);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError> {
        let n: Option<(i64,)> = self.one(&self.st.count_of, (user_id,)).await?;
        Ok(n.map_or(0, |(n,)| n.max(0) as u64))
    }

    async fn pending(
        &self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<InboxRow>, ProjectionError> {
        let cursor = self.device_cursor(user_id, device_id).await?;
        let lower: i64 = after
            .max(cursor)
            .map_or(-1, |s| s.min(i64::MAX as u64 - 1) as i64);
        let limit = limit.min(MAX_PAGE * 10);
        let first = bucket((lower + 1) as u64);
        let buckets: Vec<(i64,)> = self.all(&self.st.buckets_up, (user_id, first)).await?;
        let mut out = Vec::new();
        for (b,) in buckets {
            let acked: BTreeSet<i64> = self
                .all::<(i64,)>(&self.st.acks_in, (user_id, device_id, b))
                .await?
                .into_iter()
                .map(|(s,)| s)
                .collect();
            let mut rows = self
                .stream::<RowTuple>(&self.st.rows_up, (user_id, b, lower))
                .await?;
            while let Some(t) = rows.try_next().await? {
                let r = to_row(t);
                if r.listed() && r.due(now_ms) && !acked.contains(&(r.seq as i64)) {
                    out.push(r);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError> {
        let c: Option<(i64,)> = self.one(&self.st.cursor_of, (user_id, device_id)).await?;
        Ok(c.map(|(s,)| s as u64))
    }

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let seq: Option<(i64,)> = self
            .one(&self.st.id_seq, (user_id, notification_id))
            .await?;
        match seq {
            Some((seq,)) => self.row_at(user_id, seq as u64).await,
            None => Ok(None),
        }
    }
}

#[async_trait]
impl DirectoryReader for ScyllaProjection {
    async fn expanded(&self, ids: &[String]) -> Result<Vec<String>, ProjectionError> {
        let found: Vec<Option<(String,)>> = stream::iter(ids.to_vec())
            .map(|id| async move { self.one(&self.st.expansion, (id,)).await })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().map(|(id,)| id).collect())
    }

    async fn resolve(&self, r: &Recipients) -> Result<Vec<String>, ProjectionError> {
        let mut users: BTreeSet<String> = r.users.iter().cloned().collect();
        for g in &r.groups {
            users.extend(self.members(&self.st.group_shard, g).await?);
        }
        if let Some(t) = &r.topic {
            let subscribers = self.members(&self.st.topic_shard, t).await?;
            let allowed: Vec<Option<String>> = stream::iter(subscribers)
                .map(|u| async move {
                    Ok::<_, ProjectionError>(self.topic_allowed(&u, t).await?.then_some(u))
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .try_collect()
                .await?;
            users.extend(allowed.into_iter().flatten());
        }
        if r.everyone {
            let ks = &self.config.keyspace;
            let all: Vec<(String,)> = self
                .scan(&format!("SELECT user_id FROM {ks}.users"))
                .await?;
            users.extend(all.into_iter().map(|(u,)| u));
        }
        Ok(users.into_iter().collect())
    }

    async fn expansion_of(&self, notification_id: &str) -> Result<Vec<String>, ProjectionError> {
        let mut users = self
            .members(&self.st.expansion_shard, notification_id)
            .await?;
        users.sort();
        Ok(users)
    }
}

#[async_trait]
impl TimerQueries for ScyllaProjection {
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        self.time_index(
            &self.st.schedule_hours,
            &self.st.due_in,
            &self.st.del_schedule_hour,
            now_ms,
            limit,
        )
        .await
    }

    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.time_index(
            &self.st.expiry_hours,
            &self.st.expiring_in,
            &self.st.del_expiry_hour,
            now_ms,
            limit,
        )
        .await
    }
}

#[async_trait]
impl Snapshots for ScyllaProjection {
    async fn snapshot(&self) -> Result<ProjectionSnapshot, ProjectionError> {
        let ks = &self.config.keyspace;
        let mut s = ProjectionSnapshot::default();
        for t in self
            .scan::<RowTuple>(&format!("SELECT {ROW_COLUMNS} FROM {ks}.inbox"))
            .await?
        {
            let row = to_row(t);
            s.rows.insert((row.user_id.clone(), row.seq), row);
        }
        for (u, n) in self
            .scan::<(String, i64)>(&format!("SELECT user_id, n FROM {ks}.unread_counts"))
            .await?
        {
            s.unread.insert(u, n as u64);
        }
        for (u, d, seq) in self
            .scan::<(String, String, i64)>(&format!(
                "SELECT user_id, device_id, seq FROM {ks}.acks"
            ))
            .await?
        {
            s.acks.insert((u, d, seq as u64));
        }
        for (u, d, seq) in self
            .scan::<(String, String, i64)>(&format!(
                "SELECT user_id, device_id, seq FROM {ks}.cursors"
            ))
            .await?
        {
            s.cursors.insert((u, d), seq as u64);
        }
        for (u, d, seq, at) in self
            .scan::<(String, String, i64, i64)>(&format!(
                "SELECT user_id, device_id, seq, at FROM {ks}.delivered"
            ))
            .await?
        {
            s.delivered.insert((u, d, seq as u64), at);
        }
        for (u, roles) in self
            .scan::<(String, Option<String>)>(&format!("SELECT user_id, roles FROM {ks}.users"))
            .await?
        {
            let roles = roles
                .and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or_default();
            s.users.insert(u, roles);
        }
        for (g, u) in self
            .scan::<(String, String)>(&format!("SELECT group_id, user_id FROM {ks}.group_members"))
            .await?
        {
            s.groups.insert((g, u));
        }
        for (t, u) in self
            .scan::<(String, String)>(&format!(
                "SELECT topic, user_id FROM {ks}.topic_subscribers"
            ))
            .await?
        {
            s.topics.insert((t, u));
        }
        for (r, topics) in self
            .scan::<(String, Option<String>)>(&format!("SELECT role, topics FROM {ks}.roles"))
            .await?
        {
            let topics = topics
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            s.roles.insert(r, topics);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_options() {
        let c = ScyllaConfig::from_url("scylla://a,b:9043/inbox?consistency=local_quorum").unwrap();
        assert_eq!(c.nodes, vec!["a:9042", "b:9043"]);
        assert_eq!(c.keyspace, "inbox");
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        let c = ScyllaConfig::from_url("scylla://u:p@h?replication_factor=1").unwrap();
        assert_eq!(c.credentials, Some(("u".into(), "p".into())));
        assert_eq!(c.keyspace, "herald");
        assert_eq!(c.consistency, Consistency::Quorum);
        assert!(c.replication.contains("'replication_factor': 1"));
        for bad in [
            "postgres://h/db",
            "scylla:///ks",
            "scylla://h/bad-name",
            "scylla://h/ks?consistency=MOST",
            "scylla://h/ks?replication={};DROP",
            "scylla://h/ks?nope=1",
        ] {
            assert!(
                ScyllaConfig::from_url(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn the_schema_splits_into_statements_for_the_configured_keyspace() {
        let c = ScyllaConfig::from_url("scylla://h/hx?replication_factor=1").unwrap();
        let stmts = schema_statements(&c);
        assert!(
            stmts[0].starts_with("CREATE KEYSPACE IF NOT EXISTS hx WITH replication = {'class'")
        );
        assert!(stmts.iter().all(|s| s.starts_with("CREATE ")), "{stmts:#?}");
        assert!(
            stmts
                .iter()
                .all(|s| !s.contains('{') || s.starts_with("CREATE KEYSPACE"))
        );
        assert!(stmts.iter().skip(1).all(|s| s.contains(" hx.")));
        let all = stmts.join(";");
        assert!(!all.contains(concat!("ALLOW ", "FILTERING")) && !all.contains("INDEX"));
        assert!(!include_str!("lib.rs").contains(concat!("ALLOW ", "FILTERING")));
        assert_eq!(stmts.len(), 23);
    }

    #[test]
    fn buckets_bound_partitions_and_hours_prune_after_their_end() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(65_535), 0);
        assert_eq!(bucket(65_536), 1);
        assert_eq!(hour(-1), -1);
        assert_eq!(hour_end_micros(0), 3_600_000_000);
        let (a, b) = (monotonic_micros(), monotonic_micros());
        assert!(b > a);
        assert!((0..MEMBER_SHARDS).contains(&shard("someone")));
    }
}
