-- 002_pin_revisions, reverted.
DROP TABLE IF EXISTS system.pin_changes;
DROP TABLE IF EXISTS system.pin_revisions;
ALTER TABLE system.memory_pins DROP COLUMN IF EXISTS revision;
