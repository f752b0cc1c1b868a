/* store/pg_feed.c: the PostgreSQL change feed (store/store.h, "revisions and the change feed";
 * store/pg_int.h).
 *
 * One thread per process holds one connection to listen_url (DATABASE_LISTEN_URL, else
 * DATABASE_URL), runs LISTEN pinsd_changes and hands each notification, in arrival order, to the
 * feed's function: a change carried inline is parsed from the payload, a change too big for a
 * payload is read by its seq on the same connection before the next notification is looked at.
 * The writing statements build the payloads (store/pg_sql.c, NOTIFY_FROM).
 *
 * The connection must reach PostgreSQL directly: a pooler in transaction mode hands LISTEN to a
 * server connection that other clients share and never passes the notifications on. When
 * pg_backend_pid() is not the pid libpq got at login, a pooler is between: the feed logs it and
 * stays down. A lost connection (an error, or a ping unanswered while idle) makes the feed down
 * (state(arg, false)) until it is connected and listening again (state(arg, true)); attempts
 * back off from BACKOFF_MIN_MS to BACKOFF_MAX_MS. With several hosts and
 * target_session_attrs=read-write, libpq finds the primary on each attempt.
 *
 * The feed also keeps the read cache (store/pg_cache.c): each change reaches the cache before the
 * feed's function, and once listening the feed reads every tenant's revision and sends itself a
 * barrier notification after it; the cache is ready when the barrier comes back, and starts over
 * (reset) whenever the feed is down or missed a change.
 *
 * The thread blocks in poll() on the connection's socket and a pipe that store_feed_stop writes
 * to. Its timeouts are real time (CLOCK_MONOTONIC), not the process clock tests replace: they
 * bound waits on the network only.
 */
#include "store/pg_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "observability/log.h"

#define FEED_CHANNEL        "pinsd_changes"
#define FEED_REV_CHANNEL    "pinsd_revisions" /* barriers and skipped revisions (pg_cache.c) */
#define FEED_PING_MS        5000              /* a ping after this long without traffic */
#define FEED_TIMEOUT_MS     5000              /* a connection attempt, a query */
#define FEED_POOLER_WAIT_MS 30000             /* between attempts while a pooler is in the way */

struct pg_feed {
    char *url;
    store_change_fn fn;
    store_feed_state_fn state;
    void *arg;
    pthread_t thread;
    int wake[2]; /* store_feed_stop writes to wake[1] */
    atomic_bool stop;
    atomic_bool live;
    PGconn *pg;
    bool reported;  /* the current run of failed attempts was logged */
    pg_rcache *rc;  /* the read cache the feed keeps, or NULL */
    PGresult *sync; /* rc: the revisions read, until the barrier after them comes back */
    char token[48]; /* rc: the barrier's payload, "b <backend pid> <count>" */
    uint64_t barriers;
};

static int64_t real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events, the stop pipe is written or timeout_ms passed. Returns 1
 * when fd is ready, 0 on timeout, -1 when stopping or on an error. */
static int wait_fd(pg_feed *f, int fd, short events, int64_t timeout_ms)
{
    struct pollfd p[2] = {{.fd = f->wake[0], .events = POLLIN}, {.fd = fd, .events = events}};
    int n = poll(p, fd >= 0 ? 2 : 1, (int)(timeout_ms < 0 ? 0 : timeout_ms));
    if (atomic_load(&f->stop) || p[0].revents != 0)
        return -1;
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    return n > 0 && p[1].revents != 0 ? 1 : 0;
}

/* Sleeps ms unless stopped; false when stopping. */
static bool nap(pg_feed *f, int64_t ms)
{
    int64_t end = real_ms() + ms;
    for (;;) {
        int64_t left = end - real_ms();
        if (left <= 0)
            return !atomic_load(&f->stop);
        if (wait_fd(f, -1, 0, left) < 0)
            return false;
    }
}

/* Runs sql (nparams text parameters) on the feed's connection. Returns its last result (new,
 * the caller clears it), NULL when the connection failed, timed out or the feed is stopping. */
