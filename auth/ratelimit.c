/* auth/ratelimit.c: the rate limiter (auth/ratelimit.h): REDIS_URL, one hiredis async connection
 * per worker on its libevent loop, the bucket script, the fail-open fallback and the verdicts.
 *
 * A worker's connection goes DOWN -> CONNECTING -> UP. Commands queued right after the connect
 * (AUTH, SELECT, SCRIPT LOAD) run in order once it is established; the SCRIPT LOAD reply (the
 * script's SHA1) makes it UP. Only an UP connection decides calls. Any failure (connect refused,
 * AUTH refused, the peer closing, RATELIMIT__HUNG_TIMEOUTS calls in a row waiting past the bound)
 * drops it and arms the reconnect timer with the next backoff step. hiredis frees its context
 * after the connect and disconnect callbacks, so those only forget the pointer; a context is freed
 * by us (redisAsyncFree) only from our own timers, never inside a hiredis callback.
 *
 * Leases (ratelimit_lease.c): a worker keeps, per tenant, a lease of tokens taken from the Redis
 * bucket by one EVALSHA and spends it locally; a call that finds no usable lease is queued on its
 * tenant until the answer of the one lease request in flight for that tenant (sent by the first
 * such call; the others never send their own), at most RATELIMIT_WAIT_MS, after which the local
 * bucket decides it. A waiting call's entry lives in the call's arena and sits on two queues: its
 * tenant's, served by the answer, and the worker's, in the order of the calls' deadlines (every
 * call waits equally long), watched by one timer armed for its first deadline, so that queueing a
 * call costs no allocation and no timer of its own. A request is a `lease_req` owned by its hiredis
 * reply callback (which hiredis always runs once: with the reply, or with NULL when the context
 * goes away); the answer serves the queue in order from the grant, refuses the rest when the bucket
 * gave less than asked (it is empty), or asks again when a full grant ran out. Tenants' states
 * are per worker (no lock), at most RATELIMIT__LEASE_TENANTS, idle ones evicted first.
 */
#include "auth/ratelimit_int.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fmt.h"
#include "common/hash.h"
#include "common/list.h"
#include "common/percent.h"
#include "common/rand.h"
#include "common/timeutil.h"
#include "observability/log.h"
#include "observability/metrics.h"

#define RATELIMIT__LOCAL_BUCKETS  65536
#define RATELIMIT__BACKOFF_MIN_MS 100
#define RATELIMIT__BACKOFF_MAX_MS 2000
#define RATELIMIT__HUNG_TIMEOUTS  20 /* calls in a row past the wait: Redis is hung, reconnect */
#define RATELIMIT__MAX_TENANT     1024
#define RATELIMIT__LEASE_TENANTS  4096 /* tenants a worker keeps a lease for */
#define RATELIMIT__LEASE_CHAINS   1024

const char ratelimit__script[] =
    "local rpm = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local want = tonumber(ARGV[3]) or 1\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens = tonumber(b[1])\n"
    "local ts = tonumber(b[2])\n"
    "if tokens == nil or ts == nil then tokens = burst; ts = now end\n"
    "if now > ts then\n"
    "  tokens = math.min(burst, tokens + (now - ts) * rpm / 60000)\n"
    "  ts = now\n"
    "end\n"
    "local granted = math.max(0, math.min(want, math.floor(tokens)))\n"
    "tokens = tokens - granted\n"
    "local full_ms = math.ceil((burst - tokens) * 60000 / rpm)\n"
    "redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),\n"
    "           'ts', string.format('%.0f', ts))\n"
    "redis.call('PEXPIRE', KEYS[1], full_ms + 1000)\n"
    "local retry_ms = 0\n"
    "if tokens < 1 then retry_ms = math.ceil((1 - tokens) * 60000 / rpm) end\n"
    "return {granted, math.floor(tokens), full_ms, retry_ms}\n";

struct ratelimit {
    const pins_config *cfg;
    int rpm;
    int burst;
    bool use_redis;
    ratelimit__redis_url url;
    char where[300]; /* host:port or the socket path, for logs (never the password) */
    ratelimit__local *local;
    char policy[64];       /* the RateLimit-Policy value */
    char limit[24];        /* rpm as text */
    char state[40];        /* "limit=<rpm>, remaining=": the start of every RateLimit value */
    char burst_text[24];   /* burst as text */
    ratelimit_texts texts; /* the three above, for the dispatcher's headers */
    size_t burst_len;
};

typedef enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_UP } conn_state;

enum { BACKEND_REDIS, BACKEND_LOCAL, BACKEND_DISABLED }; /* the backend label, see backends[] */

typedef struct tstate tstate;
typedef struct lease_req lease_req;

/* A check waiting for the answer to its tenant's lease request (in the caller's arena, which
 * lives until the callback ran). */
