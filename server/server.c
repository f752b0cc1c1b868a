/* server/server.c: listeners, worker threads and the drain.
 *
 * Every worker owns a libevent loop, a store session and one SO_REUSEPORT socket per listen
 * address, so the kernel spreads connections and no lock sits on the request path. The main
 * thread only waits for the stop request (and reloads the RBAC policy when asked to) and then
 * tells each worker to drain.
 */
#include "server/server.h"

#include <errno.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "common/timeutil.h"
#include "observability/log.h"
#include "observability/metrics.h"
#include "protocols/protocols.h"
#include "rpc/audit.h"
#include "rpc/core.h"
#include "rpc/watch.h"
#include "server/sdnotify.h"
#include "store/store.h"
#include "transport/tls.h"
#include "transport/transport.h"

#define SWEEP_BATCHES_PER_TICK 20
#ifndef PINS_REVISION
#define PINS_REVISION "unknown"
#endif
/* How long a worker stops accepting after accept() ran out of descriptors. */
#define ACCEPT_PAUSE_MS 100
/* How long a stopping worker waits for its last audit writes. */
#define AUDIT_DRAIN_MS 2000

/* One worker thread: the core's worker, its connections, and what this file runs on its loop. */
typedef struct server_worker {
    rpc_worker *w;
    transport_worker *net;
    pins_server *server;
    struct event *drain_ev;
    struct event *stop_ev;
    struct event *sweep_ev;
    struct event *tick_ev;          /* transport_conn_tick every TRANSPORT_TICK_MS */
    struct event *accept_resume_ev; /* accepting again after running out of descriptors */
    struct evconnlistener **listeners;
    size_t nlisteners;
    int64_t accept_paused_ns; /* when accepting paused; 0 while it works */
} server_worker;

struct pins_server {
    rpc_server core;       /* configuration, store, the core's workers */
    server_worker *sw;     /* core.nworkers of them */
    transport_worker *net; /* core.nworkers, one array for the buffered-bytes gauge */
    int *listen_fds;       /* nworkers * nlisten sockets, SO_REUSEPORT */
    int *claim_fds;        /* nlisten: each address's claim (claim_address), or -1 */
    void *tls_ctx;         /* SSL_CTX *, NULL without TLS */
    _Atomic int nconns;    /* across workers, for PINS_MAX_CONNECTIONS */
};

/* What the main thread reads from stop_pipe: any other byte means stop. */
#define RELOAD_BYTE 'r'

static int stop_pipe[2] = {-1, -1};

/* The sweeper's metrics (process wide: one sweeper per process, on worker 0). */
static metrics_family *m_reclaimed, *m_batches, *m_lag, *m_interval, *m_build;
/* pins_time_mono_ns() when the sweeper last finished a pass that left no expired pin behind (or
 * when the server was made): memory_pins_sweep_lag_seconds is the time since. */
static _Atomic int64_t sweep_clean_ns;

static double sweep_lag_gauge(void *arg)
{
    int64_t since = pins_time_mono_ns() - atomic_load(&sweep_clean_ns);
    return since > 0 ? (double)since / 1e9 : 0.0;
}

/* Registers the server's families (once per process). */
static void metrics_register(void)
{
    static const char *const status[] = {"status"};
    static const char *const statuses[] = {"success", "error"};
    static const char *const vr[] = {"version", "revision"};
    static const char *const build[] = {PINS_VERSION, PINS_REVISION};
    m_reclaimed = metrics_counter_new("memory_pins_expired_reclaimed_total",
                                      "Expired pins deleted by the background sweeper.", NULL, 0);
    m_batches = metrics_counter_new("memory_pins_sweep_batches_total",
                                    "Sweeper batches run, by outcome.", status, 1);
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        metrics_counter_add(m_batches, &statuses[i], 0);
    m_lag = metrics_gauge_new("memory_pins_sweep_lag_seconds",
                              "Seconds since the sweeper last finished a pass that left no expired "
                              "pin behind.",
                              NULL, 0);
    metrics_gauge_set_cb(m_lag, NULL, sweep_lag_gauge, NULL);
    m_interval = metrics_gauge_new("memory_pins_sweep_interval_seconds",
                                   "The sweeper's interval (PINS_SWEEP_INTERVAL_SECONDS; 0: no "
                                   "sweeper): the lag climbs to it between healthy passes.",
                                   NULL, 0);
    m_build = metrics_gauge_new("pins_build_info",
                                "1, labelled with the version and the git revision pinsd was "
                                "built from.",
                                vr, 2);
    metrics_gauge_set(m_build, build, 1);
}

