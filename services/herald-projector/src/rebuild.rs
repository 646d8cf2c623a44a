//! `herald replay`'s rebuild: a projection folded from the log alone.

use std::collections::BTreeMap;

use herald_core::codec;
use herald_core::model::{DirectoryChange, Event, RequestRecord, UserEvent};
use herald_ports::log::{EventLog, StoredRecord, Topic};
use herald_ports::projection::{Positioned, ProjectionStore, Stage};

use crate::{MAX_APPLY_EVENTS, MAX_BATCH_RECORDS, ProjectorError};

/// Progress of a rebuild, for progress bars.
pub trait Progress: Send + Sync {
    fn total(&self, records: u64);
    fn advance(&self, records: u64);
}

impl Progress for () {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Rebuilds a projection from the log into `store` (which should be empty): directory changes
/// from the requests topic up to `requests_end`, and every per-user event up to `events_end`
/// (exclusive next offsets per partition; missing partitions are read to their end). Nothing is
/// appended to the log.
pub async fn rebuild<L: EventLog + ?Sized, P: ProjectionStore + ?Sized>(
    log: &L,
    store: &P,
    requests_end: &BTreeMap<u32, u64>,
    events_end: &BTreeMap<u32, u64>,
    progress: &dyn Progress,
) -> Result<u64, ProjectorError> {
    let mut ends: [Vec<(Topic, u32, u64)>; 2] = Default::default();
    let mut total = 0;
    for (i, topic) in [Topic::Requests, Topic::UserEvents].into_iter().enumerate() {
        let given = if topic == Topic::Requests {
            requests_end
        } else {
            events_end
        };
        for p in 0..log.partitions(topic) {
            let end = match given.get(&p) {
                Some(e) => *e,
                None => log.end_offset(topic, p).await?,
            };
            total += end;
            ends[i].push((topic, p, end));
        }
    }
    progress.total(total);
    // Reading and decoding the next batches overlaps applying this one: the log's reads and
    // the store's writes run on threads of their own. The two topics are read side by side:
    // the requests topic is mostly notification requests, which are read only to be skipped,
    // and the fold of the user events neither reads nor writes what the directory changes
    // write (their only shared table, `users`, takes a user once, with the roles of the last
    // `UpsertUser` if there is one, in whichever order the two arrive), so the store applies
    // the user events while the requests are read.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Batch, ProjectorError>>(READ_AHEAD);
    let read = |ends: Vec<(Topic, u32, u64)>| {
        let tx = tx.clone();
        async move {
            for (topic, p, end) in ends {
                let mut at = 0;
                while at < end {
                    let max = ((end - at) as usize).min(MAX_BATCH_RECORDS * 4);
                    let batches = match log.read(topic, p, at, max).await {
                        Ok(records) if records.is_empty() => break,
                        Ok(records) => {
                            at = records.last().map_or(at, |r| r.offset + 1);
                            Batch::decode(topic, p, &records)
                                .into_iter()
                                .map(Ok)
                                .collect()
                        }
                        Err(e) => vec![Err(e.into())],
                    };
                    for batch in batches {
                        let failed = batch.is_err();
                        if tx.send(batch).await.is_err() || failed {
                            return;
                        }
                    }
                }
            }
        }
    };
    let [request_ends, event_ends] = ends;
    let read_requests = read(request_ends);
    let read_events = read(event_ends);
    // The channel closes when both readers are done.
    drop(tx);
    let apply = async {
        let mut applied = 0;
        while let Some(batch) = rx.recv().await {
            match batch? {
                Batch::Requests {
                    p,
                    at,
                    items,
                    records,
                } => {
                    // Directory changes and role definitions, in log order.
                    let mut changes: Vec<DirectoryChange> = Vec::new();
                    for item in items {
                        match item {
                            RequestRecord::Directory(d) => changes.push(d),
                            RequestRecord::Role(role) => {
                                store
                                    .apply_directory(
                                        Stage::Fanout,
                                        &std::mem::take(&mut changes),
                                        &[],
                                    )
                                    .await?;
                                store.define_roles(Stage::Fanout, &[role], &[]).await?;
                            }
                            RequestRecord::Notification(_) => {}
                        }
                    }
                    store
                        .apply_directory(Stage::Fanout, &changes, &[(p, at)])
                        .await?;
                    applied += records;
                    progress.advance(records);
                }
                Batch::Events {
                    p,
                    at,
                    events,
                    records,
                } => {
                    store
                        .apply_user_events(Stage::Inbox, &events, &[(p, at)])
                        .await?;
                    applied += records;
                    progress.advance(records);
                }
            }
        }
        Ok::<u64, ProjectorError>(applied)
    };
    let ((), (), applied) = tokio::join!(read_requests, read_events, apply);
    applied
}

/// Batches read ahead of the one being applied, at most.
const READ_AHEAD: usize = 2;

/// One read of the log, decoded: what the store needs from it, the next offset to read, and how
/// many records it covered.
enum Batch {
    Requests {
        p: u32,
        at: u64,
        items: Vec<RequestRecord>,
        records: u64,
    },
    Events {
        p: u32,
        at: u64,
        events: Vec<Positioned<UserEvent>>,
        records: u64,
    },
}

impl Batch {
    /// Decodes a read of `records`: one batch, or for user events several, each of at most
    /// about [`MAX_APPLY_EVENTS`] events (a `NotificationsAdded` is an event per recipient).
    fn decode(topic: Topic, p: u32, records: &[StoredRecord]) -> Vec<Batch> {
        let registry = codec::Registry::global();
        let next = |r: Option<&StoredRecord>| r.map_or(0, |r| r.offset + 1);
        match topic {
            Topic::Requests => vec![Batch::Requests {
                p,
                at: next(records.last()),
                // Notification requests are the fanout's input, not the projection's: their
                // kind is read from the header, and they are not decoded.
                items: records
                    .iter()
                    .filter(|r| {
                        !matches!(
                            registry.peek(&r.record.value),
                            Ok((codec::SchemaKind::NotificationRequest, _))
                        )
                    })
                    .filter_map(|r| match codec::decode(&r.record.value) {
                        Ok(Event::Request(
                            req @ (RequestRecord::Directory(_) | RequestRecord::Role(_)),
                        )) => Some(req),
                        _ => None,
                    })
                    .collect(),
                records: records.len() as u64,
            }],
            Topic::UserEvents => {
                let mut batches = Vec::new();
                let mut events = Vec::new();
                let mut taken = 0;
                for (i, r) in records.iter().enumerate() {
                    events.extend(crate::user_events_of(r).ok().flatten().unwrap_or_default());
                    if events.len() >= MAX_APPLY_EVENTS || i + 1 == records.len() {
                        batches.push(Batch::Events {
                            p,
                            at: r.offset + 1,
                            events: std::mem::take(&mut events),
                            records: (i + 1 - taken) as u64,
                        });
                        taken = i + 1;
                    }
                }
                batches
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::model::{AddedRecipient, Delivery, NotificationAdded, NotificationsAdded};
    use herald_ports::log::Record;

    use super::*;

    fn many(id: &str, users: usize) -> StoredRecord {
        let content = NotificationAdded {
            user_id: String::new(),
            notification_id: id.into(),
            event_type: "t".into(),
            source: "s".into(),
            payload: "{}".into(),
            priority: Default::default(),
            collapse_key: None,
            deliver_at: None,
            expires_at: None,
            created_at: 1,
            traceparent: None,
            delivery: Delivery::Live,
        };
        let recipients = (0..users)
            .map(|u| AddedRecipient {
                user_id: format!("u{u}"),
                delivery: Delivery::Live,
            })
            .collect();
        let record: Record = herald_ports::records::users_added_record(
            &NotificationsAdded::of(&content, recipients),
            0,
            0,
        )
        .unwrap();
        StoredRecord {
            topic: Topic::UserEvents,
            partition: 0,
            offset: 0,
            record: Arc::new(record),
        }
    }

    /// A read whose records expand to more than MAX_APPLY_EVENTS events is handed to the
    /// store in several batches, each with the offset after its last record, covering every
    /// record and every event once, in order.
    #[test]
    fn a_read_of_several_user_records_is_applied_in_bounded_batches() {
        let records: Vec<StoredRecord> = (0..10u64)
            .map(|i| StoredRecord {
                offset: 100 + i,
                ..many(&format!("n{i}"), 1000)
            })
            .collect();
        let batches = Batch::decode(Topic::UserEvents, 0, &records);
        assert!(batches.len() > 1, "split");
        let mut covered = 0;
        let mut seen = Vec::new();
        for b in &batches {
            let Batch::Events {
                at,
                events,
                records: n,
                ..
            } = b
            else {
                panic!("user events");
            };
            assert!(events.len() < MAX_APPLY_EVENTS + 1000, "{}", events.len());
            covered += n;
            assert_eq!(
                *at,
                100 + covered,
                "the offset after the batch's last record"
            );
            seen.extend(
                events
                    .iter()
                    .map(|e| (e.offset, e.event.user_id().to_owned())),
            );
        }
        assert_eq!(covered, 10);
        let expected: Vec<(u64, String)> = (0..10u64)
            .flat_map(|i| (0..1000).map(move |u| (100 + i, format!("u{u}"))))
            .collect();
        assert_eq!(seen, expected);
    }
}
