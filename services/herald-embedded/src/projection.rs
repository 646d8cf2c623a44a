//! The embedded projection store: SQLite, the core fold applied inside one transaction per
//! batch together with the consumer offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_core::mem::ProjectionSnapshot;
use herald_core::model::{DirectoryChange, Priority, Recipients, RoleDefinition, UserEvent};
use herald_core::projection::{self, DirectoryWrite, InboxRow, ProjectionState, Write};
use herald_ports::projection::*;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::sqlite::{self, Access, Pool};

const SCHEMA: &str = include_str!("../../../schemas/sql/sqlite/001_projection.sql");

const ROW_COLUMNS: &str = "user_id, seq, notification_id, event_type, source, payload, priority, \
     collapse_key, created_at, deliver_at, expires_at, read, archived, expired, superseded";

fn storage(e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Storage(e.to_string())
}

fn to_row(r: &Row<'_>) -> rusqlite::Result<InboxRow> {
    let priority: String = r.get(6)?;
    Ok(InboxRow {
        user_id: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        notification_id: r.get(2)?,
        event_type: r.get(3)?,
        source: r.get(4)?,
        payload: r.get(5)?,
        priority: priority.parse().unwrap_or(Priority::Normal),
        collapse_key: r.get(7)?,
        created_at: r.get(8)?,
        deliver_at: r.get(9)?,
        expires_at: r.get(10)?,
        read: r.get(11)?,
        archived: r.get(12)?,
        expired: r.get(13)?,
        superseded: r.get(14)?,
    })
}

/// The fold's view of a SQLite transaction.
struct TxState<'a, 'c> {
    tx: &'a Transaction<'c>,
}

impl ProjectionState for TxState<'_, '_> {
    type Error = rusqlite::Error;

