//! The write transaction: [`ProjectionState`] (the fold's reads and writes) and
//! [`StageTransaction`] (stage offsets, directory, expansions, schedule) over PostgreSQL, for the
//! batch loop in `herald_ports::transactional`.
//!
//! Every statement runs prepared, from its connection's [`Statements`]: given as text, each
//! call was two round trips (prepare, then run) and a parse on the server.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use herald_core::model::UserEvent;
use herald_core::projection::{DirectoryWrite, InboxRow, ProjectionState, Write};
use herald_ports::projection::Positioned;
use herald_ports::transactional::StageTransaction;
use postgres::types::ToSql;
use postgres::{Statement, Transaction};

use crate::pool::Statements;
use crate::{ROW_COLUMNS, to_row};

/// The placeholders of a whole row, in [`ROW_COLUMNS`]' order (see [`TxState::put_row`]).
const ROW_VALUES: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16";

/// The statements that name [`ROW_COLUMNS`], built once.
static ROW_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND notification_id = $2")
});
static COLLAPSE_HOLDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND collapse_key = $2 \
         AND NOT archived AND NOT expired AND NOT superseded ORDER BY seq DESC LIMIT 1"
    )
});
static UNREAD_UP_TO: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ROW_COLUMNS} FROM inbox WHERE user_id = $1 AND NOT read AND seq <= $2 ORDER BY seq"
    )
});
/// One round trip: the unique index on the id (or the key) turns a duplicate away.
static INSERT_NEW: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT INTO inbox ({ROW_COLUMNS}) VALUES ({ROW_VALUES}) ON CONFLICT DO NOTHING")
});
/// The new rows of a batch ([`TxState::pending_rows`]) in one statement. No `ON CONFLICT`: each
/// was checked against the rows the batch's events have ([`Existing`]), and a conflict after
/// all (a store changed behind the offsets' lock) fails the transaction, which the stage then
/// applies again from what is stored.
static INSERT_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO inbox ({ROW_COLUMNS}) SELECT * FROM UNNEST($1::text[], $2::bigint[], \
         $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], \
         $10::bigint[], $11::bigint[], $12::bool[], $13::bool[], $14::bool[], $15::bool[], \
         $16::bool[])"
    )
});
/// The rows a batch's new notifications could collide with: by (user, id) or by (user, seq).
const EXISTING_ROWS: &str = "SELECT i.user_id, i.notification_id, i.seq FROM inbox i \
     JOIN UNNEST($1::text[], $2::text[]) AS b(u, n) ON i.user_id = b.u AND i.notification_id = b.n \
     UNION SELECT i.user_id, i.notification_id, i.seq FROM inbox i \
     JOIN UNNEST($1::text[], $3::bigint[]) AS b(u, s) ON i.user_id = b.u AND i.seq = b.s";

/// What [`TxState::before_fold`] read for a batch's new notifications: which of them were asked
/// about, and which (user, id) and (user, seq) have a row, stored or pending.
#[derive(Default)]
struct Existing {
    asked: HashSet<(String, String, i64)>,
    ids: HashSet<(String, String)>,
    seqs: HashSet<(String, i64)>,
}

impl Existing {
    fn add(&mut self, user_id: &str, notification_id: &str, seq: i64) {
        self.ids
            .insert((user_id.to_owned(), notification_id.to_owned()));
        self.seqs.insert((user_id.to_owned(), seq));
    }
}

static PUT_ROW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO inbox ({ROW_COLUMNS}) VALUES ({ROW_VALUES}) \
         ON CONFLICT (user_id, seq) DO UPDATE SET read = EXCLUDED.read, \
         archived = EXCLUDED.archived, expired = EXCLUDED.expired, \
         superseded = EXCLUDED.superseded"
    )
});

