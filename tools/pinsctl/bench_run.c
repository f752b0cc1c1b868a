/* tools/pinsctl/bench_run.c: pinsctl bench's load loop on libpins-client's event-driven API.
 *
 * One thread, one libevent base, -c pins_conn on it, each with -m call slots. A slot is one call
 * in flight; its request is built on the stack from the slot's draws (the library encodes it at
 * once) and the value Struct is built once, so the loop itself allocates nothing per call.
 * Answers are not decoded (discard_response) except UpsertPin's under --conflicts, whose
 * versions feed the stale expected_version of later puts.
 *
 * Closed loop (no --rate): a slot that frees starts the next call at once. Paced (--rate): every
 * connection has its own evenly spaced grid of due times (bench_pacer); a slot that frees takes
 * the next due send, and when none is due the connection's timer waits for it. A send that finds
 * no free slot waits and keeps its due time, so latency (counted from the due time) shows a
 * stalled server instead of hiding it (coordinated omission).
 *
 * Phases: a health check on the first connection (no answer at all: exit 3), the prefill
 * (--prefill, not counted), the load (warmup first, not counted), then the drain: no new sends,
 * the calls in flight finish, or are cancelled (counted unanswered) when the deadline plus a
 * second has passed.
 *
 * The prefill is checked on the server: before it and after it, one ListPins (limit 1, the key
 * prefix) per tenant, spread over the connections so that each is asked at least once, counts
 * the tenant's keys (`total`). A tenant that held none of them before must hold exactly --keys
 * after, one that held some at least --keys; otherwise the run stops with exit status 1. An OK
 * answer proves that *a* server stored the pin, not that the pinsd the user watches did: a
 * second server listening on the same address with SO_REUSEPORT (another pinsd, a gRPC server)
 * silently takes some of the connections, and the counts differ between the connections.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "bench_gen.h"

/* A connection whose call failed without reaching pinsd waits this long before its next send,
 * so that a stopped server is not hammered by a closed loop spinning on refused connects. */
#define FAIL_PAUSE_NS UINT64_C(10000000)
/* Versions kept for --conflicts (4 bytes each). */
#define MAX_VERSIONS (UINT64_C(1) << 26)

typedef struct run run;
typedef struct bconn bconn;

typedef enum phase { PHASE_PROBE, PHASE_PREFILL, PHASE_LOAD } phase;

typedef struct slot {
    bconn *bc;
    pins_call *call; /* while in flight; valid until on_done returns */
    uint64_t due_ns;
    uint64_t key;
    uint32_t tenant;
    uint8_t op;
    bool counted;
    bool conflict;
    bool prefill;
} slot;

struct bconn {
    run *r;
    pins_conn *conn;
    struct event *timer; /* the pacer's next due time, or the pause after a failure */
    bool waiting;        /* timer armed */
    bench_pacer pacer;
    slot *slots;
    slot **free; /* stack of free slots */
    int nfree;
};

struct run {
    const bench_config *cfg;
    bench_stats *st;
    struct event_base *base;
    bconn *conns;
    int nconns;
    phase phase;
    bool stopping;   /* no more sends */
    bool cancelling; /* the drain gave up: on_done counts unanswered */
    uint64_t inflight;
    uint64_t t_load;    /* load start */
    uint64_t t_measure; /* end of the warmup */
    uint64_t t_end;     /* end of sending, UINT64_MAX with --requests */
    uint64_t counted_started;
    uint64_t last_answer_ns;
    uint64_t prefill_next;
    uint64_t prefill_total;
    uint64_t t_prefill;
    bench_rng rng;
    bench_zipf zipf;
    bench_mix mix;
    bench_frac frac;
    uint64_t conflicts_owed;
    uint32_t *versions; /* tenants x keys, with --conflicts */
    Google__Protobuf__Struct *value;
    char rid_prefix[24]; /* x-request-id: <rid_prefix><sequence>, unique per run */
    size_t rid_prefix_len;
    uint64_t rid_seq;
    pins_call_options copts;     /* discard_response */
    pins_call_options copts_put; /* decodes (versions) */
    struct event *end_timer;
    struct event *drain_timer;
    struct event *sigint;
    int64_t drain_ms;
    pins_call *probe_call; /* the health check while it runs */
    bool probe_done;
    bool interrupted; /* a ^C came */
    int probe_code;
    bool probe_from_server;
    char probe_msg[256];
    bool failed;           /* a call could not be started: a bug, the run stops */
    bool prefill_failed;   /* an upsert of the prefill failed: no load is run */
    char prefill_err[256]; /* the first such failure, "CODE: message" */
    bool prefill_complete; /* every prefill upsert answered OK: the check runs next */
};

