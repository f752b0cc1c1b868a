/* rpc/audit.c: the per-worker audit queues of rpc/audit.h.
 *
 * A queue is an array of rows whose strings live in the queue's arena. A flush hands the array
 * to the store in chunks of at most STORE_AUDIT_WRITE_MAX rows and resets the arena at once: the
 * store copies what it keeps before the call returns (store.h), so the queue is empty and
 * reusable even while a PostgreSQL write is still in flight. Each write carries a small context
 * with its row count, freed by its callback, so the outcome is counted per row.
 *
 * Both kinds keep an open-addressing index of their queued rows so that identical rows of one
 * flush window become one row carrying their count (reads always; RBAC decisions only for
 * denials, which also spend the queue's token bucket when they need a row of their own). The
 * summary row of over-budget denials lives in an arena of its own, since it outlives flushes
 * until it is due. The read summaries likewise: their groups and keys (a key table shared by
 * every group, each group chaining its keys in the order they came) live in their own arena until
 * they are queued as rows, their keys' JSON object built then into the queue's arena.
 */
#include "rpc/audit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "auth/auth.h"
#include "common/arena.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/fmt.h"
#include "common/json_str.h"
#include "common/timeutil.h"
#include "common/utf8.h"
#include "observability/log.h"
#include "observability/metrics.h"
#include "rpc/rpc_int.h"
#include "store/store.h"

typedef enum kind { KIND_RBAC, KIND_MEMORY, KIND_COUNT } kind;

typedef struct queue {
    pins_arena *arena; /* the rows' strings */
    void *rows;        /* store_rbac_audit[] or store_memory_audit[], max_rows of them */
    size_t n;
    /* Memory reads only: open-addressing index (row + 1, 0 empty) of the queued rows, so that
     * identical reads within one flush window become one row carrying their count. */
    uint32_t *index;
    uint64_t *hashes;
    size_t icap;
} queue;

/* Denials folded while the bucket was empty, written once per summary period: one row per
 * (subject, reason), at most RPC_AUDIT_SUMMARY_ROWS; the last one takes every other pair. */
#define RPC_AUDIT_SUMMARY_ROWS 8

typedef struct summary {
    pins_arena *arena; /* the rows' strings */
    store_rbac_audit rows[RPC_AUDIT_SUMMARY_ROWS];
    size_t n;
    int64_t first_ns; /* when the first denial of the period was folded */
} summary;

/* A token bucket of new rows. */
typedef struct bucket {
    double rate; /* tokens per second */
    double burst;
    double tokens;
    int64_t ns; /* when tokens was last brought up to date */
} bucket;

/* The reads of one (operation, tenant, agent, outcome, cache hit) folded in this period. */
typedef struct read_group {
    const char *operation; /* these in the summary's arena */
    const char *tenant;
    const char *agent;
    const char *error_message;
    int err; /* the outcome: 0 or the error of every read in the group (the overflow: the first's)
              */
    bool success;
    bool cache_hit;
    uint64_t hash;
    int64_t ts_us; /* of its first read */
    int64_t reads;
    double latency_ms; /* the largest */
    uint32_t first;    /* its keys: index + 1 in read_summary.keys, chained through next */
    uint32_t last;
} read_group;

typedef struct read_key {
    const char *key; /* in the summary's arena */
    uint64_t hash;   /* of the group and the key */
    int64_t reads;
    uint32_t group;
    uint32_t next; /* index + 1 of the group's next key, 0: the last */
} read_key;

typedef struct read_summary {
    pins_arena *arena;
    /* The groups, then the overflow (index RPC_AUDIT_READ_GROUPS): the reads of any further
     * group in this period, with "*" in each field where they differ, so that reads varying
     * their tenant or agent cannot make a row each. */
    read_group groups[RPC_AUDIT_READ_GROUPS + 1];
    size_t ngroups;
    bool overflow;  /* the overflow group holds reads */
    read_key *keys; /* RPC_AUDIT_READ_KEYS of them */
    size_t nkeys;
    uint32_t *index; /* open addressing over keys (index + 1, 0 empty), READ_INDEX slots */
    uint32_t gindex[RPC_AUDIT_READ_GROUPS * 2]; /* the same over groups */
    int64_t first_ns;
    pins_buf json; /* a group's keys while it is queued */
} read_summary;

#define READ_INDEX (RPC_AUDIT_READ_KEYS * 2)
/* The overflow group's hash, where its keys are looked up. */
#define READ_OVERFLOW_HASH UINT64_C(0x9e3779b97f4a7c15)

/* The audit retention of the process (one queue). */
typedef struct retention {
    int days;
    int batch;
    struct event *ev;
    int64_t before_us; /* of the pass in progress */
    int table;         /* STORE_AUDIT_RBAC, STORE_AUDIT_MEMORY, then done */
    int batches;       /* statements of the table in this pass */
    bool more;         /* the last statement was full */
    bool pending;      /* a statement is in flight */
    bool in_call;      /* inside store_audit_expire: its callback must not start the next */
    bool stopped;      /* the session is going away: start nothing */
} retention;

