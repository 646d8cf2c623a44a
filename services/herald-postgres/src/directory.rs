//! [`DirectoryReader`]: what the fanout reads, the directory (with RBAC on topic subscribers)
//! and its bookkeeping of expanded requests.

use std::collections::BTreeSet;

use async_trait::async_trait;
use herald_core::model::{Recipients, RoleDefinition};
use herald_ports::projection::{DirectoryReader, ProjectionError};
use postgres::Client;

use crate::PostgresProjection;

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
