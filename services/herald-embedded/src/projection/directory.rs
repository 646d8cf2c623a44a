//! [`DirectoryReader`]: what the fanout reads, the directory (with RBAC on topic subscribers)
//! and its bookkeeping of expanded requests.

use std::collections::BTreeSet;

use async_trait::async_trait;
use herald_core::model::{Recipients, RoleDefinition};
use herald_ports::projection::{DirectoryReader, ProjectionError};
use rusqlite::{Connection, OptionalExtension};

use super::EmbeddedProjection;

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
