/* store/postgres.c: the PostgreSQL backend (store/README.md, "PostgreSQL").
 *
 * Each session owns a slice of the pool (DB_POOL_SIZE split across the workers, at least one
 * connection each). Connections are libpq non-blocking connections in pipeline mode, watched on
 * the session's loop (store/pg_loop.c): a call is one parameterised statement (no named prepared
 * statement, no session state: PgBouncer transaction pooling works) followed by a sync, so many
 * calls share a connection and each statement is its own transaction. Calls wait FIFO in a bounded
 * queue while every connection is busy or connecting; with no connection up or coming up, or a
 * full queue, they fail at once with PINS_ESTORE. A call past its deadline completes with
 * PINS_EDEADLINE_EXCEEDED at once; its result is discarded when it arrives, and a connection that
 * still has not answered a second later is dropped and reconnected (PQcancel would block the loop
 * on a connect). Connections reconnect with exponential backoff and jitter (100 ms .. 2 s).
 *
 * Without a loop (base NULL: tools and tests) every operation blocks in poll() until its callback
 * ran, so the same code serves pinsctl-style callers.
 */
#include "store/store_int.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <libpq-fe.h>

#include "common/error.h"
#include "observability/metrics.h"

#define PIPELINE_MAX       64                     /* statements in flight per connection */
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

/* $1 tenant $2 key $3 now. */
static const char sql_get[] = "SELECT " PCOLS " FROM system.memory_pins p"
                              " WHERE p.tenant_id = $1 AND p.key = $2"
                              " AND (p.expires_at IS NULL OR p.expires_at > " TS("$3") ")";

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
    " method, tenant_id, request_id, latency_ms)"
    " SELECT " TS(
        "x.ts_us") ", x.subject, x.resource, x.action, x.allowed, x.reason, x.roles,"
                   " x.path, x.method, x.tenant_id, x.request_id, x.latency_ms"
                   " FROM jsonb_to_recordset($1::jsonb) AS x(ts_us int8, subject text, resource "
                   "text,"
                   " action text, allowed bool, reason text, roles text[], path text, method text,"
                   " tenant_id text, request_id text, latency_ms float8)";

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

static const char sql_ping[] = "SELECT 1";
static const char sql_schema[] =
    "SELECT coalesce(max(version), 0) FROM system.pins_schema_migrations";

/* ---- types ---------------------------------------------------------------------------------- */

typedef enum op_kind {
    OP_UPSERT,
    OP_DELETE,
    OP_GET,
    OP_LIST,
    OP_AUDIT,
    OP_CLEANUP,
    OP_SWEEP,
    OP_PING,
    OP_MAUDIT_WRITE,
    OP_RAUDIT_WRITE,
    OP_RAUDIT_LIST,
    OP_RAUDIT_CLEANUP,
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
    int64_t connect_ns;  /* C_CONNECTING, C_CHECKING: when the attempt times out */
    pg_req *head, *tail; /* in flight, in send order */
    int inflight;
    uint64_t gen; /* bumped when the connection is dropped */
} pg_conn;

typedef struct pg_store {
    struct store base;
    char *url;
    int pool_size;
    int workers;
    atomic_int sessions;
    int schema_need;
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

static void req_free(pg_req *r)
{
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
    snprintf(r->num[i], sizeof(r->num[i]), "%lld", (long long)v);
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
        r->cb.count(r->arg, err, 0);
        break;
    case OP_SCHEMA:
        break;
    }
}

