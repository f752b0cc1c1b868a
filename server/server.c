/* server/server.c: listeners, worker threads and the drain.
 *
 * Every worker owns a libevent loop, a store session and one SO_REUSEPORT socket per listen
 * address, so the kernel spreads connections and no lock sits on the request path. The main
 * thread only waits for the stop request (and reloads the RBAC policy when asked to) and then
 * tells each worker to drain.
 */
#include "rpc/rpc_int.h"

#include <errno.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "common/timeutil.h"
#include "observability/log.h"
#include "rpc/audit.h"
#include "rpc/reflection.h"
#include "transport/tls.h"
#include "store/store.h"

#define SWEEP_BATCHES_PER_TICK 20
/* How long a worker stops accepting after accept() ran out of descriptors. */
#define ACCEPT_PAUSE_MS 100
/* How long a stopping worker waits for its last audit writes. */
#define AUDIT_DRAIN_MS 2000

/* What the main thread reads from stop_pipe: any other byte means stop. */
#define RELOAD_BYTE 'r'

static int stop_pipe[2] = {-1, -1};

static int bind_one(const pins_listen_addr *a, int *pfd, char *err, size_t errlen)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", a->port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rv = getaddrinfo(a->host, port, &hints, &res);
    if (rv != 0 || res == NULL) {
        snprintf(err, errlen, "invalid PINS_LISTEN: cannot resolve %s: %s", a->host,
                 gai_strerror(rv));
        return PINS_EINVALID_ARGUMENT;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create a socket for %s:%u: %s", a->host, a->port,
                 strerror(errno));
        freeaddrinfo(res);
        return PINS_EUNAVAILABLE;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", a->host, a->port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return PINS_EUNAVAILABLE;
    }
    freeaddrinfo(res);
    *pfd = fd;
    return 0;
}

/* Raises the soft limit of open descriptors to what PINS_MAX_CONNECTIONS needs (the hard limit
 * at most), since systemd and shells default to 1024; warns when that is not enough. */
static void raise_nofile(const pins_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t need = (rlim_t)cfg->max_connections + 64 + (rlim_t)cfg->nlisten * 256 +
                  (rlim_t)cfg->db_pool_size + 256;
    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        char have[24], want[24];
        snprintf(have, sizeof(have), "%llu", (unsigned long long)rl.rlim_cur);
        snprintf(want, sizeof(want), "%llu", (unsigned long long)need);
        pins_log_warn("the open file limit is below what PINS_MAX_CONNECTIONS needs: accepting "
                      "pauses when descriptors run out",
                      "nofile", have, "needed", want, NULL);
    }
}

int rpc_server_new(const pins_config *cfg, struct store *st, rpc_server **pserver, char *err,
                   size_t errlen)
{
    int rv = 0;
    rpc_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return PINS_ENOMEM;
    s->cfg = cfg;
    s->store = st;
    s->nworkers = cfg->workers > 0 ? cfg->workers : 1;
    s->started_unix_us = pins_time_now_us();
    s->started_ns = pins_time_mono_ns();
    raise_nofile(cfg);
    rpc__metrics_init();
    rpc__metrics_server(s);
    if (stop_pipe[0] < 0 && pipe2(stop_pipe, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "cannot create the stop pipe: %s", strerror(errno));
        rv = PINS_EINTERNAL;
        goto fail;
    }
    if (rpc__reflection_init() != 0) {
        snprintf(err, errlen, "cannot load the embedded descriptor set");
        rv = PINS_EINTERNAL;
        goto fail;
    }
    rv = ratelimit_new(cfg, &s->ratelimit, err, errlen);
    if (rv != 0)
        goto fail;
    if (cfg->tls_cert_file != NULL) {
        rv = transport_tls_ctx_new(cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_client_ca_file,
                                   &s->tls_ctx, err, errlen);
        if (rv != 0)
            goto fail;
    }
    size_t nfds = (size_t)s->nworkers * cfg->nlisten;
    s->listen_fds = malloc(nfds * sizeof(int));
    s->workers = calloc((size_t)s->nworkers, sizeof(rpc_worker));
    if (s->listen_fds == NULL || s->workers == NULL) {
        rv = PINS_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < nfds; i++)
        s->listen_fds[i] = -1;
    for (int wi = 0; wi < s->nworkers; wi++) {
        for (size_t li = 0; li < cfg->nlisten; li++) {
            rv = bind_one(&cfg->listen[li], &s->listen_fds[(size_t)wi * cfg->nlisten + li], err,
                          errlen);
            if (rv != 0)
                goto fail;
        }
    }
    *pserver = s;
    return 0;
fail:
    rpc_server_free(s);
    return rv;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    rpc_worker *w = arg;
    if (w->accept_paused_ns != 0) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%lld",
                 (long long)((pins_time_mono_ns() - w->accept_paused_ns) / 1000000));
        pins_log_info("accepting connections again", "paused_ms", ms, NULL);
        w->accept_paused_ns = 0;
    }
    transport_conn_accept(w, fd);
}

