/* rpc/watch.c: the change feed's fan-out to WatchPins streams, and their catching up from the
 * store's history (rpc/watch.h).
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
#include "common/limits.h"
#include "common/list.h"
#include "common/pbstruct.h"
#include "observability/log.h"
#include "observability/metrics.h"
#include "rpc/rpc_int.h"
#include "rpc/services/pin_codec.h"
#include "store/store.h"

/* Buckets of the principal table (a power of two). */
#define PRINCIPAL_BUCKETS 256
/* Changes read from the history per store call while a stream catches up. */
#define HISTORY_PAGE 64
/* History reads a worker has in flight at once; more streams catching up wait their turn. */
#define HISTORY_INFLIGHT 4
/* Reads in a row that end below a live change they should hold before the stream gives up (the
 * database announced a change it does not have: never for changes pinsd wrote). */
#define HISTORY_STALLS 20

/* One published change, shared by the inboxes it was queued to. */
typedef struct event_msg {
    _Atomic int refs;
    bool interrupt; /* not a change: the feed was interrupted (rpc_watch_feed_state) */
    int64_t revision;
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
    principal *owner; /* its slot; NULL once unlinked */
    const char *tenant_id;
    const char *prefix;
    size_t prefix_len;
    int64_t last_rev; /* the revision of the last change sent (or since_revision) */
    /* Catching up: reading the history above last_rev; live changes are not sent, live_seen
     * keeps the highest revision among them. */
    bool catching;
    /* since_revision 0: the stream is live at once, and the tenant's latest revision is read
     * (base_rev), so that a stream ended before its first change still names a revision to
     * resume from that misses nothing after its start. */
    bool need_base;
    int64_t base_rev;
    int64_t live_seen;
    int stalls;     /* reads in a row that ended below live_seen */
    bool queued;    /* in its worker's wait list for a history read */
    pins_list wait; /* in its worker's wait list */
    bool fetching;  /* a store_changes_since call is in flight */
    bool cancelled; /* the client left while fetching: the callback finishes the call */
    int end_rv;     /* ended while fetching: the callback ends the call with it */
    const char *end_why;
    bool *gone; /* set by end_sub while a store call runs (the sub may be freed) */
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
    rpc_worker *w;
    pins_arena *scratch;   /* history pages are packed here; reset after each page */
    int inflight;          /* history reads in flight (HISTORY_INFLIGHT at most) */
    struct event *pump_ev; /* history_pump at the next loop iteration */
    pins_list waiting;     /* of sub (wait): streams waiting for a history read */
    /* A change could not be queued here (out of memory) or the feed was interrupted while no
     * message could be made: the next inbox run ends every stream (they may have a gap). */
    _Atomic bool lost;
};

static _Atomic int total; /* changed under principals_mu */
static _Atomic bool feed_down;
static _Atomic uint64_t feed_epoch; /* +1 at every interruption */
static metrics_family *m_active, *m_sent, *m_refused, *m_feed_up, *m_feed_lost;
static struct store *_Atomic feed_store; /* the process's store, for watch_feed_up */
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

static double feed_up_gauge(void *arg)
{
    struct store *st = atomic_load(&feed_store);
    return st != NULL && store_feed_live(st) && !atomic_load(&feed_down) ? 1.0 : 0.0;
}

void rpc__watch_metrics_init(void)
{
    if (m_active != NULL)
        return;
    m_feed_up = metrics_gauge_new("watch_feed_up",
                                  "1 while the store's change feed delivers every change to this "
                                  "process's watch streams (PostgreSQL: its LISTEN connection is "
                                  "up), else 0: new watch streams are refused.",
                                  NULL, 0);
    metrics_gauge_set_cb(m_feed_up, NULL, feed_up_gauge, NULL);
    m_feed_lost = metrics_counter_new(
        "watch_feed_interruptions_total",
        "Times the change feed was interrupted (every watch stream then ends with UNAVAILABLE).",
        NULL, 0);
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
    if (s->owner == NULL)
        return;
    if (s->queued) {
        pins_list_unlink(&s->wait);
        s->queued = false;
    }
    pins_list_unlink(&s->link);
    atomic_fetch_sub(&ww->nsubs, 1);
    if (pins_list_is_empty(&ww->subs) && ww->heartbeat_ev != NULL)
        event_del(ww->heartbeat_ev); /* an idle worker has no timer to wake it */
    slot_give(s->owner);
    s->owner = NULL;
}

