//! The projection port on PostgreSQL.
//!
//! The core fold runs inside one PostgreSQL transaction per batch, together with the consumer
//! offsets, exactly as on SQLite: every write is an idempotent upsert, counts are absolute.
//! The schema is `schemas/sql/postgres/001_projection.sql`, applied at start-up. Connections use
//! the synchronous `postgres` client on tokio's blocking pool, from a bounded pool.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_core::mem::ProjectionSnapshot;
use herald_core::model::{DirectoryChange, Priority, Recipients, RoleDefinition, UserEvent};
use herald_core::projection::{self, DirectoryWrite, InboxRow, ProjectionState, Write};
use herald_ports::projection::*;
use postgres::{Client, GenericClient, NoTls, Row, Transaction};

#[cfg(feature = "testing")]
pub mod testing;

/// Most idle connections kept.
pub const POOL_SIZE: usize = 8;

const MIGRATION: &str = include_str!("../../../schemas/sql/postgres/001_projection.sql");

const ROW_COLUMNS: &str = "user_id, seq, notification_id, event_type, source, payload, priority, \
     collapse_key, created_at, deliver_at, expires_at, read, archived, expired, superseded";

fn storage(e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Storage(e.to_string())
}

/// A PostgreSQL error with the server's message ("db error" alone says nothing).
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Advisory lock key serializing schema set-up among processes that start together.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64; // "herald"

fn to_row(r: &Row) -> InboxRow {
    let priority: String = r.get(6);
    InboxRow {
        user_id: r.get(0),
        seq: r.get::<_, i64>(1) as u64,
        notification_id: r.get(2),
        event_type: r.get(3),
        source: r.get(4),
        payload: r.get(5),
        priority: priority.parse().unwrap_or(Priority::Normal),
        collapse_key: r.get(7),
        created_at: r.get(8),
        deliver_at: r.get(9),
        expires_at: r.get(10),
        read: r.get(11),
        archived: r.get(12),
        expired: r.get(13),
        superseded: r.get(14),
    }
}

struct TxState<'a, 'b> {
    tx: &'a mut Transaction<'b>,
}

impl ProjectionState for TxState<'_, '_> {
    type Error = postgres::Error;