static void set_listening(rpc_worker *w, bool on)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (on)
            evconnlistener_enable(w->listeners[i]);
        else
            evconnlistener_disable(w->listeners[i]);
    }
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    rpc_worker *w = arg;
    if (!w->draining)
        set_listening(w, true);
}

/* accept() failed. Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), the
 * listening socket stays readable: retrying at once would spin the worker and the log. The
 * worker stops accepting for ACCEPT_PAUSE_MS, serves the connections it has (whose closing frees
 * descriptors), then tries again; one line is logged when the pause starts and one when accepts
 * work again. Any other error (a connection reset before it was accepted) is passed over. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    rpc_worker *w = arg;
    int e = errno;
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
        return;
    set_listening(w, false);
    if (w->accept_resume_ev == NULL)
        w->accept_resume_ev = evtimer_new(w->base, on_accept_resume, w);
    if (w->accept_resume_ev == NULL) {
        set_listening(w, true); /* no timer: fall back to libevent's retry */
        return;
    }
    struct timeval tv = {.tv_sec = 0, .tv_usec = ACCEPT_PAUSE_MS * 1000};
    evtimer_add(w->accept_resume_ev, &tv);
    if (w->accept_paused_ns == 0) {
        w->accept_paused_ns = pins_time_mono_ns();
        char open[24];
        snprintf(open, sizeof(open), "%zu", w->nconns);
        pins_log_warn("accept paused: out of file descriptors or memory", "error", strerror(e),
                      "open_connections", open, NULL);
    }
}

static void on_stop_check(evutil_socket_t fd, short what, void *arg)
{
    rpc_worker *w = arg;
    if (w->nconns == 0)
        event_base_loopbreak(w->base);
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
    rpc_worker *w = arg;
    transport_conn_close_all(w);
    event_base_loopbreak(w->base);
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    rpc_worker *w = arg;
    if (w->draining)
        return;
    w->draining = true;
    for (size_t i = 0; i < w->nlisteners; i++)
        evconnlistener_free(w->listeners[i]);
    w->nlisteners = 0;
    rpc__health_drain(w);
    rpc__watch_drain(w);
    transport_conn_drain_all(w);
    struct timeval grace = {.tv_sec = w->server->cfg->drain_seconds};
    struct timeval tick = {.tv_sec = 0, .tv_usec = 20000};
    event_base_once(w->base, -1, EV_TIMEOUT, on_grace_over, w, &grace);
    w->stop_ev = event_new(w->base, -1, EV_PERSIST, on_stop_check, w);
    if (w->stop_ev != NULL)
        event_add(w->stop_ev, &tick);
}

/* The background sweeper of worker 0. A tick runs up to SWEEP_BATCHES_PER_TICK batches, each
 * started from the previous one's completion, so it works with a backend that completes at once
 * (SQLite: the loop below, no recursion) and with one that completes later from the loop
 * (PostgreSQL: the callback starts the next batch). A tick is skipped while the previous one still
 * has a batch in flight. */
typedef struct sweeper {
    rpc_worker *w;
    int batches;  /* run in this tick */
    bool pending; /* a batch is in flight */
    bool in_call; /* inside store_pin_sweep: its callback must not start the next batch */
    bool more;    /* the last batch was full: more may be expired */
} sweeper;

static void sweep_run(sweeper *sw);

static void on_sweep_done(void *arg, int err, int64_t count)
{
    sweeper *sw = arg;
    sw->pending = false;
    sw->batches++;
    sw->more = err == 0 && count >= sw->w->server->cfg->sweep_batch;
    if (!sw->in_call && sw->more)
        sweep_run(sw);
}

