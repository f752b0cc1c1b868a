/* store/pg_sql.c: the PostgreSQL backend's statement texts (store/pg_int.h).
 *
 * Every statement is parameterised and qualifies its tables (system.*): no session state, so
 * PgBouncer's transaction pooling works. A direct connection prepares each statement of
 * named_sql once, by name; through a pooler they are sent unnamed. Statements are compared by
 * address (store__pg_named_bit), so each text exists once, here.
 */
#include "store/pg_int.h"

#include <stdio.h>

/* The SQL texts below are kept out of clang-format, which would break them mid-word. */
/* clang-format off */

/* Microseconds since the epoch <-> timestamptz, exact (interval arithmetic is integral). */
#define TS(p) "('epoch'::timestamptz + (" p ")::int8 * interval '1 microsecond')"
#define US(c) "(extract(epoch from " c ") * 1000000)::int8"
/* A pin's columns (read_pin in postgres.c): id, tenant, key, value, source, created, updated,
 * ttl, expires, version, then its revision. */
#define PCOLS_BASE                                                                      \
    "p.id, p.tenant_id, p.key, p.value::text AS value, p.source, "                      \
    US("p.created_at") " AS created_us, " US("p.updated_at") " AS updated_us, "         \
    "p.ttl_seconds, " US("p.expires_at") " AS expires_us, p.version"
#define PCOLS PCOLS_BASE ", p.revision"
/* The same columns of a change (system.pin_changes AS c), the change's revision last. */
#define CCOLS                                                                            \
    "c.pin_id, c.tenant_id, c.key, c.value::text AS value, c.source, "                   \
    US("c.created_at") " AS created_us, " US("c.updated_at") " AS updated_us, "          \
    "c.ttl_seconds, " US("c.expires_at") " AS expires_us, c.version, c.revision"
#define HASH(v) "left(encode(sha256(convert_to(" v "::text, 'UTF8')), 'hex'), 16)"
#define EXTRA(p)                                                                              \
    "CASE WHEN " p "::text IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('request_id', " p \
    "::text) END"

/* ---- revisions and the change feed ----
 *
 * A change takes its tenant's next revision from system.pin_revisions (INSERT ... ON CONFLICT
 * DO UPDATE ... RETURNING) in its own statement and keeps the row locked until its transaction
 * commits, so a tenant's changes commit, and NOTIFY, in revision order.
 *
 * Lock order. Every statement that changes pins first locks the revision rows of the tenants it
 * touches, then their pins: lk locks the revision row, and the pin scan carries the qual
 * REV_LOCKED, which has no column in it, so PostgreSQL runs it once, as a one-time filter, before
 * the scan reads (and locks) its first row. A write segment is sorted by (tenant, key), so it
 * takes revision(t1), pins of t1, revision(t2), pins of t2: the same order in every transaction,
 * the sweeper's and the cleanup's included (they lock all their tenants' revision rows in tenant
 * order, then pins, skipping pins locked by others). Were the pin locked first, a segment
 * holding revision(t) would wait for a pin of t that another segment holds while that one waits
 * for revision(t). (A tenant's very first change finds no revision row to lock; until its row is
 * committed, two segments writing it may deadlock once: PostgreSQL detects it and the scheduler
 * runs the calls again.)
 *
 * No revision for a write that does not happen. An upsert's statement snapshot predates its wait
 * for lk, so it may miss a pin another transaction inserted meanwhile: its insert then does
 * nothing and the scheduler runs it again (pg_conn.c, finish_ok). So the pin takes lk's revision
 * + 1 (FOR UPDATE returns the row's latest version, after the wait) and the revision row is
 * raised after the write (ro), only when it happened; the UPDATE, too, works on the latest
 * version, which lk keeps locked. Only without a revision row yet (rn) is the revision taken
 * before the write, where a lost race skips one.
 *
 * Each change also inserts its row of system.pin_changes and NOTIFYs channel pinsd_changes in
 * the same statement (NOTIFY_FROM). The payload is the change inline when it is shorter than
 * NOTIFY's 8000 bytes: "i type seq revision pin_id created_us updated_us ttl|- expires_us|-
 * version tenant_len key_len source_len " followed by the tenant, key and source bytes (their
 * lengths just given, in UTF-8 bytes: the feed reads notifications with client_encoding UTF8,
 * whatever the database's encoding) and the value's jsonb text to the end; otherwise "r seq", and the
 * feed reads the change by its seq (store__pg_sql_change_get). A SELECT in WITH runs only when
 * read: each statement reads nt's count in its result (a column the store ignores).
 *
 * A revision taken by rn for an insert that then loses its race (sk) is announced on channel
 * pinsd_revisions as "s <revision> <tenant>": the read caches (store/pg_cache.c) learn that no
 * change carries it, so the tenant's latest revision is one they have applied. (A chain that
 * loses the same race skips its revisions silently: its tenant is read from the database until
 * its next change.) */