typedef struct waiter {
    pins_list tlink; /* in its tenant's queue */
    pins_list dlink; /* in the worker's queue, by deadline */
    tstate *ts;
    ratelimit_cb cb;
    void *arg;
    int64_t deadline_ns; /* monotonic; then the local bucket decides */
} waiter;

/* One tenant's lease on one worker, with the calls waiting for the request in flight (a request
 * is in flight whenever calls wait). */
struct tstate {
    tstate *next; /* hash chain */
    uint64_t hash;
    ratelimit__lease lease;
    lease_req *inflight; /* the request Redis has not answered yet, or NULL */
    pins_list waiters;   /* of waiter (tlink), in arrival order */
    size_t nwaiting;
    int64_t used_ns;
    char tenant[];
};

/* A lease request, owned by its hiredis reply callback (which hiredis always runs once). */
struct lease_req {
    ratelimit_worker *w;
    tstate *ts; /* NULL once the worker let go of it (never while ts is in the table) */
    int want;
    bool retried; /* EVAL sent after NOSCRIPT */
};

struct ratelimit_worker {
    ratelimit *rl;
    struct event_base *base;
    redisAsyncContext *ac;
    conn_state state;
    char sha[48];
    struct event *retry_ev; /* reconnect after backoff */
    struct event *drop_ev;  /* drop a hung connection outside hiredis's callbacks */
    int backoff_ms;
    int timeouts;          /* calls in a row decided locally because Redis was slow */
    pins_list deadlines;   /* of waiter (dlink): every waiting call of the worker, by deadline */
    struct event *wait_ev; /* armed for the first deadline (or earlier) while wait_armed */
    bool wait_armed;
    bool logged_down;
    bool closing;
    pins_rand rng; /* reconnect jitter */
    tstate *chains[RATELIMIT__LEASE_CHAINS];
    size_t ntenants;
    metrics_cell *cells[2][3]; /* rate_limit_decisions_total: [allowed][backend] */
    bool cells_set[2][3];
};

/* Process wide: one limiter per process; the gauge reads these at exposition time. */
static metrics_family *decisions;
static metrics_family *redis_up;
static metrics_family *redis_configured;
static metrics_family *throttled_tenants;
static ratelimit__throttled throttled; /* tenants refused in the last minute */
static _Atomic int nworkers_redis;     /* workers with a Redis connection to keep */
static _Atomic int nworkers_up;        /* ... of which UP */

static void conn_connect(ratelimit_worker *w);

/* ---- helpers --------------------------------------------------------------------------------- */

static double on_redis_up_sample(void *arg)
{
    int n = atomic_load(&nworkers_redis);
    return n > 0 && atomic_load(&nworkers_up) >= n ? 1.0 : 0.0;
}

static double on_throttled_sample(void *arg)
{
    return (double)ratelimit__throttled_count(&throttled, pins_time_mono_ns() / 1000000000);
}

static const char *const backends[] = {"redis", "local", "disabled"};

/* Counts a decision on the worker's cell of its series (the label lookup once per worker). */
static void count(ratelimit_worker *w, bool allowed, int backend)
{
    const char *v[] = {allowed ? "allowed" : "limited", backends[backend]};
    if (!w->cells_set[allowed][backend]) {
        w->cells[allowed][backend] = metrics_cell_get(decisions, v);
        w->cells_set[allowed][backend] = true;
    }
    if (w->cells[allowed][backend] != NULL)
        metrics_cell_add(w->cells[allowed][backend], 1);
    else
        metrics_counter_inc(decisions, v);
}

/* A new percent-decoded copy of s[0..n) (a C string: %00 is a bad escape), or NULL (out of memory
 * or a bad escape: *pbad). */
static char *pct_dup(const char *s, size_t n, bool *pbad)
{
    char *out = malloc(n + 1);
    size_t len;
    if (out != NULL && pins_percent_decode(s, n, PINS_PERCENT_NO_NUL, out, &len) != 0) {
        free(out);
        out = NULL;
        *pbad = true;
    }
    return out;
}

static bool parse_int(const char *s, size_t n, int lo, int hi, int *pv)
{
    if (n == 0 || n > 9)
        return false;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return false;
    *pv = v;
    return true;
}

