//! [`Snapshots`]: the whole projection in canonical form, read in one transaction (for
//! `herald replay` and tests).

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::mem::ProjectionSnapshot;
use herald_ports::projection::{ProjectionError, Snapshots};
use rusqlite::Connection;

use super::{EmbeddedProjection, ROW_COLUMNS, to_row};

impl EmbeddedProjection {
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
    let mut stmt = conn.prepare("SELECT user_id, doc FROM preferences")?;
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (user, doc) = r?;
        s.preferences
            .insert(user, serde_json::from_str(&doc).unwrap_or_default());
    }
    Ok(s)
}