struct rpc_audit {
    struct event_base *base;
    struct store_session *ss;
    struct event *timer;
    bool armed;
    int64_t armed_due_ns; /* when the armed timer fires */
    int flush_ms;
    size_t flush_rows;
    size_t max_rows;
    queue q[KIND_COUNT];
    size_t in_flight;
    bucket denials; /* new denial rows */
    int summary_ms;
    summary sum;
    bucket reads; /* single-read rows */
    int read_summary_ms;
    read_summary rs;
    retention ret;
    /* rbac_audit_aggregated_total's two series, looked up once on the queue's thread. */
    metrics_cell *aggregated[2];
    bool aggregated_set[2];
    metrics_cell *folded; /* memory_audit_reads_folded_total's cell */
};

/* One store write in flight. */
typedef struct write_ctx {
    rpc_audit *q;
    kind k;
    size_t n;
} write_ctx;

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;
static metrics_family *m_rbac;
static metrics_family *m_aggregated;
static metrics_family *m_retention;
static metrics_family *m_folded;

static void metrics_init(void)
{
    static const char *const status[] = {"status"};
    static const char *const cause[] = {"cause"};
    static const char *const table[] = {"table"};
    m_rbac = metrics_counter_new("rbac_audit_writes_total",
                                 "RBAC audit rows written, failed or dropped.", status, 1);
    m_aggregated = metrics_counter_new(
        "rbac_audit_aggregated_total",
        "RBAC denials counted in another audit row instead of a row of their own.", cause, 1);
    m_retention = metrics_counter_new("audit_retention_deleted_total",
                                      "Audit rows deleted by the retention.", table, 1);
    m_folded = metrics_counter_new(
        "memory_audit_reads_folded_total",
        "Reads over the read rows' budget, counted in a read summary row instead of a row of "
        "their own.",
        NULL, 0);
    metrics_counter_add(m_folded, NULL, 0);
    /* Every outcome from the start, so that rates and increase() see the first failure. */
    static const char *const statuses[] = {"success", "error", "dropped"};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        metrics_counter_add(m_rbac, &statuses[i], 0);
}

enum { AGG_IDENTICAL, AGG_OVER_BUDGET };

/* Counts a denial written into another row (one per refused request in shadow mode, so the
 * series' cell is looked up once, not per call). */
static void count_aggregated(rpc_audit *q, int cause)
{
    static const char *const names[] = {"identical", "over_budget"};
    if (m_aggregated == NULL)
        return;
    if (!q->aggregated_set[cause]) {
        const char *v[] = {names[cause]};
        q->aggregated[cause] = metrics_cell_get(m_aggregated, v);
        q->aggregated_set[cause] = true;
    }
    if (q->aggregated[cause] != NULL) {
        metrics_cell_add(q->aggregated[cause], 1);
    } else {
        const char *v[] = {names[cause]};
        metrics_counter_add(m_aggregated, v, 1);
    }
}

static void count(kind k, const char *status, size_t n)
{
    if (k == KIND_MEMORY) {
        store_memory_audit_count(status, n);
        return;
    }
    const char *v[] = {status};
    if (m_rbac != NULL && n > 0)
        metrics_counter_add(m_rbac, v, (double)n);
}

static const char *copy(pins_arena *a, const char *s, bool *pok)
{
    if (s == NULL)
        return NULL;
    char *c = pins_arena_strdup(a, s);
    if (c == NULL)
        *pok = false;
    return c;
}

static void on_written(void *arg, int err, int64_t written)
{
    write_ctx *w = arg;
    w->q->in_flight--;
    count(w->k, err == 0 ? "success" : "error", w->n);
    free(w);
}

static void flush_kind(rpc_audit *q, kind k)
{
    queue *qu = &q->q[k];
    size_t size = k == KIND_RBAC ? sizeof(store_rbac_audit) : sizeof(store_memory_audit);
    for (size_t off = 0; off < qu->n;) {
        size_t n = qu->n - off;
        if (n > STORE_AUDIT_WRITE_MAX)
            n = STORE_AUDIT_WRITE_MAX;
        const void *rows = (const char *)qu->rows + off * size;
        off += n;
        write_ctx *w = malloc(sizeof(*w));
        if (w == NULL) {
            count(k, "error", n);
            continue;
        }
        *w = (write_ctx){.q = q, .k = k, .n = n};
        q->in_flight++;
        int rv = k == KIND_RBAC ? store_rbac_audit_write(q->ss, rows, n, on_written, w)
                                : store_memory_audit_write(q->ss, rows, n, on_written, w);
        if (rv != 0)
            on_written(w, rv, 0);
    }
    qu->n = 0;
    if (qu->index != NULL)
        memset(qu->index, 0, qu->icap * sizeof(*qu->index));
    pins_arena_reset(qu->arena);
}