    fn row(&mut self, user_id: &str, id: &str) -> Result<Option<InboxRow>, postgres::Error> {
        Ok(self
            .tx
            .query_opt(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND notification_id = $2"
                ),
                &[&user_id, &id],
            )?
            .map(|r| to_row(&r)))
    }

    fn collapse_holder(
        &mut self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<InboxRow>, postgres::Error> {
        Ok(self
            .tx
            .query_opt(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND collapse_key = $2 \
                     AND NOT archived AND NOT expired AND NOT superseded ORDER BY seq DESC LIMIT 1"
                ),
                &[&user_id, &key],
            )?
            .map(|r| to_row(&r)))
    }

    fn unread_up_to(
        &mut self,
        user_id: &str,
        up_to: u64,
    ) -> Result<Vec<InboxRow>, postgres::Error> {
        let up_to = up_to.min(i64::MAX as u64) as i64;
        Ok(self
            .tx
            .query(
                &format!("SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND NOT read AND seq <= $2 ORDER BY seq"),
                &[&user_id, &up_to],
            )?
            .iter()
            .map(to_row)
            .collect())
    }

    fn unread_count(&mut self, user_id: &str) -> Result<u64, postgres::Error> {
        Ok(self
            .tx
            .query_opt("SELECT n FROM unread WHERE user_id = $1", &[&user_id])?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn device_cursor(
        &mut self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, postgres::Error> {
        Ok(self
            .tx
            .query_opt(
                "SELECT seq FROM cursors WHERE user_id = $1 AND device_id = $2",
                &[&user_id, &device_id],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    fn write(&mut self, write: Write) -> Result<(), postgres::Error> {
        match write {
            Write::PutRow(r) => {
                self.tx.execute(
                    &format!(
                        "INSERT INTO inbox ({ROW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                         ON CONFLICT (user_id, seq) DO UPDATE SET read = EXCLUDED.read, archived = EXCLUDED.archived, \
                         expired = EXCLUDED.expired, superseded = EXCLUDED.superseded"
                    ),
                    &[
                        &r.user_id,
                        &(r.seq as i64),
                        &r.notification_id,
                        &r.event_type,
                        &r.source,
                        &r.payload,
                        &r.priority.as_str(),
                        &r.collapse_key,
                        &r.created_at,
                        &r.deliver_at,
                        &r.expires_at,
                        &r.read,
                        &r.archived,
                        &r.expired,
                        &r.superseded,
                    ],
                )?;
            }
            Write::SetUnreadCount { user_id, count } => {
                self.tx.execute(
                    "INSERT INTO unread (user_id, n) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET n = EXCLUDED.n",
                    &[&user_id, &(count as i64)],
                )?;
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => {
                self.tx.execute(
                    "INSERT INTO acks VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&user_id, &device_id, &(seq as i64)],
                )?;
            }
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => {
                self.tx.execute(
                    "INSERT INTO cursors VALUES ($1, $2, $3) ON CONFLICT (user_id, device_id) \
                     DO UPDATE SET seq = GREATEST(cursors.seq, EXCLUDED.seq)",
                    &[&user_id, &device_id, &(seq as i64)],
                )?;
            }
            Write::MarkDelivered {
                user_id,
                device_id,
                seq,
                at,
            } => {
                self.tx.execute(
                    "INSERT INTO delivered VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&user_id, &device_id, &(seq as i64), &at],
                )?;
            }
            Write::KnowUser { user_id } => know_user(self.tx, &user_id)?,
        }
        Ok(())
    }
}

fn know_user(tx: &mut Transaction<'_>, user_id: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO users (user_id, roles) VALUES ($1, '[]') ON CONFLICT DO NOTHING",
        &[&user_id],
    )?;
    Ok(())
}

/// Locks the offset rows of `offsets`' partitions for this transaction and returns what they
/// hold: concurrent writers of one partition apply one after the other.
fn lock_offsets(
    tx: &mut Transaction<'_>,
    consumer: &str,
    offsets: &[(u32, u64)],
) -> Result<BTreeMap<u32, u64>, postgres::Error> {
    let mut out = BTreeMap::new();
    let mut partitions: Vec<u32> = offsets.iter().map(|(p, _)| *p).collect();
    partitions.sort_unstable(); // one lock order for every writer: no deadlocks
    partitions.dedup();
    for p in partitions {
        tx.execute(
            "INSERT INTO consumer_offsets VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
            &[&consumer, &(p as i32)],
        )?;
        let row = tx.query_one(
            "SELECT next_offset FROM consumer_offsets WHERE consumer = $1 AND partition = $2 \
             FOR UPDATE",
            &[&consumer, &(p as i32)],
        )?;
        out.insert(p, row.get::<_, i64>(0) as u64);
    }
    Ok(out)
}

fn store_offsets(
    tx: &mut Transaction<'_>,
    consumer: &str,
    offsets: &[(u32, u64)],
) -> Result<(), postgres::Error> {
    for (p, o) in offsets {
        tx.execute(
            "INSERT INTO consumer_offsets VALUES ($1, $2, $3) ON CONFLICT (consumer, partition) \
             DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
            &[&consumer, &(*p as i32), &(*o as i64)],
        )?;
    }
    Ok(())
}

fn apply_directory_write(
    tx: &mut Transaction<'_>,
    w: DirectoryWrite,
) -> Result<(), postgres::Error> {
    match w {
        DirectoryWrite::UpsertUser { user_id, roles } => {
            let roles = serde_json::to_string(&roles).expect("strings serialize");
            tx.execute(
                "INSERT INTO users (user_id, roles) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET roles = EXCLUDED.roles",
                &[&user_id, &roles],
            )?;
        }
        DirectoryWrite::KnowUser { user_id } => know_user(tx, &user_id)?,
        DirectoryWrite::AddMember { group, user_id } => {
            tx.execute(
                "INSERT INTO group_members VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&group, &user_id],
            )?;
        }
        DirectoryWrite::RemoveMember { group, user_id } => {
            tx.execute(
                "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                &[&group, &user_id],
            )?;
        }
        DirectoryWrite::Subscribe { topic, user_id } => {
            tx.execute(
                "INSERT INTO topic_subscribers VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&topic, &user_id],
            )?;
        }
        DirectoryWrite::Unsubscribe { topic, user_id } => {
            tx.execute(
                "DELETE FROM topic_subscribers WHERE topic = $1 AND user_id = $2",
                &[&topic, &user_id],
            )?;
        }
        DirectoryWrite::DefineRole { role, topics } => {
            let topics = serde_json::to_string(&topics).expect("strings serialize");
            tx.execute(
                "INSERT INTO roles (role, topics) VALUES ($1, $2) ON CONFLICT (role) DO UPDATE SET topics = EXCLUDED.topics",
                &[&role, &topics],
            )?;
        }
    }
    Ok(())
}

fn strings(c: &mut Client, sql: &str, arg: &str) -> Result<Vec<String>, postgres::Error> {
    Ok(c.query(sql, &[&arg])?.iter().map(|r| r.get(0)).collect())
}

/// RBAC: whether `user` may receive `topic` (no roles: yes; else one of the roles lists it).
fn topic_allowed(c: &mut Client, user: &str, topic: &str) -> Result<bool, postgres::Error> {
    let roles: Vec<String> = c
        .query_opt("SELECT roles FROM users WHERE user_id = $1", &[&user])?
        .and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok())
        .unwrap_or_default();
    if roles.is_empty() {
        return Ok(true);
    }
    for role in roles {
        let topics: Vec<String> = c
            .query_opt("SELECT topics FROM roles WHERE role = $1", &[&role])?
            .and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok())
            .unwrap_or_default();
        if RoleDefinition::allows(&topics, topic) {
            return Ok(true);
        }
    }
    Ok(false)
}

struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A sync client closes through its own small runtime, which must not run on an async
        // worker thread: close idle connections on a plain thread.
        let idle = std::mem::take(&mut *self.idle.lock().expect("pool lock"));
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("herald-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

impl Pool {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, ProjectionError> {
        let conn = self.idle.lock().expect("pool lock").pop();
        let mut conn = match conn {
            Some(c) if !c.is_closed() => c,
            _ => Client::connect(&self.url, NoTls).map_err(|e| {
                ProjectionError::Storage(format!("cannot connect to PostgreSQL: {e}"))
            })?,
        };
        let out = f(&mut conn).map_err(|e| ProjectionError::Storage(pg_message(&e)));
        if !conn.is_closed() {
            let mut idle = self.idle.lock().expect("pool lock");
            if idle.len() < POOL_SIZE {
                idle.push(conn);
            }
        }
        out
    }
}

/// The PostgreSQL projection store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresProjection {
    pool: Arc<Pool>,
}

impl PostgresProjection {
    /// Connects (`postgres://user@host:port/db`) and applies the schema.
    pub async fn connect(url: &str) -> Result<Self, ProjectionError> {
        let pool = Arc::new(Pool {
            url: url.to_owned(),
            idle: Mutex::new(Vec::new()),
        });
        let store = PostgresProjection { pool };
        // Several replicas may start at once: CREATE ... IF NOT EXISTS is not safe concurrently,
        // so they take turns under an advisory lock.
        let outcome = tokio::task::spawn_blocking({
            let pool = store.pool.clone();
            move || {
                pool.with(|c| {
                    let mut tx = c.transaction()?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
                    tx.batch_execute(MIGRATION)?;
                    tx.commit()
                })
            }
        })
        .await
        .map_err(storage)?;
        outcome.map_err(|e| ProjectionError::Config(format!("PostgreSQL at {url}: {e}")))?;
        Ok(store)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(storage)?
    }

    /// A consistent snapshot and the offsets of every consumer it covers, read in one
    /// repeatable-read transaction (for `herald replay`).
    pub async fn snapshot_with_offsets(
        &self,
    ) -> Result<(ProjectionSnapshot, BTreeMap<String, BTreeMap<u32, u64>>), ProjectionError> {
        self.run(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .start()?;
            let mut offsets: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
            for r in tx.query(
                "SELECT consumer, partition, next_offset FROM consumer_offsets",
                &[],
            )? {
                offsets
                    .entry(r.get(0))
                    .or_default()
                    .insert(r.get::<_, i32>(1) as u32, r.get::<_, i64>(2) as u64);
            }
            let s = dump(&mut tx)?;
            tx.commit()?;
            Ok((s, offsets))
        })
        .await
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        self.run(move |c| {
            let mut tx = c.transaction()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl AppliedOffsets for PostgresProjection {
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError> {
        let consumer = stage.name();
        let consumer = consumer.to_owned();
        self.run(move |c| {
            Ok(c.query(
                "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1",
                &[&consumer],
            )?
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
            .collect())
        })
        .await
    }
}

#[async_trait]
impl ProjectionWriter for PostgresProjection {
    async fn apply_user_events(
        &self,
        stage: Stage,
        events: &[Positioned<UserEvent>],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let (consumer, events, offsets) = (consumer.to_owned(), events.to_vec(), offsets.to_vec());
        self.write(move |tx| {
            // Several projector replicas share this store, and during a rebalance two of them
            // may briefly hold the same partition. Lock each partition's offset row and skip
            // the events it already covers, so a stale batch never re-applies an old event
            // over newer ones (a Read re-applied after an Unread).
            let applied = lock_offsets(tx, &consumer, &offsets)?;
            {
                let mut state = TxState { tx };
                for e in &events {
                    if e.covered_by(&applied) {
                        continue;
                    }
                    projection::apply(&mut state, e.offset, &e.event)?;
                }
            }
            store_offsets(tx, &consumer, &offsets)
        })
        .await
    }

    async fn apply_directory(
        &self,
        stage: Stage,
        changes: &[DirectoryChange],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let (consumer, changes, offsets) =
            (consumer.to_owned(), changes.to_vec(), offsets.to_vec());
        self.write(move |tx| {
            for c in &changes {
                for w in projection::fold_directory(c) {
                    apply_directory_write(tx, w)?;
                }
            }
            store_offsets(tx, &consumer, &offsets)
        })
        .await
    }

    async fn define_roles(
        &self,
        stage: Stage,
        roles: &[RoleDefinition],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let (consumer, roles, offsets) = (consumer.to_owned(), roles.to_vec(), offsets.to_vec());
        self.write(move |tx| {
            for r in &roles {
                apply_directory_write(tx, projection::fold_role(r))?;
            }
            store_offsets(tx, &consumer, &offsets)
        })
        .await
    }

    async fn record_expansions(
        &self,
        stage: Stage,
        expansions: &[(String, Vec<String>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let (consumer, expansions, offsets) =
            (consumer.to_owned(), expansions.to_vec(), offsets.to_vec());
        self.write(move |tx| {
            for (id, users) in &expansions {
                tx.execute(
                    "INSERT INTO expansions VALUES ($1, $2) ON CONFLICT (notification_id) DO UPDATE SET recipients = EXCLUDED.recipients",
                    &[id, &(users.len() as i64)],
                )?;
                tx.execute("DELETE FROM scheduled WHERE notification_id = $1", &[id])?;
                for u in users {
                    tx.execute("INSERT INTO expansion_users VALUES ($1, $2) ON CONFLICT DO NOTHING", &[id, u])?;
                }
            }
            store_offsets(tx, &consumer, &offsets)
        })
        .await
    }

    async fn schedule(
        &self,
        stage: Stage,
        requests: &[(String, i64, Vec<u8>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let (consumer, requests, offsets) =
            (consumer.to_owned(), requests.to_vec(), offsets.to_vec());
        self.write(move |tx| {
            for (id, due, request) in &requests {
                tx.execute(
                    "INSERT INTO scheduled SELECT $1, $2, $3 \
                     WHERE NOT EXISTS (SELECT 1 FROM expansions WHERE notification_id = $1) ON CONFLICT DO NOTHING",
                    &[id, due, request],
                )?;
            }
            store_offsets(tx, &consumer, &offsets)
        })
        .await
    }
}

#[async_trait]
impl InboxReader for PostgresProjection {
    async fn inbox(&self, user_id: &str, q: &InboxQuery) -> Result<Vec<InboxRow>, ProjectionError> {
        let (user, q) = (user_id.to_owned(), q.clone());
        self.run(move |c| {
            let filter = match q.filter {
                InboxFilter::Inbox => "NOT archived",
                InboxFilter::Unread => "NOT archived AND NOT read",
                InboxFilter::Archived => "archived",
            };
            let before = q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let limit = q.limit.min(MAX_PAGE) as i64;
            Ok(c.query(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND seq < $2 AND {filter} \
                     AND NOT expired AND NOT superseded \
                     AND (deliver_at IS NULL OR deliver_at <= $3) AND (expires_at IS NULL OR expires_at > $3) \
                     ORDER BY seq DESC LIMIT $4"
                ),
                &[&user, &before, &q.now_ms, &limit],
            )?
            .iter()
            .map(to_row)
            .collect())
        })
        .await
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError> {
        let user = user_id.to_owned();
        self.run(move |c| {
            Ok(
                c.query_opt("SELECT n FROM unread WHERE user_id = $1", &[&user])?
                    .map_or(0, |r| r.get::<_, i64>(0) as u64),
            )
        })
        .await
    }

    async fn pending(
        &self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<InboxRow>, ProjectionError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.run(move |c| {
            let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
            let limit = limit.min(MAX_PAGE * 10) as i64;
            Ok(c.query(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox i WHERE i.user_id = $1 \
                     AND i.seq > GREATEST($2, COALESCE((SELECT seq FROM cursors WHERE user_id = $1 AND device_id = $3), -1)) \
                     AND NOT i.archived AND NOT i.expired AND NOT i.superseded \
                     AND (i.deliver_at IS NULL OR i.deliver_at <= $4) AND (i.expires_at IS NULL OR i.expires_at > $4) \
                     AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.user_id = $1 AND a.device_id = $3 AND a.seq = i.seq) \
                     ORDER BY i.seq LIMIT $5"
                ),
                &[&user, &after, &device, &now_ms, &limit],
            )?
            .iter()
            .map(to_row)
            .collect())
        })
        .await
    }

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.run(move |c| {
            Ok(c.query_opt(
                "SELECT seq FROM cursors WHERE user_id = $1 AND device_id = $2",
                &[&user, &device],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
        })
        .await
    }

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let (user, id) = (user_id.to_owned(), notification_id.to_owned());
        self.run(move |c| {
            Ok(c.query_opt(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND notification_id = $2"
                ),
                &[&user, &id],
            )?
            .map(|r| to_row(&r)))
        })
        .await
    }
}

#[async_trait]
impl DirectoryReader for PostgresProjection {
    async fn expanded(&self, ids: &[String]) -> Result<Vec<String>, ProjectionError> {
        let ids = ids.to_vec();
        self.run(move |c| {
            Ok(c.query(
                "SELECT notification_id FROM expansions WHERE notification_id = ANY($1)",
                &[&ids],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
        .await
    }

    async fn resolve(&self, recipients: &Recipients) -> Result<Vec<String>, ProjectionError> {
        let r = recipients.clone();
        self.run(move |c| {
            let mut users: BTreeSet<String> = r.users.iter().cloned().collect();
            for g in &r.groups {
                users.extend(strings(
                    c,
                    "SELECT user_id FROM group_members WHERE group_id = $1",
                    g,
                )?);
            }
            if let Some(t) = &r.topic {
                for u in strings(
                    c,
                    "SELECT user_id FROM topic_subscribers WHERE topic = $1",
                    t,
                )? {
                    if topic_allowed(c, &u, t)? {
                        users.insert(u);
                    }
                }
            }
            if r.everyone {
                users.extend(
                    c.query("SELECT user_id FROM users", &[])?
                        .iter()
                        .map(|r| r.get::<_, String>(0)),
                );
            }
            Ok(users.into_iter().collect())
        })
        .await
    }

    async fn expansion_of(&self, notification_id: &str) -> Result<Vec<String>, ProjectionError> {
        let id = notification_id.to_owned();
        self.run(move |c| {
            strings(
                c,
                "SELECT user_id FROM expansion_users WHERE notification_id = $1 ORDER BY user_id",
                &id,
            )
        })
        .await
    }
}

#[async_trait]
impl TimerQueries for PostgresProjection {
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        self.run(move |c| {
            Ok(c.query(
                "SELECT notification_id, request FROM scheduled WHERE due_at <= $1 ORDER BY due_at, notification_id LIMIT $2",
                &[&now_ms, &(limit as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
        .await
    }

    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.run(move |c| {
            Ok(c.query(
                "SELECT user_id, notification_id FROM inbox WHERE expires_at IS NOT NULL AND expires_at <= $1 \
                 AND NOT expired AND NOT archived AND NOT superseded ORDER BY expires_at LIMIT $2",
                &[&now_ms, &(limit as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
        .await
    }
}

#[async_trait]
impl Snapshots for PostgresProjection {
    async fn snapshot(&self) -> Result<ProjectionSnapshot, ProjectionError> {
        self.run(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .start()?;
            let s = dump(&mut tx)?;
            tx.commit()?;
            Ok(s)
        })
        .await
    }
}

/// Everything, in canonical form (called inside one repeatable-read transaction).
fn dump(c: &mut impl GenericClient) -> Result<ProjectionSnapshot, postgres::Error> {
    let mut s = ProjectionSnapshot::default();
    for r in c.query(&format!("SELECT {ROW_COLUMNS} FROM inbox"), &[])? {
        let row = to_row(&r);
        s.rows.insert((row.user_id.clone(), row.seq), row);
    }
    for r in c.query("SELECT user_id, n FROM unread", &[])? {
        s.unread.insert(r.get(0), r.get::<_, i64>(1) as u64);
    }
    for r in c.query("SELECT user_id, device_id, seq FROM acks", &[])? {
        s.acks
            .insert((r.get(0), r.get(1), r.get::<_, i64>(2) as u64));
    }
    for r in c.query("SELECT user_id, device_id, seq FROM cursors", &[])? {
        s.cursors
            .insert((r.get(0), r.get(1)), r.get::<_, i64>(2) as u64);
    }
    for r in c.query("SELECT user_id, device_id, seq, at FROM delivered", &[])? {
        s.delivered
            .insert((r.get(0), r.get(1), r.get::<_, i64>(2) as u64), r.get(3));
    }
    for r in c.query("SELECT user_id, roles FROM users", &[])? {
        s.users.insert(
            r.get(0),
            serde_json::from_str(&r.get::<_, String>(1)).unwrap_or_default(),
        );
    }
    for r in c.query("SELECT group_id, user_id FROM group_members", &[])? {
        s.groups.insert((r.get(0), r.get(1)));
    }
    for r in c.query("SELECT topic, user_id FROM topic_subscribers", &[])? {
        s.topics.insert((r.get(0), r.get(1)));
    }
    for r in c.query("SELECT role, topics FROM roles", &[])? {
        s.roles.insert(
            r.get(0),
            serde_json::from_str(&r.get::<_, String>(1)).unwrap_or_default(),
        );
    }
    Ok(s)
}
