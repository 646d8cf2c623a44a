//! The write transaction: [`ProjectionState`] (the fold's reads and writes) and
//! [`StageTransaction`] (stage offsets, directory, expansions, schedule) over SQLite, for the
//! batch loop in `herald_ports::transactional`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use herald_core::projection::{DirectoryWrite, InboxRow, ProjectionState, RowAfter, Write};
use herald_ports::transactional::StageTransaction;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{ROW_COLUMNS, to_row};

/// Most recipients an expansion keeps inline, in `expansions.users` (see the schema): one row,
/// its list in overflow pages when long, instead of a row per recipient in `expansion_users`.
/// A broadcast to 1,000 users spent 4.6% of the fanout's CPU inserting those rows. At this
/// bound a list is at most about 540 KB (ids of 128 bytes), 30–60 KB with typical ids.
pub(super) const MAX_INLINE_RECIPIENTS: usize = 4096;

/// The statements run for every notification, built once (not formatted per call).
static ROW_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND notification_id = ?2")
});
static PUT_ROW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT OR REPLACE INTO inbox ({ROW_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    )
});
/// A new row, unless the user has one of its id (`inbox_by_id`) or at its seq (the key).
static INSERT_NEW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO inbox ({ROW_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
         ON CONFLICT DO NOTHING"
    )
});

/// What the projection's file holds as of the writer's last commit, for the users the writer
/// touched lately: who has a `users` row, and each user's unread count. A SQLite projection has
/// one writer (the data directory's lock), no statement deletes a `users` row, and only
/// [`TxState::finish`] writes `unread`, so these stay true until the writer's next commit,
/// which adds what it learned ([`Committed::absorb`]); a transaction that fails adds nothing.
/// With it, a batch skips the read of each user's count and the insert-or-ignore of each user
/// for the users it touched in earlier batches: in a batch of events for many users (a burst
/// of single-user requests) those were two of the four statements per event.
#[derive(Debug, Default)]
pub(super) struct Committed {
    known: HashSet<String>,
    unread: HashMap<String, u64>,
}

/// Most users [`Committed`] holds in each of its two maps; a map full when a new user comes
/// starts over empty (the users of the batches after it are read again, as before there was a
/// cache). At most about 13 MiB for both at 40-byte ids (the hash tables' buckets included;
/// emptied, a map keeps its buckets).
pub(super) const MAX_COMMITTED_USERS: usize = 65_536;

impl Committed {
    /// How many users each map holds: (known, unread counts).
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.known.len(), self.unread.len())
    }

    /// Adds what a committed transaction read or wrote.
    fn absorb(&mut self, learned: Learned) {
        for user_id in learned.known {
            if self.known.len() >= MAX_COMMITTED_USERS && !self.known.contains(&user_id) {
                self.known.clear();
            }
            self.known.insert(user_id);
        }
        for (user_id, (count, _)) in learned.unread {
            if self.unread.len() >= MAX_COMMITTED_USERS && !self.unread.contains_key(&user_id) {
                self.unread.clear();
            }
            self.unread.insert(user_id, count);
        }
    }
}

/// What a transaction read or wrote of [`Committed`]'s kind, to add once it has committed.
pub(super) struct Learned {
    known: HashSet<String>,
    unread: HashMap<String, (u64, bool)>,
}

impl Learned {
    /// Adds it to `committed`: call only after the transaction committed.
    pub(super) fn committed(self, committed: &mut Committed) {
        committed.absorb(self);
    }
}

/// The fold's view of a SQLite transaction. A batch's events often touch the same users, so
/// unread counts are read once per user and written back once, at [`TxState::finish`], and a
/// user already known in this transaction is not inserted again. Both caches hold at most one
/// entry per user of the batch and end with the transaction; what they hold at its end goes to
/// [`Committed`] once it has committed.
pub(super) struct TxState<'a, 'c> {
    pub(super) tx: &'a Transaction<'c>,
    /// As of the last commit.
    committed: &'a Committed,
    /// Unread counts read or set in this transaction; `true`: not yet written.
    unread: HashMap<String, (u64, bool)>,
    known: HashSet<String>,
    /// Devices (user, device) known in this transaction to have no `acks` row at all (most: a
    /// device that ACKs in order keeps none): their cursor walks need not look for ACKs by id,
    /// and their cursor's moves have none to delete. Forgotten on the device's next ACK by id.
    no_acks: HashSet<(String, String)>,
}

