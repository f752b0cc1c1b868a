/* protocols/probes.c: /health, /ready (alias /health/ready) and /metrics, for every HTTP version.
 * Never guarded by RBAC. /ready asks the store for a real round trip. /metrics answers at once: its
 * pins_ready gauge is the last round trip's verdict (of /ready or of an earlier scrape), and a
 * scrape that finds it older than STORE_VERDICT_FRESH_NS starts one ping in the background on its
 * worker (never more than one in flight per worker), so scrapes neither wait for a slow store nor
 * add to its load. Only the first scrape, before any verdict exists, waits for its ping (at most
 * METRICS_PING_NS). */
#include "protocols/protocols_int.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/ratelimit.h"
#include "common/timeutil.h"
#include "observability/metrics.h"
#include "rpc/core.h"
#include "store/store.h"

/* How long the store may take to answer the first scrape's ping: past it pins_ready is 0 and the
 * scrape is answered, so a hung database does not make the scrape itself time out. */
#define METRICS_PING_NS (INT64_C(1000000000))
/* A verdict older than this makes a scrape refresh it in the background. */
#define STORE_VERDICT_FRESH_NS (INT64_C(1000000000))

/* The store's last readiness verdict, of any worker: -1 none yet, 0 down, 1 answered. */
static _Atomic int store_verdict = -1;
static _Atomic int64_t store_verdict_ns; /* when it was reached (pins_time_mono_ns) */
/* This worker's background ping of a scrape is in flight (the store calls back on the worker's
 * own thread, so the flag needs no lock and no allocation outlives a call). */
static _Thread_local bool refresh_in_flight;

static void verdict_record(int err)
{
    atomic_store(&store_verdict, err == 0 ? 1 : 0);
    atomic_store(&store_verdict_ns, pins_time_mono_ns());
}

static void on_refresh(void *arg, int err, int64_t count)
{
    refresh_in_flight = false;
    if (err != PINS_ECANCELLED) /* a session freed at shutdown says nothing of the store */
        verdict_record(err);
}

typedef struct ready_ctx {
    proto__http_done_cb done;
    void *arg;
    pins_arena *arena;
    store_session *ss; /* for the reason of a store that is down */
    bool draining;
    bool metrics;      /* a scrape: answer with the exposition, not the /ready body */
    const char *redis; /* the rate limiter's Redis: ok, disabled, down (fail-open) */
} ready_ctx;

static metrics_family *m_ready;

void proto__probes_metrics_init(void)
{
    atomic_store(&store_verdict, -1); /* a new server: its first scrape asks its own store */
    if (m_ready != NULL)
        return;
    m_ready = metrics_gauge_new("pins_ready",
                                "1 when /ready would answer 200 (the store answers and the "
                                "server is not draining), else 0.",
                                NULL, 0);
    metrics_gauge_set(m_ready, NULL, 0);
}

static void answer_metrics(ready_ctx *r)
{
    proto__http_answer ans = {.status = 200};
    size_t len = 0;
    char *text = metrics_render(&len);
    char *copy = text ? pins_arena_strndup(r->arena, text, len) : NULL;
    free(text);
    if (copy == NULL) {
        ans.status = 500;
        ans.content_type = "application/json";
        ans.body = "{\"detail\":\"out of memory\",\"code\":13,\"message\":\"internal error\"}";
        ans.body_len = strlen(ans.body);
    } else {
        ans.content_type = "text/plain; version=0.0.4; charset=utf-8";
        ans.body = copy;
        ans.body_len = len;
    }
    r->done(&ans, r->arg);
}

static void on_ping(void *arg, int err, int64_t count)
{
    ready_ctx *r = arg;
    if (err != PINS_ECANCELLED)
        verdict_record(err);
    bool ok = err == 0 && !r->draining;
    metrics_gauge_set(m_ready, NULL, ok ? 1 : 0);
    if (r->metrics) {
        answer_metrics(r);
        return;
    }
    const char *state = err == 0                             ? "ok"
                        : store_session_schema_behind(r->ss) ? "schema_behind"
                                                             : "down";
    char *body = pins_arena_printf(r->arena,
                                   "{\"ready\":%s,\"checks\":{\"store\":\"%s\",\"redis\":"
                                   "\"%s\"%s}}",
                                   ok ? "true" : "false", state, r->redis,
                                   r->draining ? ",\"server\":\"draining\"" : "");
    proto__http_answer ans = {.status = ok ? 200 : 503,
                              .content_type = "application/json",
                              .body = body ? body : "{\"ready\":false}",
                              .body_len = body ? strlen(body) : 15};
    r->done(&ans, r->arg);
}