int ratelimit__redis_url_parse(const char *url, ratelimit__redis_url *pu, const char **pwhy)
{
    ratelimit__redis_url u = {.port = 6379};
    bool bad = false;
    int rv = PINS_EINVALID_ARGUMENT;
    const char *p;
    if (strncmp(url, "unix://", 7) == 0) {
        p = url + 7;
        size_t n = strcspn(p, "?");
        if (n == 0 || p[0] != '/') {
            *pwhy = "unix:// needs an absolute socket path";
            goto fail;
        }
        u.unix_path = strndup(p, n);
        if (u.unix_path == NULL)
            goto nomem;
        if (p[n] == '?') {
            const char *q = p + n + 1;
            if (strncmp(q, "db=", 3) != 0 || !parse_int(q + 3, strlen(q + 3), 0, 100000, &u.db)) {
                *pwhy = "the only query parameter is db=<number>";
                goto fail;
            }
        }
        *pu = u;
        return 0;
    }
    if (strncmp(url, "rediss://", 9) == 0) {
        u.tls = true;
        p = url + 9;
    } else if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else {
        *pwhy = "must start with redis://, rediss:// or unix://";
        goto fail;
    }
    size_t auth_len = strcspn(p, "@/");
    if (p[auth_len] == '@') {
        size_t user_len = strcspn(p, ":@");
        if (user_len > 0) {
            u.user = pct_dup(p, user_len, &bad);
            if (u.user == NULL)
                goto nomem_or_bad;
        }
        if (p[user_len] == ':') {
            u.password = pct_dup(p + user_len + 1, auth_len - user_len - 1, &bad);
            if (u.password == NULL)
                goto nomem_or_bad;
        } else if (u.user != NULL) {
            /* redis://secret@host: the userinfo is the password, as redis-cli reads it. */
            u.password = u.user;
            u.user = NULL;
        }
        p += auth_len + 1;
    }
    size_t host_len;
    const char *host = p;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (end == NULL) {
            *pwhy = "unterminated [IPv6] host";
            goto fail;
        }
        host = p + 1;
        host_len = (size_t)(end - host);
        p = end + 1;
    } else {
        host_len = strcspn(p, ":/?");
        p += host_len;
    }
    if (host_len == 0) {
        *pwhy = "no host";
        goto fail;
    }
    u.host = strndup(host, host_len);
    if (u.host == NULL)
        goto nomem;
    if (*p == ':') {
        size_t n = strcspn(p + 1, "/?");
        if (!parse_int(p + 1, n, 1, 65535, &u.port)) {
            *pwhy = "the port is not a number in 1..65535";
            goto fail;
        }
        p += 1 + n;
    }
    if (*p == '/') {
        size_t n = strcspn(p + 1, "?");
        if (n > 0 && !parse_int(p + 1, n, 0, 100000, &u.db)) {
            *pwhy = "the database is not a number";
            goto fail;
        }
        p += 1 + n;
    }
    if (*p != '\0') {
        *pwhy = "query parameters are not supported";
        goto fail;
    }
    *pu = u;
    return 0;
nomem_or_bad:
    if (bad) {
        *pwhy = "bad percent-encoding in the user or password";
        goto fail;
    }
nomem:
    rv = PINS_ENOMEM;
    *pwhy = "out of memory";
fail:
    ratelimit__redis_url_free(&u);
    return rv;
}

void ratelimit__redis_url_free(ratelimit__redis_url *u)
{
    free(u->host);
    free(u->unix_path);
    free(u->user);
    if (u->password != NULL) {
        explicit_bzero(u->password, strlen(u->password));
        free(u->password);
    }
    *u = (ratelimit__redis_url){0};
}

/* ---- verdicts --------------------------------------------------------------------------- */

/* Counts the decision of tenant's call and hands its verdict to the caller. */
static void answer(ratelimit_worker *w, const char *tenant, ratelimit_cb cb, void *arg,
                   const ratelimit__decision *d, int backend)
{
    ratelimit *rl = w->rl;
    count(w, d->allowed, backend);
    if (!d->allowed)
        ratelimit__throttled_note(&throttled, tenant, pins_time_mono_ns() / 1000000000);
    ratelimit_verdict v = {
        .allowed = d->allowed,
        .texts = &rl->texts,
        .limit = rl->rpm,
        .remaining = d->remaining,
        .reset_s = d->reset_s,
        .retry_after_s = d->allowed ? 0 : d->retry_after_s,
    };
    cb(arg, &v);
}

static void decide_locally(ratelimit_worker *w, const char *tenant, ratelimit_cb cb, void *arg)
{
    ratelimit *rl = w->rl;
    ratelimit__decision d;
    if (ratelimit__local_take(rl->local, tenant, pins_time_mono_ns(), &d) != 0) {
        /* No memory for a bucket: let the call through (fail-open) without claiming a count. */
        d = (ratelimit__decision){.allowed = true, .remaining = rl->burst - 1};
    }
    answer(w, tenant, cb, arg, &d, BACKEND_LOCAL);
}

/* ---- the Redis connection -------------------------------------------------------------------- */

static void set_down(ratelimit_worker *w, const char *why)
{
    if (w->state == CONN_UP)
        atomic_fetch_sub(&nworkers_up, 1);
    w->state = CONN_DOWN;
    if (!w->logged_down && !w->closing) {
        w->logged_down = true;
        pins_log_warn("redis unreachable: rate limiting falls back to the local bucket", "redis",
                      w->rl->where, "reason", why, NULL);
    }
}