#define LK                                                                                   \
    " lk AS MATERIALIZED (SELECT revision FROM system.pin_revisions WHERE tenant_id = $1"       \
    " FOR UPDATE),"
#define REV_LOCKED "(SELECT count(*) FROM lk) >= 0"
#define NOTIFY_FROM(src)                                                                       \
    " SELECT pg_notify('pinsd_changes', CASE WHEN octet_length(x.t) < 8000 THEN x.t"          \
    " ELSE 'r ' || c.seq END) AS sent FROM " src " c, LATERAL (SELECT concat_ws(' ', 'i',"    \
    " c.type, c.seq, c.revision, c.pin_id, " US("c.created_at") ", " US("c.updated_at") ","  \
    " coalesce(c.ttl_seconds::text, '-'), coalesce((" US("c.expires_at") ")::text, '-'),"     \
    " c.version, octet_length(convert_to(c.tenant_id, 'UTF8')),"                             \
    " octet_length(convert_to(c.key, 'UTF8')), octet_length(convert_to(c.source, 'UTF8')))" \
    " || ' ' || c.tenant_id || c.key || c.source || c.value::text AS t) x"
#define CHANGE_COLS                                                                        \
    "(tenant_id, revision, type, key, pin_id, value, source, created_at, updated_at,"      \
    " ttl_seconds, expires_at, version, ts)"

/* $1 tenant $2 key $3 value $4 source $5 now $6 ttl $7 expires $8 expected $9 hash $10 agent
 * $11 latency $12 request id. An expired row is reused in place with a new id, version 1 and
 * created_at now (a new pin), so the statement never deletes and inserts one key at once. A
 * refused call (exists, mismatch) takes no revision. */
const char store__pg_sql_upsert[] =
    "WITH" LK
    " cur AS (SELECT id, version, value, value_hash,"
    " (expires_at IS NULL OR expires_at > " TS("$5") ") AS live"
    " FROM system.memory_pins WHERE tenant_id = $1 AND key = $2 AND " REV_LOCKED " FOR UPDATE),"
    " chk AS (SELECT CASE WHEN $8::int8 IS NULL THEN 'ok'"
    " WHEN $8::int8 = 0 THEN CASE WHEN EXISTS (SELECT 1 FROM cur WHERE live) THEN 'exists'"
    " ELSE 'ok' END"
    " WHEN EXISTS (SELECT 1 FROM cur WHERE live AND version = $8::int8) THEN 'ok'"
    " ELSE 'mismatch' END AS outcome),"
    " rn AS (INSERT INTO system.pin_revisions AS v (tenant_id, revision)"
    " SELECT $1, 1 FROM chk k WHERE k.outcome = 'ok' AND NOT EXISTS (SELECT 1 FROM lk)"
    " ON CONFLICT (tenant_id) DO UPDATE SET revision = v.revision + 1 RETURNING v.revision),"
    " rev AS (SELECT coalesce((SELECT revision FROM rn), (SELECT revision + 1 FROM lk))"
    " AS revision FROM chk k WHERE k.outcome = 'ok'),"
    " upd AS (UPDATE system.memory_pins p SET"
    " id = CASE WHEN c.live THEN p.id ELSE nextval('system.memory_pins_id_seq') END,"
    " value = $3::jsonb, value_hash = $9, source = $4,"
    " created_at = CASE WHEN c.live THEN p.created_at ELSE " TS("$5") " END,"
    " updated_at = " TS("$5") ", ttl_seconds = $6::int4, expires_at = " TS("$7") ","
    " version = CASE WHEN c.live THEN p.version + 1 ELSE 1 END, revision = r.revision"
    " FROM cur c, rev r WHERE p.id = c.id"
    " RETURNING NOT c.live AS created, " PCOLS ","
    " CASE WHEN c.live THEN coalesce(c.value_hash, " HASH("c.value") ") END AS old_hash),"
    " ins AS (INSERT INTO system.memory_pins AS p (key, tenant_id, value, value_hash, source,"
    " created_at, updated_at, ttl_seconds, expires_at, version, revision)"
    " SELECT $2, $1, $3::jsonb, $9, $4, " TS("$5") ", " TS("$5") ", $6::int4, " TS("$7") ", 1,"
    " r.revision FROM rev r WHERE NOT EXISTS (SELECT 1 FROM cur)"
    " ON CONFLICT (tenant_id, key) DO NOTHING"
    " RETURNING true AS created, " PCOLS ", NULL::text AS old_hash),"
    " res AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),"
    " ro AS (UPDATE system.pin_revisions v SET revision = v.revision + 1 WHERE v.tenant_id = $1"
    " AND EXISTS (SELECT 1 FROM lk) AND EXISTS (SELECT 1 FROM res)),"
    " aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source,"
    " cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)"
    " SELECT " TS("$5") ", 'upsert', $1, $2, $10, $4, false, $11::float8, true, r.old_hash, $9, "
    EXTRA("$12") " FROM res r),"
    " chg AS (INSERT INTO system.pin_changes " CHANGE_COLS
    " SELECT $1, r.revision, 1, $2, r.id, $3::jsonb, $4, " TS("r.created_us") ", " TS("$5") ","
    " $6::int4, " TS("$7") ", r.version, " TS("$5") " FROM res r RETURNING *),"
    " nt AS (" NOTIFY_FROM("chg") "),"
    " sk AS (SELECT pg_notify('pinsd_revisions', 's ' || n.revision || ' ' || $1) AS sent"
    " FROM rn n WHERE NOT EXISTS (SELECT 1 FROM res))"
    " SELECT k.outcome, r.*, (SELECT count(*) FROM nt) + (SELECT count(*) FROM sk) AS notified"
    " FROM chk k LEFT JOIN res r ON true";

