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
        .id = store__pg_col_i64(res, row, col),
        .tenant_id = PQgetvalue(res, row, col + 1),
        .key = PQgetvalue(res, row, col + 2),
        .value_json = buf,
        .value_len = json_compact(buf, v, vlen),
        .source = PQgetvalue(res, row, col + 4),
        .created_us = store__pg_col_i64(res, row, col + 5),
        .updated_us = store__pg_col_i64(res, row, col + 6),
        .has_ttl = !PQgetisnull(res, row, col + 7),
        .has_expires = !PQgetisnull(res, row, col + 8),
        .version = store__pg_col_i64(res, row, col + 9),
    };
    if (pin->has_ttl)
        pin->ttl_seconds = (int32_t)store__pg_col_i64(res, row, col + 7);
    if (pin->has_expires)
        pin->expires_us = store__pg_col_i64(res, row, col + 8);
    *pbuf = buf;
    return 0;
}

static pg_req *req_new(pg_session *ss, op_kind kind, const char *sql, void *arg)
{
    pg_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->kind = kind;
    r->sql = sql;
    r->arg = arg;
    int64_t now = pins_time_mono_ns();
    r->deadline_ns = ss->base.deadline_ns > 0 ? ss->base.deadline_ns : now + DEFAULT_TIMEOUT_NS;
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
    int n = PQntuples(res);
    int64_t total = n > 0 ? store__pg_col_i64(res, 0, 0) : 0;
    if (n == 1 && PQgetisnull(res, 0, 1))
        n = 0;
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
        int64_t d = store__pg_col_i64(res, row, 0) - 1;
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
        int row = i < rows && store__pg_col_i64(res, i, 0) == i + 1 ? i : -1;
        deliver_kid(ss, k, res, row, 3, 2, PINS_EINTERNAL);
    }
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
        int64_t total = n > 0 ? store__pg_col_i64(res, 0, 0) : 0;
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
        int64_t total = n > 0 ? store__pg_col_i64(res, 0, 0) : 0;
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
                .id = store__pg_col_i64(res, i, 1),
                .ts_us = store__pg_col_i64(res, i, 2),
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
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_UPSERT, store__pg_sql_upsert, arg);
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
    return store__pg_submit_if(ss, r, ok);
}

static int pg_pin_get(store_session *base, const store__get_req *q, store_pin_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_GET, NULL, arg); /* sent in a batch */
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.pin = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key);
    req_i64(r, q->now_us);
    r->now_us = q->now_us;
    return store__pg_submit_if(ss, r, ok);
}

static int pg_pin_list(store_session *base, const store_list_req *q, store_list_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_LIST, store__pg_sql_list, arg);
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
    return store__pg_submit_if(ss, r, ok);
}

static int pg_pin_delete(store_session *base, const store_delete_req *q, store_pin_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_DELETE, store__pg_sql_delete, arg);
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
    return store__pg_submit_if(ss, r, ok);
}

static int pg_pin_cleanup(store_session *base, const store__cleanup_req *q, store_count_cb cb,
                          void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_CLEANUP, store__pg_sql_cleanup, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    bool ok = req_cstr(r, q->tenant_id);
    req_i64(r, q->now_us);
    return store__pg_submit_if(ss, r, ok);
}

static int pg_pin_sweep(store_session *base, const store__sweep_req *q, store_count_cb cb,
                        void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_SWEEP, store__pg_sql_sweep, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    req_i64(r, q->now_us);
    req_i64(r, q->batch);
    return store__pg_submit(ss, r);
}

static int pg_audit_list(store_session *base, const store_audit_list_req *q, store_audit_list_cb cb,
                         void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_AUDIT, store__pg_sql_audit, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.audit = cb;
    bool ok = req_cstr(r, q->tenant_id) && req_cstr(r, q->key) && req_cstr(r, q->operation);
    req_i64(r, q->limit);
    req_i64(r, q->offset);
    return store__pg_submit_if(ss, r, ok);
}

/* A JSON number for v (0 for NaN and infinities, which JSON cannot express). */
static void buf_num(pins_buf *b, double v)
{
    char num[40];
    int n = snprintf(num, sizeof(num), "%.17g", isfinite(v) ? v : 0.0);
    (void)pins_buf_add(b, num, (size_t)n);
}

static void buf_int(pins_buf *b, int64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", (long long)v);
    (void)pins_buf_add(b, num, (size_t)n);
}

static void buf_field(pins_buf *b, const char *name, bool first)
{
    if (!first)
        (void)pins_buf_add_byte(b, ',');
    store__json_str(b, name);
    (void)pins_buf_add_byte(b, ':');
}

/* Queues one INSERT ... FROM jsonb_to_recordset($1) with json (taken: the request owns it). */
static int submit_rows(pg_session *ss, op_kind kind, const char *sql, pins_buf *json,
                       store_count_cb cb, void *arg)
{
    pg_req *r = pins_buf_error(json) != 0 ? NULL : req_new(ss, kind, sql, arg);
    if (r == NULL) {
        pins_buf_free(json);
        return PINS_ENOMEM;
    }
    r->cb.count = cb;
    int i = r->nparams++;
    r->owned[i] = pins_buf_take(json, NULL);
    r->params[i] = r->owned[i];
    return store__pg_submit(ss, r);
}