static void schedule_reconnect(ratelimit_worker *w)
{
    if (w->closing || w->retry_ev == NULL)
        return;
    int half = w->backoff_ms / 2;
    int delay = half + (int)pins_rand_below(&w->rng, (uint64_t)half + 1);
    struct timeval tv = {.tv_sec = delay / 1000, .tv_usec = (delay % 1000) * 1000};
    evtimer_add(w->retry_ev, &tv);
    w->backoff_ms *= 2;
    if (w->backoff_ms > RATELIMIT__BACKOFF_MAX_MS)
        w->backoff_ms = RATELIMIT__BACKOFF_MAX_MS;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    conn_connect(arg);
}

/* Drops the connection from one of our own timers (never inside a hiredis callback). */
static void on_drop(evutil_socket_t fd, short what, void *arg)
{
    ratelimit_worker *w = arg;
    if (w->ac == NULL)
        return;
    redisAsyncContext *ac = w->ac;
    w->ac = NULL;
    set_down(w, "no reply in time");
    redisAsyncFree(ac); /* waiting calls get NULL replies; may run on_disconnect */
    if (!evtimer_pending(w->retry_ev, NULL))
        schedule_reconnect(w);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    ratelimit_worker *w = ac->data;
    if (status == REDIS_OK)
        return;   /* UP once the script is loaded */
    w->ac = NULL; /* hiredis frees it after this callback */
    set_down(w, ac->errstr[0] != '\0' ? ac->errstr : "connect failed");
    schedule_reconnect(w);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    ratelimit_worker *w = ac->data;
    if (w->ac == ac)
        w->ac = NULL;
    set_down(w, status == REDIS_OK ? "connection closed" : ac->errstr);
    schedule_reconnect(w);
}

/* Replies to AUTH and SELECT: an error means the connection is unusable. */
static void on_setup_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    ratelimit_worker *w = ac->data;
    const redisReply *reply = r;
    if (reply == NULL || reply->type != REDIS_REPLY_ERROR)
        return;
    /* The server's text names no secret (e.g. "WRONGPASS invalid username-password pair"). */
    pins_log_warn("redis refused the connection setup", "redis", w->rl->where, "command",
                  (const char *)privdata, "error", reply->str, NULL);
    redisAsyncDisconnect(ac);
}

