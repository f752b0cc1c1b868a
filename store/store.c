/* store/store.c: the public store functions. They pick a backend at open, check what every backend
 * would check, clear the session's last error and dispatch through the backend table. */
#include "store/store_int.h"
#include "store/pg_int.h"
#include "store/sqlite_int.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/error.h"
#include "common/json_str.h"
#include "common/pbstruct.h"
#include "observability/metrics.h"

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;
static metrics_family *m_memory_audit;
static metrics_family *m_errors, *m_pool, *m_info, *m_schema_behind;
static metrics_family *m_cache_hits, *m_cache_misses, *m_value_size;
/* Connections of every open store and session by store__pool_state, read by the gauge. */
static _Atomic int pool_count[STORE__POOL_STATES];
static atomic_bool schema_behind;

/* ---- the backends -------------------------------------------------------------------------
 *
 * One row per backend: the DATABASE_URL values that select it, its open function and its
 * embedded migrations (store/migrations/<name>/). store_open takes the first row that accepts the
 * URL. Adding a backend is adding a row here (store/README.md, "Adding a store backend"). */
typedef struct backend_row {
    const char *name;
    /* URL prefixes that select the backend ("postgres://"), NULL-terminated; NULL: the backend of
     * an unset or empty DATABASE_URL. */
    const char *const *schemes;
    /* Also selected by a URL without a scheme (libpq's "key=value ..." connection string). */
    bool conninfo;
    int (*open)(const store_options *opts, store **pstore);
    const store__migration *migrations; /* ascending versions */
    const size_t *nmigrations;
} backend_row;

static const backend_row backends[] = {
    {
        .name = "sqlite",
        .schemes = NULL,
        .open = store__sqlite_open,
        .migrations = store__sqlite_migrations,
        .nmigrations = &store__sqlite_migrations_count,
    },
    {
        .name = "postgres",
        .schemes = pins_config_postgres_schemes, /* the ones pinsd's configuration accepts */
        .conninfo = true,
        .open = store__postgres_open,
        .migrations = store__postgres_migrations,
        .nmigrations = &store__postgres_migrations_count,
    },
};

/* The length of url's scheme with its "://" ("postgres://": 11), or 0 when url starts with none
 * (RFC 3986: a letter, then letters, digits, '+', '-' and '.'). */
static size_t scheme_len(const char *url)
{
    size_t n = 0;
    if (!isalpha((unsigned char)url[0]))
        return 0;
    while (isalnum((unsigned char)url[n]) || url[n] == '+' || url[n] == '-' || url[n] == '.')
        n++;
    return strncmp(url + n, "://", 3) == 0 ? n + 3 : 0;
}

/* The row that url (NULL or "": unset) selects, or NULL for a scheme no row accepts. */
static const backend_row *backend_for(const char *url)
{
    bool unset = url == NULL || url[0] == '\0';
    size_t len = unset ? 0 : scheme_len(url);
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        const backend_row *row = &backends[i];
        if (unset || row->schemes == NULL) {
            if (unset && row->schemes == NULL)
                return row;
            continue;
        }
        if (len == 0 && row->conninfo)
            return row;
        for (const char *const *s = row->schemes; *s != NULL; s++) {
            if (strlen(*s) == len && strncmp(url, *s, len) == 0)
                return row;
        }
    }
    return NULL;
}

/* Forgets the outcome of the previous operation on ss (store_session_last_error,
 * store_session_schema_behind). */
static void outcome_clear(store_session *ss)
{
    ss->last_error[0] = '\0';
    ss->schema_behind = false;
}

/* Checks the page of a listing (store_pin_list, store_audit_list, store_rbac_audit_list) and
 * clears ss's last outcome. Returns 0 or PINS_EINVALID_ARGUMENT. */
static int page_begin(store_session *ss, int32_t limit, int64_t offset)
{
    if (limit < 1 || limit > STORE__LIST_MAX || offset < 0)
        return PINS_EINVALID_ARGUMENT;
    outcome_clear(ss);
    return 0;
}

static bool memory_audit_ok(const void *row)
{
    const store_memory_audit *m = row;
    return m->operation != NULL && m->tenant_id != NULL && m->key != NULL;
}

static bool rbac_audit_ok(const void *row)
{
    const store_rbac_audit *m = row;
    return m->subject != NULL && m->resource != NULL && m->action != NULL &&
           (m->nroles == 0 || m->roles != NULL);
}

/* Checks the n rows (size bytes each) of an audit write, each with row_ok, and clears ss's last
 * outcome. Returns 0, PINS_EINVALID_ARGUMENT (no rows, too many) or PINS_EINTERNAL (a row misses
 * a required field). */