static PGresult *run(pg_feed *f, const char *sql, int nparams, const char *const *params)
{
    if (!PQsendQueryParams(f->pg, sql, nparams, NULL, params, NULL, NULL, 0))
        return NULL;
    int64_t end = real_ms() + FEED_TIMEOUT_MS;
    int sock = PQsocket(f->pg);
    for (;;) {
        int fl = PQflush(f->pg);
        if (fl < 0)
            return NULL;
        if (fl == 0 && !PQisBusy(f->pg))
            break;
        int w = wait_fd(f, sock, (short)(POLLIN | (fl > 0 ? POLLOUT : 0)), end - real_ms());
        if (w < 0 || (w == 0 && real_ms() >= end))
            return NULL;
        if (w > 0 && !PQconsumeInput(f->pg))
            return NULL;
    }
    PGresult *last = NULL;
    for (PGresult *res = PQgetResult(f->pg); res != NULL; res = PQgetResult(f->pg)) {
        PQclear(last);
        last = res;
    }
    if (last != NULL && PQresultStatus(last) != PGRES_TUPLES_OK &&
        PQresultStatus(last) != PGRES_COMMAND_OK) {
        pins_log_warn("change feed query failed", "error", PQresultErrorMessage(last), NULL);
        PQclear(last);
        return NULL;
    }
    return last;
}

static void feed_close(pg_feed *f)
{
    PQfinish(f->pg);
    f->pg = NULL;
    PQclear(f->sync);
    f->sync = NULL;
}

/* Logs a failed attempt once per run of failures. */
static void report(pg_feed *f, const char *msg, const char *detail)
{
    if (f->reported)
        return;
    f->reported = true;
    pins_log_warn(msg, "error", detail, NULL);
}

/* The server's notices (the FATAL of a terminated backend among them) go to the debug log
 * instead of libpq's default, stderr. */
static void on_notice(void *arg, const char *message)
{
    (void)arg;
    pins_log_debug("change feed notice", "message", message, NULL);
}

typedef enum { OPEN_OK, OPEN_FAILED, OPEN_POOLER, OPEN_STOP } open_result;

/* Connects, checks that no pooler is between and runs LISTEN. */
static open_result feed_open(pg_feed *f)
{
    /* Ours first, so that the URL's own settings win (libpq keeps the last value of a key),
     * except client_encoding: payload lengths are counted in UTF-8 bytes. */
    const char *keys[] = {"application_name",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "dbname",
                          "client_encoding",
                          NULL};
    const char *vals[] = {"pinsd-feed", "10", "5", "3", f->url, "UTF8", NULL};
    f->pg = PQconnectStartParams(keys, vals, 1);
    if (f->pg == NULL) {
        report(f, "change feed cannot connect", "out of memory");
        return OPEN_FAILED;
    }
    PQsetNoticeProcessor(f->pg, on_notice, NULL);
    int64_t end = real_ms() + FEED_TIMEOUT_MS;
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    while (PQstatus(f->pg) != CONNECTION_BAD && ps != PGRES_POLLING_OK) {
        if (ps == PGRES_POLLING_FAILED)
            break;
        int w = wait_fd(f, PQsocket(f->pg), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                        end - real_ms());
        if (w < 0 && atomic_load(&f->stop))
            return OPEN_STOP;
        if (w <= 0 && real_ms() >= end) {
            report(f, "change feed cannot connect", "timeout");
            return OPEN_FAILED;
        }
        ps = PQconnectPoll(f->pg);
    }
    if (ps != PGRES_POLLING_OK) {
        report(f, "change feed cannot connect", PQerrorMessage(f->pg));
        return OPEN_FAILED;
    }
    PGresult *res = run(f, "SELECT pg_backend_pid()", 0, NULL);
    if (res == NULL) {
        report(f, "change feed cannot connect", PQerrorMessage(f->pg));
        return atomic_load(&f->stop) ? OPEN_STOP : OPEN_FAILED;
    }
    bool direct = PQntuples(res) == 1 && store__pg_col_i64(res, 0, 0) == PQbackendPID(f->pg);
    PQclear(res);
    if (!direct) {
        if (!f->reported)
            pins_log_error("the change feed needs a direct PostgreSQL connection but reaches a"
                           " pooler (pg_backend_pid() is not the login's pid): set"
                           " DATABASE_LISTEN_URL to a URL of PostgreSQL itself; until then"
                           " changes of other replicas are not seen",
                           NULL);
        f->reported = true;
        return OPEN_POOLER;
    }
    /* Notifications of both channels come in one commit-ordered stream. */
    static const char *const listen[] = {"LISTEN " FEED_CHANNEL, "LISTEN " FEED_REV_CHANNEL};
    for (size_t i = 0; i < sizeof(listen) / sizeof(listen[0]); i++) {
        res = run(f, listen[i], 0, NULL);
        if (res == NULL) {
            report(f, "change feed cannot listen", PQerrorMessage(f->pg));
            return atomic_load(&f->stop) ? OPEN_STOP : OPEN_FAILED;
        }
        PQclear(res);
    }
    return OPEN_OK;
}