/// The fold's view of a PostgreSQL transaction.
///
/// Writes the fold never reads back (ACKs by id, known users) are gathered and
/// inserted in one statement each by [`TxState::flush`]: a batch of device progress names
/// hundreds of rows, and one round trip per row made a batch outlast the consumer's poll
/// interval. Unread counts are read once per user and written back once, by the flush, as the
/// embedded store does: a batch's events mostly go to users it has seen already. Each of these
/// holds at most one entry per user (or device, or ACK) of the batch and ends with it.
pub(crate) struct TxState<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    statements: &'a mut Statements,
    acks: BTreeSet<(String, String, i64)>,
    users: BTreeSet<String>,
    /// Each device cursor the batch moved, to its furthest seq: the ACKs by id under it are
    /// deleted by the flush.
    cursors: BTreeMap<(String, String), i64>,
    /// Unread counts read or set in this transaction; `true`: not yet written.
    unread: HashMap<String, (u64, bool)>,
    /// Expansions recorded in this transaction: each id's recipient count (the last recorded)
    /// and every recipient recorded for it. Nothing reads them back before the commit.
    expansions: BTreeMap<String, (i64, Vec<String>)>,
    /// Rows of new notifications `insert_new` took and has not written yet: one statement for
    /// all of them, before the transaction's next other statement (so a read sees them) or at
    /// its end, instead of a round trip each.
    pending_rows: Vec<InboxRow>,
    /// Read by `before_fold`; `None` without it (`insert_new` asks the store row by row).
    existing: Option<Existing>,
}

impl<'a, 'b> TxState<'a, 'b> {
    pub(crate) fn new(tx: &'a mut Transaction<'b>, statements: &'a mut Statements) -> Self {
        TxState {
            tx,
            statements,
            acks: BTreeSet::new(),
            users: BTreeSet::new(),
            cursors: BTreeMap::new(),
            unread: HashMap::new(),
            expansions: BTreeMap::new(),
            pending_rows: Vec::new(),
            existing: None,
        }
    }