static void on_script_loaded(redisAsyncContext *ac, void *r, void *privdata)
{
    ratelimit_worker *w = ac->data;
    const redisReply *reply = r;
    if (reply == NULL || w->ac != ac)
        return;
    if (reply->type != REDIS_REPLY_STRING || reply->len == 0 || reply->len >= sizeof(w->sha)) {
        pins_log_warn("redis refused the rate limit script", "redis", w->rl->where, "error",
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply", NULL);
        redisAsyncDisconnect(ac);
        return;
    }
    memcpy(w->sha, reply->str, reply->len);
    w->sha[reply->len] = '\0';
    w->state = CONN_UP;
    w->backoff_ms = RATELIMIT__BACKOFF_MIN_MS;
    w->timeouts = 0;
    atomic_fetch_add(&nworkers_up, 1);
    if (w->logged_down)
        pins_log_info("redis reachable again: rate limiting is shared", "redis", w->rl->where,
                      NULL);
    w->logged_down = false;
}

static void conn_connect(ratelimit_worker *w)
{
    const ratelimit__redis_url *u = &w->rl->url;
    if (w->closing || w->ac != NULL)
        return;
    redisAsyncContext *ac = u->unix_path != NULL ? redisAsyncConnectUnix(u->unix_path)
                                                 : redisAsyncConnect(u->host, u->port);
    if (ac == NULL || ac->err != 0) {
        set_down(w, ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_reconnect(w);
        return;
    }
    ac->data = w;
    if (redisLibeventAttach(ac, w->base) != REDIS_OK) {
        redisAsyncFree(ac);
        set_down(w, "cannot attach to the event loop");
        schedule_reconnect(w);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    w->ac = ac;
    w->state = CONN_CONNECTING;
    int rv = REDIS_OK;
    if (u->password != NULL && u->user != NULL)
        rv = redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s %s", u->user, u->password);
    else if (u->password != NULL)
        rv = redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s", u->password);
    if (rv == REDIS_OK && u->db != 0)
        rv = redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d", u->db);
    if (rv == REDIS_OK)
        rv = redisAsyncCommand(ac, on_script_loaded, NULL, "SCRIPT LOAD %s", ratelimit__script);
    if (rv != REDIS_OK)
        redisAsyncDisconnect(ac);
}

/* ---- leases and the calls waiting for them -------------------------------------------------- */

static bool tstate_idle(const tstate *ts, int64_t now_ns)
{
    return ts->inflight == NULL && ts->nwaiting == 0 &&
           !ratelimit__lease_usable(&ts->lease, now_ns);
}

static void tstate_unlink_free(ratelimit_worker *w, tstate **pp)
{
    tstate *ts = *pp;
    *pp = ts->next;
    w->ntenants--;
    free(ts);
}

/* Makes room in a full table: every idle tenant goes, else the least recently used one that has
 * no request in flight (its unspent tokens are dropped: fewer admissions, never more). */
static void tstate_evict(ratelimit_worker *w, int64_t now_ns)
{
    tstate **oldest = NULL;
    for (size_t c = 0; c < RATELIMIT__LEASE_CHAINS; c++) {
        tstate **pp = &w->chains[c];
        while (*pp != NULL) {
            if (tstate_idle(*pp, now_ns)) {
                tstate_unlink_free(w, pp);
                continue;
            }
            if ((*pp)->inflight == NULL && (oldest == NULL || (*pp)->used_ns < (*oldest)->used_ns))
                oldest = pp;
            pp = &(*pp)->next;
        }
    }
    if (w->ntenants >= RATELIMIT__LEASE_TENANTS && oldest != NULL)
        tstate_unlink_free(w, oldest);
}

/* The worker's state for tenant, created when missing; NULL when out of memory or full. */
static tstate *tstate_get(ratelimit_worker *w, const char *tenant, int64_t now_ns)
{
    uint64_t h = pins_fnv1a_str(PINS_FNV1A_INIT, tenant, NULL);
    tstate **chain = &w->chains[h % RATELIMIT__LEASE_CHAINS];
    for (tstate *ts = *chain; ts != NULL; ts = ts->next) {
        if (ts->hash == h && strcmp(ts->tenant, tenant) == 0) {
            ts->used_ns = now_ns;
            return ts;
        }
    }
    if (w->ntenants >= RATELIMIT__LEASE_TENANTS)
        tstate_evict(w, now_ns);
    if (w->ntenants >= RATELIMIT__LEASE_TENANTS)
        return NULL;
    size_t len = strlen(tenant);
    tstate *ts = calloc(1, sizeof(*ts) + len + 1);
    if (ts == NULL)
        return NULL;
    memcpy(ts->tenant, tenant, len + 1);
    pins_list_init(&ts->waiters);
    ts->hash = h;
    ts->used_ns = now_ns;
    ts->next = *chain;
    *chain = ts;
    w->ntenants++;
    return ts;
}

/* Takes wt off both queues (its memory stays: it is the call's). */
static void waiter_unlink(ratelimit_worker *w, waiter *wt)
{
    pins_list_unlink(&wt->tlink);
    wt->ts->nwaiting--;
    pins_list_unlink(&wt->dlink);
}

/* The waiter whose deadline comes first, or NULL. */
static waiter *first_deadline(const ratelimit_worker *w)
{
    pins_list *p = pins_list_first(&w->deadlines);
    return p != NULL ? pins_list_entry(p, waiter, dlink) : NULL;
}

/* Takes the first waiting call off ts's queue; returns the call and its callback. */
static waiter waiter_pop(ratelimit_worker *w, tstate *ts)
{
    waiter *wt = pins_list_entry(ts->waiters.next, waiter, tlink);
    waiter copy = *wt;
    waiter_unlink(w, wt);
    return copy;
}

/* Arms the wait timer for the first deadline, now_ns being the time. */
static void arm_wait(ratelimit_worker *w, int64_t now_ns)
{
    int64_t left = first_deadline(w)->deadline_ns - now_ns;
    if (left < 0)
        left = 0;
    struct timeval tv = {.tv_sec = left / 1000000000, .tv_usec = (left % 1000000000) / 1000};
    if (evtimer_add(w->wait_ev, &tv) == 0)
        w->wait_armed = true;
}

/* A deadline may have passed: the calls whose wait is over are decided by the local bucket (the
 * lease requests stay in flight; their answers serve the calls still waiting). A deadline within
 * a millisecond counts as passed, so that a timer firing a little early by our clock does not
 * cost a second wake-up. */
static void on_wait_timer(evutil_socket_t fd, short what, void *arg)
{
    ratelimit_worker *w = arg;
    w->wait_armed = false;
    int64_t now = pins_time_mono_ns();
    for (waiter *first = first_deadline(w); first != NULL && first->deadline_ns <= now + 1000000;
         first = first_deadline(w)) {
        waiter wt = *first;
        waiter_unlink(w, first);
        if (++w->timeouts >= RATELIMIT__HUNG_TIMEOUTS && w->drop_ev != NULL) {
            struct timeval zero = {0, 0};
            evtimer_add(w->drop_ev, &zero);
        }
        decide_locally(w, wt.ts->tenant, wt.cb, wt.arg);
    }
    if (!pins_list_is_empty(&w->deadlines) && !w->wait_armed)
        arm_wait(w, now);
}

/* Every call waiting on ts is decided by the local bucket (or cancelled when closing). */
static void flush_waiters(ratelimit_worker *w, tstate *ts)
{
    while (!pins_list_is_empty(&ts->waiters)) {
        waiter wt = waiter_pop(w, ts);
        if (w->closing) {
            ratelimit_verdict v = {.err = PINS_ECANCELLED};
            wt.cb(wt.arg, &v);
        } else {
            decide_locally(w, ts->tenant, wt.cb, wt.arg);
        }
    }
}

static int send_lease(ratelimit_worker *w, lease_req *q, bool eval);

static void on_lease_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    lease_req *q = privdata;
    ratelimit_worker *w = q->w;
    tstate *ts = q->ts;
    const redisReply *reply = r;
    if (ts == NULL) {
        free(q);
        return;
    }
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR && !q->retried &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && !w->closing && w->ac == ac) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): EVAL it once for this
         * request, which caches it again. */
        q->retried = true;
        if (send_lease(w, q, true) == 0)
            return;
    }
    ts->inflight = NULL;
    free(q);
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        if (reply != NULL)
            pins_log_debug("unexpected reply to the rate limit script", "redis", w->rl->where,
                           "error", reply->type == REDIS_REPLY_ERROR ? reply->str : "", NULL);
        flush_waiters(w, ts);
        return;
    }
    long long v[4];
    for (size_t i = 0; i < 4; i++)
        v[i] = reply->element[i]->type == REDIS_REPLY_INTEGER ? reply->element[i]->integer : 0;
    w->timeouts = 0;
    int64_t now = pins_time_mono_ns();
    int want = ts->lease.want;
    ratelimit__lease_grant(&ts->lease, want, v[0], v[1], v[2], v[3], now);
    ratelimit__decision d;
    while (!pins_list_is_empty(&ts->waiters) && ratelimit__lease_take(&ts->lease, now, &d)) {
        waiter wt = waiter_pop(w, ts);
        answer(w, ts->tenant, wt.cb, wt.arg, &d, BACKEND_REDIS);
    }
    if (pins_list_is_empty(&ts->waiters))
        return;
    if (v[0] < want) {
        /* The bucket gave all it had: the calls still waiting are over the limit. */
        ratelimit__lease_refusal(&ts->lease, &d);
        while (!pins_list_is_empty(&ts->waiters)) {
            waiter wt = waiter_pop(w, ts);
            answer(w, ts->tenant, wt.cb, wt.arg, &d, BACKEND_REDIS);
        }
        return;
    }
    /* A full grant that the waiting calls used up: ask again for the rest. */
    lease_req *next = calloc(1, sizeof(*next));
    if (next != NULL) {
        *next = (lease_req){.w = w, .ts = ts};
        if (w->state == CONN_UP && w->ac != NULL && send_lease(w, next, false) == 0)
            return;
        free(next);
    }
    flush_waiters(w, ts);
}