/* Reads an integer token of s[*pi..n) followed by one space ('-' for none: *phas false). */
static bool token_i64(const char *s, size_t n, size_t *pi, int64_t *pv, bool *phas)
{
    size_t i = *pi, start = i;
    while (i < n && s[i] != ' ')
        i++;
    if (i >= n || i == start)
        return false;
    if (phas != NULL)
        *phas = !(i - start == 1 && s[start] == '-');
    if (phas != NULL && !*phas) {
        *pv = 0;
    } else {
        char num[24];
        if (i - start >= sizeof(num))
            return false;
        memcpy(num, s + start, i - start);
        num[i - start] = '\0';
        char *endp;
        errno = 0;
        *pv = strtoll(num, &endp, 10);
        if (errno != 0 || *endp != '\0')
            return false;
    }
    *pi = i + 1;
    return true;
}

/* Parses an inline payload ("i ...", store/pg_sql.c) into *ch, its strings copied into *pbuf
 * (new, the caller frees it). Returns 0, PINS_EINVALID_ARGUMENT (malformed), PINS_ENOMEM. */
static int parse_inline(const char *s, size_t n, store_change *ch, char **pbuf)
{
    if (n < 2 || s[0] != 'i' || s[1] != ' ')
        return PINS_EINVALID_ARGUMENT;
    size_t i = 2;
    int64_t v[12];
    bool has_ttl = false, has_exp = false;
    for (int k = 0; k < 12; k++) {
        bool *phas = k == 6 ? &has_ttl : k == 7 ? &has_exp : NULL;
        if (!token_i64(s, n, &i, &v[k], phas))
            return PINS_EINVALID_ARGUMENT;
    }
    int64_t tlen = v[9], klen = v[10], slen = v[11];
    int64_t left = (int64_t)(n - i);
    if (tlen < 0 || klen < 0 || slen < 0 || tlen > left || klen > left || slen > left ||
        tlen + klen + slen > left)
        return PINS_EINVALID_ARGUMENT;
    size_t vlen = n - i - (size_t)(tlen + klen + slen);
    char *buf = malloc((size_t)(tlen + klen + slen) + vlen + 4);
    if (buf == NULL)
        return PINS_ENOMEM;
    char *tenant = buf, *key = tenant + tlen + 1, *source = key + klen + 1;
    char *value = source + slen + 1;
    memcpy(tenant, s + i, (size_t)tlen);
    tenant[tlen] = '\0';
    i += (size_t)tlen;
    memcpy(key, s + i, (size_t)klen);
    key[klen] = '\0';
    i += (size_t)klen;
    memcpy(source, s + i, (size_t)slen);
    source[slen] = '\0';
    i += (size_t)slen;
    *ch = (store_change){
        .type = (int)v[0],
        .pin =
            {
                .id = v[3],
                .tenant_id = tenant,
                .key = key,
                .value_json = value,
                .value_len = store__pg_json_compact(value, s + i, vlen),
                .source = source,
                .created_us = v[4],
                .updated_us = v[5],
                .has_ttl = has_ttl,
                .ttl_seconds = (int32_t)v[6],
                .has_expires = has_exp,
                .expires_us = v[7],
                .version = v[8],
                .revision = v[2],
            },
    };
    *pbuf = buf;
    return 0;
}

/* The seq of a payload ("i type seq ..." or "r seq"), or -1. */
static int64_t payload_seq(const char *s, size_t n)
{
    size_t i = 2;
    int64_t v = -1;
    if (n >= 2 && s[0] == 'i' && s[1] == ' ') {
        if (!token_i64(s, n, &i, &v, NULL) || !token_i64(s, n, &i, &v, NULL))
            return -1;
        return v;
    }
    if (n < 3 || s[0] != 'r' || s[1] != ' ')
        return -1;
    char *endp;
    errno = 0;
    v = strtoll(s + 2, &endp, 10);
    return errno == 0 && *endp == '\0' && v > 0 ? v : -1;
}

/* Starts over the read cache (store/pg_cache.c): empties it, reads every tenant's revision and
 * sends the barrier that makes them count once it comes back. Returns false when the connection
 * failed. */
static bool cache_sync(pg_feed *f)
{
    if (f->rc == NULL)
        return true;
    store__pg_rcache_reset(f->rc);
    PQclear(f->sync);
    f->sync = NULL;
    char max[24];
    snprintf(max, sizeof(max), "%d", RCACHE_TENANTS_MAX);
    const char *params[1] = {max};
    PGresult *res = run(f, store__pg_sql_revisions_all, 1, params);
    if (res == NULL)
        return false;
    if (PQntuples(res) >= RCACHE_TENANTS_MAX)
        pins_log_warn("the read cache tracks the revisions of the first tenants only: reads of"
                      " the others go to the database",
                      NULL);
    snprintf(f->token, sizeof(f->token), "b %d %llu", PQbackendPID(f->pg),
             (unsigned long long)++f->barriers);
    params[0] = f->token;
    PGresult *b = run(f, store__pg_sql_barrier, 1, params);
    if (b == NULL) {
        PQclear(res);
        return false;
    }
    PQclear(b);
    f->sync = res;
    return true;
}

