//! `herald replay`'s rebuild: a projection folded from the log alone.

use std::collections::BTreeMap;

use herald_core::codec;
use herald_core::model::{DirectoryChange, Event, RequestRecord, UserEvent};
use herald_ports::log::{EventLog, StoredRecord, Topic};
use herald_ports::projection::{Positioned, ProjectionStore, Stage};

use crate::{MAX_BATCH_RECORDS, ProjectorError};

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
    let mut ends = Vec::new();
    let mut total = 0;
    for topic in [Topic::Requests, Topic::UserEvents] {
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
            ends.push((topic, p, end));
        }
    }
    progress.total(total);
    // Reading and decoding the next batches overlaps applying this one: the log's reads and
    // the store's writes run on threads of their own.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Batch, ProjectorError>>(READ_AHEAD);
    let read = async move {
        for (topic, p, end) in ends {
            let mut at = 0;
            while at < end {
                let max = ((end - at) as usize).min(MAX_BATCH_RECORDS * 4);
                let batch = match log.read(topic, p, at, max).await {
                    Ok(records) if records.is_empty() => break,
                    Ok(records) => {
                        at = records.last().map_or(at, |r| r.offset + 1);
                        Ok(Batch::decode(topic, p, at, &records))
                    }
                    Err(e) => Err(e.into()),
                };
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        }
    };
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
    let ((), applied) = tokio::join!(read, apply);
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
    fn decode(topic: Topic, p: u32, at: u64, records: &[StoredRecord]) -> Batch {
        let n = records.len() as u64;
        let registry = codec::Registry::global();
        match topic {
            Topic::Requests => Batch::Requests {
                p,
                at,
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
                records: n,
            },
            Topic::UserEvents => Batch::Events {
                p,
                at,
                events: records
                    .iter()
                    .filter_map(|r| {
                        let events = codec::decode(&r.record.value).ok()?.into_user_events()?;
                        Some(events.into_iter().map(|event| Positioned {
                            partition: p,
                            offset: r.offset,
                            event,
                        }))
                    })
                    .flatten()
                    .collect(),
                records: n,
            },
        }
    }
}