/* Sends EVALSHA (or EVAL) for q's tenant, asking for the lease's next size; q becomes the
 * tenant's request in flight. Returns 0 or PINS_EUNAVAILABLE. */
static int send_lease(ratelimit_worker *w, lease_req *q, bool eval)
{
    tstate *ts = q->ts;
    ratelimit *rl = w->rl;
    /* The arguments as they are (no format string to interpret): "pinsd:rl:{<tenant>}". */
    char key[RATELIMIT__MAX_TENANT + 16], want[24];
    size_t tlen = strlen(ts->tenant);
    if (tlen > RATELIMIT__MAX_TENANT)
        return PINS_EUNAVAILABLE;
    memcpy(key, "pinsd:rl:{", 10);
    memcpy(key + 10, ts->tenant, tlen);
    key[10 + tlen] = '}';
    if (!q->retried)
        q->want = ratelimit__lease_want(&ts->lease, rl->burst, ts->nwaiting);
    ts->lease.want = q->want;
    const char *argv[] = {eval ? "EVAL" : "EVALSHA",
                          eval ? ratelimit__script : w->sha,
                          "1",
                          key,
                          rl->limit,
                          rl->burst_text,
                          want};
    size_t argvlen[] = {eval ? 4 : 7,
                        strlen(argv[1]),
                        1,
                        tlen + 11,
                        rl->texts.limit_len,
                        rl->burst_len,
                        (size_t)(pins_fmt_i64(want, q->want) - want)};
    int rv = redisAsyncCommandArgv(w->ac, on_lease_reply, q, 7, argv, argvlen);
    if (rv != REDIS_OK)
        return PINS_EUNAVAILABLE;
    ts->inflight = q;
    return 0;
}

