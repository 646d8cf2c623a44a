//! `herald audit`: every event about a notification or a user, in log order.

use std::sync::Arc;

use herald_core::codec;
use herald_core::model::{Event, RequestRecord, UserEvent};
use herald_core::partition::partition_for;
use herald_ports::audit::{AuditEntry, AuditError, AuditReport, AuditSubject, Auditor};
use herald_ports::log::{EventLog, StoredRecord, Topic};
use herald_ports::projection::{DirectoryReader, InboxReader};

use crate::ProjectorError;

/// Records read per call while scanning a partition.
const SCAN_CHUNK: usize = 4096;

async fn scan<L: EventLog + ?Sized>(
    log: &L,
    topic: Topic,
    key: &str,
    mut each: impl FnMut(&StoredRecord),
) -> Result<(), ProjectorError> {
    let p = partition_for(key, log.partitions(topic));
    let end = log.end_offset(topic, p).await?;
    let mut at = 0;
    while at < end {
        let chunk = log.read(topic, p, at, SCAN_CHUNK).await?;
        let Some(last) = chunk.last() else { break };
        at = last.offset + 1;
        for r in chunk.iter().filter(|r| r.record.key == key) {
            each(r);
        }
    }
    Ok(())
}

fn entry(r: &StoredRecord, event: &str, at_ms: i64, detail: String) -> AuditEntry {
    AuditEntry {
        at_ms,
        logged_ms: r.record.timestamp_ms,
        topic: r.topic.name().to_owned(),
        partition: r.partition,
        offset: r.offset,
        event: event.to_owned(),
        user_id: None,
        device_id: None,
        detail,
    }
}

fn user_entry(r: &StoredRecord, e: &UserEvent) -> AuditEntry {
    let detail = match e {
        UserEvent::Added(a) => format!(
            "notification {} ({}, from {}, priority {})",
            a.notification_id,
            a.event_type,
            a.source,
            a.priority.as_str()
        ),
        UserEvent::Delivered(d) => format!("notification {}", d.notification_id),
        UserEvent::Expired(x) => format!("notification {}", x.notification_id),
        UserEvent::Acked(a) => describe_ids(&a.notification_ids, a.up_to),
        UserEvent::Read(m) | UserEvent::Unread(m) | UserEvent::Archived(m) => {
            describe_ids(&m.notification_ids, m.up_to)
        }
    };
    AuditEntry {
        user_id: Some(e.user_id().to_owned()),
        device_id: e.device_id().map(str::to_owned),
        ..entry(r, e.kind(), e.at(), detail)
    }
}

fn describe_ids(ids: &[String], up_to: Option<i64>) -> String {
    let mut parts = Vec::new();
    if !ids.is_empty() {
        parts.push(format!("ids {}", ids.join(", ")));
    }
    if let Some(u) = up_to {
        parts.push(format!("all up to seq {u}"));
    }
    parts.join("; ")
}

/// Audits `id`: a notification id if any request or expansion knows it, else a user id.
pub async fn audit<L: EventLog + ?Sized, P: DirectoryReader + InboxReader + ?Sized>(
    log: &L,
    store: &P,
    id: &str,
) -> Result<AuditReport, ProjectorError> {
    let mut entries = Vec::new();
    let mut requests = 0;
    scan(log, Topic::Requests, id, |r| {
        match codec::decode(&r.record.value) {
            Ok(Event::Request(RequestRecord::Notification(n))) if n.notification_id == id => {
                requests += 1;
                let detail = format!(
                    "{} from producer {} (key {}) to {} users, {} groups{}{}",
                    n.event_type,
                    n.producer,
                    n.idempotency_key,
                    n.recipients.users.len(),
                    n.recipients.groups.len(),
                    n.recipients
                        .topic
                        .as_deref()
                        .map(|t| format!(", topic {t}"))
                        .unwrap_or_default(),
                    if n.recipients.everyone {
                        ", everyone"
                    } else {
                        ""
                    },
                );
                let detail = if requests > 1 {
                    format!("{detail} (retry of the same idempotency key; creates nothing new)")
                } else {
                    detail
                };
                entries.push(entry(r, "requested", n.created_at, detail));
            }
            _ => {}
        }
    })
    .await?;
    let recipients = store.expansion_of(id).await?;
    if entries.is_empty() && recipients.is_empty() {
        // A user.
        scan(log, Topic::Requests, id, |r| {
            if let Ok(Event::Request(RequestRecord::Directory(d))) = codec::decode(&r.record.value)
            {
                let detail = format!("{:?} {}", d.op, d.target.clone().unwrap_or_default());
                entries.push(AuditEntry {
                    user_id: Some(d.user_id.clone()),
                    ..entry(r, "directory", d.at, detail)
                });
            }
        })
        .await?;
        scan(log, Topic::UserEvents, id, |r| {
            match codec::decode(&r.record.value) {
                Ok(Event::User(e)) => entries.push(user_entry(r, &e)),
                Ok(_) => {}
                Err(e) => entries.push(entry(
                    r,
                    "undecodable",
                    r.record.timestamp_ms,
                    e.to_string(),
                )),
            }
        })
        .await?;
        return Ok(AuditReport {
            subject: AuditSubject::User,
            id: id.to_owned(),
            entries,
        });
    }
    for user in &recipients {
        let seq = store.row(user, id).await?.map(|row| row.seq);
        scan(log, Topic::UserEvents, user, |r| {
            if let Ok(Event::User(e)) = codec::decode(&r.record.value) {
                // A cumulative `up_to` only covers rows that precede the event (see the fold).
                if e.mentions(id, seq.filter(|s| r.offset > *s)) {
                    let mut line = user_entry(r, &e);
                    if matches!(e, UserEvent::Added(_)) && seq.is_some_and(|s| s != r.offset) {
                        line.detail.push_str(" (repeated expansion; no effect)");
                    }
                    entries.push(line);
                }
            }
        })
        .await?;
    }
    entries.sort_by(|a, b| {
        (a.logged_ms, &a.topic, a.partition, a.offset).cmp(&(
            b.logged_ms,
            &b.topic,
            b.partition,
            b.offset,
        ))
    });
    Ok(AuditReport {
        subject: AuditSubject::Notification,
        id: id.to_owned(),
        entries,
    })
}

/// The audit port over a log and a projection (what the gateway serves to operators).
pub struct LogAuditor<L: ?Sized, P: ?Sized> {
    pub log: Arc<L>,
    pub store: Arc<P>,
}

#[async_trait::async_trait]
impl<L, P> Auditor for LogAuditor<L, P>
where
    L: EventLog + ?Sized,
    P: DirectoryReader + InboxReader + ?Sized,
{
    async fn audit(&self, id: &str) -> Result<AuditReport, AuditError> {
        audit(self.log.as_ref(), self.store.as_ref(), id)
            .await
            .map_err(|e| match e {
                ProjectorError::Log(l) => AuditError::Log(l),
                ProjectorError::Projection(p) => AuditError::Projection(p),
                ProjectorError::Encode(c) => {
                    AuditError::Projection(herald_ports::ProjectionError::Corrupt(c.to_string()))
                }
            })
    }
}
