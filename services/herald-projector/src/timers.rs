//! The timer stage: scheduled requests expanded when due, `Expired` appended for rows past
//! their expiry.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use herald_core::codec;
use herald_core::model::{Event, NotificationRequest, RequestRecord, UserEvent};
use herald_ports::log::{EventLog, Topic};
use herald_ports::projection::ProjectionStore;
use herald_ports::records::user_event_record;
use tokio_util::sync::CancellationToken;

use crate::{EXPIRED_MEMORY, Projector, ProjectorError, TIMER_BATCH, TIMER_INTERVAL, now_ms};

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// The timer stage: expands scheduled requests when their `deliver_at` comes, and appends
    /// `Expired` events for rows whose `expires_at` passed.
    pub async fn run_timers(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let mut tick = tokio::time::interval(TIMER_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recent: std::collections::HashMap<(String, String), Instant> = Default::default();
        // The first expansion of due requests after a start may repeat one an earlier timer
        // stage appended and crashed before recording.
        let mut first = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = now_ms();
            let due = self.store.due(now, TIMER_BATCH).await?;
            if !due.is_empty() {
                let requests: Vec<NotificationRequest> = due
                    .iter()
                    .filter_map(|(id, bytes)| match codec::decode(bytes) {
                        Ok(Event::Request(RequestRecord::Notification(n))) => Some(*n),
                        _ => {
                            tracing::warn!(notification_id = %id, "undecodable scheduled request");
                            None
                        }
                    })
                    .collect();
                tracing::debug!(due = requests.len(), "expanding scheduled requests");
                let recovering: HashSet<String> = if first {
                    requests.iter().map(|r| r.notification_id.clone()).collect()
                } else {
                    HashSet::new()
                };
                self.expand_now(&requests, &BTreeMap::new(), &recovering)
                    .await?;
                first = false;
            }
            recent.retain(|_, at| at.elapsed() < EXPIRED_MEMORY);
            let expiring: Vec<(String, String)> = self
                .store
                .expiring(now, TIMER_BATCH)
                .await?
                .into_iter()
                .filter(|k| !recent.contains_key(k))
                .collect();
            if !expiring.is_empty() {
                let partitions = self.log.partitions(Topic::UserEvents);
                let mut records = Vec::with_capacity(expiring.len());
                for (user, id) in &expiring {
                    let ev = UserEvent::Expired(herald_core::model::NotificationExpired {
                        user_id: user.clone(),
                        notification_id: id.clone(),
                        at: now,
                    });
                    records.push(user_event_record(&ev, partitions, now)?);
                }
                self.log.append(Topic::UserEvents, records).await?;
                for k in expiring {
                    recent.insert(k, Instant::now());
                }
            }
        }
    }
}
