//! The inbox projection: `state × event → writes`.
//!
//! [`fold`] reads what it needs through [`ProjectionState`] and returns absolute, idempotent
//! [`Write`]s: whole rows, the unread count as a number (never a delta), set-inserts for ACKs,
//! a cursor that only moves forward (a new row it inserts itself, after its reads, with an
//! insert-if-absent: [`ProjectionState::insert_new`]). Applying an event a second time therefore
//! changes nothing, and re-applying any suffix of a user's events in log order yields the same
//! state. Adapters implement [`ProjectionState`] over their store (a SQLite transaction, a
//! PostgreSQL transaction, …) and [`apply`] each event in log order.
//!
//! Invariants kept by the fold (checked by [`crate::mem::ProjectionSnapshot::check_invariants`]):
//! 1. a user's unread count equals the number of their rows that are unread and listed
//!    (not archived, not expired, not superseded);
//! 2. a notification appears at most once per user (a second `Added` for the same id is a no-op);
//! 3. at most one listed row per (user, collapse key): a newer one supersedes the older;
//! 4. a device's ACK cursor never moves backwards.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::{Delivery, DirectoryChange, DirectoryOp, Preferences, Priority, UserEvent};

mod page;
pub use page::{MAX_PENDING_ROWS, PageBound};

/// Rows an ACK's walk of the cursor ([`ProjectionState::advances_cursors_by_id`]) may pass
/// besides those it names: rows the device acknowledged earlier by id, or that are never sent
/// to a device. Bounds the rows one ACK reads; a longer run is passed by the next ACKs.
pub const CURSOR_WALK_EXTRA_ROWS: usize = 256;

/// A row after a device's cursor, as [`ProjectionState::visit_rows_after`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowAfter {
    pub seq: u64,
    pub notification_id: String,
    /// Still to be acknowledged by the device (not by id already, and sendable).
    pub waiting: bool,
}

/// One notification in one user's inbox. `seq` is the offset of its `Added` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxRow {
    pub user_id: String,
    pub seq: u64,
    pub notification_id: String,
    pub event_type: String,
    pub source: String,
    pub payload: String,
    pub priority: Priority,
    pub collapse_key: Option<String>,
    pub created_at: i64,
    pub deliver_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub read: bool,
    pub archived: bool,
    pub expired: bool,
    pub superseded: bool,
    /// Pushed to devices (its `NotificationAdded` said `delivery: live`). A row that is not
    /// stays in the inbox but is never sent over a session, live or replayed.
    pub live: bool,
}

/// A row held by a session weighs its strings and itself: what it keeps allocated.
impl crate::delivery::Weigh for InboxRow {
    fn bytes(&self) -> usize {
        std::mem::size_of::<InboxRow>()
            + self.user_id.len()
            + self.notification_id.len()
            + self.event_type.len()
            + self.source.len()
            + self.payload.len()
            + self.collapse_key.as_ref().map_or(0, String::len)
    }
}

impl InboxRow {
    /// In the inbox at all: not archived, expired or superseded by a newer collapse-key row.
    pub fn listed(&self) -> bool {
        !self.archived && !self.expired && !self.superseded
    }

    /// Counted by the unread count (invariant 1).
    pub fn counts_as_unread(&self) -> bool {
        !self.read && self.listed()
    }

    /// Shown at time `now`: not hidden, after `deliver_at`, before `expires_at`.
    pub fn due(&self, now: i64) -> bool {
        self.deliver_at.is_none_or(|d| d <= now) && self.expires_at.is_none_or(|e| e > now)
    }

    /// Never sent to a device from now on, whatever comes later: kept off devices by the
    /// user's preferences, superseded or expired (each is final). Archived rows are not: an
    /// `unarchived` mark makes them pending again.
    pub fn never_sent(&self) -> bool {
        !self.live || self.superseded || self.expired
    }

    /// Not superseded or expired, and due at `now` (archived rows stay reachable by filter).
    pub fn shown(&self, now: i64) -> bool {
        !self.expired && !self.superseded && self.due(now)
    }
}