/* The prefill's check: check i asks for tenant i % tenants on connection i % connections. */
typedef struct count_pass count_pass;

typedef struct count_call {
    count_pass *cp;
    uint64_t i;
} count_call;

struct count_pass {
    run *r;
    uint64_t n;        /* checks: max(tenants, connections) */
    uint64_t next;     /* the next check to start */
    uint64_t pending;  /* in flight */
    int64_t *totals;   /* n, -1 until answered */
    count_call *calls; /* one per slot of every connection */
    pins_call **inflight;
    size_t ncalls;
    count_call **free;
    size_t nfree;
    bool failed;
    bool stop;     /* cancelling: start nothing more */
    char err[256]; /* the first failure, "ListPins of T: CODE: message" */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

static struct timeval tv_of_ns(uint64_t ns)
{
    return (struct timeval){.tv_sec = (time_t)(ns / 1000000000),
                            .tv_usec = (suseconds_t)(ns % 1000000000 / 1000)};
}

/* Writes prefix followed by n in decimal into buf (size >= prefix length + 21). */
static void fmt_name(char *buf, const char *prefix, size_t plen, uint64_t n)
{
    memcpy(buf, prefix, plen);
    char digits[24];
    int i = 0;
    do {
        digits[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    size_t off = plen;
    while (i > 0)
        buf[off++] = digits[--i];
    buf[off] = '\0';
}

static void maybe_finish(run *r)
{
    if (r->stopping && r->inflight == 0)
        event_base_loopbreak(r->base);
}

static void begin_stop(run *r)
{
    if (r->stopping)
        return;
    r->stopping = true;
    if (r->phase == PHASE_LOAD) {
        /* Sending ends at -d's end unless a ^C or -n stopped it: the pacer stops as soon as its
         * next due time is past the end, up to an interval before it. */
        uint64_t now = now_ns();
        uint64_t end = r->t_end != UINT64_MAX && !r->interrupted ? r->t_end : now;
        r->st->sending_ns = end > r->t_measure ? end - r->t_measure : 0;
    }
    if (r->inflight > 0) {
        struct timeval tv = {.tv_sec = r->drain_ms / 1000, .tv_usec = r->drain_ms % 1000 * 1000};
        event_add(r->drain_timer, &tv);
    }
    maybe_finish(r);
}

static void on_done(void *arg, ProtobufCMessage *resp, const pins_status *st);

/* Starts the call of slot s. Returns false when the library refused it. */
static bool start_call(run *r, bconn *bc, slot *s)
{
    const bench_config *cfg = r->cfg;
    char tenant[256], key[256], rid[48];
    fmt_name(tenant, cfg->tenant_prefix, strlen(cfg->tenant_prefix), s->tenant);
    fmt_name(key, cfg->prefix, strlen(cfg->prefix), s->key);
    /* The library would draw 16 random bytes (a getrandom system call) for every call's
     * x-request-id; a per-run random prefix and a sequence number are as unique and cost none. */
    fmt_name(rid, r->rid_prefix, r->rid_prefix_len, ++r->rid_seq);
    pins_call_options co = s->op == BENCH_OP_PUT && r->versions != NULL ? r->copts_put : r->copts;
    co.request_id = rid;
    pins_call *call = NULL;
    switch ((bench_op)s->op) {
    case BENCH_OP_GET: {
        Memorypins__V1__GetPinRequest q = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
        q.tenant_id = tenant;
        q.key = key;
        call = pins_conn_start(bc->conn, PINS_RPC_GET_PIN, &q.base, &co, NULL, on_done, s);
        break;
    }
    case BENCH_OP_PUT: {
        Memorypins__V1__UpsertPinRequest q = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
        Google__Protobuf__Int64Value ev = GOOGLE__PROTOBUF__INT64_VALUE__INIT;
        q.tenant_id = tenant;
        q.key = key;
        q.value = r->value;
        q.source = "bench";
        if (s->conflict) {
            ev.value = (int64_t)r->versions[(uint64_t)s->tenant * cfg->keys + s->key] - 1;
            q.expected_version = &ev;
        }
        call = pins_conn_start(bc->conn, PINS_RPC_UPSERT_PIN, &q.base, &co, NULL, on_done, s);
        break;
    }
    case BENCH_OP_LIST: {
        Memorypins__V1__ListPinsRequest q = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
        q.tenant_id = tenant;
        q.prefix = (char *)cfg->prefix;
        q.limit = cfg->list_limit;
        call = pins_conn_start(bc->conn, PINS_RPC_LIST_PINS, &q.base, &co, NULL, on_done, s);
        break;
    }
    case BENCH_OP_DELETE: {
        Memorypins__V1__DeletePinRequest q = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
        q.tenant_id = tenant;
        q.key = key;
        call = pins_conn_start(bc->conn, PINS_RPC_DELETE_PIN, &q.base, &co, NULL, on_done, s);
        break;
    }
    default:
        break;
    }
    if (call == NULL)
        return false;
    s->call = call;
    bc->nfree--;
    r->inflight++;
    return true;
}

/* Draws the operation, tenant and key of a load call into s. */
static void draw(run *r, slot *s)
{
    const bench_config *cfg = r->cfg;
    s->op = (uint8_t)bench_mix_next(&r->mix);
    s->tenant = cfg->tenants > 1 ? (uint32_t)bench_rng_below(&r->rng, (uint64_t)cfg->tenants) : 0;
    s->key = cfg->dist == BENCH_DIST_ZIPFIAN ? bench_zipf_next(&r->zipf, &r->rng)
                                             : bench_rng_below(&r->rng, cfg->keys);
    s->conflict = false;
    if (s->op == BENCH_OP_PUT && r->versions != NULL) {
        if (bench_frac_next(&r->frac))
            r->conflicts_owed++;
        /* A stale version needs a key whose version went past 1; until the drawn key has one,
         * the conflict waits for a later put (and this put raises the version). */
        if (r->conflicts_owed > 0 && r->versions[(uint64_t)s->tenant * cfg->keys + s->key] >= 2) {
            s->conflict = true;
            r->conflicts_owed--;
        }
    }
}

/* Starts calls on bc while it has free slots and something is due. */
static void pump(run *r, bconn *bc)
{
    const bench_config *cfg = r->cfg;
    while (bc->nfree > 0 && !r->stopping && !bc->waiting && r->phase != PHASE_PROBE) {
        slot *s = bc->free[bc->nfree - 1];
        if (r->phase == PHASE_PREFILL) {
            if (r->prefill_next >= r->prefill_total)
                return;
            uint64_t i = r->prefill_next++;
            s->tenant = (uint32_t)(i / cfg->keys);
            s->key = i % cfg->keys;
            s->op = BENCH_OP_PUT;
            s->conflict = false;
            s->prefill = true;
            s->counted = false;
            s->due_ns = now_ns();
            r->st->prefill_sent++;
        } else {
            uint64_t now = now_ns();
            uint64_t due = now;
            if (now >= r->t_end) {
                begin_stop(r);
                return;
            }
            if (cfg->rate > 0 && !bench_pacer_take(&bc->pacer, now, &due)) {
                struct timeval tv = tv_of_ns(bench_pacer_due(&bc->pacer) - now);
                bc->waiting = true;
                event_add(bc->timer, &tv);
                return;
            }
            if (due >= r->t_end) {
                begin_stop(r);
                return;
            }
            bool counted = due >= r->t_measure;
            if (counted && cfg->requests > 0 && r->counted_started >= cfg->requests) {
                begin_stop(r);
                return;
            }
            draw(r, s);
            s->prefill = false;
            s->counted = counted;
            s->due_ns = due;
            if (counted) {
                r->counted_started++;
                r->st->sent[s->op]++;
                if (s->conflict)
                    r->st->conflicts_sent++;
            }
        }
        if (!start_call(r, bc, s)) {
            fprintf(stderr, "pinsctl bench: the client library refused a %s request\n",
                    bench_op_name((bench_op)s->op));
            r->failed = true;
            begin_stop(r);
            return;
        }
    }
}

static void start_load(run *r)
{
    const bench_config *cfg = r->cfg;
    r->phase = PHASE_LOAD;
    r->t_load = now_ns();
    r->t_measure = r->t_load + (uint64_t)cfg->warmup_ms * 1000000;
    r->t_end = cfg->requests > 0 ? UINT64_MAX : r->t_measure + (uint64_t)cfg->duration_ms * 1000000;
    r->last_answer_ns = r->t_measure;
    double per_conn = cfg->rate / cfg->connections;
    for (int i = 0; i < r->nconns; i++) {
        /* Connection i's grid starts i/c of an interval later, so the sum is evenly spaced. */
        uint64_t offset = per_conn > 0 ? (uint64_t)(1e9 / per_conn * i / cfg->connections) : 0;
        bench_pacer_init(&r->conns[i].pacer, r->t_load, per_conn, offset);
    }
    if (r->t_end != UINT64_MAX) {
        struct timeval tv = tv_of_ns(r->t_end - r->t_load);
        event_add(r->end_timer, &tv);
    }
    for (int i = 0; i < r->nconns; i++)
        pump(r, &r->conns[i]);
}

static void record(run *r, slot *s, const pins_status *st, uint64_t now)
{
    bench_stats *bs = r->st;
    int op = s->op;
    if (r->cancelling) {
        bs->unanswered++;
        return;
    }
    uint64_t sec = now > r->t_measure ? (now - r->t_measure) / 1000000000 : 0;
    if (sec >= BENCH_TIMELINE_MAX)
        sec = BENCH_TIMELINE_MAX - 1;
    if (sec + 1 > bs->timeline_len)
        bs->timeline_len = sec + 1;
    int code = st->code >= 0 && st->code < BENCH_CODES ? st->code : PINS_CODE_UNKNOWN;
    if (st->code != PINS_CODE_OK && !st->from_server) {
        /* No answer from pinsd (refused or lost connection, deadline): not an answer, not in
         * req/s or the latency, counted apart. */
        bs->failed_locally[op]++;
        bs->local_codes[code]++;
        bs->timeline_local[sec]++;
        return;
    }
    bs->answers[op]++;
    r->last_answer_ns = now;
    bool err = false;
    if (st->code == PINS_CODE_OK) {
        bs->ok[op]++;
    } else if (s->conflict && st->code == PINS_CODE_ABORTED) {
        bs->aborted++;
        err = true;
    } else {
        bs->errors[op]++;
        bs->codes[code]++;
        err = true;
    }
    bench_hist_record(&bs->lat[op], now - s->due_ns);
    (void)bench_stats_timeline_record(bs, sec, now - s->due_ns); /* a failure is counted there */
    if (err)
        bs->timeline_err[sec]++;
    else
        bs->timeline_ok[sec]++;
}

static void on_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    slot *s = arg;
    bconn *bc = s->bc;
    run *r = bc->r;
    uint64_t now = now_ns();
    s->call = NULL;
    r->inflight--;
    bc->free[bc->nfree++] = s;
    if (r->versions != NULL) {
        uint32_t *v = &r->versions[(uint64_t)s->tenant * r->cfg->keys + s->key];
        if (resp != NULL && s->op == BENCH_OP_PUT) {
            const Memorypins__V1__UpsertPinResponse *u = (const void *)resp;
            if (u->pin != NULL && u->pin->version > 0)
                *v = u->pin->version > UINT32_MAX ? UINT32_MAX : (uint32_t)u->pin->version;
        } else if (s->op == BENCH_OP_DELETE && st->code == PINS_CODE_OK) {
            *v = 0;
        }
    }
    pins_message_free(resp);
    if (s->prefill) {
        if (st->code != PINS_CODE_OK && !r->cancelling && r->st->prefill_errors++ == 0)
            snprintf(r->prefill_err, sizeof(r->prefill_err), "%s: %s", pins_code_name(st->code),
                     st->message);
    } else if (s->counted) {
        record(r, s, st, now);
    }
    if (!st->from_server && st->code == PINS_CODE_UNAVAILABLE && !bc->waiting && !r->stopping) {
        struct timeval tv = tv_of_ns(FAIL_PAUSE_NS);
        bc->waiting = true;
        event_add(bc->timer, &tv);
    }
    if (r->phase == PHASE_PREFILL && r->prefill_next >= r->prefill_total && r->inflight == 0 &&
        !r->stopping) {
        r->st->prefill_ns = now - r->t_prefill;
        if (r->st->prefill_errors > 0) {
            /* A load over keys that are not all there measures NOT_FOUND answers: stop. */
            r->prefill_failed = true;
            begin_stop(r);
            return;
        }
        r->prefill_complete = true;
        event_base_loopbreak(r->base);
        return;
    }
    pump(r, bc);
    maybe_finish(r);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bconn *bc = arg;
    bc->waiting = false;
    pump(bc->r, bc);
    maybe_finish(bc->r);
}

static void on_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    begin_stop(arg);
}

/* The drain gave up: cancel what is still in flight (each on_done runs before the cancel
 * returns and counts it unanswered). */
static void cancel_all(run *r)
{
    r->cancelling = true;
    r->stopping = true;
    for (int i = 0; i < r->nconns; i++) {
        bconn *bc = &r->conns[i];
        for (int k = 0; k < r->cfg->streams; k++)
            if (bc->slots[k].call != NULL)
                pins_call_cancel(bc->slots[k].call);
    }
    maybe_finish(r);
}

static void on_drain_limit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run *r = arg;
    fprintf(stderr, "pinsctl bench: %llu calls still running %lld ms after the end, cancelled\n",
            (unsigned long long)r->inflight, (long long)r->drain_ms);
    cancel_all(r);
}

