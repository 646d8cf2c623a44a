//! [`DirectoryReader`]: what the fanout reads, the directory (resolved by
//! `herald_core::recipients`, with RBAC on topic subscribers) and its bookkeeping of expanded
//! requests.

use async_trait::async_trait;
use herald_core::model::{Preferences, Recipients};
use herald_core::recipients::{self, DirectoryState};
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
        self.read(move |c| recipients::resolve(&mut Directory(c), &r))
            .await
    }

    async fn expansion_of(&self, notification_id: &str) -> Result<Vec<String>, ProjectionError> {
        let id = notification_id.to_owned();
        let inline = self.inner.inline_expansions;
        self.read(move |c| {
            // Inline (a small expansion) and in the table (a large one, a repeat, or a row
            // from before the column): the union, sorted.
            let mut users = std::collections::BTreeSet::new();
            if inline {
                let list: Option<String> = c
                    .prepare_cached("SELECT users FROM expansions WHERE notification_id = ?1")?
                    .query_row([&id], |r| r.get(0))
                    .optional()?
                    .flatten();
                if let Some(list) = list {
                    // Not lenient: a list that does not parse is damage, not an empty expansion.
                    let list: Vec<String> = serde_json::from_str(&list).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?;
                    users.extend(list);
                }
            }
            users.extend(collect_strings(
                c,
                "SELECT user_id FROM expansion_users WHERE notification_id = ?1",
                &id,
            )?);
            Ok(users.into_iter().collect())
        })
        .await
    }

    async fn preferences_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Preferences)>, ProjectionError> {
        let users = user_ids.to_vec();
        let docs = self
            .read(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT doc FROM preferences WHERE user_id = ?1")?;
                let mut out = Vec::new();
                for user in users {
                    if let Some(doc) = stmt
                        .query_row([&user], |r| r.get::<_, String>(0))
                        .optional()?
                    {
                        out.push((user, doc));
                    }
                }
                Ok(out)
            })
            .await?;
        docs.into_iter()
            .map(|(user, doc)| Ok((user, super::parse_preferences(&doc)?)))
            .collect()
    }
}

/// The directory on a SQLite connection, as recipient resolution reads it.
struct Directory<'a>(&'a Connection);

impl DirectoryState for Directory<'_> {
    type Error = rusqlite::Error;

    fn group_members(&mut self, group: &str) -> rusqlite::Result<Vec<String>> {
        collect_strings(
            self.0,
            "SELECT user_id FROM group_members WHERE group_id = ?1",
            group,
        )
    }

    fn topic_subscribers(&mut self, topic: &str) -> rusqlite::Result<Vec<String>> {
        collect_strings(
            self.0,
            "SELECT user_id FROM topic_subscribers WHERE topic = ?1",
            topic,
        )
    }

    fn user_roles(&mut self, user_id: &str) -> rusqlite::Result<Vec<String>> {
        json_list(
            self.0,
            "SELECT roles FROM users WHERE user_id = ?1",
            user_id,
        )
    }

    fn role_topics(&mut self, role: &str) -> rusqlite::Result<Vec<String>> {
        json_list(self.0, "SELECT topics FROM roles WHERE role = ?1", role)
    }

    fn all_users(&mut self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.0.prepare_cached("SELECT user_id FROM users")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    }
}

/// The JSON list of strings in the one column of the row `sql` finds for `arg`; empty when there
/// is no such row (or its JSON is not a list of strings).
fn json_list(conn: &Connection, sql: &str, arg: &str) -> rusqlite::Result<Vec<String>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row([arg], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default())
}

fn collect_strings(conn: &Connection, sql: &str, arg: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([arg], |r| r.get(0))?;
    rows.collect()
}
