-- Herald projection on PostgreSQL, version 1. Applied by the adapter at start-up (idempotent).
-- Every write the projector makes is an upsert keyed deterministically, so replays change nothing.
-- A user's events all come from one log partition, and one projector owns a partition at a
-- time, so rows of one user are never written by two transactions at once (READ COMMITTED
-- suffices).

CREATE TABLE IF NOT EXISTS herald_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- One row per notification per user; seq = offset of its Added event in the user's partition.
CREATE TABLE IF NOT EXISTS inbox (
    user_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    notification_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority TEXT NOT NULL,
    collapse_key TEXT,
    created_at BIGINT NOT NULL,
    deliver_at BIGINT,
    expires_at BIGINT,
    read BOOLEAN NOT NULL,
    archived BOOLEAN NOT NULL,
    expired BOOLEAN NOT NULL,
    superseded BOOLEAN NOT NULL,
    -- false: the user's preferences kept it off their devices (never pending).
    live BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (user_id, seq)
);
-- Stores made before preferences: every row they hold was live.
ALTER TABLE inbox ADD COLUMN IF NOT EXISTS live BOOLEAN NOT NULL DEFAULT TRUE;
CREATE UNIQUE INDEX IF NOT EXISTS inbox_by_id ON inbox (user_id, notification_id);
CREATE INDEX IF NOT EXISTS inbox_unread ON inbox (user_id, seq) WHERE NOT read;
CREATE INDEX IF NOT EXISTS inbox_collapse ON inbox (user_id, collapse_key)
    WHERE collapse_key IS NOT NULL AND NOT archived AND NOT expired AND NOT superseded;
CREATE INDEX IF NOT EXISTS inbox_expiring ON inbox (expires_at)
    WHERE expires_at IS NOT NULL AND NOT expired AND NOT archived AND NOT superseded;

CREATE TABLE IF NOT EXISTS unread (user_id TEXT PRIMARY KEY, n BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS acks (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, seq));
CREATE TABLE IF NOT EXISTS cursors (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id));
-- Deliveries are not projected (the log keeps each one; `herald audit` lists them). Databases
-- from before keep a `delivered` table nothing writes or reads; an older build still uses them.
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, roles TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roles (role TEXT PRIMARY KEY, topics TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (group_id, user_id));
CREATE TABLE IF NOT EXISTS topic_subscribers (
    topic TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (topic, user_id));
CREATE TABLE IF NOT EXISTS expansions (notification_id TEXT PRIMARY KEY, recipients BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS expansion_users (
    notification_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (notification_id, user_id));
CREATE TABLE IF NOT EXISTS scheduled (
    notification_id TEXT PRIMARY KEY, due_at BIGINT NOT NULL, request BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled (due_at);
-- Each user's newest preferences document (JSON, as GET /v1/preferences answers it).
CREATE TABLE IF NOT EXISTS preferences (user_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, partition));
-- Leases (the timer stage's): one holder at a time, until expires_at (Unix ms, the holder's clock).
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at BIGINT NOT NULL);

INSERT INTO herald_meta (key, value) VALUES ('format', '1') ON CONFLICT (key) DO NOTHING;