/* The revision a client resumes from after this stream: the last change it was sent, or the
 * tenant's revision when the stream started. */
static int64_t resume_rev(const sub *s)
{
    return s->last_rev > s->base_rev ? s->last_rev : s->base_rev;
}

/* Ends a stream with rv and the client-visible why (NULL: the table's message, or the slow-reader
 * text for PINS_ERESOURCE_EXHAUSTED). The sub may be freed with its call. */
static void end_sub(rpc__watch_worker *ww, sub *s, int rv, const char *why)
{
    rpc_call *call = s->call;
    if (s->fetching) { /* its history read still holds the sub: that callback ends it */
        if (s->end_rv == 0) {
            s->end_rv = rv;
            s->end_why = why;
        }
        unlink_sub(ww, s);
        return;
    }
    if (s->gone != NULL)
        *s->gone = true;
    unlink_sub(ww, s);
    rpc_call_on_cancel(call, NULL, NULL);
    if (why != NULL)
        rpc_call_fail(call, rv, "%s", why);
    else if (rv == PINS_ERESOURCE_EXHAUSTED) /* past PINS_WATCH_PENDING_BYTES, or the budgets */
        rpc_call_fail(call, rv,
                      "watch stream closed: events could not be held for this client (it reads "
                      "too slowly, or the server's buffers are full); watch again with "
                      "since_revision=%lld to miss nothing",
                      (long long)resume_rev(s));
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

static bool matches(const sub *s, const char *tenant_id, const char *key, size_t key_len)
{
    return strcmp(s->tenant_id, tenant_id) == 0 && s->prefix_len <= key_len &&
           memcmp(s->prefix, key, s->prefix_len) == 0;
}

/* Sends one change of revision rev to s unless s already has it. Returns false when s ended. */
static bool send_change(rpc__watch_worker *ww, sub *s, int64_t rev, const uint8_t *msg, size_t len)
{
    if (rev <= s->last_rev)
        return true;
    int rv = rpc_call_send_packed(s->call, msg, len);
    if (rv != 0) {
        end_sub(ww, s, rv, NULL);
        return false;
    }
    s->last_rev = rev;
    count_sent(ww);
    return true;
}

static const char feed_lost[] = "the change feed of this server was interrupted (changes may have "
                                "been missed): watch again with since_revision=%lld, here or on "
                                "another replica, to miss nothing";

static void interrupt_all(rpc__watch_worker *ww)
{
    for (pins_list *p = ww->subs.next, *next; p != &ww->subs; p = next) {
        next = p->next;
        sub *s = pins_list_entry(p, sub, link);
        const char *why =
            pins_arena_printf(rpc_call_arena(s->call), feed_lost, (long long)resume_rev(s));
        end_sub(ww, s, PINS_EUNAVAILABLE, why);
    }
}

static void deliver(rpc__watch_worker *ww, const event_msg *e)
{
    if (e->interrupt) {
        interrupt_all(ww);
        return;
    }
    for (pins_list *p = ww->subs.next, *next; p != &ww->subs; p = next) {
        next = p->next; /* s may leave the list */
        sub *s = pins_list_entry(p, sub, link);
        if (!matches(s, e->tenant_id, e->key, e->key_len))
            continue;
        if (s->catching) {
            if (e->revision > s->live_seen)
                s->live_seen = e->revision;
            continue;
        }
        send_change(ww, s, e->revision, e->msg, e->len);
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
                end_sub(ww, s, rv, NULL);
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
    if (atomic_exchange(&ww->lost, false)) {
        pins_log_error("a change could not reach this worker's watch streams; ending them", NULL);
        interrupt_all(ww);
    }
    while (n != NULL) {
        inbox_node *next = n->next;
        deliver(ww, n->ev);
        event_unref(n->ev);
        free(n);
        n = next;
    }
}

/* Queues e to every worker with streams (all of them for an interrupt). */
static void publish(rpc_server *srv, event_msg *e)
{
    atomic_store(&e->refs, 1); /* ours, dropped at the end */
    for (int i = 0; i < srv->nworkers; i++) {
        rpc__watch_worker *ww = srv->workers[i].watch_hub;
        if (ww == NULL || atomic_load(&ww->nsubs) == 0)
            continue;
        inbox_node *n = malloc(sizeof(*n));
        if (n == NULL) { /* its streams would miss e: they end, and resume */
            atomic_store(&ww->lost, true);
            event_active(ww->ev, EV_READ, 0);
            continue;
        }
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

/* Packs ch as a WatchPinsResponse in a. Returns 0 or a PINS_E* code. */
static int pack_change(pins_arena *a, const store_change *ch, uint8_t **pmsg, size_t *plen)
{
    const store_pin *pin = &ch->pin;
    const uint8_t *vpb = pin->value_pb;
    size_t vlen = pin->value_pb_len;
    if (vpb == NULL) {
        Google__Protobuf__Struct *value = NULL;
        int rv =
            pbstruct_from_json(a, pin->value_json, pin->value_len, PINS_VALUE_MAX_DEPTH, &value);
        if (rv != 0)
            return rv;
        vlen = protobuf_c_message_get_packed_size(&value->base);
        uint8_t *buf = pins_arena_alloc(a, vlen + 1);
        if (buf == NULL)
            return PINS_ENOMEM;
        protobuf_c_message_pack(&value->base, buf);
        vpb = buf;
    }
    return pin_codec_encode_event(a, pin, vpb, vlen, ch->type, pmsg, plen);
}

/* Every worker ends its streams at its next inbox run. */
static void lose_all(rpc_server *srv)
{
    for (int i = 0; i < srv->nworkers; i++) {
        rpc__watch_worker *ww = srv->workers[i].watch_hub;
        if (ww == NULL || atomic_load(&ww->nsubs) == 0)
            continue;
        atomic_store(&ww->lost, true);
        event_active(ww->ev, EV_READ, 0);
    }
}

void rpc_watch_feed(void *arg, const store_change *ch)
{
    rpc_server *srv = arg;
    if (!rpc_watch_active())
        return;
    pins_arena *a = pins_arena_new(0);
    uint8_t *msg;
    size_t len;
    event_msg *e = a != NULL ? calloc(1, sizeof(*e)) : NULL;
    if (e == NULL || pack_change(a, ch, &msg, &len) != 0) {
        /* A change a stream cannot be sent breaks its exactly-once promise: end them all. */
        free(e);
        pins_arena_free(a);
        lose_all(srv);
        return;
    }
    e->revision = ch->pin.revision;
    e->tenant_id = strdup(ch->pin.tenant_id);
    e->key = strdup(ch->pin.key);
    e->key_len = strlen(ch->pin.key);
    e->msg = malloc(len ? len : 1);
    if (e->tenant_id == NULL || e->key == NULL || e->msg == NULL) {
        free(e->tenant_id);
        free(e->key);
        free(e->msg);
        free(e);
        pins_arena_free(a);
        lose_all(srv);
        return;
    }
    memcpy(e->msg, msg, len);
    e->len = len;
    pins_arena_free(a);
    publish(srv, e);
}

void rpc_watch_feed_state(void *arg, bool live)
{
    rpc_server *srv = arg;
    if (!live)
        atomic_fetch_add(&feed_epoch, 1); /* before feed_down: see rpc_watch_subscribe */
    atomic_store(&feed_down, !live);
    if (live)
        return;
    metrics_counter_inc(m_feed_lost, NULL);
    event_msg *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        lose_all(srv);
        return;
    }
    e->interrupt = true;
    publish(srv, e);
}

/* ---- catching up ------------------------------------------------------------------------------
 */

static void history_next(rpc__watch_worker *ww, sub *s);

/* Starts the history reads of waiting streams while fewer than HISTORY_INFLIGHT run, at most
 * 2 * HISTORY_INFLIGHT of them per call: a backend that answers at once (SQLite) puts each stream
 * back in the queue, and the rest waits for the next loop iteration (pump_ev), so a long history
 * never holds the worker for more than a few pages. */
static void history_pump(rpc__watch_worker *ww)
{
    int budget = 2 * HISTORY_INFLIGHT;
    while (budget-- > 0 && ww->inflight < HISTORY_INFLIGHT && !pins_list_is_empty(&ww->waiting)) {
        sub *s = pins_list_entry(pins_list_first(&ww->waiting), sub, wait);
        pins_list_unlink(&s->wait);
        s->queued = false;
        history_next(ww, s);
    }
    if (ww->inflight < HISTORY_INFLIGHT && !pins_list_is_empty(&ww->waiting))
        event_active(ww->pump_ev, EV_READ, 0);
}

static void on_pump(evutil_socket_t fd, short what, void *arg)
{
    history_pump(arg);
}

/* Queues s for its next history read (the read starts now when a slot is free). */
static void history_want(rpc__watch_worker *ww, sub *s)
{
    if (s->queued || s->fetching)
        return;
    pins_list_insert(ww->waiting.prev, &s->wait); /* at the tail: FIFO */
    s->queued = true;
    history_pump(ww);
}

static void on_history(void *arg, int err, const store_change *changes, size_t n, int64_t revision)
{
    sub *s = arg;
    rpc__watch_worker *ww = rpc_call_worker(s->call)->watch_hub;
    s->fetching = false;
    ww->inflight--;
    bool later = s->gone == NULL; /* called from the loop, not from inside history_next */
    if (s->cancelled) {           /* unlinked by on_cancel or the drain, which left us the finish */
        if (s->gone != NULL)
            *s->gone = true;
        rpc_call_finish(s->call);
        goto pump;
    }
    if (s->end_rv != 0) { /* ended while the read ran (a failed heartbeat, an interruption) */
        end_sub(ww, s, s->end_rv, s->end_why);
        goto pump;
    }
    if (s->need_base) {
        /* after = INT64_MAX: PINS_EOUT_OF_RANGE with the tenant's latest revision */
        if (err != 0 && err != PINS_EOUT_OF_RANGE) {
            end_sub(ww, s, err, NULL);
            goto pump;
        }
        s->need_base = false;
        s->base_rev = revision;
        /* The response headers go out now: a client that saw them knows its stream has a
         * revision to resume from. */
        if (s->call->ops->open != NULL) {
            int rv = s->call->ops->open(s->call);
            if (rv != 0)
                end_sub(ww, s, rv, NULL);
        }
        goto pump;
    }
    if (err == PINS_EOUT_OF_RANGE) {
        end_sub(ww, s, err,
                pins_arena_printf(rpc_call_arena(s->call),
                                  "since_revision: the changes of tenant %s after revision %lld "
                                  "are no longer kept (PINS_WATCH_HISTORY_SECONDS, "
                                  "PINS_WATCH_HISTORY_MAX_ROWS) or that revision is above its "
                                  "latest (%lld): list the pins, then watch from the list's "
                                  "revision",
                                  s->tenant_id, (long long)s->last_rev, (long long)revision));
        goto pump;
    }
    if (err != 0) {
        end_sub(ww, s, err, NULL);
        goto pump;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t *msg;
        size_t len;
        int rv = pack_change(ww->scratch, &changes[i], &msg, &len);
        if (rv != 0) {
            pins_arena_reset(ww->scratch);
            end_sub(ww, s, rv, NULL);
            goto pump;
        }
        bool alive = send_change(ww, s, changes[i].pin.revision, msg, len);
        pins_arena_reset(ww->scratch);
        if (!alive)
            goto pump;
    }
    if (n < HISTORY_PAGE) {
        /* The read reached the tenant's latest revision: every live change up to it is in the
         * history just sent (or was sent before). A live change above it came after the read. */
        if (s->live_seen <= revision) {
            s->catching = false;
            goto pump;
        }
        if (n == 0 && ++s->stalls >= HISTORY_STALLS) {
            end_sub(ww, s, PINS_EUNAVAILABLE,
                    "the change feed announced a change the store does not have; watch again "
                    "with since_revision to resume");
            goto pump;
        }
    } else {
        s->stalls = 0;
    }
    if (later)
        history_want(ww, s); /* the next page, behind the streams waiting for their turn */
    return;
pump:
    if (later)
        history_pump(ww);
}

/* Starts one history read for s (the base read first when it needs one). A read answered at once
 * puts s back at the tail of the queue while it is still catching up. */
static void history_next(rpc__watch_worker *ww, sub *s)
{
    bool gone = false;
    s->fetching = true;
    s->gone = &gone;
    ww->inflight++;
    int64_t after = s->need_base ? INT64_MAX : s->last_rev;
    int rv = store_changes_since(rpc_call_store(s->call), s->tenant_id, s->prefix, after,
                                 s->need_base ? 1 : HISTORY_PAGE, on_history, s);
    if (gone)
        return; /* ended (and maybe freed) in its callback */
    s->gone = NULL;
    if (rv != 0) {
        s->fetching = false;
        ww->inflight--;
        end_sub(ww, s, rv, NULL);
        return;
    }
    if (s->fetching)
        return; /* the callback comes later and goes on */
    if (s->catching || s->need_base) {
        pins_list_insert(ww->waiting.prev, &s->wait);
        s->queued = true;
    }
}

static void on_cancel(rpc_call *call, void *arg)
{
    sub *s = arg;
    unlink_sub(rpc_call_worker(call)->watch_hub, s);
    if (s->fetching) {
        s->cancelled = true; /* the history callback finishes the call */
        return;
    }
    rpc_call_finish(call);
}

int rpc_watch_subscribe(rpc_call *call, const char *tenant_id, const char *prefix, int64_t since,
                        const char **pwhy)
{
    rpc__watch_worker *ww = rpc_call_worker(call)->watch_hub;
    const pins_config *cfg = rpc_call_config(call);
    if (ww == NULL)
        return PINS_EINTERNAL;
    if (atomic_load(&feed_down) || !store_feed_live(ww->w->server->store)) {
        *pwhy = "watch is unavailable on this server: its change feed is down (see the log); "
                "retry, or watch on another replica";
        return PINS_EUNAVAILABLE;
    }
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
    s->last_rev = since;
    s->catching = since > 0;
    s->need_base = since == 0;
    uint64_t epoch = atomic_load(&feed_epoch);
    pins_list_insert(ww->subs.next, &s->link);
    atomic_fetch_add(&ww->nsubs, 1);
    if (ww->heartbeat_ev != NULL && !evtimer_pending(ww->heartbeat_ev, NULL))
        evtimer_add(ww->heartbeat_ev, &ww->heartbeat_tv);
    call->pending_max = (size_t)cfg->watch_pending_bytes;
    rpc_call_on_cancel(call, on_cancel, s);
    if (atomic_load(&feed_down) || atomic_load(&feed_epoch) != epoch) {
        /* The feed was interrupted between the check above and the insertion: the interruption
         * may have been queued before this stream existed. */
        rpc_call_on_cancel(call, NULL, NULL);
        unlink_sub(ww, s);
        *pwhy = "watch is unavailable on this server: its change feed was interrupted; retry, "
                "or watch on another replica";
        return PINS_EUNAVAILABLE;
    }
    /* The response headers go out once the stream is subscribed (since_revision 0: once its
     * start revision is read, in on_history). */
    if (!s->need_base && call->ops->open != NULL) {
        rv = call->ops->open(call);
        if (rv != 0) {
            rpc_call_on_cancel(call, NULL, NULL);
            unlink_sub(ww, s);
            return rv;
        }
    }
    history_want(ww, s);
    return 0;
}

int rpc__watch_worker_init(rpc_worker *w)
{
    rpc__watch_worker *ww = calloc(1, sizeof(*ww));
    if (ww == NULL)
        return PINS_ENOMEM;
    pthread_mutex_init(&ww->mu, NULL);
    pins_list_init(&ww->subs);
    ww->w = w;
    atomic_store(&feed_store, w->server->store);
    pins_list_init(&ww->waiting);
    ww->scratch = pins_arena_new(0);
    ww->pump_ev = ww->scratch != NULL ? event_new(w->base, -1, 0, on_pump, ww) : NULL;
    ww->ev = ww->pump_ev != NULL ? event_new(w->base, -1, 0, on_inbox, ww) : NULL;
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
        if (ww->pump_ev != NULL)
            event_free(ww->pump_ev);
        pins_arena_free(ww->scratch);
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
        if (s->fetching)
            s->cancelled = true; /* the history callback finishes it */
        else
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
    event_free(ww->pump_ev);
    pins_arena_free(ww->scratch);
    pthread_mutex_destroy(&ww->mu);
    free(ww);
    w->watch_hub = NULL;
}
