//! Folding a batch of events against a store that is read asynchronously and written once per
//! batch (ScyllaDB): the fold is synchronous, so it runs over [`BatchState`], a cache of the
//! facts it reads. A read the cache cannot answer fails with the [`Need`]ed fact; the adapter
//! fetches it, [`fills`](BatchState::fill) it in, and folds the same event again. The fold
//! reads everything before it writes anything, so a failed attempt leaves nothing behind.
//!
//! Facts fetched from the store never override what this batch already wrote: the store does
//! not see the batch's writes until the adapter flushes [`BatchState::into_writes`], so the
//! cache is the newer truth for every row, count and cursor the batch touched.
//!
//! [`prefetch`] lists the facts a batch will probably read, so an adapter can fetch them
//! concurrently up front and fold with few or no round trips in between.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::UserEvent;
use crate::projection::{self, InboxRow, ProjectionState, Write};

/// A fact the fold read and the cache lacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Need {
    /// The user's row for a notification id (or that there is none).
    Row {
        user_id: String,
        notification_id: String,
    },
    /// The user's listed row holding a collapse key (or that there is none).
    CollapseHolder { user_id: String, key: String },
    /// Every row of the user that is not read.
    Unread { user_id: String },
    /// The user's stored unread count.
    UnreadCount { user_id: String },
    /// A device's cumulative ACK cursor.
    Cursor { user_id: String, device_id: String },
}

/// The store's answer to a [`Need`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// For `Row` and `CollapseHolder`.
    Row(Option<InboxRow>),
    /// For `Unread`.
    Rows(Vec<InboxRow>),
    /// For `UnreadCount`.
    Count(u64),
    /// For `Cursor`.
    Cursor(Option<u64>),
}

/// A fact was filled in that does not answer its need (an adapter bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the fact {fact} does not answer {need}")]
pub struct MismatchedFact {
    pub need: String,
    pub fact: String,
}

#[derive(Debug, Default)]
struct UserCache {
    /// Known rows by seq: fetched from the store or written by this batch (which wins).
    rows: BTreeMap<u64, InboxRow>,
    /// Notification id → seq, `None` when known to be absent.
    by_id: HashMap<String, Option<u64>>,
    /// Collapse key → seq of its listed holder, `None` when known to have none.
    collapse: HashMap<String, Option<u64>>,
    /// `rows` holds every row of the user that is not read.
    unread_complete: bool,
    unread_count: Option<u64>,
    cursors: HashMap<String, Option<u64>>,
}

impl UserCache {
    fn know_row(&mut self, row: InboxRow) {
        self.by_id
            .entry(row.notification_id.clone())
            .or_insert(Some(row.seq));
        self.rows.entry(row.seq).or_insert(row);
    }

    fn put_row(&mut self, row: InboxRow) {
        self.by_id
            .insert(row.notification_id.clone(), Some(row.seq));
        if let Some(key) = &row.collapse_key {
            if row.listed() {
                self.collapse.insert(key.clone(), Some(row.seq));
            } else if self.collapse.get(key) == Some(&Some(row.seq)) {
                // Invariant 3: it was the only listed row with this key.
                self.collapse.insert(key.clone(), None);
            }
        }
        self.rows.insert(row.seq, row);
    }
}

/// The fold's state for one batch: see the module documentation.
#[derive(Debug, Default)]
pub struct BatchState {
    users: HashMap<String, UserCache>,
    writes: Vec<(u64, Write)>,
}

impl BatchState {
    pub fn new() -> Self {
        Self::default()
    }

    fn user(&mut self, user_id: &str) -> &mut UserCache {
        if !self.users.contains_key(user_id) {
            self.users.insert(user_id.to_owned(), UserCache::default());
        }
        self.users.get_mut(user_id).expect("inserted above")
    }

    /// Folds `event` (at log `offset`) over the cache. On `Err`, nothing changed: fill the
    /// needed fact and call again.
    pub fn try_apply(&mut self, offset: u64, event: &UserEvent) -> Result<usize, Need> {
        let writes = projection::fold(self, offset, event)?;
        let n = writes.len();
        for w in writes {
            self.write(w.clone())?;
            self.writes.push((offset, w));
        }
        Ok(n)
    }

