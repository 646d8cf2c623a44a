-- Herald's embedded event log on SQLite, version 1. Applied by the adapter each time it opens
-- the file read-write (idempotent). Records are found by (topic, partition, offset); `meta` holds
-- the log's instance id and partition counts, written once when the log is created.

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- A rowid table: records go to the right edge of its B-tree in commit order, and only the small
-- entries of the (topic, partition, offset) index land at each partition's end. Keyed by that
-- triple itself (WITHOUT ROWID, as logs created before 2026-12-02 keep it), every commit
-- rewrote the last leaf of each partition it touched, whole records, in the middle of the tree.
-- Both layouts answer the same statements. docs/benchmarks.md.
CREATE TABLE IF NOT EXISTS records (
    topic INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT NOT NULL,
    ts INTEGER NOT NULL,
    headers BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (topic, partition, offset)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    reason TEXT NOT NULL,
    value BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