/* The families of the server (registered once per process) and the protocol layer's, and
 * this server's sweep interval (sweep_interval_s: PINS_SWEEP_INTERVAL_SECONDS, 0: no sweeper). */
static void metrics_init(int sweep_interval_s)
{
    proto_metrics_init();
    atomic_store(&sweep_clean_ns, pins_time_mono_ns());
    if (m_reclaimed == NULL)
        metrics_register();
    metrics_gauge_set(m_interval, NULL, sweep_interval_s);
}

/* True when another process listens on addr: its sockets (SO_REUSEPORT, as pinsd's own and
 * gRPC servers' are) would let ours bind beside them, and the kernel would then hand each new
 * connection to either process without an error anywhere. A socket without SO_REUSEPORT cannot
 * bind while one listens there; SO_REUSEADDR lets it past connections in TIME_WAIT. Every address
 * is probed before pinsd binds any, so that its own sockets (0.0.0.0 and 127.0.0.1 on one port)
 * never count. */
static bool address_taken(const struct addrinfo *res)
{
    int probe = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return false; /* the real bind reports it */
    int one = 1;
    setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    bool taken = bind(probe, res->ai_addr, res->ai_addrlen) != 0 && errno == EADDRINUSE;
    close(probe);
    return taken;
}

/* True when one of held[0..nheld) (this process's claims so far) is bound to the name sun, len:
 * two PINS_LISTEN entries spelled differently (127.1 and 127.0.0.1) for one address. */
static bool claim_held(const int *held, size_t nheld, const struct sockaddr_un *sun, socklen_t len)
{
    for (size_t i = 0; i < nheld; i++) {
        struct sockaddr_un have;
        socklen_t hl = sizeof(have);
        if (held[i] >= 0 && getsockname(held[i], (struct sockaddr *)&have, &hl) == 0 && hl == len &&
            memcmp(&have, sun, len) == 0)
            return true;
    }
    return false;
}

/* Claims addr for this process: binds the abstract Unix socket "pinsd-listen <address> <port>"
 * (numeric; abstract names live in the network namespace, as ports do) and keeps it until the
 * drain starts. The probe above cannot see a pinsd that probed at the same instant and has not
 * bound yet; two pinsd started together both passed it and shared the port. Only one of them
 * binds the claim. Returns the claim's descriptor, -1 when another process holds it, or -2 when
 * it could not be made or this process holds it already (then the probe alone decides). */