/// A mutation of the projection. Every write is absolute and idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the row at `(user_id, seq)`.
    PutRow(InboxRow),
    /// Set (not add to) the user's unread count.
    SetUnreadCount { user_id: String, count: u64 },
    /// Record a per-id ACK of the row at `seq` by a device.
    AckSeq {
        user_id: String,
        device_id: String,
        seq: u64,
    },
    /// Move the device's cumulative ACK cursor to `seq` (the fold only emits forward moves).
    SetDeviceCursor {
        user_id: String,
        device_id: String,
        seq: u64,
    },
    /// The user exists (for `everyone`).
    KnowUser { user_id: String },
    /// Replace the user's preferences (the newest event's document wins).
    SetPreferences {
        user_id: String,
        preferences: Preferences,
    },
}

/// What the fold reads. Implemented by each projection adapter over its own store.
pub trait ProjectionState {
    type Error;
    fn row(
        &mut self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, Self::Error>;
    /// The seq of the user's row of `notification_id`, if there is one: what the fold needs to
    /// know a row exists or to name it in an ACK. A store may answer it from an index alone.
    fn seq_of(&mut self, user_id: &str, notification_id: &str) -> Result<Option<u64>, Self::Error> {
        Ok(self.row(user_id, notification_id)?.map(|r| r.seq))
    }
    /// The listed row holding `collapse_key` for this user, if any.
    fn collapse_holder(
        &mut self,
        user_id: &str,
        collapse_key: &str,
    ) -> Result<Option<InboxRow>, Self::Error>;
    /// Rows with `seq <= up_to` that are not read (listed or not).
    fn unread_up_to(&mut self, user_id: &str, up_to: u64) -> Result<Vec<InboxRow>, Self::Error>;
    fn unread_count(&mut self, user_id: &str) -> Result<u64, Self::Error>;
    fn device_cursor(&mut self, user_id: &str, device_id: &str)
    -> Result<Option<u64>, Self::Error>;
    /// Whether ACKs by id may advance the device's cursor over the rows they name, when those
    /// are the user's next rows after it ([`ProjectionState::visit_rows_after`]), instead of
    /// each being kept on its own: the same rows are acknowledged either way (what
    /// [`crate::mem::ProjectionSnapshot::diff`] compares). A client that ACKs every
    /// notification by id, in order, then leaves one cursor per device instead of a row per
    /// notification. Off unless a store answers `visit_rows_after`.
    fn advances_cursors_by_id(&self) -> bool {
        false
    }
    /// Gives `visit` the user's rows after `after` (from the user's first row when `None`), in
    /// seq order, at most `limit`, until it returns `false`; each as its seq, its notification
    /// id and whether it still waits for `device_id`'s ACK: not for a row the device has
    /// acknowledged by id, nor for one that is never sent to a device
    /// ([`InboxRow::never_sent`]). Asked only when [`ProjectionState::advances_cursors_by_id`].
    fn visit_rows_after(
        &mut self,
        _user_id: &str,
        _device_id: &str,
        _after: Option<u64>,
        _limit: usize,
        _visit: &mut dyn FnMut(&RowAfter) -> bool,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    fn write(&mut self, write: Write) -> Result<(), Self::Error>;
    /// Inserts the row of a `NotificationAdded` unless the user already has a row of its
    /// notification id (invariant 2); whether it did. The one write the fold makes itself, after
    /// every read of its event, so that a store can check and insert in one statement (the
    /// embedded store: one descent of its id index instead of a lookup, then the insert's own).
    fn insert_new(&mut self, row: InboxRow) -> Result<bool, Self::Error> {
        if self.seq_of(&row.user_id, &row.notification_id)?.is_some() {
            return Ok(false);
        }
        self.write(Write::PutRow(row))?;
        Ok(true)
    }
}

fn non_negative(up_to: Option<i64>) -> Option<u64> {
    up_to.and_then(|u| u64::try_from(u).ok())
}

/// The row of `notification_id` if it was added *before* `offset`. An event only ever affects
/// rows that precede it in the log, so re-applying a suffix cannot let an early event (say, a
/// read of an id that only arrived later) act on a row it never saw the first time.
fn row_before<S: ProjectionState>(
    state: &mut S,
    user_id: &str,
    notification_id: &str,
    offset: u64,
) -> Result<Option<InboxRow>, S::Error> {
    Ok(state
        .row(user_id, notification_id)?
        .filter(|r| r.seq < offset))
}

/// The seq of the row of `notification_id` if it was added before `offset` (as [`row_before`],
/// without reading the row).
fn seq_before<S: ProjectionState>(
    state: &mut S,
    user_id: &str,
    notification_id: &str,
    offset: u64,
) -> Result<Option<u64>, S::Error> {
    Ok(state
        .seq_of(user_id, notification_id)?
        .filter(|s| *s < offset))
}

/// Applies `change` to every row named in `ids` that precedes `offset`.
fn touch_named<'a, S: ProjectionState>(
    state: &mut S,
    changes: &mut RowChanges,
    ids: impl IntoIterator<Item = &'a String>,
    offset: u64,
    change: impl Fn(&mut InboxRow),
) -> Result<(), S::Error> {
    for id in ids {
        if let Some(row) = row_before(state, &changes.user_id, id, offset)? {
            changes.touch(row, &change);
        }
    }
    Ok(())
}

/// Row changes of one event, merged by seq so a row named twice changes once.
struct RowChanges {
    user_id: String,
    rows: BTreeMap<u64, (InboxRow, InboxRow)>,
}

impl RowChanges {
    fn new(user_id: &str) -> Self {
        RowChanges {
            user_id: user_id.to_owned(),
            rows: BTreeMap::new(),
        }
    }
    fn touch(&mut self, row: InboxRow, change: impl Fn(&mut InboxRow)) {
        let entry = self
            .rows
            .entry(row.seq)
            .or_insert_with(|| (row.clone(), row));
        change(&mut entry.1);
    }
    fn into_writes<S: ProjectionState>(
        self,
        state: &mut S,
        extra_delta: i64,
        out: &mut Vec<Write>,
    ) -> Result<(), S::Error> {
        let mut delta = extra_delta;
        for (_, (before, after)) in self.rows {
            if before == after {
                continue;
            }
            delta += i64::from(after.counts_as_unread()) - i64::from(before.counts_as_unread());
            out.push(Write::PutRow(after));
        }
        if delta != 0 {
            let count = state.unread_count(&self.user_id)?;
            let count = (count as i64 + delta).max(0) as u64;
            out.push(Write::SetUnreadCount {
                user_id: self.user_id,
                count,
            });
        }
        Ok(())
    }
}

/// The writes that event `event`, found at log `offset` of its user's partition, causes. The
/// row a `NotificationAdded` adds is the exception: the fold inserts it itself, through
/// [`ProjectionState::insert_new`], after its reads; the writes returned then are the rest.
pub fn fold<S: ProjectionState>(
    state: &mut S,
    offset: u64,
    event: &UserEvent,
) -> Result<Vec<Write>, S::Error> {
    let mut out = Vec::new();
    match event {
        UserEvent::Added(e) => {
            let mut row = InboxRow {
                user_id: e.user_id.clone(),
                seq: offset,
                notification_id: e.notification_id.clone(),
                event_type: e.event_type.clone(),
                source: e.source.clone(),
                payload: e.payload.clone(),
                priority: e.priority,
                collapse_key: e.collapse_key.clone(),
                created_at: e.created_at,
                deliver_at: e.deliver_at,
                expires_at: e.expires_at,
                // Muted by the user's preferences: in the inbox, never unread.
                read: e.delivery == Delivery::Muted,
                archived: false,
                expired: false,
                superseded: false,
                live: e.delivery == Delivery::Live,
            };
            let mut changes = RowChanges::new(&e.user_id);
            if let Some(key) = &e.collapse_key
                && let Some(holder) = state.collapse_holder(&e.user_id, key)?
            {
                if holder.seq < offset {
                    changes.touch(holder, |r| r.superseded = true);
                } else {
                    row.superseded = true;
                }
            }
            let added_delta = i64::from(row.counts_as_unread());
            let mut rest = Vec::new();
            // Reads the unread count: every read happens before the insert (a batch cache that
            // lacks a fact folds the event again, and must not find the row already there).
            changes.into_writes(state, added_delta, &mut rest)?;
            if !state.insert_new(row)? {
                return Ok(out); // invariant 2: replay or duplicate expansion
            }
            out.push(Write::KnowUser {
                user_id: e.user_id.clone(),
            });
            out.extend(rest);
        }
        // A delivery changes no row: the log keeps every one (`herald audit` lists them); the
        // projection keeps only what reads need.
        UserEvent::Delivered(_) => {}
        UserEvent::Acked(e) => fold_acks(
            state,
            (&e.user_id, &e.device_id),
            &e.notification_ids,
            e.up_to,
            offset,
            &mut out,
        )?,
        UserEvent::Progress(e) => {
            // Its deliveries change no row (as `Delivered`); its ACKs do.
            fold_acks(
                state,
                (&e.user_id, &e.device_id),
                &e.acked_ids,
                e.acked_up_to,
                offset,
                &mut out,
            )?;
        }
        UserEvent::Read(e) => {
            let mut changes = RowChanges::new(&e.user_id);
            touch_named(state, &mut changes, &e.notification_ids, offset, |r| {
                r.read = true
            })?;
            if let (Some(up_to), Some(last)) = (non_negative(e.up_to), offset.checked_sub(1)) {
                for row in state.unread_up_to(&e.user_id, up_to.min(last))? {
                    changes.touch(row, |r| r.read = true);
                }
            }
            changes.into_writes(state, 0, &mut out)?;
        }
        UserEvent::Unread(e) => {
            let mut changes = RowChanges::new(&e.user_id);
            touch_named(state, &mut changes, &e.notification_ids, offset, |r| {
                r.read = false
            })?;
            changes.into_writes(state, 0, &mut out)?;
        }
        UserEvent::Archived(e) => {
            let mut changes = RowChanges::new(&e.user_id);
            touch_named(state, &mut changes, &e.notification_ids, offset, |r| {
                r.archived = true
            })?;
            changes.into_writes(state, 0, &mut out)?;
        }
        UserEvent::Unarchived(e) => {
            let mut changes = RowChanges::new(&e.user_id);
            touch_named(state, &mut changes, &e.notification_ids, offset, |r| {
                r.archived = false
            })?;
            // Invariant 3: a row back in the list may meet a listed row of its collapse key (one
            // that arrived while it was archived, so did not supersede it). The newer of the two
            // stays listed, as if both had been listed all along.
            let mut back: Vec<InboxRow> = changes
                .rows
                .values()
                .map(|(_, after)| after.clone())
                .filter(|r| r.listed() && r.collapse_key.is_some())
                .collect();
            back.sort_by_key(|r| std::cmp::Reverse(r.seq));
            let mut claimed = BTreeSet::new();
            for row in back {
                let key = row.collapse_key.clone().unwrap_or_default();
                if !claimed.insert(key.clone()) {
                    changes.touch(row, |r| r.superseded = true); // a newer one came back too
                    continue;
                }
                // Only a holder that existed when the unarchive was appended counts: a redelivered
                // unarchive (after a crash) can meet a row added after it, whose own fold already
                // decided between the two, and the row's later archive is redelivered too.
                if let Some(holder) = state.collapse_holder(&e.user_id, &key)?
                    && holder.seq != row.seq
                    && holder.seq < offset
                {
                    if holder.seq > row.seq {
                        changes.touch(row, |r| r.superseded = true);
                    } else {
                        changes.touch(holder, |r| r.superseded = true);
                    }
                }
            }
            changes.into_writes(state, 0, &mut out)?;
        }
        UserEvent::Expired(e) => {
            let mut changes = RowChanges::new(&e.user_id);
            let id = std::slice::from_ref(&e.notification_id);
            touch_named(state, &mut changes, id, offset, |r| r.expired = true)?;
            changes.into_writes(state, 0, &mut out)?;
        }
        UserEvent::Connected(e) => out.push(Write::KnowUser {
            user_id: e.user_id.clone(),
        }),
        UserEvent::Preferences(e) => out.push(Write::SetPreferences {
            user_id: e.user_id.clone(),
            preferences: e.preferences(),
        }),
    }
    Ok(out)
}

/// A device's ACKs at `offset`: by id (rows that precede the ACK) and cumulative.
fn fold_acks<S: ProjectionState>(
    state: &mut S,
    (user_id, device_id): (&str, &str),
    ids: &[String],
    up_to: Option<i64>,
    offset: u64,
    out: &mut Vec<Write>,
) -> Result<(), S::Error> {
    // A cumulative ACK can only cover rows that precede it: clamp, so a cursor from the future
    // cannot swallow notifications that do not exist yet.
    let up_to = match (non_negative(up_to), offset.checked_sub(1)) {
        (Some(up_to), Some(last)) => Some(up_to.min(last)),
        _ => None,
    };
    let ids: BTreeSet<&String> = ids.iter().collect();
    if !ids.is_empty() && state.advances_cursors_by_id() {
        return advance_by_id(state, (user_id, device_id), ids, up_to, offset, out);
    }
    for id in ids {
        if let Some(seq) = seq_before(state, user_id, id, offset)? {
            out.push(Write::AckSeq {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                seq,
            });
        }
    }
    if let Some(up_to) = up_to {
        let current = state.device_cursor(user_id, device_id)?;
        if current.is_none_or(|c| up_to > c) {
            out.push(Write::SetDeviceCursor {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                seq: up_to,
            });
        }
    }
    Ok(())
}

/// [`fold_acks`] for a store that [`ProjectionState::advances_cursors_by_id`]: the cursor moves
/// over the user's next rows while this ACK names them; the ids left (out of order, or past a
/// row the device has not acknowledged) are kept one by one, except those the cursor covers.
fn advance_by_id<S: ProjectionState>(
    state: &mut S,
    (user_id, device_id): (&str, &str),
    mut ids: BTreeSet<&String>,
    up_to: Option<u64>,
    offset: u64,
    out: &mut Vec<Write>,
) -> Result<(), S::Error> {
    let current = state.device_cursor(user_id, device_id)?;
    let mut cursor = current.max(up_to);
    // One read: the cursor passes the rows this ACK names and those that no longer wait for
    // the device (acknowledged earlier by id, or never sent), up to the first row that still
    // waits; so an ACK that fills a gap also passes the out-of-order ACKs after it, and a row
    // the user's preferences keep off their devices stops no cursor.
    if !ids.is_empty() {
        let limit = ids.len() + CURSOR_WALK_EXTRA_ROWS;
        let after = cursor;
        state.visit_rows_after(user_id, device_id, after, limit, &mut |row| {
            let passed = row.seq < offset && (ids.remove(&row.notification_id) || !row.waiting);
            if passed {
                cursor = Some(row.seq);
            }
            passed
        })?;
    }
    for id in ids {
        if let Some(seq) = seq_before(state, user_id, id, offset)?
            && cursor.is_none_or(|c| seq > c)
        {
            out.push(Write::AckSeq {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                seq,
            });
        }
    }
    if let Some(seq) = cursor
        && current.is_none_or(|c| seq > c)
    {
        out.push(Write::SetDeviceCursor {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            seq,
        });
    }
    Ok(())
}

/// Folds one event and applies its writes to `state`. Returns how many writes it made besides
/// a new row (which the fold inserted).
pub fn apply<S: ProjectionState>(
    state: &mut S,
    offset: u64,
    event: &UserEvent,
) -> Result<usize, S::Error> {
    let writes = fold(state, offset, event)?;
    let n = writes.len();
    for w in writes {
        state.write(w)?;
    }
    Ok(n)
}

/// A directory mutation. Absolute and idempotent like [`Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryWrite {
    UpsertUser { user_id: String, roles: Vec<String> },
    KnowUser { user_id: String },
    AddMember { group: String, user_id: String },
    RemoveMember { group: String, user_id: String },
    Subscribe { topic: String, user_id: String },
    Unsubscribe { topic: String, user_id: String },
    DefineRole { role: String, topics: Vec<String> },
}

