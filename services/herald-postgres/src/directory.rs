//! [`DirectoryReader`]: what the fanout reads, the directory (resolved by
//! `herald_core::recipients`, with RBAC on topic subscribers) and its bookkeeping of expanded
//! requests.

use crate::pool::Prepared;
use async_trait::async_trait;
use herald_core::model::{Preferences, Recipients};
use herald_core::recipients::{self, DirectoryState};
use herald_ports::projection::{DirectoryReader, ProjectionError};

use crate::PostgresProjection;

#[async_trait]
impl DirectoryReader for PostgresProjection {
    async fn expanded(&self, ids: &[String]) -> Result<Vec<String>, ProjectionError> {
        let ids = ids.to_vec();
        self.run_prepared(move |c| {
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
        self.run_prepared(move |c| recipients::resolve(&mut Directory(c), &r))
            .await
    }

    async fn expansion_of(&self, notification_id: &str) -> Result<Vec<String>, ProjectionError> {
        let id = notification_id.to_owned();
        self.run_prepared(move |c| {
            strings(
                c,
                "SELECT user_id FROM expansion_users WHERE notification_id = $1 ORDER BY user_id",
                &id,
            )
        })
        .await
    }

    async fn preferences_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Preferences)>, ProjectionError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let users = user_ids.to_vec();
        let docs: Vec<(String, String)> = self
            .run_prepared(move |c| {
                Ok(c.query(
                    "SELECT user_id, doc FROM preferences WHERE user_id = ANY($1)",
                    &[&users],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
            })
            .await?;
        docs.into_iter()
            .map(|(user, doc)| Ok((user, crate::parse_preferences(&doc)?)))
            .collect()
    }
}

/// The directory on a PostgreSQL connection, as recipient resolution reads it.
struct Directory<'a, 'c>(&'a mut Prepared<'c>);

impl DirectoryState for Directory<'_, '_> {
    type Error = postgres::Error;

    fn group_members(&mut self, group: &str) -> Result<Vec<String>, postgres::Error> {
        strings(
            self.0,
            "SELECT user_id FROM group_members WHERE group_id = $1",
            group,
        )
    }

    fn topic_subscribers(&mut self, topic: &str) -> Result<Vec<String>, postgres::Error> {
        strings(
            self.0,
            "SELECT user_id FROM topic_subscribers WHERE topic = $1",
            topic,
        )
    }

    fn user_roles(&mut self, user_id: &str) -> Result<Vec<String>, postgres::Error> {
        json_list(
            self.0,
            "SELECT roles FROM users WHERE user_id = $1",
            user_id,
        )
    }

    fn role_topics(&mut self, role: &str) -> Result<Vec<String>, postgres::Error> {
        json_list(self.0, "SELECT topics FROM roles WHERE role = $1", role)
    }

    fn all_users(&mut self) -> Result<Vec<String>, postgres::Error> {
        Ok(self
            .0
            .query("SELECT user_id FROM users", &[])?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect())
    }
}

/// The JSON list of strings in the one column of the row `sql` finds for `arg`; empty when there
/// is no such row (or its JSON is not a list of strings).
fn json_list(c: &mut Prepared<'_>, sql: &str, arg: &str) -> Result<Vec<String>, postgres::Error> {
    Ok(c.query_opt(sql, &[&arg])?
        .and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok())
        .unwrap_or_default())
}

fn strings(c: &mut Prepared<'_>, sql: &str, arg: &str) -> Result<Vec<String>, postgres::Error> {
    Ok(c.query(sql, &[&arg])?.iter().map(|r| r.get(0)).collect())
}