impl<'a, 'c> TxState<'a, 'c> {
    pub(super) fn new(tx: &'a Transaction<'c>, committed: &'a Committed) -> Self {
        TxState {
            tx,
            committed,
            unread: HashMap::new(),
            known: HashSet::new(),
            no_acks: HashSet::new(),
        }
    }

    /// Writes what the caches hold back; call before committing, and give what it returns to
    /// [`Committed`] once the commit succeeded.
    pub(super) fn finish(self) -> rusqlite::Result<Learned> {
        {
            let mut stmt = self
                .tx
                .prepare_cached("INSERT OR REPLACE INTO unread (user_id, n) VALUES (?1, ?2)")?;
            for (user_id, (count, dirty)) in &self.unread {
                if *dirty {
                    stmt.execute(params![user_id, *count as i64])?;
                }
            }
        }
        Ok(Learned {
            known: self.known,
            unread: self.unread,
        })
    }

    fn know_user(&mut self, user_id: String) -> rusqlite::Result<()> {
        if !self.known.contains(&user_id) {
            if !self.committed.known.contains(&user_id) {
                know_user(self.tx, &user_id)?;
            }
            self.known.insert(user_id);
        }
        Ok(())
    }
}

impl ProjectionState for TxState<'_, '_> {
    type Error = rusqlite::Error;

    fn row(&mut self, user_id: &str, notification_id: &str) -> rusqlite::Result<Option<InboxRow>> {
        self.tx
            .prepare_cached(&ROW_BY_ID)?
            .query_row(params![user_id, notification_id], to_row)
            .optional()
    }

    fn seq_of(&mut self, user_id: &str, notification_id: &str) -> rusqlite::Result<Option<u64>> {
        // From `inbox_by_id`, then the row's seq: its entries carry the rowid (in stores made
        // before the inbox became a rowid table, the primary key: no row is read there). An
        // index on (user_id, notification_id, seq) that answers alone measured no faster.
        Ok(self
            .tx
            .prepare_cached("SELECT seq FROM inbox WHERE user_id = ?1 AND notification_id = ?2")?
            .query_row(params![user_id, notification_id], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
    }

    fn collapse_holder(&mut self, user_id: &str, key: &str) -> rusqlite::Result<Option<InboxRow>> {
        self.tx
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND collapse_key = ?2 \
                 AND archived = 0 AND expired = 0 AND superseded = 0 ORDER BY seq DESC LIMIT 1"
            ))?
            .query_row(params![user_id, key], to_row)
            .optional()
    }

