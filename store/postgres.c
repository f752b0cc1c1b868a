/* store/postgres.c: the PostgreSQL backend (store/README.md, "PostgreSQL").
 *
 * Each session owns a slice of the pool (DB_POOL_SIZE split across the workers, at least one
 * connection each). Connections are libpq non-blocking connections in pipeline mode, watched on
 * the session's loop (store/pg_loop.c). Statements are parameterised and unnamed (no named
 * prepared statement, no session state: PgBouncer transaction pooling works).
 *
 * Calls wait FIFO in a bounded queue. Once per loop iteration (a store__defer, so the calls read
 * from all clients in that iteration go together) and whenever a connection has room, the queue is
 * cut into segments; each ends with one sync, so a segment is one implicit transaction, and goes to
 * the least busy connection (a read batch: to the first with room, see dispatch()):
 *   - GetPin calls waiting together (up to GET_BATCH_MAX) become one statement that looks up all
 *     their keys at once, each distinct (tenant, key) once: calls of one key share its row, each
 *     checked against its own clock for expiry;
 *   - upserts and deletes waiting together (up to WRITE_BATCH_MAX) are consecutive statements of
 *     one segment, one transaction with one commit. They are sorted by tenant and key, so two
 *     segments take their row locks in the same order and never deadlock. Each is answered only
 *     when the sync reports the commit. When one fails, PostgreSQL rolls the whole segment back:
 *     the failing call gets its error (or one retry in a segment of its own), the others are
 *     queued again. Consecutive upserts of one key without expected_version are one statement
 *     (sql_upsert_chain) that writes the row once and answers each call as if run in turn;
 *   - every other call is a segment of its own.
 * With no connection up or coming up, or a full queue, calls fail at once with PINS_ESTORE. A
 * call past its deadline completes with PINS_EDEADLINE_EXCEEDED at once and its result is
 * discarded when it arrives. Once the statement the server is running serves only such calls, a
 * cancel request goes out (from a helper thread: PQcancel connects and waits); the statement
 * fails with 57014, its segment rolls back and the calls still waiting in it run again (so does a
 * statement that a late cancel hits instead). A connection that still has not answered a second
 * past the deadline is dropped and reconnected. Connections reconnect with exponential backoff and
 * jitter (100 ms .. 2 s). When one connection of the store comes back after failing, every
 * connection still down, in every worker's session, tries again at its next tick instead of
 * sleeping out its backoff: the server is back, and a worker left waiting up to 2 s would keep
 * failing the calls its clients send.
 *
 * Without a loop (base NULL: tools and tests) every operation blocks in poll() until its callback
 * ran, so the same code serves pinsctl-style callers.
 */
#include "store/store_int.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <libpq-fe.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/fmt.h"
#include "observability/metrics.h"

#define SEGS_MAX           4                      /* segments in flight per connection */
#define GET_BATCH_MAX      64                     /* GetPin calls in one statement */
#define WRITE_BATCH_MAX    128                    /* upserts and deletes in one transaction */
#define BUSY_SLOTS         16384                  /* counters of keys being written (power of 2) */
#define QUEUE_MAX          1024                   /* calls waiting per session */
#define TICK_MS            20                     /* deadline and reconnect check period */
#define BACKOFF_MIN_MS     100                    /* first reconnect delay */
#define BACKOFF_MAX_MS     2000                   /* largest reconnect delay: recovery < 5 s */
#define CONNECT_TIMEOUT_NS (INT64_C(5000000000))  /* a connection attempt, schema check included */
#define DEFAULT_TIMEOUT_NS (INT64_C(30000000000)) /* the limit of a call without a deadline */
#define STUCK_NS           (INT64_C(1000000000))  /* answer overdue past a deadline: reconnect */
#define NPARAMS            14

/* ---- SQL ------------------------------------------------------------------------------------ */

/* Microseconds since the epoch <-> timestamptz, exact (interval arithmetic is integral). */
#define TS(p) "('epoch'::timestamptz + (" p ")::int8 * interval '1 microsecond')"
#define US(c) "(extract(epoch from " c ") * 1000000)::int8"
#define PCOLS                                                                                    \
    "p.id, p.tenant_id, p.key, p.value::text AS value, p.source, " US(                           \
        "p.created_at") " AS created_us, " US("p.updated_at") " AS updated_us, "                 \
                                                              "p.ttl_seconds, " US(              \
                                                                  "p.expires_at") " AS "         \
                                                                                  "expires_us, " \
                                                                                  "p.version"
#define HASH(v) "left(encode(sha256(convert_to(" v "::text, 'UTF8')), 'hex'), 16)"
#define EXTRA(p)                                                                              \
    "CASE WHEN " p "::text IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('request_id', " p \
    "::text) END"

/* $1 tenant $2 key $3 value $4 source $5 now $6 ttl $7 expires $8 expected $9 hash $10 agent
 * $11 latency $12 request id. An expired row is reused in place with a new id, version 1 and
 * created_at now (a new pin), so the statement never deletes and inserts one key at once. */
static const char sql_upsert[] =
    "WITH cur AS (SELECT id, version, value, value_hash, (expires_at IS NULL OR expires_at "
    "> " TS("$5") ") AS live FROM system.memory_pins WHERE tenant_id = $1 AND key = $2 FOR UPDATE),"
                  " chk AS (SELECT CASE WHEN $8::int8 IS NULL THEN 'ok'"
                  " WHEN $8::int8 = 0 THEN CASE WHEN EXISTS (SELECT 1 FROM cur WHERE live) THEN "
                  "'exists'"
                  " ELSE 'ok' END"
                  " WHEN EXISTS (SELECT 1 FROM cur WHERE live AND version = $8::int8) THEN 'ok'"
                  " ELSE 'mismatch' END AS outcome),"
                  " upd AS (UPDATE system.memory_pins p SET"
                  " id = CASE WHEN c.live THEN p.id ELSE nextval('system.memory_pins_id_seq') END,"
                  " value = $3::jsonb, value_hash = $9, source = $4,"
                  " created_at = CASE WHEN c.live THEN p.created_at ELSE " TS(
                      "$5") " END,"
                            " updated_at = " TS("$5") ", ttl_seconds = $6::int4, expires_at = " TS(
                                "$7") ","
                                      " version = CASE WHEN c.live THEN p.version + 1 ELSE 1 END"
                                      " FROM cur c, chk k WHERE p.id = c.id AND k.outcome = 'ok'"
                                      " RETURNING NOT c.live AS created, " PCOLS ","
                                      " CASE WHEN c.live THEN coalesce(c.value_hash, " HASH(
                                          "c.value") ") END AS old_hash),"
                                                     " ins AS (INSERT INTO system.memory_pins AS p "
                                                     "(key, tenant_id, value, value_hash, source,"
                                                     " created_at, updated_at, ttl_seconds, "
                                                     "expires_at, version)"
                                                     " SELECT $2, $1, $3::jsonb, $9, $4, " TS("$5") ", " TS("$5") ", $6::int4, " TS(
                                                         "$7") ", 1"
                                                               " FROM chk k WHERE k.outcome = 'ok' "
                                                               "AND NOT EXISTS (SELECT 1 FROM cur)"
                                                               " ON CONFLICT (tenant_id, key) DO "
                                                               "NOTHING"
                                                               " RETURNING true AS created, " PCOLS
                                                               ", NULL::text AS old_hash),"
                                                               " res AS (SELECT * FROM upd UNION "
                                                               "ALL SELECT * FROM ins),"
                                                               " aud AS (INSERT INTO "
                                                               "system.memory_audit (ts, "
                                                               "operation, tenant_id, key, "
                                                               "agent_id, source,"
                                                               " cache_hit, latency_ms, success, "
                                                               "old_value_hash, new_value_hash, "
                                                               "extra)"
                                                               " SELECT " TS(
                                                                   "$5") ", 'upsert', $1, $2, $10, "
                                                                         "$4, false, $11::float8, "
                                                                         "true, r.old_hash, "
                                                                         "$9, " EXTRA("$12") " FROM"
                                                                                             " res "
                                                                                             "r)"
                                                                                             " SELE"
                                                                                             "CT "
                                                                                             "k."
                                                                                             "outco"
                                                                                             "me, "
                                                                                             "r.* "
                                                                                             "FROM "
                                                                                             "chk "
                                                                                             "k "
                                                                                             "LEFT "
                                                                                             "JOIN "
                                                                                             "res "
                                                                                             "r ON "
                                                                                             "true";

