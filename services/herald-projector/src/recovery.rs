//! Recovery of an expansion interrupted before it was recorded: which recipients already have
//! the notification in the log.

use std::collections::HashSet;

use herald_core::codec;
use herald_core::model::{Event, NotificationRequest, UserEvent};
use herald_ports::log::{EventLog, Topic};
use herald_ports::projection::{ProjectionStore, Stage};

use crate::{MAX_BATCH_RECORDS, Projector, ProjectorError};

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// Of the (recipient, notification) pairs of the `recovering` requests among `resolved`,
    /// those whose `NotificationAdded` is already in the log: in the projection (rows) or in
    /// the part of user-events the inbox stage has not applied yet. The applied offsets are
    /// read first, so together the two cover the whole log.
    pub(crate) async fn already_added(
        &self,
        resolved: &[(&NotificationRequest, Vec<String>)],
        recovering: &HashSet<String>,
    ) -> Result<HashSet<(String, String)>, ProjectorError> {
        let mut found = HashSet::new();
        let wanted: Vec<&(&NotificationRequest, Vec<String>)> = resolved
            .iter()
            .filter(|(r, _)| recovering.contains(&r.notification_id))
            .collect();
        if wanted.is_empty() {
            return Ok(found);
        }
        let ids: HashSet<&str> = wanted
            .iter()
            .map(|(r, _)| r.notification_id.as_str())
            .collect();
        let users: HashSet<&str> = wanted
            .iter()
            .flat_map(|(_, us)| us.iter().map(String::as_str))
            .collect();
        let applied = self.store.consumer_offsets(Stage::Inbox).await?;
        for p in 0..self.log.partitions(Topic::UserEvents) {
            let mut at = applied.get(&p).copied().unwrap_or(0);
            let end = self.log.end_offset(Topic::UserEvents, p).await?;
            while at < end {
                let chunk = self
                    .log
                    .read(
                        Topic::UserEvents,
                        p,
                        at,
                        ((end - at) as usize).min(MAX_BATCH_RECORDS),
                    )
                    .await?;
                let Some(last) = chunk.last() else { break };
                at = last.offset + 1;
                // A user's own events are keyed by the user, a notification added for
                // several users by the notification.
                for r in chunk.iter().filter(|r| {
                    users.contains(r.record.key.as_str()) || ids.contains(r.record.key.as_str())
                }) {
                    let events = codec::decode(&r.record.value)
                        .ok()
                        .and_then(Event::into_user_events)
                        .unwrap_or_default();
                    for e in events {
                        if let UserEvent::Added(a) = e
                            && ids.contains(a.notification_id.as_str())
                            && users.contains(a.user_id.as_str())
                        {
                            found.insert((a.user_id, a.notification_id));
                        }
                    }
                }
            }
        }
        for (req, us) in wanted {
            for u in us {
                let key = (u.clone(), req.notification_id.clone());
                if !found.contains(&key) && self.store.row(u, &req.notification_id).await?.is_some()
                {
                    found.insert(key);
                }
            }
        }
        if !found.is_empty() {
            tracing::info!(
                recipients = found.len(),
                "recovery: skipping recipients an interrupted expansion already reached"
            );
        }
        Ok(found)
    }
}