static void sweep_run(sweeper *sw)
{
    rpc_worker *w = sw->w;
    while (sw->more && !sw->pending && sw->batches < SWEEP_BATCHES_PER_TICK && !w->draining) {
        sw->pending = true;
        sw->in_call = true;
        int rv = store_pin_sweep(w->store, pins_time_now_us(), w->server->cfg->sweep_batch,
                                 on_sweep_done, sw);
        sw->in_call = false;
        if (rv != 0) {
            sw->pending = false;
            return;
        }
    }
}

/* Expired pins are hidden at once by reads; this reclaims them in bounded batches so that
 * expiry never stalls requests. */
static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    sweeper *sw = arg;
    if (sw->pending)
        return;
    sw->batches = 0;
    sw->more = true;
    sweep_run(sw);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    transport_conn_tick(arg);
}

static void *worker_main(void *arg)
{
    rpc_worker *w = arg;
    rpc_server *s = w->server;
    const pins_config *cfg = s->cfg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    for (size_t li = 0; li < cfg->nlisten; li++) {
        int fd = s->listen_fds[(size_t)w->index * cfg->nlisten + li];
        struct evconnlistener *l =
            evconnlistener_new(w->base, on_accept, w, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (l == NULL) {
            pins_log_error("cannot listen", NULL);
            continue;
        }
        s->listen_fds[(size_t)w->index * cfg->nlisten + li] = -1; /* the listener owns it */
        evconnlistener_set_error_cb(l, on_accept_error);
        w->listeners[w->nlisteners++] = l;
    }
    if (w->index == 0 && cfg->sweep_interval_seconds > 0) {
        sweeper *sw = calloc(1, sizeof(*sw));
        if (sw != NULL)
            *sw = (sweeper){.w = w};
        w->sweep_ev = sw != NULL ? event_new(w->base, -1, EV_PERSIST, on_sweep, sw) : NULL;
        if (w->sweep_ev == NULL)
            free(sw);
        struct timeval tv = {.tv_sec = cfg->sweep_interval_seconds};
        if (w->sweep_ev != NULL)
            event_add(w->sweep_ev, &tv);
    }
    /* Requests that do not arrive in time, and connections whose output stalls. */
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    if (w->tick_ev != NULL) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = RPC__TICK_MS * 1000};
        event_add(w->tick_ev, &tv);
    }
    /* The rate limiter's Redis connection lives on this loop (auth/ratelimit.h). */
    if (ratelimit_worker_new(s->ratelimit, w->base, &w->ratelimit) != 0)
        pins_log_error("cannot start the rate limiter", NULL);
    event_base_dispatch(w->base);
    transport_conn_close_all(w);
    ratelimit_worker_free(w->ratelimit); /* finishes calls still waiting for Redis */
    w->ratelimit = NULL;
    rpc_audit_drain(w->audit, AUDIT_DRAIN_MS); /* before the store session is freed */
    for (size_t i = 0; i < w->nlisteners; i++)
        evconnlistener_free(w->listeners[i]);
    w->nlisteners = 0;
    return NULL;
}

