//! Each record's fields in its schema's order (`schemas/avro/*.avsc`), encoded and decoded
//! with [`super::binary`]. `tests/codec.rs` checks every one byte for byte against apache-avro
//! reading the schema files, so this file and the schemas cannot drift apart.

use super::binary::{Reader, Writer};
use crate::CoreError;
use crate::model::*;

const PRIORITIES: [Priority; 4] = [
    Priority::Low,
    Priority::Normal,
    Priority::High,
    Priority::Urgent,
];

const OPS: [DirectoryOp; 5] = [
    DirectoryOp::UpsertUser,
    DirectoryOp::JoinGroup,
    DirectoryOp::LeaveGroup,
    DirectoryOp::SubscribeTopic,
    DirectoryOp::UnsubscribeTopic,
];

const DELIVERIES: [Delivery; 3] = [Delivery::Live, Delivery::Inbox, Delivery::Muted];

fn delivery_index(d: Delivery) -> usize {
    DELIVERIES
        .iter()
        .position(|x| *x == d)
        .expect("every delivery")
}

fn priority_index(p: Priority) -> usize {
    PRIORITIES
        .iter()
        .position(|x| *x == p)
        .expect("every priority")
}

fn op_index(op: DirectoryOp) -> usize {
    OPS.iter().position(|x| *x == op).expect("every op")
}

fn recipients(w: &mut Writer<'_>, r: &Recipients) {
    w.strs(&r.users);
    w.strs(&r.groups);
    w.opt_str(r.topic.as_deref());
    w.bool(r.everyone);
}

fn read_recipients(r: &mut Reader<'_>) -> Result<Recipients, CoreError> {
    Ok(Recipients {
        users: r.strs()?,
        groups: r.strs()?,
        topic: r.opt_str()?,
        everyone: r.bool()?,
    })
}

pub(crate) fn request(w: &mut Writer<'_>, n: &NotificationRequest) {
    w.str(&n.notification_id);
    w.str(&n.idempotency_key);
    w.str(&n.producer);
    recipients(w, &n.recipients);
    w.str(&n.event_type);
    w.str(&n.source);
    w.str(&n.payload);
    w.opt_str(n.collapse_key.as_deref());
    w.opt_long(n.deliver_at);
    w.opt_long(n.expires_at);
    w.long(n.created_at);
    w.opt_str(n.traceparent.as_deref());
    w.symbol(priority_index(n.priority));
}

/// A request, current schema (`v1`: written before `priority`, which then defaults to normal).
pub(crate) fn read_request(r: &mut Reader<'_>, v1: bool) -> Result<NotificationRequest, CoreError> {
    Ok(NotificationRequest {
        notification_id: r.str()?,
        idempotency_key: r.str()?,
        producer: r.str()?,
        recipients: read_recipients(r)?,
        event_type: r.str()?,
        source: r.str()?,
        payload: r.str()?,
        collapse_key: r.opt_str()?,
        deliver_at: r.opt_long()?,
        expires_at: r.opt_long()?,
        created_at: r.long()?,
        traceparent: r.opt_str()?,
        priority: if v1 {
            Priority::Normal
        } else {
            PRIORITIES[r.symbol(PRIORITIES.len())?]
        },
    })
}

pub(crate) fn directory(w: &mut Writer<'_>, d: &DirectoryChange) {
    w.symbol(op_index(d.op));
    w.str(&d.user_id);
    w.opt_str(d.target.as_deref());
    w.strs(&d.roles);
    w.long(d.at);
}

pub(crate) fn read_directory(r: &mut Reader<'_>) -> Result<DirectoryChange, CoreError> {
    Ok(DirectoryChange {
        op: OPS[r.symbol(OPS.len())?],
        user_id: r.str()?,
        target: r.opt_str()?,
        roles: r.strs()?,
        at: r.long()?,
    })
}

pub(crate) fn role(w: &mut Writer<'_>, role: &RoleDefinition) {
    w.str(&role.role);
    w.strs(&role.topics);
    w.long(role.at);
}

pub(crate) fn read_role(r: &mut Reader<'_>) -> Result<RoleDefinition, CoreError> {
    Ok(RoleDefinition {
        role: r.str()?,
        topics: r.strs()?,
        at: r.long()?,
    })
}

pub(crate) fn added(w: &mut Writer<'_>, a: &NotificationAdded) {
    w.str(&a.user_id);
    w.str(&a.notification_id);
    w.str(&a.event_type);
    w.str(&a.source);
    w.str(&a.payload);
    w.symbol(priority_index(a.priority));
    w.opt_str(a.collapse_key.as_deref());
    w.opt_long(a.deliver_at);
    w.opt_long(a.expires_at);
    w.long(a.created_at);
    w.opt_str(a.traceparent.as_deref());
    w.symbol(delivery_index(a.delivery));
}

/// An added event, current schema (`v1`: written before `delivery`, which then is live).
pub(crate) fn read_added(r: &mut Reader<'_>, v1: bool) -> Result<NotificationAdded, CoreError> {
    Ok(NotificationAdded {
        user_id: r.str()?,
        notification_id: r.str()?,
        event_type: r.str()?,
        source: r.str()?,
        payload: r.str()?,
        priority: PRIORITIES[r.symbol(PRIORITIES.len())?],
        collapse_key: r.opt_str()?,
        deliver_at: r.opt_long()?,
        expires_at: r.opt_long()?,
        created_at: r.long()?,
        traceparent: r.opt_str()?,
        delivery: if v1 {
            Delivery::Live
        } else {
            DELIVERIES[r.symbol(DELIVERIES.len())?]
        },
    })
}