/* Makes sure the flush timer runs within ms (an earlier deadline is kept). */
static void arm(rpc_audit *q, int ms)
{
    int64_t due = pins_time_mono_ns() + (int64_t)ms * 1000000;
    if (q->armed && q->armed_due_ns <= due)
        return;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    if (evtimer_add(q->timer, &tv) == 0) {
        q->armed = true;
        q->armed_due_ns = due;
    }
}

/* Queues the summary rows when they are due (or force), so that the flush writes them. */
static bool summary_queue(rpc_audit *q, bool force)
{
    summary *sm = &q->sum;
    if (sm->n == 0)
        return false;
    int64_t age_ms = (pins_time_mono_ns() - sm->first_ns) / 1000000;
    if (!force && age_ms < q->summary_ms)
        return false;
    queue *qu = &q->q[KIND_RBAC];
    int64_t folded = 0;
    for (size_t i = 0; i < sm->n; i++) {
        folded += sm->rows[i].count;
        if (qu->n >= q->max_rows)
            count(KIND_RBAC, "dropped", 1);
        else
            ((store_rbac_audit *)qu->rows)[qu->n++] = sm->rows[i];
    }
    char n[24], rows[24];
    snprintf(n, sizeof(n), "%lld", (long long)folded);
    snprintf(rows, sizeof(rows), "%zu", sm->n);
    pins_log_warn("rbac audit over its row budget: denials folded into summary rows", "denials", n,
                  "rows", rows, "subject", sm->rows[0].subject, "reason", sm->rows[0].reason, NULL);
    return true;
}

static void read_summary_queue(rpc_audit *q);