    fn row(&mut self, user_id: &str, notification_id: &str) -> rusqlite::Result<Option<InboxRow>> {
        self.tx
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND notification_id = ?2"
            ))?
            .query_row(params![user_id, notification_id], to_row)
            .optional()
    }

    fn collapse_holder(&mut self, user_id: &str, key: &str) -> rusqlite::Result<Option<InboxRow>> {
        self.tx
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND collapse_key = ?2 \
                 AND archived = 0 AND expired = 0 AND superseded = 0 ORDER BY seq DESC LIMIT 1"
            ))?
            .query_row(params![user_id, key], to_row)
            .optional()
    }

    fn unread_up_to(&mut self, user_id: &str, up_to: u64) -> rusqlite::Result<Vec<InboxRow>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND read = 0 AND seq <= ?2 ORDER BY seq"
        ))?;
        let rows = stmt.query_map(params![user_id, up_to.min(i64::MAX as u64) as i64], to_row)?;
        rows.collect()
    }

    fn unread_count(&mut self, user_id: &str) -> rusqlite::Result<u64> {
        Ok(self
            .tx
            .prepare_cached("SELECT n FROM unread WHERE user_id = ?1")?
            .query_row([user_id], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }

    fn device_cursor(&mut self, user_id: &str, device_id: &str) -> rusqlite::Result<Option<u64>> {
        Ok(self
            .tx
            .prepare_cached("SELECT seq FROM cursors WHERE user_id = ?1 AND device_id = ?2")?
            .query_row([user_id, device_id], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
    }

    fn write(&mut self, write: Write) -> rusqlite::Result<()> {
        match write {
            Write::PutRow(r) => {
                self.tx
                    .prepare_cached(&format!(
                        "INSERT OR REPLACE INTO inbox ({ROW_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                    ))?
                    .execute(params![
                        r.user_id,
                        r.seq as i64,
                        r.notification_id,
                        r.event_type,
                        r.source,
                        r.payload,
                        r.priority.as_str(),
                        r.collapse_key,
                        r.created_at,
                        r.deliver_at,
                        r.expires_at,
                        r.read,
                        r.archived,
                        r.expired,
                        r.superseded
                    ])?;
            }
            Write::SetUnreadCount { user_id, count } => {
                self.tx
                    .prepare_cached("INSERT OR REPLACE INTO unread (user_id, n) VALUES (?1, ?2)")?
                    .execute(params![user_id, count as i64])?;
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => {
                self.tx
                    .prepare_cached("INSERT OR IGNORE INTO acks VALUES (?1, ?2, ?3)")?
                    .execute(params![user_id, device_id, seq as i64])?;
            }
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO cursors VALUES (?1, ?2, ?3) ON CONFLICT (user_id, device_id) \
                         DO UPDATE SET seq = max(seq, excluded.seq)",
                    )?
                    .execute(params![user_id, device_id, seq as i64])?;
            }
            Write::MarkDelivered {
                user_id,
                device_id,
                seq,
                at,
            } => {
                self.tx
                    .prepare_cached("INSERT OR IGNORE INTO delivered VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![user_id, device_id, seq as i64, at])?;
            }
            Write::KnowUser { user_id } => know_user(self.tx, &user_id)?,
        }
        Ok(())
    }
}

fn know_user(tx: &Transaction<'_>, user_id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO users (user_id, roles) VALUES (?1, '[]')")?
        .execute([user_id])?;
    Ok(())
}

/// Stores offsets; a stored offset never moves backwards.
fn store_offsets(
    tx: &Transaction<'_>,
    consumer: &str,
    offsets: &[(u32, u64)],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO consumer_offsets VALUES (?1, ?2, ?3) ON CONFLICT (consumer, partition) \
         DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
    )?;
    for (p, o) in offsets {
        stmt.execute(params![consumer, p, *o as i64])?;
    }
    Ok(())
}

fn apply_directory_write(tx: &Transaction<'_>, w: DirectoryWrite) -> rusqlite::Result<()> {
    match w {
        DirectoryWrite::UpsertUser { user_id, roles } => {
            let roles = serde_json::to_string(&roles).expect("strings serialize");
            tx.prepare_cached("INSERT OR REPLACE INTO users (user_id, roles) VALUES (?1, ?2)")?
                .execute(params![user_id, roles])?;
        }
        DirectoryWrite::KnowUser { user_id } => know_user(tx, &user_id)?,
        DirectoryWrite::AddMember { group, user_id } => {
            tx.prepare_cached("INSERT OR IGNORE INTO group_members VALUES (?1, ?2)")?
                .execute(params![group, user_id])?;
        }
        DirectoryWrite::RemoveMember { group, user_id } => {
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
                .execute(params![group, user_id])?;
        }
        DirectoryWrite::Subscribe { topic, user_id } => {
            tx.prepare_cached("INSERT OR IGNORE INTO topic_subscribers VALUES (?1, ?2)")?
                .execute(params![topic, user_id])?;
        }
        DirectoryWrite::Unsubscribe { topic, user_id } => {
            tx.prepare_cached("DELETE FROM topic_subscribers WHERE topic = ?1 AND user_id = ?2")?
                .execute(params![topic, user_id])?;
        }
        DirectoryWrite::DefineRole { role, topics } => {
            let topics = serde_json::to_string(&topics).expect("strings serialize");
            tx.prepare_cached("INSERT OR REPLACE INTO roles (role, topics) VALUES (?1, ?2)")?
                .execute(params![role, topics])?;
        }
    }
    Ok(())
}

struct Inner {
    access: Access,
    /// The one writer connection (SQLite has one writer at a time anyway).
    writer: Option<Mutex<Connection>>,
    pool: Pool,
}

/// The embedded projection store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedProjection {
    inner: Arc<Inner>,
}

impl EmbeddedProjection {
    pub async fn open(path: &Path, access: Access) -> Result<Self, ProjectionError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, access))
            .await
            .map_err(storage)?
    }

    fn open_blocking(path: PathBuf, access: Access) -> Result<Self, ProjectionError> {
        if access == Access::ReadOnly && !path.exists() {
            return Err(ProjectionError::Config(format!(
                "no projection at {}: check --data-dir",
                path.display()
            )));
        }
        let bad = |e: rusqlite::Error| {
            ProjectionError::Corrupt(format!(
                "{} is not a Herald projection (or is corrupt): {e}",
                path.display()
            ))
        };
        let conn = sqlite::open(&path, access).map_err(bad)?;
        let writer = if access == Access::ReadWrite {
            conn.execute_batch(SCHEMA).map_err(bad)?;
            Some(Mutex::new(conn))
        } else {
            conn.query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get::<_, String>(0)
            })
            .map_err(bad)?;
            None
        };
        Ok(EmbeddedProjection {
            inner: Arc::new(Inner {
                pool: Pool::new(path, access),
                access,
                writer,
            }),
        })
    }

    /// Runs `f` in one write transaction on a blocking thread.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        if self.inner.access == Access::ReadOnly {
            return Err(ProjectionError::Config(
                "the projection is open read-only".into(),
            ));
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let writer = inner.writer.as_ref().expect("read-write has a writer");
            let mut conn = writer.lock().expect("writer lock");
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok::<T, rusqlite::Error>(out)
        })
        .await
        .map_err(storage)?
        .map_err(storage)
    }

    /// Runs `f` with a reader connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.pool.with(f))
            .await
            .map_err(storage)?
            .map_err(storage)
    }

    /// A consistent snapshot *and* the offsets of every consumer it covers, read in one
    /// transaction (used by `herald replay` to compare against a live store that keeps moving).
    pub async fn snapshot_with_offsets(
        &self,
    ) -> Result<(ProjectionSnapshot, BTreeMap<String, BTreeMap<u32, u64>>), ProjectionError> {
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let mut offsets: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
            {
                let mut stmt =
                    tx.prepare("SELECT consumer, partition, next_offset FROM consumer_offsets")?;
                for r in stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })? {
                    let (c, p, o) = r?;
                    offsets.entry(c).or_default().insert(p, o);
                }
            }
            let snap = dump(&tx)?;
            tx.commit()?;
            Ok((snap, offsets))
        })
        .await
    }
}