/* The pieces of store__pg_sql_upsert_chain that use the macros above. */
#define CH_FNOW    TS("f.now_us")
#define CH_LNOW    TS("l.now_us")
#define CH_LEXP    TS("l.exp_us")
#define CH_WNOW    TS("w.now_us")
#define CH_CREATED US("p.created_at")
#define CH_OLDHASH "coalesce(c.value_hash, " HASH("c.value") ")"
#define CH_EXTRA   EXTRA("w.rid")

/* Several upserts of one key without expected_version, waiting in one segment in their order:
 * applied as one statement, with the outcome of running them one after another. The row is
 * written once, with the last call's value and version + n; each call gets its own version, value,
 * updated_at, TTL, revision (n consecutive ones), audit row (old_value_hash: the value before it)
 * and change row, and the first one creates the pin when there was none or it had expired (at
 * the first call's time; the store chains calls only while each finds the previous one's pin
 * live). $1 tenant $2 key, then arrays in call order: $3 values $4 sources $5 nows $6 ttls
 * $7 expiries $8 hashes $9 agents $10 latencies $11 request ids. One row per call: its 1-based
 * position, then store__pg_sql_upsert's columns. */
const char store__pg_sql_upsert_chain[] =
    "WITH" LK
    " q AS (SELECT * FROM unnest($3::text[], $4::text[], $5::int8[], $6::int4[], $7::int8[],"
    " $8::text[], $9::text[], $10::float8[], $11::text[]) WITH ORDINALITY"
    " AS q(value, source, now_us, ttl, exp_us, hash, agent, latency, rid, i)),"
    " f AS (SELECT * FROM q ORDER BY i LIMIT 1),"
    " l AS (SELECT *, i AS n FROM q ORDER BY i DESC LIMIT 1),"
    " cur AS (SELECT p0.id, p0.value, p0.value_hash,"
    " (p0.expires_at IS NULL OR p0.expires_at > " CH_FNOW ") AS live"
    " FROM system.memory_pins p0, f WHERE p0.tenant_id = $1 AND p0.key = $2 AND " REV_LOCKED
    " FOR UPDATE OF p0),"
    " rn AS (INSERT INTO system.pin_revisions AS v (tenant_id, revision)"
    " SELECT $1, l.n FROM l WHERE NOT EXISTS (SELECT 1 FROM lk)"
    " ON CONFLICT (tenant_id) DO UPDATE SET revision = v.revision + excluded.revision"
    " RETURNING v.revision AS last_rev),"
    " rev AS (SELECT coalesce((SELECT last_rev FROM rn), (SELECT revision FROM lk) + l.n)"
    " AS last_rev FROM l),"
    " upd AS (UPDATE system.memory_pins p SET"
    " id = CASE WHEN c.live THEN p.id ELSE nextval('system.memory_pins_id_seq') END,"
    " value = l.value::jsonb, value_hash = l.hash, source = l.source,"
    " created_at = CASE WHEN c.live THEN p.created_at ELSE " CH_FNOW " END,"
    " updated_at = " CH_LNOW ", ttl_seconds = l.ttl, expires_at = " CH_LEXP ","
    " version = CASE WHEN c.live THEN p.version ELSE 0 END + l.n, revision = rv.last_rev"
    " FROM cur c, f, l, rev rv WHERE p.id = c.id"
    " RETURNING p.id, " CH_CREATED " AS created_us, p.version AS last, c.live,"
    " CASE WHEN c.live THEN " CH_OLDHASH " END AS old_hash),"
    " ins AS (INSERT INTO system.memory_pins AS p (key, tenant_id, value, value_hash, source,"
    " created_at, updated_at, ttl_seconds, expires_at, version, revision)"
    " SELECT $2, $1, l.value::jsonb, l.hash, l.source, " CH_FNOW ", " CH_LNOW ", l.ttl, " CH_LEXP
    ", l.n, rv.last_rev FROM f, l, rev rv WHERE NOT EXISTS (SELECT 1 FROM cur)"
    " ON CONFLICT (tenant_id, key) DO NOTHING"
    " RETURNING p.id, " CH_CREATED " AS created_us, p.version AS last, false AS live,"
    " NULL::text AS old_hash),"
    " res AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),"
    " ro AS (UPDATE system.pin_revisions v SET revision = v.revision + l.n FROM l"
    " WHERE v.tenant_id = $1 AND EXISTS (SELECT 1 FROM lk) AND EXISTS (SELECT 1 FROM res)),"
    " w AS (SELECT q.*, r.id, r.created_us, r.last - l.n + q.i AS version,"
    " rv.last_rev - l.n + q.i AS revision, q.i = 1 AND NOT r.live AS created,"
    " CASE WHEN q.i = 1 THEN r.old_hash ELSE lag(q.hash) OVER (ORDER BY q.i) END AS old_hash"
    " FROM q, res r, l, rev rv),"
    " aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source,"
    " cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)"
    " SELECT " CH_WNOW ", 'upsert', $1, $2, w.agent, w.source, false, w.latency, true,"
    " w.old_hash, w.hash, " CH_EXTRA " FROM w),"
    " chg AS (INSERT INTO system.pin_changes " CHANGE_COLS
    " SELECT $1, w.revision, 1, $2, w.id, w.value::jsonb, w.source, " TS("w.created_us") ","
    " " CH_WNOW ", w.ttl, " TS("w.exp_us") ", w.version, " CH_WNOW " FROM w RETURNING *),"
    " nt AS (" NOTIFY_FROM("(SELECT * FROM chg ORDER BY revision)") ")"
    " SELECT w.i, 'ok'::text, w.created, w.id, $1::text, $2::text, w.value::jsonb::text,"
    " w.source, w.created_us, w.now_us, w.ttl, w.exp_us, w.version, w.revision, n.notified"
    " FROM w, (SELECT count(*) AS notified FROM nt) n ORDER BY w.i";