static void flush(rpc_audit *q, bool force)
{
    if (q->armed) {
        evtimer_del(q->timer);
        q->armed = false;
    }
    bool summary_written = summary_queue(q, force);
    read_summary *rs = &q->rs;
    if (rs->ngroups > 0) {
        int64_t age_ms = (pins_time_mono_ns() - rs->first_ns) / 1000000;
        if (force || age_ms >= q->read_summary_ms)
            read_summary_queue(q);
        else
            arm(q, q->read_summary_ms - (int)age_ms);
    }
    flush_kind(q, KIND_RBAC);
    flush_kind(q, KIND_MEMORY);
    if (summary_written) {
        /* The store copied the rows before returning. */
        q->sum.n = 0;
        pins_arena_reset(q->sum.arena);
    } else if (q->sum.n > 0) {
        int64_t age_ms = (pins_time_mono_ns() - q->sum.first_ns) / 1000000;
        arm(q, age_ms < q->summary_ms ? q->summary_ms - (int)age_ms : 0);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    flush(arg, false);
}

/* A row of kind k was queued: flush at the threshold (from the loop, not from the call), else
 * make sure the timer runs. */
static void queued(rpc_audit *q, kind k)
{
    if (q->q[k].n >= q->flush_rows) {
        event_active(q->timer, EV_TIMEOUT, 0);
        return;
    }
    arm(q, q->flush_ms);
}

/* The next free row of kind k, or NULL (counted as dropped) when the queue is full. */
static void *slot(rpc_audit *q, kind k)
{
    queue *qu = &q->q[k];
    if (qu->n >= q->max_rows) {
        count(k, "dropped", 1);
        return NULL;
    }
    size_t size = k == KIND_RBAC ? sizeof(store_rbac_audit) : sizeof(store_memory_audit);
    return (char *)qu->rows + qu->n * size;
}

static double elapsed_ms(const rpc_call *call)
{
    return (double)(pins_time_mono_ns() - rpc_call_start_ns(call)) / 1e6;
}

/* ---- retention ------------------------------------------------------------------------------ */

static void retention_next(rpc_audit *q);

static void on_expired(void *arg, int err, int64_t n)
{
    rpc_audit *q = arg;
    retention *r = &q->ret;
    r->pending = false;
    r->batches++;
    r->more = err == 0 && n >= r->batch;
    if (err == PINS_ECANCELLED)
        r->stopped = true;
    const char *v[] = {r->table == STORE_AUDIT_RBAC ? "rbac" : "memory"};
    if (err == 0 && n > 0 && m_retention != NULL)
        metrics_counter_add(m_retention, v, (double)n);
    if (err != 0 && err != PINS_ECANCELLED)
        pins_log_warn("audit retention failed", "table", v[0], "error", pins_strerror(err),
                      "detail", store_session_last_error(q->ss), NULL);
    if (!r->in_call)
        retention_next(q);
}

/* Runs the pass's statements one after the other: a table until a statement deletes less than a
 * batch or RPC_AUDIT_RETENTION_BATCHES ran, then the next table. Works with a store that calls
 * back at once (SQLite: this loop) and one that calls back later (PostgreSQL: the callback). */
static void retention_next(rpc_audit *q)
{
    retention *r = &q->ret;
    while (!r->pending && !r->stopped && r->table <= STORE_AUDIT_MEMORY) {
        if (!r->more || r->batches >= RPC_AUDIT_RETENTION_BATCHES) {
            r->table++;
            r->batches = 0;
            r->more = true;
            continue;
        }
        r->pending = true;
        r->in_call = true;
        int rv = store_audit_expire(q->ss, (store_audit_table)r->table, r->before_us, r->batch,
                                    on_expired, q);
        r->in_call = false;
        if (rv != 0) {
            r->pending = false;
            r->more = false;
        }
    }
}

void rpc_audit_retention_run(rpc_audit *q)
{
    retention *r = &q->ret;
    if (r->days <= 0 || r->pending || r->stopped)
        return;
    r->before_us = pins_time_now_us() - (int64_t)r->days * INT64_C(86400000000);
    r->table = STORE_AUDIT_RBAC;
    r->batches = 0;
    r->more = true;
    retention_next(q);
}

static void on_retention(evutil_socket_t fd, short what, void *arg)
{
    rpc_audit_retention_run(arg);
}

/* ---- queues --------------------------------------------------------------------------------- */

static void bucket_init(bucket *b, double rate, double min_burst)
{
    b->rate = rate;
    b->burst = rate > min_burst ? rate : min_burst;
    b->tokens = b->burst;
    b->ns = pins_time_mono_ns();
}

static bool queue_init(queue *qu, size_t max_rows, size_t row_size)
{
    qu->rows = calloc(max_rows, row_size);
    qu->arena = pins_arena_new(0);
    size_t icap = 16;
    while (icap < max_rows * 2)
        icap *= 2;
    qu->icap = icap;
    qu->index = calloc(icap, sizeof(uint32_t));
    qu->hashes = calloc(max_rows, sizeof(uint64_t));
    return qu->rows != NULL && qu->arena != NULL && qu->index != NULL && qu->hashes != NULL;
}

int rpc_audit_new(struct event_base *base, struct store_session *ss, const rpc_audit_options *opts,
                  rpc_audit **pq)
{
    pthread_once(&metrics_once, metrics_init);
    rpc_audit_options o = opts != NULL ? *opts : (rpc_audit_options){0};
    rpc_audit *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return PINS_ENOMEM;
    q->base = base;
    q->ss = ss;
    q->flush_ms = o.flush_ms > 0 ? o.flush_ms : RPC_AUDIT_FLUSH_MS;
    q->flush_rows = o.flush_rows > 0 ? o.flush_rows : RPC_AUDIT_FLUSH_ROWS;
    q->max_rows = o.max_rows > 0 ? o.max_rows : RPC_AUDIT_MAX_ROWS;
    double rate = o.denial_rows_per_s > 0 ? o.denial_rows_per_s : RPC_AUDIT_DENIAL_ROWS_PER_S;
    bucket_init(&q->denials, rate, 1);
    rate = o.read_rows_set ? o.read_rows_per_s : RPC_AUDIT_READ_ROWS_PER_S;
    bucket_init(&q->reads, rate > 0 ? rate : 0, rate > 0 ? 1 : 0);
    q->read_summary_ms = o.read_summary_ms > 0 ? o.read_summary_ms : RPC_AUDIT_READ_SUMMARY_MS;
    q->rs.arena = pins_arena_new(0);
    q->rs.keys = calloc(RPC_AUDIT_READ_KEYS, sizeof(*q->rs.keys));
    q->rs.index = calloc(READ_INDEX, sizeof(*q->rs.index));
    pins_buf_init(&q->rs.json, SIZE_MAX); /* at most RPC_AUDIT_READ_KEYS keys of 512 bytes */
    q->summary_ms = o.summary_ms > 0 ? o.summary_ms : RPC_AUDIT_SUMMARY_MS;
    q->timer = evtimer_new(base, on_timer, q);
    q->sum.arena = pins_arena_new(0);
    bool ok = queue_init(&q->q[KIND_RBAC], q->max_rows, sizeof(store_rbac_audit)) &&
              queue_init(&q->q[KIND_MEMORY], q->max_rows, sizeof(store_memory_audit));
    if (ok && o.retention_days > 0) {
        q->ret.days = o.retention_days;
        q->ret.batch = o.retention_batch > 0 ? o.retention_batch : 500;
        q->ret.table = STORE_AUDIT_MEMORY + 1;
        int every = o.retention_interval_s > 0 ? o.retention_interval_s : 10;
        q->ret.ev = event_new(base, -1, EV_PERSIST, on_retention, q);
        struct timeval tv = {.tv_sec = every};
        ok = q->ret.ev != NULL && event_add(q->ret.ev, &tv) == 0;
    }
    if (!ok || q->timer == NULL || q->sum.arena == NULL || q->rs.arena == NULL ||
        q->rs.keys == NULL || q->rs.index == NULL) {
        rpc_audit_free(q);
        return PINS_ENOMEM;
    }
    *pq = q;
    return 0;
}

void rpc_audit_free(rpc_audit *q)
{
    if (q == NULL)
        return;
    if (q->timer != NULL)
        event_free(q->timer);
    if (q->ret.ev != NULL)
        event_free(q->ret.ev);
    count(KIND_RBAC, "dropped", q->sum.n);
    pins_arena_free(q->sum.arena);
    count(KIND_MEMORY, "dropped", q->rs.ngroups);
    pins_arena_free(q->rs.arena);
    free(q->rs.keys);
    free(q->rs.index);
    pins_buf_free(&q->rs.json);
    for (int k = 0; k < KIND_COUNT; k++) {
        count((kind)k, "dropped", q->q[k].n);
        free(q->q[k].rows);
        free(q->q[k].index);
        free(q->q[k].hashes);
        pins_arena_free(q->q[k].arena);
    }
    free(q);
}

void rpc_audit_flush(rpc_audit *q)
{
    flush(q, true);
}

size_t rpc_audit_in_flight(const rpc_audit *q)
{
    return q->in_flight;
}

size_t rpc_audit_queued(const rpc_audit *q)
{
    return q->q[KIND_RBAC].n + q->q[KIND_MEMORY].n;
}

void rpc_audit_drain(rpc_audit *q, int timeout_ms)
{
    if (q == NULL)
        return;
    q->ret.stopped = true; /* a statement in flight completes; no next one */
    if (q->ret.ev != NULL)
        event_del(q->ret.ev);
    rpc_audit_flush(q);
    int64_t deadline = pins_time_mono_ns() + (int64_t)timeout_ms * 1000000;
    while ((q->in_flight > 0 || q->ret.pending) && pins_time_mono_ns() < deadline) {
        event_base_loop(q->base, EVLOOP_NONBLOCK);
        struct timespec ts = {.tv_nsec = 1000000};
        nanosleep(&ts, NULL);
    }
}

static uint64_t mix(uint64_t h, const char *s)
{
    /* FNV-1a over the string and its terminator (h ^ 0), so ("ab","c") and ("a","bc") differ. */
    return pins_fnv1a_str(h, s != NULL ? s : "", NULL) * PINS_FNV1A_PRIME;
}

static bool same(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* ---- RBAC decisions ------------------------------------------------------------------------- */

/* The row of a decision as it is about to be recorded (borrowed strings). */
typedef struct decision_row {
    const char *subject;
    const char *resource;
    const char *action;
    bool allowed;
    const char *reason;
    const char *const *roles;
    size_t nroles;
    const char *path;
    const char *method;
    const char *tenant;
} decision_row;

/* The audit reason of a shadow-mode would-be denial (static). */
static const char *shadow_reason(const char *reason)
{
    static const char *const known[][2] = {
        {"invalid-token", "shadow-invalid-token"},
        {"no-credentials", "shadow-no-credentials"},
        {"insufficient-permissions", "shadow-insufficient-permissions"},
        {"tenant-not-allowed", "shadow-tenant-not-allowed"},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(reason, known[i][0]) == 0)
            return known[i][1];
    }
    return "shadow-denied";
}

static uint64_t decision_hash(const decision_row *d)
{
    uint64_t h = PINS_FNV1A_INIT;
    h = mix(mix(mix(mix(h, d->subject), d->resource), d->action), d->reason);
    h = mix(mix(mix(h, d->path), d->method), d->tenant);
    for (size_t i = 0; i < d->nroles; i++)
        h = mix(h, d->roles[i]);
    return h ^ (uint64_t)d->allowed;
}

static bool same_roles(const char *const *a, size_t na, const char *const *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        if (!same(a[i], b[i]))
            return false;
    }
    return true;
}

