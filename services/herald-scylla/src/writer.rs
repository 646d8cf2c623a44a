//! [`AppliedOffsets`] and [`ProjectionWriter`]: the fold over a batch's prefetched facts
//! ([`BatchState`]), its writes flushed per user as logged batches, then the stage's offsets.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt, stream};
use herald_core::batch::{self, BatchState, Fact, Need};
use herald_core::model::{DirectoryChange, RoleDefinition, UserEvent};
use herald_core::projection::{self, InboxRow, Write};
use herald_ports::projection::{
    AppliedOffsets, DirectoryReader, InboxReader, Positioned, ProjectionError, ProjectionWriter,
    Stage, group_generation_key,
};
use scylla::value::CqlValue;

use crate::layout::{big, hour, monotonic_micros, shard, text};
use crate::statements::Stmt;
use crate::{FETCH_CONCURRENCY, ScyllaProjection, WRITE_CONCURRENCY};

impl ScyllaProjection {
    /// Reads one fact the fold needs.
    async fn fetch(&self, need: &Need) -> Result<Fact, ProjectionError> {
        Ok(match need {
            Need::Row {
                user_id,
                notification_id,
            } => Fact::Row(self.row(user_id, notification_id).await?),
            Need::CollapseHolder { user_id, key } => {
                let seq: Option<(i64,)> = self.one(&self.st.collapse_seq, (user_id, key)).await?;
                match seq {
                    Some((seq,)) => Fact::Row(self.row_at(user_id, seq as u64).await?),
                    None => Fact::Row(None),
                }
            }
            Need::Unread { user_id } => {
                let buckets: Vec<(i64,)> = self.all(&self.st.all_buckets, (user_id,)).await?;
                let mut seqs = Vec::new();
                for (b,) in buckets {
                    let s: Vec<(i64,)> = self.all(&self.st.unread_seqs, (user_id, b)).await?;
                    seqs.extend(s.into_iter().map(|(s,)| s as u64));
                }
                let rows: Vec<Option<InboxRow>> = stream::iter(seqs)
                    .map(|seq| self.row_at(user_id, seq))
                    .buffer_unordered(FETCH_CONCURRENCY)
                    .try_collect()
                    .await?;
                Fact::Rows(rows.into_iter().flatten().filter(|r| !r.read).collect())
            }
            Need::UnreadCount { user_id } => {
                let n: Option<(i64,)> = self.one(&self.st.count_of, (user_id,)).await?;
                Fact::Count(n.map_or(0, |(n,)| n.max(0) as u64))
            }
            Need::Cursor { user_id, device_id } => {
                Fact::Cursor(self.device_cursor(user_id, device_id).await?)
            }
        })
    }

    async fn store_offsets(
        &self,
        consumer: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let stmts = offsets
            .iter()
            .map(|&(p, o)| Stmt {
                st: self.st.set_offset.clone(),
                // Stamped with the offset itself: the largest wins, offsets never move back.
                values: vec![
                    text(consumer),
                    Some(CqlValue::Int(p as i32)),
                    big(o),
                    big(o),
                ],
            })
            .collect();
        self.run_batches(vec![stmts]).await
    }
}