/* The first ^C stops sending and lets the calls in flight finish; the second cancels them. A ^C
 * during the health check cancels it and ends the run at once. */
static void on_sigint(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run *r = arg;
    r->interrupted = true;
    if (r->phase == PHASE_PROBE) {
        if (r->probe_call != NULL)
            pins_call_cancel(r->probe_call);
        event_base_loopbreak(r->base);
        return;
    }
    if (r->stopping)
        cancel_all(r);
    else
        begin_stop(r);
    event_base_loopbreak(r->base); /* the prefill's key count waits in a loop of its own */
}

static void on_probe(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    run *r = arg;
    pins_message_free(resp);
    r->probe_call = NULL;
    r->probe_done = true;
    r->probe_code = st->code;
    r->probe_from_server = st->from_server;
    snprintf(r->probe_msg, sizeof(r->probe_msg), "%s", st->message != NULL ? st->message : "");
    event_base_loopbreak(r->base);
}

static void count_start_more(count_pass *cp);

static void on_count(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    count_call *cc = arg;
    count_pass *cp = cc->cp;
    run *r = cp->r;
    cp->inflight[cc - cp->calls] = NULL;
    cp->pending--;
    cp->free[cp->nfree++] = cc;
    if (st->code == PINS_CODE_OK && resp != NULL) {
        const Memorypins__V1__ListPinsResponse *lr = (const void *)resp;
        cp->totals[cc->i] = lr->total;
    } else if (!cp->failed) {
        cp->failed = true;
        char tenant[256];
        fmt_name(tenant, r->cfg->tenant_prefix, strlen(r->cfg->tenant_prefix),
                 cc->i % (uint64_t)r->cfg->tenants);
        snprintf(cp->err, sizeof(cp->err), "ListPins of %.100s: %s: %.120s", tenant,
                 pins_code_name(st->code), st->message != NULL ? st->message : "");
    }
    pins_message_free(resp);
    count_start_more(cp);
    if (cp->pending == 0)
        event_base_loopbreak(r->base);
}