    /// Records the store's answer to `need`. Facts the batch already knows (it wrote or
    /// fetched them) are kept, as they are newer than the store's.
    pub fn fill(&mut self, need: &Need, fact: Fact) -> Result<(), MismatchedFact> {
        let mismatch = |fact: Fact| MismatchedFact {
            need: format!("{need:?}"),
            fact: format!("{fact:?}"),
        };
        match (need, fact) {
            (
                Need::Row {
                    user_id,
                    notification_id,
                },
                Fact::Row(row),
            ) => {
                let u = self.user(user_id);
                match row {
                    Some(r) if r.notification_id == *notification_id => u.know_row(r),
                    Some(r) => return Err(mismatch(Fact::Row(Some(r)))),
                    None => {
                        u.by_id.entry(notification_id.clone()).or_insert(None);
                    }
                }
            }
            (Need::CollapseHolder { user_id, key }, Fact::Row(row)) => {
                let u = self.user(user_id);
                if u.collapse.contains_key(key) {
                    return Ok(());
                }
                let holder = match row {
                    Some(r) => {
                        let seq = r.seq;
                        u.know_row(r);
                        // The batch may have changed the stored holder: judge the cached row.
                        let current = &u.rows[&seq];
                        (current.listed() && current.collapse_key.as_deref() == Some(key))
                            .then_some(seq)
                    }
                    None => None,
                };
                u.collapse.insert(key.clone(), holder);
            }
            (Need::Unread { user_id }, Fact::Rows(rows)) => {
                let u = self.user(user_id);
                for r in rows {
                    u.know_row(r);
                }
                u.unread_complete = true;
            }
            (Need::UnreadCount { user_id }, Fact::Count(n)) => {
                let u = self.user(user_id);
                u.unread_count.get_or_insert(n);
            }
            (Need::Cursor { user_id, device_id }, Fact::Cursor(c)) => {
                self.user(user_id)
                    .cursors
                    .entry(device_id.clone())
                    .or_insert(c);
            }
            (_, fact) => return Err(mismatch(fact)),
        }
        Ok(())
    }

    /// Every write of the batch with the offset of the event that caused it, in fold order.
    pub fn into_writes(self) -> Vec<(u64, Write)> {
        self.writes
    }
}

impl ProjectionState for BatchState {
    type Error = Need;

    fn row(&mut self, user_id: &str, notification_id: &str) -> Result<Option<InboxRow>, Need> {
        let u = self.user(user_id);
        match u.by_id.get(notification_id) {
            Some(Some(seq)) => Ok(u.rows.get(seq).cloned()),
            Some(None) => Ok(None),
            None => Err(Need::Row {
                user_id: user_id.to_owned(),
                notification_id: notification_id.to_owned(),
            }),
        }
    }

    fn collapse_holder(&mut self, user_id: &str, key: &str) -> Result<Option<InboxRow>, Need> {
        let u = self.user(user_id);
        match u.collapse.get(key) {
            Some(Some(seq)) => Ok(u.rows.get(seq).cloned()),
            Some(None) => Ok(None),
            None => Err(Need::CollapseHolder {
                user_id: user_id.to_owned(),
                key: key.to_owned(),
            }),
        }
    }

    fn unread_up_to(&mut self, user_id: &str, up_to: u64) -> Result<Vec<InboxRow>, Need> {
        let u = self.user(user_id);
        if !u.unread_complete {
            return Err(Need::Unread {
                user_id: user_id.to_owned(),
            });
        }
        Ok(u.rows
            .range(..=up_to)
            .map(|(_, r)| r)
            .filter(|r| !r.read)
            .cloned()
            .collect())
    }

    fn unread_count(&mut self, user_id: &str) -> Result<u64, Need> {
        self.user(user_id)
            .unread_count
            .ok_or_else(|| Need::UnreadCount {
                user_id: user_id.to_owned(),
            })
    }

    fn device_cursor(&mut self, user_id: &str, device_id: &str) -> Result<Option<u64>, Need> {
        match self.user(user_id).cursors.get(device_id) {
            Some(c) => Ok(*c),
            None => Err(Need::Cursor {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
            }),
        }
    }

