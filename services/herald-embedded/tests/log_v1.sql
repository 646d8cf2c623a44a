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