int rpc_server_run(rpc_server *s)
{
    int rv = 0;
    pthread_t *threads = calloc((size_t)s->nworkers, sizeof(pthread_t));
    if (threads == NULL)
        return PINS_ENOMEM;
    evthread_use_pthreads();
    int started = 0;
    for (int i = 0; i < s->nworkers; i++) {
        rpc_worker *w = &s->workers[i];
        w->index = i;
        w->server = s;
        if (getrandom(w->rng, sizeof(w->rng), 0) != sizeof(w->rng) ||
            (w->rng[0] | w->rng[1]) == 0) {
            w->rng[0] = (uint64_t)pins_time_mono_ns() ^ (uint64_t)i;
            w->rng[1] = 0x9e3779b97f4a7c15ull;
        }
        w->arena_limit = (size_t)s->cfg->max_request_bytes * 8 + (1u << 20);
        w->buffer_share = s->cfg->buffer_bytes / s->nworkers;
        w->base = event_base_new();
        w->listeners = calloc(s->cfg->nlisten, sizeof(*w->listeners));
        if (w->base == NULL || w->listeners == NULL) {
            rv = PINS_ENOMEM;
            break;
        }
        rv = store_session_new(s->store, w->base, &w->store);
        if (rv != 0) {
            pins_log_error("cannot open a store session", "error", pins_strerror(rv), NULL);
            break;
        }
        rv = rpc__watch_worker_init(w);
        if (rv != 0)
            break;
        /* The denial budget is the process's, shared by the workers; worker 0 runs the audit
         * retention (rpc/audit.h). */
        rpc_audit_options ao = {
            .denial_rows_per_s = (double)s->cfg->audit_denial_rows_per_second / s->nworkers,
            .retention_days = i == 0 ? s->cfg->audit_retention_days : 0,
            .retention_interval_s = s->cfg->sweep_interval_seconds,
            .retention_batch = s->cfg->sweep_batch,
        };
        rv = rpc_audit_new(w->base, w->store, &ao, &w->audit);
        if (rv != 0)
            break;
        w->drain_ev = event_new(w->base, -1, 0, on_drain, w);
        if (w->drain_ev == NULL) {
            rv = PINS_ENOMEM;
            break;
        }
    }
    if (rv == 0) {
        for (int i = 0; i < s->nworkers; i++) {
            if (pthread_create(&threads[i], NULL, worker_main, &s->workers[i]) != 0) {
                rv = PINS_EINTERNAL;
                break;
            }
            started++;
        }
    }
    while (rv == 0) {
        char buf = 0;
        ssize_t n = read(stop_pipe[0], &buf, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 1 && buf == RELOAD_BYTE) {
            auth_reload_result r;
            auth_policy_reload(s->cfg, &r); /* logs its outcome */
            continue;
        }
        break;
    }
    atomic_store(&s->draining, 1);
    pins_log_info("draining", NULL);
    for (int i = 0; i < started; i++)
        event_active(s->workers[i].drain_ev, EV_READ, 0);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    return rv;
}

void rpc_server_stop(rpc_server *s)
{
    (void)s;
    if (stop_pipe[1] >= 0) {
        char c = 1;
        ssize_t n = write(stop_pipe[1], &c, 1);
        (void)n;
    }
}

void rpc_server_reload(rpc_server *s)
{
    (void)s;
    if (stop_pipe[1] >= 0) {
        char c = RELOAD_BYTE;
        ssize_t n = write(stop_pipe[1], &c, 1);
        (void)n;
    }
}

void rpc_server_free(rpc_server *s)
{
    if (s == NULL)
        return;
    if (s->workers != NULL) {
        for (int i = 0; i < s->nworkers; i++) {
            rpc_worker *w = &s->workers[i];
            rpc__watch_worker_free(w);
            rpc__metrics_worker_free(w);
            if (w->store != NULL)
                store_session_free(w->store);
            rpc_audit_free(w->audit); /* after the session: its cancelled writes report here */
            if (w->drain_ev != NULL)
                event_free(w->drain_ev);
            if (w->stop_ev != NULL)
                event_free(w->stop_ev);
            if (w->accept_resume_ev != NULL)
                event_free(w->accept_resume_ev);
            if (w->tick_ev != NULL)
                event_free(w->tick_ev);
            if (w->sweep_ev != NULL) {
                void *sw = event_get_callback_arg(w->sweep_ev);
                event_free(w->sweep_ev);
                free(sw);
            }
            free(w->listeners);
            for (size_t k = 0; k < w->narena_pool; k++)
                pins_arena_free(w->arena_pool[k]);
            if (w->base != NULL)
                event_base_free(w->base);
        }
    }
    if (s->listen_fds != NULL) {
        for (size_t i = 0; i < (size_t)s->nworkers * s->cfg->nlisten; i++)
            if (s->listen_fds[i] >= 0)
                close(s->listen_fds[i]);
    }
    free(s->listen_fds);
    free(s->workers);
    if (s->tls_ctx != NULL)
        transport_tls_ctx_free(s->tls_ctx);
    ratelimit_free(s->ratelimit);
    rpc__reflection_shutdown();
    if (stop_pipe[0] >= 0) {
        close(stop_pipe[0]);
        close(stop_pipe[1]);
        stop_pipe[0] = stop_pipe[1] = -1;
    }
    free(s);
}