static int claim_address(const struct addrinfo *res, const int *held, size_t nheld)
{
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo(res->ai_addr, res->ai_addrlen, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return -2;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int n = snprintf(sun.sun_path + 1, sizeof(sun.sun_path) - 1, "pinsd-listen %s %s", host, serv);
    if (n < 0 || (size_t)n >= sizeof(sun.sun_path) - 1)
        return -2;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (claim_held(held, nheld, &sun, len))
        return -2;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -2;
    if (bind(fd, (const struct sockaddr *)&sun, len) == 0)
        return fd;
    int e = errno;
    close(fd);
    return e == EADDRINUSE ? -1 : -2;
}

/* Closes ps's address claims (when the listeners close: at the drain, or when freed). */
static void release_claims(pins_server *ps)
{
    for (size_t i = 0; ps->claim_fds != NULL && i < ps->core.cfg->nlisten; i++) {
        if (ps->claim_fds[i] >= 0) {
            close(ps->claim_fds[i]);
            ps->claim_fds[i] = -1;
        }
    }
}

/* Binds and listens on a (SO_REUSEPORT: one socket per worker); probe: only claim the address
 * (*pfd gets the claim, or -1; held[0..nheld) are the claims made before) and check that no other
 * process listens there, bind nothing. */
static int bind_one(const pins_listen_addr *a, bool probe, const int *held, size_t nheld, int *pfd,
                    char *err, size_t errlen)
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
    if (probe) {
        int claim = a->port != 0 ? claim_address(res, held, nheld) : -2;
        *pfd = claim >= 0 ? claim : -1;
        if (claim == -1) {
            snprintf(err, errlen,
                     "cannot listen on %s:%u: another pinsd is starting or running there (it "
                     "would get a share of the connections)",
                     a->host, a->port);
            freeaddrinfo(res);
            return PINS_EUNAVAILABLE;
        }
        bool taken = a->port != 0 && address_taken(res);
        if (taken)
            snprintf(err, errlen,
                     "cannot listen on %s:%u: another process already listens there (it would "
                     "get a share of the connections)",
                     a->host, a->port);
        freeaddrinfo(res);
        return taken ? PINS_EUNAVAILABLE : 0;
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

int pins_server_new(const pins_config *cfg, struct store *st, pins_server **pserver, char *err,
                    size_t errlen)
{
    int rv = 0;
    pins_server *ps = calloc(1, sizeof(*ps));
    if (ps == NULL)
        return PINS_ENOMEM;
    rpc_server *s = &ps->core;
    s->cfg = cfg;
    s->store = st;
    s->nworkers = cfg->workers > 0 ? cfg->workers : 1;
    s->started_unix_us = pins_time_now_us();
    s->started_ns = pins_time_mono_ns();
    metrics_init(cfg->sweep_interval_seconds);
    raise_nofile(cfg);
    if (stop_pipe[0] < 0 && pipe2(stop_pipe, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "cannot create the stop pipe: %s", strerror(errno));
        rv = PINS_EINTERNAL;
        goto fail;
    }
    if (rpc_core_init() != 0) {
        snprintf(err, errlen, "cannot load the embedded descriptor set");
        rv = PINS_EINTERNAL;
        goto fail;
    }
    rv = ratelimit_new(cfg, &s->ratelimit, err, errlen);
    if (rv != 0)
        goto fail;
    if (cfg->tls_cert_file != NULL) {
        rv = transport_tls_ctx_new(cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_client_ca_file,
                                   &ps->tls_ctx, err, errlen);
        if (rv != 0)
            goto fail;
    }
    size_t nfds = (size_t)s->nworkers * cfg->nlisten;
    ps->listen_fds = malloc(nfds * sizeof(int));
    ps->claim_fds = malloc(cfg->nlisten * sizeof(int));
    /* -1 before anything can fail: pins_server_free closes what is not. */
    for (size_t i = 0; ps->listen_fds != NULL && i < nfds; i++)
        ps->listen_fds[i] = -1;
    for (size_t li = 0; ps->claim_fds != NULL && li < cfg->nlisten; li++)
        ps->claim_fds[li] = -1;
    s->workers = calloc((size_t)s->nworkers, sizeof(rpc_worker));
    ps->sw = calloc((size_t)s->nworkers, sizeof(server_worker));
    ps->net = calloc((size_t)s->nworkers, sizeof(transport_worker));
    if (ps->listen_fds == NULL || ps->claim_fds == NULL || s->workers == NULL || ps->sw == NULL ||
        ps->net == NULL) {
        rv = PINS_ENOMEM;
        goto fail;
    }
    for (size_t li = 0; li < cfg->nlisten; li++) {
        rv = bind_one(&cfg->listen[li], true, ps->claim_fds, li, &ps->claim_fds[li], err, errlen);
        if (rv != 0)
            goto fail;
    }
    for (int wi = 0; wi < s->nworkers; wi++) {
        for (size_t li = 0; li < cfg->nlisten; li++) {
            rv = bind_one(&cfg->listen[li], false, NULL, 0,
                          &ps->listen_fds[(size_t)wi * cfg->nlisten + li], err, errlen);
            if (rv != 0)
                goto fail;
        }
    }
    transport_metrics_init(ps->net, s->nworkers);
    *pserver = ps;
    return 0;
fail:
    pins_server_free(ps);
    return rv;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    server_worker *sw = arg;
    if (sw->accept_paused_ns != 0) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%lld",
                 (long long)((pins_time_mono_ns() - sw->accept_paused_ns) / 1000000));
        pins_log_info("accepting connections again", "paused_ms", ms, NULL);
        sw->accept_paused_ns = 0;
    }
    transport_conn_accept(sw->net, fd);
}

