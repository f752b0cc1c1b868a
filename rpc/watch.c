/* rpc/watch.c: the cross-worker fan-out behind rpc/watch.h. */
#include "rpc/watch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc_int.h"

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

/* One WatchPins stream. Lives in its call's arena. */
typedef struct sub {
    struct sub *prev, *next;
    rpc_call *call;
    const char *tenant_id;
    const char *prefix;
    size_t prefix_len;
} sub;

struct rpc__watch_worker {
    pthread_mutex_t mu;
    inbox_node *head, *tail; /* guarded by mu */
    struct event *ev;
    sub *subs; /* worker thread only */
    _Atomic int nsubs;
};

static _Atomic int total;

static void event_unref(event_msg *e)
{
    if (atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    free(e->tenant_id);
    free(e->key);
    free(e->msg);
    free(e);
}

bool rpc_watch_active(void)
{
    return atomic_load_explicit(&total, memory_order_relaxed) > 0;
}

static void unlink_sub(rpc__watch_worker *ww, sub *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        ww->subs = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    atomic_fetch_sub(&ww->nsubs, 1);
    atomic_fetch_sub(&total, 1);
}

static void deliver(rpc__watch_worker *ww, const event_msg *e)
{
    for (sub *s = ww->subs; s != NULL;) {
        sub *next = s->next;
        if (strcmp(s->tenant_id, e->tenant_id) == 0 && s->prefix_len <= e->key_len &&
            memcmp(s->prefix, e->key, s->prefix_len) == 0) {
            int rv = rpc_call_send_packed(s->call, e->msg, e->len);
            if (rv != 0) {
                rpc_call *call = s->call;
                unlink_sub(ww, s);
                rpc_call_on_cancel(call, NULL, NULL);
                if (rv == PINS_ERESOURCE_EXHAUSTED)
                    rpc_call_fail(call, rv, "watch stream closed: the client reads too slowly");
                else
                    rpc_call_fail(call, rv, NULL);
            }
        }
        s = next;
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

int rpc_watch_subscribe(rpc_call *call, const char *tenant_id, const char *prefix)
{
    rpc__watch_worker *ww = rpc_call_worker(call)->watch_hub;
    if (ww == NULL)
        return PINS_EINTERNAL;
    if (atomic_fetch_add(&total, 1) >= RPC_WATCH_MAX) {
        atomic_fetch_sub(&total, 1);
        return PINS_ERESOURCE_EXHAUSTED;
    }
    pins_arena *a = rpc_call_arena(call);
    sub *s = pins_arena_calloc(a, 1, sizeof(*s));
    const char *t = s ? pins_arena_strdup(a, tenant_id) : NULL;
    const char *p = t ? pins_arena_strdup(a, prefix) : NULL;
    if (p == NULL) {
        atomic_fetch_sub(&total, 1);
        return PINS_ENOMEM;
    }
    s->call = call;
    s->tenant_id = t;
    s->prefix = p;
    s->prefix_len = strlen(p);
    s->next = ww->subs;
    if (ww->subs != NULL)
        ww->subs->prev = s;
    ww->subs = s;
    atomic_fetch_add(&ww->nsubs, 1);
    rpc_call_on_cancel(call, on_cancel, s);
    return 0;
}

int rpc__watch_worker_init(rpc_worker *w)
{
    rpc__watch_worker *ww = calloc(1, sizeof(*ww));
    if (ww == NULL)
        return PINS_ENOMEM;
    pthread_mutex_init(&ww->mu, NULL);
    ww->ev = event_new(w->base, -1, 0, on_inbox, ww);
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
    while (ww->subs != NULL) {
        sub *s = ww->subs;
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
    event_free(ww->ev);
    pthread_mutex_destroy(&ww->mu);
    free(ww);
    w->watch_hub = NULL;
}
