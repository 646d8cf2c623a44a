//! An in-memory projection and the canonical snapshot every adapter can be compared against.
//!
//! [`MemProjection`] is the reference implementation of [`ProjectionState`]: unit and property
//! tests fold whole logs into it, and adapters dump their stores into a [`ProjectionSnapshot`]
//! so "replay equals live" and "adapter equals reference" are plain equality checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;

use crate::model::{Preferences, UserEvent};
use crate::projection::{DirectoryWrite, InboxRow, ProjectionState, Write, apply};
use crate::recipients::DirectoryState;

/// Everything a projection holds, in a canonical order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionSnapshot {
    /// (user, seq) → row.
    pub rows: BTreeMap<(String, u64), InboxRow>,
    /// user → unread count; users with a count of 0 may be absent.
    pub unread: BTreeMap<String, u64>,
    /// (user, device, seq) of per-id ACKs.
    pub acks: BTreeSet<(String, String, u64)>,
    /// (user, device) → cumulative ACK cursor.
    pub cursors: BTreeMap<(String, String), u64>,
    /// user → roles.
    pub users: BTreeMap<String, Vec<String>>,
    /// (group, user).
    pub groups: BTreeSet<(String, String)>,
    /// (topic, user).
    pub topics: BTreeSet<(String, String)>,
    /// role → topics its users may receive.
    pub roles: BTreeMap<String, Vec<String>>,
    /// user → their newest preferences document.
    pub preferences: BTreeMap<String, Preferences>,
}

impl ProjectionSnapshot {
    /// Broken invariants, one line each (empty when all hold).
    pub fn check_invariants(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
        let mut ids: HashMap<(&str, &str), u64> = HashMap::new();
        let mut collapse: HashMap<(&str, &str), u64> = HashMap::new();
        for ((user, seq), row) in &self.rows {
            if row.counts_as_unread() {
                *counted.entry(user).or_default() += 1;
            }
            if let Some(prev) = ids.insert((user, &row.notification_id), *seq) {
                problems.push(format!(
                    "user {user}: notification {} appears twice (seq {prev} and {seq})",
                    row.notification_id
                ));
            }
            if let (Some(k), true) = (&row.collapse_key, row.listed())
                && let Some(prev) = collapse.insert((user, k), *seq)
            {
                problems.push(format!(
                    "user {user}: collapse key {k} listed twice (seq {prev} and {seq})"
                ));
            }
        }
        let users: BTreeSet<&str> = counted
            .keys()
            .copied()
            .chain(self.unread.keys().map(String::as_str))
            .collect();
        for user in users {
            let stored = self.unread.get(user).copied().unwrap_or(0);
            let actual = counted.get(user).copied().unwrap_or(0);
            if stored != actual {
                problems.push(format!(
                    "user {user}: unread count is {stored} but {actual} rows are unread"
                ));
            }
        }
        problems
    }

    /// Differences from `other`, one line each, at most `limit` lines.
    pub fn diff(&self, other: &ProjectionSnapshot, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        diff_maps("row", &self.rows, &other.rows, &mut out);
        let zero = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            m.iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        diff_maps(
            "unread",
            &zero(&self.unread),
            &zero(&other.unread),
            &mut out,
        );
        diff_sets(
            "acknowledged row",
            &self.acknowledged(),
            &other.acknowledged(),
            &mut out,
        );
        diff_maps("user", &self.users, &other.users, &mut out);
        diff_sets("group member", &self.groups, &other.groups, &mut out);
        diff_sets("topic subscriber", &self.topics, &other.topics, &mut out);
        diff_maps("role", &self.roles, &other.roles, &mut out);
        diff_maps(
            "preferences",
            &self.preferences,
            &other.preferences,
            &mut out,
        );
        out.truncate(limit);
        out
    }

    /// (user, device, seq) of every row a device has acknowledged, by id or under its cursor,
    /// among the rows that can still be sent ([`InboxRow::never_sent`]): what reads see (a
    /// store may keep the same ACKs as fewer ids and a further cursor, and its cursor may pass
    /// rows that are never sent, see [`ProjectionState::advances_cursors_by_id`]). A cursor past
    /// a user's last row covers no row that can come later: a row added later has a higher seq
    /// than the ACK that set it.
    pub fn acknowledged(&self) -> BTreeSet<(String, String, u64)> {
        let sendable = |user: &String, seq: u64| {
            self.rows
                .get(&(user.clone(), seq))
                .is_none_or(|r| !r.never_sent())
        };
        let mut out: BTreeSet<_> = self
            .acks
            .iter()
            .filter(|(user, _, seq)| sendable(user, *seq))
            .cloned()
            .collect();
        for ((user, device), cursor) in &self.cursors {
            let first = (user.clone(), 0);
            let last = (user.clone(), *cursor);
            for ((user, seq), row) in self.rows.range(first..=last) {
                if !row.never_sent() {
                    out.insert((user.clone(), device.clone(), *seq));
                }
            }
        }
        out
    }

    /// Equal up to users whose unread count is stored as 0 versus absent, and up to how the
    /// acknowledged rows are kept ([`ProjectionSnapshot::acknowledged`]).
    pub fn same_as(&self, other: &ProjectionSnapshot) -> bool {
        self.diff(other, 1).is_empty()
    }
}

fn diff_maps<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    out: &mut Vec<String>,
) {
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{what} {k:?} only on the left: {v:?}")),
            Some(w) if w != v => out.push(format!("{what} {k:?} differs: {v:?} vs {w:?}")),
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            out.push(format!("{what} {k:?} only on the right: {w:?}"));
        }
    }
}

