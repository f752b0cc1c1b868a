-- 001_memory_pins: M7's three tables (Alembic 009_mem_pins, 010_create_rbac_audit,
-- 011_create_memory_audit) as one step, plus memory_pins.version and memory_pins.value_hash.
--
-- One step on purpose: the M7 runbook's rollback (`downgrade -1`, then `\dt system.memory_pins`
-- answers "Did not find any relation") must hold right after `upgrade head`, so the newest step
-- has to be the one that creates memory_pins; the audit tables come and go with it.
--
-- Differences from M7, all deliberate (store/README.md, "PostgreSQL"):
--   * memory_pins.version BIGINT NOT NULL DEFAULT 1 (expected_version, API.md section 4);
--   * memory_pins.value_hash TEXT: the caller's SHA-256 prefix of the value as sent, so that the
--     next change's audit row gets the exact old_value_hash although jsonb normalises the text
--     (NULL for rows written by others: the store then hashes the stored jsonb text);
--   * ix_memory_pins_tenant_created covers (tenant_id, created_at, id), the keyset order;
--   * no expiry triggers: pinsd computes expires_at from the time of each write, whereas M7's
--     triggers recomputed it from created_at on every UPDATE (which would make every rewrite of
--     an old pin expire at once). updated_at is written by pinsd too, so no trigger is kept.
-- The runner (store/migrate.c) applies this file in one transaction and records it in
-- system.pins_schema_migrations.

CREATE SCHEMA IF NOT EXISTS system;

CREATE TABLE system.memory_pins (
    id          BIGSERIAL PRIMARY KEY,
    key         TEXT        NOT NULL,
    tenant_id   TEXT        NOT NULL,
    value       JSONB       NOT NULL,
    source      TEXT        NOT NULL DEFAULT 'api',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    ttl_seconds INTEGER,
    expires_at  TIMESTAMPTZ,
    version     BIGINT      NOT NULL DEFAULT 1,
    value_hash  TEXT
);
CREATE UNIQUE INDEX ix_memory_pins_tenant_key ON system.memory_pins (tenant_id, key);
CREATE INDEX ix_memory_pins_expires_at ON system.memory_pins (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX ix_memory_pins_tenant_created ON system.memory_pins (tenant_id, created_at, id);
COMMENT ON TABLE system.memory_pins IS 'Memory pins (pinsd; M7 schema plus version)';

CREATE TABLE system.rbac_audit (
    id         BIGSERIAL PRIMARY KEY,
    ts         TIMESTAMPTZ NOT NULL DEFAULT now(),
    subject    TEXT        NOT NULL,
    resource   TEXT        NOT NULL,
    action     TEXT        NOT NULL,
    allowed    BOOLEAN     NOT NULL,
    reason     TEXT,
    roles      TEXT[],
    path       TEXT,
    method     TEXT,
    tenant_id  TEXT,
    request_id TEXT,
    latency_ms DOUBLE PRECISION,
    extra      JSONB DEFAULT '{}'
);
CREATE INDEX ix_rbac_audit_ts ON system.rbac_audit (ts DESC);
CREATE INDEX ix_rbac_audit_subject ON system.rbac_audit (subject);
CREATE INDEX ix_rbac_audit_resource_action ON system.rbac_audit (resource, action);
CREATE INDEX ix_rbac_audit_allowed ON system.rbac_audit (allowed) WHERE allowed = false;
CREATE INDEX ix_rbac_audit_tenant ON system.rbac_audit (tenant_id) WHERE tenant_id IS NOT NULL;
COMMENT ON TABLE system.rbac_audit IS 'RBAC decisions (denials always, allowed ones by policy)';

CREATE FUNCTION system.cleanup_rbac_audit(retention_days INTEGER DEFAULT 90) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    deleted INTEGER;
BEGIN
    DELETE FROM system.rbac_audit WHERE ts < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;

CREATE TABLE system.memory_audit (
    id             BIGSERIAL PRIMARY KEY,
    ts             TIMESTAMPTZ NOT NULL DEFAULT now(),
    operation      TEXT        NOT NULL,
    tenant_id      TEXT        NOT NULL,
    key            TEXT        NOT NULL,
    agent_id       TEXT,
    source         TEXT,
    cache_hit      BOOLEAN DEFAULT false,
    latency_ms     DOUBLE PRECISION,
    success        BOOLEAN     NOT NULL DEFAULT true,
    error_message  TEXT,
    old_value_hash TEXT,
    new_value_hash TEXT,
    extra          JSONB DEFAULT '{}'
);
CREATE INDEX ix_memory_audit_ts ON system.memory_audit (ts DESC);
CREATE INDEX ix_memory_audit_tenant ON system.memory_audit (tenant_id);
CREATE INDEX ix_memory_audit_key ON system.memory_audit (key);
CREATE INDEX ix_memory_audit_operation ON system.memory_audit (operation);
CREATE INDEX ix_memory_audit_agent ON system.memory_audit (agent_id) WHERE agent_id IS NOT NULL;
CREATE INDEX ix_memory_audit_errors ON system.memory_audit (success) WHERE success = false;
COMMENT ON TABLE system.memory_audit IS 'Memory pin changes, one row per successful write';

CREATE FUNCTION system.cleanup_memory_audit(retention_days INTEGER DEFAULT 30) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    deleted INTEGER;
BEGIN
    DELETE FROM system.memory_audit WHERE ts < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;