static int rows_begin(store_session *ss, const void *rows, size_t n, size_t size,
                      bool (*row_ok)(const void *row))
{
    if (rows == NULL || n < 1 || n > STORE_AUDIT_WRITE_MAX)
        return PINS_EINVALID_ARGUMENT;
    for (size_t i = 0; i < n; i++) {
        if (!row_ok((const char *)rows + i * size))
            return PINS_EINTERNAL;
    }
    outcome_clear(ss);
    return 0;
}

static double pool_gauge(void *arg)
{
    return (double)atomic_load(&pool_count[(intptr_t)arg]);
}

static double schema_behind_gauge(void *arg)
{
    return atomic_load(&schema_behind) ? 1.0 : 0.0;
}

static void metrics_init(void)
{
    static const char *const status[] = {"status"};
    static const char *const kind[] = {"kind"};
    static const char *const state[] = {"state"};
    static const char *const backend[] = {"backend"};
    static const char *const states[STORE__POOL_STATES] = {"idle", "busy", "connecting", "down"};
    static const char *const audit_status[] = {"success", "error", "dropped"};
    /* JSON sizes of values, from a few fields to PINS_MEMORY_MAX_SIZE_BYTES's range. */
    static const double sizes[] = {64, 256, 1024, 4096, 16384, 65536, 262144, 1048576};
    m_memory_audit = metrics_counter_new(
        "memory_audit_writes_total", "Memory audit rows written, failed or dropped.", status, 1);
    for (size_t i = 0; i < sizeof(audit_status) / sizeof(audit_status[0]); i++)
        metrics_counter_add(m_memory_audit, &audit_status[i], 0);
    m_errors = metrics_counter_new("store_errors_total",
                                   "Store failures by kind (SQLite: busy, io, query, schema; "
                                   "PostgreSQL: connect, query, timeout, queue_full, schema).",
                                   kind, 1);
    m_pool = metrics_gauge_new("store_pool_connections",
                               "Store database connections by state (SQLite: one per worker "
                               "session, busy while it runs a write transaction).",
                               state, 1);
    for (intptr_t i = 0; i < STORE__POOL_STATES; i++)
        metrics_gauge_set_cb(m_pool, &states[i], pool_gauge, (void *)i);
    m_info =
        metrics_gauge_new("store_info", "1 for the store backend this process opened.", backend, 1);
    m_schema_behind =
        metrics_gauge_new("store_schema_behind",
                          "1 while the database schema is older than this binary needs.", NULL, 0);
    metrics_gauge_set_cb(m_schema_behind, NULL, schema_behind_gauge, NULL);
    m_cache_hits = metrics_counter_new("memory_cache_hits_total",
                                       "Single-pin reads answered by the read cache.", NULL, 0);
    m_cache_misses = metrics_counter_new(
        "memory_cache_misses_total",
        "Single-pin reads of an existing pin that the read cache did not hold (PostgreSQL, without "
        "a read cache: every such read).",
        NULL, 0);
    m_value_size = metrics_histogram_new("memory_value_size_bytes",
                                         "Size in bytes of the JSON value of each upsert handed "
                                         "to the store.",
                                         NULL, 0, sizes, sizeof(sizes) / sizeof(sizes[0]));
}

void store__metrics_open(const char *backend, const char *const *kinds, size_t nkinds)
{
    pthread_once(&metrics_once, metrics_init);
    metrics_gauge_set(m_info, &backend, 1);
    for (size_t i = 0; i < nkinds; i++)
        metrics_counter_add(m_errors, &kinds[i], 0);
}

void store__count_error(const char *kind)
{
    metrics_counter_inc(m_errors, &kind);
}

void store__pool_move(int from, int to)
{
    if (from >= 0 && from < STORE__POOL_STATES)
        atomic_fetch_sub(&pool_count[from], 1);
    if (to >= 0 && to < STORE__POOL_STATES)
        atomic_fetch_add(&pool_count[to], 1);
}

void store__schema_behind_set(bool behind)
{
    atomic_store(&schema_behind, behind);
}

/* The session's cells, got on its thread's first use. */
static void session_cells(store_session *ss)
{
    if (ss->cells_set)
        return;
    ss->read_hit = metrics_cell_get(m_cache_hits, NULL);
    ss->read_miss = metrics_cell_get(m_cache_misses, NULL);
    ss->value_size = metrics_cell_get(m_value_size, NULL);
    ss->cells_set = true;
}

void store__count_read(store_session *ss, bool hit)
{
    session_cells(ss);
    metrics_cell_add(hit ? ss->read_hit : ss->read_miss, 1);
}

void store__json_str(pins_buf *b, const char *s)
{
    if (s == NULL)
        (void)pins_buf_add(b, "null", 4);
    else
        (void)pins_json_str_put(b, s, PINS_JSON_STR_NUL);
}