/* A notification of channel FEED_REV_CHANNEL. A barrier ("b <pid> <n>"): when it is the one
 * this feed waits for, the revisions read before it count and the read cache is ready; others'
 * barriers are ignored. A skipped revision ("s <revision> <tenant>", store/pg_sql.c): the tenant
 * has no change up to it that the feed has not seen. */
static void revision_note(pg_feed *f, const char *s)
{
    if (f->rc == NULL)
        return;
    if (s[0] == 's' && s[1] == ' ') {
        size_t i = 2;
        int64_t rev;
        if (token_i64(s, strlen(s), &i, &rev, NULL))
            store__pg_rcache_skip(f->rc, s + i, rev);
        return;
    }
    if (s[0] != 'b' || f->sync == NULL || strcmp(s, f->token) != 0)
        return;
    store__pg_rcache_sync_rows(f->rc, f->sync);
    pins_log_debug("read cache ready", NULL);
    PQclear(f->sync);
    f->sync = NULL;
}

/* Tells the consumers that the feed is live, or no longer: each change of state once. */
static void set_live(pg_feed *f, bool live)
{
    if (atomic_load(&f->live) == live)
        return;
    atomic_store(&f->live, live);
    if (f->state != NULL)
        f->state(f->arg, live);
}

/* The feed cannot tell which changes it missed: down and up again, so that consumers catch up
 * with store_changes_since, and the read cache starts over. Returns false when the connection
 * failed (the feed is down then). */
static bool blip(pg_feed *f)
{
    set_live(f, false);
    if (!cache_sync(f))
        return false;
    set_live(f, true);
    return true;
}

/* Hands ch to the read cache, then to the feed's function. */
static void deliver(pg_feed *f, store_change *ch)
{
    if (f->rc != NULL)
        store__pg_rcache_apply(f->rc, ch);
    f->fn(f->arg, ch);
}

/* Hands one notification's change to fn. Returns false when the connection failed. */
static bool handle(pg_feed *f, const PGnotify *nt)
{
    const char *s = nt->extra;
    size_t n = strlen(s);
    if (strcmp(nt->relname, FEED_REV_CHANNEL) == 0) {
        if (n >= 2)
            revision_note(f, s);
        return true;
    }
    if (strcmp(nt->relname, FEED_CHANNEL) != 0)
        return true;
    store_change ch;
    char *buf = NULL;
    int err = parse_inline(s, n, &ch, &buf);
    if (err == 0) {
        deliver(f, &ch);
        free(buf);
        return true;
    }
    int64_t seq = err == PINS_EINVALID_ARGUMENT ? payload_seq(s, n) : -1;
    if (seq < 0) {
        pins_log_warn("change feed got a notification it cannot read", NULL);
        return blip(f);
    }
    char num[24];
    snprintf(num, sizeof(num), "%lld", (long long)seq);
    const char *params[1] = {num};
    PGresult *res = run(f, store__pg_sql_change_get, 1, params);
    if (res == NULL)
        return false;
    if (PQntuples(res) != 1 || store__pg_read_pin(res, 0, 2, &ch.pin, &buf) != 0) {
        /* Trimmed by the retention already, or no memory: the change is lost to the feed. */
        pins_log_warn("change feed cannot read a change by its seq", NULL);
        PQclear(res);
        return blip(f);
    }
    ch.type = (int)store__pg_col_i64(res, 0, 0);
    deliver(f, &ch);
    free(buf);
    PQclear(res);
    return true;
}

/* Delivers notifications until the connection fails or the feed stops. */
static void listen_loop(pg_feed *f)
{
    int64_t quiet_since = real_ms();
    for (;;) {
        if (f->rc != NULL && store__pg_rcache_take_resync(f->rc) && !cache_sync(f))
            return;
        for (PGnotify *nt = PQnotifies(f->pg); nt != NULL; nt = PQnotifies(f->pg)) {
            bool ok = handle(f, nt);
            PQfreemem(nt);
            if (!ok)
                return;
            quiet_since = real_ms();
        }
        int64_t left = quiet_since + FEED_PING_MS - real_ms();
        int w = left > 0 ? wait_fd(f, PQsocket(f->pg), POLLIN, left) : 0;
        if (w < 0)
            return;
        if (w > 0) {
            if (!PQconsumeInput(f->pg) || PQstatus(f->pg) == CONNECTION_BAD)
                return;
            quiet_since = real_ms();
            continue;
        }
        if (real_ms() - quiet_since < FEED_PING_MS)
            continue;
        /* Quiet for a while: a ping proves the connection (a failover may leave it silent). */
        PGresult *res = run(f, "SELECT 1", 0, NULL);
        if (res == NULL)
            return;
        PQclear(res);
        quiet_since = real_ms();
    }
}