static void set_listening(server_worker *sw, bool on)
{
    for (size_t i = 0; i < sw->nlisteners; i++) {
        if (on)
            evconnlistener_enable(sw->listeners[i]);
        else
            evconnlistener_disable(sw->listeners[i]);
    }
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    server_worker *sw = arg;
    if (!sw->w->draining)
        set_listening(sw, true);
}

/* accept() failed. Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), the
 * listening socket stays readable: retrying at once would spin the worker and the log. The
 * worker stops accepting for ACCEPT_PAUSE_MS, serves the connections it has (whose closing frees
 * descriptors), then tries again; one line is logged when the pause starts and one when accepts
 * work again. Any other error (a connection reset before it was accepted) is passed over. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    server_worker *sw = arg;
    int e = errno;
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
        return;
    set_listening(sw, false);
    if (sw->accept_resume_ev == NULL)
        sw->accept_resume_ev = evtimer_new(sw->w->base, on_accept_resume, sw);
    if (sw->accept_resume_ev == NULL) {
        set_listening(sw, true); /* no timer: fall back to libevent's retry */
        return;
    }
    struct timeval tv = {.tv_sec = 0, .tv_usec = ACCEPT_PAUSE_MS * 1000};
    evtimer_add(sw->accept_resume_ev, &tv);
    if (sw->accept_paused_ns == 0) {
        sw->accept_paused_ns = pins_time_mono_ns();
        char open[24];
        snprintf(open, sizeof(open), "%zu", transport_conn_count(sw->net));
        pins_log_warn("accept paused: out of file descriptors or memory", "error", strerror(e),
                      "open_connections", open, NULL);
    }
}

static void on_stop_check(evutil_socket_t fd, short what, void *arg)
{
    server_worker *sw = arg;
    if (transport_conn_count(sw->net) == 0)
        event_base_loopbreak(sw->w->base);
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
    server_worker *sw = arg;
    transport_conn_close_all(sw->net);
    event_base_loopbreak(sw->w->base);
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    server_worker *sw = arg;
    rpc_worker *w = sw->w;
    if (w->draining)
        return;
    w->draining = true;
    for (size_t i = 0; i < sw->nlisteners; i++)
        evconnlistener_free(sw->listeners[i]);
    sw->nlisteners = 0;
    rpc_worker_drain(w);
    transport_conn_drain_all(sw->net);
    struct timeval grace = {.tv_sec = w->server->cfg->drain_seconds};
    struct timeval tick = {.tv_sec = 0, .tv_usec = 20000};
    event_base_once(w->base, -1, EV_TIMEOUT, on_grace_over, sw, &grace);
    sw->stop_ev = event_new(w->base, -1, EV_PERSIST, on_stop_check, sw);
    if (sw->stop_ev != NULL)
        event_add(sw->stop_ev, &tick);
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
    /* The same for the watch history's retention (store_history_expire). */
    int hbatches;
    bool hpending, hin_call, hmore;
} sweeper;

