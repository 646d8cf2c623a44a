//! [`AppliedOffsets`] and [`ProjectionWriter`]: the projector's writes, each batch in one
//! transaction that also locks and stores the stage's offsets.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::model::{DirectoryChange, RoleDefinition, UserEvent};
use herald_core::projection;
use herald_ports::projection::{
    AppliedOffsets, Positioned, ProjectionError, ProjectionWriter, Stage,
};

use crate::PostgresProjection;
use crate::state::{TxState, apply_directory_write, lock_offsets, store_offsets};

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