static bool decision_matches(const store_rbac_audit *r, const decision_row *d)
{
    return r->allowed == d->allowed && same(r->subject, d->subject) &&
           same(r->resource, d->resource) && same(r->action, d->action) &&
           same(r->reason, d->reason) && same(r->path, d->path) && same(r->method, d->method) &&
           same(r->tenant_id, d->tenant) && same_roles(r->roles, r->nroles, d->roles, d->nroles);
}

/* Fills r with d's fields copied into a; false when out of memory. */
static bool decision_copy(pins_arena *a, store_rbac_audit *r, const decision_row *d,
                          const char *request_id, double ms)
{
    bool ok = true;
    const char **roles = d->nroles > 0 ? pins_arena_alloc(a, d->nroles * sizeof(*roles)) : NULL;
    if (d->nroles > 0 && roles == NULL)
        return false;
    for (size_t i = 0; ok && i < d->nroles; i++)
        roles[i] = copy(a, d->roles[i], &ok);
    *r = (store_rbac_audit){
        .ts_us = pins_time_now_us(),
        .subject = copy(a, d->subject, &ok),
        .resource = copy(a, d->resource, &ok),
        .action = copy(a, d->action, &ok),
        .allowed = d->allowed,
        .reason = copy(a, d->reason, &ok),
        .roles = roles,
        .nroles = d->nroles,
        .path = copy(a, d->path, &ok),
        .method = copy(a, d->method, &ok),
        .tenant_id = copy(a, d->tenant, &ok),
        .request_id = copy(a, request_id, &ok),
        .latency_ms = ms,
        .count = 1,
    };
    return ok;
}