/* $1 tenant $2 key $3 now $4 expected $5 agent $6 latency $7 request id. The pin comes back as
 * it was, with the delete's revision. */
const char store__pg_sql_delete[] =
    "WITH" LK
    " cur AS (SELECT id, version, value_hash FROM system.memory_pins"
    " WHERE tenant_id = $1 AND key = $2 AND " REV_LOCKED " FOR UPDATE),"
    " chk AS (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM cur) THEN 'absent'"
    " WHEN $4::int8 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM cur WHERE version = $4::int8)"
    " THEN 'mismatch' ELSE 'ok' END AS outcome),"
    " del AS (DELETE FROM system.memory_pins p USING cur c, chk k"
    " WHERE p.id = c.id AND k.outcome = 'ok'"
    " RETURNING " PCOLS_BASE ", coalesce(c.value_hash, " HASH("p.value") ") AS old_hash,"
    " p.created_at, p.updated_at, p.expires_at, p.value AS jvalue),"
    " rev AS (INSERT INTO system.pin_revisions AS v (tenant_id, revision) SELECT $1, 1 FROM del"
    " ON CONFLICT (tenant_id) DO UPDATE SET revision = v.revision + 1 RETURNING v.revision),"
    " aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source,"
    " cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)"
    " SELECT " TS("$3") ", 'delete', $1, $2, $5, d.source, false, $6::float8, true, d.old_hash,"
    " NULL, " EXTRA("$7") " FROM del d),"
    " chg AS (INSERT INTO system.pin_changes " CHANGE_COLS
    " SELECT $1, r.revision, 2, $2, d.id, d.jvalue, d.source, d.created_at, d.updated_at,"
    " d.ttl_seconds, d.expires_at, d.version, " TS("$3") " FROM del d, rev r RETURNING *),"
    " nt AS (" NOTIFY_FROM("chg") ")"
    " SELECT k.outcome, false AS created, d.id, d.tenant_id, d.key, d.value, d.source,"
    " d.created_us, d.updated_us, d.ttl_seconds, d.expires_us, d.version, r.revision,"
    " (SELECT count(*) FROM nt) AS notified"
    " FROM chk k LEFT JOIN del d ON true LEFT JOIN rev r ON true";

