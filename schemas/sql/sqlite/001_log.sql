-- Herald's embedded event log on SQLite. Applied by the adapter each time it opens the file
-- read-write (idempotent). `meta` holds the log's instance id, partition counts and format,
-- written once when the log is created. Format 2 keeps a partition's consecutive records of one
-- group commit in one row of `batches` (services/herald-embedded/src/log/batch.rs). Format 1
-- (logs created by builds before f5af648, 2026-12-03) keeps a row per record in `records`
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
-- A row must start where its partition's last row ended (at 0 for the first): no overlap, no
-- gap, whatever writes the file (the log's one writer thread always does this; one index
-- lookup a row).
CREATE TRIGGER IF NOT EXISTS batches_follow BEFORE INSERT ON batches
WHEN NEW.count < 1 OR NEW.end_offset - NEW.count <> coalesce(
    (SELECT max(end_offset) FROM batches WHERE topic = NEW.topic AND partition = NEW.partition), 0)
BEGIN
    SELECT RAISE(ABORT, 'a log row must start where its partition''s last row ended');
END;
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