fn diff_sets<K: Ord + std::fmt::Debug>(
    what: &str,
    a: &BTreeSet<K>,
    b: &BTreeSet<K>,
    out: &mut Vec<String>,
) {
    for k in a.difference(b) {
        out.push(format!("{what} {k:?} only on the left"));
    }
    for k in b.difference(a) {
        out.push(format!("{what} {k:?} only on the right"));
    }
}

/// In-memory projection state: the reference fold target.
#[derive(Debug, Clone, Default)]
pub struct MemProjection {
    pub snapshot: ProjectionSnapshot,
    by_id: HashMap<(String, String), u64>,
}

impl MemProjection {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one user event found at `offset`.
    pub fn apply(&mut self, offset: u64, event: &UserEvent) {
        let Ok(_) = apply(self, offset, event);
    }

    /// Applies one directory write.
    pub fn apply_directory(&mut self, write: DirectoryWrite) {
        let s = &mut self.snapshot;
        match write {
            DirectoryWrite::UpsertUser { user_id, roles } => {
                s.users.insert(user_id, roles);
            }
            DirectoryWrite::KnowUser { user_id } => {
                s.users.entry(user_id).or_default();
            }
            DirectoryWrite::AddMember { group, user_id } => {
                s.groups.insert((group, user_id));
            }
            DirectoryWrite::RemoveMember { group, user_id } => {
                s.groups.remove(&(group, user_id));
            }
            DirectoryWrite::Subscribe { topic, user_id } => {
                s.topics.insert((topic, user_id));
            }
            DirectoryWrite::Unsubscribe { topic, user_id } => {
                s.topics.remove(&(topic, user_id));
            }
            DirectoryWrite::DefineRole { role, topics } => {
                s.roles.insert(role, topics);
            }
        }
    }

    /// Folds a whole sequence of (offset, event).
    pub fn fold_all<'a>(events: impl IntoIterator<Item = (u64, &'a UserEvent)>) -> Self {
        let mut m = MemProjection::new();
        for (offset, e) in events {
            m.apply(offset, e);
        }
        m
    }
}

impl ProjectionState for MemProjection {
    type Error = Infallible;

    fn row(
        &mut self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxRow>, Infallible> {
        Ok(self
            .by_id
            .get(&(user_id.to_owned(), notification_id.to_owned()))
            .and_then(|seq| self.snapshot.rows.get(&(user_id.to_owned(), *seq)))
            .cloned())
    }

    fn collapse_holder(
        &mut self,
        user_id: &str,
        collapse_key: &str,
    ) -> Result<Option<InboxRow>, Infallible> {
        Ok(self
            .snapshot
            .rows
            .range((user_id.to_owned(), 0)..=(user_id.to_owned(), u64::MAX))
            .map(|(_, r)| r)
            .find(|r| r.listed() && r.collapse_key.as_deref() == Some(collapse_key))
            .cloned())
    }

    fn unread_up_to(&mut self, user_id: &str, up_to: u64) -> Result<Vec<InboxRow>, Infallible> {
        Ok(self
            .snapshot
            .rows
            .range((user_id.to_owned(), 0)..=(user_id.to_owned(), up_to))
            .map(|(_, r)| r)
            .filter(|r| !r.read)
            .cloned()
            .collect())
    }

    fn unread_count(&mut self, user_id: &str) -> Result<u64, Infallible> {
        Ok(self.snapshot.unread.get(user_id).copied().unwrap_or(0))
    }

    fn device_cursor(&mut self, user_id: &str, device_id: &str) -> Result<Option<u64>, Infallible> {
        Ok(self
            .snapshot
            .cursors
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .copied())
    }

    fn write(&mut self, write: Write) -> Result<(), Infallible> {
        let s = &mut self.snapshot;
        match write {
            Write::PutRow(row) => {
                self.by_id
                    .insert((row.user_id.clone(), row.notification_id.clone()), row.seq);
                s.rows.insert((row.user_id.clone(), row.seq), row);
            }
            Write::SetUnreadCount { user_id, count } => {
                s.unread.insert(user_id, count);
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => {
                s.acks.insert((user_id, device_id, seq));
            }
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => {
                let c = s.cursors.entry((user_id, device_id)).or_insert(seq);
                *c = (*c).max(seq);
            }
            Write::KnowUser { user_id } => {
                s.users.entry(user_id).or_default();
            }
            Write::SetPreferences {
                user_id,
                preferences,
            } => {
                s.preferences.insert(user_id, preferences);
            }
        }
        Ok(())
    }
}

/// The reference directory: recipient resolution over a snapshot.
impl DirectoryState for ProjectionSnapshot {
    type Error = Infallible;

    fn group_members(&mut self, group: &str) -> Result<Vec<String>, Infallible> {
        Ok(members(&self.groups, group))
    }

    fn topic_subscribers(&mut self, topic: &str) -> Result<Vec<String>, Infallible> {
        Ok(members(&self.topics, topic))
    }

    fn user_roles(&mut self, user_id: &str) -> Result<Vec<String>, Infallible> {
        Ok(self.users.get(user_id).cloned().unwrap_or_default())
    }

    fn role_topics(&mut self, role: &str) -> Result<Vec<String>, Infallible> {
        Ok(self.roles.get(role).cloned().unwrap_or_default())
    }

    fn all_users(&mut self) -> Result<Vec<String>, Infallible> {
        Ok(self.users.keys().cloned().collect())
    }
}

/// The users of a (set name, user) set under `name`.
fn members(set: &BTreeSet<(String, String)>, name: &str) -> Vec<String> {
    set.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, u)| u.clone())
        .collect()
}