/* Queues call on ts until the answer of its lease request (sent now when none is in flight), for
 * at most RATELIMIT_WAIT_MS. Returns 0, or an error (the call was not queued). */
static int wait_for_lease(ratelimit_worker *w, tstate *ts, pins_arena *a, ratelimit_cb cb,
                          void *arg, int64_t now_ns)
{
    if (w->wait_ev == NULL)
        return PINS_ENOMEM;
    waiter *wt = pins_arena_alloc(a, sizeof(*wt));
    if (wt == NULL)
        return PINS_ENOMEM;
    *wt = (waiter){.ts = ts,
                   .cb = cb,
                   .arg = arg,
                   .deadline_ns = now_ns + (int64_t)RATELIMIT_WAIT_MS * 1000000};
    pins_list_insert(&ts->waiters, &wt->tlink);
    ts->nwaiting++;
    pins_list_insert(&w->deadlines, &wt->dlink); /* every wait is as long: still in order */
    if (ts->inflight == NULL) {
        lease_req *q = calloc(1, sizeof(*q));
        int rv = PINS_ENOMEM;
        if (q != NULL) {
            *q = (lease_req){.w = w, .ts = ts};
            rv = send_lease(w, q, false);
            if (rv != 0)
                free(q);
        }
        if (rv != 0) {
            waiter_unlink(w, wt);
            return rv;
        }
    }
    /* Deadlines only grow along the queue: an armed timer fires no later than this one's. */
    if (!w->wait_armed)
        arm_wait(w, now_ns);
    return 0;
}

/* ---- public ---------------------------------------------------------------------------------- */

int ratelimit_new(const pins_config *cfg, ratelimit **prl, char *err, size_t errlen)
{
    static const char *const labels[] = {"decision", "backend"};
    ratelimit *rl = calloc(1, sizeof(*rl));
    if (rl == NULL)
        return PINS_ENOMEM;
    rl->cfg = cfg;
    rl->rpm = cfg->rate_limit_rpm;
    rl->burst = cfg->rate_limit_burst > 0 ? cfg->rate_limit_burst : cfg->rate_limit_rpm;
    if (decisions == NULL) {
        decisions = metrics_counter_new("rate_limit_decisions_total",
                                        "Rate limit decisions, by outcome and backend.", labels, 2);
        redis_up =
            metrics_gauge_new("rate_limit_redis_up",
                              "1 when every worker's Redis connection is up, else 0.", NULL, 0);
        redis_configured = metrics_gauge_new("rate_limit_redis_configured",
                                             "1 when the limiter shares its buckets through Redis "
                                             "(REDIS_URL set, RATE_LIMIT_RPM > 0), else 0.",
                                             NULL, 0);
        throttled_tenants = metrics_gauge_new(
            "rate_limit_throttled_tenants",
            "Distinct tenants refused by the rate limiter in the last 60 seconds (at most 1024).",
            NULL, 0);
        if (decisions == NULL || redis_up == NULL || redis_configured == NULL ||
            throttled_tenants == NULL) {
            ratelimit_free(rl);
            return PINS_ENOMEM;
        }
        metrics_gauge_set_cb(redis_up, NULL, on_redis_up_sample, NULL);
        metrics_gauge_set_cb(throttled_tenants, NULL, on_throttled_sample, NULL);
        /* Every decision's series from the start, so that increase() sees the first refusal. */
        for (size_t b = 0; b < sizeof(backends) / sizeof(backends[0]); b++) {
            for (int allowed = b == BACKEND_DISABLED; allowed < 2; allowed++) {
                const char *v[] = {allowed ? "allowed" : "limited", backends[b]};
                metrics_counter_add(decisions, v, 0);
            }
        }
    }
    if (rl->rpm > 0) {
        if (rl->burst == rl->rpm)
            snprintf(rl->policy, sizeof(rl->policy), "%d;w=60", rl->rpm);
        else
            snprintf(rl->policy, sizeof(rl->policy), "%d;w=60;burst=%d", rl->rpm, rl->burst);
        snprintf(rl->limit, sizeof(rl->limit), "%d", rl->rpm);
        snprintf(rl->state, sizeof(rl->state), "limit=%d, remaining=", rl->rpm);
        rl->texts = (ratelimit_texts){.policy = rl->policy,
                                      .policy_len = strlen(rl->policy),
                                      .limit = rl->limit,
                                      .limit_len = strlen(rl->limit),
                                      .state = rl->state,
                                      .state_len = strlen(rl->state)};
        snprintf(rl->burst_text, sizeof(rl->burst_text), "%d", rl->burst);
        rl->burst_len = strlen(rl->burst_text);
        if (ratelimit__local_new(rl->rpm, rl->burst, RATELIMIT__LOCAL_BUCKETS, &rl->local) != 0) {
            ratelimit_free(rl);
            return PINS_ENOMEM;
        }
    }
    if (rl->rpm > 0 && cfg->redis_url != NULL && cfg->redis_url[0] != '\0') {
        const char *why = NULL;
        int rv = ratelimit__redis_url_parse(cfg->redis_url, &rl->url, &why);
        if (rv == 0 && rl->url.tls) {
            why = "rediss:// needs hiredis with TLS support, which this build lacks";
            rv = PINS_EINVALID_ARGUMENT;
        }
        if (rv != 0) {
            snprintf(err, errlen, "invalid REDIS_URL: %s", why);
            ratelimit_free(rl);
            return rv;
        }
        rl->use_redis = true;
        if (rl->url.unix_path != NULL)
            snprintf(rl->where, sizeof(rl->where), "%s", rl->url.unix_path);
        else
            snprintf(rl->where, sizeof(rl->where), "%s:%d/%d", rl->url.host, rl->url.port,
                     rl->url.db);
    }
    metrics_gauge_set(redis_configured, NULL, rl->use_redis ? 1 : 0);
    *prl = rl;
    return 0;
}

