//! [`DirectoryReader`]: what the fanout reads. Member sets are read shard by shard concurrently;
//! topic subscribers are filtered by RBAC.

use std::collections::BTreeSet;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt, stream};
use herald_core::model::{Recipients, RoleDefinition};
use herald_ports::projection::{DirectoryReader, ProjectionError};
use scylla::statement::prepared::PreparedStatement;

use crate::{FETCH_CONCURRENCY, MEMBER_SHARDS, ScyllaProjection};

impl ScyllaProjection {
    /// The users of a sharded member set (a group's, a topic's, an expansion's).
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

    async fn preferences_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, herald_core::model::Preferences)>, ProjectionError> {
        let found: Vec<Option<(String, String)>> = stream::iter(user_ids.to_vec())
            .map(|user| async move {
                let doc: Option<(Option<String>,)> =
                    self.one(&self.st.preferences_of, (user.as_str(),)).await?;
                Ok::<_, ProjectionError>(doc.and_then(|(d,)| d).map(|d| (user, d)))
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        found
            .into_iter()
            .flatten()
            .map(|(user, doc)| Ok((user, crate::layout::parse_preferences(&doc)?)))
            .collect()
    }
}