/* The pieces of sql_upsert_chain that use the macros above. */
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
 * updated_at, TTL and audit row (old_value_hash: the value before it), and the first one creates
 * the pin when there was none or it had expired (at the first call's time; the store chains
 * calls only while each finds the previous one's pin live). $1 tenant $2 key, then arrays in call
 * order: $3 values $4 sources $5 nows $6 ttls $7 expiries $8 hashes $9 agents $10 latencies
 * $11 request ids. One row per call: its 1-based position, then sql_upsert's columns. */
static const char sql_upsert_chain[] =
    "WITH q AS (SELECT * FROM unnest($3::text[], $4::text[], $5::int8[], $6::int4[], $7::int8[],"
    " $8::text[], $9::text[], $10::float8[], $11::text[]) WITH ORDINALITY"
    " AS q(value, source, now_us, ttl, exp_us, hash, agent, latency, rid, i)),"
    " f AS (SELECT * FROM q ORDER BY i LIMIT 1),"
    " l AS (SELECT *, i AS n FROM q ORDER BY i DESC LIMIT 1),"
    " cur AS (SELECT p0.id, p0.value, p0.value_hash,"
    " (p0.expires_at IS NULL OR p0.expires_at > " CH_FNOW ") AS live"
    " FROM system.memory_pins p0, f WHERE p0.tenant_id = $1 AND p0.key = $2 FOR UPDATE OF p0),"
    " upd AS (UPDATE system.memory_pins p SET"
    " id = CASE WHEN c.live THEN p.id ELSE nextval('system.memory_pins_id_seq') END,"
    " value = l.value::jsonb, value_hash = l.hash, source = l.source,"
    " created_at = CASE WHEN c.live THEN p.created_at ELSE " CH_FNOW " END,"
    " updated_at = " CH_LNOW ", ttl_seconds = l.ttl, expires_at = " CH_LEXP ","
    " version = CASE WHEN c.live THEN p.version ELSE 0 END + l.n"
    " FROM cur c, f, l WHERE p.id = c.id"
    " RETURNING p.id, " CH_CREATED " AS created_us, p.version AS last, c.live,"
    " CASE WHEN c.live THEN " CH_OLDHASH " END AS old_hash),"
    " ins AS (INSERT INTO system.memory_pins AS p (key, tenant_id, value, value_hash, source,"
    " created_at, updated_at, ttl_seconds, expires_at, version)"
    " SELECT $2, $1, l.value::jsonb, l.hash, l.source, " CH_FNOW ", " CH_LNOW ", l.ttl, " CH_LEXP
    ", l.n FROM f, l WHERE NOT EXISTS (SELECT 1 FROM cur)"
    " ON CONFLICT (tenant_id, key) DO NOTHING"
    " RETURNING p.id, " CH_CREATED " AS created_us, p.version AS last, false AS live,"
    " NULL::text AS old_hash),"
    " res AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),"
    " w AS (SELECT q.*, r.id, r.created_us, r.last - l.n + q.i AS version,"
    " q.i = 1 AND NOT r.live AS created,"
    " CASE WHEN q.i = 1 THEN r.old_hash ELSE lag(q.hash) OVER (ORDER BY q.i) END AS old_hash"
    " FROM q, res r, l),"
    " aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source,"
    " cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)"
    " SELECT " CH_WNOW ", 'upsert', $1, $2, w.agent, w.source, false, w.latency, true,"
    " w.old_hash, w.hash, " CH_EXTRA " FROM w)"
    " SELECT w.i, 'ok'::text, w.created, w.id, $1::text, $2::text, w.value::jsonb::text,"
    " w.source, w.created_us, w.now_us, w.ttl, w.exp_us, w.version FROM w ORDER BY w.i";

/* $1 tenant $2 key $3 now $4 expected $5 agent $6 latency $7 request id. */
static const char sql_delete[] =
    "WITH cur AS (SELECT id, version, value_hash FROM system.memory_pins"
    " WHERE tenant_id = $1 AND key = $2 FOR UPDATE),"
    " chk AS (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM cur) THEN 'absent'"
    " WHEN $4::int8 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM cur WHERE version = $4::int8)"
    " THEN 'mismatch' ELSE 'ok' END AS outcome),"
    " del AS (DELETE FROM system.memory_pins p USING cur c, chk k"
    " WHERE p.id = c.id AND k.outcome = 'ok'"
    " RETURNING false AS created, " PCOLS ", coalesce(c.value_hash, " HASH(
        "p.value") ") AS old_hash),"
                   " aud AS (INSERT INTO system.memory_audit (ts, operation, tenant_id, key, "
                   "agent_id, source,"
                   " cache_hit, latency_ms, success, old_value_hash, new_value_hash, extra)"
                   " SELECT " TS(
                       "$3") ", 'delete', $1, $2, $5, d.source, false, $6::float8, true, "
                             "d.old_hash,"
                             " NULL, " EXTRA(
                                 "$7") " FROM del d)"
                                       " SELECT k.outcome, d.* FROM chk k LEFT JOIN del d ON true";

/* $1 tenants $2 keys $3 nows: arrays, one element per GetPin call; the first column is the
 * call's 1-based position. */
static const char sql_get_batch[] =
    "SELECT q.i, " PCOLS " FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY"
    " AS q(tenant_id, key, now_us, i) JOIN system.memory_pins p"
    " ON p.tenant_id = q.tenant_id AND p.key = q.key"
    " WHERE p.expires_at IS NULL OR p.expires_at > " TS("q.now_us");

/* $1 tenant $2 prefix $3 include expired $4 now $5 limit $6 offset $7 cursor created $8 cursor id.
 * Prefixes match literally: left() compares characters, unlike LIKE and its wildcards. */
#define LISTW                                                        \
    " p.tenant_id = $1 AND left(p.key, length($2::text)) = $2::text" \
    " AND ($3::bool OR p.expires_at IS NULL OR p.expires_at > " TS("$4") ")"
static const char sql_list[] =
    "WITH t AS (SELECT count(*) AS total FROM system.memory_pins p WHERE" LISTW ")"
    " SELECT t.total, r.* FROM t LEFT JOIN LATERAL (SELECT " PCOLS " FROM system.memory_pins p"
    " WHERE" LISTW " AND ($7::int8 IS NULL OR (p.created_at, p.id) < (" TS(
        "$7") ", $8::int8))"
              " ORDER BY p.created_at DESC, p.id DESC LIMIT $5::int8"
              " OFFSET CASE WHEN $7::int8 IS NULL THEN $6::int8 ELSE 0 END) r ON true";

/* $1 tenant $2 key $3 operation (each NULL: any) $4 limit $5 offset. */
#define AUDW                                                                       \
    " ($1::text IS NULL OR a.tenant_id = $1) AND ($2::text IS NULL OR a.key = $2)" \
    " AND ($3::text IS NULL OR a.operation = $3)"
static const char sql_audit[] =
    "WITH t AS (SELECT count(*) AS total FROM system.memory_audit a WHERE" AUDW ")"
    " SELECT t.total, r.* FROM t LEFT JOIN LATERAL (SELECT a.id, " US(
        "a.ts") " AS ts_us, a.operation, a.tenant_id, a.key, a.agent_id, a.source, a.cache_hit,"
                " a.latency_ms, a.success, a.error_message, a.old_value_hash, a.new_value_hash"
                " FROM system.memory_audit a WHERE" AUDW " ORDER BY a.ts DESC, a.id DESC"
                " LIMIT $4::int8 OFFSET $5::int8) r ON true";

/* $1 tenant (NULL: every tenant) $2 now. */
static const char sql_cleanup[] = "DELETE FROM system.memory_pins"
                                  " WHERE ($1::text IS NULL OR tenant_id = $1)"
                                  " AND expires_at IS NOT NULL AND expires_at <= " TS("$2");

/* $1 now $2 batch: the oldest expiries first, skipping rows another sweeper holds. */
static const char sql_sweep[] =
    "DELETE FROM system.memory_pins WHERE id IN (SELECT id FROM system.memory_pins"
    " WHERE expires_at IS NOT NULL AND expires_at <= " TS(
        "$1") " ORDER BY expires_at LIMIT $2::int8 FOR UPDATE SKIP LOCKED)";

/* $1 a JSON array of rows, one object per row with the columns named below. */
static const char sql_maudit_write[] =
    "INSERT INTO system.memory_audit (ts, operation, tenant_id, key, agent_id, source, cache_hit,"
    " latency_ms, success, error_message, old_value_hash, new_value_hash, extra)"
    " SELECT " TS(
        "x.ts_us") ", x.operation, x.tenant_id, x.key, x.agent_id, x.source,"
                   " coalesce(x.cache_hit, false), x.latency_ms, coalesce(x.success, true), "
                   "x.error_message,"
                   " x.old_value_hash, x.new_value_hash,"
                   " CASE WHEN x.reads > 1 THEN jsonb_build_object('reads', x.reads)"
                   " ELSE '{}'::jsonb END FROM jsonb_to_recordset($1::jsonb) AS "
                   "x(ts_us int8,"
                   " operation text, tenant_id text, key text, agent_id text, source text, "
                   "cache_hit bool,"
                   " latency_ms float8, success bool, error_message text, old_value_hash text,"
                   " new_value_hash text, reads int8)";
static const char sql_raudit_write[] =
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
static const char sql_raudit_list[] =
    "WITH t AS (SELECT count(*) AS total FROM system.rbac_audit a WHERE" RAUDW ")"
    " SELECT t.total, r.* FROM t LEFT JOIN LATERAL (SELECT a.id, " US(
        "a.ts") " AS ts_us,"
                " a.subject, a.resource, a.action, a.allowed, a.reason, array_to_string(a.roles, "
                "chr(31)),"
                " a.path, a.method, a.tenant_id, a.request_id, a.latency_ms"
                " FROM system.rbac_audit a WHERE" RAUDW " ORDER BY a.ts DESC, a.id DESC"
                " LIMIT $7::int8 OFFSET $8::int8) r ON true";

/* $1 before. */
static const char sql_raudit_cleanup[] = "DELETE FROM system.rbac_audit WHERE ts < " TS("$1");

/* The audit retention. $1 before $2 batch: the oldest rows first (the ts indexes), skipping
 * rows another replica's retention holds. */
static const char sql_raudit_expire[] =
    "DELETE FROM system.rbac_audit WHERE id IN (SELECT id FROM system.rbac_audit"
    " WHERE ts < " TS("$1") " ORDER BY ts LIMIT $2::int8 FOR UPDATE SKIP LOCKED)";
static const char sql_maudit_expire[] =
    "DELETE FROM system.memory_audit WHERE id IN (SELECT id FROM system.memory_audit"
    " WHERE ts < " TS("$1") " ORDER BY ts LIMIT $2::int8 FOR UPDATE SKIP LOCKED)";

static const char sql_ping[] = "SELECT 1";
/* The schema version, and the server process's pid: when it is the pid libpq got at login, the
 * connection goes straight to PostgreSQL (no pooler between), so named statements last. */
static const char sql_schema[] =
    "SELECT coalesce(max(version), 0), pg_backend_pid() FROM system.pins_schema_migrations";

/* Sent before a read batch on a direct connection, in its transaction. The planner cannot know
 * the arrays' length in a generic plan (it assumes 100 rows), so it would keep planning the batch
 * for each call's parameters, which costs more than running it; for this statement the generic
 * plan (a nested loop over the keys' unique index) is always the right one, and is kept.
 * set_config(..., true) rather than SET LOCAL: a segment is an implicit transaction, not a
 * transaction block, and SET LOCAL there writes a WARNING to the server's log every time (the
 * setting applies all the same, until the segment's sync). */
static const char sql_generic[] =
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)";

/* The statements a direct connection prepares once, by name ("pinsd_<index>"). */
static const char *const named_sql[] = {
    sql_upsert,         sql_delete, sql_get_batch,    sql_list,          sql_audit,
    sql_cleanup,        sql_sweep,  sql_maudit_write, sql_raudit_write,  sql_raudit_list,
    sql_raudit_cleanup, sql_ping,   sql_upsert_chain, sql_raudit_expire, sql_maudit_expire,
};

/* ---- types ---------------------------------------------------------------------------------- */

typedef enum op_kind {
    OP_UPSERT,
    OP_DELETE,
    OP_GET,
    OP_GET_BATCH,    /* internal: the statement of many OP_GET calls */
    OP_UPSERT_CHAIN, /* internal: the statement of several OP_UPSERT calls of one key */
    OP_LIST,
    OP_AUDIT,
    OP_CLEANUP,
    OP_SWEEP,
    OP_PING,
    OP_MAUDIT_WRITE,
    OP_RAUDIT_WRITE,
    OP_RAUDIT_LIST,
    OP_RAUDIT_CLEANUP,
    OP_AUDIT_EXPIRE,
    OP_SCHEMA, /* internal: the schema check of a new connection */
} op_kind;

typedef enum conn_state { C_DOWN, C_CONNECTING, C_CHECKING, C_UP } conn_state;

/* What store_pool_connections reports for a connection. */
typedef enum pool_state { P_IDLE, P_BUSY, P_CONNECTING, P_DOWN, P_COUNT } pool_state;

typedef struct pg_req {
    struct pg_req *next;
    op_kind kind;
    const char *sql;
    int nparams;
    const char *params[NPARAMS]; /* NULL: SQL NULL; else into num[] or owned[] */
    char *owned[NPARAMS];        /* malloc'd copies of the caller's strings */
    char num[NPARAMS][32];
    union {
        store_pin_cb pin;
        store_list_cb list;
        store_count_cb count;
        store_audit_list_cb audit;
        store_rbac_audit_list_cb raudit;
    } cb;
    void *arg;
    int64_t deadline_ns;
    int retries;
    bool abandoned; /* completed at its deadline: the result is discarded */
    int64_t abandoned_ns;
    bool *pdone; /* blocking mode: set when the callback ran */
    PGresult *res;
    bool sync_after;     /* the last statement of its segment */
    bool pre_set;        /* sql_generic precedes it (and its Parse); its result is due */
    bool parse_pending;  /* a Parse of its statement precedes it; its result is due */
    uint32_t slot;       /* upsert, delete, get: its key's slot in busy[] (key_slot) */
    uint32_t busy_at;    /* sent in a write segment: its key's slot in busy[] + 1, else 0 */
    bool solo;           /* goes in a segment of its own (a retry after an error) */
    bool cancel_sent;    /* its calls all passed their deadlines: a cancel request went out */
    int64_t now_us;      /* get: the call's clock, for the expiry check of a shared row */
    int key_at;          /* get in a batch: the array element of its (tenant, key), 0-based */
    struct pg_req *kids; /* OP_GET_BATCH, OP_UPSERT_CHAIN: its calls in order, linked by next */
    int nkids;
} pg_req;

typedef struct pg_session pg_session;

typedef struct pg_conn {
    pg_session *ss;
    PGconn *pg;
    conn_state state;
    pool_state pstate;
    store__io *io;
    bool want_read, want_write;
    int64_t backoff_ms;
    int64_t retry_ns;    /* C_DOWN: when to try again */
    uint64_t down_epoch; /* C_DOWN: the store's up_epoch when it failed */
    int64_t connect_ns;  /* C_CONNECTING, C_CHECKING: when the attempt times out */
    pg_req *head, *tail; /* statements in flight, in send order */
    pg_req *recv;        /* the first of them still without a result */
    int inflight;        /* statements in flight */
    bool direct;         /* no pooler between: named statements may be kept */
    uint32_t prepared;   /* direct: bit i set once named_sql[i] was sent for preparing */
    int nsegs;           /* segments (syncs) in flight */
    uint64_t gen;        /* bumped when the connection is dropped */
} pg_conn;