/* $1 tenants $2 keys $3 nows: arrays, one element per GetPin call; the first column is the
 * call's 1-based position. */
const char store__pg_sql_get_batch[] =
    "SELECT q.i, " PCOLS " FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY"
    " AS q(tenant_id, key, now_us, i) JOIN system.memory_pins p"
    " ON p.tenant_id = q.tenant_id AND p.key = q.key"
    " WHERE p.expires_at IS NULL OR p.expires_at > " TS("q.now_us");

/* The same, through the read cache (store/pg_cache.c): $1..$3 only the calls the cache does not
 * answer, and $4 the distinct tenants of the batch, whose current revisions (the read index)
 * come back in the same snapshot as rows -j (j: the tenant's element, 1-based), the revision in
 * the last column. */
const char store__pg_sql_get_batch_ri[] =
    "SELECT q.i, " PCOLS " FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY"
    " AS q(tenant_id, key, now_us, i) JOIN system.memory_pins p"
    " ON p.tenant_id = q.tenant_id AND p.key = q.key"
    " WHERE p.expires_at IS NULL OR p.expires_at > " TS("q.now_us")
    " UNION ALL SELECT -t.j, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " coalesce(v.revision, 0) FROM unnest($4::text[]) WITH ORDINALITY AS t(tenant_id, j)"
    " LEFT JOIN system.pin_revisions v ON v.tenant_id = t.tenant_id";

/* The change feed, once it listens (store/pg_cache.c): every tenant's revision ($1 rows at
 * most), then a notification of its own ($1: "b <token>") that marks where the list was read
 * in the stream of changes (on channel pinsd_revisions, which the feed also listens to: one
 * commit-ordered stream with pinsd_changes, and replicas that do not listen to it ignore it). */
const char store__pg_sql_revisions_all[] =
    "SELECT tenant_id, revision FROM system.pin_revisions LIMIT $1::int8";
const char store__pg_sql_barrier[] = "SELECT pg_notify('pinsd_revisions', $1::text)";

/* $1 tenant $2 prefix $3 include expired $4 now $5 limit $6 offset $7 cursor created $8 cursor id.
 * Prefixes match literally: left() compares characters, unlike LIKE and its wildcards. Columns:
 * the total, the tenant's revision (read in the page's snapshot), then the pin. */
#define LISTW                                                        \
    " p.tenant_id = $1 AND left(p.key, length($2::text)) = $2::text" \
    " AND ($3::bool OR p.expires_at IS NULL OR p.expires_at > " TS("$4") ")"
const char store__pg_sql_list[] =
    "WITH t AS (SELECT count(*) AS total, (SELECT coalesce(max(v.revision), 0)"
    " FROM system.pin_revisions v WHERE v.tenant_id = $1) AS rev"
    " FROM system.memory_pins p WHERE" LISTW ")"
    " SELECT t.total, t.rev, r.* FROM t LEFT JOIN LATERAL (SELECT " PCOLS
    " FROM system.memory_pins p"
    " WHERE" LISTW " AND ($7::int8 IS NULL OR (p.created_at, p.id) < (" TS("$7") ", $8::int8))"
    " ORDER BY p.created_at DESC, p.id DESC LIMIT $5::int8"
    " OFFSET CASE WHEN $7::int8 IS NULL THEN $6::int8 ELSE 0 END) r ON true";

/* $1 tenant $2 key $3 operation (each NULL: any) $4 limit $5 offset. */
#define AUDW                                                                      \
    " ($1::text IS NULL OR a.tenant_id = $1) AND ($2::text IS NULL OR a.key = $2" \
    " OR (a.key = '*' AND a.extra->'keys' ? $2))"                                 \
    " AND ($3::text IS NULL OR a.operation = $3)"
