-- 001_memory_pins, reverted: functions, then tables (their indexes go with them). The schema
-- `system` is kept, as M7's downgrades keep it (other tables may live there).
DROP FUNCTION IF EXISTS system.cleanup_memory_audit(INTEGER);
DROP TABLE IF EXISTS system.memory_audit;
DROP FUNCTION IF EXISTS system.cleanup_rbac_audit(INTEGER);
DROP TABLE IF EXISTS system.rbac_audit;
DROP TABLE IF EXISTS system.memory_pins;