typedef struct pg_store {
    struct store base;
    char *url;
    int pool_size;
    int workers;
    atomic_int sessions;
    int schema_need;
    atomic_uint_fast64_t up_epoch; /* bumped when a failing connection comes back */
} pg_store;

struct pg_session {
    struct store_session base;
    pg_store *st;
    struct event_base *evb;
    pg_conn *conns;
    int nconns;
    pg_req *wq_head, *wq_tail;
    int wq_len;
    store__timer *tick;
    store__defer *kick; /* dispatch() at the end of the loop iteration */
    uint16_t *busy;     /* BUSY_SLOTS counters: writes in flight per key hash */
    pins_arena *pack;   /* scratch of store__pack_value (made on first use) */
    uint64_t rng[2];
    char down_reason[STORE__ERROR_MAX];
};

/* ---- metrics (process wide) --------------------------------------------------------------- */

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;
static metrics_family *m_errors, *m_pool;
static atomic_int pool_count[P_COUNT];
static const char *const pool_names[P_COUNT] = {"idle", "busy", "connecting", "down"};

static double pool_gauge(void *arg)
{
    return (double)atomic_load(&pool_count[(pool_state)(intptr_t)arg]);
}

static void metrics_init(void)
{
    static const char *const kind[] = {"kind"};
    static const char *const state[] = {"state"};
    m_errors = metrics_counter_new("store_errors_total",
                                   "Store failures by kind (connect, query, timeout, queue_full, "
                                   "schema).",
                                   kind, 1);
    m_pool = metrics_gauge_new("store_pool_connections", "PostgreSQL pool connections by state.",
                               state, 1);
    for (int i = 0; i < P_COUNT; i++) {
        const char *v[] = {pool_names[i]};
        if (m_pool != NULL)
            metrics_gauge_set_cb(m_pool, v, pool_gauge, (void *)(intptr_t)i);
    }
}

static void count_error(const char *kind)
{
    const char *v[] = {kind};
    if (m_errors != NULL)
        metrics_counter_inc(m_errors, v);
}

static void count_audit(const char *status)
{
    store_memory_audit_count(status, 1);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t next_rand(pg_session *ss)
{
    uint64_t s1 = ss->rng[0];
    const uint64_t s0 = ss->rng[1];
    ss->rng[0] = s0;
    s1 ^= s1 << 23;
    ss->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return ss->rng[1] + s0;
}

static void set_pool_state(pg_conn *c, pool_state to)
{
    if (c->pstate == to)
        return;
    atomic_fetch_sub(&pool_count[c->pstate], 1);
    atomic_fetch_add(&pool_count[to], 1);
    c->pstate = to;
}

static void account(pg_conn *c)
{
    switch (c->state) {
    case C_DOWN:
        set_pool_state(c, P_DOWN);
        break;
    case C_CONNECTING:
    case C_CHECKING:
        set_pool_state(c, P_CONNECTING);
        break;
    case C_UP:
        set_pool_state(c, c->inflight > 0 ? P_BUSY : P_IDLE);
        break;
    }
}

/* Copies jsonb's text output without the blanks it puts after ':' and ',' (outside strings), so a
 * value sent compact comes back byte for byte when its keys were already in jsonb's order. dst
 * holds at least n + 1 bytes. Returns the length written. */
static size_t json_compact(char *dst, const char *src, size_t n)
{
    size_t o = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (ch == '\\')
                esc = true;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r') {
            continue;
        }
        dst[o++] = ch;
    }
    dst[o] = '\0';
    return o;
}

static int64_t col_i64(const PGresult *res, int row, int col)
{
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static bool col_bool(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

static const char *col_str(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* Fills *pin from the 10 pin columns starting at col; the compacted value goes to *pbuf (new,
 * the caller frees it). Returns 0 or PINS_ENOMEM. */
static int read_pin(const PGresult *res, int row, int col, store_pin *pin, char **pbuf)
{
    const char *v = PQgetvalue(res, row, col + 3);
    size_t vlen = (size_t)PQgetlength(res, row, col + 3);
    char *buf = malloc(vlen + 1);
    if (buf == NULL)
        return PINS_ENOMEM;
    *pin = (store_pin){
        .id = col_i64(res, row, col),
        .tenant_id = PQgetvalue(res, row, col + 1),
        .key = PQgetvalue(res, row, col + 2),
        .value_json = buf,
        .value_len = json_compact(buf, v, vlen),
        .source = PQgetvalue(res, row, col + 4),
        .created_us = col_i64(res, row, col + 5),
        .updated_us = col_i64(res, row, col + 6),
        .has_ttl = !PQgetisnull(res, row, col + 7),
        .has_expires = !PQgetisnull(res, row, col + 8),
        .version = col_i64(res, row, col + 9),
    };
    if (pin->has_ttl)
        pin->ttl_seconds = (int32_t)col_i64(res, row, col + 7);
    if (pin->has_expires)
        pin->expires_us = col_i64(res, row, col + 8);
    *pbuf = buf;
    return 0;
}

/* ---- requests ------------------------------------------------------------------------------- */

static pg_req *req_new(pg_session *ss, op_kind kind, const char *sql, void *arg)
{
    pg_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->kind = kind;
    r->sql = sql;
    r->arg = arg;
    int64_t now = mono_ns();
    r->deadline_ns = ss->base.deadline_ns > 0 ? ss->base.deadline_ns : now + DEFAULT_TIMEOUT_NS;
    return r;
}

/* Frees r, and the calls of a batch. */
static void req_free(pg_req *r)
{
    while (r->kids != NULL) {
        pg_req *k = r->kids;
        r->kids = k->next;
        req_free(k);
    }
    for (int i = 0; i < r->nparams; i++)
        free(r->owned[i]);
    PQclear(r->res);
    free(r);
}

/* Appends a text parameter (NULL: SQL NULL), copied. Returns false when out of memory. */
static bool req_str(pg_req *r, const char *s, size_t len)
{
    int i = r->nparams++;
    if (s == NULL)
        return true;
    r->owned[i] = strndup(s, len);
    r->params[i] = r->owned[i];
    return r->owned[i] != NULL;
}

static bool req_cstr(pg_req *r, const char *s)
{
    return req_str(r, s, s != NULL ? strlen(s) : 0);
}

static void req_i64(pg_req *r, int64_t v)
{
    int i = r->nparams++;
    pins_fmt_i64(r->num[i], v); /* num[i] has 32 bytes: room for any int64 */
    r->params[i] = r->num[i];
}

static void req_null(pg_req *r)
{
    r->nparams++;
}

static void req_f64(pg_req *r, double v)
{
    int i = r->nparams++;
    snprintf(r->num[i], sizeof(r->num[i]), "%.17g", v);
    r->params[i] = r->num[i];
}

static void req_bool(pg_req *r, bool v)
{
    int i = r->nparams++;
    r->params[i] = v ? "true" : "false";
}

/* A statement of several calls (its kids). */
static bool is_batch(const pg_req *r)
{
    return r->kind == OP_GET_BATCH || r->kind == OP_UPSERT_CHAIN;
}

/* Calls r's callback with err and no data. */
static void call_error(pg_session *ss, pg_req *r, int err)
{
    if (r->pdone != NULL)
        *r->pdone = true;
    switch (r->kind) {
    case OP_UPSERT:
    case OP_DELETE:
    case OP_GET:
        r->cb.pin(r->arg, err, NULL, false);
        break;
    case OP_GET_BATCH:
    case OP_UPSERT_CHAIN:
        break;
    case OP_LIST:
        r->cb.list(r->arg, err, NULL, 0, 0);
        break;
    case OP_AUDIT:
        r->cb.audit(r->arg, err, NULL, 0, 0);
        break;
    case OP_RAUDIT_LIST:
        r->cb.raudit(r->arg, err, NULL, 0, 0);
        break;
    case OP_CLEANUP:
    case OP_SWEEP:
    case OP_PING:
    case OP_MAUDIT_WRITE:
    case OP_RAUDIT_WRITE:
    case OP_RAUDIT_CLEANUP:
    case OP_AUDIT_EXPIRE:
        r->cb.count(r->arg, err, 0);
        break;
    case OP_SCHEMA:
        break;
    }
}

/* Completes r (every call of a batch) with err (no result) and frees it; abandoned calls were
 * completed already. */
static void fail_req(pg_session *ss, pg_req *r, int err, const char *detail)
{
    while (r->kids != NULL) {
        pg_req *k = r->kids;
        r->kids = k->next;
        fail_req(ss, k, err, detail);
    }
    if (!r->abandoned && !is_batch(r)) {
        if (err == PINS_ESTORE || err == PINS_ENOMEM || err == PINS_EINTERNAL)
            store__session_error(&ss->base, "%s", detail);
        if ((r->kind == OP_UPSERT || r->kind == OP_DELETE) && err == PINS_ESTORE)
            count_audit("error");
        call_error(ss, r, err);
    }
    req_free(r);
}

/* ---- connections ---------------------------------------------------------------------------- */

static void conn_start(pg_conn *c);
static void dispatch(pg_session *ss);
static void tick_arm(pg_session *ss);

static void conn_watch(pg_conn *c, bool rd, bool wr)
{
    c->want_read = rd;
    c->want_write = wr;
    if (c->io != NULL)
        store__io_set(c->io, c->pg != NULL ? PQsocket(c->pg) : -1, rd, wr);
}

static bool any_conn_alive(const pg_session *ss)
{
    for (int i = 0; i < ss->nconns; i++) {
        if (ss->conns[i].state != C_DOWN)
            return true;
    }
    return false;
}

/* r left the write segment it was sent in: its key no longer counts as in flight. */
static void busy_release(pg_session *ss, pg_req *r)
{
    for (pg_req *k = r->kids; k != NULL; k = k->next)
        busy_release(ss, k);
    if (r->busy_at != 0) {
        ss->busy[r->busy_at - 1]--;
        r->busy_at = 0;
    }
}

/* Fails every waiting call with PINS_ESTORE (no connection is up or coming up). */
static void fail_queue(pg_session *ss, const char *detail)
{
    while (ss->wq_head != NULL) {
        pg_req *r = ss->wq_head;
        ss->wq_head = r->next;
        if (ss->wq_head == NULL)
            ss->wq_tail = NULL;
        ss->wq_len--;
        fail_req(ss, r, PINS_ESTORE, detail);
    }
}

/* Drops c (its statements in flight fail with PINS_ESTORE: their outcome is unknown) and plans
 * the next attempt. Safe inside a callback running from c: the caller checks c->gen. */
static void conn_fail(pg_conn *c, const char *kind, const char *why)
{
    pg_session *ss = c->ss;
    snprintf(ss->down_reason, sizeof(ss->down_reason), "%s", why);
    /* libpq's messages end with a newline: keep the log line whole. */
    size_t n = strlen(ss->down_reason);
    while (n > 0 && (ss->down_reason[n - 1] == '\n' || ss->down_reason[n - 1] == ' '))
        ss->down_reason[--n] = '\0';
    count_error(kind);
    pg_req *list = c->head;
    c->head = c->tail = c->recv = NULL;
    c->inflight = 0;
    c->nsegs = 0;
    c->direct = false;
    c->prepared = 0;
    conn_watch(c, false, false);
    if (c->pg != NULL)
        PQfinish(c->pg);
    c->pg = NULL;
    c->state = C_DOWN;
    c->gen++;
    c->down_epoch = atomic_load_explicit(&ss->st->up_epoch, memory_order_relaxed);
    c->backoff_ms = c->backoff_ms == 0 ? BACKOFF_MIN_MS : c->backoff_ms * 2;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    int64_t half = c->backoff_ms / 2;
    int64_t delay_ms = half + (int64_t)(next_rand(ss) % (uint64_t)(half + 1));
    c->retry_ns = mono_ns() + delay_ms * 1000000;
    account(c);
    char detail[STORE__ERROR_MAX];
    snprintf(detail, sizeof(detail), "%s", ss->down_reason);
    while (list != NULL) {
        pg_req *r = list;
        list = r->next;
        busy_release(ss, r);
        fail_req(ss, r, PINS_ESTORE, detail);
    }
    if (!any_conn_alive(ss))
        fail_queue(ss, detail);
    tick_arm(ss);
}

static void conn_flush(pg_conn *c)
{
    int rv = PQflush(c->pg);
    if (rv < 0) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_watch(c, true, rv == 1);
}

/* How conn_put sends a statement on a connection through a pooler (a direct connection uses
 * its named statements instead). */
typedef enum put_mode {
    PUT_ONCE,  /* parse, bind and execute (the unnamed statement is replaced) */
    PUT_PARSE, /* parse r->sql as the unnamed statement, then bind and execute it */
    PUT_REUSE, /* bind and execute the unnamed statement the segment parsed last */
} put_mode;

/* The bit of sql in pg_conn.prepared, with its statement name in name[16]; 0 for a statement
 * that is never named. */
static uint32_t named_bit(const char *sql, char name[16])
{
    for (size_t i = 0; i < sizeof(named_sql) / sizeof(named_sql[0]); i++) {
        if (named_sql[i] == sql) {
            snprintf(name, 16, "pinsd_%zu", i);
            return UINT32_C(1) << i;
        }
    }
    return 0;
}

/* Queues r's statement on c (an up connection). Returns false when that dropped c (r was
 * failed with the rest). */
static bool conn_put(pg_conn *c, pg_req *r, put_mode mode)
{
    r->next = NULL;
    r->sync_after = false;
    char name[16] = "";
    uint32_t bit = c->direct ? named_bit(r->sql, name) : 0;
    r->parse_pending = bit != 0 ? (c->prepared & bit) == 0 : mode == PUT_PARSE;
    r->pre_set = bit != 0 && is_batch(r);
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    if (c->recv == NULL)
        c->recv = r;
    c->inflight++;
    bool ok = !r->pre_set || PQsendQueryParams(c->pg, sql_generic, 0, NULL, NULL, NULL, NULL, 0);
    if (ok && bit == 0 && mode == PUT_ONCE) {
        ok = PQsendQueryParams(c->pg, r->sql, r->nparams, NULL, r->params, NULL, NULL, 0);
    } else if (ok) {
        c->prepared |= bit; /* taken back if the Parse fails */
        ok = (!r->parse_pending || PQsendPrepare(c->pg, name, r->sql, r->nparams, NULL)) &&
             PQsendQueryPrepared(c->pg, name, r->nparams, r->params, NULL, NULL, 0);
    }
    if (!ok) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return false;
    }
    return true;
}

/* Ends the segment queued on c with a sync and sends it. */
static void conn_sync(pg_conn *c)
{
    c->tail->sync_after = true;
    c->nsegs++;
    account(c);
    if (!PQpipelineSync(c->pg)) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_flush(c);
}

/* Sends r on c as a segment of its own. */
static void conn_send(pg_conn *c, pg_req *r)
{
    if (conn_put(c, r, PUT_ONCE))
        conn_sync(c);
}

/* The store logs nothing: NOTICEs and WARNINGs of the server are dropped. */
static void on_notice(void *arg, const char *message)
{
}

static void conn_ready(pg_conn *c)
{
    PQsetNoticeProcessor(c->pg, on_notice, NULL);
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg)) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    c->state = C_CHECKING;
    pg_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        conn_fail(c, "connect", "out of memory");
        return;
    }
    r->kind = OP_SCHEMA;
    r->sql = sql_schema;
    r->deadline_ns = c->connect_ns;
    conn_send(c, r);
}