static void *feed_main(void *arg)
{
    pg_feed *f = arg;
    int64_t backoff = BACKOFF_MIN_MS;
    while (!atomic_load(&f->stop)) {
        open_result o = feed_open(f);
        if (o == OPEN_STOP) {
            feed_close(f);
            break;
        }
        if (o != OPEN_OK) {
            feed_close(f);
            if (!nap(f, o == OPEN_POOLER ? FEED_POOLER_WAIT_MS : backoff))
                break;
            backoff = backoff * 2 < BACKOFF_MAX_MS ? backoff * 2 : BACKOFF_MAX_MS;
            continue;
        }
        if (!cache_sync(f)) {
            bool stopping = atomic_load(&f->stop);
            if (!stopping)
                report(f, "change feed cannot read the tenants' revisions", PQerrorMessage(f->pg));
            feed_close(f);
            if (stopping || !nap(f, backoff))
                break;
            backoff = backoff * 2 < BACKOFF_MAX_MS ? backoff * 2 : BACKOFF_MAX_MS;
            continue;
        }
        if (f->reported)
            pins_log_info("change feed connected", NULL);
        f->reported = false;
        backoff = BACKOFF_MIN_MS;
        set_live(f, true);
        listen_loop(f);
        if (f->rc != NULL)
            store__pg_rcache_reset(f->rc);
        bool stopping = atomic_load(&f->stop);
        if (!stopping) {
            pins_log_warn("change feed connection lost", "error", PQerrorMessage(f->pg), NULL);
            f->reported = true;
            set_live(f, false);
        } else {
            atomic_store(&f->live, false);
        }
        feed_close(f);
        if (stopping || !nap(f, backoff))
            break;
    }
    return NULL;
}

static void feed_free(pg_feed *f)
{
    PQclear(f->sync);
    if (f->wake[0] >= 0)
        close(f->wake[0]);
    if (f->wake[1] >= 0)
        close(f->wake[1]);
    free(f->url);
    free(f);
}

int store__pg_feed_start(pg_store *s, store_change_fn fn, store_feed_state_fn state, void *arg)
{
    if (s->feed != NULL)
        return PINS_EINTERNAL;
    char *errmsg = NULL;
    PQconninfoOption *info = PQconninfoParse(s->listen_url, &errmsg);
    if (info == NULL) {
        PQfreemem(errmsg); /* it quotes the URL, which may hold a password: not logged */
        pins_log_error("the change feed's URL (DATABASE_LISTEN_URL, else DATABASE_URL) is not a"
                       " PostgreSQL connection URL libpq can parse",
                       NULL);
        return PINS_ESTORE;
    }
    PQconninfoFree(info);
    pg_feed *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return PINS_ENOMEM;
    f->wake[0] = f->wake[1] = -1;
    f->url = strdup(s->listen_url);
    f->fn = fn;
    f->state = state;
    f->arg = arg;
    f->rc = s->rcache;
    atomic_init(&f->stop, false);
    atomic_init(&f->live, false);
    if (f->url == NULL || pipe(f->wake) != 0) {
        feed_free(f);
        return PINS_ENOMEM;
    }
    for (int i = 0; i < 2; i++) {
        (void)fcntl(f->wake[i], F_SETFD, FD_CLOEXEC);
        (void)fcntl(f->wake[i], F_SETFL, O_NONBLOCK);
    }
    if (pthread_create(&f->thread, NULL, feed_main, f) != 0) {
        feed_free(f);
        return PINS_ENOMEM;
    }
    s->feed = f;
    return 0;
}

void store__pg_feed_stop(pg_store *s)
{
    pg_feed *f = s->feed;
    if (f == NULL)
        return;
    s->feed = NULL;
    atomic_store(&f->stop, true);
    ssize_t w = write(f->wake[1], "x", 1);
    (void)w; /* a full pipe already wakes the thread */
    pthread_join(f->thread, NULL);
    feed_free(f);
}

bool store__pg_feed_live(const pg_store *s)
{
    return s->feed != NULL && atomic_load(&s->feed->live);
}