#[async_trait]
impl AppliedOffsets for ScyllaProjection {
    async fn consumer_offsets(&self, stage: Stage) -> Result<BTreeMap<u32, u64>, ProjectionError> {
        let consumer = stage.name();
        let rows: Vec<(i32, i64)> = self.all(&self.st.offsets_of, (consumer,)).await?;
        Ok(rows
            .into_iter()
            .map(|(p, o)| (p as u32, o as u64))
            .collect())
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    async fn group_generation(&self, stage: Stage) -> Result<u64, ProjectionError> {
        let value: Option<(String,)> = self
            .one(&self.st.meta_of, (group_generation_key(stage),))
            .await?;
        Ok(value.and_then(|(v,)| v.parse().ok()).unwrap_or(0))
    }

    /// Written with the generation as its timestamp: whatever order replicas write in, the
    /// greatest generation is the one kept.
    async fn advance_group_generation(
        &self,
        stage: Stage,
        seen: u64,
    ) -> Result<u64, ProjectionError> {
        let next = seen.saturating_add(1).min(i64::MAX as u64);
        self.session
            .execute_unpaged(
                &self.st.meta_at,
                (group_generation_key(stage), next.to_string(), next as i64),
            )
            .await
            .map_err(|e| ProjectionError::Storage(format!("advancing a group generation: {e}")))?;
        self.group_generation(stage).await
    }
}

#[async_trait]
impl ProjectionWriter for ScyllaProjection {
    async fn apply_user_events(
        &self,
        stage: Stage,
        events: &[Positioned<UserEvent>],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        // A replica that lost its partitions may still deliver a stale batch: skip what the
        // stored offsets cover (the timestamps make any race here harmless, see the module).
        let applied = self.consumer_offsets(stage).await?;
        let events: Vec<&Positioned<UserEvent>> =
            events.iter().filter(|e| !e.covered_by(&applied)).collect();
        let mut state = BatchState::new();
        let needs = batch::prefetch(events.iter().map(|e| &e.event));
        let facts: Vec<(Need, Fact)> = stream::iter(needs)
            .map(|need| async move {
                let fact = self.fetch(&need).await?;
                Ok::<_, ProjectionError>((need, fact))
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        for (need, fact) in facts {
            state
                .fill(&need, fact)
                .map_err(|e| ProjectionError::Corrupt(e.to_string()))?;
        }
        for e in &events {
            while let Err(need) = state.try_apply(e.offset, &e.event) {
                let fact = self.fetch(&need).await?;
                state
                    .fill(&need, fact)
                    .map_err(|e| ProjectionError::Corrupt(e.to_string()))?;
            }
        }
        // Per user, one group of statements per event, in log order.
        let mut by_user: BTreeMap<String, Vec<(u64, Vec<Stmt>)>> = BTreeMap::new();
        for (offset, w) in state.into_writes() {
            let user = match &w {
                Write::PutRow(r) => r.user_id.clone(),
                Write::SetUnreadCount { user_id, .. }
                | Write::AckSeq { user_id, .. }
                | Write::SetDeviceCursor { user_id, .. }
                | Write::SetPreferences { user_id, .. }
                | Write::KnowUser { user_id } => user_id.clone(),
            };
            let groups = by_user.entry(user).or_default();
            let stmts = self.statements_of(offset, w);
            match groups.last_mut() {
                Some((o, g)) if *o == offset => g.extend(stmts),
                _ => groups.push((offset, stmts)),
            }
        }
        stream::iter(by_user.into_values())
            .map(|groups| self.run_batches(groups.into_iter().map(|(_, g)| g).collect()))
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        self.store_offsets(consumer, offsets).await
    }

    async fn apply_directory(
        &self,
        stage: Stage,
        changes: &[DirectoryChange],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let stmts = changes
            .iter()
            .flat_map(projection::fold_directory)
            .map(|w| vec![self.directory_statements(w)])
            .collect();
        self.run_batches(stmts).await?;
        self.store_offsets(consumer, offsets).await
    }

    async fn define_roles(
        &self,
        stage: Stage,
        roles: &[RoleDefinition],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let stmts = roles
            .iter()
            .map(|r| vec![self.directory_statements(projection::fold_role(r))])
            .collect();
        self.run_batches(stmts).await?;
        self.store_offsets(consumer, offsets).await
    }

    async fn record_expansions(
        &self,
        stage: Stage,
        expansions: &[(String, Vec<String>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        for (id, users) in expansions {
            // Who first, then the marker: "expanded" implies the audit list is complete.
            let who = users
                .iter()
                .map(|u| {
                    vec![Stmt {
                        st: self.st.put_expansion_user.clone(),
                        values: vec![text(id), Some(CqlValue::Int(shard(u))), text(u)],
                    }]
                })
                .collect();
            self.run_batches(who).await?;
            let mut marker = vec![
                Stmt {
                    st: self.st.put_expansion.clone(),
                    values: vec![text(id), big(users.len())],
                },
                Stmt {
                    st: self.st.del_scheduled.clone(),
                    values: vec![text(id)],
                },
            ];
            let due: Option<(i64,)> = self.one(&self.st.scheduled_due, (id,)).await?;
            if let Some((due,)) = due {
                marker.push(Stmt {
                    st: self.st.del_scheduled_at.clone(),
                    values: vec![big(hour(due)), big(due), text(id)],
                });
            }
            self.run_batches(vec![marker]).await?;
        }
        self.store_offsets(consumer, offsets).await
    }

    async fn schedule(
        &self,
        stage: Stage,
        requests: &[(String, i64, Vec<u8>)],
        offsets: &[(u32, u64)],
    ) -> Result<(), ProjectionError> {
        let consumer = stage.name();
        let ids: Vec<String> = requests.iter().map(|(id, ..)| id.clone()).collect();
        let done: BTreeSet<String> = self.expanded(&ids).await?.into_iter().collect();
        let groups = requests
            .iter()
            .filter(|(id, ..)| !done.contains(id))
            .map(|(id, due, request)| {
                vec![
                    Stmt {
                        st: self.st.put_scheduled.clone(),
                        values: vec![text(id), big(*due)],
                    },
                    Stmt {
                        st: self.st.put_scheduled_at.clone(),
                        values: vec![
                            big(hour(*due)),
                            big(*due),
                            text(id),
                            Some(CqlValue::Blob(request.clone())),
                        ],
                    },
                    Stmt {
                        st: self.st.put_schedule_hour.clone(),
                        values: vec![big(hour(*due)), big(monotonic_micros())],
                    },
                ]
            })
            .collect();
        self.run_batches(groups).await?;
        self.store_offsets(consumer, offsets).await
    }
}