static void connect_poll(pg_conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_FAILED:
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    case PGRES_POLLING_READING:
        conn_watch(c, true, false);
        break;
    default:
        conn_watch(c, false, true);
        break;
    }
}

static void conn_start(pg_conn *c)
{
    pg_session *ss = c->ss;
    const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"pinsd", "5", ss->st->url, NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    c->state = C_CONNECTING;
    c->connect_ns = mono_ns() + CONNECT_TIMEOUT_NS;
    account(c);
    if (c->pg == NULL) {
        conn_fail(c, "connect", "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_watch(c, false, true);
}

/* The class of a failed statement: PINS_ESTORE for an unreachable or failing server, a retry for
 * serialisation failures, deadlocks, an insert race and a named statement that is gone (26000:
 * the connection prepares again), PINS_EINVALID_ARGUMENT for data PostgreSQL refuses (a
 * \u0000 in a jsonb string), PINS_EINTERNAL otherwise (a bug). */
static int classify(const char *state, bool *pretry)
{
    *pretry = false;
    if (state == NULL)
        return PINS_ESTORE;
    /* 57014: a cancel request (ours, aimed at a statement past its deadline, may land on the
     * statement after it). */
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "23505") == 0 ||
        strcmp(state, "26000") == 0 || strcmp(state, "57014") == 0) {
        *pretry = true;
        return PINS_ESTORE;
    }
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
        strncmp(state, "57", 2) == 0 || strncmp(state, "58", 2) == 0 ||
        strncmp(state, "XX", 2) == 0 || strcmp(state, "42P01") == 0 ||
        strcmp(state, "3F000") == 0 || strcmp(state, "25006") == 0)
        return PINS_ESTORE;
    if (strncmp(state, "22", 2) == 0)
        return PINS_EINVALID_ARGUMENT;
    return PINS_EINTERNAL;
}

/* Delivers the rows of an RBAC audit listing to r's callback. */
static void deliver_rbac_list(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    int n = PQntuples(res);
    int64_t total = n > 0 ? col_i64(res, 0, 0) : 0;
    if (n == 1 && PQgetisnull(res, 0, 1))
        n = 0;
    pins_arena *a = pins_arena_new(0);
    store_rbac_audit *rows =
        a != NULL ? pins_arena_alloc(a, (size_t)(n > 0 ? n : 1) * sizeof(*rows)) : NULL;
    int err = rows != NULL ? 0 : PINS_ENOMEM;
    for (int i = 0; err == 0 && i < n; i++) {
        rows[i] = (store_rbac_audit){
            .id = col_i64(res, i, 1),
            .ts_us = col_i64(res, i, 2),
            .subject = PQgetvalue(res, i, 3),
            .resource = PQgetvalue(res, i, 4),
            .action = PQgetvalue(res, i, 5),
            .allowed = col_bool(res, i, 6),
            .reason = col_str(res, i, 7),
            .path = col_str(res, i, 9),
            .method = col_str(res, i, 10),
            .tenant_id = col_str(res, i, 11),
            .request_id = col_str(res, i, 12),
            .latency_ms = PQgetisnull(res, i, 13) ? 0 : strtod(PQgetvalue(res, i, 13), NULL),
        };
        err = store__split_roles(a, col_str(res, i, 8), &rows[i].roles, &rows[i].nroles);
    }
    if (err != 0) {
        store__session_error(&ss->base, "out of memory reading the rbac audit");
        r->cb.raudit(r->arg, err, NULL, 0, 0);
    } else {
        r->cb.raudit(r->arg, 0, rows, (size_t)n, total);
    }
    pins_arena_free(a);
}

/* Completes k, one call of a batch, with the pin in row of res (its columns from col; whether
 * it created the pin in created_col, or -1) or, when row < 0, with absent. An upsert's success
 * counts its audit row. A call past its deadline was completed already. */
/* Answers call k of a batch with err, or with pin (borrowed for the callback). */
static void deliver_pin(pg_session *ss, pg_req *k, int err, const store_pin *pin, bool created)
{
    if (k->pdone != NULL)
        *k->pdone = true;
    if (k->abandoned)
        return;
    if (err == PINS_EINTERNAL)
        store__session_error(&ss->base, "unexpected result of a batch of calls");
    else if (err == PINS_ENOMEM)
        store__session_error(&ss->base, "out of memory reading a pin");
    if (err == 0 && k->kind == OP_UPSERT)
        count_audit("success");
    k->cb.pin(k->arg, err, err == 0 ? pin : NULL, created);
}

static void deliver_kid(pg_session *ss, pg_req *k, const PGresult *res, int row, int col,
                        int created_col, int absent)
{
    if (k->abandoned) {
        deliver_pin(ss, k, 0, NULL, false);
        return;
    }
    store_pin pin;
    char *buf = NULL;
    int err = row < 0 ? absent : read_pin(res, row, col, &pin, &buf);
    bool created = err == 0 && created_col >= 0 && col_bool(res, row, created_col);
    deliver_pin(ss, k, err, &pin, created);
    free(buf);
}

/* Packs pin's value as a google.protobuf.Struct into *pout (an arena made on first use, the
 * caller frees it) and points value_pb at it, so that each call the row answers encodes its
 * response from those bytes instead of converting the JSON again. A value it cannot pack stays
 * unpacked: the caller converts it then and reports what is wrong. */
static void pack_pin(pg_session *ss, pins_arena **pout, store_pin *pin)
{
    if (ss->pack == NULL)
        ss->pack = pins_arena_new(0);
    if (*pout == NULL)
        *pout = pins_arena_new(0);
    if (ss->pack != NULL && *pout != NULL)
        (void)store__pack_value(ss->pack, *pout, pin->value_json, pin->value_len, &pin->value_pb,
                                &pin->value_pb_len);
}

/* Answers each call of a GetPin batch from the row of its key, read and packed once for all its
 * calls; a call whose clock is at or past the row's expiry gets NOT_FOUND, as it would alone. */
static void deliver_gets(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    int rowof[GET_BATCH_MAX], err[GET_BATCH_MAX];
    store_pin pins[GET_BATCH_MAX];
    char *bufs[GET_BATCH_MAX] = {NULL};
    bool parsed[GET_BATCH_MAX] = {false};
    pins_arena *packed = NULL;
    for (int d = 0; d < GET_BATCH_MAX; d++)
        rowof[d] = -1;
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t d = col_i64(res, row, 0) - 1;
        if (d >= 0 && d < GET_BATCH_MAX)
            rowof[d] = row;
    }
    for (pg_req *k = r->kids; k != NULL; k = k->next) {
        int d = k->key_at;
        if (k->abandoned || d < 0 || d >= GET_BATCH_MAX || rowof[d] < 0) {
            deliver_pin(ss, k, PINS_ENOT_FOUND, NULL, false); /* abandoned: only marked done */
            continue;
        }
        if (!parsed[d]) {
            parsed[d] = true;
            err[d] = read_pin(res, rowof[d], 1, &pins[d], &bufs[d]);
            if (err[d] == 0)
                pack_pin(ss, &packed, &pins[d]);
        }
        bool expired = err[d] == 0 && pins[d].has_expires && pins[d].expires_us <= k->now_us;
        deliver_pin(ss, k, expired ? PINS_ENOT_FOUND : err[d], &pins[d], false);
    }
    for (int d = 0; d < GET_BATCH_MAX; d++)
        free(bufs[d]);
    pins_arena_free(packed);
}

/* Delivers each call of an OP_UPSERT_CHAIN its row (finish_ok checked there is one per call). */
static void deliver_chain(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    int rows = PQntuples(res);
    int i = 0;
    for (pg_req *k = r->kids; k != NULL; k = k->next, i++) {
        int row = i < rows && col_i64(res, i, 0) == i + 1 ? i : -1;
        deliver_kid(ss, k, res, row, 3, 2, PINS_EINTERNAL);
    }
}

