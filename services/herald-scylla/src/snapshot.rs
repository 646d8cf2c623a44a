//! [`Snapshots`]: the whole projection in canonical form, by table scans (for `herald replay`
//! and tests), and the consumer offsets it covers.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::mem::ProjectionSnapshot;
use herald_ports::projection::{ProjectionError, Snapshots};

use crate::ScyllaProjection;
use crate::layout::{ROW_COLUMNS, RowTuple, to_row};

impl ScyllaProjection {
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
        for (u, doc) in self
            .scan::<(String, Option<String>)>(&format!("SELECT user_id, doc FROM {ks}.preferences"))
            .await?
        {
            if let Some(doc) = doc {
                s.preferences
                    .insert(u, serde_json::from_str(&doc).unwrap_or_default());
            }
        }
        Ok(s)
    }
}