static int pg_memory_audit_write(store_session *base, const store_memory_audit *rows, size_t n,
                                 store_count_cb cb, void *arg)
{
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX); /* at most STORE_AUDIT_WRITE_MAX rows the caller collected */
    (void)pins_buf_add_byte(&b, '[');
    for (size_t i = 0; i < n; i++) {
        const store_memory_audit *m = &rows[i];
        (void)pins_buf_add(&b, i > 0 ? ",{" : "{", i > 0 ? 2 : 1);
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
            store__json_str(&b, texts[k].value);
        }
        buf_field(&b, "cache_hit", false);
        (void)pins_buf_add_str(&b, m->cache_hit ? "true" : "false");
        buf_field(&b, "success", false);
        (void)pins_buf_add_str(&b, m->success ? "true" : "false");
        buf_field(&b, "latency_ms", false);
        buf_num(&b, m->latency_ms);
        buf_field(&b, "reads", false);
        buf_int(&b, m->reads);
        (void)pins_buf_add_byte(&b, '}');
    }
    (void)pins_buf_add_byte(&b, ']');
    return submit_rows((pg_session *)base, OP_MAUDIT_WRITE, store__pg_sql_maudit_write, &b, cb,
                       arg);
}

static int pg_rbac_audit_write(store_session *base, const store_rbac_audit *rows, size_t n,
                               store_count_cb cb, void *arg)
{
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX); /* at most STORE_AUDIT_WRITE_MAX rows the caller collected */
    (void)pins_buf_add_byte(&b, '[');
    for (size_t i = 0; i < n; i++) {
        const store_rbac_audit *m = &rows[i];
        (void)pins_buf_add(&b, i > 0 ? ",{" : "{", i > 0 ? 2 : 1);
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
            store__json_str(&b, texts[k].value);
        }
        buf_field(&b, "allowed", false);
        (void)pins_buf_add_str(&b, m->allowed ? "true" : "false");
        buf_field(&b, "roles", false);
        store__json_strs(&b, m->roles, m->nroles);
        buf_field(&b, "latency_ms", false);
        buf_num(&b, m->latency_ms);
        buf_field(&b, "count", false);
        buf_int(&b, m->count);
        (void)pins_buf_add_byte(&b, '}');
    }
    (void)pins_buf_add_byte(&b, ']');
    return submit_rows((pg_session *)base, OP_RAUDIT_WRITE, store__pg_sql_raudit_write, &b, cb,
                       arg);
}

static int pg_rbac_audit_list(store_session *base, const store_rbac_audit_list_req *q,
                              store_rbac_audit_list_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_RAUDIT_LIST, store__pg_sql_raudit_list, arg);
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
    return store__pg_submit_if(ss, r, ok);
}

static int pg_rbac_audit_cleanup(store_session *base, int64_t before_us, store_count_cb cb,
                                 void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_RAUDIT_CLEANUP, store__pg_sql_raudit_cleanup, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    req_i64(r, before_us);
    return store__pg_submit(ss, r);
}

static int pg_audit_expire(store_session *base, const store__expire_req *q, store_count_cb cb,
                           void *arg)
{
    pg_session *ss = (pg_session *)base;
    const char *sql =
        q->table == STORE_AUDIT_RBAC ? store__pg_sql_raudit_expire : store__pg_sql_maudit_expire;
    pg_req *r = req_new(ss, OP_AUDIT_EXPIRE, sql, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    req_i64(r, q->before_us);
    req_i64(r, q->batch);
    return store__pg_submit(ss, r);
}

static int pg_ping(store_session *base, store_count_cb cb, void *arg)
{
    pg_session *ss = (pg_session *)base;
    pg_req *r = req_new(ss, OP_PING, store__pg_sql_ping, arg);
    if (r == NULL)
        return PINS_ENOMEM;
    r->cb.count = cb;
    return store__pg_submit(ss, r);
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
    free(st->url);
    free(st);
}

static const store__backend postgres_backend = {
    .name = "postgres",
    .close = pg_close,
    .session_new = pg_session_new,
    .session_free = pg_session_free,
    .pin_upsert = pg_pin_upsert,
    .pin_get = pg_pin_get,
    .pin_list = pg_pin_list,
    .pin_delete = pg_pin_delete,
    .pin_cleanup = pg_pin_cleanup,
    .pin_sweep = pg_pin_sweep,
    .audit_list = pg_audit_list,
    .ping = pg_ping,
    .memory_audit_write = pg_memory_audit_write,
    .rbac_audit_write = pg_rbac_audit_write,
    .rbac_audit_list = pg_rbac_audit_list,
    .rbac_audit_cleanup = pg_rbac_audit_cleanup,
    .audit_expire = pg_audit_expire,
};

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