    fn unread_up_to(&mut self, user_id: &str, up_to: u64) -> rusqlite::Result<Vec<InboxRow>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = ?1 AND read = 0 AND seq <= ?2 ORDER BY seq"
        ))?;
        let rows = stmt.query_map(params![user_id, up_to.min(i64::MAX as u64) as i64], to_row)?;
        rows.collect()
    }

    fn unread_count(&mut self, user_id: &str) -> rusqlite::Result<u64> {
        if let Some((count, _)) = self.unread.get(user_id) {
            return Ok(*count);
        }
        if let Some(count) = self.committed.unread.get(user_id) {
            self.unread.insert(user_id.to_owned(), (*count, false));
            return Ok(*count);
        }
        let count = self
            .tx
            .prepare_cached("SELECT n FROM unread WHERE user_id = ?1")?
            .query_row([user_id], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64;
        self.unread.insert(user_id.to_owned(), (count, false));
        Ok(count)
    }

    fn device_cursor(&mut self, user_id: &str, device_id: &str) -> rusqlite::Result<Option<u64>> {
        Ok(self
            .tx
            .prepare_cached("SELECT seq FROM cursors WHERE user_id = ?1 AND device_id = ?2")?
            .query_row([user_id, device_id], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64))
    }

    fn advances_cursors_by_id(&self) -> bool {
        true
    }

    fn visit_rows_after(
        &mut self,
        user_id: &str,
        device_id: &str,
        after: Option<u64>,
        limit: usize,
        visit: &mut dyn FnMut(&RowAfter) -> bool,
    ) -> rusqlite::Result<()> {
        let after = after.map_or(-1, |a| a.min(i64::MAX as u64) as i64);
        let limit = limit.min(i64::MAX as usize) as i64;
        // `waiting` is `InboxRow::never_sent` negated, and no ACK of the row by id. A device
        // that ACKs in order has no `acks` rows: one probe per transaction says so, instead of
        // one per row. Stepped one row at a time: the walk usually stops a row past the ids it
        // names.
        let key = (user_id.to_owned(), device_id.to_owned());
        let acked = !self.no_acks.contains(&key) && {
            let any = self
                .tx
                .prepare_cached("SELECT 1 FROM acks WHERE user_id = ?1 AND device_id = ?2 LIMIT 1")?
                .exists(params![user_id, device_id])?;
            if !any {
                self.no_acks.insert(key);
            }
            any
        };
        let (mut stmt, bound) = if acked {
            let stmt = self.tx.prepare_cached(
                "SELECT i.seq, i.notification_id, \
                 i.live = 1 AND i.superseded = 0 AND i.expired = 0 AND NOT EXISTS \
                 (SELECT 1 FROM acks a WHERE a.user_id = ?1 AND a.device_id = ?4 AND a.seq = i.seq) \
                 FROM inbox i WHERE i.user_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
            )?;
            (stmt, 4)
        } else {
            let stmt = self.tx.prepare_cached(
                "SELECT seq, notification_id, live = 1 AND superseded = 0 AND expired = 0 \
                 FROM inbox WHERE user_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            (stmt, 3)
        };
        let all: [&dyn rusqlite::ToSql; 4] = [&user_id, &after, &limit, &device_id];
        let mut rows = stmt.query(&all[..bound])?;
        while let Some(r) = rows.next()? {
            let row = RowAfter {
                seq: r.get::<_, i64>(0)? as u64,
                notification_id: r.get(1)?,
                waiting: r.get(2)?,
            };
            if !visit(&row) {
                break;
            }
        }
        Ok(())
    }

    fn insert_new(&mut self, row: InboxRow) -> rusqlite::Result<bool> {
        // One statement: the uniqueness check is the insert's own descent of `inbox_by_id`.
        Ok(put_row(self.tx, &INSERT_NEW, &row)? == 1)
    }

    fn write(&mut self, write: Write) -> rusqlite::Result<()> {
        match write {
            Write::PutRow(r) => {
                put_row(self.tx, &PUT_ROW, &r)?;
            }
            Write::SetUnreadCount { user_id, count } => {
                self.unread.insert(user_id, (count, true));
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => {
                self.tx
                    .prepare_cached("INSERT OR IGNORE INTO acks VALUES (?1, ?2, ?3)")?
                    .execute(params![user_id, device_id, seq as i64])?;
                self.no_acks.remove(&(user_id, device_id));
            }
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO cursors VALUES (?1, ?2, ?3) ON CONFLICT (user_id, device_id) \
                         DO UPDATE SET seq = max(seq, excluded.seq)",
                    )?
                    .execute(params![user_id, device_id, seq as i64])?;
                // The ACKs by id the cursor now covers say nothing it does not: the table
                // keeps only those past a device's cursor.
                let key = (user_id, device_id);
                if !self.no_acks.contains(&key) {
                    self.tx
                        .prepare_cached(
                            "DELETE FROM acks WHERE user_id = ?1 AND device_id = ?2 AND seq <= ?3",
                        )?
                        .execute(params![key.0, key.1, seq as i64])?;
                }
            }
            Write::KnowUser { user_id } => self.know_user(user_id)?,
            Write::SetPreferences {
                user_id,
                preferences,
            } => {
                let doc = serde_json::to_string(&preferences).expect("preferences serialize");
                self.tx
                    .prepare_cached("INSERT OR REPLACE INTO preferences VALUES (?1, ?2)")?
                    .execute(params![user_id, doc])?;
            }
        }
        Ok(())
    }
}

/// Runs `sql` (an insert of the whole row) with `r`'s columns; how many rows it inserted.
fn put_row(tx: &Transaction<'_>, sql: &str, r: &InboxRow) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params![
        r.user_id,
        r.seq as i64,
        r.notification_id,
        r.event_type,
        r.source,
        r.payload,
        r.priority.as_str(),
        r.collapse_key,
        r.created_at,
        r.deliver_at,
        r.expires_at,
        r.read,
        r.archived,
        r.expired,
        r.superseded,
        r.live
    ])
}