    /// `sql`, prepared on this connection, after the pending rows are written (every statement
    /// of the transaction sees the rows the fold inserted before it).
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if !self.pending_rows.is_empty() {
            self.write_pending_rows()?;
        }
        self.statements.get(&mut *self.tx, sql)
    }

    /// Inserts [`TxState::pending_rows`] in one statement.
    fn write_pending_rows(&mut self) -> Result<(), postgres::Error> {
        let rows = std::mem::take(&mut self.pending_rows);
        let (mut users, mut seqs, mut ids, mut types, mut sources, mut payloads) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut priorities, mut keys, mut created, mut deliver, mut expires) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut read, mut archived, mut expired, mut superseded, mut live) =
            (vec![], vec![], vec![], vec![], vec![]);
        for r in rows {
            users.push(r.user_id);
            seqs.push(r.seq as i64);
            ids.push(r.notification_id);
            types.push(r.event_type);
            sources.push(r.source);
            payloads.push(r.payload);
            priorities.push(r.priority.as_str());
            keys.push(r.collapse_key);
            created.push(r.created_at);
            deliver.push(r.deliver_at);
            expires.push(r.expires_at);
            read.push(r.read);
            archived.push(r.archived);
            expired.push(r.expired);
            superseded.push(r.superseded);
            live.push(r.live);
        }
        let statement = self.statements.get(&mut *self.tx, INSERT_ROWS.as_str())?;
        self.tx.execute(
            &statement,
            &[
                &users,
                &seqs,
                &ids,
                &types,
                &sources,
                &payloads,
                &priorities,
                &keys,
                &created,
                &deliver,
                &expires,
                &read,
                &archived,
                &expired,
                &superseded,
                &live,
            ],
        )?;
        Ok(())
    }

    /// Runs `sql` prepared; how many rows it changed.
    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.execute(&statement, params)
    }

    /// Runs `sql` prepared; its rows.
    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query(&statement, params)
    }

    /// Runs `sql` prepared; its one row.
    fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<postgres::Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_one(&statement, params)
    }

    /// Runs `sql` prepared; its one row, if any.
    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_opt(&statement, params)
    }

    /// Runs `sql` (an insert of the whole row, [`ROW_VALUES`]) with `r`'s columns; how many
    /// rows it inserted or updated.
    fn put_row(&mut self, sql: &'static str, r: &InboxRow) -> Result<u64, postgres::Error> {
        let (seq, priority) = (r.seq as i64, r.priority.as_str());
        self.execute(
            sql,
            &[
                &r.user_id,
                &seq,
                &r.notification_id,
                &r.event_type,
                &r.source,
                &r.payload,
                &priority,
                &r.collapse_key,
                &r.created_at,
                &r.deliver_at,
                &r.expires_at,
                &r.read,
                &r.archived,
                &r.expired,
                &r.superseded,
                &r.live,
            ],
        )
    }

    /// Inserts the gathered writes, in key order (one lock order for every writer).
    pub(crate) fn flush(&mut self) -> Result<(), postgres::Error> {
        if !self.pending_rows.is_empty() {
            self.write_pending_rows()?;
        }
        if !self.users.is_empty() {
            let users: Vec<String> = std::mem::take(&mut self.users).into_iter().collect();
            self.execute(
                "INSERT INTO users (user_id, roles) SELECT u, '[]' FROM UNNEST($1::text[]) AS u \
                 ON CONFLICT DO NOTHING",
                &[&users],
            )?;
        }
        let mut counts: Vec<(String, i64)> = std::mem::take(&mut self.unread)
            .into_iter()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(user, (n, _))| (user, n as i64))
            .collect();
        if !counts.is_empty() {
            counts.sort_unstable();
            let (users, ns): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
            self.execute(
                "INSERT INTO unread (user_id, n) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
                 ON CONFLICT (user_id) DO UPDATE SET n = EXCLUDED.n",
                &[&users, &ns],
            )?;
        }
        if !self.expansions.is_empty() {
            let (mut ids, mut counts, mut pair_ids, mut pair_users) =
                (vec![], vec![], vec![], vec![]);
            for (id, (count, users)) in std::mem::take(&mut self.expansions) {
                for u in users {
                    pair_ids.push(id.clone());
                    pair_users.push(u);
                }
                ids.push(id);
                counts.push(count);
            }
            self.execute(
                "INSERT INTO expansions SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
                 ON CONFLICT (notification_id) DO UPDATE SET recipients = EXCLUDED.recipients",
                &[&ids, &counts],
            )?;
            self.execute(
                "DELETE FROM scheduled WHERE notification_id = ANY($1::text[])",
                &[&ids],
            )?;
            self.execute(
                "INSERT INTO expansion_users SELECT * FROM UNNEST($1::text[], $2::text[]) \
                 ON CONFLICT DO NOTHING",
                &[&pair_ids, &pair_users],
            )?;
        }
        if !self.acks.is_empty() {
            let (mut users, mut devices, mut seqs) = (vec![], vec![], vec![]);
            for (user, device, seq) in std::mem::take(&mut self.acks) {
                users.push(user);
                devices.push(device);
                seqs.push(seq);
            }
            self.execute(
                "INSERT INTO acks SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
                 ON CONFLICT DO NOTHING",
                &[&users, &devices, &seqs],
            )?;
        }
        if !self.cursors.is_empty() {
            // After the inserts: an ACK by id the same batch's cursor covers goes too. The
            // table keeps only ACKs past a device's cursor.
            let (mut users, mut devices, mut seqs) = (vec![], vec![], vec![]);
            for ((user, device), seq) in std::mem::take(&mut self.cursors) {
                users.push(user);
                devices.push(device);
                seqs.push(seq);
            }
            self.execute(
                "DELETE FROM acks a USING UNNEST($1::text[], $2::text[], $3::bigint[]) AS c(u, d, s) \
                 WHERE a.user_id = c.u AND a.device_id = c.d AND a.seq <= c.s",
                &[&users, &devices, &seqs],
            )?;
        }
        Ok(())
    }

    fn know_user(&mut self, user_id: &str) -> Result<(), postgres::Error> {
        self.execute(
            "INSERT INTO users (user_id, roles) VALUES ($1, '[]') ON CONFLICT DO NOTHING",
            &[&user_id],
        )?;
        Ok(())
    }
}

impl ProjectionState for TxState<'_, '_> {
    type Error = postgres::Error;

    fn row(&mut self, user_id: &str, id: &str) -> Result<Option<InboxRow>, postgres::Error> {
        Ok(self
            .query_opt(ROW_BY_ID.as_str(), &[&user_id, &id])?
            .map(|r| to_row(&r)))
    }