/* Delivers r's result to its callback. */
static void deliver(pg_session *ss, pg_conn *c, pg_req *r)
{
    const PGresult *res = r->res;
    char *buf = NULL;
    int err = 0;
    if (r->pdone != NULL)
        *r->pdone = true;
    switch (r->kind) {
    case OP_UPSERT:
    case OP_DELETE: {
        const char *outcome = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
        store_pin pin;
        if (strcmp(outcome, "exists") == 0)
            err = PINS_EALREADY_EXISTS;
        else if (strcmp(outcome, "mismatch") == 0)
            err = PINS_EABORTED;
        else if (strcmp(outcome, "absent") == 0)
            err = PINS_ENOT_FOUND;
        else if (strcmp(outcome, "ok") != 0 || PQgetisnull(res, 0, 2))
            err = PINS_EINTERNAL;
        else
            err = read_pin(res, 0, 2, &pin, &buf);
        if (err == PINS_EINTERNAL)
            store__session_error(&ss->base, "unexpected result of a %s",
                                 r->kind == OP_UPSERT ? "upsert" : "delete");
        if (err == 0)
            count_audit("success");
        r->cb.pin(r->arg, err, err == 0 ? &pin : NULL, err == 0 && col_bool(res, 0, 1));
        break;
    }
    case OP_GET: /* sent only as a call of an OP_GET_BATCH */
        store__session_error(&ss->base, "a read was sent outside a batch");
        r->cb.pin(r->arg, PINS_EINTERNAL, NULL, false);
        break;
    case OP_GET_BATCH:
        deliver_gets(ss, r);
        break;
    case OP_UPSERT_CHAIN:
        deliver_chain(ss, r);
        break;
    case OP_LIST: {
        int n = PQntuples(res);
        int64_t total = n > 0 ? col_i64(res, 0, 0) : 0;
        if (n == 1 && PQgetisnull(res, 0, 1))
            n = 0;
        store_pin *pins = calloc((size_t)(n > 0 ? n : 1), sizeof(*pins));
        char **bufs = calloc((size_t)(n > 0 ? n : 1), sizeof(*bufs));
        for (int i = 0; pins != NULL && bufs != NULL && err == 0 && i < n; i++)
            err = read_pin(res, i, 1, &pins[i], &bufs[i]);
        if (pins == NULL || bufs == NULL)
            err = PINS_ENOMEM;
        if (err != 0)
            store__session_error(&ss->base, "out of memory reading a listing");
        r->cb.list(r->arg, err, err == 0 ? pins : NULL, err == 0 ? (size_t)n : 0,
                   err == 0 ? total : 0);
        for (int i = 0; bufs != NULL && i < n; i++)
            free(bufs[i]);
        free(bufs);
        free(pins);
        break;
    }
    case OP_AUDIT: {
        int n = PQntuples(res);
        int64_t total = n > 0 ? col_i64(res, 0, 0) : 0;
        if (n == 1 && PQgetisnull(res, 0, 1))
            n = 0;
        store_memory_audit *rows = calloc((size_t)(n > 0 ? n : 1), sizeof(*rows));
        if (rows == NULL) {
            store__session_error(&ss->base, "out of memory reading the audit");
            r->cb.audit(r->arg, PINS_ENOMEM, NULL, 0, 0);
            break;
        }
        for (int i = 0; i < n; i++) {
            rows[i] = (store_memory_audit){
                .id = col_i64(res, i, 1),
                .ts_us = col_i64(res, i, 2),
                .operation = PQgetvalue(res, i, 3),
                .tenant_id = PQgetvalue(res, i, 4),
                .key = PQgetvalue(res, i, 5),
                .agent_id = col_str(res, i, 6),
                .source = col_str(res, i, 7),
                .cache_hit = col_bool(res, i, 8),
                .latency_ms = PQgetisnull(res, i, 9) ? 0 : strtod(PQgetvalue(res, i, 9), NULL),
                .success = col_bool(res, i, 10),
                .error_message = col_str(res, i, 11),
                .old_value_hash = col_str(res, i, 12),
                .new_value_hash = col_str(res, i, 13),
            };
        }
        r->cb.audit(r->arg, 0, rows, (size_t)n, total);
        free(rows);
        break;
    }
    case OP_RAUDIT_LIST:
        deliver_rbac_list(ss, r);
        break;
    case OP_CLEANUP:
    case OP_SWEEP:
    case OP_MAUDIT_WRITE:
    case OP_RAUDIT_WRITE:
    case OP_RAUDIT_CLEANUP:
    case OP_AUDIT_EXPIRE:
        r->cb.count(r->arg, 0, strtoll(PQcmdTuples(r->res), NULL, 10));
        break;
    case OP_PING:
        r->cb.count(r->arg, 0, 0);
        break;
    case OP_SCHEMA: {
        int have = PQntuples(res) == 1 ? (int)col_i64(res, 0, 0) : 0;
        if (have < ss->st->schema_need) {
            char why[160];
            snprintf(why, sizeof(why),
                     "schema behind: the database is at version %d, pinsd needs %d"
                     " (run `pinsctl migrate upgrade head`)",
                     have, ss->st->schema_need);
            count_error("schema");
            req_free(r);
            conn_fail(c, "connect", why);
            return;
        }
        c->direct = PQntuples(res) == 1 && PQnfields(res) >= 2 && !PQgetisnull(res, 0, 1) &&
                    col_i64(res, 0, 1) == PQbackendPID(c->pg);
        c->prepared = 0;
        c->state = C_UP;
        if (c->backoff_ms != 0)
            atomic_fetch_add_explicit(&ss->st->up_epoch, 1, memory_order_relaxed);
        c->backoff_ms = 0;
        account(c);
        break;
    }
    }
    op_kind kind = r->kind;
    free(buf);
    req_free(r);
    if (kind == OP_SCHEMA)
        dispatch(ss);
}

/* Calls to run again, in order, ahead of the queue. */
typedef struct req_list {
    pg_req *head, *tail;
    int n;
} req_list;

/* Adds r to l for another run: a batch's calls one by one (the batch is freed); an abandoned call
 * is freed instead. */
static void requeue(req_list *l, pg_req *r)
{
    if (is_batch(r)) {
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            requeue(l, k);
        }
        req_free(r);
        return;
    }
    if (r->abandoned) {
        req_free(r);
        return;
    }
    PQclear(r->res);
    r->res = NULL;
    r->next = NULL;
    if (l->tail != NULL)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

/* Puts the calls of l in front of the waiting ones. */
static void requeue_front(pg_session *ss, req_list *l)
{
    if (l->head == NULL)
        return;
    l->tail->next = ss->wq_head;
    if (ss->wq_head == NULL)
        ss->wq_tail = l->tail;
    ss->wq_head = l->head;
    ss->wq_len += l->n;
    *l = (req_list){0};
}

/* r's segment committed: delivers r, or runs it again when its upsert lost a race with a
 * concurrent insert of the same key (it then sees that row). */
static void finish_ok(pg_session *ss, pg_conn *c, pg_req *r, req_list *again)
{
    if (r->kind == OP_UPSERT_CHAIN && PQntuples(r->res) != r->nkids) { /* lost an insert race */
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            k->next = NULL;
            if (k->retries < 2) {
                k->retries++;
                requeue(again, k);
            } else {
                fail_req(ss, k, PINS_ESTORE, "upsert kept conflicting with concurrent inserts");
                count_error("query");
            }
        }
        req_free(r);
        return;
    }
    bool conflict = r->kind == OP_UPSERT && PQntuples(r->res) == 1 &&
                    strcmp(PQgetvalue(r->res, 0, 0), "ok") == 0 && PQgetisnull(r->res, 0, 2);
    if (!conflict) {
        deliver(ss, c, r);
        return;
    }
    if (r->retries < 2) {
        r->retries++;
        requeue(again, r);
        return;
    }
    fail_req(ss, r, PINS_ESTORE, "upsert kept conflicting with concurrent inserts");
    count_error("query");
}

/* r failed (its segment was rolled back): one retry in a segment of its own for serialisation
 * failures and deadlocks, else its error. */
static void finish_err(pg_session *ss, pg_conn *c, pg_req *r, req_list *again)
{
    const char *state = r->res != NULL ? PQresultErrorField(r->res, PG_DIAG_SQLSTATE) : NULL;
    bool retry = false;
    int err = classify(state, &retry);
    if (state != NULL && strcmp(state, "26000") == 0)
        c->prepared = 0; /* a named statement is gone: prepare each again */
    if (r->kind == OP_SCHEMA) {
        if (state != NULL && (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0)) {
            PQclear(r->res);
            r->res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
            deliver(ss, c, r); /* no migrations table: version 0 */
            return;
        }
        char why[STORE__ERROR_MAX];
        snprintf(why, sizeof(why), "schema check failed: %s",
                 r->res != NULL ? PQresultErrorMessage(r->res) : "no result");
        req_free(r);
        conn_fail(c, "connect", why);
        return;
    }
    if (r->kind == OP_UPSERT_CHAIN) { /* each call again on its own: one of them may be the cause */
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            k->solo = true;
            requeue(again, k);
        }
        req_free(r);
        return;
    }
    char detail[STORE__ERROR_MAX];
    snprintf(detail, sizeof(detail), "SQLSTATE %s: %s", state != NULL ? state : "none",
             r->res != NULL ? PQresultErrorMessage(r->res) : PQerrorMessage(c->pg));
    if (retry && r->kind == OP_GET_BATCH) { /* each read once more, batched again */
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            k->next = NULL;
            if (k->retries++ < 1)
                requeue(again, k);
            else
                fail_req(ss, k, err, detail);
        }
        req_free(r);
        return;
    }
    if (retry && r->retries < 1) {
        r->retries++;
        r->solo = true;
        requeue(again, r);
        return;
    }
    if (err == PINS_ESTORE)
        count_error("query");
    fail_req(ss, r, err, detail);
}

/* The sync of c's oldest segment arrived: completes its statements. The segment committed when
 * every statement succeeded; otherwise PostgreSQL rolled all of it back, so the failing
 * statements get their errors and the others run again. */
static void finish_seg(pg_conn *c)
{
    pg_session *ss = c->ss;
    pg_req *seg = c->head, *last = seg;
    int n = 1;
    while (!last->sync_after && last->next != NULL) {
        last = last->next;
        n++;
    }
    c->head = last->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->recv = c->head;
    last->next = NULL;
    c->inflight -= n;
    c->nsegs--;
    account(c);
    bool committed = true;
    for (pg_req *r = seg; r != NULL; r = r->next) {
        ExecStatusType st = r->res != NULL ? PQresultStatus(r->res) : PGRES_FATAL_ERROR;
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            committed = false;
    }
    req_list again = {0};
    uint64_t gen = c->gen;
    while (seg != NULL) {
        pg_req *r = seg;
        seg = r->next;
        r->next = NULL;
        busy_release(ss, r);
        if (r->abandoned || gen != c->gen) { /* dropped by a schema check: outcome unknown */
            if (r->abandoned)
                req_free(r);
            else
                fail_req(ss, r, PINS_ESTORE, "database connection dropped");
            continue;
        }
        if (committed)
            finish_ok(ss, c, r, &again);
        else if (r->res == NULL || PQresultStatus(r->res) == PGRES_FATAL_ERROR)
            finish_err(ss, c, r, &again);
        else
            requeue(&again, r);
    }
    requeue_front(ss, &again);
}