fn know_user(tx: &Transaction<'_>, user_id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO users (user_id, roles) VALUES (?1, '[]')")?
        .execute([user_id])?;
    Ok(())
}

impl StageTransaction for TxState<'_, '_> {
    /// All of the stage's offsets: the write transaction holds SQLite's one write lock, so no
    /// other writer can move them before this one commits.
    fn applied_offsets(
        &mut self,
        consumer: &str,
        _: &[(u32, u64)],
    ) -> rusqlite::Result<BTreeMap<u32, u64>> {
        offsets_of(self.tx, consumer)
    }

    fn store_offsets(&mut self, consumer: &str, offsets: &[(u32, u64)]) -> rusqlite::Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO consumer_offsets VALUES (?1, ?2, ?3) ON CONFLICT (consumer, partition) \
             DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
        )?;
        for (p, o) in offsets {
            stmt.execute(params![consumer, p, *o as i64])?;
        }
        Ok(())
    }

    fn directory_write(&mut self, write: DirectoryWrite) -> rusqlite::Result<()> {
        match write {
            DirectoryWrite::UpsertUser { user_id, roles } => {
                let roles = serde_json::to_string(&roles).expect("strings serialize");
                self.tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO users (user_id, roles) VALUES (?1, ?2)",
                    )?
                    .execute(params![user_id, roles])?;
            }
            DirectoryWrite::KnowUser { user_id } => self.know_user(user_id)?,
            DirectoryWrite::AddMember { group, user_id } => {
                self.tx
                    .prepare_cached("INSERT OR IGNORE INTO group_members VALUES (?1, ?2)")?
                    .execute(params![group, user_id])?;
            }
            DirectoryWrite::RemoveMember { group, user_id } => {
                self.tx
                    .prepare_cached(
                        "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                    )?
                    .execute(params![group, user_id])?;
            }
            DirectoryWrite::Subscribe { topic, user_id } => {
                self.tx
                    .prepare_cached("INSERT OR IGNORE INTO topic_subscribers VALUES (?1, ?2)")?
                    .execute(params![topic, user_id])?;
            }
            DirectoryWrite::Unsubscribe { topic, user_id } => {
                self.tx
                    .prepare_cached(
                        "DELETE FROM topic_subscribers WHERE topic = ?1 AND user_id = ?2",
                    )?
                    .execute(params![topic, user_id])?;
            }
            DirectoryWrite::DefineRole { role, topics } => {
                let topics = serde_json::to_string(&topics).expect("strings serialize");
                self.tx
                    .prepare_cached("INSERT OR REPLACE INTO roles (role, topics) VALUES (?1, ?2)")?
                    .execute(params![role, topics])?;
            }
        }
        Ok(())
    }

    fn record_expansion(&mut self, id: &str, users: &[String]) -> rusqlite::Result<()> {
        let tx = self.tx;
        let inline = (users.len() <= MAX_INLINE_RECIPIENTS)
            .then(|| serde_json::to_string(users).expect("strings serialize"));
        let first = tx
            .prepare_cached(
                "INSERT INTO expansions (notification_id, recipients, users) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (notification_id) DO NOTHING",
            )?
            .execute(params![id, users.len() as i64, inline])?
            == 1;
        if !first {
            // Recorded before (a repeat after a crash or a race): the count is the latest, as
            // it always was, and the recipients are the union, so the new ones go to the table.
            tx.prepare_cached("UPDATE expansions SET recipients = ?2 WHERE notification_id = ?1")?
                .execute(params![id, users.len() as i64])?;
        }
        tx.prepare_cached("DELETE FROM scheduled WHERE notification_id = ?1")?
            .execute([id])?;
        if !first || inline.is_none() {
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO expansion_users VALUES (?1, ?2)")?;
            for u in users {
                stmt.execute(params![id, u])?;
            }
        }
        Ok(())
    }

    fn schedule(&mut self, id: &str, due: i64, request: &[u8]) -> rusqlite::Result<()> {
        // An id already expanded is never scheduled again.
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO scheduled SELECT ?1, ?2, ?3 \
                 WHERE NOT EXISTS (SELECT 1 FROM expansions WHERE notification_id = ?1)",
            )?
            .execute(params![id, due, request])?;
        Ok(())
    }
}

