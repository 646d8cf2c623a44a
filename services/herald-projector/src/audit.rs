//! `herald audit`: every event about a notification or a user, in log order.

use std::sync::Arc;

use herald_core::codec;
use herald_core::model::{Event, RequestRecord, UserEvent};
use herald_core::partition::partition_for;
use herald_ports::audit::{
    AuditBudget, AuditEntry, AuditError, AuditReport, AuditSubject, Auditor,
};
use herald_ports::log::{EventLog, StoredRecord, Topic};
use herald_ports::projection::{DirectoryReader, InboxReader};

use crate::ProjectorError;

/// Records read per call while scanning a partition.
const SCAN_CHUNK: usize = 4096;

/// Reads partitions for records of one key, within a budget of records read.
struct Scanner<'a, L: ?Sized> {
    log: &'a L,
    left: u64,
    scanned: u64,
    complete: bool,
}

impl<L: EventLog + ?Sized> Scanner<'_, L> {
    /// Calls `each` for the records keyed `key` in its partition of `topic`, from offset `from`,
    /// until the partition's end or the budget's.
    async fn scan(
        &mut self,
        topic: Topic,
        key: &str,
        from: u64,
        mut each: impl FnMut(&StoredRecord),
    ) -> Result<(), ProjectorError> {
        let p = partition_for(key, self.log.partitions(topic));
        let end = self.log.end_offset(topic, p).await?;
        let mut at = from;
        while at < end {
            if self.left == 0 {
                self.complete = false;
                return Ok(());
            }
            let want = (end - at).min(SCAN_CHUNK as u64).min(self.left) as usize;
            let chunk = self.log.read(topic, p, at, want).await?;
            let Some(last) = chunk.last() else { break };
            at = last.offset + 1;
            self.left = self.left.saturating_sub(chunk.len() as u64);
            self.scanned += chunk.len() as u64;
            // A notification added for several users is keyed by its id: it is read here
            // too, and the caller takes its recipient's part of it.
            for r in chunk.iter().filter(|r| {
                r.record.key == key
                    || (topic == Topic::UserEvents && codec::is_users_added(&r.record.value))
            }) {
                each(r);
            }
        }
        Ok(())
    }
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
            "notification {} ({}, from {}, priority {}, {})",
            a.notification_id,
            a.event_type,
            a.source,
            a.priority.as_str(),
            a.delivery.as_str()
        ),
        UserEvent::Preferences(p) => {
            let rules = |kind: &str, rules: &[herald_core::model::PreferenceRule]| {
                rules
                    .iter()
                    .map(|r| {
                        format!(
                            "{kind} {}: {}",
                            r.name,
                            herald_core::model::Channels {
                                live: r.live,
                                inbox: r.inbox
                            }
                            .delivery()
                            .as_str()
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let all = [
                rules("event type", &p.event_types),
                rules("topic", &p.topics),
            ]
            .concat();
            if all.is_empty() {
                "preferences cleared".to_string()
            } else {
                format!("preferences: {}", all.join(", "))
            }
        }
        UserEvent::Delivered(d) => format!("notification {}", d.notification_id),
        UserEvent::Expired(x) => format!("notification {}", x.notification_id),
        UserEvent::Connected(c) => format!("device {} opened a session", c.device_id),
        UserEvent::Progress(p) => {
            let mut parts = Vec::new();
            if !p.delivered.is_empty() {
                let seqs: Vec<String> = p.delivered.iter().map(i64::to_string).collect();
                parts.push(format!("delivered seqs {}", seqs.join(", ")));
            }
            let acks = describe_ids(&p.acked_ids, p.acked_up_to);
            if !acks.is_empty() {
                parts.push(format!("acked {acks}"));
            }
            parts.join("; ")
        }
        UserEvent::Acked(a) => describe_ids(&a.notification_ids, a.up_to),
        UserEvent::Read(m)
        | UserEvent::Unread(m)
        | UserEvent::Archived(m)
        | UserEvent::Unarchived(m) => describe_ids(&m.notification_ids, m.up_to),
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

fn request_detail(n: &herald_core::model::NotificationRequest, repeat: bool) -> String {
    let r = &n.recipients;
    format!(
        "{} from producer {} (key {}) to {} users, {} groups{}{}{}",
        n.event_type,
        n.producer,
        n.idempotency_key,
        r.users.len(),
        r.groups.len(),
        r.topic
            .as_deref()
            .map(|t| format!(", topic {t}"))
            .unwrap_or_default(),
        if r.everyone { ", everyone" } else { "" },
        if repeat {
            " (retry of the same idempotency key; creates nothing new)"
        } else {
            ""
        },
    )
}

/// Audits `id`: a notification id if any request or expansion knows it, else a user id. Reads
/// at most `budget` log records; a notification's recipients are read from the notification's
/// own seq on (nothing before it can concern it).
pub async fn audit<L: EventLog + ?Sized, P: DirectoryReader + InboxReader + ?Sized>(
    log: &L,
    store: &P,
    id: &str,
    budget: AuditBudget,
) -> Result<AuditReport, ProjectorError> {
    let mut scanner = Scanner {
        log,
        left: budget.max_records,
        scanned: 0,
        complete: true,
    };
    // One pass over the id's requests partition: a notification's requests, or a user's
    // directory changes.
    let mut requests = Vec::new();
    let mut directory = Vec::new();
    scanner
        .scan(Topic::Requests, id, 0, |r| {
            match codec::decode(&r.record.value) {
                Ok(Event::Request(RequestRecord::Notification(n))) if n.notification_id == id => {
                    let detail = request_detail(&n, !requests.is_empty());
                    requests.push(entry(r, "requested", n.created_at, detail));
                }
                Ok(Event::Request(RequestRecord::Directory(d))) if d.user_id == id => {
                    let detail = format!("{:?} {}", d.op, d.target.clone().unwrap_or_default());
                    directory.push(AuditEntry {
                        user_id: Some(d.user_id.clone()),
                        ..entry(r, "directory", d.at, detail)
                    });
                }
                _ => {}
            }
        })
        .await?;
    let recipients = store.expansion_of(id).await?;
    let (subject, mut entries) = if requests.is_empty() && recipients.is_empty() {
        // A user.
        let mut entries = directory;
        scanner
            .scan(Topic::UserEvents, id, 0, |r| {
                match codec::decode(&r.record.value) {
                    Ok(event) => {
                        for e in event.into_events_of(id) {
                            entries.push(user_entry(r, &e));
                        }
                    }
                    // A several-user record keyed by a notification: not this user's to show.
                    Err(e) if r.record.key == id => entries.push(entry(
                        r,
                        "undecodable",
                        r.record.timestamp_ms,
                        e.to_string(),
                    )),
                    Err(_) => {}
                }
            })
            .await?;
        (AuditSubject::User, entries)
    } else {
        let mut entries = requests;
        for user in &recipients {
            let seq = store.row(user, id).await?.map(|row| row.seq);
            scanner
                .scan(Topic::UserEvents, user, seq.unwrap_or(0), |r| {
                    let events = codec::decode(&r.record.value)
                        .map(|event| event.into_events_of(user))
                        .unwrap_or_default();
                    for e in events {
                        // A cumulative `up_to` only covers rows that precede the event (see
                        // the fold).
                        if e.mentions(id, seq.filter(|s| r.offset > *s)) {
                            let mut line = user_entry(r, &e);
                            if matches!(e, UserEvent::Added(_))
                                && seq.is_some_and(|s| s != r.offset)
                            {
                                line.detail.push_str(" (repeated expansion; no effect)");
                            }
                            entries.push(line);
                        }
                    }
                })
                .await?;
        }
        (AuditSubject::Notification, entries)
    };
    entries.sort_by(|a, b| {
        (a.logged_ms, &a.topic, a.partition, a.offset).cmp(&(
            b.logged_ms,
            &b.topic,
            b.partition,
            b.offset,
        ))
    });
    Ok(AuditReport {
        subject,
        id: id.to_owned(),
        entries,
        scanned_records: scanner.scanned,
        complete: scanner.complete,
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
    async fn audit(&self, id: &str, budget: AuditBudget) -> Result<AuditReport, AuditError> {
        audit(self.log.as_ref(), self.store.as_ref(), id, budget)
            .await
            .map_err(|e| match e {
                ProjectorError::Log(l) => AuditError::Log(l),
                ProjectorError::Projection(p) => AuditError::Projection(p),
                ProjectorError::Encode(c) => {
                    AuditError::Projection(herald_ports::ProjectionError::Corrupt(c.to_string()))
                }
                e @ (ProjectorError::Stalled { .. } | ProjectorError::GroupMoved { .. }) => {
                    AuditError::Log(herald_ports::LogError::Storage(e.to_string()))
                }
            })
    }
}
