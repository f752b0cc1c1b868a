-- 002_revisions, reverted: drops what 002_revisions.up.sql created. SQLite keeps its own
-- sqlite_sequence table (made for pin_changes' AUTOINCREMENT) once it exists; dropping
-- pin_changes removes its row there. The runner removes version 2 from schema_migrations in the
-- same transaction.

DROP TABLE IF EXISTS pin_changes;
DROP TABLE IF EXISTS pin_revisions;
ALTER TABLE memory_pins DROP COLUMN revision;