/* Reads what c's server sent and completes the statements it finished. */
static void conn_pump(pg_conn *c, bool readable, bool writable)
{
    uint64_t gen = c->gen;
    if (c->state == C_CONNECTING) {
        connect_poll(c);
        return;
    }
    if (c->pg == NULL)
        return;
    if (writable) {
        conn_flush(c);
        if (gen != c->gen)
            return;
    }
    if (!readable)
        return;
    if (!PQconsumeInput(c->pg)) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    int nulls = 0;
    while (c->pg != NULL && gen == c->gen && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            if (++nulls > 1 || c->head == NULL)
                break;
            continue;
        }
        nulls = 0;
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            if (c->head != NULL)
                finish_seg(c);
            continue;
        }
        pg_req *r = c->recv;
        if (r != NULL && (r->pre_set || r->parse_pending)) {
            /* The result of the set_config or of the Parse before r: nothing to keep unless it
             * failed (then what follows is aborted, and this is r's error). A Parse that failed
             * or was aborted created no statement. */
            bool parse = !r->pre_set;
            if (parse)
                r->parse_pending = false;
            else
                r->pre_set = false;
            if (PQresultStatus(res) != (parse ? PGRES_COMMAND_OK : PGRES_TUPLES_OK)) {
                char name[16];
                if (parse)
                    c->prepared &= ~named_bit(r->sql, name);
                if (r->res == NULL) {
                    r->res = res;
                    continue;
                }
            }
            PQclear(res);
            continue;
        }
        if (r != NULL) {
            c->recv = r->next;
            if (r->res == NULL) {
                r->res = res;
                continue;
            }
        }
        PQclear(res);
    }
    if (gen == c->gen && c->pg != NULL && PQstatus(c->pg) == CONNECTION_BAD)
        conn_fail(c, "connect", PQerrorMessage(c->pg));
    dispatch(c->ss);
}

static void on_conn_io(void *arg, bool readable, bool writable)
{
    conn_pump(arg, readable, writable);
}

/* The busy[] slot of a write's tenant and key (FNV-1a). Two keys may share a slot: a write then
 * waits for the other key's segment too, which costs time, never correctness. */
static uint32_t key_slot(const pg_req *r)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 2; i++) {
        for (const char *p = r->params[i] != NULL ? r->params[i] : ""; *p != '\0'; p++)
            h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        h = (h ^ 0xff) * 0x100000001b3ull; /* separator: ("ab","c") != ("a","bc") */
    }
    return (uint32_t)(h & (BUSY_SLOTS - 1));
}

/* The up connection with room for another segment and the fewest in flight, or NULL. */
static pg_conn *pick_conn(pg_session *ss, bool first_fit)
{
    pg_conn *best = NULL;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (c->state != C_UP || c->nsegs >= SEGS_MAX)
            continue;
        if (first_fit)
            return c;
        if (best == NULL || c->nsegs < best->nsegs)
            best = c;
    }
    return best;
}

static bool is_get(const pg_req *r)
{
    return r->kind == OP_GET;
}

static bool take_get(const pg_session *ss, const pg_req *r)
{
    return is_get(r);
}

static bool is_write(const pg_req *r)
{
    return (r->kind == OP_UPSERT || r->kind == OP_DELETE) && !r->solo;
}

/* A batchable write whose key no write segment of this session holds: it may go now. Writes of
 * a key in flight wait for that segment, so one hot key never has more than one transaction of
 * a session queued on its row lock (each would wake the others at every commit), and the next
 * segment takes all the writes that piled up meanwhile. */
static bool is_free_write(const pg_session *ss, const pg_req *r)
{
    return is_write(r) && ss->busy[r->slot] == 0;
}

/* Moves waiting calls that pred accepts, in queue order, into out[1..max) after out[0] (taken
 * already). Returns how many out holds. */
static int queue_take(pg_session *ss, bool (*pred)(const pg_session *, const pg_req *),
                      pg_req **out, int max)
{
    int n = 1;
    pg_req *prev = NULL;
    for (pg_req *r = ss->wq_head; r != NULL && n < max;) {
        pg_req *next = r->next;
        if (pred(ss, r)) {
            if (prev != NULL)
                prev->next = next;
            else
                ss->wq_head = next;
            if (ss->wq_tail == r)
                ss->wq_tail = prev;
            ss->wq_len--;
            r->next = NULL;
            out[n++] = r;
        } else {
            prev = r;
        }
        r = next;
    }
    return n;
}

/* Takes the oldest waiting call that may go now (any but a write of a key in flight), or NULL. */
static pg_req *queue_pop(pg_session *ss)
{
    pg_req *prev = NULL;
    for (pg_req *r = ss->wq_head; r != NULL; prev = r, r = r->next) {
        if (is_write(r) && !is_free_write(ss, r))
            continue;
        if (prev != NULL)
            prev->next = r->next;
        else
            ss->wq_head = r->next;
        if (ss->wq_tail == r)
            ss->wq_tail = prev;
        ss->wq_len--;
        r->next = NULL;
        return r;
    }
    return NULL;
}

/* Appends s as an element of a PostgreSQL array literal. */
static void buf_elem(store__buf *b, const char *s, bool first)
{
    store__buf_put(b, first ? "\"" : ",\"", first ? 1 : 2);
    for (const char *p = s != NULL ? s : ""; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            store__buf_put(b, "\\", 1);
        store__buf_put(b, p, 1);
    }
    store__buf_put(b, "\"", 1);
}

/* Whether two GetPin calls name one (tenant, key); a NULL parameter reads as "", as in the
 * batch's arrays. */
static bool same_key(const pg_req *a, const pg_req *b)
{
    for (int i = 0; i < 2; i++) {
        if (strcmp(a->params[i] != NULL ? a->params[i] : "",
                   b->params[i] != NULL ? b->params[i] : "") != 0)
            return false;
    }
    return true;
}

/* Sends first and the GetPin calls waiting with it as one statement on c. The arrays hold each
 * distinct (tenant, key) once, with the earliest clock of its calls: a row live then comes back,
 * and deliver_gets() checks it against each call's own clock. */
static void send_gets(pg_session *ss, pg_conn *c, pg_req *first)
{
    pg_req *kids[GET_BATCH_MAX];
    kids[0] = first;
    int n = queue_take(ss, take_get, kids, GET_BATCH_MAX);
    int at[2 * GET_BATCH_MAX]; /* open addressing on slot: distinct key + 1, 0 empty */
    int firstof[GET_BATCH_MAX], nd = 0;
    int64_t now[GET_BATCH_MAX];
    memset(at, 0, sizeof(at));
    for (int i = 0; i < n; i++) {
        pg_req *k = kids[i];
        uint32_t h = k->slot & (2 * GET_BATCH_MAX - 1);
        while (at[h] != 0 && !same_key(kids[firstof[at[h] - 1]], k))
            h = (h + 1) & (2 * GET_BATCH_MAX - 1);
        if (at[h] == 0) {
            firstof[nd] = i;
            now[nd] = k->now_us;
            at[h] = ++nd;
        } else if (k->now_us < now[at[h] - 1]) {
            now[at[h] - 1] = k->now_us;
        }
        k->key_at = at[h] - 1;
        k->next = i + 1 < n ? kids[i + 1] : NULL;
    }
    pg_req *b = calloc(1, sizeof(*b));
    store__buf arr[3] = {{0}};
    for (int i = 0; i < 3; i++)
        store__buf_put(&arr[i], "{", 1);
    for (int d = 0; d < nd; d++) {
        char num[PINS_FMT_INT_MAX];
        pins_fmt_i64(num, now[d]);
        buf_elem(&arr[0], kids[firstof[d]]->params[0], d == 0);
        buf_elem(&arr[1], kids[firstof[d]]->params[1], d == 0);
        buf_elem(&arr[2], num, d == 0);
    }
    bool ok = b != NULL;
    for (int i = 0; i < 3; i++) {
        store__buf_put(&arr[i], "}", 1);
        ok = ok && !arr[i].failed;
    }
    if (!ok) {
        for (int i = 0; i < 3; i++)
            store__buf_free(&arr[i]);
        free(b);
        for (int i = 0; i < n; i++)
            fail_req(ss, kids[i], PINS_ENOMEM, "out of memory batching reads");
        return;
    }
    b->kind = OP_GET_BATCH;
    b->sql = sql_get_batch;
    b->kids = kids[0];
    b->nkids = n;
    b->nparams = 3;
    for (int i = 0; i < 3; i++) {
        b->owned[i] = arr[i].p;
        b->params[i] = arr[i].p;
    }
    conn_send(c, b);
}

/* Orders writes by tenant, then key (NULL first), keeping the order of equal ones. */
static int write_cmp(const pg_req *a, const pg_req *b)
{
    for (int i = 0; i < 2; i++) {
        const char *x = a->params[i] != NULL ? a->params[i] : "";
        const char *y = b->params[i] != NULL ? b->params[i] : "";
        int d = strcmp(x, y);
        if (d != 0)
            return d;
    }
    return 0;
}

/* Appends s as an element of a PostgreSQL array literal; NULL is an SQL NULL. */
static void buf_elem_null(store__buf *b, const char *s, bool first)
{
    if (s == NULL)
        store__buf_put(b, first ? "NULL" : ",NULL", first ? 4 : 5);
    else
        buf_elem(b, s, first);
}

/* An upsert that may join a chain (no expected_version, not a retry on its own). */
static bool chainable(const pg_req *r)
{
    return r->kind == OP_UPSERT && !r->solo && r->params[7] == NULL;
}

/* True when b, the upsert after a of the same key, finds a's pin live: a has no expiry, or it
 * lies after b's time. Only then does running both in one statement give what running them one
 * after the other gives. */
static bool chain_continues(const pg_req *a, const pg_req *b)
{
    return a->params[6] == NULL || strtoll(a->params[6], NULL, 10) >
                                       strtoll(b->params[4] != NULL ? b->params[4] : "0", NULL, 10);
}

/* One OP_UPSERT_CHAIN statement for the n >= 2 upserts w[0..n) of one key, in order; NULL when
 * out of memory (they are then sent one by one). */