const char store__pg_sql_audit[] =
    "WITH t AS (SELECT count(*) AS total FROM system.memory_audit a WHERE" AUDW ")"
    " SELECT t.total, r.* FROM t LEFT JOIN LATERAL (SELECT a.id, " US("a.ts") " AS ts_us,"
    " a.operation, a.tenant_id, a.key, a.agent_id, a.source, a.cache_hit,"
    " a.latency_ms, a.success, a.error_message, a.old_value_hash, a.new_value_hash"
    " FROM system.memory_audit a WHERE" AUDW " ORDER BY a.ts DESC, a.id DESC"
    " LIMIT $4::int8 OFFSET $5::int8) r ON true";

/* The reclaiming of expired pins, after cand (the candidates' id and tenant_id) and the lock
 * clause of their rows: the candidates' tenants' revision rows are locked in tenant order, then
 * the pins still expired at now, each becoming an EXPIRE change with the next revision of its
 * tenant (in expiry order). One row: the count of pins reclaimed. */
#define RECLAIM(now, lock)                                                                    \
    " lk AS MATERIALIZED (SELECT tenant_id FROM system.pin_revisions"                         \
    " WHERE tenant_id IN (SELECT tenant_id FROM cand) ORDER BY tenant_id COLLATE \"C\" FOR UPDATE),"        \
    " v AS (SELECT id FROM system.memory_pins WHERE id IN (SELECT id FROM cand)"              \
    " AND expires_at <= " TS(now) " AND " REV_LOCKED " " lock "),"                            \
    " del AS (DELETE FROM system.memory_pins p USING v WHERE p.id = v.id RETURNING p.id,"     \
    " p.tenant_id, p.key, p.value, p.source, p.created_at, p.updated_at, p.ttl_seconds,"      \
    " p.expires_at, p.version),"                                                              \
    " n AS (SELECT tenant_id, count(*) AS n FROM del GROUP BY tenant_id),"                    \
    " rev AS (INSERT INTO system.pin_revisions AS r (tenant_id, revision)"                    \
    " SELECT tenant_id, n FROM n ORDER BY tenant_id COLLATE \"C\""                                          \
    " ON CONFLICT (tenant_id) DO UPDATE SET revision = r.revision + excluded.revision"        \
    " RETURNING r.tenant_id, r.revision),"                                                    \
    " chg AS (INSERT INTO system.pin_changes " CHANGE_COLS                                    \
    " SELECT d.tenant_id, rv.revision - n.n + row_number() OVER (PARTITION BY d.tenant_id"    \
    " ORDER BY d.expires_at, d.id), 3, d.key, d.id, d.value, d.source, d.created_at,"         \
    " d.updated_at, d.ttl_seconds, d.expires_at, d.version, " TS(now)                         \
    " FROM del d JOIN n ON n.tenant_id = d.tenant_id JOIN rev rv ON rv.tenant_id = d.tenant_id" \
    " RETURNING *),"                                                                          \
    " nt AS (" NOTIFY_FROM("(SELECT * FROM chg ORDER BY tenant_id COLLATE \"C\", revision)") ")"            \
    " SELECT count(*) FROM nt"

/* $1 tenant (NULL: every tenant) $2 now. Waits for pins other transactions hold. */
const char store__pg_sql_cleanup[] =
    "WITH cand AS (SELECT id, tenant_id FROM system.memory_pins"
    " WHERE ($1::text IS NULL OR tenant_id = $1)"
    " AND expires_at IS NOT NULL AND expires_at <= " TS("$2") "),"
    RECLAIM("$2", "FOR UPDATE");

/* $1 now $2 batch: the oldest expiries first, skipping pins another sweeper holds. */
const char store__pg_sql_sweep[] =
    "WITH cand AS (SELECT id, tenant_id FROM system.memory_pins"
    " WHERE expires_at IS NOT NULL AND expires_at <= " TS("$1")
    " ORDER BY expires_at LIMIT $2::int8),"
    RECLAIM("$1", "FOR UPDATE SKIP LOCKED");

/* $1 tenant $2 prefix $3 after $4 limit. Columns: the tenant's revision and trimmed revision
 * (one snapshot with the changes), then the change's type and seq and the pin (CCOLS); no
 * change: one row whose type is NULL. */