/// The next offsets `consumer` has applied, by partition.
pub(super) fn offsets_of(
    conn: &Connection,
    consumer: &str,
) -> rusqlite::Result<BTreeMap<u32, u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = ?1",
    )?;
    let rows = stmt.query_map([consumer], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use herald_core::projection::{ProjectionState, Write};

    use super::*;

    fn store() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        conn
    }

    /// Sets `user`'s unread count to `count` and knows them, in `tx`.
    fn set(state: &mut TxState<'_, '_>, user: &str, count: u64) {
        state
            .write(Write::SetUnreadCount {
                user_id: user.into(),
                count,
            })
            .unwrap();
        state
            .write(Write::KnowUser {
                user_id: user.into(),
            })
            .unwrap();
    }

    fn users(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_committed_transaction_informs_the_next() {
        let mut conn = store();
        // (A transaction that fails teaches nothing: `projection::tests`.)
        let mut committed = Committed::default();
        {
            let tx = conn.transaction().unwrap();
            let mut state = TxState::new(&tx, &committed);
            assert_eq!(state.unread_count("alice").unwrap(), 0, "nothing was kept");
            set(&mut state, "alice", 3);
            let learned = state.finish().unwrap();
            tx.commit().unwrap();
            learned.committed(&mut committed);
        }
        assert_eq!(committed.unread.get("alice"), Some(&3));
        assert!(committed.known.contains("alice"));
        assert_eq!(users(&conn), 1);
        // Change the file behind the writer's back (nothing else may write it) to tell where
        // the next transaction reads from: `committed`, with no statement for either.
        conn.execute_batch("UPDATE unread SET n = 99; DELETE FROM users")
            .unwrap();
        {
            let tx = conn.transaction().unwrap();
            let mut state = TxState::new(&tx, &committed);
            assert_eq!(state.unread_count("alice").unwrap(), 3);
            state
                .write(Write::KnowUser {
                    user_id: "alice".into(),
                })
                .unwrap();
            // A user not in `committed` is read from the file and inserted.
            assert_eq!(state.unread_count("bob").unwrap(), 0);
            set(&mut state, "bob", 1);
            let learned = state.finish().unwrap();
            tx.commit().unwrap();
            learned.committed(&mut committed);
        }
        assert_eq!(users(&conn), 1, "bob inserted, alice not again");
        assert_eq!(committed.unread.get("bob"), Some(&1));
    }

    #[test]
    fn committed_holds_at_most_its_bound_of_users() {
        let learned = |round: usize, n: usize| Learned {
            known: (0..n).map(|i| format!("u{round}-{i}")).collect(),
            unread: (0..n)
                .map(|i| (format!("u{round}-{i}"), (1, false)))
                .collect(),
        };
        let mut committed = Committed::default();
        // Half the bound, the same half again (nothing new: nothing dropped), then more than
        // the bound in one transaction.
        for (round, n) in [
            (0, MAX_COMMITTED_USERS / 2),
            (0, MAX_COMMITTED_USERS / 2),
            (1, MAX_COMMITTED_USERS + 10),
        ] {
            learned(round, n).committed(&mut committed);
            let (known, unread) = committed.sizes();
            assert!(known <= MAX_COMMITTED_USERS && unread <= MAX_COMMITTED_USERS);
            if round == 0 {
                assert_eq!((known, unread), (n, n), "nothing new: nothing dropped");
            } else {
                assert!(known > 0 && unread > 0, "started over, not emptied");
            }
        }
        // Full: a known user does not start it over, a new one does.
        let mut committed = Committed::default();
        learned(3, MAX_COMMITTED_USERS).committed(&mut committed);
        assert_eq!(
            committed.sizes(),
            (MAX_COMMITTED_USERS, MAX_COMMITTED_USERS)
        );
        learned(3, 1).committed(&mut committed);
        assert_eq!(
            committed.sizes(),
            (MAX_COMMITTED_USERS, MAX_COMMITTED_USERS)
        );
        learned(4, 1).committed(&mut committed);
        assert_eq!(committed.sizes(), (1, 1));
        learned(2, 1).committed(&mut committed);
        learned(2, 1).committed(&mut committed);
        let before = committed.known.len();
        learned(2, 1).committed(&mut committed);
        assert_eq!(
            committed.known.len(),
            before,
            "a known user is not counted again"
        );
    }
}
