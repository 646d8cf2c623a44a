//! The batch loop of projection stores with transactions (SQLite, PostgreSQL), written once.
//!
//! Such a store runs each [`ProjectionWriter`] call in one transaction that also stores the
//! stage's offsets, so a batch's writes and the offsets that cover it commit together. The
//! stores differ only in their SQL: each implements [`StageTransaction`] over its transaction,
//! and its `ProjectionWriter` methods run the functions of this module inside one. Nothing here
//! does I/O; it only calls the trait.
//!
//! [`ProjectionWriter`]: crate::projection::ProjectionWriter

use std::collections::BTreeMap;

use herald_core::model::{DirectoryChange, RoleDefinition, UserEvent};
use herald_core::projection::{self, DirectoryWrite, ProjectionState};

use crate::projection::{Positioned, Stage};

/// One write transaction of a projection store: the fold's reads and writes
/// ([`ProjectionState`]), the stage offsets, and the writes that are not the fold's.
pub trait StageTransaction: ProjectionState {
    /// The next offsets `consumer` has applied, by partition, for at least the partitions of
    /// `offsets`. A store that several writers share locks them until the transaction ends.
    fn applied_offsets(
        &mut self,
        consumer: &str,
        offsets: &[(u32, u64)],
    ) -> Result<BTreeMap<u32, u64>, Self::Error>;

    /// Stores `offsets` for `consumer`; a stored offset never moves backwards.
    fn store_offsets(&mut self, consumer: &str, offsets: &[(u32, u64)]) -> Result<(), Self::Error>;

    /// Applies one write of the directory fold.
    fn directory_write(&mut self, write: DirectoryWrite) -> Result<(), Self::Error>;

    /// Records `notification_id` as expanded to `users` and removes it from the schedule.
    fn record_expansion(
        &mut self,
        notification_id: &str,
        users: &[String],
    ) -> Result<(), Self::Error>;

    /// Holds `request` until `due_ms`, unless `notification_id` is expanded already (an id
    /// scheduled twice keeps one entry).
    fn schedule(
        &mut self,
        notification_id: &str,
        due_ms: i64,
        request: &[u8],
    ) -> Result<(), Self::Error>;