static void sweep_run(sweeper *sw);

static void on_sweep_done(void *arg, int err, int64_t count)
{
    static const char *const success[] = {"success"}, *const error[] = {"error"};
    sweeper *sw = arg;
    sw->pending = false;
    sw->batches++;
    sw->more = err == 0 && count >= sw->w->server->cfg->sweep_batch;
    metrics_counter_inc(m_batches, err == 0 ? success : error);
    if (err == 0 && count > 0)
        metrics_counter_add(m_reclaimed, NULL, (double)count);
    if (err == 0 && !sw->more)
        atomic_store(&sweep_clean_ns, pins_time_mono_ns()); /* nothing expired is left */
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
        if (rv != 0) { /* refused before it ran: a failed batch all the same */
            static const char *const error[] = {"error"};
            sw->pending = false;
            metrics_counter_inc(m_batches, error);
            return;
        }
    }
}

static void history_run(sweeper *sw);

static void on_history_trimmed(void *arg, int err, int64_t count)
{
    sweeper *sw = arg;
    sw->hpending = false;
    sw->hbatches++;
    sw->hmore = err == 0 && count >= sw->w->server->cfg->sweep_batch;
    if (err != 0)
        pins_log_warn("the watch history's retention failed; it is retried at the next sweep",
                      "error", pins_strerror(err), NULL);
    if (!sw->hin_call && sw->hmore)
        history_run(sw);
}

/* The watch history keeps PINS_WATCH_HISTORY_SECONDS and at most PINS_WATCH_HISTORY_MAX_ROWS
 * changes; older ones go in batches of PINS_SWEEP_BATCH, as expired pins do. */
static void history_run(sweeper *sw)
{
    rpc_worker *w = sw->w;
    const pins_config *cfg = w->server->cfg;
    while (sw->hmore && !sw->hpending && sw->hbatches < SWEEP_BATCHES_PER_TICK && !w->draining) {
        sw->hpending = true;
        sw->hin_call = true;
        int64_t before = pins_time_now_us() - (int64_t)cfg->watch_history_seconds * 1000000;
        int rv = store_history_expire(w->store, before, cfg->watch_history_max_rows,
                                      cfg->sweep_batch, on_history_trimmed, sw);
        sw->hin_call = false;
        if (rv != 0) {
            sw->hpending = false;
            return;
        }
    }
}

/* Expired pins are hidden at once by reads; this reclaims them in bounded batches so that
 * expiry never stalls requests. */
static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    sweeper *sw = arg;
    if (!sw->hpending) {
        sw->hbatches = 0;
        sw->hmore = true;
        history_run(sw);
    }
    if (sw->pending)
        return;
    sw->batches = 0;
    sw->more = true;
    sweep_run(sw);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    server_worker *sw = arg;
    transport_conn_tick(sw->net);
}

