/* store/postgres.c: the PostgreSQL backend (store/README.md, "PostgreSQL"; its parts in
 * store/pg_int.h): the operations, the delivery of results to callbacks, sessions and the vtable.
 *
 * Each session owns a slice of the pool (DB_POOL_SIZE split across the workers, at least one
 * connection each). An operation copies its parameters into a request (pg_req) and submits it to
 * the session's scheduler (pg_sched.c), which sends it on a connection (pg_conn.c); the result
 * comes back to store__pg_deliver, which answers the callback. With no connection up or coming
 * up, or a full queue, calls fail at once with PINS_ESTORE. A call past its deadline completes
 * with PINS_EDEADLINE_EXCEEDED at once and its result is discarded when it arrives.
 *
 * Without a loop (base NULL: tools and tests) every operation blocks in poll() until its callback
 * ran, so the same code serves pinsctl-style callers.
 */
#include "store/pg_int.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/fmt.h"
#include "common/timeutil.h"

static void count_audit(const char *status)
{
    store_memory_audit_count(status, 1);
}

/* Copies jsonb's text output without the blanks it puts after ':' and ',' (outside strings), so a
 * value sent compact comes back byte for byte when its keys were already in jsonb's order. */
size_t store__pg_json_compact(char *dst, const char *src, size_t n)
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

static bool col_bool(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

static const char *col_str(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static double col_f64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtod(PQgetvalue(res, row, col), NULL);
}

/* The rows of a listing's page: every row carries the total count (column 0, into *ptotal) and
 * an empty page is one row whose column first is NULL. */
static int page_rows_at(const PGresult *res, int first, int64_t *ptotal)
{
    int n = PQntuples(res);
    *ptotal = n > 0 ? store__pg_col_i64(res, 0, 0) : 0;
    return n == 1 && PQgetisnull(res, 0, first) ? 0 : n;
}

static int page_rows(const PGresult *res, int64_t *ptotal)
{
    return page_rows_at(res, 1, ptotal);
}

int store__pg_read_pin(const PGresult *res, int row, int col, store_pin *pin, char **pbuf)
{
    const char *v = PQgetvalue(res, row, col + 3);
    size_t vlen = (size_t)PQgetlength(res, row, col + 3);
    char *buf = malloc(vlen + 1);
    if (buf == NULL)
        return PINS_ENOMEM;
    *pin = (store_pin){
        .id = store__pg_col_i64(res, row, col),
        .tenant_id = PQgetvalue(res, row, col + 1),
        .key = PQgetvalue(res, row, col + 2),
        .value_json = buf,
        .value_len = store__pg_json_compact(buf, v, vlen),
        .source = PQgetvalue(res, row, col + 4),
        .created_us = store__pg_col_i64(res, row, col + 5),
        .updated_us = store__pg_col_i64(res, row, col + 6),
        .has_ttl = !PQgetisnull(res, row, col + 7),
        .has_expires = !PQgetisnull(res, row, col + 8),
        .version = store__pg_col_i64(res, row, col + 9),
        .revision = store__pg_col_i64(res, row, col + 10),
    };
    if (pin->has_ttl)
        pin->ttl_seconds = (int32_t)store__pg_col_i64(res, row, col + 7);
    if (pin->has_expires)
        pin->expires_us = store__pg_col_i64(res, row, col + 8);
    *pbuf = buf;
    return 0;
}

/* A request of kind answered by cb, or NULL when out of memory. The req_* functions below append
 * its parameters (a NULL request takes them and stays NULL) and req_submit submits it. */
static pg_req *req_new(store_session *base, op_kind kind, const char *sql, pg_cb cb, void *arg)
{
    pg_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->kind = kind;
    r->sql = sql;
    r->cb = cb;
    r->arg = arg;
    int64_t now = pins_time_mono_ns();
    r->deadline_ns = base->deadline_ns > 0 ? base->deadline_ns : now + DEFAULT_TIMEOUT_NS;
    return r;
}

/* Frees r, and the calls of a batch. */
void store__pg_req_free(pg_req *r)
{
    while (r->kids != NULL) {
        pg_req *k = r->kids;
        r->kids = k->next;
        store__pg_req_free(k);
    }
    for (int i = 0; i < r->nparams; i++)
        free(r->owned[i]);
    PQclear(r->res);
    free(r);
}

/* Submits r (scheduler, pg_sched.c). Returns store__pg_submit()'s result, or PINS_ENOMEM when r
 * or the copy of one of its parameters could not be allocated (r is freed). */
static int req_submit(store_session *base, pg_req *r)
{
    if (r == NULL)
        return PINS_ENOMEM;
    return store__pg_submit_if((pg_session *)base, r, !r->unbound);
}

/* Appends a text parameter (NULL: SQL NULL), copied; out of memory marks r unbound. */
static void req_str(pg_req *r, const char *s, size_t len)
{
    if (r == NULL)
        return;
    int i = r->nparams++;
    if (s == NULL)
        return;
    r->owned[i] = strndup(s, len);
    r->params[i] = r->owned[i];
    r->unbound |= r->owned[i] == NULL;
}

static void req_cstr(pg_req *r, const char *s)
{
    req_str(r, s, s != NULL ? strlen(s) : 0);
}

/* Appends v, or SQL NULL when has is false. */
static void req_opt_i64(pg_req *r, bool has, int64_t v)
{
    if (r == NULL)
        return;
    int i = r->nparams++;
    if (has) {
        pins_fmt_i64(r->num[i], v); /* num[i] has 32 bytes: room for any int64 */
        r->params[i] = r->num[i];
    }
}

static void req_i64(pg_req *r, int64_t v)
{
    req_opt_i64(r, true, v);
}

/* Writes v with 17 significant digits (a double read back exactly) into num (cap bytes, 25 are
 * enough). Returns its length. */
static size_t fmt_f64(char *num, size_t cap, double v)
{
    return (size_t)snprintf(num, cap, "%.17g", v);
}

static void req_f64(pg_req *r, double v)
{
    if (r == NULL)
        return;
    int i = r->nparams++;
    fmt_f64(r->num[i], sizeof(r->num[i]), v);
    r->params[i] = r->num[i];
}

/* Appends v, or SQL NULL when has is false. */
static void req_opt_bool(pg_req *r, bool has, bool v)
{
    if (r == NULL)
        return;
    int i = r->nparams++;
    if (has)
        r->params[i] = v ? "true" : "false";
}

static void req_bool(pg_req *r, bool v)
{
    req_opt_bool(r, true, v);
}

/* Calls r's callback with err and no data. */
void store__pg_call_error(pg_session *ss, pg_req *r, int err)
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
        r->cb.list(r->arg, err, NULL, 0, 0, 0);
        break;
    case OP_CHANGES:
        r->cb.changes(r->arg, err, NULL, 0, 0);
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
    case OP_HISTORY_EXPIRE:
        r->cb.count(r->arg, err, 0);
        break;
    case OP_SCHEMA:
        break;
    }
}