/* Completes r with err (no result) and frees it; abandoned requests were completed already. */
static void fail_req(pg_session *ss, pg_req *r, int err, const char *detail)
{
    if (!r->abandoned) {
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
    c->head = c->tail = NULL;
    c->inflight = 0;
    conn_watch(c, false, false);
    if (c->pg != NULL)
        PQfinish(c->pg);
    c->pg = NULL;
    c->state = C_DOWN;
    c->gen++;
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
        fail_req(ss, r, PINS_ESTORE, detail);
    }
    if (!any_conn_alive(ss)) {
        while (ss->wq_head != NULL) {
            pg_req *r = ss->wq_head;
            ss->wq_head = r->next;
            if (ss->wq_head == NULL)
                ss->wq_tail = NULL;
            ss->wq_len--;
            fail_req(ss, r, PINS_ESTORE, detail);
        }
    }
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

/* Sends r on c (an up connection). */
static void conn_send(pg_conn *c, pg_req *r)
{
    r->next = NULL;
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->inflight++;
    account(c);
    if (!PQsendQueryParams(c->pg, r->sql, r->nparams, NULL, r->params, NULL, NULL, 0) ||
        !PQpipelineSync(c->pg)) {
        conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_flush(c);
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
 * serialisation failures and deadlocks, PINS_EINVALID_ARGUMENT for data PostgreSQL refuses (a
 * \u0000 in a jsonb string), PINS_EINTERNAL otherwise (a bug). */
static int classify(const char *state, bool *pretry)
{
    *pretry = false;
    if (state == NULL)
        return PINS_ESTORE;
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "23505") == 0) {
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
    case OP_GET: {
        store_pin pin;
        if (PQntuples(res) == 0)
            err = PINS_ENOT_FOUND;
        else
            err = read_pin(res, 0, 0, &pin, &buf);
        r->cb.pin(r->arg, err, err == 0 ? &pin : NULL, false);
        break;
    }
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
        c->state = C_UP;
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

/* The statement at the head of c finished (its sync arrived). */
static void finish_head(pg_conn *c)
{
    pg_session *ss = c->ss;
    pg_req *r = c->head;
    c->head = r->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->inflight--;
    account(c);
    r->next = NULL;
    if (r->abandoned) {
        req_free(r);
        return;
    }
    ExecStatusType st = r->res != NULL ? PQresultStatus(r->res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        bool conflict = r->kind == OP_UPSERT && PQntuples(r->res) == 1 &&
                        strcmp(PQgetvalue(r->res, 0, 0), "ok") == 0 && PQgetisnull(r->res, 0, 2);
        if (!conflict) {
            deliver(ss, c, r);
            return;
        }
        /* A concurrent insert of the same key won: run again, it now sees that row. */
        if (r->retries < 2) {
            r->retries++;
            PQclear(r->res);
            r->res = NULL;
            r->next = ss->wq_head;
            ss->wq_head = r;
            if (ss->wq_tail == NULL)
                ss->wq_tail = r;
            ss->wq_len++;
            dispatch(ss);
            return;
        }
        fail_req(ss, r, PINS_ESTORE, "upsert kept conflicting with concurrent inserts");
        count_error("query");
        return;
    }
    const char *state = r->res != NULL ? PQresultErrorField(r->res, PG_DIAG_SQLSTATE) : NULL;
    bool retry = false;
    int err = classify(state, &retry);
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
    if (retry && r->retries < 1) {
        r->retries++;
        PQclear(r->res);
        r->res = NULL;
        r->next = ss->wq_head;
        ss->wq_head = r;
        if (ss->wq_tail == NULL)
            ss->wq_tail = r;
        ss->wq_len++;
        dispatch(ss);
        return;
    }
    char detail[STORE__ERROR_MAX];
    snprintf(detail, sizeof(detail), "SQLSTATE %s: %s", state != NULL ? state : "none",
             r->res != NULL ? PQresultErrorMessage(r->res) : PQerrorMessage(c->pg));
    if (err == PINS_ESTORE)
        count_error("query");
    fail_req(ss, r, err, detail);
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
                finish_head(c);
            continue;
        }
        if (c->head != NULL && c->head->res == NULL)
            c->head->res = res;
        else
            PQclear(res);
    }
    if (gen == c->gen && c->pg != NULL && PQstatus(c->pg) == CONNECTION_BAD)
        conn_fail(c, "connect", PQerrorMessage(c->pg));
}

static void on_conn_io(void *arg, bool readable, bool writable)
{
    conn_pump(arg, readable, writable);
}

/* Sends waiting calls to the least busy connections that are up. */
static void dispatch(pg_session *ss)
{
    while (ss->wq_head != NULL) {
        pg_conn *best = NULL;
        for (int i = 0; i < ss->nconns; i++) {
            pg_conn *c = &ss->conns[i];
            if (c->state == C_UP && c->inflight < PIPELINE_MAX &&
                (best == NULL || c->inflight < best->inflight))
                best = c;
        }
        if (best == NULL)
            return;
        pg_req *r = ss->wq_head;
        ss->wq_head = r->next;
        if (ss->wq_head == NULL)
            ss->wq_tail = NULL;
        ss->wq_len--;
        conn_send(best, r);
    }
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
        for (pg_req *r = ss->conns[i].head; r != NULL; r = r->next) {
            if (r->abandoned || r->kind == OP_SCHEMA || now < r->deadline_ns)
                continue;
            r->abandoned = true;
            r->abandoned_ns = now;
            count_error("timeout");
            call_error(ss, r, PINS_EDEADLINE_EXCEEDED);
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
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (c->state == C_DOWN && now >= c->retry_ns)
            conn_start(c);
        else if ((c->state == C_CONNECTING || c->state == C_CHECKING) && now >= c->connect_ns)
            conn_fail(c, "connect", "connection attempt timed out");
    }
    while (expire_one(ss, now))
        ;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (c->head != NULL && c->head->abandoned && now - c->head->abandoned_ns >= STUCK_NS)
            conn_fail(c, "timeout", "no answer past a call's deadline: connection dropped");
    }
}

static void on_tick(void *arg)
{
    pg_session *ss = arg;
    tick(ss);
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
    dispatch(ss);
    tick_arm(ss);
    if (ss->evb == NULL)
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
    pg_req *r = req_new(ss, OP_GET, sql_get, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.pin = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key);
    req_i64(r, q->now_us);
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
    if (ss->conns == NULL)
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
    if (evb != NULL && store__timer_new(evb, on_tick, ss, &ss->tick) != 0)
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