void store__json_strs(pins_buf *b, const char *const *s, size_t n)
{
    (void)pins_buf_add_byte(b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            (void)pins_buf_add_byte(b, ',');
        store__json_str(b, s[i]);
    }
    (void)pins_buf_add_byte(b, ']');
}

int store__pack_value(pins_arena *scratch, pins_arena *dst, const char *json, size_t len,
                      const uint8_t **ppb, size_t *plen)
{
    Google__Protobuf__Struct *value = NULL;
    int err = pbstruct_from_json(scratch, json, len, PBSTRUCT_MAX_DEPTH, &value);
    if (err == 0) {
        size_t n = protobuf_c_message_get_packed_size(&value->base);
        uint8_t *buf = pins_arena_alloc(dst, n > 0 ? n : 1);
        if (buf == NULL) {
            err = PINS_ENOMEM;
        } else {
            protobuf_c_message_pack(&value->base, buf);
            *ppb = buf;
            *plen = n;
        }
    }
    pins_arena_reset(scratch);
    return err;
}

int store__split_roles(pins_arena *a, const char *text, const char *const **pout, size_t *pn)
{
    if (text == NULL || text[0] == '\0') {
        *pout = NULL;
        *pn = 0;
        return 0;
    }
    size_t n = 1;
    for (const char *p = text; *p != '\0'; p++)
        n += *p == '\x1f';
    const char **out = pins_arena_alloc(a, n * sizeof(*out));
    if (out == NULL)
        return PINS_ENOMEM;
    const char *start = text;
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(start, "\x1f");
        out[i] = pins_arena_strndup(a, start, len);
        if (out[i] == NULL)
            return PINS_ENOMEM;
        start += len + 1;
    }
    *pout = out;
    *pn = n;
    return 0;
}

void store_memory_audit_count(const char *status, size_t n)
{
    pthread_once(&metrics_once, metrics_init);
    const char *v[] = {status};
    if (m_memory_audit != NULL && n > 0)
        metrics_counter_add(m_memory_audit, v, (double)n);
}

void store__session_error(store_session *ss, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ss->last_error, sizeof(ss->last_error), fmt, ap);
    va_end(ap);
}

int store_open(const store_options *opts, store **pstore)
{
    if (opts == NULL || pstore == NULL)
        return PINS_EINTERNAL;
    const backend_row *row = backend_for(opts->database_url);
    if (row == NULL) {
        if (opts->err != NULL && opts->err_cap > 0)
            snprintf(opts->err, opts->err_cap,
                     "DATABASE_URL names a store this build does not know: it must start with "
                     "postgres:// or postgresql://, or be unset for the embedded SQLite store");
        return PINS_ESTORE;
    }
    return row->open(opts, pstore);
}

void store_close(store *s)
{
    if (s != NULL)
        s->be->close(s);
}

const char *store_backend_name(const store *s)
{
    return s->be->name;
}

const char *store_session_backend_name(const store_session *ss)
{
    return ss->be->name;
}

int store_session_new(store *s, struct event_base *base, store_session **psession)
{
    if (s == NULL || psession == NULL)
        return PINS_EINTERNAL;
    return s->be->session_new(s, base, psession);
}

void store_session_free(store_session *ss)
{
    if (ss != NULL)
        ss->be->session_free(ss);
}

void store_session_set_deadline(store_session *ss, int64_t deadline_ns)
{
    if (ss != NULL)
        ss->deadline_ns = deadline_ns > 0 ? deadline_ns : 0;
}

const char *store_session_last_error(const store_session *ss)
{
    return ss->last_error;
}

bool store_session_schema_behind(const store_session *ss)
{
    return ss->schema_behind;
}

int store_pin_upsert(store_session *ss, const store_upsert_req *req, store_pin_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL || req->tenant_id == NULL || req->key == NULL ||
        req->value_json == NULL || req->source == NULL)
        return PINS_EINTERNAL;
    outcome_clear(ss);
    session_cells(ss);
    metrics_cell_observe(m_value_size, ss->value_size, (double)req->value_len);
    return ss->be->pin_upsert(ss, req, cb, arg);
}

int store_pin_get(store_session *ss, const char *tenant_id, const char *key, int64_t now_us,
                  store_pin_cb cb, void *arg)
{
    if (ss == NULL || tenant_id == NULL || key == NULL || cb == NULL)
        return PINS_EINTERNAL;
    outcome_clear(ss);
    const store__get_req req = {.tenant_id = tenant_id, .key = key, .now_us = now_us};
    return ss->be->pin_get(ss, &req, cb, arg);
}

