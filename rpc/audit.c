/* rpc/audit.c: the per-worker audit queues of rpc/audit.h.
 *
 * A queue is an array of rows whose strings live in the queue's arena. A flush hands the array
 * to the store in chunks of at most STORE_AUDIT_WRITE_MAX rows and resets the arena at once: the
 * store copies what it keeps before the call returns (store.h), so the queue is empty and
 * reusable even while a PostgreSQL write is still in flight. Each write carries a small context
 * with its row count, freed by its callback, so the outcome is counted per row.
 */
#include "rpc/audit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "auth/auth.h"
#include "common/arena.h"
#include "common/error.h"
#include "common/timeutil.h"
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

struct rpc_audit {
    struct event_base *base;
    struct store_session *ss;
    struct event *timer;
    bool armed;
    int flush_ms;
    size_t flush_rows;
    size_t max_rows;
    queue q[KIND_COUNT];
    size_t in_flight;
};

/* One store write in flight. */
typedef struct write_ctx {
    rpc_audit *q;
    kind k;
    size_t n;
} write_ctx;

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;
static metrics_family *m_rbac;

static void metrics_init(void)
{
    static const char *const status[] = {"status"};
    m_rbac = metrics_counter_new("rbac_audit_writes_total",
                                 "RBAC audit rows written, failed or dropped.", status, 1);
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

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    rpc_audit_flush(arg);
}

/* A row of kind k was queued: flush at the threshold (from the loop, not from the call), else
 * make sure the timer runs. */
static void queued(rpc_audit *q, kind k)
{
    if (q->q[k].n >= q->flush_rows) {
        event_active(q->timer, EV_TIMEOUT, 0);
        return;
    }
    if (!q->armed) {
        struct timeval tv = {.tv_sec = q->flush_ms / 1000, .tv_usec = (q->flush_ms % 1000) * 1000};
        if (evtimer_add(q->timer, &tv) == 0)
            q->armed = true;
    }
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

int rpc_audit_new(struct event_base *base, struct store_session *ss, const rpc_audit_options *opts,
                  rpc_audit **pq)
{
    pthread_once(&metrics_once, metrics_init);
    rpc_audit *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return PINS_ENOMEM;
    q->base = base;
    q->ss = ss;
    q->flush_ms = opts != NULL && opts->flush_ms > 0 ? opts->flush_ms : RPC_AUDIT_FLUSH_MS;
    q->flush_rows = opts != NULL && opts->flush_rows > 0 ? opts->flush_rows : RPC_AUDIT_FLUSH_ROWS;
    q->max_rows = opts != NULL && opts->max_rows > 0 ? opts->max_rows : RPC_AUDIT_MAX_ROWS;
    q->timer = evtimer_new(base, on_timer, q);
    q->q[KIND_RBAC].rows = calloc(q->max_rows, sizeof(store_rbac_audit));
    q->q[KIND_MEMORY].rows = calloc(q->max_rows, sizeof(store_memory_audit));
    q->q[KIND_RBAC].arena = pins_arena_new(0);
    q->q[KIND_MEMORY].arena = pins_arena_new(0);
    size_t icap = 16;
    while (icap < q->max_rows * 2)
        icap *= 2;
    q->q[KIND_MEMORY].icap = icap;
    q->q[KIND_MEMORY].index = calloc(icap, sizeof(uint32_t));
    q->q[KIND_MEMORY].hashes = calloc(q->max_rows, sizeof(uint64_t));
    if (q->timer == NULL || q->q[KIND_RBAC].rows == NULL || q->q[KIND_MEMORY].rows == NULL ||
        q->q[KIND_RBAC].arena == NULL || q->q[KIND_MEMORY].arena == NULL ||
        q->q[KIND_MEMORY].index == NULL || q->q[KIND_MEMORY].hashes == NULL) {
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
    if (q->armed) {
        evtimer_del(q->timer);
        q->armed = false;
    }
    flush_kind(q, KIND_RBAC);
    flush_kind(q, KIND_MEMORY);
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
    rpc_audit_flush(q);
    int64_t deadline = pins_time_mono_ns() + (int64_t)timeout_ms * 1000000;
    while (q->in_flight > 0 && pins_time_mono_ns() < deadline) {
        event_base_loop(q->base, EVLOOP_NONBLOCK);
        struct timespec ts = {.tv_nsec = 1000000};
        nanosleep(&ts, NULL);
    }
}

void rpc_audit_rbac(rpc_call *call, const struct auth_decision *d)
{
    rpc_audit *q = call->worker->audit;
    if (q == NULL || (d->allowed && !d->log_allowed))
        return;
    store_rbac_audit *r = slot(q, KIND_RBAC);
    if (r == NULL)
        return;
    pins_arena *a = q->q[KIND_RBAC].arena;
    bool ok = true;
    const char **roles = d->nroles > 0 ? pins_arena_alloc(a, d->nroles * sizeof(*roles)) : NULL;
    if (d->nroles > 0 && roles == NULL)
        ok = false;
    for (size_t i = 0; ok && i < d->nroles; i++)
        roles[i] = copy(a, d->roles[i], &ok);
    *r = (store_rbac_audit){
        .ts_us = pins_time_now_us(),
        .subject = copy(a, d->subject != NULL ? d->subject : "anonymous", &ok),
        .resource = copy(a, d->resource != NULL ? d->resource : "", &ok),
        .action = copy(a, d->action != NULL ? d->action : "", &ok),
        .allowed = d->allowed,
        .reason = copy(a, d->reason, &ok),
        .roles = roles,
        .nroles = d->nroles,
        .path = copy(a, call->route != NULL ? call->route : call->method->path, &ok),
        .method = copy(a, call->http_method != NULL ? call->http_method : call->method->name, &ok),
        .tenant_id = copy(a, d->tenant, &ok),
        .request_id = copy(a, rpc_call_request_id(call), &ok),
        .latency_ms = elapsed_ms(call),
    };
    if (!ok) {
        count(KIND_RBAC, "dropped", 1);
        return;
    }
    q->q[KIND_RBAC].n++;
    queued(q, KIND_RBAC);
}

static uint64_t mix(uint64_t h, const char *s)
{
    /* FNV-1a over the string and its terminator, so ("ab","c") and ("a","bc") differ. */
    const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
    do {
        h = (h ^ *p) * 0x100000001b3ull;
    } while (*p++ != '\0');
    return h;
}

static bool same(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
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
    uint64_t h = 0xcbf29ce484222325ull;
    h = mix(mix(mix(mix(h, operation), tenant), k), agent);
    h ^= (uint64_t)(err == 0) << 1 | (uint64_t)cache_hit;
    size_t mask = qu->icap - 1;
    size_t pos = (size_t)(h ^ (h >> 29)) & mask;
    /* A read identical to one already queued in this window only adds to its count. */
    for (; qu->index[pos] != 0; pos = (pos + 1) & mask) {
        size_t i = qu->index[pos] - 1;
        store_memory_audit *r = &((store_memory_audit *)qu->rows)[i];
        if (qu->hashes[i] == h && r->cache_hit == cache_hit && r->success == (err == 0) &&
            same(r->operation, operation) && same(r->tenant_id, tenant) && same(r->key, k) &&
            same(r->agent_id, agent)) {
            r->reads++;
            if (ms > r->latency_ms)
                r->latency_ms = ms;
            return;
        }
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