    /// Told, before the fold, which events this transaction is about to fold (those its stored
    /// offsets do not cover), so that a store whose every statement is a round trip can read at
    /// once what the fold will ask event by event. Nothing by default.
    fn before_fold(&mut self, _events: &[&Positioned<UserEvent>]) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// `ProjectionWriter::apply_user_events` in transaction `tx`: folds the events its stage's
/// stored offsets do not cover yet, then stores `offsets`.
pub fn apply_user_events<T: StageTransaction>(
    tx: &mut T,
    stage: Stage,
    events: &[Positioned<UserEvent>],
    offsets: &[(u32, u64)],
) -> Result<(), T::Error> {
    // During a rebalance two projector replicas may briefly hold the same partition. Skip what
    // the stored offsets already cover, so a stale batch never re-applies an old event over
    // newer ones (a Read re-applied after an Unread).
    let applied = tx.applied_offsets(stage.name(), offsets)?;
    let mut fold = by_user(events);
    fold.retain(|e| !e.covered_by(&applied));
    tx.before_fold(&fold)?;
    for e in fold {
        projection::apply(tx, e.offset, &e.event)?;
    }
    tx.store_offsets(stage.name(), offsets)
}

/// `events` ordered by user id, each user's in log order. A user's fold reads and writes only
/// that user's rows, count, cursors and preferences (and `users`, where it only adds), so users
/// commute; in this order a store's indexes keyed by user are written leaf after leaf, not a
/// thousand leaves in turn for a batch of a broadcast's events.
fn by_user(events: &[Positioned<UserEvent>]) -> Vec<&Positioned<UserEvent>> {
    let mut ordered: Vec<&Positioned<UserEvent>> = events.iter().collect();
    ordered.sort_by(|a, b| a.event.user_id().cmp(b.event.user_id())); // stable
    ordered
}

/// `ProjectionWriter::apply_directory` in transaction `tx`.
pub fn apply_directory<T: StageTransaction>(
    tx: &mut T,
    stage: Stage,
    changes: &[DirectoryChange],
    offsets: &[(u32, u64)],
) -> Result<(), T::Error> {
    for c in changes {
        for w in projection::fold_directory(c) {
            tx.directory_write(w)?;
        }
    }
    tx.store_offsets(stage.name(), offsets)
}

/// `ProjectionWriter::define_roles` in transaction `tx`.
pub fn define_roles<T: StageTransaction>(
    tx: &mut T,
    stage: Stage,
    roles: &[RoleDefinition],
    offsets: &[(u32, u64)],
) -> Result<(), T::Error> {
    for r in roles {
        tx.directory_write(projection::fold_role(r))?;
    }
    tx.store_offsets(stage.name(), offsets)
}

/// `ProjectionWriter::record_expansions` in transaction `tx`.
pub fn record_expansions<T: StageTransaction>(
    tx: &mut T,
    stage: Stage,
    expansions: &[(String, Vec<String>)],
    offsets: &[(u32, u64)],
) -> Result<(), T::Error> {
    for (id, users) in expansions {
        tx.record_expansion(id, users)?;
    }
    tx.store_offsets(stage.name(), offsets)
}

/// `ProjectionWriter::schedule` in transaction `tx`.
pub fn schedule<T: StageTransaction>(
    tx: &mut T,
    stage: Stage,
    requests: &[(String, i64, Vec<u8>)],
    offsets: &[(u32, u64)],
) -> Result<(), T::Error> {
    for (id, due, request) in requests {
        tx.schedule(id, *due, request)?;
    }
    tx.store_offsets(stage.name(), offsets)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use herald_core::mem::MemProjection;
    use herald_core::model::{NotificationAdded, Priority};
    use herald_core::projection::{InboxRow, Write};

    use super::*;

    /// The reference fold target with stage offsets beside it.
    #[derive(Default)]
    struct MemTx {
        state: MemProjection,
        offsets: BTreeMap<(String, u32), u64>,
    }

    impl ProjectionState for MemTx {
        type Error = Infallible;
        fn row(&mut self, user: &str, id: &str) -> Result<Option<InboxRow>, Infallible> {
            self.state.row(user, id)
        }
        fn collapse_holder(
            &mut self,
            user: &str,
            key: &str,
        ) -> Result<Option<InboxRow>, Infallible> {
            self.state.collapse_holder(user, key)
        }
        fn unread_up_to(&mut self, user: &str, up_to: u64) -> Result<Vec<InboxRow>, Infallible> {
            self.state.unread_up_to(user, up_to)
        }
        fn unread_count(&mut self, user: &str) -> Result<u64, Infallible> {
            self.state.unread_count(user)
        }
        fn device_cursor(&mut self, user: &str, device: &str) -> Result<Option<u64>, Infallible> {
            self.state.device_cursor(user, device)
        }
        fn write(&mut self, write: Write) -> Result<(), Infallible> {
            self.state.write(write)
        }
    }

    impl StageTransaction for MemTx {
        fn applied_offsets(
            &mut self,
            consumer: &str,
            _: &[(u32, u64)],
        ) -> Result<BTreeMap<u32, u64>, Infallible> {
            Ok(self
                .offsets
                .iter()
                .filter(|((c, _), _)| c == consumer)
                .map(|((_, p), o)| (*p, *o))
                .collect())
        }
        fn store_offsets(
            &mut self,
            consumer: &str,
            offsets: &[(u32, u64)],
        ) -> Result<(), Infallible> {
            for &(p, o) in offsets {
                let stored = self.offsets.entry((consumer.to_owned(), p)).or_insert(o);
                *stored = (*stored).max(o);
            }
            Ok(())
        }
        fn directory_write(&mut self, write: DirectoryWrite) -> Result<(), Infallible> {
            self.state.apply_directory(write);
            Ok(())
        }
        fn record_expansion(&mut self, _: &str, _: &[String]) -> Result<(), Infallible> {
            Ok(())
        }
        fn schedule(&mut self, _: &str, _: i64, _: &[u8]) -> Result<(), Infallible> {
            Ok(())
        }
    }

    fn added(partition: u32, offset: u64, id: &str) -> Positioned<UserEvent> {
        added_for("u", partition, offset, id)
    }

    fn added_for(user: &str, partition: u32, offset: u64, id: &str) -> Positioned<UserEvent> {
        Positioned {
            partition,
            offset,
            event: UserEvent::Added(NotificationAdded {
                user_id: user.into(),
                notification_id: id.into(),
                event_type: "t".into(),
                source: "s".into(),
                payload: "{}".into(),
                priority: Priority::Normal,
                collapse_key: None,
                deliver_at: None,
                expires_at: None,
                created_at: 0,
                traceparent: None,
                delivery: herald_core::model::Delivery::Live,
            }),
        }
    }

    #[test]
    fn a_stale_batch_skips_what_the_stored_offsets_cover_and_never_moves_them_back() {
        let mut tx = MemTx::default();
        let batch = [added(0, 0, "a"), added(0, 1, "b")];
        let Ok(()) = apply_user_events(&mut tx, Stage::Inbox, &batch, &[(0, 2)]);
        assert_eq!(tx.state.snapshot.rows.len(), 2);
        // A replica that lost the partition delivers an older batch with a new event in it:
        // only the uncovered event is applied, and the stored offset stays where it was.
        let stale = [added(0, 1, "b-again"), added(0, 2, "c")];
        let Ok(()) = apply_user_events(&mut tx, Stage::Inbox, &stale, &[(0, 1)]);
        let ids: Vec<&str> = (tx.state.snapshot.rows.values())
            .map(|r| r.notification_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(tx.offsets[&("inbox".to_owned(), 0)], 2);
        // Offsets are kept per stage.
        let Ok(applied) = tx.applied_offsets(Stage::Fanout.name(), &[]);
        assert!(applied.is_empty());
    }

    #[test]
    fn a_batch_is_applied_user_by_user_each_in_log_order() {
        // Two users' events interleaved, across two partitions.
        let batch = [
            added_for("zoe", 1, 0, "z0"),
            added_for("amy", 0, 0, "a0"),
            added_for("zoe", 1, 1, "z1"),
            added_for("amy", 0, 1, "a1"),
            added_for("zoe", 1, 2, "z2"),
        ];
        let ids: Vec<&str> = by_user(&batch)
            .into_iter()
            .map(|e| match &e.event {
                UserEvent::Added(a) => a.notification_id.as_str(),
                _ => unreachable!("only Added events here"),
            })
            .collect();
        assert_eq!(ids, ["a0", "a1", "z0", "z1", "z2"]);
    }
}