/* One token of b, when there is one. */
static bool take_token(bucket *b)
{
    int64_t now = pins_time_mono_ns();
    b->tokens += (double)(now - b->ns) / 1e9 * b->rate;
    b->ns = now;
    if (b->tokens > b->burst)
        b->tokens = b->burst;
    if (b->tokens < 1)
        return false;
    b->tokens -= 1;
    return true;
}

/* Folds a denial into the summary row of its subject and reason (the last row takes what finds
 * no row of its own): each field keeps the value every folded denial shared, else reads "*". */
static void fold(rpc_audit *q, const decision_row *d, double ms)
{
    summary *sm = &q->sum;
    count_aggregated(q, AGG_OVER_BUDGET);
    store_rbac_audit *r = NULL;
    for (size_t i = 0; i < sm->n && r == NULL; i++) {
        if (same(sm->rows[i].subject, d->subject) && same(sm->rows[i].reason, d->reason))
            r = &sm->rows[i];
    }
    if (r == NULL && sm->n < RPC_AUDIT_SUMMARY_ROWS) {
        r = &sm->rows[sm->n];
        if (!decision_copy(sm->arena, r, d, NULL, ms)) {
            count(KIND_RBAC, "dropped", 1);
            return;
        }
        if (sm->n++ == 0) {
            sm->first_ns = pins_time_mono_ns();
            arm(q, q->summary_ms);
        }
        return;
    }
    if (r == NULL)
        r = &sm->rows[RPC_AUDIT_SUMMARY_ROWS - 1];
    static const char any[] = "*";
    const struct {
        const char **field;
        const char *value;
    } fields[] = {
        {&r->subject, d->subject},  {&r->resource, d->resource}, {&r->action, d->action},
        {&r->reason, d->reason},    {&r->path, d->path},         {&r->method, d->method},
        {&r->tenant_id, d->tenant},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (!same(*fields[i].field, fields[i].value))
            *fields[i].field = any;
    }
    if (!same_roles(r->roles, r->nroles, d->roles, d->nroles)) {
        r->roles = NULL;
        r->nroles = 0;
    }
    r->count++;
    if (ms > r->latency_ms)
        r->latency_ms = ms;
}

void rpc_audit_rbac(rpc_call *call, const struct auth_decision *d)
{
    rpc_audit *q = call->worker->audit;
    bool denial = !d->allowed || d->shadow_reason != NULL;
    if (q == NULL || (!denial && !d->log_allowed))
        return;
    decision_row dr = {
        .subject = d->subject != NULL ? d->subject : "anonymous",
        .resource = d->resource != NULL ? d->resource : "",
        .action = d->action != NULL ? d->action : "",
        .allowed = d->allowed,
        .reason = d->shadow_reason != NULL ? shadow_reason(d->shadow_reason) : d->reason,
        .roles = d->roles,
        .nroles = d->nroles,
        .path = call->origin.route != NULL ? call->origin.route : call->method->path,
        .method = call->origin.http_method != NULL ? call->origin.http_method : call->method->name,
        .tenant = call->tenant,
    };
    double ms = elapsed_ms(call);
    queue *qu = &q->q[KIND_RBAC];
    size_t mask = qu->icap - 1, pos = 0;
    uint64_t h = 0;
    if (denial) {
        /* A denial identical to one already queued in this window only adds to its count. */
        h = decision_hash(&dr);
        for (pos = (size_t)(h ^ (h >> 29)) & mask; qu->index[pos] != 0; pos = (pos + 1) & mask) {
            size_t i = qu->index[pos] - 1;
            store_rbac_audit *r = &((store_rbac_audit *)qu->rows)[i];
            if (qu->hashes[i] == h && decision_matches(r, &dr)) {
                r->count++;
                if (ms > r->latency_ms)
                    r->latency_ms = ms;
                count_aggregated(q, AGG_IDENTICAL);
                return;
            }
        }
        if (!take_token(&q->denials)) {
            fold(q, &dr, ms);
            return;
        }
    }
    store_rbac_audit *r = slot(q, KIND_RBAC);
    if (r == NULL)
        return;
    if (!decision_copy(qu->arena, r, &dr, rpc_call_request_id(call), ms)) {
        count(KIND_RBAC, "dropped", 1);
        return;
    }
    if (denial) {
        qu->hashes[qu->n] = h;
        qu->index[pos] = (uint32_t)(qu->n + 1);
    }
    qu->n++;
    queued(q, KIND_RBAC);
}

/* ---- memory reads --------------------------------------------------------------------------- */

static void read_summary_reset(read_summary *rs)
{
    rs->ngroups = 0;
    rs->overflow = false;
    rs->nkeys = 0;
    memset(rs->index, 0, READ_INDEX * sizeof(*rs->index));
    memset(rs->gindex, 0, sizeof(rs->gindex));
    pins_arena_reset(rs->arena);
}

