//! [`AppliedOffsets`] and [`ProjectionWriter`]: the projector's writes, each batch run by the
//! shared loop of `herald_ports::transactional` in one transaction that also locks and stores
//! the stage's offsets.

use std::collections::BTreeMap;

use async_trait::async_trait;
use herald_core::model::{DirectoryChange, RoleDefinition, UserEvent};
use herald_ports::projection::{
    AppliedOffsets, Positioned, ProjectionError, ProjectionWriter, Stage, group_generation_key,
};
use herald_ports::transactional;

use crate::PostgresProjection;

#[async_trait]
impl AppliedOffsets for PostgresProjection {
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError> {
        self.run(move |c| {
            Ok(c.query(
                "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1",
                &[&stage.name()],
            )?
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
            .collect())
        })
        .await
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    async fn group_generation(&self, stage: Stage) -> Result<u64, ProjectionError> {
        self.run(move |c| {
            Ok(c.query_opt(
                "SELECT value::bigint FROM herald_meta WHERE key = $1",
                &[&group_generation_key(stage)],
            )?
            .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
        })
        .await
    }

    async fn advance_group_generation(
        &self,
        stage: Stage,
        seen: u64,
    ) -> Result<u64, ProjectionError> {
        let next = seen.saturating_add(1).min(i64::MAX as u64) as i64;
        self.run(move |c| {
            let row = c.query_one(
                "INSERT INTO herald_meta (key, value) VALUES ($1, $2::bigint::text) \
                 ON CONFLICT (key) DO UPDATE \
                 SET value = GREATEST(herald_meta.value::bigint, EXCLUDED.value::bigint)::text \
                 RETURNING value::bigint",
                &[&group_generation_key(stage), &next],
            )?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
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