/* Starts checks while there are free slots and no failure. */
static void count_start_more(count_pass *cp)
{
    run *r = cp->r;
    const bench_config *cfg = r->cfg;
    while (cp->nfree > 0 && cp->next < cp->n && !cp->failed && !cp->stop && !r->interrupted) {
        count_call *cc = cp->free[--cp->nfree];
        cc->i = cp->next++;
        char tenant[256];
        fmt_name(tenant, cfg->tenant_prefix, strlen(cfg->tenant_prefix),
                 cc->i % (uint64_t)cfg->tenants);
        Memorypins__V1__ListPinsRequest q = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
        q.tenant_id = tenant;
        q.prefix = (char *)cfg->prefix;
        q.limit = 1;
        pins_call_options co = {.no_retry = true, .timeout_ms = r->drain_ms - 1000};
        bconn *bc = &r->conns[cc->i % (uint64_t)r->nconns];
        pins_call *call =
            pins_conn_start(bc->conn, PINS_RPC_LIST_PINS, &q.base, &co, NULL, on_count, cc);
        if (call == NULL) {
            cp->free[cp->nfree++] = cc;
            cp->failed = true;
            snprintf(cp->err, sizeof(cp->err), "the client library refused a ListPins request");
            return;
        }
        cp->inflight[cc - cp->calls] = call;
        cp->pending++;
    }
}

