//! [`Snapshots`]: the whole projection in canonical form, read in one repeatable-read
//! transaction (for `herald replay` and tests).

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::mem::ProjectionSnapshot;
use herald_ports::projection::{ProjectionError, Snapshots};
use postgres::GenericClient;

use crate::{PostgresProjection, ROW_COLUMNS, to_row};

impl PostgresProjection {
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
    for r in c.query("SELECT user_id, doc FROM preferences", &[])? {
        s.preferences.insert(
            r.get(0),
            serde_json::from_str(&r.get::<_, String>(1)).unwrap_or_default(),
        );
    }
    Ok(s)
}