/// The write a role definition causes.
pub fn fold_role(role: &crate::model::RoleDefinition) -> DirectoryWrite {
    DirectoryWrite::DefineRole {
        role: role.role.clone(),
        topics: role.topics.clone(),
    }
}

/// The writes a directory change causes.
pub fn fold_directory(change: &DirectoryChange) -> Vec<DirectoryWrite> {
    let user_id = change.user_id.clone();
    let target = change.target.clone().unwrap_or_default();
    let know = DirectoryWrite::KnowUser {
        user_id: user_id.clone(),
    };
    match change.op {
        DirectoryOp::UpsertUser => vec![DirectoryWrite::UpsertUser {
            user_id,
            roles: change.roles.clone(),
        }],
        DirectoryOp::JoinGroup => vec![
            know,
            DirectoryWrite::AddMember {
                group: target,
                user_id,
            },
        ],
        DirectoryOp::LeaveGroup => vec![DirectoryWrite::RemoveMember {
            group: target,
            user_id,
        }],
        DirectoryOp::SubscribeTopic => vec![
            know,
            DirectoryWrite::Subscribe {
                topic: target,
                user_id,
            },
        ],
        DirectoryOp::UnsubscribeTopic => vec![DirectoryWrite::Unsubscribe {
            topic: target,
            user_id,
        }],
    }
}