    fn insert_new(&mut self, row: InboxRow) -> Result<bool, Need> {
        if self.seq_of(&row.user_id, &row.notification_id)?.is_some() {
            return Ok(false);
        }
        // A new row's seq is its event's offset.
        let (offset, write) = (row.seq, Write::PutRow(row));
        self.write(write.clone())?;
        self.writes.push((offset, write));
        Ok(true)
    }

    fn write(&mut self, write: Write) -> Result<(), Need> {
        match write {
            Write::PutRow(row) => {
                let user = row.user_id.clone();
                self.user(&user).put_row(row);
            }
            Write::SetUnreadCount { user_id, count } => {
                self.user(&user_id).unread_count = Some(count);
            }
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => {
                let c = self.user(&user_id).cursors.entry(device_id).or_insert(None);
                *c = Some(c.map_or(seq, |c| c.max(seq)));
            }
            Write::AckSeq { .. } | Write::KnowUser { .. } | Write::SetPreferences { .. } => {}
        }
        Ok(())
    }
}

/// The facts folding `events` will probably read, each once: fetch them up front, then fold.
pub fn prefetch<'a>(events: impl IntoIterator<Item = &'a UserEvent>) -> BTreeSet<Need> {
    let mut needs = BTreeSet::new();
    let row = |user: &str, id: &str| Need::Row {
        user_id: user.to_owned(),
        notification_id: id.to_owned(),
    };
    let count = |user: &str| Need::UnreadCount {
        user_id: user.to_owned(),
    };
    for event in events {
        match event {
            UserEvent::Added(e) => {
                needs.insert(row(&e.user_id, &e.notification_id));
                if let Some(key) = &e.collapse_key {
                    needs.insert(Need::CollapseHolder {
                        user_id: e.user_id.clone(),
                        key: key.clone(),
                    });
                }
                needs.insert(count(&e.user_id));
            }
            // The fold ignores deliveries: nothing to fetch.
            UserEvent::Delivered(_) => {}
            UserEvent::Acked(e) => {
                needs.extend(e.notification_ids.iter().map(|id| row(&e.user_id, id)));
                if e.up_to.is_some() {
                    needs.insert(Need::Cursor {
                        user_id: e.user_id.clone(),
                        device_id: e.device_id.clone(),
                    });
                }
            }
            UserEvent::Progress(e) => {
                needs.extend(e.acked_ids.iter().map(|id| row(&e.user_id, id)));
                if e.acked_up_to.is_some() {
                    needs.insert(Need::Cursor {
                        user_id: e.user_id.clone(),
                        device_id: e.device_id.clone(),
                    });
                }
            }
            UserEvent::Read(e)
            | UserEvent::Unread(e)
            | UserEvent::Archived(e)
            | UserEvent::Unarchived(e) => {
                needs.extend(e.notification_ids.iter().map(|id| row(&e.user_id, id)));
                if e.up_to.is_some() && matches!(event, UserEvent::Read(_)) {
                    needs.insert(Need::Unread {
                        user_id: e.user_id.clone(),
                    });
                }
                needs.insert(count(&e.user_id));
            }
            UserEvent::Expired(e) => {
                needs.insert(row(&e.user_id, &e.notification_id));
                needs.insert(count(&e.user_id));
            }
            UserEvent::Connected(_) | UserEvent::Preferences(_) => {}
        }
    }
    needs
}

/// Answers `need` from a synchronous state (the reference [`crate::mem::MemProjection`] in
/// tests, or any store that implements [`ProjectionState`]).
pub fn answer<S: ProjectionState>(state: &mut S, need: &Need) -> Result<Fact, S::Error> {
    Ok(match need {
        Need::Row {
            user_id,
            notification_id,
        } => Fact::Row(state.row(user_id, notification_id)?),
        Need::CollapseHolder { user_id, key } => Fact::Row(state.collapse_holder(user_id, key)?),
        Need::Unread { user_id } => Fact::Rows(state.unread_up_to(user_id, u64::MAX)?),
        Need::UnreadCount { user_id } => Fact::Count(state.unread_count(user_id)?),
        Need::Cursor { user_id, device_id } => {
            Fact::Cursor(state.device_cursor(user_id, device_id)?)
        }
    })
}