static pg_req *chain_new(pg_req **w, int n)
{
    static const int from[9] = {2, 3, 4, 5, 6, 8, 9, 10, 11}; /* sql_upsert's $3..$12, not $8 */
    pg_req *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    store__buf arr[9] = {{0}};
    bool ok = true;
    for (int p = 0; p < 9; p++)
        store__buf_put(&arr[p], "{", 1);
    for (int i = 0; i < n; i++) {
        for (int p = 0; p < 9; p++)
            buf_elem_null(&arr[p], w[i]->params[from[p]], i == 0);
    }
    for (int p = 0; p < 9; p++) {
        store__buf_put(&arr[p], "}", 1);
        ok = ok && !arr[p].failed;
    }
    if (!ok) {
        for (int p = 0; p < 9; p++)
            store__buf_free(&arr[p]);
        free(b);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        w[i]->next = i + 1 < n ? w[i + 1] : NULL;
    b->kind = OP_UPSERT_CHAIN;
    b->sql = sql_upsert_chain;
    b->kids = w[0];
    b->nkids = n;
    b->deadline_ns = w[0]->deadline_ns;
    b->nparams = 11;
    b->params[0] = w[0]->params[0]; /* borrowed from the first call, freed with it */
    b->params[1] = w[0]->params[1];
    for (int p = 0; p < 9; p++) {
        b->owned[2 + p] = arr[p].p;
        b->params[2 + p] = arr[p].p;
    }
    return b;
}

/* Sends first and the upserts and deletes waiting with it as one segment (one transaction) on c,
 * in tenant and key order. Consecutive upserts of one key without expected_version become one
 * statement (chain_new). Each run of one statement text is parsed once, as the unnamed
 * statement, and executed for each call: PostgreSQL analyses it once per segment and, after a
 * few executions, plans it once too (no named statement: PgBouncer transaction pooling works). */
static void send_writes(pg_session *ss, pg_conn *c, pg_req *first)
{
    pg_req *w[WRITE_BATCH_MAX];
    w[0] = first;
    int n = queue_take(ss, is_free_write, w, WRITE_BATCH_MAX);
    for (int i = 1; i < n; i++) { /* insertion sort: stable, n is small */
        pg_req *r = w[i];
        int j = i;
        for (; j > 0 && write_cmp(w[j - 1], r) > 0; j--)
            w[j] = w[j - 1];
        w[j] = r;
    }
    for (int i = 0; i < n; i++) {
        uint32_t slot = w[i]->slot;
        if (ss->busy[slot] < UINT16_MAX) {
            ss->busy[slot]++;
            w[i]->busy_at = slot + 1;
        }
    }
    pg_req *st[WRITE_BATCH_MAX]; /* the statements: calls and chains */
    int ns = 0;
    for (int i = 0; i < n;) {
        int j = i + 1;
        if (chainable(w[i])) {
            while (j < n && chainable(w[j]) && write_cmp(w[j - 1], w[j]) == 0 &&
                   chain_continues(w[j - 1], w[j]))
                j++;
        }
        pg_req *chain = j - i >= 2 ? chain_new(&w[i], j - i) : NULL;
        if (chain != NULL) {
            st[ns++] = chain;
            i = j;
        } else {
            st[ns++] = w[i++];
        }
    }
    for (int i = 0; i < ns; i++) {
        bool same = i > 0 && st[i]->sql == st[i - 1]->sql;
        if (conn_put(c, st[i], same ? PUT_REUSE : PUT_PARSE))
            continue;
        /* c was dropped with what it had: the others wait for another connection. */
        req_list l = {0};
        for (int j = i + 1; j < ns; j++) {
            busy_release(ss, st[j]);
            requeue(&l, st[j]);
        }
        requeue_front(ss, &l);
        if (!any_conn_alive(ss))
            fail_queue(ss, ss->down_reason);
        return;
    }
    conn_sync(c);
}

/* Sends waiting calls, a segment at a time, to the least busy connections that are up. */
static void dispatch(pg_session *ss)
{
    while (ss->wq_head != NULL) {
        /* A read batch goes to the first connection with room, so that a light read load keeps
         * one server process busy instead of waking several that share the CPU with us and
         * with each other; the next connection takes over only while the first has SEGS_MAX in
         * flight. Other segments (writes: each ends with a commit, which PostgreSQL flushes
         * together across connections) go to the least busy connection. */
        pg_conn *c = pick_conn(ss, is_get(ss->wq_head));
        if (c == NULL)
            return;
        pg_req *r = queue_pop(ss);
        if (r == NULL)
            return;
        if (is_get(r))
            send_gets(ss, c, r);
        else if (is_write(r))
            send_writes(ss, c, r);
        else
            conn_send(c, r);
    }
}

static void on_kick(void *arg)
{
    pg_session *ss = arg;
    dispatch(ss);
    tick_arm(ss);
}

/* ---- deadlines, reconnection ---------------------------------------------------------------- */

/* Completes one call past its deadline; returns true when it found one (the lists may have
 * changed under the callback: the caller scans again). */
static bool expire_one(pg_session *ss, int64_t now)
{
    pg_req **pp = &ss->wq_head;
    pg_req *prev = NULL;
    for (pg_req *r = ss->wq_head; r != NULL; prev = r, r = r->next) {
        if (now < r->deadline_ns) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        if (ss->wq_tail == r)
            ss->wq_tail = prev;
        ss->wq_len--;
        count_error("timeout");
        fail_req(ss, r, PINS_EDEADLINE_EXCEEDED, "");
        return true;
    }
    for (int i = 0; i < ss->nconns; i++) {
        for (pg_req *s = ss->conns[i].head; s != NULL; s = s->next) {
            bool batch = is_batch(s);
            for (pg_req *r = batch ? s->kids : s; r != NULL; r = batch ? r->next : NULL) {
                if (r->abandoned || r->kind == OP_SCHEMA || now < r->deadline_ns)
                    continue;
                r->abandoned = true;
                r->abandoned_ns = now;
                count_error("timeout");
                call_error(ss, r, PINS_EDEADLINE_EXCEEDED);
                return true;
            }
        }
    }
    return false;
}

/* Cancel requests. PQcancel opens a connection of its own to the server and waits for it, so it
 * runs on one process-wide thread (started at the first cancel, detached, every signal blocked)
 * fed by a small queue; the loops only copy the connection's cancel key (PQgetCancel, no I/O).
 * A request the full queue cannot take is dropped: the connection is then dropped STUCK_NS past
 * the deadline, as when the server does not answer the cancel. */
#define CANCEL_QUEUE 64

static pthread_mutex_t cancel_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cancel_cv = PTHREAD_COND_INITIALIZER;
static PGcancel *cancel_q[CANCEL_QUEUE];
static int cancel_first, cancel_len;
static bool cancel_started;

static void *cancel_main(void *arg)
{
    for (;;) {
        pthread_mutex_lock(&cancel_mu);
        while (cancel_len == 0)
            pthread_cond_wait(&cancel_cv, &cancel_mu);
        PGcancel *pc = cancel_q[cancel_first];
        cancel_q[cancel_first] = NULL;
        cancel_first = (cancel_first + 1) % CANCEL_QUEUE;
        cancel_len--;
        pthread_mutex_unlock(&cancel_mu);
        char err[256];
        (void)PQcancel(pc, err, (int)sizeof(err)); /* the statement's own error tells the rest */
        PQfreeCancel(pc);
    }
    return NULL;
}

static bool cancel_thread_start(void)
{
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return false;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t t;
    bool ok = pthread_create(&t, &attr, cancel_main, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return ok;
}

/* Asks c's server to cancel what it is running; true when the request was queued. */
static bool cancel_post(pg_conn *c)
{
    PGcancel *pc = PQgetCancel(c->pg);
    if (pc == NULL)
        return false;
    bool queued = false;
    pthread_mutex_lock(&cancel_mu);
    if (!cancel_started)
        cancel_started = cancel_thread_start();
    if (cancel_started && cancel_len < CANCEL_QUEUE) {
        cancel_q[(cancel_first + cancel_len) % CANCEL_QUEUE] = pc;
        cancel_len++;
        queued = true;
        pthread_cond_signal(&cancel_cv);
    }
    pthread_mutex_unlock(&cancel_mu);
    if (!queued)
        PQfreeCancel(pc);
    return queued;
}

/* True when no call waits for r's result any more (each passed its deadline). */
static bool all_abandoned(const pg_req *r)
{
    if (is_batch(r)) {
        for (const pg_req *k = r->kids; k != NULL; k = k->next) {
            if (!k->abandoned)
                return false;
        }
        return r->kids != NULL;
    }
    return r->abandoned && r->kind != OP_SCHEMA;
}

/* True when a call of c's oldest segment passed its deadline STUCK_NS ago or more. */
static bool head_stuck(const pg_conn *c, int64_t now)
{
    for (const pg_req *s = c->head; s != NULL; s = s->sync_after ? NULL : s->next) {
        bool batch = is_batch(s);
        for (const pg_req *r = batch ? s->kids : s; r != NULL; r = batch ? r->next : NULL) {
            if (r->abandoned && now - r->abandoned_ns >= STUCK_NS)
                return true;
        }
    }
    return false;
}

static bool needs_tick(const pg_session *ss)
{
    if (ss->wq_head != NULL)
        return true;
    for (int i = 0; i < ss->nconns; i++) {
        if (ss->conns[i].state != C_UP || ss->conns[i].head != NULL)
            return true;
    }
    return false;
}

static void tick(pg_session *ss)
{
    int64_t now = mono_ns();
    uint64_t up_epoch = atomic_load_explicit(&ss->st->up_epoch, memory_order_relaxed);
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (c->state == C_DOWN && (now >= c->retry_ns || c->down_epoch != up_epoch))
            conn_start(c);
        else if ((c->state == C_CONNECTING || c->state == C_CHECKING) && now >= c->connect_ns)
            conn_fail(c, "connect", "connection attempt timed out");
    }
    while (expire_one(ss, now))
        ;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (head_stuck(c, now)) {
            conn_fail(c, "timeout", "no answer past a call's deadline: connection dropped");
            continue;
        }
        /* The statement the server is on (the first without a result) serves nobody any more:
         * stop it. Its segment rolls back; the calls still waiting in it run again. */
        pg_req *r = c->recv;
        if (c->state == C_UP && r != NULL && !r->cancel_sent && all_abandoned(r)) {
            r->cancel_sent = true;
            cancel_post(c);
        }
    }
}

static void on_tick(void *arg)
{
    pg_session *ss = arg;
    tick(ss);
    dispatch(ss); /* a dropped connection may have freed keys that writes wait for */
    tick_arm(ss);
}

static void tick_arm(pg_session *ss)
{
    if (ss->tick != NULL && needs_tick(ss))
        store__timer_arm(ss->tick, TICK_MS);
}

/* Blocking mode: runs the connections until *done. */
static void wait_done(pg_session *ss, bool *done)
{
    while (!*done) {
        struct pollfd fds[64];
        pg_conn *who[64];
        nfds_t n = 0;
        for (int i = 0; i < ss->nconns && n < 64; i++) {
            pg_conn *c = &ss->conns[i];
            if (c->pg == NULL || (!c->want_read && !c->want_write))
                continue;
            fds[n] = (struct pollfd){
                .fd = PQsocket(c->pg),
                .events = (short)((c->want_read ? POLLIN : 0) | (c->want_write ? POLLOUT : 0))};
            who[n++] = c;
        }
        int rv = poll(fds, n, TICK_MS);
        if (rv < 0 && errno != EINTR)
            break;
        for (nfds_t i = 0; rv > 0 && i < n; i++) {
            if (fds[i].revents == 0)
                continue;
            bool rd = (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
            bool wr = (fds[i].revents & (POLLOUT | POLLHUP | POLLERR)) != 0;
            conn_pump(who[i], rd, wr);
        }
        tick(ss);
    }
}

/* Queues r (fails it at once when no connection is up or coming up, or the queue is full), then
 * waits for it in blocking mode. Always returns 0: the callback runs exactly once. */
static int submit(pg_session *ss, pg_req *r)
{
    bool done = false;
    if (ss->evb == NULL)
        r->pdone = &done;
    if (r->kind == OP_UPSERT || r->kind == OP_DELETE || r->kind == OP_GET)
        r->slot = key_slot(r); /* once: the dispatcher looks at it on every pass */
    if (!any_conn_alive(ss)) {
        count_error("connect");
        fail_req(ss, r, PINS_ESTORE,
                 ss->down_reason[0] != '\0' ? ss->down_reason : "no database connection");
        return 0;
    }
    if (ss->wq_len >= QUEUE_MAX) {
        count_error("queue_full");
        fail_req(ss, r, PINS_ESTORE, "every database connection is busy and the queue is full");
        return 0;
    }
    r->next = NULL;
    if (ss->wq_tail != NULL)
        ss->wq_tail->next = r;
    else
        ss->wq_head = r;
    ss->wq_tail = r;
    ss->wq_len++;
    if (ss->kick != NULL) {
        store__defer_arm(ss->kick);
        return 0;
    }
    dispatch(ss);
    wait_done(ss, &done);
    return 0;
}

/* Submits r when its parameters were all bound (ok), else frees it. Returns submit()'s result or
 * PINS_ENOMEM. */
static int submit_if(pg_session *ss, pg_req *r, bool ok)
{
    if (!ok) {
        req_free(r);
        return PINS_ENOMEM;
    }
    return submit(ss, r);
}

/* ---- operations ----------------------------------------------------------------------------- */

static int pg_upsert(store_session *base, const store_upsert_req *q, store_pin_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_UPSERT, sql_upsert, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.pin = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key) &&
              req_str(r, q->value_json, q->value_len) && req_cstr(r, q->source);
    req_i64(r, q->now_us);
    if (q->has_ttl) {
        req_i64(r, q->ttl_seconds);
        req_i64(r, q->now_us + (int64_t)q->ttl_seconds * 1000000);
    } else {
        req_null(r);
        req_null(r);
    }
    if (q->has_expected_version)
        req_i64(r, q->expected_version);
    else
        req_null(r);
    ok = ok && req_cstr(r, q->value_hash) && req_cstr(r, q->audit.agent_id);
    req_f64(r, q->audit.latency_ms);
    ok = ok && req_cstr(r, q->audit.request_id);
    return submit_if(ss, r, ok);
}

static int pg_get(store_session *base, const store__get_req *q, store_pin_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_GET, NULL, arg); /* sent in a batch */
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.pin = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key);
    req_i64(r, q->now_us);
    r->now_us = q->now_us;
    return submit_if(ss, r, ok);
}