/* The JSON object {"<key>": reads, ...} of g's keys in rs->json; false when out of memory. */
static bool group_keys_json(read_summary *rs, const read_group *g)
{
    pins_buf *b = &rs->json;
    pins_buf_reset(b);
    (void)pins_buf_add_byte(b, '{');
    for (uint32_t k = g->first; k != 0; k = rs->keys[k - 1].next) {
        const read_key *rk = &rs->keys[k - 1];
        char num[PINS_FMT_INT_MAX];
        if (k != g->first)
            (void)pins_buf_add_byte(b, ',');
        (void)pins_json_str_put(b, rk->key, PINS_JSON_STR_NUL);
        (void)pins_buf_add_byte(b, ':');
        (void)pins_buf_add(b, num, (size_t)(pins_fmt_i64(num, rk->reads) - num));
    }
    (void)pins_buf_add_byte(b, '}');
    return pins_buf_error(b) == 0;
}

/* Queues every read summary as a row of the memory queue and empties the summaries. */
static void read_summary_queue(rpc_audit *q)
{
    read_summary *rs = &q->rs;
    queue *qu = &q->q[KIND_MEMORY];
    size_t n = rs->ngroups;
    if (rs->overflow) {
        const read_group *o = &rs->groups[RPC_AUDIT_READ_GROUPS];
        char reads[24];
        snprintf(reads, sizeof(reads), "%lld", (long long)o->reads);
        pins_log_warn("memory audit: reads of more tenants and agents than its summaries hold "
                      "folded into one row",
                      "reads", reads, "operation", o->operation, NULL);
        rs->groups[n++] = *o;
    }
    for (size_t i = 0; i < n; i++) {
        const read_group *g = &rs->groups[i];
        store_memory_audit *r = slot(q, KIND_MEMORY);
        if (r == NULL)
            continue;
        bool ok = group_keys_json(rs, g);
        const char *keys =
            ok ? pins_arena_strndup(qu->arena, pins_buf_ptr(&rs->json), pins_buf_len(&rs->json))
               : NULL;
        *r = (store_memory_audit){
            .ts_us = g->ts_us,
            .operation = copy(qu->arena, g->operation, &ok),
            .tenant_id = copy(qu->arena, g->tenant, &ok),
            .key = "*",
            .agent_id = copy(qu->arena, g->agent, &ok),
            .cache_hit = g->cache_hit,
            .latency_ms = g->latency_ms,
            .success = g->success,
            .error_message =
                g->error_message != NULL ? copy(qu->arena, g->error_message, &ok) : NULL,
            .reads = g->reads,
            .keys = keys,
        };
        if (!ok || keys == NULL) {
            count(KIND_MEMORY, "dropped", 1);
            continue;
        }
        qu->hashes[qu->n] = 0; /* never matched: not in the index */
        qu->n++;
    }
    read_summary_reset(rs);
    if (qu->n > 0)
        queued(q, KIND_MEMORY);
}

/* Folds a read into the summary of its group (hash h over the group's fields): the group's count
 * and the key's. */
