-- 002_pin_revisions: revisions and the change history (store/store.h, "revisions and the change
-- feed").
--
--   * memory_pins.revision: the tenant's revision of the pin's last change;
--   * system.pin_revisions: one row per tenant, its latest revision and the highest revision the
--     history retention deleted (trimmed). Every change takes the tenant's next revision by
--     updating this row in the change's transaction; the row lock, held until commit, makes a
--     tenant's changes commit in revision order;
--   * system.pin_changes: the change history, one row per change (PUT: the pin as written;
--     DELETE, EXPIRE: the pin as it was), read back by store_changes_since and, for a change too
--     big for a NOTIFY payload, by the change feed (by seq).
-- Tenants with pins get their revision row now (revision 0): a writer locks that row before the
-- pin's, which it can only do once the row exists.

ALTER TABLE system.memory_pins ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;

CREATE TABLE system.pin_revisions (
    tenant_id TEXT   PRIMARY KEY,
    revision  BIGINT NOT NULL,
    trimmed   BIGINT NOT NULL DEFAULT 0
);
COMMENT ON TABLE system.pin_revisions IS 'Latest and trimmed revision per tenant (pinsd)';

INSERT INTO system.pin_revisions (tenant_id, revision)
    SELECT DISTINCT tenant_id, 0 FROM system.memory_pins;

CREATE TABLE system.pin_changes (
    seq         BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT        NOT NULL,
    revision    BIGINT      NOT NULL,
    type        SMALLINT    NOT NULL, -- 1 put, 2 delete, 3 expire
    key         TEXT        NOT NULL,
    pin_id      BIGINT      NOT NULL,
    value       JSONB       NOT NULL,
    source      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    ttl_seconds INTEGER,
    expires_at  TIMESTAMPTZ,
    version     BIGINT      NOT NULL,
    ts          TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant_id, revision)
);
CREATE INDEX ix_pin_changes_ts ON system.pin_changes (ts);
COMMENT ON TABLE system.pin_changes IS 'Pin change history for the change feed (pinsd)';