fn offsets_of(conn: &Connection, consumer: &str) -> rusqlite::Result<BTreeMap<u32, u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = ?1",
    )?;
    let rows = stmt.query_map([consumer], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

fn dump(conn: &Connection) -> rusqlite::Result<ProjectionSnapshot> {
    let mut s = ProjectionSnapshot::default();
    let mut stmt = conn.prepare(&format!("SELECT {ROW_COLUMNS} FROM inbox"))?;
    for row in stmt.query_map([], to_row)? {
        let row = row?;
        s.rows.insert((row.user_id.clone(), row.seq), row);
    }
    let mut stmt = conn.prepare("SELECT user_id, n FROM unread")?;
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (u, n) = r?;
        s.unread.insert(u, n as u64);
    }
    let mut stmt = conn.prepare("SELECT user_id, device_id, seq FROM acks")?;
    for r in stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })? {
        s.acks.insert(r?);
    }
    let mut stmt = conn.prepare("SELECT user_id, device_id, seq FROM cursors")?;
    for r in stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })? {
        let (u, d, seq) = r?;
        s.cursors.insert((u, d), seq);
    }
    let mut stmt = conn.prepare("SELECT user_id, device_id, seq, at FROM delivered")?;
    for r in stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)?,
        ))
    })? {
        let (u, d, seq, at) = r?;
        s.delivered.insert((u, d, seq), at);
    }
    let mut stmt = conn.prepare("SELECT user_id, roles FROM users")?;
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (u, roles) = r?;
        s.users
            .insert(u, serde_json::from_str(&roles).unwrap_or_default());
    }
    let mut stmt = conn.prepare("SELECT group_id, user_id FROM group_members")?;
    for r in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        s.groups.insert(r?);
    }
    let mut stmt = conn.prepare("SELECT topic, user_id FROM topic_subscribers")?;
    for r in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        s.topics.insert(r?);
    }
    let mut stmt = conn.prepare("SELECT role, topics FROM roles")?;
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (role, topics) = r?;
        s.roles
            .insert(role, serde_json::from_str(&topics).unwrap_or_default());
    }
    Ok(s)
}