    fn seq_of(&mut self, user_id: &str, id: &str) -> Result<Option<u64>, postgres::Error> {
        // The seq alone: no payload read (or detoasted) and sent for an existence check.
        Ok(self
            .query_opt(
                "SELECT seq FROM inbox WHERE user_id = $1 AND notification_id = $2",
                &[&user_id, &id],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    fn collapse_holder(
        &mut self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<InboxRow>, postgres::Error> {
        Ok(self
            .query_opt(COLLAPSE_HOLDER.as_str(), &[&user_id, &key])?
            .map(|r| to_row(&r)))
    }

    fn unread_up_to(
        &mut self,
        user_id: &str,
        up_to: u64,
    ) -> Result<Vec<InboxRow>, postgres::Error> {
        let up_to = up_to.min(i64::MAX as u64) as i64;
        Ok(self
            .query(UNREAD_UP_TO.as_str(), &[&user_id, &up_to])?
            .iter()
            .map(to_row)
            .collect())
    }

    fn unread_count(&mut self, user_id: &str) -> Result<u64, postgres::Error> {
        if let Some((count, _)) = self.unread.get(user_id) {
            return Ok(*count);
        }
        let count = self
            .query_opt("SELECT n FROM unread WHERE user_id = $1", &[&user_id])?
            .map_or(0, |r| r.get::<_, i64>(0) as u64);
        self.unread.insert(user_id.to_owned(), (count, false));
        Ok(count)
    }

    fn device_cursor(
        &mut self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Option<u64>, postgres::Error> {
        Ok(self
            .query_opt(
                "SELECT seq FROM cursors WHERE user_id = $1 AND device_id = $2",
                &[&user_id, &device_id],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    fn insert_new(&mut self, row: InboxRow) -> Result<bool, postgres::Error> {
        let seq = row.seq as i64;
        if let Some(existing) = &mut self.existing
            && existing
                .asked
                .contains(&(row.user_id.clone(), row.notification_id.clone(), seq))
        {
            if existing
                .ids
                .contains(&(row.user_id.clone(), row.notification_id.clone()))
                || existing.seqs.contains(&(row.user_id.clone(), seq))
            {
                return Ok(false);
            }
            existing.add(&row.user_id, &row.notification_id, seq);
            self.pending_rows.push(row);
            return Ok(true);
        }
        let inserted = self.put_row(INSERT_NEW.as_str(), &row)? == 1;
        if inserted && let Some(existing) = &mut self.existing {
            existing.add(&row.user_id, &row.notification_id, seq);
        }
        Ok(inserted)
    }

    fn write(&mut self, write: Write) -> Result<(), postgres::Error> {
        match write {
            Write::PutRow(r) => {
                self.put_row(PUT_ROW.as_str(), &r)?;
                if let Some(existing) = &mut self.existing {
                    existing.add(&r.user_id, &r.notification_id, r.seq as i64);
                }
            }
            Write::SetUnreadCount { user_id, count } => {
                self.unread.insert(user_id, (count, true));
            }
            Write::AckSeq {
                user_id,
                device_id,
                seq,
            } => {
                self.acks.insert((user_id, device_id, seq as i64));
            }
            Write::SetDeviceCursor {
                user_id,
                device_id,
                seq,
            } => {
                self.execute(
                    "INSERT INTO cursors VALUES ($1, $2, $3) ON CONFLICT (user_id, device_id) \
                     DO UPDATE SET seq = GREATEST(cursors.seq, EXCLUDED.seq)",
                    &[&user_id, &device_id, &(seq as i64)],
                )?;
                let furthest = self.cursors.entry((user_id, device_id)).or_default();
                *furthest = (*furthest).max(seq as i64);
            }
            Write::KnowUser { user_id } => {
                self.users.insert(user_id);
            }
            Write::SetPreferences {
                user_id,
                preferences,
            } => {
                let doc = serde_json::to_string(&preferences).expect("preferences serialize");
                self.execute(
                    "INSERT INTO preferences (user_id, doc) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET doc = EXCLUDED.doc",
                    &[&user_id, &doc],
                )?;
            }
        }
        Ok(())
    }
}

impl StageTransaction for TxState<'_, '_> {
    /// Locks the offset rows of `offsets`' partitions for this transaction and returns what they
    /// hold: several projector replicas share this store, and concurrent writers of one
    /// partition apply one after the other.
    fn applied_offsets(
        &mut self,
        consumer: &str,
        offsets: &[(u32, u64)],
    ) -> Result<BTreeMap<u32, u64>, postgres::Error> {
        let mut out = BTreeMap::new();
        let mut partitions: Vec<u32> = offsets.iter().map(|(p, _)| *p).collect();
        partitions.sort_unstable(); // one lock order for every writer: no deadlocks
        partitions.dedup();
        for p in partitions {
            self.execute(
                "INSERT INTO consumer_offsets VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
                &[&consumer, &(p as i32)],
            )?;
            let row = self.query_one(
                "SELECT next_offset FROM consumer_offsets WHERE consumer = $1 AND partition = $2 \
                 FOR UPDATE",
                &[&consumer, &(p as i32)],
            )?;
            out.insert(p, row.get::<_, i64>(0) as u64);
        }
        Ok(out)
    }

    fn store_offsets(
        &mut self,
        consumer: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), postgres::Error> {
        for (p, o) in offsets {
            self.execute(
                "INSERT INTO consumer_offsets VALUES ($1, $2, $3) ON CONFLICT (consumer, partition) \
                 DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset)",
                &[&consumer, &(*p as i32), &(*o as i64)],
            )?;
        }
        Ok(())
    }

    fn directory_write(&mut self, write: DirectoryWrite) -> Result<(), postgres::Error> {
        match write {
            DirectoryWrite::UpsertUser { user_id, roles } => {
                let roles = serde_json::to_string(&roles).expect("strings serialize");
                self.execute(
                    "INSERT INTO users (user_id, roles) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET roles = EXCLUDED.roles",
                    &[&user_id, &roles],
                )?;
            }
            DirectoryWrite::KnowUser { user_id } => self.know_user(&user_id)?,
            DirectoryWrite::AddMember { group, user_id } => {
                self.execute(
                    "INSERT INTO group_members VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&group, &user_id],
                )?;
            }
            DirectoryWrite::RemoveMember { group, user_id } => {
                self.execute(
                    "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                    &[&group, &user_id],
                )?;
            }
            DirectoryWrite::Subscribe { topic, user_id } => {
                self.execute(
                    "INSERT INTO topic_subscribers VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&topic, &user_id],
                )?;
            }
            DirectoryWrite::Unsubscribe { topic, user_id } => {
                self.execute(
                    "DELETE FROM topic_subscribers WHERE topic = $1 AND user_id = $2",
                    &[&topic, &user_id],
                )?;
            }
            DirectoryWrite::DefineRole { role, topics } => {
                let topics = serde_json::to_string(&topics).expect("strings serialize");
                self.execute(
                    "INSERT INTO roles (role, topics) VALUES ($1, $2) ON CONFLICT (role) DO UPDATE SET topics = EXCLUDED.topics",
                    &[&role, &topics],
                )?;
            }
        }
        Ok(())
    }

    /// Gathered for the flush: three statements for a batch's expansions, not three each.
    fn record_expansion(&mut self, id: &str, users: &[String]) -> Result<(), postgres::Error> {
        let (count, all) = self.expansions.entry(id.to_owned()).or_default();
        *count = users.len() as i64;
        all.extend(users.iter().cloned());
        Ok(())
    }

    /// Reads at once which of the batch's new notifications have a row already, by id or by
    /// seq: `insert_new` then answers from that and gathers the new rows for one statement.
    fn before_fold(&mut self, events: &[&Positioned<UserEvent>]) -> Result<(), postgres::Error> {
        let mut existing = Existing::default();
        let (mut users, mut ids, mut seqs) = (vec![], vec![], vec![]);
        for e in events {
            if let UserEvent::Added(a) = &e.event {
                let seq = e.offset.min(i64::MAX as u64) as i64;
                existing
                    .asked
                    .insert((a.user_id.clone(), a.notification_id.clone(), seq));
                users.push(a.user_id.as_str());
                ids.push(a.notification_id.as_str());
                seqs.push(seq);
            }
        }
        if !users.is_empty() {
            for r in self.query(EXISTING_ROWS, &[&users, &ids, &seqs])? {
                existing.add(r.get(0), r.get(1), r.get(2));
            }
        }
        self.existing = Some(existing);
        Ok(())
    }

    fn schedule(&mut self, id: &str, due: i64, request: &[u8]) -> Result<(), postgres::Error> {
        // An id already expanded is never scheduled again.
        self.execute(
            "INSERT INTO scheduled SELECT $1, $2, $3 \
             WHERE NOT EXISTS (SELECT 1 FROM expansions WHERE notification_id = $1) ON CONFLICT DO NOTHING",
            &[&id, &due, &request],
        )?;
        Ok(())
    }
}