/* A scrape once a verdict exists: answered at once with it, after starting a background refresh
 * when it is stale. Returns false when there is no verdict yet. */
static bool metrics_from_verdict(rpc_worker *w, pins_arena *a, proto__http_done_cb done, void *arg)
{
    if (atomic_load(&store_verdict) < 0)
        return false;
    int64_t age = pins_time_mono_ns() - atomic_load(&store_verdict_ns);
    if (!refresh_in_flight && (age < 0 || age > STORE_VERDICT_FRESH_NS)) {
        refresh_in_flight = true;
        if (store_ping(w->store, on_refresh, NULL) != 0) {
            refresh_in_flight = false;
            verdict_record(PINS_ESTORE);
        }
    }
    bool draining = atomic_load(&w->server->draining) != 0;
    metrics_gauge_set(m_ready, NULL, atomic_load(&store_verdict) == 1 && !draining);
    ready_ctx r = {.done = done, .arg = arg, .arena = a};
    answer_metrics(&r);
    return true;
}

/* /ready, or a scrape that waits for the store's answer (at most METRICS_PING_NS). */
static bool ping_probe(rpc_worker *w, pins_arena *a, bool metrics, proto__http_done_cb done,
                       void *arg)
{
    ready_ctx *r = pins_arena_alloc(a, sizeof(*r));
    if (r == NULL) {
        proto__http_answer ans = {.status = 503,
                                  .content_type = "application/json",
                                  .body = "{\"ready\":false}",
                                  .body_len = 15};
        done(&ans, arg);
        return true;
    }
    *r = (ready_ctx){.done = done,
                     .arg = arg,
                     .arena = a,
                     .ss = w->store,
                     .draining = atomic_load(&w->server->draining) != 0,
                     .metrics = metrics,
                     .redis = ratelimit_redis_check(w->server->ratelimit)};
    if (metrics)
        store_session_set_deadline(w->store, pins_time_mono_ns() + METRICS_PING_NS);
    int rv = store_ping(w->store, on_ping, r);
    if (metrics)
        store_session_set_deadline(w->store, 0);
    if (rv != 0)
        on_ping(r, PINS_ESTORE, 0);
    return true;
}

bool proto__probe_handle(rpc_worker *w, pins_arena *a, const char *method, const char *path,
                         proto__http_done_cb done, void *arg)
{
    size_t plen = strcspn(path, "?");
    enum { HEALTH, READY, METRICS } which;
    if (plen == 7 && memcmp(path, "/health", 7) == 0)
        which = HEALTH;
    else if ((plen == 6 && memcmp(path, "/ready", 6) == 0) ||
             (plen == 13 && memcmp(path, "/health/ready", 13) == 0))
        which = READY;
    else if (plen == 8 && memcmp(path, "/metrics", 8) == 0)
        which = METRICS;
    else
        return false;

    proto__http_answer ans = {.status = 200, .content_type = "application/json"};
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        ans.status = 405;
        ans.allow = "GET, HEAD";
        ans.body = "{\"detail\":\"Method Not Allowed\",\"code\":12,\"message\":\"use GET\"}";
        ans.body_len = strlen(ans.body);
        done(&ans, arg);
        return true;
    }
    switch (which) {
    case HEALTH: {
        char ts[PINS_TIME_RFC3339_LEN];
        pins_time_format_us(pins_time_now_us(), ts);
        char *body = pins_arena_printf(a,
                                       "{\"status\":\"healthy\",\"timestamp\":\"%s\","
                                       "\"service\":\"pinsd\",\"version\":\"%s\"}",
                                       ts, PINS_VERSION);
        ans.body = body ? body : "{\"status\":\"healthy\"}";
        ans.body_len = strlen(ans.body);
        done(&ans, arg);
        return true;
    }
    case METRICS:
        if (metrics_from_verdict(w, a, done, arg))
            return true;
        return ping_probe(w, a, true, done, arg); /* no verdict yet: the first scrape waits */
    case READY:
        return ping_probe(w, a, false, done, arg);
    }
    return false;
}