static int pg_list(store_session *base, const store_list_req *q, store_list_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_LIST, sql_list, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.list = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->prefix);
    req_bool(r, q->include_expired);
    req_i64(r, q->now_us);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    if (q->has_cursor) {
        req_i64(r, q->cursor_created_us);
        req_i64(r, q->cursor_id);
    } else {
        req_null(r);
        req_null(r);
    }
    return submit_if(ss, r, ok);
}

static int pg_delete(store_session *base, const store_delete_req *q, store_pin_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_DELETE, sql_delete, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.pin = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key);
    req_i64(r, q->now_us);
    if (q->has_expected_version)
        req_i64(r, q->expected_version);
    else
        req_null(r);
    ok = ok && req_cstr(r, q->audit.agent_id);
    req_f64(r, q->audit.latency_ms);
    ok = ok && req_cstr(r, q->audit.request_id);
    return submit_if(ss, r, ok);
}

static int pg_cleanup(store_session *base, const store__cleanup_req *q, store_count_cb cb,
                      void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_CLEANUP, sql_cleanup, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    bool ok = req_cstr(r, q->tenant_id);
    req_i64(r, q->now_us);
    return submit_if(ss, r, ok);
}

static int pg_sweep(store_session *base, const store__sweep_req *q, store_count_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_SWEEP, sql_sweep, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    req_i64(r, q->now_us);
    req_i64(r, q->batch);
    return submit(ss, r);
}

static int pg_audit(store_session *base, const store_audit_list_req *q, store_audit_list_cb cb,
                    void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_AUDIT, sql_audit, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.audit = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key) && req_cstr(r, q->operation);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    return submit_if(ss, r, ok);
}

/* A JSON number for v (0 for NaN and infinities, which JSON cannot express). */
static void buf_num(store__buf *b, double v)
{
    char num[40];
    int n = snprintf(num, sizeof(num), "%.17g", isfinite(v) ? v : 0.0);
    store__buf_put(b, num, (size_t)n);
}

static void buf_int(store__buf *b, int64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", (long long)v);
    store__buf_put(b, num, (size_t)n);
}

static void buf_field(store__buf *b, const char *name, bool first)
{
    if (!first)
        store__buf_put(b, ",", 1);
    store__buf_json_str(b, name);
    store__buf_put(b, ":", 1);
}

/* Queues one INSERT ... FROM jsonb_to_recordset($1) with json (taken: the request owns it). */
static int submit_rows(pg_session *ss, op_kind kind, const char *sql, store__buf *json,
                       store_count_cb cb, void *arg)
{
    pg_req *r = json->failed ? NULL : req_new(ss, kind, sql, arg);
    if (r == NULL) {
        store__buf_free(json);
        return PINS_ENOMEM;
    }
    r->cb.count = cb;
    int i = r->nparams++;
    r->owned[i] = json->p;
    r->params[i] = json->p;
    *json = (store__buf){0};
    return submit(ss, r);
}

static int pg_maudit_write(store_session *base, const store_memory_audit *rows, size_t n,
                           store_count_cb cb, void *arg)
{
    store__buf b = {0};
    store__buf_put(&b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        const store_memory_audit *m = &rows[i];
        store__buf_put(&b, i > 0 ? ",{" : "{", i > 0 ? 2 : 1);
        buf_field(&b, "ts_us", true);
        buf_int(&b, m->ts_us);
        const struct {
            const char *name;
            const char *value;
        } texts[] = {
            {"operation", m->operation},
            {"tenant_id", m->tenant_id},
            {"key", m->key},
            {"agent_id", m->agent_id},
            {"source", m->source},
            {"error_message", m->error_message},
            {"old_value_hash", m->old_value_hash},
            {"new_value_hash", m->new_value_hash},
        };
        for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
            buf_field(&b, texts[k].name, false);
            store__buf_json_str(&b, texts[k].value);
        }
        buf_field(&b, "cache_hit", false);
        store__buf_put(&b, m->cache_hit ? "true" : "false", m->cache_hit ? 4 : 5);
        buf_field(&b, "success", false);
        store__buf_put(&b, m->success ? "true" : "false", m->success ? 4 : 5);
        buf_field(&b, "latency_ms", false);
        buf_num(&b, m->latency_ms);
        buf_field(&b, "reads", false);
        buf_int(&b, m->reads);
        store__buf_put(&b, "}", 1);
    }
    store__buf_put(&b, "]", 1);
    return submit_rows((pg_session *)base, OP_MAUDIT_WRITE, sql_maudit_write, &b, cb, arg);
}

static int pg_raudit_write(store_session *base, const store_rbac_audit *rows, size_t n,
                           store_count_cb cb, void *arg)
{
    store__buf b = {0};
    store__buf_put(&b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        const store_rbac_audit *m = &rows[i];
        store__buf_put(&b, i > 0 ? ",{" : "{", i > 0 ? 2 : 1);
        buf_field(&b, "ts_us", true);
        buf_int(&b, m->ts_us);
        const struct {
            const char *name;
            const char *value;
        } texts[] = {
            {"subject", m->subject},     {"resource", m->resource},
            {"action", m->action},       {"reason", m->reason},
            {"path", m->path},           {"method", m->method},
            {"tenant_id", m->tenant_id}, {"request_id", m->request_id},
        };
        for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
            buf_field(&b, texts[k].name, false);
            store__buf_json_str(&b, texts[k].value);
        }
        buf_field(&b, "allowed", false);
        store__buf_put(&b, m->allowed ? "true" : "false", m->allowed ? 4 : 5);
        buf_field(&b, "roles", false);
        store__buf_json_strs(&b, m->roles, m->nroles);
        buf_field(&b, "latency_ms", false);
        buf_num(&b, m->latency_ms);
        buf_field(&b, "count", false);
        buf_int(&b, m->count);
        store__buf_put(&b, "}", 1);
    }
    store__buf_put(&b, "]", 1);
    return submit_rows((pg_session *)base, OP_RAUDIT_WRITE, sql_raudit_write, &b, cb, arg);
}

static int pg_raudit_list(store_session *base, const store_rbac_audit_list_req *q,
                          store_rbac_audit_list_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_RAUDIT_LIST, sql_raudit_list, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.raudit = cb;
    bool ok = req_cstr(r, q->resource) && req_cstr(r, q->action) && req_cstr(r, q->subject) &&
              req_cstr(r, q->tenant_id);
    if (q->has_allowed)
        req_bool(r, q->allowed);
    else
        req_null(r);
    if (q->has_since)
        req_i64(r, q->since_us);
    else
        req_null(r);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    return submit_if(ss, r, ok);
}

static int pg_raudit_cleanup(store_session *base, int64_t before_us, store_count_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_RAUDIT_CLEANUP, sql_raudit_cleanup, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    req_i64(r, before_us);
    return submit(ss, r);
}

static int pg_audit_expire(store_session *base, const store__expire_req *q, store_count_cb cb,
                           void *arg)
{
    pg_session *ss = (pg_session *)base;
    const char *sql = q->table == STORE_AUDIT_RBAC ? sql_raudit_expire : sql_maudit_expire;
    pg_req *r = req_new(ss, OP_AUDIT_EXPIRE, sql, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    req_i64(r, q->before_us);
    req_i64(r, q->batch);
    return submit(ss, r);
}

static int pg_ping(store_session *base, store_count_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_PING, sql_ping, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    return submit(ss, r);
}

/* ---- store and sessions --------------------------------------------------------------------- */

static void pg_session_free(store_session *base)
{
    pg_session *ss = (pg_session *)base;
    while (ss->wq_head != NULL) {
        pg_req *r = ss->wq_head;
        ss->wq_head = r->next;
        fail_req(ss, r, PINS_ECANCELLED, "");
    }
    ss->wq_tail = NULL;
    ss->wq_len = 0;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        while (c->head != NULL) {
            pg_req *r = c->head;
            c->head = r->next;
            fail_req(ss, r, PINS_ECANCELLED, "");
        }
        store__io_free(c->io);
        if (c->pg != NULL)
            PQfinish(c->pg);
        atomic_fetch_sub(&pool_count[c->pstate], 1);
    }
    store__timer_free(ss->tick);
    store__defer_free(ss->kick);
    pins_arena_free(ss->pack);
    free(ss->busy);
    free(ss->conns);
    free(ss);
}

static int pg_session_new(store *s, struct event_base *evb, store_session **pss)
{
    pg_store *st = (pg_store *)s;
    int rv = PINS_ENOMEM;
    pg_session *ss = calloc(1, sizeof(*ss));
    if (ss == NULL)
        return PINS_ENOMEM;
    ss->base.be = s->be;
    ss->base.store = s;
    ss->st = st;
    ss->evb = evb;
    if (getrandom(ss->rng, sizeof(ss->rng), 0) != sizeof(ss->rng) ||
        (ss->rng[0] | ss->rng[1]) == 0) {
        ss->rng[0] = (uint64_t)mono_ns();
        ss->rng[1] = 0x9e3779b97f4a7c15ull;
    }
    /* DB_POOL_SIZE split across the workers' sessions, at least one each. */
    int idx = atomic_fetch_add(&st->sessions, 1);
    int n = 1;
    if (idx < st->workers) {
        n = st->pool_size / st->workers + (idx < st->pool_size % st->workers ? 1 : 0);
        if (n < 1)
            n = 1;
    }
    ss->nconns = n;
    ss->conns = calloc((size_t)n, sizeof(*ss->conns));
    ss->busy = calloc(BUSY_SLOTS, sizeof(*ss->busy));
    if (ss->conns == NULL || ss->busy == NULL)
        goto out;
    for (int i = 0; i < n; i++) {
        pg_conn *c = &ss->conns[i];
        c->ss = ss;
        c->state = C_DOWN;
        c->pstate = P_DOWN;
        atomic_fetch_add(&pool_count[P_DOWN], 1);
        if (evb != NULL && store__io_new(evb, on_conn_io, c, &c->io) != 0)
            goto out;
    }
    if (evb != NULL && (store__timer_new(evb, on_tick, ss, &ss->tick) != 0 ||
                        store__defer_new(evb, on_kick, ss, &ss->kick) != 0))
        goto out;
    for (int i = 0; i < n; i++)
        conn_start(&ss->conns[i]);
    tick_arm(ss);
    *pss = &ss->base;
    ss = NULL;
    rv = 0;
out:
    if (ss != NULL)
        pg_session_free(&ss->base);
    return rv;
}

static void pg_close(store *s)
{
    pg_store *st = (pg_store *)s;
    free(st->url);
    free(st);
}

static const store__backend postgres_backend = {
    .name = "postgres",
    .close = pg_close,
    .session_new = pg_session_new,
    .session_free = pg_session_free,
    .pin_upsert = pg_upsert,
    .pin_get = pg_get,
    .pin_list = pg_list,
    .pin_delete = pg_delete,
    .pin_cleanup = pg_cleanup,
    .pin_sweep = pg_sweep,
    .audit_list = pg_audit,
    .ping = pg_ping,
    .memory_audit_write = pg_maudit_write,
    .rbac_audit_write = pg_raudit_write,
    .rbac_audit_list = pg_raudit_list,
    .rbac_audit_cleanup = pg_raudit_cleanup,
    .audit_expire = pg_audit_expire,
};

int store__postgres_open(const store_options *opts, store **pstore)
{
    char *errmsg = NULL;
    PQconninfoOption *info = PQconninfoParse(opts->database_url, &errmsg);
    if (info == NULL) {
        PQfreemem(errmsg);
        return PINS_ESTORE;
    }
    PQconninfoFree(info);
    pthread_once(&metrics_once, metrics_init);
    pg_store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return PINS_ENOMEM;
    st->base.be = &postgres_backend;
    st->url = strdup(opts->database_url);
    if (st->url == NULL) {
        free(st);
        return PINS_ENOMEM;
    }
    st->pool_size = opts->pool_size > 0 ? opts->pool_size : 8;
    st->workers = opts->workers > 0 ? opts->workers : 1;
    st->schema_need = store_migrate_latest();
    *pstore = &st->base;
    return 0;
}
