//! The inbox stage: per-user events folded into the projection.

use std::collections::BTreeMap;

use herald_ports::log::{EventLog, StoredRecord};
use herald_ports::projection::{ProjectionStore, Stage};

use crate::{
    MAX_APPLY_EVENTS, Projector, ProjectorError, next_offsets, offsets_vec, user_events_of,
};

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// Folds a batch of per-user events into the projection.
    #[tracing::instrument(level = "debug", skip_all, fields(records = records.len()))]
    pub async fn inbox_batch(&self, records: &[StoredRecord]) -> Result<(), ProjectorError> {
        let mut events = Vec::new();
        let mut offsets = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            match user_events_of(r) {
                // One event, or one per recipient of a notification added for several users,
                // all at the record's offset.
                Ok(Some(user_events)) => events.extend(user_events),
                Ok(None) => {
                    self.dead_letter(Stage::Inbox, r, "a request record on the user-events topic")
                        .await?
                }
                Err(e) => self.dead_letter(Stage::Inbox, r, &e.to_string()).await?,
            }
            // At most about MAX_APPLY_EVENTS events per store call, each call with the
            // offsets of the records it covers (and the last one even without events).
            if events.len() >= MAX_APPLY_EVENTS || i + 1 == records.len() {
                next_offsets(&records[..=i], &mut offsets);
                self.store
                    .apply_user_events(Stage::Inbox, &events, &offsets_vec(&offsets))
                    .await?;
                events.clear();
            }
        }
        Ok(())
    }
}