/* Completes r (every call of a batch) with err (no result) and frees it; abandoned calls were
 * completed already. */
void store__pg_fail_req(pg_session *ss, pg_req *r, int err, const char *detail)
{
    while (r->kids != NULL) {
        pg_req *k = r->kids;
        r->kids = k->next;
        store__pg_fail_req(ss, k, err, detail);
    }
    if (!r->abandoned && !store__pg_is_batch(r)) {
        if (err == PINS_ESTORE || err == PINS_ENOMEM || err == PINS_EINTERNAL)
            store__session_error(&ss->base, "%s", detail);
        /* The connections are down on the schema check: /ready says "schema_behind". */
        if (err == PINS_ESTORE && ss->down_schema && strcmp(detail, ss->down_reason) == 0)
            ss->base.schema_behind = true;
        if ((r->kind == OP_UPSERT || r->kind == OP_DELETE) && err == PINS_ESTORE)
            count_audit("error");
        store__pg_call_error(ss, r, err);
    }
    store__pg_req_free(r);
}

/* Delivers the rows of an RBAC audit listing to r's callback. */
static void deliver_rbac_list(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    int64_t total;
    int n = page_rows(res, &total);
    pins_arena *a = pins_arena_new(0);
    store_rbac_audit *rows =
        a != NULL ? pins_arena_alloc(a, (size_t)(n > 0 ? n : 1) * sizeof(*rows)) : NULL;
    int err = rows != NULL ? 0 : PINS_ENOMEM;
    for (int i = 0; err == 0 && i < n; i++) {
        rows[i] = (store_rbac_audit){
            .id = store__pg_col_i64(res, i, 1),
            .ts_us = store__pg_col_i64(res, i, 2),
            .subject = PQgetvalue(res, i, 3),
            .resource = PQgetvalue(res, i, 4),
            .action = PQgetvalue(res, i, 5),
            .allowed = col_bool(res, i, 6),
            .reason = col_str(res, i, 7),
            .path = col_str(res, i, 9),
            .method = col_str(res, i, 10),
            .tenant_id = col_str(res, i, 11),
            .request_id = col_str(res, i, 12),
            .latency_ms = col_f64(res, i, 13),
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
    int err = row < 0 ? absent : store__pg_read_pin(res, row, col, &pin, &buf);
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

/* Answers k, a call of a batch read through the cache (cache_cand), from the cache. Returns
 * false when it cannot (the entry was dropped since the batch was sent): k must be read from the
 * database. */
static bool deliver_cached(pg_session *ss, pg_req *k, pins_arena **phits)
{
    pg_rcache *rc = ss->st->rcache;
    const char *tenant = k->params[0] != NULL ? k->params[0] : "";
    const char *key = k->params[1] != NULL ? k->params[1] : "";
    if (*phits == NULL)
        *phits = pins_arena_new(0);
    store_pin pin;
    store_cache_result res = STORE_CACHE_MISS;
    uint64_t gen;
    if (*phits == NULL ||
        store_cache_get(store__pg_rcache_cache(rc), tenant, key, k->now_us, *phits, &pin, &res,
                        &gen) != 0 ||
        res == STORE_CACHE_MISS)
        return false;
    store__count_read(&ss->base, true);
    pin.from_cache = true;
    deliver_pin(ss, k, res == STORE_CACHE_EXPIRED ? PINS_ENOT_FOUND : 0, &pin, false);
    return true;
}

/* Answers each call of a GetPin batch from the row of its key, read and packed once for all its
 * calls; a call whose clock is at or past the row's expiry gets NOT_FOUND, as it would alone.
 * Through the read cache (store__pg_sql_get_batch_ri), a cached call is answered from the cache
 * when the read index allows it, and read again from the database (no_cache) when not; a row
 * read from the database fills the cache. */
static void deliver_gets(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    bool ri = r->sql == store__pg_sql_get_batch_ri;
    int rowof[GET_BATCH_MAX], err[GET_BATCH_MAX];
    int64_t trev[GET_BATCH_MAX];
    int8_t covered[GET_BATCH_MAX]; /* per tenant: the read index allows the cache (1), not (0),
                                      not looked at yet (-1) */
    store_pin pins[GET_BATCH_MAX];
    char *bufs[GET_BATCH_MAX] = {NULL};
    bool parsed[GET_BATCH_MAX] = {false};
    pins_arena *packed = NULL, *hits = NULL;
    for (int d = 0; d < GET_BATCH_MAX; d++) {
        rowof[d] = -1;
        trev[d] = -1;
        covered[d] = -1;
    }
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t d = store__pg_col_i64(res, row, 0);
        if (d > 0 && d <= GET_BATCH_MAX)
            rowof[d - 1] = row;
        else if (ri && d < 0 && d >= -GET_BATCH_MAX)
            trev[-d - 1] = store__pg_col_i64(res, row, PIN_NCOLS);
    }
    req_list again = {0};
    for (pg_req **link = &r->kids, *k; (k = *link) != NULL;) {
        if (k->cache_cand && !k->abandoned) {
            /* the cache holds every change of the tenant up to the revision the statement read */
            int t = k->tenant_at;
            if (t >= 0 && t < GET_BATCH_MAX && covered[t] < 0)
                covered[t] = trev[t] >= 0 &&
                             store__pg_rcache_covers(
                                 ss->st->rcache, k->params[0] != NULL ? k->params[0] : "", trev[t]);
            if (t >= 0 && t < GET_BATCH_MAX && covered[t] == 1 && deliver_cached(ss, k, &hits)) {
                link = &k->next;
                continue;
            }
            *link = k->next; /* read from the database in the next batch */
            k->no_cache = true;
            k->cache_cand = false;
            store__pg_requeue(&again, k);
            continue;
        }
        link = &k->next;
        int d = k->key_at;
        if (k->abandoned || d < 0 || d >= GET_BATCH_MAX || rowof[d] < 0) {
            deliver_pin(ss, k, PINS_ENOT_FOUND, NULL, false); /* abandoned: only marked done */
            continue;
        }
        if (!parsed[d]) {
            parsed[d] = true;
            err[d] = store__pg_read_pin(res, rowof[d], 1, &pins[d], &bufs[d]);
            if (err[d] == 0)
                pack_pin(ss, &packed, &pins[d]);
            if (err[d] == 0 && k->cache_fill)
                (void)store_cache_fill(store__pg_rcache_cache(ss->st->rcache), &pins[d],
                                       k->cache_gen);
        }
        bool expired = err[d] == 0 && pins[d].has_expires && pins[d].expires_us <= k->now_us;
        if (err[d] == 0 && !expired) /* read from the database: a miss of the read cache */
            store__count_read(&ss->base, false);
        deliver_pin(ss, k, expired ? PINS_ENOT_FOUND : err[d], &pins[d], false);
    }
    for (int d = 0; d < GET_BATCH_MAX; d++)
        free(bufs[d]);
    pins_arena_free(packed);
    pins_arena_free(hits);
    if (again.head != NULL) {
        store__pg_requeue_front(ss, &again);
        store__defer_arm(ss->kick);
    }
}

/* Delivers each call of an OP_UPSERT_CHAIN its row (finish_ok checked there is one per call). */
static void deliver_chain(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    int rows = PQntuples(res);
    int i = 0;
    for (pg_req *k = r->kids; k != NULL; k = k->next, i++) {
        int row = i < rows && store__pg_col_i64(res, i, 0) == i + 1 ? i : -1;
        deliver_kid(ss, k, res, row, 3, 2, PINS_EINTERNAL);
    }
}

/* Delivers the changes of a store_changes_since (store__pg_sql_changes) to r's callback. */
static void deliver_changes(pg_session *ss, pg_req *r)
{
    const PGresult *res = r->res;
    const store__changes_req *q = &r->changes;
    int rows = PQntuples(res);
    if (rows < 1) {
        store__session_error(&ss->base, "unexpected result of a change history read");
        r->cb.changes(r->arg, PINS_EINTERNAL, NULL, 0, 0);
        return;
    }
    int64_t latest = store__pg_col_i64(res, 0, 0), trimmed = store__pg_col_i64(res, 0, 1);
    if (q->after < trimmed || q->after > latest) {
        r->cb.changes(r->arg, PINS_EOUT_OF_RANGE, NULL, 0, latest);
        return;
    }
    int n = rows == 1 && PQgetisnull(res, 0, 2) ? 0 : rows;
    store_change *chs = calloc((size_t)(n > 0 ? n : 1), sizeof(*chs));
    char **bufs = calloc((size_t)(n > 0 ? n : 1), sizeof(*bufs));
    int err = chs != NULL && bufs != NULL ? 0 : PINS_ENOMEM;
    for (int i = 0; err == 0 && i < n; i++) {
        chs[i].type = (int)store__pg_col_i64(res, i, 2);
        err = store__pg_read_pin(res, i, 4, &chs[i].pin, &bufs[i]);
    }
    if (err != 0) {
        store__session_error(&ss->base, "out of memory reading the change history");
        r->cb.changes(r->arg, err, NULL, 0, 0);
    } else {
        r->cb.changes(r->arg, 0, chs, (size_t)n, latest);
    }
    for (int i = 0; bufs != NULL && i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(chs);
}

/* Delivers r's result to its callback. */
void store__pg_deliver(pg_session *ss, pg_conn *c, pg_req *r)
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
            err = store__pg_read_pin(res, 0, 2, &pin, &buf);
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
        int64_t total;
        int n = page_rows_at(res, 2, &total);
        int64_t rev = PQntuples(res) > 0 ? store__pg_col_i64(res, 0, 1) : 0;
        store_pin *pins = calloc((size_t)(n > 0 ? n : 1), sizeof(*pins));
        char **bufs = calloc((size_t)(n > 0 ? n : 1), sizeof(*bufs));
        for (int i = 0; pins != NULL && bufs != NULL && err == 0 && i < n; i++)
            err = store__pg_read_pin(res, i, 2, &pins[i], &bufs[i]);
        if (pins == NULL || bufs == NULL)
            err = PINS_ENOMEM;
        if (err != 0)
            store__session_error(&ss->base, "out of memory reading a listing");
        r->cb.list(r->arg, err, err == 0 ? pins : NULL, err == 0 ? (size_t)n : 0,
                   err == 0 ? total : 0, err == 0 ? rev : 0);
        for (int i = 0; bufs != NULL && i < n; i++)
            free(bufs[i]);
        free(bufs);
        free(pins);
        break;
    }
    case OP_AUDIT: {
        int64_t total;
        int n = page_rows(res, &total);
        store_memory_audit *rows = calloc((size_t)(n > 0 ? n : 1), sizeof(*rows));
        if (rows == NULL) {
            store__session_error(&ss->base, "out of memory reading the audit");
            r->cb.audit(r->arg, PINS_ENOMEM, NULL, 0, 0);
            break;
        }
        for (int i = 0; i < n; i++) {
            rows[i] = (store_memory_audit){
                .id = store__pg_col_i64(res, i, 1),
                .ts_us = store__pg_col_i64(res, i, 2),
                .operation = PQgetvalue(res, i, 3),
                .tenant_id = PQgetvalue(res, i, 4),
                .key = PQgetvalue(res, i, 5),
                .agent_id = col_str(res, i, 6),
                .source = col_str(res, i, 7),
                .cache_hit = col_bool(res, i, 8),
                .latency_ms = col_f64(res, i, 9),
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
    case OP_CHANGES:
        deliver_changes(ss, r);
        break;
    case OP_CLEANUP:
    case OP_SWEEP:
    case OP_HISTORY_EXPIRE: /* one row: the count */
        r->cb.count(r->arg, 0, PQntuples(res) == 1 ? store__pg_col_i64(res, 0, 0) : 0);
        break;
    case OP_MAUDIT_WRITE:
    case OP_RAUDIT_WRITE:
    case OP_RAUDIT_CLEANUP:
    case OP_AUDIT_EXPIRE:
        r->cb.count(r->arg, 0, strtoll(PQcmdTuples(r->res), NULL, 10));
        break;
    case OP_PING: {
        int64_t have = PQntuples(res) == 1 ? store__pg_col_i64(res, 0, 0) : 0;
        if (have >= ss->st->schema_need) {
            store__schema_behind_set(false);
            r->cb.count(r->arg, 0, 0);
            break;
        }
        char why[160];
        snprintf(why, sizeof(why),
                 "schema behind: the database is at version %lld, pinsd needs %d"
                 " (run `pinsctl migrate upgrade head`)",
                 (long long)have, ss->st->schema_need);
        store__pg_conn_recheck(c);
        store__session_error(&ss->base, "%s", why);
        r->cb.count(r->arg, PINS_ESTORE, 0);
        break;
    }
    case OP_SCHEMA:
        if (!store__pg_conn_checked(c, res)) {
            store__pg_req_free(r);
            return;
        }
        break;
    }
    op_kind kind = r->kind;
    free(buf);
    store__pg_req_free(r);
    if (kind == OP_SCHEMA)
        store__pg_dispatch(ss);
}

static int pg_pin_upsert(store_session *base, const store_upsert_req *q, store_pin_cb cb, void *arg)
{
    pg_req *r = req_new(base, OP_UPSERT, store__pg_sql_upsert, (pg_cb){.pin = cb}, arg);
    req_cstr(r, q->tenant_id);
    req_cstr(r, q->key);
    req_str(r, q->value_json, q->value_len);
    req_cstr(r, q->source);
    req_i64(r, q->now_us);
    req_opt_i64(r, q->has_ttl, q->ttl_seconds);
    req_opt_i64(r, q->has_ttl, q->has_ttl ? q->now_us + (int64_t)q->ttl_seconds * 1000000 : 0);
    req_opt_i64(r, q->has_expected_version, q->expected_version);
    req_cstr(r, q->value_hash);
    req_cstr(r, q->audit.agent_id);
    req_f64(r, q->audit.latency_ms);
    req_cstr(r, q->audit.request_id);
    return req_submit(base, r);
}

static int pg_pin_get(store_session *base, const store__get_req *q, store_pin_cb cb, void *arg)
{
    pg_req *r = req_new(base, OP_GET, NULL, (pg_cb){.pin = cb}, arg); /* sent in a batch */
    if (r != NULL)
        r->now_us = q->now_us;
    req_cstr(r, q->tenant_id);
    req_cstr(r, q->key);
    req_i64(r, q->now_us);
    return req_submit(base, r);
}

static int pg_pin_list(store_session *base, const store_list_req *q, store_list_cb cb, void *arg)
{
    pg_req *r = req_new(base, OP_LIST, store__pg_sql_list, (pg_cb){.list = cb}, arg);
    req_cstr(r, q->tenant_id);
    req_cstr(r, q->prefix);
    req_bool(r, q->include_expired);
    req_i64(r, q->now_us);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    req_opt_i64(r, q->has_cursor, q->cursor_created_us);
    req_opt_i64(r, q->has_cursor, q->cursor_id);
    return req_submit(base, r);
}

static int pg_pin_delete(store_session *base, const store_delete_req *q, store_pin_cb cb, void *arg)
{
    pg_req *r = req_new(base, OP_DELETE, store__pg_sql_delete, (pg_cb){.pin = cb}, arg);
    req_cstr(r, q->tenant_id);
    req_cstr(r, q->key);
    req_i64(r, q->now_us);
    req_opt_i64(r, q->has_expected_version, q->expected_version);
    req_cstr(r, q->audit.agent_id);
    req_f64(r, q->audit.latency_ms);
    req_cstr(r, q->audit.request_id);
    return req_submit(base, r);
}

static int pg_pin_cleanup(store_session *base, const store__cleanup_req *q, store_count_cb cb,
                          void *arg)
{
    pg_req *r = req_new(base, OP_CLEANUP, store__pg_sql_cleanup, (pg_cb){.count = cb}, arg);
    req_cstr(r, q->tenant_id);
    req_i64(r, q->now_us);
    return req_submit(base, r);
}

static int pg_pin_sweep(store_session *base, const store__sweep_req *q, store_count_cb cb,
                        void *arg)
{
    pg_req *r = req_new(base, OP_SWEEP, store__pg_sql_sweep, (pg_cb){.count = cb}, arg);
    req_i64(r, q->now_us);
    req_i64(r, q->batch);
    return req_submit(base, r);
}

static int pg_audit_list(store_session *base, const store_audit_list_req *q, store_audit_list_cb cb,
                         void *arg)
{
    pg_req *r = req_new(base, OP_AUDIT, store__pg_sql_audit, (pg_cb){.audit = cb}, arg);
    req_cstr(r, q->tenant_id);
    req_cstr(r, q->key);
    req_cstr(r, q->operation);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    return req_submit(base, r);
}

/* A JSON number for v (0 for NaN and infinities, which JSON cannot express). */
static void buf_num(pins_buf *b, double v)
{
    char num[32];
    (void)pins_buf_add(b, num, fmt_f64(num, sizeof(num), isfinite(v) ? v : 0.0));
}

static void buf_int(pins_buf *b, int64_t v)
{
    char num[PINS_FMT_INT_MAX];
    (void)pins_buf_add(b, num, (size_t)(pins_fmt_i64(num, v) - num));
}

/* How a field of an audit row goes into the JSON array that jsonb_to_recordset($1) reads. */
typedef enum { F_I64, F_F64, F_BOOL, F_STR, F_STRS, F_JSON } field_kind;

typedef struct audit_field {
    const char *name; /* the JSON key: the column, named as the struct's field */
    field_kind kind;
    size_t off;   /* of the field in the row struct */
    size_t n_off; /* F_STRS: of the count of strings (size_t) */
} audit_field;

#define MAUDIT(field, kind)                                  \
    {                                                        \
#field, kind, offsetof(store_memory_audit, field), 0 \
    }
#define RAUDIT(field, kind)                                \
    {                                                      \
#field, kind, offsetof(store_rbac_audit, field), 0 \
    }

static const audit_field maudit_fields[] = {
    MAUDIT(ts_us, F_I64),         MAUDIT(operation, F_STR),      MAUDIT(tenant_id, F_STR),
    MAUDIT(key, F_STR),           MAUDIT(agent_id, F_STR),       MAUDIT(source, F_STR),
    MAUDIT(error_message, F_STR), MAUDIT(old_value_hash, F_STR), MAUDIT(new_value_hash, F_STR),
    MAUDIT(cache_hit, F_BOOL),    MAUDIT(success, F_BOOL),       MAUDIT(latency_ms, F_F64),
    MAUDIT(reads, F_I64),         MAUDIT(keys, F_JSON),
};

static const audit_field raudit_fields[] = {
    RAUDIT(ts_us, F_I64),
    RAUDIT(subject, F_STR),
    RAUDIT(resource, F_STR),
    RAUDIT(action, F_STR),
    RAUDIT(reason, F_STR),
    RAUDIT(path, F_STR),
    RAUDIT(method, F_STR),
    RAUDIT(tenant_id, F_STR),
    RAUDIT(request_id, F_STR),
    RAUDIT(allowed, F_BOOL),
    {"roles", F_STRS, offsetof(store_rbac_audit, roles), offsetof(store_rbac_audit, nroles)},
    RAUDIT(latency_ms, F_F64),
    RAUDIT(count, F_I64),
};

/* Appends the JSON object of one row (its fields as f describes them) to b. */
static void buf_row(pins_buf *b, const char *row, const audit_field *f, size_t nf)
{
    for (size_t k = 0; k < nf; k++) {
        const char *p = row + f[k].off;
        (void)pins_buf_add_byte(b, k == 0 ? '{' : ',');
        store__json_str(b, f[k].name);
        (void)pins_buf_add_byte(b, ':');
        switch (f[k].kind) {
        case F_I64:
            buf_int(b, *(const int64_t *)p);
            break;
        case F_F64:
            buf_num(b, *(const double *)p);
            break;
        case F_BOOL:
            (void)pins_buf_add_str(b, *(const bool *)p ? "true" : "false");
            break;
        case F_STR:
            store__json_str(b, *(const char *const *)p);
            break;
        case F_STRS:
            store__json_strs(b, *(const char *const *const *)p,
                             *(const size_t *)(row + f[k].n_off));
            break;
        case F_JSON: /* JSON text the caller built, as is */
            (void)pins_buf_add_str(b, *(const char *const *)p != NULL ? *(const char *const *)p
                                                                      : "null");
            break;
        }
    }
    (void)pins_buf_add_byte(b, '}');
}

/* Queues one INSERT ... FROM jsonb_to_recordset($1) (sql) of the n rows (size bytes each) whose
 * fields f describes. */
static int write_rows(store_session *base, op_kind kind, const char *sql, const void *rows,
                      size_t size, size_t n, const audit_field *f, size_t nf, store_count_cb cb,
                      void *arg)
{
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX); /* at most STORE_AUDIT_WRITE_MAX rows the caller collected */
    (void)pins_buf_add_byte(&b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            (void)pins_buf_add_byte(&b, ',');
        buf_row(&b, (const char *)rows + i * size, f, nf);
    }
    (void)pins_buf_add_byte(&b, ']');
    pg_req *r = req_new(base, kind, sql, (pg_cb){.count = cb}, arg);
    if (r == NULL || pins_buf_error(&b) != 0) {
        pins_buf_free(&b);
        free(r);
        return PINS_ENOMEM;
    }
    int i = r->nparams++;
    r->owned[i] = pins_buf_take(&b, NULL);
    r->params[i] = r->owned[i];
    return store__pg_submit((pg_session *)base, r);
}

static int pg_memory_audit_write(store_session *base, const store_memory_audit *rows, size_t n,
                                 store_count_cb cb, void *arg)
{
    return write_rows(base, OP_MAUDIT_WRITE, store__pg_sql_maudit_write, rows, sizeof(*rows), n,
                      maudit_fields, sizeof(maudit_fields) / sizeof(maudit_fields[0]), cb, arg);
}

static int pg_rbac_audit_write(store_session *base, const store_rbac_audit *rows, size_t n,
                               store_count_cb cb, void *arg)
{
    return write_rows(base, OP_RAUDIT_WRITE, store__pg_sql_raudit_write, rows, sizeof(*rows), n,
                      raudit_fields, sizeof(raudit_fields) / sizeof(raudit_fields[0]), cb, arg);
}

static int pg_rbac_audit_list(store_session *base, const store_rbac_audit_list_req *q,
                              store_rbac_audit_list_cb cb, void *arg)
{
    pg_req *r =
        req_new(base, OP_RAUDIT_LIST, store__pg_sql_raudit_list, (pg_cb){.raudit = cb}, arg);
    req_cstr(r, q->resource);
    req_cstr(r, q->action);
    req_cstr(r, q->subject);
    req_cstr(r, q->tenant_id);
    req_opt_bool(r, q->has_allowed, q->allowed);
    req_opt_i64(r, q->has_since, q->since_us);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    return req_submit(base, r);
}

static int pg_rbac_audit_cleanup(store_session *base, int64_t before_us, store_count_cb cb,
                                 void *arg)
{
    pg_req *r =
        req_new(base, OP_RAUDIT_CLEANUP, store__pg_sql_raudit_cleanup, (pg_cb){.count = cb}, arg);
    req_i64(r, before_us);
    return req_submit(base, r);
}

static int pg_audit_expire(store_session *base, const store__expire_req *q, store_count_cb cb,
                           void *arg)
{
    const char *sql =
        q->table == STORE_AUDIT_RBAC ? store__pg_sql_raudit_expire : store__pg_sql_maudit_expire;
    pg_req *r = req_new(base, OP_AUDIT_EXPIRE, sql, (pg_cb){.count = cb}, arg);
    req_i64(r, q->before_us);
    req_i64(r, q->batch);
    return req_submit(base, r);
}

static int pg_ping(store_session *base, store_count_cb cb, void *arg)
{
    return req_submit(base, req_new(base, OP_PING, store__pg_sql_ping, (pg_cb){.count = cb}, arg));
}

static void pg_session_free(store_session *base)
{
    pg_session *ss = (pg_session *)base;
    while (ss->wq_head != NULL) {
        pg_req *r = ss->wq_head;
        ss->wq_head = r->next;
        store__pg_fail_req(ss, r, PINS_ECANCELLED, "");
    }
    ss->wq_tail = NULL;
    ss->wq_len = 0;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        while (c->head != NULL) {
            pg_req *r = c->head;
            c->head = r->next;
            store__pg_fail_req(ss, r, PINS_ECANCELLED, "");
        }
        store__pg_conn_close(c);
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
    pins_rand_seed(&ss->rng);
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
        if (store__pg_conn_init(&ss->conns[i], ss) != 0)
            goto out;
    }
    if (evb != NULL && (store__timer_new(evb, store__pg_on_tick, ss, &ss->tick) != 0 ||
                        store__defer_new(evb, store__pg_on_kick, ss, &ss->kick) != 0))
        goto out;
    for (int i = 0; i < n; i++)
        store__pg_conn_start(&ss->conns[i]);
    store__pg_tick_arm(ss);
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
    store__pg_feed_stop(st);
    store__pg_rcache_free(st->rcache);
    free(st->listen_url);
    free(st->url);
    free(st);
}

static int pg_feed_start(store *s, store_change_fn fn, store_feed_state_fn state, void *arg)
{
    return store__pg_feed_start((pg_store *)s, fn, state, arg);
}

static void pg_feed_stop(store *s)
{
    store__pg_feed_stop((pg_store *)s);
}

static bool pg_feed_live(const store *s)
{
    return store__pg_feed_live((const pg_store *)s);
}

static int pg_changes_since(store_session *base, const store__changes_req *q, store_changes_cb cb,
                            void *arg)
{
    pg_req *r = req_new(base, OP_CHANGES, store__pg_sql_changes, (pg_cb){.changes = cb}, arg);
    if (r != NULL)
        r->changes = (store__changes_req){.after = q->after, .limit = q->limit};
    req_cstr(r, q->tenant_id);
    req_cstr(r, q->prefix);
    req_i64(r, q->after);
    req_i64(r, q->limit);
    return req_submit(base, r);
}

static int pg_history_expire(store_session *base, const store__history_req *q, store_count_cb cb,
                             void *arg)
{
    pg_req *r =
        req_new(base, OP_HISTORY_EXPIRE, store__pg_sql_history_expire, (pg_cb){.count = cb}, arg);
    req_i64(r, q->before_us);
    req_i64(r, q->max_rows);
    req_i64(r, q->batch);
    return req_submit(base, r);
}

static const store__backend postgres_backend = STORE__BACKEND(pg, "postgres");

int store__postgres_open(const store_options *opts, store **pstore)
{
    char *errmsg = NULL;
    PQconninfoOption *info = PQconninfoParse(opts->database_url, &errmsg);
    if (info == NULL) {
        PQfreemem(errmsg); /* libpq quotes the URL, which may hold the password: not copied */
        if (opts->err != NULL && opts->err_cap > 0)
            snprintf(opts->err, opts->err_cap,
                     "DATABASE_URL is not a PostgreSQL connection URL libpq can parse");
        return PINS_ESTORE;
    }
    PQconninfoFree(info);
    store__pg_metrics_init();
    pg_store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return PINS_ENOMEM;
    st->base.be = &postgres_backend;
    const char *listen = opts->listen_url != NULL && opts->listen_url[0] != '\0'
                             ? opts->listen_url
                             : opts->database_url;
    st->url = strdup(opts->database_url);
    st->listen_url = strdup(listen);
    size_t cache_bytes = opts->cache_bytes > 0 ? (size_t)opts->cache_bytes : STORE_CACHE_BYTES;
    if (st->url == NULL || st->listen_url == NULL ||
        (opts->pg_read_cache && store__pg_rcache_new(cache_bytes, &st->rcache) != 0)) {
        free(st->url);
        free(st->listen_url);
        free(st);
        return PINS_ENOMEM;
    }
    st->pool_size = opts->pool_size > 0 ? opts->pool_size : 8;
    st->workers = opts->workers > 0 ? opts->workers : 1;
    st->schema_need = store_migrate_latest();
    *pstore = &st->base;
    return 0;
}
