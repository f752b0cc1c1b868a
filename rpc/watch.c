/* rpc/watch.c: the cross-worker fan-out behind rpc/watch.h.
 *
 * Streams are counted in one process-wide table of principals under a mutex: subscribing and
 * ending a stream take it once, publishing never does. Each worker keeps its own streams, and
 * when PINS_SSE_HEARTBEAT_SECONDS is set a timer, armed while the worker has streams, that sends
 * each of them a heartbeat (the transports without one ignore it).
 */
#include "rpc/watch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "common/list.h"
#include "observability/metrics.h"
#include "rpc/rpc_int.h"

/* Buckets of the principal table (a power of two). */
#define PRINCIPAL_BUCKETS 256

/* One published change, shared by the inboxes it was queued to. */
typedef struct event_msg {
    _Atomic int refs;
    char *tenant_id;
    char *key;
    size_t key_len;
    uint8_t *msg;
    size_t len;
} event_msg;

typedef struct inbox_node {
    struct inbox_node *next;
    event_msg *ev;
} inbox_node;

/* The open streams of one principal, in the table while it has any. */
typedef struct principal {
    struct principal *next;
    int nwatch;
    char name[];
} principal;

/* One WatchPins stream. Lives in its call's arena. */
typedef struct sub {
    pins_list link; /* in its worker's subs */
    rpc_call *call;
    principal *owner; /* its slot */
    const char *tenant_id;
    const char *prefix;
    size_t prefix_len;
} sub;

struct rpc__watch_worker {
    pthread_mutex_t mu;
    inbox_node *head, *tail; /* guarded by mu */
    struct event *ev;
    struct event *heartbeat_ev; /* NULL without PINS_SSE_HEARTBEAT_SECONDS; armed while subs */
    struct timeval heartbeat_tv;
    pins_list subs; /* of sub, newest first; worker thread only */
    _Atomic int nsubs;
    metrics_cell *sent; /* watch_events_sent_total, the worker's cell (got on its thread) */
    bool sent_set;
};

static _Atomic int total; /* changed under principals_mu */
static metrics_family *m_active, *m_sent, *m_refused;
static pthread_mutex_t principals_mu = PTHREAD_MUTEX_INITIALIZER;
static principal *principals[PRINCIPAL_BUCKETS];