static void *worker_main(void *arg)
{
    server_worker *sw = arg;
    rpc_worker *w = sw->w;
    pins_server *ps = sw->server;
    rpc_server *s = w->server;
    const pins_config *cfg = s->cfg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    for (size_t li = 0; li < cfg->nlisten; li++) {
        int fd = ps->listen_fds[(size_t)w->index * cfg->nlisten + li];
        struct evconnlistener *l =
            evconnlistener_new(w->base, on_accept, sw, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (l == NULL) {
            pins_log_error("cannot listen", NULL);
            continue;
        }
        ps->listen_fds[(size_t)w->index * cfg->nlisten + li] = -1; /* the listener owns it */
        evconnlistener_set_error_cb(l, on_accept_error);
        sw->listeners[sw->nlisteners++] = l;
    }
    if (w->index == 0 && cfg->sweep_interval_seconds > 0) {
        sweeper *sweep = calloc(1, sizeof(*sweep));
        if (sweep != NULL)
            *sweep = (sweeper){.w = w};
        sw->sweep_ev = sweep != NULL ? event_new(w->base, -1, EV_PERSIST, on_sweep, sweep) : NULL;
        if (sw->sweep_ev == NULL)
            free(sweep);
        struct timeval tv = {.tv_sec = cfg->sweep_interval_seconds};
        if (sw->sweep_ev != NULL)
            event_add(sw->sweep_ev, &tv);
    }
    /* Requests that do not arrive in time, and connections whose output stalls. */
    sw->tick_ev = event_new(w->base, -1, EV_PERSIST, on_tick, sw);
    if (sw->tick_ev != NULL) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = TRANSPORT_TICK_MS * 1000};
        event_add(sw->tick_ev, &tv);
    }
    /* The rate limiter's Redis connection lives on this loop (auth/ratelimit.h). */
    if (ratelimit_worker_new(s->ratelimit, w->base, &w->ratelimit) != 0)
        pins_log_error("cannot start the rate limiter", NULL);
    event_base_dispatch(w->base);
    transport_conn_close_all(sw->net);
    ratelimit_worker_free(w->ratelimit); /* finishes calls still waiting for Redis */
    w->ratelimit = NULL;
    rpc_audit_drain(w->audit, AUDIT_DRAIN_MS); /* before the store session is freed */
    for (size_t i = 0; i < sw->nlisteners; i++)
        evconnlistener_free(sw->listeners[i]);
    sw->nlisteners = 0;
    return NULL;
}

