//! The fanout stage: requests expanded into per-user events (or scheduled), directory changes
//! and role definitions applied, in log order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use herald_core::codec;
use herald_core::model::{
    AddedRecipient, Delivery, DirectoryChange, Event, MAX_ADDED_RECIPIENTS, NotificationRequest,
    NotificationsAdded, Preferences, RequestRecord, UserEvent,
};
use herald_core::partition::partition_for;
use herald_ports::log::{EventLog, StoredRecord, Topic};
use herald_ports::projection::{MAX_PREFERENCE_LOOKUP, ProjectionError, ProjectionStore, Stage};
use herald_ports::records::{user_event_record, users_added_record};
use herald_ports::telemetry;

use crate::{
    FANOUT_APPEND_BYTES, FANOUT_APPEND_CHUNK, Projector, ProjectorError, next_offsets, now_ms,
    offsets_vec,
};

/// The largest fanout batch whose record is written while the next batch expands. A stage
/// that keeps up takes small batches (about 30 requests at 5k/s), and there the overlap takes
/// one fsync off each request's way; one that is behind takes full batches, and there waiting
/// for the record lets the next batch grow: with every batch pipelined, a burst of batch
/// requests was accepted 9–45% slower (median 22%, 7 pairs; the stage took more of the two
/// cores while the requests came in), with this bound as fast as without pipelining.
pub(crate) const PIPELINE_MAX_RECORDS: usize = 256;

/// An expansion whose user events are durable and whose record (the requests' ids as expanded,
/// with the batch's offsets) is still to be written: the fanout stage writes it while it
/// expands the next batch (`stage`), so a batch waits for one fsync (its user events' append),
/// not two. At most two batches are ever expanded and not recorded (the one whose record is in
/// flight and the next): recovery looks that far past the stored offsets.
pub(crate) struct Unrecorded {
    expansions: Vec<(String, Vec<String>)>,
    offsets: Vec<(u32, u64)>,
    duplicates: usize,
}

