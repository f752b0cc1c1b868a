-- pgbench: one GetPin as pinsd runs it on PostgreSQL (store/pg_sql.c store__pg_sql_get_batch,
-- a batch of one), tenant bench-t<T> uniform over 100, key bench-<K> over 1000: uniform, or
-- zipfian with -D zipf=1 (random_zipfian: PostgreSQL 15 needs s >= 1.001, so s = 1.001, not
-- pinsctl bench's 0.99). Run with -M prepared (the variables become parameters, as pinsd's are)
-- and -D zipf=0 or 1.
\set t random(0, 99)
\if :zipf
\set k random_zipfian(0, 999, 1.001)
\else
\set k random(0, 999)
\endif
SELECT q.i, p.id, p.tenant_id, p.key, p.value::text AS value, p.source,
  (extract(epoch from p.created_at) * 1000000)::int8 AS created_us,
  (extract(epoch from p.updated_at) * 1000000)::int8 AS updated_us, p.ttl_seconds,
  (extract(epoch from p.expires_at) * 1000000)::int8 AS expires_us, p.version
FROM unnest(ARRAY['bench-t' || :t::text], ARRAY['bench-' || :k::text],
            ARRAY[(extract(epoch from now()) * 1000000)::int8]) WITH ORDINALITY
  AS q(tenant_id, key, now_us, i)
JOIN system.memory_pins p ON p.tenant_id = q.tenant_id AND p.key = q.key
WHERE p.expires_at IS NULL OR p.expires_at > ('epoch'::timestamptz + (q.now_us)::int8 * interval '1 microsecond');