int store_pin_list(store_session *ss, const store_list_req *req, store_list_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL || req->tenant_id == NULL)
        return PINS_EINTERNAL;
    int rv = page_begin(ss, req->limit, req->offset);
    if (rv != 0)
        return rv;
    if (req->prefix != NULL)
        return ss->be->pin_list(ss, req, cb, arg);
    store_list_req all = *req;
    all.prefix = "";
    return ss->be->pin_list(ss, &all, cb, arg);
}

int store_pin_delete(store_session *ss, const store_delete_req *req, store_pin_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL || req->tenant_id == NULL || req->key == NULL)
        return PINS_EINTERNAL;
    outcome_clear(ss);
    return ss->be->pin_delete(ss, req, cb, arg);
}

int store_pin_cleanup(store_session *ss, const char *tenant_id, int64_t now_us, store_count_cb cb,
                      void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    outcome_clear(ss);
    const store__cleanup_req req = {.tenant_id = tenant_id, .now_us = now_us};
    return ss->be->pin_cleanup(ss, &req, cb, arg);
}

int store_pin_sweep(store_session *ss, int64_t now_us, int batch, store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    if (batch < 1)
        return PINS_EINVALID_ARGUMENT;
    outcome_clear(ss);
    const store__sweep_req req = {.now_us = now_us, .batch = batch};
    return ss->be->pin_sweep(ss, &req, cb, arg);
}

int store_feed_start(store *s, store_change_fn fn, store_feed_state_fn state, void *arg)
{
    if (s == NULL || fn == NULL)
        return PINS_EINTERNAL;
    return s->be->feed_start(s, fn, state, arg);
}

void store_feed_stop(store *s)
{
    if (s != NULL)
        s->be->feed_stop(s);
}

bool store_feed_live(const store *s)
{
    return s != NULL && s->be->feed_live(s);
}

int store_changes_since(store_session *ss, const char *tenant_id, const char *prefix, int64_t after,
                        int limit, store_changes_cb cb, void *arg)
{
    if (ss == NULL || tenant_id == NULL || cb == NULL)
        return PINS_EINTERNAL;
    if (after < 0 || limit < 1 || limit > STORE_CHANGES_MAX)
        return PINS_EINVALID_ARGUMENT;
    outcome_clear(ss);
    const store__changes_req req = {.tenant_id = tenant_id,
                                    .prefix = prefix != NULL ? prefix : "",
                                    .after = after,
                                    .limit = limit};
    return ss->be->changes_since(ss, &req, cb, arg);
}

int store_history_expire(store_session *ss, int64_t before_us, int64_t max_rows, int batch,
                         store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    if (batch < 1)
        return PINS_EINVALID_ARGUMENT;
    outcome_clear(ss);
    const store__history_req req = {.before_us = before_us, .max_rows = max_rows, .batch = batch};
    return ss->be->history_expire(ss, &req, cb, arg);
}

int store_audit_list(store_session *ss, const store_audit_list_req *req, store_audit_list_cb cb,
                     void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL)
        return PINS_EINTERNAL;
    int rv = page_begin(ss, req->limit, req->offset);
    return rv != 0 ? rv : ss->be->audit_list(ss, req, cb, arg);
}

int store_ping(store_session *ss, store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    outcome_clear(ss);
    return ss->be->ping(ss, cb, arg);
}

int store_memory_audit_write(store_session *ss, const store_memory_audit *rows, size_t n,
                             store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    int rv = rows_begin(ss, rows, n, sizeof(*rows), memory_audit_ok);
    return rv != 0 ? rv : ss->be->memory_audit_write(ss, rows, n, cb, arg);
}

int store_rbac_audit_write(store_session *ss, const store_rbac_audit *rows, size_t n,
                           store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    int rv = rows_begin(ss, rows, n, sizeof(*rows), rbac_audit_ok);
    return rv != 0 ? rv : ss->be->rbac_audit_write(ss, rows, n, cb, arg);
}

int store_rbac_audit_list(store_session *ss, const store_rbac_audit_list_req *req,
                          store_rbac_audit_list_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL)
        return PINS_EINTERNAL;
    int rv = page_begin(ss, req->limit, req->offset);
    return rv != 0 ? rv : ss->be->rbac_audit_list(ss, req, cb, arg);
}

int store_rbac_audit_cleanup(store_session *ss, int64_t before_us, store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    outcome_clear(ss);
    return ss->be->rbac_audit_cleanup(ss, before_us, cb, arg);
}

int store_audit_expire(store_session *ss, store_audit_table table, int64_t before_us, int batch,
                       store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    if (batch < 1 || (table != STORE_AUDIT_RBAC && table != STORE_AUDIT_MEMORY))
        return PINS_EINVALID_ARGUMENT;
    outcome_clear(ss);
    store__expire_req req = {.table = table, .before_us = before_us, .batch = batch};
    return ss->be->audit_expire(ss, &req, cb, arg);
}