impl Unrecorded {
    /// The ids it expanded.
    pub(crate) fn ids(&self) -> HashSet<String> {
        self.expansions.iter().map(|(id, _)| id.clone()).collect()
    }
}

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// Expands a batch of requests and applies directory changes, in log order.
    #[tracing::instrument(level = "debug", skip_all, fields(records = records.len()))]
    pub async fn fanout_batch(
        &self,
        records: &[StoredRecord],
        recover_below: &BTreeMap<u32, u64>,
    ) -> Result<(), ProjectorError> {
        let mut offsets = BTreeMap::new();
        let mut run_requests: Vec<NotificationRequest> = Vec::new();
        // Ids of requests an earlier owner may have expanded without recording it.
        let recovering = Self::recovering(records, recover_below);
        let mut run_directory: Vec<DirectoryChange> = Vec::new();
        for r in records {
            match codec::decode(&r.record.value) {
                Ok(Event::Request(RequestRecord::Notification(n))) => {
                    if !run_directory.is_empty() {
                        self.store
                            .apply_directory(Stage::Fanout, &run_directory, &offsets_vec(&offsets))
                            .await?;
                        run_directory.clear();
                    }
                    match n.validate() {
                        Ok(()) => run_requests.push(*n),
                        Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
                    }
                }
                Ok(Event::Request(RequestRecord::Directory(d))) => {
                    if !run_requests.is_empty() {
                        self.expand(&run_requests, &offsets, &recovering).await?;
                        run_requests.clear();
                    }
                    match d.validate() {
                        Ok(()) => run_directory.push(d),
                        Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
                    }
                }
                Ok(Event::Request(RequestRecord::Role(role))) => {
                    // A role definition stands alone: flush what came before it, in order.
                    if !run_directory.is_empty() {
                        self.store
                            .apply_directory(Stage::Fanout, &run_directory, &offsets_vec(&offsets))
                            .await?;
                        run_directory.clear();
                    }
                    if !run_requests.is_empty() {
                        self.expand(&run_requests, &offsets, &recovering).await?;
                        run_requests.clear();
                    }
                    next_offsets(std::slice::from_ref(r), &mut offsets);
                    match role.validate() {
                        Ok(()) => {
                            self.store
                                .define_roles(Stage::Fanout, &[role], &offsets_vec(&offsets))
                                .await?
                        }
                        Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
                    }
                    continue;
                }
                Ok(Event::User(_) | Event::UsersAdded(_)) => {
                    self.dead_letter(Stage::Fanout, r, "a user event on the requests topic")
                        .await?
                }
                Err(e) => self.dead_letter(Stage::Fanout, r, &e.to_string()).await?,
            }
            next_offsets(std::slice::from_ref(r), &mut offsets);
        }
        if !run_directory.is_empty() {
            self.store
                .apply_directory(Stage::Fanout, &run_directory, &offsets_vec(&offsets))
                .await?;
        }
        if !run_requests.is_empty() || run_directory.is_empty() {
            self.expand(&run_requests, &offsets, &recovering).await?;
        }
        Ok(())
    }

    /// Schedules requests whose `deliver_at` is in the future, expands the others.
    pub(crate) async fn expand(
        &self,
        requests: &[NotificationRequest],
        offsets: &BTreeMap<u32, u64>,
        recovering: &HashSet<String>,
    ) -> Result<(), ProjectorError> {
        let now = now_ms();
        let (later, now_due): (Vec<&NotificationRequest>, Vec<&NotificationRequest>) = requests
            .iter()
            .partition(|r| r.deliver_at.is_some_and(|d| d > now));
        if !later.is_empty() {
            let mut entries = Vec::with_capacity(later.len());
            for r in later {
                let bytes =
                    codec::encode_request(&RequestRecord::Notification(Box::new(r.clone())))?;
                entries.push((
                    r.notification_id.clone(),
                    r.deliver_at.unwrap_or(now),
                    bytes,
                ));
            }
            self.store.schedule(Stage::Fanout, &entries, &[]).await?;
        }
        let now_due: Vec<NotificationRequest> = now_due.into_iter().cloned().collect();
        self.expand_now(&now_due, offsets, recovering).await
    }

    /// Expands requests whose ids are not yet expanded; records them with `offsets`. For the
    /// ids in `recovering`, recipients that already have the notification (an earlier expansion
    /// that crashed before it was recorded) are skipped, so a crash never repeats an expansion.
    pub(crate) async fn expand_now(
        &self,
        requests: &[NotificationRequest],
        offsets: &BTreeMap<u32, u64>,
        recovering: &HashSet<String>,
    ) -> Result<(), ProjectorError> {
        let unrecorded = self
            .expand_unrecorded(requests, offsets, recovering, &HashSet::new())
            .await?;
        self.record(unrecorded).await
    }

    /// Records an expansion whose user events are durable (with its batch's offsets).
    pub(crate) async fn record(&self, unrecorded: Unrecorded) -> Result<(), ProjectorError> {
        self.store
            .record_expansions(Stage::Fanout, &unrecorded.expansions, &unrecorded.offsets)
            .await?;
        telemetry::projector_expanded(unrecorded.expansions.len(), unrecorded.duplicates);
        Ok(())
    }

    /// The requests of a fanout batch the stage can pipeline ([`Unrecorded`]): at most
    /// [`PIPELINE_MAX_RECORDS`] records, every one a valid notification request due now. `None`
    /// for any other batch (a backlog's, a directory change, a role, a request for later, one
    /// to dead-letter), which [`Projector::fanout_batch`] takes whole, in order, after the
    /// record in flight.
    pub(crate) fn pipelinable(records: &[StoredRecord]) -> Option<Vec<NotificationRequest>> {
        if records.len() > PIPELINE_MAX_RECORDS {
            return None;
        }
        let now = now_ms();
        let mut requests = Vec::with_capacity(records.len());
        for r in records {
            match codec::decode(&r.record.value) {
                Ok(Event::Request(RequestRecord::Notification(n)))
                    if n.validate().is_ok() && n.deliver_at.is_none_or(|d| d <= now) =>
                {
                    requests.push(*n)
                }
                _ => return None,
            }
        }
        Some(requests)
    }

    /// The ids of `records` an earlier owner may have expanded without recording them (below
    /// `recover_below`, see `recovery`).
    pub(crate) fn recovering(
        records: &[StoredRecord],
        recover_below: &BTreeMap<u32, u64>,
    ) -> HashSet<String> {
        records
            .iter()
            .filter(|r| {
                recover_below
                    .get(&r.partition)
                    .is_some_and(|b| r.offset < *b)
            })
            .map(|r| r.record.key.clone())
            .collect()
    }

    /// Expands requests whose ids are neither expanded nor in `in_flight` (expanded, their
    /// record not yet written) and appends their user events; the caller records the result.
    #[tracing::instrument(level = "debug", skip_all, fields(requests = requests.len()))]
    pub(crate) async fn expand_unrecorded(
        &self,
        requests: &[NotificationRequest],
        offsets: &BTreeMap<u32, u64>,
        recovering: &HashSet<String>,
        in_flight: &HashSet<String>,
    ) -> Result<Unrecorded, ProjectorError> {
        let ids: Vec<String> = requests
            .iter()
            .filter(|r| !in_flight.contains(&r.notification_id))
            .map(|r| r.notification_id.clone())
            .collect();
        let done: HashSet<String> = self.store.expanded(&ids).await?.into_iter().collect();
        let mut resolved: Vec<(&NotificationRequest, Vec<String>)> = Vec::new();
        for req in requests {
            if done.contains(&req.notification_id) || in_flight.contains(&req.notification_id) {
                continue;
            }
            // Most requests name users only: those need no round trip to the store.
            let users = match req.recipients.only_users() {
                Some(users) => users,
                None => self.store.resolve(&req.recipients).await?,
            };
            resolved.push((req, users));
        }
        let delivered = self.already_added(&resolved, recovering).await?;
        let preferences = self.preferences_of(&resolved).await?;
        let partitions = self.log.partitions(Topic::UserEvents);
        let now = now_ms();
        let mut seen = BTreeSet::new();
        let mut expansions = Vec::new();
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut duplicates = 0;
        duplicates += requests.len() - resolved.len();
        for (req, users) in resolved {
            if !seen.insert(req.notification_id.clone()) {
                duplicates += 1;
                continue;
            }
            // The recipients by partition, in order: one record per partition (and per
            // MAX_ADDED_RECIPIENTS) holds the notification for all of them.
            let mut by_partition: BTreeMap<u32, Vec<AddedRecipient>> = BTreeMap::new();
            for u in &users {
                if delivered.contains(&(u.clone(), req.notification_id.clone())) {
                    continue;
                }
                let delivery = match preferences.get(u) {
                    Some(p) => p.delivery(&req.event_type, req.recipients.topic.as_deref()),
                    None => Delivery::Live,
                };
                by_partition
                    .entry(partition_for(u, partitions))
                    .or_default()
                    .push(AddedRecipient {
                        user_id: u.clone(),
                        delivery,
                    });
            }
            // The content of a several-user record, made once and only if one is written.
            let mut content = None;
            let per_record = if self.single_user_records {
                1
            } else {
                MAX_ADDED_RECIPIENTS
            };
            for (partition, recipients) in by_partition {
                for chunk in recipients.chunks(per_record) {
                    let record = if let [one] = chunk {
                        let mut added = req.added_for(&one.user_id);
                        added.delivery = one.delivery;
                        user_event_record(&UserEvent::Added(added), partitions, now)?
                    } else {
                        let content = content.get_or_insert_with(|| req.added_for(""));
                        let many = NotificationsAdded::of(content, chunk.to_vec());
                        users_added_record(&many, partition, now)?
                    };
                    bytes += record.value.len();
                    records.push(record);
                    if records.len() >= FANOUT_APPEND_CHUNK || bytes >= FANOUT_APPEND_BYTES {
                        self.log
                            .append(Topic::UserEvents, std::mem::take(&mut records))
                            .await?;
                        bytes = 0;
                    }
                }
            }
            tracing::debug!(notification_id = %req.notification_id, recipients = users.len(), "expanded");
            expansions.push((req.notification_id.clone(), users));
        }
        if !records.is_empty() {
            self.log.append(Topic::UserEvents, records).await?;
        }
        // Only now, with the user events durable, may the request be recorded as expanded.
        Ok(Unrecorded {
            expansions,
            offsets: offsets_vec(offsets),
            duplicates,
        })
    }
}

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// The preferences of every recipient in `resolved` who has any, as of the projection now
    /// (a change the inbox stage has not applied yet applies from the next expansion on).
    async fn preferences_of(
        &self,
        resolved: &[(&NotificationRequest, Vec<String>)],
    ) -> Result<HashMap<String, Preferences>, ProjectionError> {
        let users: Vec<String> = resolved
            .iter()
            .flat_map(|(_, users)| users.iter())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let mut out = HashMap::new();
        for chunk in users.chunks(MAX_PREFERENCE_LOOKUP) {
            out.extend(self.store.preferences_of(chunk).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::model::{NotificationRequest, Priority, Recipients};
    use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};
    use herald_ports::prelude::*;

    use super::*;

    /// While a batch's record is in flight, a retried request in the next batch (same id) is a
    /// duplicate, not a second expansion; and once recorded, the store says so.
    #[tokio::test]
    async fn a_request_whose_expansion_is_in_flight_is_not_expanded_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(
            &dir.path().join("log.db"),
            Access::ReadWrite,
            LogOptions::default(),
        )
        .await
        .unwrap();
        let store = EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
            .await
            .unwrap();
        let projector = Projector::new(Arc::new(log), Arc::new(store));
        let req = NotificationRequest {
            notification_id: "n-1".into(),
            idempotency_key: "k-1".into(),
            producer: "p".into(),
            recipients: Recipients {
                users: vec!["alice".into(), "bob".into()],
                ..Default::default()
            },
            event_type: "t".into(),
            source: "tests".into(),
            payload: "{}".into(),
            collapse_key: None,
            deliver_at: None,
            expires_at: None,
            created_at: 1,
            traceparent: None,
            priority: Priority::Normal,
        };
        let none = HashSet::new();
        let first = projector
            .expand_unrecorded(std::slice::from_ref(&req), &BTreeMap::new(), &none, &none)
            .await
            .unwrap();
        assert_eq!(first.ids(), HashSet::from(["n-1".to_string()]));
        let in_flight = first.ids();
        let second = projector
            .expand_unrecorded(
                std::slice::from_ref(&req),
                &BTreeMap::new(),
                &none,
                &in_flight,
            )
            .await
            .unwrap();
        assert!(second.expansions.is_empty(), "expanded once");
        assert_eq!(second.duplicates, 1);
        let mut added = 0;
        for p in 0..projector.log.partitions(Topic::UserEvents) {
            added += projector
                .log
                .read(Topic::UserEvents, p, 0, 100)
                .await
                .unwrap()
                .len();
        }
        let partitions = projector.log.partitions(Topic::UserEvents);
        let theirs: HashSet<u32> = ["alice", "bob"]
            .iter()
            .map(|u| partition_for(u, partitions))
            .collect();
        assert_eq!(added, theirs.len(), "alice and bob added once");
        // Not recorded yet: without the in-flight ids it would be expanded again.
        assert!(
            projector
                .store
                .expanded(&in_flight_vec(&in_flight))
                .await
                .unwrap()
                .is_empty()
        );
        projector.record(first).await.unwrap();
        assert_eq!(
            projector
                .store
                .expanded(&in_flight_vec(&in_flight))
                .await
                .unwrap(),
            vec!["n-1".to_string()]
        );
        let third = projector
            .expand_unrecorded(std::slice::from_ref(&req), &BTreeMap::new(), &none, &none)
            .await
            .unwrap();
        assert!(third.expansions.is_empty(), "recorded: a duplicate");
    }

    fn in_flight_vec(ids: &HashSet<String>) -> Vec<String> {
        ids.iter().cloned().collect()
    }
}
