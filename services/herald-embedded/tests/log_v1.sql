-- The embedded log's `records` table as builds before 2026-12-02 created it: keyed by
-- (topic, partition, offset) WITHOUT ROWID. A test fixture: a file holding it gets the rest of
-- the log's schema (`schemas/sql/sqlite/001_log.sql`, all `IF NOT EXISTS`) when the log opens
-- it, as an old build's file does, and still holds the log contract (tests/contract.rs,
-- tests/upgrade.rs).

CREATE TABLE records (
    topic INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT NOT NULL,
    ts INTEGER NOT NULL,
    headers BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;

-- What such a build wrote into `meta` when it created the log: format 1, a row per record.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('instance', '5f0c5e4e-0000-4000-8000-000000000001'), ('format', '1'),
    ('partitions.requests', '1'), ('partitions.user-events', '8');
