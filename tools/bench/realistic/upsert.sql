-- pgbench: one UpsertPin as pinsd runs it on PostgreSQL (store/pg_sql.c store__pg_sql_upsert:
-- update or insert the row, and its memory_audit row, in one statement), tenant bench-t<T>
-- uniform over 100, key bench-<K> uniform over 1000. No TTL, no expected_version, no agent.
-- Run with -M prepared and -D val='{"data":"xxx..."}' -D hash=<16 hex digits>.
\set t random(0, 99)
\set k random(0, 999)
WITH cur AS (SELECT id, version, value, value_hash, (expires_at IS NULL OR expires_at > now()) AS live
    FROM system.memory_pins WHERE tenant_id = 'bench-t' || :t::text AND key = 'bench-' || :k::text FOR UPDATE),
  chk AS (SELECT 'ok'::text AS outcome),
  upd AS (UPDATE system.memory_pins p SET
      id = CASE WHEN c.live THEN p.id ELSE nextval('system.memory_pins_id_seq') END,
      value = :val::jsonb, value_hash = :hash::text, source = 'bench',
      created_at = CASE WHEN c.live THEN p.created_at ELSE now() END,
      updated_at = now(), ttl_seconds = NULL::int4, expires_at = NULL::timestamptz,
      version = CASE WHEN c.live THEN p.version + 1 ELSE 1 END
    FROM cur c, chk k WHERE p.id = c.id AND k.outcome = 'ok'
    RETURNING NOT c.live AS created, p.id, p.tenant_id, p.key, p.value::text AS value, p.source,
      (extract(epoch from p.created_at) * 1000000)::int8 AS created_us,
      (extract(epoch from p.updated_at) * 1000000)::int8 AS updated_us, p.ttl_seconds,
      (extract(epoch from p.expires_at) * 1000000)::int8 AS expires_us, p.version,
      CASE WHEN c.live THEN coalesce(c.value_hash, left(encode(sha256(convert_to(c.value::text, 'UTF8')), 'hex'), 16)) END AS old_hash),
  ins AS (INSERT INTO system.memory_pins AS p (key, tenant_id, value, value_hash, source,
      created_at, updated_at, ttl_seconds, expires_at, version)
    SELECT 'bench-' || :k::text, 'bench-t' || :t::text, :val::jsonb, :hash::text, 'bench', now(), now(), NULL, NULL, 1
    FROM chk k WHERE k.outcome = 'ok' AND NOT EXISTS (SELECT 1 FROM cur)
    ON CONFLICT (tenant_id, key) DO NOTHING
    RETURNING true AS created, p.id, p.tenant_id, p.key, p.value::text AS value, p.source,
      (extract(epoch from p.created_at) * 1000000)::int8 AS created_us,
      (extract(epoch from p.updated_at) * 1000000)::int8 AS updated_us, p.ttl_seconds,
      (extract(epoch from p.expires_at) * 1000000)::int8 AS expires_us, p.version, NULL::text AS old_hash),
  res AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),
  aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source,
      cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)
    SELECT now(), 'upsert', r.tenant_id, r.key, NULL, 'bench', false, 0.1::float8, true,
      r.old_hash, :hash::text, '{}'::jsonb FROM res r)
SELECT k.outcome, r.* FROM chk k LEFT JOIN res r ON true;