int pins_server_run(pins_server *ps)
{
    rpc_server *s = &ps->core;
    int rv = 0;
    pthread_t *threads = calloc((size_t)s->nworkers, sizeof(pthread_t));
    if (threads == NULL)
        return PINS_ENOMEM;
    evthread_use_pthreads();
    int started = 0;
    bool feed_started = false;
    for (int i = 0; i < s->nworkers; i++) {
        rpc_worker *w = &s->workers[i];
        server_worker *sw = &ps->sw[i];
        transport_worker *net = &ps->net[i];
        w->index = i;
        w->server = s;
        *net = (transport_worker){.w = w,
                                  .tls_ctx = ps->tls_ctx,
                                  .nconns_all = &ps->nconns,
                                  .buffer_share = s->cfg->buffer_bytes / s->nworkers};
        *sw = (server_worker){.w = w, .net = net, .server = ps};
        w->base = event_base_new();
        sw->listeners = calloc(s->cfg->nlisten, sizeof(*sw->listeners));
        if (w->base == NULL || sw->listeners == NULL) {
            rv = PINS_ENOMEM;
            break;
        }
        rv = store_session_new(s->store, w->base, &w->store);
        if (rv != 0) {
            pins_log_error("cannot open a store session", "error", pins_strerror(rv), NULL);
            break;
        }
        rv = rpc_worker_start(w);
        if (rv != 0)
            break;
        /* The denial budget is the process's, shared by the workers; worker 0 runs the audit
         * retention (rpc/audit.h). */
        rpc_audit_options ao = {
            .denial_rows_per_s = (double)s->cfg->audit_denial_rows_per_second / s->nworkers,
            .read_rows_per_s = (double)s->cfg->audit_read_rows_per_second / s->nworkers,
            .read_rows_set = true,
            .retention_days = i == 0 ? s->cfg->audit_retention_days : 0,
            .retention_interval_s = s->cfg->sweep_interval_seconds,
            .retention_batch = s->cfg->sweep_batch,
        };
        rv = rpc_audit_new(w->base, w->store, &ao, &w->audit);
        if (rv != 0)
            break;
        sw->drain_ev = event_new(w->base, -1, 0, on_drain, sw);
        if (sw->drain_ev == NULL) {
            rv = PINS_ENOMEM;
            break;
        }
    }
    if (rv == 0) {
        /* Every worker's watch hub exists: the store's change feed may deliver from now on. */
        rv = store_feed_start(s->store, rpc_watch_feed, rpc_watch_feed_state, s);
        if (rv != 0)
            pins_log_error("cannot start the store's change feed", "error", pins_strerror(rv),
                           NULL);
        else
            feed_started = true;
    }
    if (rv == 0) {
        for (int i = 0; i < s->nworkers; i++) {
            if (pthread_create(&threads[i], NULL, worker_main, &ps->sw[i]) != 0) {
                rv = PINS_EINTERNAL;
                break;
            }
            started++;
        }
    }
    if (rv == 0) {
        /* Every listener is listening since pins_server_new() and every worker runs its loop:
         * connections are served from here on (a service manager may route traffic now). */
        char state[96];
        snprintf(state, sizeof(state), "READY=1\nSTATUS=serving with %d workers", s->nworkers);
        server_sdnotify(state);
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
    /* The listeners close now: a pinsd started to take over may claim the addresses (until they
     * have closed, its probe still stops it). */
    release_claims(ps);
    pins_log_info("draining", NULL);
    server_sdnotify("STOPPING=1\nSTATUS=draining");
    for (int i = 0; i < started; i++)
        event_active(ps->sw[i].drain_ev, EV_READ, 0);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (feed_started)
        store_feed_stop(s->store);
    free(threads);
    return rv;
}

void pins_server_stop(pins_server *s)
{
    (void)s;
    if (stop_pipe[1] >= 0) {
        char c = 1;
        ssize_t n = write(stop_pipe[1], &c, 1);
        (void)n;
    }
}

void pins_server_reload(pins_server *s)
{
    (void)s;
    if (stop_pipe[1] >= 0) {
        char c = RELOAD_BYTE;
        ssize_t n = write(stop_pipe[1], &c, 1);
        (void)n;
    }
}

void pins_server_free(pins_server *ps)
{
    if (ps == NULL)
        return;
    rpc_server *s = &ps->core;
    if (s->workers != NULL) {
        for (int i = 0; i < s->nworkers; i++) {
            rpc_worker *w = &s->workers[i];
            server_worker *sw = ps->sw != NULL ? &ps->sw[i] : NULL;
            /* The session first: the calls it still has pending (a watch's history read) complete
             * with PINS_ECANCELLED into the worker's watch hub and arena pool. */
            if (w->store != NULL)
                store_session_free(w->store);
            w->store = NULL;
            rpc_worker_release(w);
            rpc_audit_free(w->audit); /* after the session: its cancelled writes report here */
            if (sw != NULL) {
                struct event *evs[] = {sw->drain_ev, sw->stop_ev, sw->accept_resume_ev,
                                       sw->tick_ev};
                for (size_t k = 0; k < sizeof(evs) / sizeof(evs[0]); k++)
                    if (evs[k] != NULL)
                        event_free(evs[k]);
                if (sw->sweep_ev != NULL) {
                    void *sweep = event_get_callback_arg(sw->sweep_ev);
                    event_free(sw->sweep_ev);
                    free(sweep);
                }
                free(sw->listeners);
            }
            if (w->base != NULL)
                event_base_free(w->base);
        }
    }
    if (ps->listen_fds != NULL) {
        for (size_t i = 0; i < (size_t)s->nworkers * s->cfg->nlisten; i++)
            if (ps->listen_fds[i] >= 0)
                close(ps->listen_fds[i]);
    }
    release_claims(ps);
    transport_metrics_init(NULL, 0); /* the gauge stops reading the workers freed below */
    free(ps->claim_fds);
    free(ps->listen_fds);
    free(s->workers);
    free(ps->sw);
    free(ps->net);
    if (ps->tls_ctx != NULL)
        transport_tls_ctx_free(ps->tls_ctx);
    ratelimit_free(s->ratelimit);
    rpc_core_shutdown();
    if (stop_pipe[0] >= 0) {
        close(stop_pipe[0]);
        close(stop_pipe[1]);
        stop_pipe[0] = stop_pipe[1] = -1;
    }
    free(ps);
}
