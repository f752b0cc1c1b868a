-- pgbench: one UpsertPin as pinsd runs it on PostgreSQL (store/pg_sql.c store__pg_sql_upsert:
-- lock the tenant's revision row, update or insert the row with the next revision, raise the
-- revision, write its memory_audit row and its pin_changes row and NOTIFY pinsd_changes, in one
-- statement), tenant bench-t<T> uniform over 100, key bench-<K> uniform over 1000. No TTL, no
-- expected_version, no agent. realistic.sh runs it with -M prepared, -D val= the same 200-byte
-- JSON object pinsctl bench writes, and -D hash=0123456789abcdef.
\set t random(0, 99)
\set k random(0, 999)
WITH lk AS MATERIALIZED (SELECT revision FROM system.pin_revisions
    WHERE tenant_id = 'bench-t' || :t::text FOR UPDATE),
  cur AS (SELECT id, version, value, value_hash, (expires_at IS NULL OR expires_at > now()) AS live
    FROM system.memory_pins WHERE tenant_id = 'bench-t' || :t::text AND key = 'bench-' || :k::text
      AND (SELECT count(*) FROM lk) >= 0 FOR UPDATE),
  chk AS (SELECT 'ok'::text AS outcome),
  rn AS (INSERT INTO system.pin_revisions AS v (tenant_id, revision)
    SELECT 'bench-t' || :t::text, 1 FROM chk k WHERE k.outcome = 'ok' AND NOT EXISTS (SELECT 1 FROM lk)
    ON CONFLICT (tenant_id) DO UPDATE SET revision = v.revision + 1 RETURNING v.revision),
  rev AS (SELECT coalesce((SELECT revision FROM rn), (SELECT revision + 1 FROM lk)) AS revision
    FROM chk k WHERE k.outcome = 'ok'),
  upd AS (UPDATE system.memory_pins p SET
      id = CASE WHEN c.live THEN p.id ELSE nextval('system.memory_pins_id_seq') END,
      value = :val::jsonb, value_hash = :hash::text, source = 'bench',
      created_at = CASE WHEN c.live THEN p.created_at ELSE now() END,
      updated_at = now(), ttl_seconds = NULL::int4, expires_at = NULL::timestamptz,
      version = CASE WHEN c.live THEN p.version + 1 ELSE 1 END, revision = r.revision
    FROM cur c, rev r WHERE p.id = c.id
    RETURNING NOT c.live AS created, p.id, p.tenant_id, p.key, p.value::text AS value, p.source,
      (extract(epoch from p.created_at) * 1000000)::int8 AS created_us,
      (extract(epoch from p.updated_at) * 1000000)::int8 AS updated_us, p.ttl_seconds,
      (extract(epoch from p.expires_at) * 1000000)::int8 AS expires_us, p.version, p.revision,
      CASE WHEN c.live THEN coalesce(c.value_hash, left(encode(sha256(convert_to(c.value::text, 'UTF8')), 'hex'), 16)) END AS old_hash),
  ins AS (INSERT INTO system.memory_pins AS p (key, tenant_id, value, value_hash, source,
      created_at, updated_at, ttl_seconds, expires_at, version, revision)
    SELECT 'bench-' || :k::text, 'bench-t' || :t::text, :val::jsonb, :hash::text, 'bench', now(), now(), NULL, NULL, 1,
      r.revision
    FROM rev r WHERE NOT EXISTS (SELECT 1 FROM cur)
    ON CONFLICT (tenant_id, key) DO NOTHING
    RETURNING true AS created, p.id, p.tenant_id, p.key, p.value::text AS value, p.source,
      (extract(epoch from p.created_at) * 1000000)::int8 AS created_us,
      (extract(epoch from p.updated_at) * 1000000)::int8 AS updated_us, p.ttl_seconds,
      (extract(epoch from p.expires_at) * 1000000)::int8 AS expires_us, p.version, p.revision,
      NULL::text AS old_hash),
  res AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),
  ro AS (UPDATE system.pin_revisions v SET revision = v.revision + 1
    WHERE v.tenant_id = 'bench-t' || :t::text AND EXISTS (SELECT 1 FROM lk) AND EXISTS (SELECT 1 FROM res)),
  aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source,
      cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)
    SELECT now(), 'upsert', r.tenant_id, r.key, NULL, 'bench', false, 0.1::float8, true,
      r.old_hash, :hash::text, '{}'::jsonb FROM res r),
  chg AS (INSERT INTO system.pin_changes (tenant_id, revision, type, key, pin_id, value, source,
      created_at, updated_at, ttl_seconds, expires_at, version, ts)
    SELECT r.tenant_id, r.revision, 1, r.key, r.id, :val::jsonb, 'bench',
      'epoch'::timestamptz + r.created_us * interval '1 microsecond', now(), NULL, NULL, r.version, now()
    FROM res r RETURNING *),
  nt AS (SELECT pg_notify('pinsd_changes', CASE WHEN octet_length(x.t) < 8000 THEN x.t
      ELSE 'r ' || c.seq END) AS sent FROM chg c, LATERAL (SELECT concat_ws(' ', 'i', c.type, c.seq,
      c.revision, c.pin_id, (extract(epoch from c.created_at) * 1000000)::int8,
      (extract(epoch from c.updated_at) * 1000000)::int8, coalesce(c.ttl_seconds::text, '-'),
      coalesce(((extract(epoch from c.expires_at) * 1000000)::int8)::text, '-'), c.version,
      octet_length(convert_to(c.tenant_id, 'UTF8')), octet_length(convert_to(c.key, 'UTF8')),
      octet_length(convert_to(c.source, 'UTF8')))
      || ' ' || c.tenant_id || c.key || c.source || c.value::text AS t) x)
SELECT k.outcome, r.*, (SELECT count(*) FROM nt) AS notified FROM chk k LEFT JOIN res r ON true;
