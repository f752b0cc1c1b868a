-- 002_revisions: revisions and the change history (store.h, "revisions and the change feed"),
-- the SQLite form of PostgreSQL's system.pin_revisions and system.pin_changes.
--
-- Times are INTEGER microseconds since the Unix epoch (UTC), as in 001_init. Every change of a
-- pin takes its tenant's next revision (pin_revisions.revision) in the transaction that makes it,
-- stores it in memory_pins.revision (0 for rows written before this migration) and adds one row
-- to pin_changes: the pin as written (type 1, put) or as it was (type 2, delete; type 3, expired
-- and reclaimed by the sweeper or a cleanup). The retention (store_history_expire) deletes the
-- oldest pin_changes rows and raises pin_revisions.trimmed to the highest revision it deleted of
-- the tenant, so that a reader asking for the changes after a trimmed revision is refused.

ALTER TABLE memory_pins ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;

CREATE TABLE pin_revisions (
    tenant_id TEXT    PRIMARY KEY,
    revision  INTEGER NOT NULL,
    trimmed   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- seq orders the history of every tenant in commit order (the retention deletes the lowest);
-- AUTOINCREMENT never hands out a seq again, even after the newest rows were deleted.
CREATE TABLE pin_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    type        INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    pin_id      INTEGER NOT NULL,
    value       TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    ttl_seconds INTEGER,
    expires_at  INTEGER,
    version     INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    UNIQUE (tenant_id, revision)
);
CREATE INDEX ix_pin_changes_ts ON pin_changes (ts);