/* Counts every tenant's keys (the key prefix) into totals (max(tenants, connections) entries).
 * Returns 0, 1 when a check failed (the reason in err) or -1 when interrupted by ^C. */
static int count_keys(run *r, int64_t *totals, char *err, size_t errlen)
{
    const bench_config *cfg = r->cfg;
    count_pass cp = {.r = r, .totals = totals};
    cp.n =
        (uint64_t)cfg->tenants > (uint64_t)r->nconns ? (uint64_t)cfg->tenants : (uint64_t)r->nconns;
    cp.ncalls = (size_t)r->nconns * (size_t)cfg->streams;
    cp.calls = calloc(cp.ncalls, sizeof(*cp.calls));
    cp.inflight = calloc(cp.ncalls, sizeof(*cp.inflight));
    cp.free = calloc(cp.ncalls, sizeof(*cp.free));
    if (cp.calls == NULL || cp.inflight == NULL || cp.free == NULL) {
        free(cp.calls);
        free(cp.inflight);
        free(cp.free);
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    for (size_t k = 0; k < cp.ncalls; k++) {
        cp.calls[k].cp = &cp;
        cp.free[cp.nfree++] = &cp.calls[cp.ncalls - 1 - k];
    }
    for (uint64_t i = 0; i < cp.n; i++)
        totals[i] = -1;
    count_start_more(&cp);
    while (cp.pending > 0 && !r->interrupted)
        if (event_base_dispatch(r->base) != 0)
            break;
    /* A ^C (or a loop failure) leaves checks in flight: cancel them (on_count runs at once). */
    cp.stop = true;
    for (size_t k = 0; k < cp.ncalls && cp.pending > 0; k++)
        if (cp.inflight[k] != NULL)
            pins_call_cancel(cp.inflight[k]);
    free(cp.calls);
    free(cp.inflight);
    free(cp.free);
    if (r->interrupted)
        return -1;
    snprintf(err, errlen, "%s", cp.err);
    return cp.failed || cp.next < cp.n ? 1 : 0;
}

/* Compares the counts after the prefill with those before. Returns 0 when every tenant holds its
 * keys, else 1 with the first difference in err. */
static int check_prefill(const run *r, const int64_t *before, const int64_t *after, uint64_t n,
                         char *err, size_t errlen)
{
    const bench_config *cfg = r->cfg;
    uint64_t bad = 0, first = 0;
    for (uint64_t i = 0; i < n; i++) {
        bool ok = before[i] == 0 ? after[i] == (int64_t)cfg->keys
                                 : after[i] >= (int64_t)cfg->keys && after[i] >= before[i];
        if (!ok && bad++ == 0)
            first = i;
    }
    if (bad == 0)
        return 0;
    char tenant[256];
    fmt_name(tenant, cfg->tenant_prefix, strlen(cfg->tenant_prefix),
             first % (uint64_t)cfg->tenants);
    snprintf(
        err, errlen,
        "%llu of %llu checks: %.100s holds %lld pins with prefix \"%.100s\" on connection %llu, "
        "expected %s%llu (it held %lld before)",
        (unsigned long long)bad, (unsigned long long)n, tenant, (long long)after[first],
        cfg->prefix, (unsigned long long)(first % (uint64_t)r->nconns),
        before[first] == 0 ? "" : "at least ", (unsigned long long)cfg->keys,
        (long long)before[first]);
    return 1;
}

/* A JSON object of about size bytes: {"data":"xxx..."}. */
static int build_value(run *r, size_t size)
{
    size_t pad = size > 11 ? size - 11 : 0;
    char *json = malloc(pad + 16);
    if (json == NULL)
        return -1;
    size_t off = 0;
    if (pad == 0) {
        memcpy(json, "{}", 3);
        off = 2;
    } else {
        memcpy(json, "{\"data\":\"", 9);
        off = 9;
        memset(json + off, 'x', pad);
        off += pad;
        memcpy(json + off, "\"}", 3);
        off += 2;
    }
    pins_status st = PINS_STATUS_INIT;
    int rv = pins_value_from_json(json, off, &r->value, &st);
    if (rv != 0)
        fprintf(stderr, "pinsctl bench: building the value failed: %s\n", st.message);
    pins_status_clear(&st);
    free(json);
    return rv == 0 ? 0 : -1;
}

int bench_run(const bench_config *cfg, const pins_options *opts_in, bench_stats *st)
{
    int rv = PINSCTL_EXIT_OK;
    int64_t *before = NULL, *after = NULL;
    run r = {.cfg = cfg, .st = st, .t_end = UINT64_MAX};
    pins_options opts = *opts_in;
    opts.max_retries = 0;
    opts.max_concurrent_streams = (uint32_t)cfg->streams;
    r.copts = (pins_call_options){.no_retry = true, .discard_response = true};
    r.copts_put = (pins_call_options){.no_retry = true};
    int64_t timeout = opts.timeout_ms > 0 ? opts.timeout_ms : 30000;
    r.drain_ms = timeout + 1000;

    bench_rng_seed(&r.rng, cfg->seed);
    bench_rng rid_rng;
    bench_rng_seed(&rid_rng, now_ns() ^ ((uint64_t)getpid() << 32));
    snprintf(r.rid_prefix, sizeof(r.rid_prefix), "bench-%08x-",
             (unsigned)(bench_rng_next(&rid_rng) >> 32));
    r.rid_prefix_len = strlen(r.rid_prefix);
    bench_zipf_init(&r.zipf, cfg->keys, cfg->zipf_s);
    bench_mix_init(&r.mix, cfg->mix);
    bench_frac_init(&r.frac, cfg->conflicts);
    if (cfg->conflicts > 0) {
        uint64_t n = (uint64_t)cfg->tenants * cfg->keys;
        if (n > MAX_VERSIONS) {
            fprintf(stderr,
                    "pinsctl bench: --conflicts tracks every key's version: --tenants x --keys "
                    "must be at most %llu\n",
                    (unsigned long long)MAX_VERSIONS);
            return PINSCTL_EXIT_USAGE;
        }
        r.versions = calloc(n, sizeof(*r.versions));
        if (r.versions == NULL) {
            fprintf(stderr, "pinsctl bench: out of memory\n");
            return PINSCTL_EXIT_USAGE;
        }
    }
    if (build_value(&r, cfg->value_size) != 0) {
        rv = PINSCTL_EXIT_USAGE;
        goto out;
    }

    struct event_config *ec = event_config_new();
    if (ec != NULL) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
        r.base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    if (r.base == NULL) {
        fprintf(stderr, "pinsctl bench: cannot create the event loop\n");
        rv = PINSCTL_EXIT_UNREACHABLE;
        goto out;
    }
    r.end_timer = evtimer_new(r.base, on_end, &r);
    r.drain_timer = evtimer_new(r.base, on_drain_limit, &r);
    r.sigint = evsignal_new(r.base, SIGINT, on_sigint, &r);
    r.conns = calloc((size_t)cfg->connections, sizeof(*r.conns));
    if (r.end_timer == NULL || r.drain_timer == NULL || r.sigint == NULL || r.conns == NULL) {
        fprintf(stderr, "pinsctl bench: out of memory\n");
        rv = PINSCTL_EXIT_UNREACHABLE;
        goto out;
    }
    event_add(r.sigint, NULL);
    for (int i = 0; i < cfg->connections; i++) {
        bconn *bc = &r.conns[i];
        bc->r = &r;
        pins_status pst = PINS_STATUS_INIT;
        bc->conn = pins_conn_new(r.base, &opts, &pst);
        bc->timer = evtimer_new(r.base, on_timer, bc);
        bc->slots = calloc((size_t)cfg->streams, sizeof(*bc->slots));
        bc->free = calloc((size_t)cfg->streams, sizeof(*bc->free));
        r.nconns = i + 1;
        if (bc->conn == NULL) {
            fprintf(stderr, "pinsctl bench: %s\n",
                    pst.message != NULL ? pst.message : "bad options");
            pins_status_clear(&pst);
            rv = PINSCTL_EXIT_USAGE;
            goto out;
        }
        pins_status_clear(&pst);
        if (bc->timer == NULL || bc->slots == NULL || bc->free == NULL) {
            fprintf(stderr, "pinsctl bench: out of memory\n");
            rv = PINSCTL_EXIT_UNREACHABLE;
            goto out;
        }
        for (int k = 0; k < cfg->streams; k++) {
            bc->slots[k].bc = bc;
            bc->free[k] = &bc->slots[cfg->streams - 1 - k];
        }
        bc->nfree = cfg->streams;
    }

    /* Can pinsd be reached at all? The check has its own deadline, also with --timeout 0, so that
     * a server that accepts and never answers ends the run. */
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    pins_call_options hopts = {.no_retry = true, .timeout_ms = BENCH_PROBE_TIMEOUT_MS};
    if (opts.timeout_ms > 0 && opts.timeout_ms < BENCH_PROBE_TIMEOUT_MS)
        hopts.timeout_ms = opts.timeout_ms;
    r.probe_call = pins_conn_start(r.conns[0].conn, PINS_RPC_HEALTH_CHECK, &hreq.base, &hopts, NULL,
                                   on_probe, &r);
    if (r.probe_call == NULL) {
        rv = PINSCTL_EXIT_UNREACHABLE;
        goto out;
    }
    while (!r.probe_done && !r.interrupted)
        if (event_base_dispatch(r.base) != 0)
            break;
    if (r.interrupted) {
        fprintf(stderr, "pinsctl bench: interrupted during the health check; no report\n");
        rv = BENCH_EXIT_INTERRUPTED;
        goto out;
    }
    if (!r.probe_done || (r.probe_code != PINS_CODE_OK && !r.probe_from_server)) {
        fprintf(stderr, "pinsctl bench: cannot reach pinsd at %s: %s\n", opts.addr,
                r.probe_done ? r.probe_msg : "no answer");
        rv = PINSCTL_EXIT_UNREACHABLE;
        goto out;
    }

    bool verify_failed = false;
    char verify_err[512] = "";
    if (cfg->prefill) {
        r.phase = PHASE_PREFILL;
        r.prefill_total = (uint64_t)cfg->tenants * cfg->keys;
        uint64_t nchecks = (uint64_t)cfg->tenants > (uint64_t)r.nconns ? (uint64_t)cfg->tenants
                                                                       : (uint64_t)r.nconns;
        before = calloc(nchecks, sizeof(*before));
        after = calloc(nchecks, sizeof(*after));
        if (before == NULL || after == NULL) {
            fprintf(stderr, "pinsctl bench: out of memory\n");
            rv = PINSCTL_EXIT_UNREACHABLE;
            goto out;
        }
        /* Without the right to list (a token that may only write), the prefill runs unchecked;
         * the reason is told once it succeeded. */
        char skip_err[512] = "";
        int crv = count_keys(&r, before, skip_err, sizeof(skip_err));
        bool checked = crv == 0;
        if (crv >= 0) {
            r.t_prefill = now_ns();
            for (int i = 0; i < r.nconns; i++)
                pump(&r, &r.conns[i]);
            while (!r.prefill_complete && !(r.stopping && r.inflight == 0))
                if (event_base_dispatch(r.base) != 0)
                    break;
        }
        if (r.prefill_complete && !r.interrupted && !checked) {
            fprintf(stderr,
                    "pinsctl bench: prefill: not checked on the server (counting the keys "
                    "before it failed: %s)\n",
                    skip_err);
            start_load(&r);
        } else if (r.prefill_complete && !r.interrupted) {
            crv = count_keys(&r, after, verify_err, sizeof(verify_err));
            if (crv > 0) {
                verify_failed = true;
                fprintf(stderr,
                        "pinsctl bench: prefill: counting the keys after it failed: %s; the "
                        "load was not run\n",
                        verify_err);
            } else if (crv == 0 && check_prefill(&r, before, after, nchecks, verify_err,
                                                 sizeof(verify_err)) != 0) {
                verify_failed = true;
                fprintf(stderr,
                        "pinsctl bench: prefill: all %llu upserts were answered OK, but the "
                        "server does not hold the keys: %s. Another server may listen on %s too "
                        "(SO_REUSEPORT), or writes were lost; the load was not run\n",
                        (unsigned long long)r.prefill_total, verify_err, opts.addr);
            } else if (crv == 0) {
                start_load(&r);
            }
        }
    } else {
        start_load(&r);
    }
    /* The loop breaks when the run has stopped with nothing in flight (and once per ^C). */
    if (!verify_failed)
        while (!(r.stopping && r.inflight == 0) && r.phase == PHASE_LOAD)
            if (event_base_dispatch(r.base) != 0)
                break;
    if (r.phase == PHASE_LOAD)
        st->measured_ns = r.last_answer_ns > r.t_measure ? r.last_answer_ns - r.t_measure : 0;
    if (r.failed) {
        rv = PINSCTL_EXIT_UNREACHABLE;
    } else if (r.interrupted && r.phase == PHASE_PREFILL) {
        /* The load never ran: a report would be all zeros. */
        fprintf(stderr,
                "pinsctl bench: interrupted during the prefill (%llu of %llu upserts sent); the "
                "load was not run, no report\n",
                (unsigned long long)st->prefill_sent, (unsigned long long)r.prefill_total);
        rv = BENCH_EXIT_INTERRUPTED;
    } else if (r.prefill_failed) {
        fprintf(stderr,
                "pinsctl bench: prefill: %llu of %llu upserts failed (the first: %s); the load was "
                "not run\n",
                (unsigned long long)st->prefill_errors, (unsigned long long)r.prefill_total,
                r.prefill_err);
        rv = PINSCTL_EXIT_REFUSED;
    } else if (verify_failed) {
        rv = PINSCTL_EXIT_REFUSED;
    }

out:
    r.stopping = true; /* nothing starts while the connections close */
    r.cancelling = true;
    for (int i = 0; i < r.nconns; i++) {
        bconn *bc = &r.conns[i];
        pins_conn_free(bc->conn);
        if (bc->timer != NULL)
            event_free(bc->timer);
        free(bc->slots);
        free(bc->free);
    }
    free(r.conns);
    if (r.end_timer != NULL)
        event_free(r.end_timer);
    if (r.drain_timer != NULL)
        event_free(r.drain_timer);
    if (r.sigint != NULL)
        event_free(r.sigint);
    if (r.base != NULL)
        event_base_free(r.base);
    if (r.value != NULL)
        pins_message_free(&r.value->base);
    free(r.versions);
    free(before);
    free(after);
    return rv;
}