pub(crate) fn users_added(w: &mut Writer<'_>, a: &NotificationsAdded) {
    w.str(&a.notification_id);
    w.str(&a.event_type);
    w.str(&a.source);
    w.str(&a.payload);
    w.symbol(priority_index(a.priority));
    w.opt_str(a.collapse_key.as_deref());
    w.opt_long(a.deliver_at);
    w.opt_long(a.expires_at);
    w.long(a.created_at);
    w.opt_str(a.traceparent.as_deref());
    if !a.recipients.is_empty() {
        w.long(a.recipients.len() as i64);
        for r in &a.recipients {
            w.str(&r.user_id);
            w.symbol(delivery_index(r.delivery));
        }
    }
    w.long(0);
}

pub(crate) fn read_users_added(r: &mut Reader<'_>) -> Result<NotificationsAdded, CoreError> {
    Ok(NotificationsAdded {
        notification_id: r.str()?,
        event_type: r.str()?,
        source: r.str()?,
        payload: r.str()?,
        priority: PRIORITIES[r.symbol(PRIORITIES.len())?],
        collapse_key: r.opt_str()?,
        deliver_at: r.opt_long()?,
        expires_at: r.opt_long()?,
        created_at: r.long()?,
        traceparent: r.opt_str()?,
        recipients: r.array(|r| {
            Ok(AddedRecipient {
                user_id: r.str()?,
                delivery: DELIVERIES[r.symbol(DELIVERIES.len())?],
            })
        })?,
    })
}

pub(crate) fn delivered(w: &mut Writer<'_>, d: &NotificationDelivered) {
    w.str(&d.user_id);
    w.str(&d.device_id);
    w.str(&d.notification_id);
    w.long(d.at);
}

pub(crate) fn read_delivered(r: &mut Reader<'_>) -> Result<NotificationDelivered, CoreError> {
    Ok(NotificationDelivered {
        user_id: r.str()?,
        device_id: r.str()?,
        notification_id: r.str()?,
        at: r.long()?,
    })
}

pub(crate) fn acked(w: &mut Writer<'_>, a: &NotificationAcked) {
    w.str(&a.user_id);
    w.str(&a.device_id);
    w.strs(&a.notification_ids);
    w.opt_long(a.up_to);
    w.long(a.at);
}

pub(crate) fn read_acked(r: &mut Reader<'_>) -> Result<NotificationAcked, CoreError> {
    Ok(NotificationAcked {
        user_id: r.str()?,
        device_id: r.str()?,
        notification_ids: r.strs()?,
        up_to: r.opt_long()?,
        at: r.long()?,
    })
}

/// Read, unread and archived share one shape.
pub(crate) fn mark(w: &mut Writer<'_>, m: &MarkChange) {
    w.str(&m.user_id);
    w.opt_str(m.device_id.as_deref());
    w.strs(&m.notification_ids);
    w.opt_long(m.up_to);
    w.long(m.at);
}

pub(crate) fn read_mark(r: &mut Reader<'_>) -> Result<MarkChange, CoreError> {
    Ok(MarkChange {
        user_id: r.str()?,
        device_id: r.opt_str()?,
        notification_ids: r.strs()?,
        up_to: r.opt_long()?,
        at: r.long()?,
    })
}

pub(crate) fn expired(w: &mut Writer<'_>, x: &NotificationExpired) {
    w.str(&x.user_id);
    w.str(&x.notification_id);
    w.long(x.at);
}

pub(crate) fn read_expired(r: &mut Reader<'_>) -> Result<NotificationExpired, CoreError> {
    Ok(NotificationExpired {
        user_id: r.str()?,
        notification_id: r.str()?,
        at: r.long()?,
    })
}

pub(crate) fn connected(w: &mut Writer<'_>, c: &DeviceConnected) {
    w.str(&c.user_id);
    w.str(&c.device_id);
    w.long(c.at);
}

pub(crate) fn read_connected(r: &mut Reader<'_>) -> Result<DeviceConnected, CoreError> {
    Ok(DeviceConnected {
        user_id: r.str()?,
        device_id: r.str()?,
        at: r.long()?,
    })
}

pub(crate) fn progress(w: &mut Writer<'_>, p: &DeviceProgress) {
    w.str(&p.user_id);
    w.str(&p.device_id);
    w.longs(&p.delivered);
    w.strs(&p.acked_ids);
    w.opt_long(p.acked_up_to);
    w.long(p.at);
}

pub(crate) fn read_progress(r: &mut Reader<'_>) -> Result<DeviceProgress, CoreError> {
    Ok(DeviceProgress {
        user_id: r.str()?,
        device_id: r.str()?,
        delivered: r.longs()?,
        acked_ids: r.strs()?,
        acked_up_to: r.opt_long()?,
        at: r.long()?,
    })
}

fn rules(w: &mut Writer<'_>, items: &[PreferenceRule]) {
    if !items.is_empty() {
        w.long(items.len() as i64);
        for rule in items {
            w.str(&rule.name);
            w.bool(rule.live);
            w.bool(rule.inbox);
        }
    }
    w.long(0);
}

fn read_rule(r: &mut Reader<'_>) -> Result<PreferenceRule, CoreError> {
    Ok(PreferenceRule {
        name: r.str()?,
        live: r.bool()?,
        inbox: r.bool()?,
    })
}

pub(crate) fn preferences(w: &mut Writer<'_>, p: &PreferencesChanged) {
    w.str(&p.user_id);
    rules(w, &p.event_types);
    rules(w, &p.topics);
    w.long(p.at);
}

pub(crate) fn read_preferences(r: &mut Reader<'_>) -> Result<PreferencesChanged, CoreError> {
    Ok(PreferencesChanged {
        user_id: r.str()?,
        event_types: r.array(read_rule)?,
        topics: r.array(read_rule)?,
        at: r.long()?,
    })
}