/// RBAC: whether `user` may receive `topic` (no roles: yes; else one of the roles lists it).
fn topic_allowed(conn: &Connection, user: &str, topic: &str) -> rusqlite::Result<bool> {
    let roles: Vec<String> = conn
        .prepare_cached("SELECT roles FROM users WHERE user_id = ?1")?
        .query_row([user], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default();
    if roles.is_empty() {
        return Ok(true);
    }
    let mut stmt = conn.prepare_cached("SELECT topics FROM roles WHERE role = ?1")?;
    for role in roles {
        let topics: Option<String> = stmt.query_row([&role], |r| r.get(0)).optional()?;
        let topics: Vec<String> = topics
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        if RoleDefinition::allows(&topics, topic) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn collect_strings(conn: &Connection, sql: &str, arg: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([arg], |r| r.get(0))?;
    rows.collect()
}

#[async_trait]
impl AppliedOffsets for EmbeddedProjection {
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError> {
        let consumer = stage.name();
        let consumer = consumer.to_owned();
        self.read(move |c| offsets_of(c, &consumer)).await
    }
}

#[async_trait]
impl ProjectionWriter for EmbeddedProjection {
    async fn apply_user_events(
        &self,
        stage: Stage,
        events: &[Positioned<UserEvent>],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let (consumer, events, offsets) = (consumer.to_owned(), events.to_vec(), offsets.to_vec());
        self.write(move |tx| {
            // Skip what the stored offsets already cover (the write transaction holds SQLite's
            // one write lock): a stale batch never re-applies old events over newer ones.
            let applied = offsets_of(tx, &consumer)?;
            let mut state = TxState { tx };
            for e in &events {
                if e.covered_by(&applied) {
                    continue;
                }
                projection::apply(&mut state, e.offset, &e.event)?;
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
                tx.prepare_cached("INSERT OR REPLACE INTO expansions VALUES (?1, ?2)")?
                    .execute(params![id, users.len() as i64])?;
                tx.prepare_cached("DELETE FROM scheduled WHERE notification_id = ?1")?
                    .execute([id])?;
                let mut stmt =
                    tx.prepare_cached("INSERT OR IGNORE INTO expansion_users VALUES (?1, ?2)")?;
                for u in users {
                    stmt.execute(params![id, u])?;
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
                // An id already expanded is never scheduled again.
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO scheduled SELECT ?1, ?2, ?3 \
                     WHERE NOT EXISTS (SELECT 1 FROM expansions WHERE notification_id = ?1)",
                )?
                .execute(params![id, due, request])?;
            }
            store_offsets(tx, &consumer, &offsets)
        })
        .await
    }
}

#[async_trait]
impl InboxReader for EmbeddedProjection {
    async fn inbox(&self, user_id: &str, q: &InboxQuery) -> Result<Vec<InboxRow>, ProjectionError> {
        let (user, q) = (user_id.to_owned(), q.clone());
        self.read(move |c| {
            let filter = match q.filter {
                InboxFilter::Inbox => "archived = 0",
                InboxFilter::Unread => "archived = 0 AND read = 0",
                InboxFilter::Archived => "archived = 1",
            };
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND seq < ?2 AND {filter} \
                 AND expired = 0 AND superseded = 0 \
                 AND (deliver_at IS NULL OR deliver_at <= ?3) AND (expires_at IS NULL OR expires_at > ?3) \
                 ORDER BY seq DESC LIMIT ?4"
            ))?;
            let before = q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let limit = q.limit.min(MAX_PAGE) as i64;
            let rows = stmt.query_map(params![user, before, q.now_ms, limit], to_row)?;
            rows.collect()
        })
        .await
    }

    async fn unread_count(&self, user_id: &str) -> Result<u64, ProjectionError> {
        let user = user_id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT n FROM unread WHERE user_id = ?1")?
                .query_row([user], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64)
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
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox i WHERE i.user_id = ?1 \
                 AND i.seq > max(?2, coalesce((SELECT seq FROM cursors WHERE user_id = ?1 AND device_id = ?3), -1)) \
                 AND i.archived = 0 AND i.expired = 0 AND i.superseded = 0 \
                 AND (i.deliver_at IS NULL OR i.deliver_at <= ?4) AND (i.expires_at IS NULL OR i.expires_at > ?4) \
                 AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.user_id = ?1 AND a.device_id = ?3 AND a.seq = i.seq) \
                 ORDER BY i.seq LIMIT ?5"
            ))?;
            let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
            let limit = limit.min(MAX_PAGE * 10) as i64;
            let rows = stmt.query_map(params![user, after, device, now_ms, limit], to_row)?;
            rows.collect()
        })
        .await
    }

    async fn device_cursor(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, ProjectionError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT seq FROM cursors WHERE user_id = ?1 AND device_id = ?2")?
                    .query_row([user, device], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|s| s as u64),
            )
        })
        .await
    }

    async fn row(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, ProjectionError> {
        let (user, id) = (user_id.to_owned(), notification_id.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND notification_id = ?2"
            ))?
            .query_row([user, id], to_row)
            .optional()
        })
        .await
    }
}

