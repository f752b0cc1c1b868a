-- 001_init: the three tables of M7 (system.memory_pins, system.rbac_audit, system.memory_audit,
-- Alembic revisions 009 to 011) in SQLite form, plus memory_pins.version.
--
-- Adapted to SQLite: times are INTEGER microseconds since the Unix epoch (UTC), JSON is TEXT
-- (compact), booleans are INTEGER 0/1, TEXT[] is a JSON array in TEXT. Expiry is computed by the
-- store from the time of each write (API.md section 4), so M7's expiry triggers are not kept.
-- The runner (store/sqlite.c) applies this file in one transaction and records it in
-- schema_migrations.

CREATE TABLE memory_pins (
    id          INTEGER PRIMARY KEY,
    key         TEXT    NOT NULL,
    tenant_id   TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    source      TEXT    NOT NULL DEFAULT 'api',
    created_at  INTEGER NOT NULL
                DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    updated_at  INTEGER NOT NULL
                DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    ttl_seconds INTEGER,
    expires_at  INTEGER,
    version     INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX ix_memory_pins_tenant_key ON memory_pins (tenant_id, key);
CREATE INDEX ix_memory_pins_expires_at ON memory_pins (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX ix_memory_pins_tenant_created ON memory_pins (tenant_id, created_at, id);

CREATE TABLE rbac_audit (
    id         INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL
               DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    subject    TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    allowed    INTEGER NOT NULL,
    reason     TEXT,
    roles      TEXT,
    path       TEXT,
    method     TEXT,
    tenant_id  TEXT,
    request_id TEXT,
    latency_ms REAL,
    extra      TEXT DEFAULT '{}'
);
CREATE INDEX ix_rbac_audit_ts ON rbac_audit (ts);
CREATE INDEX ix_rbac_audit_subject ON rbac_audit (subject);
CREATE INDEX ix_rbac_audit_resource_action ON rbac_audit (resource, action);
CREATE INDEX ix_rbac_audit_allowed ON rbac_audit (allowed) WHERE allowed = 0;
CREATE INDEX ix_rbac_audit_tenant ON rbac_audit (tenant_id) WHERE tenant_id IS NOT NULL;

-- The ts indexes are ascending (M7: ts DESC): SQLite scans them backwards, and ascending entries
-- (ts, id) give the listing order ts DESC, id DESC without a sort. The tenant, key and operation
-- indexes end with ts for the same reason when a listing filters on them.
CREATE TABLE memory_audit (
    id             INTEGER PRIMARY KEY,
    ts             INTEGER NOT NULL
                   DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    operation      TEXT    NOT NULL,
    tenant_id      TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    agent_id       TEXT,
    source         TEXT,
    cache_hit      INTEGER DEFAULT 0,
    latency_ms     REAL,
    success        INTEGER NOT NULL DEFAULT 1,
    error_message  TEXT,
    old_value_hash TEXT,
    new_value_hash TEXT,
    extra          TEXT DEFAULT '{}'
);
CREATE INDEX ix_memory_audit_ts ON memory_audit (ts);
CREATE INDEX ix_memory_audit_tenant ON memory_audit (tenant_id, ts);
CREATE INDEX ix_memory_audit_key ON memory_audit (key, ts);
CREATE INDEX ix_memory_audit_operation ON memory_audit (operation, ts);
CREATE INDEX ix_memory_audit_agent ON memory_audit (agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX ix_memory_audit_errors ON memory_audit (success) WHERE success = 0;
