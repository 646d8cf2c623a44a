-- Herald projection on SQLite (the embedded store), version 1. Applied by the adapter each time
-- it opens the file read-write (idempotent). Table for table the PostgreSQL schema
-- (../postgres/001_projection.sql), in SQLite's types (booleans are 0/1; `meta` is `herald_meta`
-- there). Every write the projector makes is an upsert keyed deterministically, so replays change
-- nothing; one writer connection applies a batch and its consumer offsets in one transaction.

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- One row per notification per user; seq is the offset of its Added event in the user's partition.
-- A rowid table: a new row goes to the right edge of its B-tree, and only small index entries
-- land in the middle (at each user's end). Keyed by (user_id, seq) itself (WITHOUT ROWID, as
-- stores created before 2026-12-01 keep it), every insert went into a leaf of whole rows (~110
-- bytes in the benchmarks, more with real payloads) in the middle of the tree, split into two
-- half-empty leaves every ~17 inserts. Measured in pairs: the fanout's CPU until idle -7%, the
-- rebuild -2 to -8%; a resume reads each row through the index (10k: +2%, 100k: +13%).
-- docs/benchmarks.md. Both layouts answer the same statements.
CREATE TABLE IF NOT EXISTS inbox (
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    notification_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority TEXT NOT NULL,
    collapse_key TEXT,
    created_at INTEGER NOT NULL,
    deliver_at INTEGER,
    expires_at INTEGER,
    read INTEGER NOT NULL,
    archived INTEGER NOT NULL,
    expired INTEGER NOT NULL,
    superseded INTEGER NOT NULL,
    -- 0: the user's preferences kept it off their devices (never pending). Files from before
    -- preferences get this column from the adapter (ALTER TABLE … DEFAULT 1).
    live INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (user_id, seq)
);
-- A user's row by notification id. Keyed by the id first: ids of keyless requests are UUIDv7s that
-- grow with time, so a new entry goes to the right edge of this index (and a notification's
-- recipients sit side by side), where one keyed by the user first took an entry in the middle
-- of each user's range and every commit rewrote about every leaf of it. Measured in pairs on a
-- backlog of 100k notifications to 1,000 users: the projector's CPU -11%, its bytes written
-- -44% (docs/benchmarks.md). Stores created before 2026-12-04 keep (user_id, notification_id)
-- (the same name, so IF NOT EXISTS leaves theirs); both answer the same statements, which name
-- both columns.
CREATE UNIQUE INDEX IF NOT EXISTS inbox_by_id ON inbox (notification_id, user_id);
CREATE INDEX IF NOT EXISTS inbox_unread ON inbox (user_id, seq) WHERE read = 0;
CREATE INDEX IF NOT EXISTS inbox_collapse ON inbox (user_id, collapse_key)
    WHERE collapse_key IS NOT NULL AND archived = 0 AND expired = 0 AND superseded = 0;
CREATE TABLE IF NOT EXISTS unread (user_id TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)) WITHOUT ROWID;
-- Deliveries are not projected (the log keeps each one; `herald audit` lists them). Files from
-- before keep a `delivered` table nothing writes or reads; an older build still opens them.
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, roles TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (group_id, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roles (role TEXT PRIMARY KEY, topics TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topic_subscribers (
    topic TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (topic, user_id)) WITHOUT ROWID;
-- `users`: an expansion's recipients as a JSON list when there are at most 4,096 of them
-- (SQLite only; PostgreSQL keeps them all in expansion_users). The notification id is a hash, so
-- each expansion lands on a page of its own: one row (its list in overflow pages when long)
-- instead of a row per recipient. Larger expansions, and users added by a repeated record, go
-- to expansion_users. Files written with a lower bound (16) read the same way.
-- Files from before this column get it from the adapter (ALTER TABLE … ADD COLUMN users).
CREATE TABLE IF NOT EXISTS expansions (
    notification_id TEXT PRIMARY KEY, recipients INTEGER NOT NULL, users TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scheduled (
    notification_id TEXT PRIMARY KEY, due_at INTEGER NOT NULL, request BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled (due_at);
CREATE INDEX IF NOT EXISTS inbox_expiring ON inbox (expires_at)
    WHERE expires_at IS NOT NULL AND expired = 0 AND archived = 0 AND superseded = 0;
CREATE TABLE IF NOT EXISTS expansion_users (
    notification_id TEXT NOT NULL, user_id TEXT NOT NULL,
    PRIMARY KEY (notification_id, user_id)) WITHOUT ROWID;
-- Each user's newest preferences document (JSON, as GET /v1/preferences answers it).
CREATE TABLE IF NOT EXISTS preferences (user_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition)) WITHOUT ROWID;
-- Leases (the timer stage's): one holder at a time, until expires_at (Unix ms, the holder's clock).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;

INSERT OR IGNORE INTO meta VALUES ('format', '1');
