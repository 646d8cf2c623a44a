//! [`AppliedOffsets`] and [`ProjectionWriter`]: the projector's writes, each batch run by the
//! shared loop of `herald_ports::transactional` in one write transaction that also stores the
//! stage's offsets.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::model::{DirectoryChange, RoleDefinition, UserEvent};
use herald_ports::projection::{
    AppliedOffsets, Positioned, ProjectionError, ProjectionWriter, Stage, group_generation_key,
};
use herald_ports::transactional;

use super::EmbeddedProjection;
use super::state::offsets_of;

#[async_trait]
impl AppliedOffsets for EmbeddedProjection {
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError> {
        self.read(move |c| offsets_of(c, stage.name())).await
    }

    fn store_id(&self) -> &str {
        &self.inner.store_id
    }

    async fn group_generation(&self, stage: Stage) -> Result<u64, ProjectionError> {
        self.read(move |c| generation_of(c, stage)).await
    }

    async fn advance_group_generation(
        &self,
        stage: Stage,
        seen: u64,
    ) -> Result<u64, ProjectionError> {
        let next = seen.saturating_add(1).min(i64::MAX as u64) as i64;
        self.write(move |tx| {
            tx.tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE \
                 SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                rusqlite::params![group_generation_key(stage), next],
            )?;
            generation_of(tx.tx, stage)
        })
        .await
    }
}

fn generation_of(c: &rusqlite::Connection, stage: Stage) -> rusqlite::Result<u64> {
    use rusqlite::OptionalExtension;
    let value: Option<i64> = c
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1",
            [group_generation_key(stage)],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.map_or(0, |v| v.max(0) as u64))
}

#[async_trait]
impl ProjectionWriter for EmbeddedProjection {
    async fn apply_user_events(
        &self,
        stage: Stage,
        events: &[Positioned<UserEvent>],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let (events, offsets) = (events.to_vec(), offsets.to_vec());
        self.write(move |tx| transactional::apply_user_events(tx, stage, &events, &offsets))
            .await
    }

    async fn apply_directory(
        &self,
        stage: Stage,
        changes: &[DirectoryChange],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let (changes, offsets) = (changes.to_vec(), offsets.to_vec());
        self.write(move |tx| transactional::apply_directory(tx, stage, &changes, &offsets))
            .await
    }

    async fn define_roles(
        &self,
        stage: Stage,
        roles: &[RoleDefinition],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let (roles, offsets) = (roles.to_vec(), offsets.to_vec());
        self.write(move |tx| transactional::define_roles(tx, stage, &roles, &offsets))
            .await
    }

    async fn record_expansions(
        &self,
        stage: Stage,
        expansions: &[(String, Vec<String>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let (expansions, offsets) = (expansions.to_vec(), offsets.to_vec());
        self.write(move |tx| transactional::record_expansions(tx, stage, &expansions, &offsets))
            .await
    }

    async fn schedule(
        &self,
        stage: Stage,
        requests: &[(String, i64, Vec<u8>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let (requests, offsets) = (requests.to_vec(), offsets.to_vec());
        self.write(move |tx| transactional::schedule(tx, stage, &requests, &offsets))
            .await
    }
}
