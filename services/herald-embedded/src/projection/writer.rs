//! [`AppliedOffsets`] and [`ProjectionWriter`]: the projector's writes, each batch in one write
//! transaction that also stores the stage's offsets.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::model::{DirectoryChange, RoleDefinition, UserEvent};
use herald_core::projection;
use herald_ports::projection::{
    AppliedOffsets, Positioned, ProjectionError, ProjectionWriter, Stage,
};
use rusqlite::params;

use super::EmbeddedProjection;
use super::state::{TxState, apply_directory_write, offsets_of, store_offsets};

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