const char store__pg_sql_changes[] =
    "SELECT v.revision, v.trimmed, c.* FROM (SELECT coalesce(max(revision), 0) AS revision,"
    " coalesce(max(trimmed), 0) AS trimmed FROM system.pin_revisions WHERE tenant_id = $1) v"
    " LEFT JOIN LATERAL (SELECT c.type, c.seq, " CCOLS " FROM system.pin_changes c"
    " WHERE c.tenant_id = $1 AND c.revision > $3::int8"
    " AND left(c.key, length($2::text)) = $2::text ORDER BY c.revision LIMIT $4::int8) c ON true";

/* $1 seq: the change the feed got by reference. Columns: type, seq, then the pin (CCOLS). */
const char store__pg_sql_change_get[] =
    "SELECT c.type, c.seq, " CCOLS " FROM system.pin_changes c WHERE c.seq = $1::int8";

/* The history retention. $1 before $2 max rows (<= 0: none) $3 batch: the oldest rows first
 * among those older than before or $2 or more seqs below the newest (max(seq) is one step down
 * the primary key; seqs a rolled back insert skipped make it keep slightly fewer), skipping rows another replica's
 * retention holds; each tenant's trimmed revision rises to the highest it lost (its revision
 * rows locked in tenant order). One row: the count deleted. */
const char store__pg_sql_history_expire[] =
    "WITH cand AS ((SELECT seq FROM system.pin_changes WHERE ts < " TS("$1")
    " ORDER BY ts LIMIT $3::int8)"
    " UNION ALL (SELECT seq FROM system.pin_changes WHERE $2::int8 > 0"
    " AND seq <= (SELECT max(seq) FROM system.pin_changes) - $2::int8"
    " ORDER BY seq LIMIT $3::int8)),"
    " d AS (DELETE FROM system.pin_changes WHERE seq IN (SELECT seq FROM system.pin_changes"
    " WHERE seq IN (SELECT seq FROM cand) ORDER BY seq LIMIT $3::int8 FOR UPDATE SKIP LOCKED)"
    " RETURNING tenant_id, revision),"
    " t AS (INSERT INTO system.pin_revisions AS r (tenant_id, revision, trimmed)"
    " SELECT tenant_id, max(revision), max(revision) FROM d GROUP BY tenant_id"
    " ORDER BY tenant_id COLLATE \"C\""
    " ON CONFLICT (tenant_id) DO UPDATE SET trimmed = greatest(r.trimmed, excluded.trimmed))"
    " SELECT count(*) FROM d";

/* clang-format on */

/* $1 a JSON array of rows, one object per row with the columns named below. */
const char store__pg_sql_maudit_write[] =
    "INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source, cache_hit,"
    " latency_ms, success, error_message, old_value_hash, new_value_hash, extra)"
    " SELECT " TS(
        "x.ts_us") ", x.operation, x.tenant_id, x.key, x.agent_id, x.source,"
                   " coalesce(x.cache_hit, false), x.latency_ms, coalesce(x.success, true), "
                   "x.error_message,"
                   " x.old_value_hash, x.new_value_hash,"
                   " CASE WHEN x.keys IS NOT NULL THEN jsonb_build_object('reads', x.reads, "
                   "'keys', x.keys)"
                   " WHEN x.reads > 1 THEN jsonb_build_object('reads', x.reads)"
                   " ELSE '{}'::jsonb END FROM jsonb_to_recordset($1::jsonb) AS "
                   "x(ts_us int8,"
                   " operation text, tenant_id text, key text, agent_id text, source text, "
                   "cache_hit bool,"
                   " latency_ms float8, success bool, error_message text, old_value_hash text,"
                   " new_value_hash text, reads int8, keys jsonb)";
const char store__pg_sql_raudit_write[] =
    "INSERT INTO system.rbac_audit (ts, subject, resource, action, allowed, reason, roles, path,"
    " method, tenant_id, request_id, latency_ms, extra)"
    " SELECT " TS("x.ts_us") ", x.subject, x.resource, x.action, x.allowed, x.reason, x.roles,"
                             " x.path, x.method, x.tenant_id, x.request_id, x.latency_ms,"
                             " CASE WHEN x.count > 1 THEN jsonb_build_object('count', x.count)"
                             " ELSE '{}'::jsonb END"
                             " FROM jsonb_to_recordset($1::jsonb) AS x(ts_us int8, subject text,"
                             " resource text, action text, allowed bool, reason text,"
                             " roles text[], path text, method text, tenant_id text,"
                             " request_id text, latency_ms float8, count int8)";

/* $1 resource $2 action $3 subject $4 tenant $5 allowed $6 since (each NULL: any) $7 limit
 * $8 offset. Roles come back joined with U+001F (store__split_roles). */
