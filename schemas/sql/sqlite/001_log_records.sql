-- The records of an embedded log of format 1 (created by a build before f5af648, 2026-12-03), a row per record:
-- such a file holds this table already. Kept for those logs and for `herald-bench log-append`'s
-- raw SQLite baseline (a row per record, the yardstick of the durable-ingest target).
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