static void fold_read(rpc_audit *q, uint64_t h, const char *operation, const char *tenant,
                      const char *key, const char *agent, int err, bool cache_hit, double ms)
{
    read_summary *rs = &q->rs;
    if (rs->nkeys >= RPC_AUDIT_READ_KEYS)
        read_summary_queue(q);
    const size_t gmask = RPC_AUDIT_READ_GROUPS * 2 - 1;
    size_t gpos = (size_t)(h ^ (h >> 29)) & gmask;
    read_group *g = NULL;
    for (; rs->gindex[gpos] != 0; gpos = (gpos + 1) & gmask) {
        read_group *c = &rs->groups[rs->gindex[gpos] - 1];
        if (c->hash == h && c->cache_hit == cache_hit && c->err == err &&
            same(c->operation, operation) && same(c->tenant, tenant) && same(c->agent, agent)) {
            g = c;
            break;
        }
    }
    bool overflow = g == NULL && rs->ngroups == RPC_AUDIT_READ_GROUPS;
    if (overflow) {
        g = &rs->groups[RPC_AUDIT_READ_GROUPS];
        h = READ_OVERFLOW_HASH;
        if (rs->overflow) {
            if (!same(g->operation, operation))
                g->operation = "*";
            g->success = g->success && err == 0;
            g->cache_hit = g->cache_hit && cache_hit;
            if (g->error_message == NULL && err != 0) {
                g->error_message = pins_strerror(err);
                g->err = err;
            }
        }
    } else if (g == NULL) {
        g = &rs->groups[rs->ngroups];
    }
    if (overflow ? !rs->overflow : g == &rs->groups[rs->ngroups]) {
        /* A new group (or the period's first overflow read): tenant and agent "*" in the
         * overflow. */
        bool ok = true;
        *g = (read_group){
            .operation = copy(rs->arena, operation, &ok),
            .tenant = overflow ? "*" : copy(rs->arena, tenant, &ok),
            .agent = overflow ? "*" : copy(rs->arena, agent, &ok),
            .error_message = err != 0 ? pins_strerror(err) : NULL,
            .err = err,
            .success = err == 0,
            .cache_hit = cache_hit,
            .hash = h,
            .ts_us = pins_time_now_us(),
        };
        if (!ok) {
            count(KIND_MEMORY, "dropped", 1);
            return;
        }
        if (overflow) {
            rs->overflow = true;
        } else {
            rs->gindex[gpos] = (uint32_t)rs->ngroups + 1;
            if (rs->ngroups++ == 0) {
                rs->first_ns = pins_time_mono_ns();
                arm(q, q->read_summary_ms);
            }
        }
    }
    uint32_t gi = (uint32_t)(g - rs->groups);
    uint64_t kh = mix(h, key);
    size_t pos = (size_t)(kh ^ (kh >> 29)) & (READ_INDEX - 1);
    read_key *k = NULL;
    for (; rs->index[pos] != 0; pos = (pos + 1) & (READ_INDEX - 1)) {
        read_key *c = &rs->keys[rs->index[pos] - 1];
        if (c->hash == kh && c->group == gi && strcmp(c->key, key) == 0) {
            k = c;
            break;
        }
    }
    if (k == NULL) {
        const char *copied = pins_arena_strdup(rs->arena, key);
        if (copied == NULL) {
            count(KIND_MEMORY, "dropped", 1);
            return;
        }
        uint32_t ki = (uint32_t)rs->nkeys++;
        k = &rs->keys[ki];
        *k = (read_key){.key = copied, .hash = kh, .group = gi};
        rs->index[pos] = ki + 1;
        if (g->last != 0)
            rs->keys[g->last - 1].next = ki + 1;
        else
            g->first = ki + 1;
        g->last = ki + 1;
    }
    k->reads++;
    g->reads++;
    if (ms > g->latency_ms)
        g->latency_ms = ms;
    if (q->folded == NULL && m_folded != NULL)
        q->folded = metrics_cell_get(m_folded, NULL);
    if (q->folded != NULL)
        metrics_cell_add(q->folded, 1);
}

void rpc_audit_memory_read(rpc_call *call, const char *operation, const char *tenant,
                           const char *key, bool cache_hit, int err)
{
    rpc_audit *q = call->worker->audit;
    if (q == NULL)
        return;
    queue *qu = &q->q[KIND_MEMORY];
    const char *agent = rpc_call_header(call, "x-agent-id");
    const char *k = key != NULL ? key : "";
    double ms = elapsed_ms(call);
    uint64_t g = PINS_FNV1A_INIT;
    g = mix(mix(mix(g, operation), tenant), agent);
    g ^= (uint64_t)(unsigned)err << 2 | (uint64_t)(err == 0) << 1 | (uint64_t)cache_hit;
    uint64_t h = mix(g, k);
    size_t mask = qu->icap - 1;
    size_t pos = (size_t)(h ^ (h >> 29)) & mask;
    /* A read identical to one already queued in this window only adds to its count. */
    for (; qu->index[pos] != 0; pos = (pos + 1) & mask) {
        size_t i = qu->index[pos] - 1;
        store_memory_audit *r = &((store_memory_audit *)qu->rows)[i];
        if (qu->hashes[i] == h && r->cache_hit == cache_hit && r->success == (err == 0) &&
            same(r->error_message, err != 0 ? pins_strerror(err) : NULL) &&
            same(r->operation, operation) && same(r->tenant_id, tenant) && same(r->key, k) &&
            same(r->agent_id, agent)) {
            r->reads++;
            if (ms > r->latency_ms)
                r->latency_ms = ms;
            return;
        }
    }
    /* A read over the budget is folded into its summary, unless its key could not be named
     * apart in the summary's JSON. */
    if (!take_token(&q->reads) && pins_utf8_count(k, strlen(k)) >= 0) {
        fold_read(q, g, operation, tenant, k, agent, err, cache_hit, ms);
        return;
    }
    store_memory_audit *r = slot(q, KIND_MEMORY);
    if (r == NULL)
        return;
    pins_arena *a = qu->arena;
    bool ok = true;
    *r = (store_memory_audit){
        .ts_us = pins_time_now_us(),
        .operation = copy(a, operation, &ok),
        .tenant_id = copy(a, tenant, &ok),
        .key = copy(a, k, &ok),
        .agent_id = copy(a, agent, &ok),
        .cache_hit = cache_hit,
        .latency_ms = ms,
        .success = err == 0,
        .error_message = err != 0 ? pins_strerror(err) : NULL,
        .reads = 1,
    };
    if (!ok) {
        count(KIND_MEMORY, "dropped", 1);
        return;
    }
    qu->hashes[qu->n] = h;
    qu->index[pos] = (uint32_t)(qu->n + 1);
    qu->n++;
    queued(q, KIND_MEMORY);
}
