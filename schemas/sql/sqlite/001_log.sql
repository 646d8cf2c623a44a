-- Herald's embedded event log on SQLite. Applied by the adapter each time it opens the file
-- read-write (idempotent). `meta` holds the log's instance id, partition counts and format,
-- written once when the log is created. Format 2 keeps a partition's consecutive records of one
-- group commit in one row of `batches` (services/herald-embedded/src/log/batch.rs). Format 1
-- (logs created before 2026-12-03) keeps a row per record in `records`
-- (`001_log_records.sql`). A log keeps its format. A new log gets a view named `records` that
-- fails when read or written (`log/open.rs`), so that a build from before format 2, which
-- ignores `meta.format`, refuses the file at start-up instead of appending from offset 0.

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- Format 2: records `end_offset - count .. end_offset` of a partition, encoded in `data`. A read
-- from offset o starts at the first row whose end_offset is past o.
CREATE TABLE IF NOT EXISTS batches (
    topic INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (topic, partition, end_offset)
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