#[async_trait]
impl DirectoryReader for EmbeddedProjection {
    async fn expanded(&self, ids: &[String]) -> Result<Vec<String>, ProjectionError> {
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT 1 FROM expansions WHERE notification_id = ?1")?;
            let mut out = Vec::new();
            for id in ids {
                if stmt.exists([&id])? {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn resolve(&self, recipients: &Recipients) -> Result<Vec<String>, ProjectionError> {
        let r = recipients.clone();
        self.read(move |c| {
            let mut users: BTreeSet<String> = r.users.iter().cloned().collect();
            for g in &r.groups {
                users.extend(collect_strings(
                    c,
                    "SELECT user_id FROM group_members WHERE group_id = ?1",
                    g,
                )?);
            }
            if let Some(t) = &r.topic {
                for u in collect_strings(
                    c,
                    "SELECT user_id FROM topic_subscribers WHERE topic = ?1",
                    t,
                )? {
                    if topic_allowed(c, &u, t)? {
                        users.insert(u);
                    }
                }
            }
            if r.everyone {
                let mut stmt = c.prepare_cached("SELECT user_id FROM users")?;
                for u in stmt.query_map([], |r| r.get::<_, String>(0))? {
                    users.insert(u?);
                }
            }
            Ok(users.into_iter().collect())
        })
        .await
    }

    async fn expansion_of(&self, notification_id: &str) -> Result<Vec<String>, ProjectionError> {
        let id = notification_id.to_owned();
        self.read(move |c| {
            collect_strings(
                c,
                "SELECT user_id FROM expansion_users WHERE notification_id = ?1 ORDER BY user_id",
                &id,
            )
        })
        .await
    }
}

#[async_trait]
impl TimerQueries for EmbeddedProjection {
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProjectionError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT notification_id, request FROM scheduled WHERE due_at <= ?1 ORDER BY due_at, notification_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn expiring(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, notification_id FROM inbox WHERE expires_at IS NOT NULL AND expires_at <= ?1 \
                 AND expired = 0 AND archived = 0 AND superseded = 0 ORDER BY expires_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now_ms, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }
}

#[async_trait]
impl Snapshots for EmbeddedProjection {
    async fn snapshot(&self) -> Result<ProjectionSnapshot, ProjectionError> {
        self.read(|c| {
            let tx = c.transaction()?;
            let s = dump(&tx)?;
            tx.commit()?;
            Ok(s)
        })
        .await
    }
}
