//! The timer stage: scheduled requests expanded when due, `Expired` appended for rows past
//! their expiry. Every replica runs it, but only the holder of the store's timer lease
//! ([`TIMER_LEASE`]) scans: see [`TIMER_LEASE_TTL`](crate::TIMER_LEASE_TTL) for the timings.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use herald_core::codec;
use herald_core::model::{Event, NotificationRequest, RequestRecord, UserEvent};
use herald_ports::log::{EventLog, Topic};
use herald_ports::projection::{ProjectionStore, TIMER_LEASE};
use herald_ports::records::user_event_record;
use tokio_util::sync::CancellationToken;

use crate::{EXPIRED_MEMORY, Projector, ProjectorError, TIMER_BATCH, TIMER_INTERVAL, now_ms};

impl<L: EventLog + ?Sized, P: ProjectionStore + ?Sized> Projector<L, P> {
    /// The timer stage: expands scheduled requests when their `deliver_at` comes, and appends
    /// `Expired` events for rows whose `expires_at` passed, while this replica holds the timer
    /// lease. It tries to take the lease (or renews it) every third of its TTL, scans only
    /// while more than a third of the TTL is left, and lets the lease go when it stops.
    pub async fn run_timers(&self, shutdown: CancellationToken) -> Result<(), ProjectorError> {
        let result = self.timers_loop(&shutdown).await;
        if let Err(e) = self
            .store
            .release_lease(TIMER_LEASE, &self.instance_id)
            .await
        {
            tracing::warn!(error = %e, "cannot release the timer lease; it expires by itself");
        }
        self.status.timers(None, false);
        result
    }

    async fn timers_loop(&self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        let mut tick = tokio::time::interval(TIMER_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recent: std::collections::HashMap<(String, String), Instant> = Default::default();
        // The first expansion of due requests after taking the lease may repeat one the
        // previous holder appended and crashed before recording.
        let mut first = true;
        let ttl_ms = self.timer_lease_ttl.as_millis().clamp(3, i64::MAX as u128) as i64;
        let renew_every = self.timer_lease_ttl / 3;
        let mut next_try = Instant::now();
        // The lease's expiry while this replica holds it.
        let mut held_until: Option<i64> = None;
        self.status.timers(None, false);
        tracing::info!(
            instance = self.instance_id,
            ?self.timer_lease_ttl,
            "timer stage started; taking the timer lease"
        );
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = now_ms();
            if Instant::now() >= next_try {
                next_try = Instant::now() + renew_every;
                match self
                    .store
                    .acquire_lease(TIMER_LEASE, &self.instance_id, now, ttl_ms)
                    .await
                {
                    Ok(lease) if lease.holder == self.instance_id => {
                        if held_until.is_none() {
                            tracing::info!(instance = self.instance_id, "took the timer lease");
                            first = true;
                        }
                        held_until = Some(lease.expires_at_ms);
                        self.status.timers(Some(&lease.holder), true);
                    }
                    Ok(lease) => {
                        if held_until.take().is_some() {
                            tracing::warn!(holder = lease.holder, "lost the timer lease");
                        }
                        self.status.timers(Some(&lease.holder), false);
                    }
                    // Keep what we had: the margin below stops the scans if it runs out.
                    Err(e) => tracing::warn!(error = %e, "cannot renew the timer lease"),
                }
            }
            match held_until {
                Some(until) if now < until - ttl_ms / 3 => {}
                Some(_) => {
                    tracing::debug!("the timer lease is about to expire unrenewed; not scanning");
                    continue;
                }
                None => continue,
            }
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