void ratelimit_free(ratelimit *rl)
{
    if (rl == NULL)
        return;
    ratelimit__local_free(rl->local);
    ratelimit__redis_url_free(&rl->url);
    free(rl);
}

int ratelimit_worker_new(ratelimit *rl, struct event_base *base, ratelimit_worker **pw)
{
    ratelimit_worker *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return PINS_ENOMEM;
    w->rl = rl;
    w->base = base;
    pins_list_init(&w->deadlines);
    w->backoff_ms = RATELIMIT__BACKOFF_MIN_MS;
    pins_rand_seed(&w->rng);
    if (rl->use_redis) {
        w->retry_ev = evtimer_new(base, on_retry, w);
        w->drop_ev = evtimer_new(base, on_drop, w);
        w->wait_ev = evtimer_new(base, on_wait_timer, w);
        if (w->retry_ev == NULL || w->drop_ev == NULL || w->wait_ev == NULL) {
            ratelimit_worker_free(w);
            return PINS_ENOMEM;
        }
        atomic_fetch_add(&nworkers_redis, 1);
        conn_connect(w);
    }
    *pw = w;
    return 0;
}

void ratelimit_worker_free(ratelimit_worker *w)
{
    if (w == NULL)
        return;
    w->closing = true;
    if (w->ac != NULL) {
        redisAsyncContext *ac = w->ac;
        redisAsyncFree(ac); /* pending calls get NULL replies and are finished */
        w->ac = NULL;
    }
    if (w->state == CONN_UP)
        atomic_fetch_sub(&nworkers_up, 1);
    if (w->retry_ev != NULL) {
        event_free(w->retry_ev);
        atomic_fetch_sub(&nworkers_redis, 1);
    }
    if (w->drop_ev != NULL)
        event_free(w->drop_ev);
    for (size_t c = 0; c < RATELIMIT__LEASE_CHAINS; c++) {
        while (w->chains[c] != NULL) {
            tstate *ts = w->chains[c];
            if (ts->inflight != NULL)
                ts->inflight->ts = NULL; /* never answered: the callback only frees it */
            flush_waiters(w, ts);
            tstate_unlink_free(w, &w->chains[c]);
        }
    }
    if (w->wait_ev != NULL)
        event_free(w->wait_ev);
    free(w);
}

void ratelimit_check(ratelimit_worker *w, const char *tenant, pins_arena *a, ratelimit_cb cb,
                     void *arg)
{
    ratelimit *rl = w->rl;
    if (rl->rpm <= 0) {
        count(w, true, BACKEND_DISABLED);
        ratelimit_verdict v = {.allowed = true};
        cb(arg, &v);
        return;
    }
    if (w->state != CONN_UP || w->ac == NULL || strlen(tenant) > RATELIMIT__MAX_TENANT) {
        decide_locally(w, tenant, cb, arg);
        return;
    }
    int64_t now = pins_time_mono_ns();
    tstate *ts = tstate_get(w, tenant, now);
    if (ts == NULL) {
        decide_locally(w, tenant, cb, arg);
        return;
    }
    ratelimit__decision d;
    if (ts->nwaiting == 0 && ratelimit__lease_take(&ts->lease, now, &d)) {
        answer(w, tenant, cb, arg, &d, BACKEND_REDIS);
        return;
    }
    if (wait_for_lease(w, ts, a, cb, arg, now) != 0)
        decide_locally(w, tenant, cb, arg);
}

const char *ratelimit_redis_check(const ratelimit *rl)
{
    if (rl == NULL || !rl->use_redis)
        return "disabled";
    return on_redis_up_sample(NULL) > 0.5 ? "ok" : "down (fail-open)";
}