static void event_unref(event_msg *e)
{
    if (atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    free(e->tenant_id);
    free(e->key);
    free(e->msg);
    free(e);
}

static double active_gauge(void *arg)
{
    return (double)atomic_load_explicit(&total, memory_order_relaxed);
}

void rpc__watch_metrics_init(void)
{
    if (m_active != NULL)
        return;
    m_active = metrics_gauge_new("watch_streams_active", "WatchPins streams open.", NULL, 0);
    metrics_gauge_set_cb(m_active, NULL, active_gauge, NULL);
    m_sent = metrics_counter_new("watch_events_sent_total",
                                 "Pin change events sent on WatchPins streams.", NULL, 0);
    m_refused = metrics_counter_new(
        "watch_streams_refused_total",
        "WatchPins streams refused because PINS_WATCH_MAX or PINS_WATCH_MAX_PER_PRINCIPAL was "
        "reached.",
        NULL, 0);
}

bool rpc_watch_active(void)
{
    return atomic_load_explicit(&total, memory_order_relaxed) > 0;
}

/* ---- slots ------------------------------------------------------------------------------------
 */

static principal **bucket_of(const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    return &principals[h & (PRINCIPAL_BUCKETS - 1)];
}

/* Takes one of the process's and one of name's slots. Returns 0 and *powner,
 * PINS_ERESOURCE_EXHAUSTED (*pper_principal tells which limit), PINS_ENOMEM. */
static int slot_take(const pins_config *cfg, const char *name, principal **powner,
                     bool *pper_principal)
{
    int rv = 0;
    pthread_mutex_lock(&principals_mu);
    principal **b = bucket_of(name);
    principal *p = *b;
    while (p != NULL && strcmp(p->name, name) != 0)
        p = p->next;
    if (atomic_load(&total) >= cfg->watch_max) {
        *pper_principal = false;
        rv = PINS_ERESOURCE_EXHAUSTED;
        goto out;
    }
    if (p != NULL && p->nwatch >= cfg->watch_max_per_principal) {
        *pper_principal = true;
        rv = PINS_ERESOURCE_EXHAUSTED;
        goto out;
    }
    if (p == NULL) {
        size_t len = strlen(name);
        p = malloc(sizeof(*p) + len + 1);
        if (p == NULL) {
            rv = PINS_ENOMEM;
            goto out;
        }
        memcpy(p->name, name, len + 1);
        p->nwatch = 0;
        p->next = *b;
        *b = p;
    }
    p->nwatch++;
    atomic_fetch_add(&total, 1);
    *powner = p;
out:
    pthread_mutex_unlock(&principals_mu);
    return rv;
}

static void slot_give(principal *p)
{
    pthread_mutex_lock(&principals_mu);
    atomic_fetch_sub(&total, 1);
    if (--p->nwatch == 0) {
        principal **pp = bucket_of(p->name);
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        free(p);
    }
    pthread_mutex_unlock(&principals_mu);
}

/* ---- streams ----------------------------------------------------------------------------------
 */

static void unlink_sub(rpc__watch_worker *ww, sub *s)
{
    pins_list_unlink(&s->link);
    atomic_fetch_sub(&ww->nsubs, 1);
    if (pins_list_is_empty(&ww->subs) && ww->heartbeat_ev != NULL)
        event_del(ww->heartbeat_ev); /* an idle worker has no timer to wake it */
    slot_give(s->owner);
    s->owner = NULL;
}

/* Ends a stream whose send or heartbeat failed with rv. */
static void end_sub(rpc__watch_worker *ww, sub *s, int rv)
{
    rpc_call *call = s->call;
    unlink_sub(ww, s);
    rpc_call_on_cancel(call, NULL, NULL);
    if (rv == PINS_ERESOURCE_EXHAUSTED) /* past PINS_WATCH_PENDING_BYTES, or the budgets */
        rpc_call_fail(call, rv,
                      "watch stream closed: events could not be held for this client (it reads "
                      "too slowly, or the server's buffers are full)");
    else
        rpc_call_fail(call, rv, NULL);
}

/* watch_events_sent_total += 1, on the worker's cell. */
static void count_sent(rpc__watch_worker *ww)
{
    if (!ww->sent_set) {
        ww->sent = metrics_cell_get(m_sent, NULL);
        ww->sent_set = true;
    }
    metrics_cell_add(ww->sent, 1);
}

static void deliver(rpc__watch_worker *ww, const event_msg *e)
{
    for (pins_list *p = ww->subs.next, *next; p != &ww->subs; p = next) {
        next = p->next; /* s may leave the list */
        sub *s = pins_list_entry(p, sub, link);
        if (strcmp(s->tenant_id, e->tenant_id) == 0 && s->prefix_len <= e->key_len &&
            memcmp(s->prefix, e->key, s->prefix_len) == 0) {
            int rv = rpc_call_send_packed(s->call, e->msg, e->len);
            if (rv != 0)
                end_sub(ww, s, rv);
            else
                count_sent(ww);
        }
    }
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    rpc__watch_worker *ww = arg;
    for (pins_list *p = ww->subs.next, *next; p != &ww->subs; p = next) {
        next = p->next;
        sub *s = pins_list_entry(p, sub, link);
        rpc_call *call = s->call;
        if (call->ops->heartbeat != NULL && call->transport != NULL) {
            int rv = call->ops->heartbeat(call);
            if (rv != 0)
                end_sub(ww, s, rv);
        }
    }
}

static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    rpc__watch_worker *ww = arg;
    pthread_mutex_lock(&ww->mu);
    inbox_node *n = ww->head;
    ww->head = ww->tail = NULL;
    pthread_mutex_unlock(&ww->mu);
    while (n != NULL) {
        inbox_node *next = n->next;
        deliver(ww, n->ev);
        event_unref(n->ev);
        free(n);
        n = next;
    }
}

void rpc_watch_publish(rpc_call *origin, const char *tenant_id, const char *key, const uint8_t *msg,
                       size_t len)
{
    if (!rpc_watch_active())
        return;
    rpc_server *srv = rpc_call_worker(origin)->server;
    event_msg *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return;
    e->tenant_id = strdup(tenant_id);
    e->key = strdup(key);
    e->key_len = strlen(key);
    e->msg = malloc(len ? len : 1);
    if (e->tenant_id == NULL || e->key == NULL || e->msg == NULL) {
        atomic_store(&e->refs, 1);
        event_unref(e);
        return;
    }
    memcpy(e->msg, msg, len);
    e->len = len;
    atomic_store(&e->refs, 1); /* ours, dropped at the end */
    for (int i = 0; i < srv->nworkers; i++) {
        rpc__watch_worker *ww = srv->workers[i].watch_hub;
        if (ww == NULL || atomic_load(&ww->nsubs) == 0)
            continue;
        inbox_node *n = malloc(sizeof(*n));
        if (n == NULL)
            continue;
        n->next = NULL;
        n->ev = e;
        atomic_fetch_add(&e->refs, 1);
        pthread_mutex_lock(&ww->mu);
        if (ww->tail != NULL)
            ww->tail->next = n;
        else
            ww->head = n;
        ww->tail = n;
        pthread_mutex_unlock(&ww->mu);
        event_active(ww->ev, EV_READ, 0);
    }
    event_unref(e);
}

