/* protocols/probes.c: /health, /ready (alias /health/ready) and /metrics, for every HTTP version.
 * Never guarded by RBAC. /ready asks the store for a real round trip; so does /metrics, whose
 * pins_ready gauge is the verdict /ready would give at that moment. */
#include "protocols/protocols_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/ratelimit.h"
#include "common/timeutil.h"
#include "observability/metrics.h"
#include "rpc/core.h"
#include "store/store.h"

/* How long the store may take to answer the ping of a scrape: past it pins_ready is 0 and the
 * scrape is answered, so a hung database does not make the scrape itself time out. */
#define METRICS_PING_NS (INT64_C(1000000000))

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
    case READY:
    case METRICS: {
        ready_ctx *r = pins_arena_alloc(a, sizeof(*r));
        if (r == NULL) {
            ans.status = 503;
            ans.body = "{\"ready\":false}";
            ans.body_len = strlen(ans.body);
            done(&ans, arg);
            return true;
        }
        *r = (ready_ctx){.done = done,
                         .arg = arg,
                         .arena = a,
                         .ss = w->store,
                         .draining = atomic_load(&w->server->draining) != 0,
                         .metrics = which == METRICS,
                         .redis = ratelimit_redis_check(w->server->ratelimit)};
        if (r->metrics)
            store_session_set_deadline(w->store, pins_time_mono_ns() + METRICS_PING_NS);
        int rv = store_ping(w->store, on_ping, r);
        if (r->metrics)
            store_session_set_deadline(w->store, 0);
        if (rv != 0)
            on_ping(r, PINS_ESTORE, 0);
        return true;
    }
    }
    return false;
}
