//! `herald replay`'s rebuild: a projection folded from the log alone.

use std::collections::BTreeMap;

use herald_core::codec;
use herald_core::model::{DirectoryChange, Event, RequestRecord, UserEvent};
use herald_ports::log::{EventLog, Topic};
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
    let mut applied = 0;
    for (topic, p, end) in ends {
        let mut at = 0;
        while at < end {
            let max = ((end - at) as usize).min(MAX_BATCH_RECORDS * 4);
            let records = log.read(topic, p, at, max).await?;
            if records.is_empty() {
                break;
            }
            at = records.last().map_or(at, |r| r.offset + 1);
            match topic {
                Topic::Requests => {
                    // Directory changes and role definitions, in log order.
                    let mut changes: Vec<DirectoryChange> = Vec::new();
                    for r in &records {
                        match codec::decode(&r.record.value) {
                            Ok(Event::Request(RequestRecord::Directory(d))) => changes.push(d),
                            Ok(Event::Request(RequestRecord::Role(role))) => {
                                store
                                    .apply_directory(
                                        Stage::Fanout,
                                        &std::mem::take(&mut changes),
                                        &[],
                                    )
                                    .await?;
                                store.define_roles(Stage::Fanout, &[role], &[]).await?;
                            }
                            _ => {}
                        }
                    }
                    store
                        .apply_directory(Stage::Fanout, &changes, &[(p, at)])
                        .await?;
                }
                Topic::UserEvents => {
                    let events: Vec<Positioned<UserEvent>> = records
                        .iter()
                        .filter_map(|r| match codec::decode(&r.record.value) {
                            Ok(Event::User(event)) => Some(Positioned {
                                partition: p,
                                offset: r.offset,
                                event,
                            }),
                            _ => None,
                        })
                        .collect();
                    store
                        .apply_user_events(Stage::Inbox, &events, &[(p, at)])
                        .await?;
                }
            }
            applied += records.len() as u64;
            progress.advance(records.len() as u64);
        }
    }
    Ok(applied)
}
