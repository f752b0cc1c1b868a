-- 001_init, reverted: drops what 001_init.up.sql created (indexes go with their tables).
-- The runner removes version 1 from schema_migrations in the same transaction.

DROP TABLE IF EXISTS memory_audit;
DROP TABLE IF EXISTS rbac_audit;
DROP TABLE IF EXISTS memory_pins;