#define RAUDW                                                                              \
    " ($1::text IS NULL OR a.resource = $1) AND ($2::text IS NULL OR a.action = $2)"       \
    " AND ($3::text IS NULL OR a.subject = $3) AND ($4::text IS NULL OR a.tenant_id = $4)" \
    " AND ($5::bool IS NULL OR a.allowed = $5) AND ($6::int8 IS NULL OR a.ts >= " TS("$6") ")"
const char store__pg_sql_raudit_list[] =
    "WITH t AS (SELECT count(*) AS total FROM system.rbac_audit a WHERE" RAUDW ")"
    " SELECT t.total, r.* FROM t LEFT JOIN LATERAL (SELECT a.id, " US(
        "a.ts") " AS ts_us,"
                " a.subject, a.resource, a.action, a.allowed, a.reason, array_to_string(a.roles, "
                "chr(31)),"
                " a.path, a.method, a.tenant_id, a.request_id, a.latency_ms"
                " FROM system.rbac_audit a WHERE" RAUDW " ORDER BY a.ts DESC, a.id DESC"
                " LIMIT $7::int8 OFFSET $8::int8) r ON true";

/* $1 before. */
const char store__pg_sql_raudit_cleanup[] = "DELETE FROM system.rbac_audit WHERE ts < " TS("$1");

/* The audit retention. $1 before $2 batch: the oldest rows first (the ts indexes), skipping
 * rows another replica's retention holds. */
const char store__pg_sql_raudit_expire[] =
    "DELETE FROM system.rbac_audit WHERE id IN (SELECT id FROM system.rbac_audit"
    " WHERE ts < " TS("$1") " ORDER BY ts LIMIT $2::int8 FOR UPDATE SKIP LOCKED)";
const char store__pg_sql_maudit_expire[] =
    "DELETE FROM system.memory_audit WHERE id IN (SELECT id FROM system.memory_audit"
    " WHERE ts < " TS("$1") " ORDER BY ts LIMIT $2::int8 FOR UPDATE SKIP LOCKED)";

/* The readiness ping reads the schema version too: a migration reverted under a running pinsd
 * shows on /ready at once (store__pg_deliver), not only when a call fails. */
const char store__pg_sql_ping[] =
    "SELECT coalesce(max(version), 0) FROM system.pins_schema_migrations";
/* The schema version, and the server process's pid: when it is the pid libpq got at login, the
 * connection goes straight to PostgreSQL (no pooler between), so named statements last. */
const char store__pg_sql_schema[] =
    "SELECT coalesce(max(version), 0), pg_backend_pid() FROM system.pins_schema_migrations";

/* Sent before a read batch on a direct connection, in its transaction. The planner cannot know
 * the arrays' length in a generic plan (it assumes 100 rows), so it would keep planning the batch
 * for each call's parameters, which costs more than running it; for this statement the generic
 * plan (a nested loop over the keys' unique index) is always the right one, and is kept.
 * set_config(..., true) rather than SET LOCAL: a segment is an implicit transaction, not a
 * transaction block, and SET LOCAL there writes a WARNING to the server's log every time (the
 * setting applies all the same, until the segment's sync). */
const char store__pg_sql_generic[] =
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)";

/* The statements a direct connection prepares once, by name ("pinsd_<index>"). */
static const char *const named_sql[] = {
    store__pg_sql_upsert,       store__pg_sql_delete,         store__pg_sql_get_batch,
    store__pg_sql_list,         store__pg_sql_audit,          store__pg_sql_cleanup,
    store__pg_sql_sweep,        store__pg_sql_maudit_write,   store__pg_sql_raudit_write,
    store__pg_sql_raudit_list,  store__pg_sql_raudit_cleanup, store__pg_sql_ping,
    store__pg_sql_upsert_chain, store__pg_sql_raudit_expire,  store__pg_sql_maudit_expire,
    store__pg_sql_changes,      store__pg_sql_history_expire, store__pg_sql_get_batch_ri,
};

/* The bit of sql in pg_conn.prepared, with its statement name in name[16]; 0 for a statement
 * that is never named. */
uint32_t store__pg_named_bit(const char *sql, char name[16])
{
    for (size_t i = 0; i < sizeof(named_sql) / sizeof(named_sql[0]); i++) {
        if (named_sql[i] == sql) {
            snprintf(name, 16, "pinsd_%zu", i);
            return UINT32_C(1) << i;
        }
    }
    return 0;
}