static void on_cancel(rpc_call *call, void *arg)
{
    sub *s = arg;
    unlink_sub(rpc_call_worker(call)->watch_hub, s);
    rpc_call_finish(call);
}

int rpc_watch_subscribe(rpc_call *call, const char *tenant_id, const char *prefix,
                        const char **pwhy)
{
    rpc__watch_worker *ww = rpc_call_worker(call)->watch_hub;
    const pins_config *cfg = rpc_call_config(call);
    if (ww == NULL)
        return PINS_EINTERNAL;
    /* A client that left before the subscription would never be told apart from a quiet one. */
    if (rpc_call_cancelled(call) || call->transport == NULL)
        return PINS_ECANCELLED;
    pins_arena *a = rpc_call_arena(call);
    sub *s = pins_arena_calloc(a, 1, sizeof(*s));
    const char *t = s ? pins_arena_strdup(a, tenant_id) : NULL;
    const char *p = t ? pins_arena_strdup(a, prefix) : NULL;
    if (p == NULL)
        return PINS_ENOMEM;
    const struct auth_decision *d = rpc_call_auth(call);
    const char *who = d != NULL && d->subject != NULL ? d->subject : "anonymous";
    bool per_principal = false;
    int rv = slot_take(cfg, who, &s->owner, &per_principal);
    if (rv == PINS_ERESOURCE_EXHAUSTED) {
        metrics_counter_inc(m_refused, NULL);
        *pwhy = per_principal ? pins_arena_printf(a,
                                                  "too many watch streams are open for this "
                                                  "caller (at most %d)",
                                                  cfg->watch_max_per_principal)
                              : pins_arena_printf(a, "too many watch streams are open (at most %d)",
                                                  cfg->watch_max);
        return rv;
    }
    if (rv != 0)
        return rv;
    s->call = call;
    s->tenant_id = t;
    s->prefix = p;
    s->prefix_len = strlen(p);
    pins_list_insert(ww->subs.next, &s->link);
    atomic_fetch_add(&ww->nsubs, 1);
    if (ww->heartbeat_ev != NULL && !evtimer_pending(ww->heartbeat_ev, NULL))
        evtimer_add(ww->heartbeat_ev, &ww->heartbeat_tv);
    call->pending_max = (size_t)cfg->watch_pending_bytes;
    rpc_call_on_cancel(call, on_cancel, s);
    if (call->ops->open != NULL) {
        rv = call->ops->open(call);
        if (rv != 0) {
            rpc_call_on_cancel(call, NULL, NULL);
            unlink_sub(ww, s);
            return rv;
        }
    }
    return 0;
}

int rpc__watch_worker_init(rpc_worker *w)
{
    rpc__watch_worker *ww = calloc(1, sizeof(*ww));
    if (ww == NULL)
        return PINS_ENOMEM;
    pthread_mutex_init(&ww->mu, NULL);
    pins_list_init(&ww->subs);
    ww->ev = event_new(w->base, -1, 0, on_inbox, ww);
    int secs = w->server->cfg->sse_heartbeat_seconds;
    if (ww->ev != NULL && secs > 0) {
        ww->heartbeat_ev = event_new(w->base, -1, EV_PERSIST, on_heartbeat, ww);
        ww->heartbeat_tv = (struct timeval){.tv_sec = secs};
        if (ww->heartbeat_ev == NULL) {
            event_free(ww->ev);
            ww->ev = NULL;
        }
    }
    if (ww->ev == NULL) {
        pthread_mutex_destroy(&ww->mu);
        free(ww);
        return PINS_ENOMEM;
    }
    w->watch_hub = ww;
    return 0;
}

void rpc__watch_drain(rpc_worker *w)
{
    rpc__watch_worker *ww = w->watch_hub;
    if (ww == NULL)
        return;
    for (pins_list *p = pins_list_first(&ww->subs); p != NULL; p = pins_list_first(&ww->subs)) {
        sub *s = pins_list_entry(p, sub, link);
        rpc_call *call = s->call;
        unlink_sub(ww, s);
        rpc_call_on_cancel(call, NULL, NULL);
        rpc_call_finish(call);
    }
}

void rpc__watch_worker_free(rpc_worker *w)
{
    rpc__watch_worker *ww = w->watch_hub;
    if (ww == NULL)
        return;
    on_inbox(-1, 0, ww); /* drop what is still queued (no subscriber is left) */
    if (ww->heartbeat_ev != NULL)
        event_free(ww->heartbeat_ev);
    event_free(ww->ev);
    pthread_mutex_destroy(&ww->mu);
    free(ww);
    w->watch_hub = NULL;
}
