/* store/pg_conn.c: the PostgreSQL backend's connections (store/pg_int.h).
 *
 * Each connection is a libpq non-blocking connection in pipeline mode, watched on the session's
 * loop (store/evloop.c). A new connection first runs the schema check (store__pg_sql_schema),
 * which also tells whether a pooler sits between (named statements are kept only without one).
 * The pump reads results in send order and, at each sync, completes the segment: committed, every
 * call is delivered; rolled back, the failing calls get their errors (or one retry) and the others
 * run again. A dropped connection fails its calls in flight and reconnects after an exponential
 * backoff with jitter (100 ms .. 2 s); when one connection of the store comes back after failing
 * (the store's up_epoch), every connection still down, in every worker's session, tries again at
 * its next tick instead of sleeping out its backoff. The tick also completes calls past their
 * deadlines, asks the server to cancel a statement nobody waits for any more (pg_cancel.c) and
 * drops a connection that still has not answered STUCK_NS past a deadline.
 *
 * Without a loop (base NULL: tools and tests) store__pg_wait_done polls the connections until the
 * call's callback ran.
 */
#include "store/pg_int.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"
#include "store/breaker.h"

static_assert(P_IDLE == (int)STORE__POOL_IDLE && P_BUSY == (int)STORE__POOL_BUSY &&
                  P_CONNECTING == (int)STORE__POOL_CONNECTING && P_DOWN == (int)STORE__POOL_DOWN,
              "pool_state follows store__pool_state");

/* PostgreSQL's store_errors_total kinds, all shown from the start. */
static const char *const error_kinds[] = {"connect", "query", "timeout", "queue_full", "schema"};

void store__pg_metrics_init(void)
{
    store__metrics_open("postgres", error_kinds, sizeof(error_kinds) / sizeof(error_kinds[0]));
}

void store__pg_count_error(const char *kind)
{
    store__count_error(kind);
}

static void set_pool_state(pg_conn *c, pool_state to)
{
    if (c->pstate == to)
        return;
    store__pool_move((int)c->pstate, (int)to);
    c->pstate = to;
}

static void account(pg_conn *c)
{
    switch (c->state) {
    case C_DOWN:
        set_pool_state(c, P_DOWN);
        break;
    case C_CONNECTING:
    case C_CHECKING:
        set_pool_state(c, P_CONNECTING);
        break;
    case C_UP:
        set_pool_state(c, c->inflight > 0 ? P_BUSY : P_IDLE);
        break;
    }
}

static void conn_watch(pg_conn *c, bool rd, bool wr)
{
    c->want_read = rd;
    c->want_write = wr;
    if (c->io != NULL)
        store__io_set(c->io, c->pg != NULL ? PQsocket(c->pg) : -1, rd, wr);
}

bool store__pg_any_conn_alive(const pg_session *ss)
{
    for (int i = 0; i < ss->nconns; i++) {
        if (ss->conns[i].state != C_DOWN)
            return true;
    }
    return false;
}

/* store__pg_conn_fail, and schema: why is a schema behind the binary (store_session_schema_behind
 * of the calls failed with it). */
static void conn_down(pg_conn *c, const char *kind, const char *why, bool schema)
{
    pg_session *ss = c->ss;
    snprintf(ss->down_reason, sizeof(ss->down_reason), "%s", why);
    ss->down_schema = schema;
    /* libpq's messages end with a newline: keep the log line whole. */
    size_t n = strlen(ss->down_reason);
    while (n > 0 && (ss->down_reason[n - 1] == '\n' || ss->down_reason[n - 1] == ' '))
        ss->down_reason[--n] = '\0';
    store__pg_count_error(kind);
    pg_req *list = c->head;
    c->head = c->tail = c->recv = NULL;
    c->inflight = 0;
    c->nsegs = 0;
    c->nslow = 0;
    c->seg_slow = false;
    c->nwrite = 0;
    c->seg_write = false;
    c->direct = false;
    c->prepared = 0;
    c->recheck = false;
    conn_watch(c, false, false);
    if (c->pg != NULL)
        PQfinish(c->pg);
    c->pg = NULL;
    c->state = C_DOWN;
    c->gen++;
    c->down_epoch = atomic_load_explicit(&ss->st->up_epoch, memory_order_relaxed);
    c->backoff_ms = c->backoff_ms == 0 ? BACKOFF_MIN_MS : c->backoff_ms * 2;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    int64_t half = c->backoff_ms / 2;
    int64_t delay_ms = half + (int64_t)(pins_rand_next(&ss->rng) % (uint64_t)(half + 1));
    c->retry_ns = pins_time_mono_ns() + delay_ms * 1000000;
    account(c);
    char detail[STORE__ERROR_MAX];
    snprintf(detail, sizeof(detail), "%s", ss->down_reason);
    while (list != NULL) {
        pg_req *r = list;
        list = r->next;
        store__pg_busy_release(ss, r);
        store__pg_fail_req(ss, r, PINS_ESTORE, detail);
    }
    if (!store__pg_any_conn_alive(ss))
        store__pg_fail_queue(ss, detail);
    store__pg_tick_arm(ss);
}

void store__pg_conn_fail(pg_conn *c, const char *kind, const char *why)
{
    conn_down(c, kind, why, false);
}

void store__pg_conn_recheck(pg_conn *c)
{
    if (c->ss->st->rcache != NULL) /* revisions may start over with the schema */
        store__pg_rcache_invalidate(c->ss->st->rcache);
    store__schema_behind_set(true);
    c->ss->base.schema_behind = true;
    c->recheck = true;
    store__pg_tick_arm(c->ss);
}

void store__pg_conn_recheck_due(pg_conn *c)
{
    if (!c->recheck || c->head != NULL || c->state != C_UP)
        return;
    c->recheck = false;
    conn_down(c, "schema",
              "schema behind: a table or the schema of pinsd is missing"
              " (run `pinsctl migrate upgrade head`)",
              true);
}

static void conn_flush(pg_conn *c)
{
    int rv = PQflush(c->pg);
    if (rv < 0) {
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_watch(c, true, rv == 1);
}

/* Queues r's statement on c (an up connection). Returns false when that dropped c (r was
 * failed with the rest). */
bool store__pg_conn_put(pg_conn *c, pg_req *r, put_mode mode)
{
    r->next = NULL;
    r->sync_after = false;
    r->slow_seg = false;
    r->write_seg = false;
    if (r->kind != OP_GET_BATCH)
        c->seg_slow = true;
    if (r->kind == OP_UPSERT || r->kind == OP_DELETE || r->kind == OP_UPSERT_CHAIN)
        c->seg_write = true;
    char name[16] = "";
    uint32_t bit = c->direct ? store__pg_named_bit(r->sql, name) : 0;
    r->parse_pending =
        bit != 0 ? (c->prepared & bit) == 0 : mode == PUT_PARSE || mode == PUT_PARSE_GENERIC;
    r->pre_set = (bit != 0 && store__pg_is_batch(r)) || (bit == 0 && mode == PUT_PARSE_GENERIC);
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    if (c->recv == NULL)
        c->recv = r;
    c->inflight++;
    bool ok = !r->pre_set ||
              PQsendQueryParams(c->pg, store__pg_sql_generic, 0, NULL, NULL, NULL, NULL, 0);
    if (ok && bit == 0 && mode == PUT_ONCE) {
        ok = PQsendQueryParams(c->pg, r->sql, r->nparams, NULL, r->params, NULL, NULL, 0);
    } else if (ok) {
        c->prepared |= bit; /* taken back if the Parse fails */
        ok = (!r->parse_pending || PQsendPrepare(c->pg, name, r->sql, r->nparams, NULL)) &&
             PQsendQueryPrepared(c->pg, name, r->nparams, r->params, NULL, NULL, 0);
    }
    if (!ok) {
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        return false;
    }
    return true;
}

/* Ends the segment queued on c with a sync and sends it. */
void store__pg_conn_sync(pg_conn *c)
{
    c->tail->sync_after = true;
    c->tail->slow_seg = c->seg_slow;
    c->nslow += c->seg_slow ? 1 : 0;
    c->seg_slow = false;
    c->tail->write_seg = c->seg_write;
    c->nwrite += c->seg_write ? 1 : 0;
    c->seg_write = false;
    c->nsegs++;
    account(c);
    if (!PQpipelineSync(c->pg)) {
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_flush(c);
}

/* Sends r on c as a segment of its own. */
void store__pg_conn_send(pg_conn *c, pg_req *r)
{
    if (store__pg_conn_put(c, r, PUT_ONCE))
        store__pg_conn_sync(c);
}

/* The store logs nothing: NOTICEs and WARNINGs of the server are dropped. */
static void on_notice(void *arg, const char *message)
{
}

static void conn_ready(pg_conn *c)
{
    PQsetNoticeProcessor(c->pg, on_notice, NULL);
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg)) {
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    c->state = C_CHECKING;
    pg_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        store__pg_conn_fail(c, "connect", "out of memory");
        return;
    }
    r->kind = OP_SCHEMA;
    r->sql = store__pg_sql_schema;
    r->deadline_ns = c->connect_ns;
    store__pg_conn_send(c, r);
}

static void connect_poll(pg_conn *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    /* While it connects libpq may close its socket and open another (the next host of a
     * multi-host URL, or the next address of one host) that often gets the same number: epoll
     * forgot the closed one, so the watcher is registered afresh after every poll, never kept
     * because the number matches. */
    if (c->io != NULL)
        store__io_set(c->io, -1, false, false);
    switch (st) {
    case PGRES_POLLING_FAILED:
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    case PGRES_POLLING_READING:
        conn_watch(c, true, false);
        break;
    default:
        conn_watch(c, false, true);
        break;
    }
}

void store__pg_conn_start(pg_conn *c)
{
    pg_session *ss = c->ss;
    const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"pinsd", "5", ss->st->url, NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    c->state = C_CONNECTING;
    c->connect_ns = pins_time_mono_ns() + CONNECT_TIMEOUT_NS;
    account(c);
    if (c->pg == NULL) {
        store__pg_conn_fail(c, "connect", "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    conn_watch(c, false, true);
}

bool store__pg_conn_checked(pg_conn *c, const PGresult *res)
{
    pg_session *ss = c->ss;
    int have = PQntuples(res) == 1 ? (int)store__pg_col_i64(res, 0, 0) : 0;
    if (have < ss->st->schema_need) {
        char why[160];
        snprintf(why, sizeof(why),
                 "schema behind: the database is at version %d, pinsd needs %d"
                 " (run `pinsctl migrate upgrade head`)",
                 have, ss->st->schema_need);
        store__pg_count_error("schema");
        store__schema_behind_set(true);
        conn_down(c, "connect", why, true);
        return false;
    }
    c->direct = PQntuples(res) == 1 && PQnfields(res) >= 2 && !PQgetisnull(res, 0, 1) &&
                store__pg_col_i64(res, 0, 1) == PQbackendPID(c->pg);
    c->prepared = 0;
    c->state = C_UP;
    store__schema_behind_set(false);
    if (c->backoff_ms != 0) { /* back after a failure */
        atomic_fetch_add_explicit(&ss->st->up_epoch, 1, memory_order_relaxed);
        store_breaker_store_back();
    }
    c->backoff_ms = 0;
    account(c);
    return true;
}

/* The class of a failed statement: PINS_ESTORE for an unreachable or failing server, a retry for
 * serialisation failures, deadlocks, an insert race and a named statement that is gone (26000:
 * the connection prepares again), PINS_EINVALID_ARGUMENT for data PostgreSQL refuses (a
 * \u0000 in a jsonb string), PINS_EINTERNAL otherwise (a bug). */
static int classify(const char *state, bool *pretry)
{
    *pretry = false;
    if (state == NULL)
        return PINS_ESTORE;
    /* 57014: a cancel request (ours, aimed at a statement past its deadline, may land on the
     * statement after it). */
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "23505") == 0 ||
        strcmp(state, "26000") == 0 || strcmp(state, "57014") == 0) {
        *pretry = true;
        return PINS_ESTORE;
    }
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
        strncmp(state, "57", 2) == 0 || strncmp(state, "58", 2) == 0 ||
        strncmp(state, "XX", 2) == 0 || strcmp(state, "42P01") == 0 ||
        strcmp(state, "3F000") == 0 || strcmp(state, "25006") == 0)
        return PINS_ESTORE;
    if (strncmp(state, "22", 2) == 0)
        return PINS_EINVALID_ARGUMENT;
    return PINS_EINTERNAL;
}

/* The runs again of an upsert that lost an insert race. A write's statement snapshot predates its
 * wait for its tenant's revision row (store/pg_sql.c), so it loses whenever the transaction it
 * waited for inserted its key; it loses again only if yet another one does while it waits. */
#define RACE_RETRIES 8

/* r's segment committed: delivers r, or runs it again when its upsert lost a race with a
 * concurrent insert of the same key (it then sees that row). */
static void finish_ok(pg_session *ss, pg_conn *c, pg_req *r, req_list *again)
{
    if (r->kind == OP_UPSERT_CHAIN && PQntuples(r->res) != r->nkids) { /* lost an insert race */
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            k->next = NULL;
            if (k->retries < RACE_RETRIES) {
                k->retries++;
                store__pg_requeue(again, k);
            } else {
                store__pg_fail_req(ss, k, PINS_ESTORE,
                                   "upsert kept conflicting with concurrent inserts");
                store__pg_count_error("query");
            }
        }
        store__pg_req_free(r);
        return;
    }
    bool conflict = r->kind == OP_UPSERT && PQntuples(r->res) == 1 &&
                    strcmp(PQgetvalue(r->res, 0, 0), "ok") == 0 && PQgetisnull(r->res, 0, 2);
    if (!conflict) {
        store__pg_deliver(ss, c, r);
        return;
    }
    if (r->retries < RACE_RETRIES) {
        r->retries++;
        store__pg_requeue(again, r);
        return;
    }
    store__pg_fail_req(ss, r, PINS_ESTORE, "upsert kept conflicting with concurrent inserts");
    store__pg_count_error("query");
}

/* r failed (its segment was rolled back): one retry in a segment of its own for serialisation
 * failures and deadlocks, else its error. */
static void finish_err(pg_session *ss, pg_conn *c, pg_req *r, req_list *again)
{
    const char *state = r->res != NULL ? PQresultErrorField(r->res, PG_DIAG_SQLSTATE) : NULL;
    bool retry = false;
    int err = classify(state, &retry);
    if (state != NULL && strcmp(state, "26000") == 0)
        c->prepared = 0; /* a named statement is gone: prepare each again */
    if (r->kind == OP_SCHEMA) {
        if (state != NULL && (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0)) {
            PQclear(r->res);
            r->res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
            store__pg_deliver(ss, c, r); /* no migrations table: version 0 */
            return;
        }
        char why[STORE__ERROR_MAX];
        snprintf(why, sizeof(why), "schema check failed: %s",
                 r->res != NULL ? PQresultErrorMessage(r->res) : "no result");
        store__pg_req_free(r);
        store__pg_conn_fail(c, "connect", why);
        return;
    }
    if (r->kind == OP_UPSERT_CHAIN) { /* each call again on its own: one of them may be the cause */
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            k->solo = true;
            store__pg_requeue(again, k);
        }
        store__pg_req_free(r);
        return;
    }
    char detail[STORE__ERROR_MAX];
    snprintf(detail, sizeof(detail), "SQLSTATE %s: %s", state != NULL ? state : "none",
             r->res != NULL ? PQresultErrorMessage(r->res) : PQerrorMessage(c->pg));
    if (state != NULL && (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0)) {
        /* A table or the schema `system` is gone: a migration was reverted under a running
         * pinsd. The call fails; /ready says schema_behind; the connection runs the schema check
         * again before it serves another call, so the pool waits for `upgrade head`. */
        char why[STORE__ERROR_MAX];
        snprintf(why, sizeof(why), "schema behind: %.*s (run `pinsctl migrate upgrade head`)",
                 (int)(sizeof(why) - 64), detail);
        store__pg_conn_recheck(c);
        store__pg_fail_req(ss, r, PINS_ESTORE, why);
        return;
    }
    if (retry && r->kind == OP_GET_BATCH) { /* each read once more, batched again */
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            k->next = NULL;
            if (k->retries++ < 1)
                store__pg_requeue(again, k);
            else
                store__pg_fail_req(ss, k, err, detail);
        }
        store__pg_req_free(r);
        return;
    }
    if (retry && r->retries < 1) {
        r->retries++;
        r->solo = true;
        store__pg_requeue(again, r);
        return;
    }
    if (err == PINS_ESTORE)
        store__pg_count_error("query");
    store__pg_fail_req(ss, r, err, detail);
}

/* The sync of c's oldest segment arrived: completes its statements. The segment committed when
 * every statement succeeded; otherwise PostgreSQL rolled all of it back, so the failing
 * statements get their errors and the others run again. */
static void finish_seg(pg_conn *c)
{
    pg_session *ss = c->ss;
    pg_req *seg = c->head, *last = seg;
    int n = 1;
    while (!last->sync_after && last->next != NULL) {
        last = last->next;
        n++;
    }
    c->head = last->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->recv = c->head;
    last->next = NULL;
    c->inflight -= n;
    c->nsegs--;
    c->nslow -= last->slow_seg ? 1 : 0;
    c->nwrite -= last->write_seg ? 1 : 0;
    account(c);
    bool committed = true;
    for (pg_req *r = seg; r != NULL; r = r->next) {
        ExecStatusType st = r->res != NULL ? PQresultStatus(r->res) : PGRES_FATAL_ERROR;
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            committed = false;
    }
    req_list again = {0};
    uint64_t gen = c->gen;
    while (seg != NULL) {
        pg_req *r = seg;
        seg = r->next;
        r->next = NULL;
        store__pg_busy_release(ss, r);
        if (r->abandoned || gen != c->gen) { /* dropped by a schema check: outcome unknown */
            if (r->abandoned)
                store__pg_req_free(r);
            else
                store__pg_fail_req(ss, r, PINS_ESTORE, "database connection dropped");
            continue;
        }
        if (committed)
            finish_ok(ss, c, r, &again);
        else if (r->res == NULL || PQresultStatus(r->res) == PGRES_FATAL_ERROR)
            finish_err(ss, c, r, &again);
        else
            store__pg_requeue(&again, r);
    }
    store__pg_requeue_front(ss, &again);
}

/* Reads what c's server sent and completes the statements it finished. */
static void conn_pump(pg_conn *c, bool readable, bool writable)
{
    uint64_t gen = c->gen;
    if (c->state == C_CONNECTING) {
        connect_poll(c);
        return;
    }
    if (c->pg == NULL)
        return;
    if (writable) {
        conn_flush(c);
        if (gen != c->gen)
            return;
    }
    if (!readable)
        return;
    if (!PQconsumeInput(c->pg)) {
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
        return;
    }
    int nulls = 0;
    while (c->pg != NULL && gen == c->gen && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            if (++nulls > 1 || c->head == NULL)
                break;
            continue;
        }
        nulls = 0;
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            if (c->head != NULL)
                finish_seg(c);
            if (c->recheck && c->head == NULL && gen == c->gen) {
                store__pg_conn_recheck_due(c);
                return;
            }
            continue;
        }
        pg_req *r = c->recv;
        if (r != NULL && (r->pre_set || r->parse_pending)) {
            /* The result of the set_config or of the Parse before r: nothing to keep unless it
             * failed (then what follows is aborted, and this is r's error). A Parse that failed
             * or was aborted created no statement. */
            bool parse = !r->pre_set;
            if (parse)
                r->parse_pending = false;
            else
                r->pre_set = false;
            if (PQresultStatus(res) != (parse ? PGRES_COMMAND_OK : PGRES_TUPLES_OK)) {
                char name[16];
                if (parse)
                    c->prepared &= ~store__pg_named_bit(r->sql, name);
                if (r->res == NULL) {
                    r->res = res;
                    continue;
                }
            }
            PQclear(res);
            continue;
        }
        if (r != NULL) {
            c->recv = r->next;
            if (r->res == NULL) {
                r->res = res;
                continue;
            }
        }
        PQclear(res);
    }
    if (gen == c->gen && c->pg != NULL && PQstatus(c->pg) == CONNECTION_BAD)
        store__pg_conn_fail(c, "connect", PQerrorMessage(c->pg));
    store__pg_dispatch(c->ss);
}

static void on_conn_io(void *arg, bool readable, bool writable)
{
    conn_pump(arg, readable, writable);
}

/* Completes one call past its deadline; returns true when it found one (the lists may have
 * changed under the callback: the caller scans again). */
static bool expire_one(pg_session *ss, int64_t now)
{
    pg_req **pp = &ss->wq_head;
    pg_req *prev = NULL;
    for (pg_req *r = ss->wq_head; r != NULL; prev = r, r = r->next) {
        if (now < r->deadline_ns) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        if (ss->wq_tail == r)
            ss->wq_tail = prev;
        ss->wq_len--;
        store__pg_count_error("timeout");
        store__pg_fail_req(ss, r, PINS_EDEADLINE_EXCEEDED, "");
        return true;
    }
    for (int i = 0; i < ss->nconns; i++) {
        for (pg_req *s = ss->conns[i].head; s != NULL; s = s->next) {
            bool batch = store__pg_is_batch(s);
            for (pg_req *r = batch ? s->kids : s; r != NULL; r = batch ? r->next : NULL) {
                if (r->abandoned || r->kind == OP_SCHEMA || now < r->deadline_ns)
                    continue;
                r->abandoned = true;
                r->abandoned_ns = now;
                store__pg_count_error("timeout");
                store__pg_call_error(ss, r, PINS_EDEADLINE_EXCEEDED);
                return true;
            }
        }
    }
    return false;
}

/* True when no call waits for r's result any more (each passed its deadline). */
static bool all_abandoned(const pg_req *r)
{
    if (store__pg_is_batch(r)) {
        for (const pg_req *k = r->kids; k != NULL; k = k->next) {
            if (!k->abandoned)
                return false;
        }
        return r->kids != NULL;
    }
    return r->abandoned && r->kind != OP_SCHEMA;
}

/* True when a call of c's oldest segment passed its deadline STUCK_NS ago or more. */
static bool head_stuck(const pg_conn *c, int64_t now)
{
    for (const pg_req *s = c->head; s != NULL; s = s->sync_after ? NULL : s->next) {
        bool batch = store__pg_is_batch(s);
        for (const pg_req *r = batch ? s->kids : s; r != NULL; r = batch ? r->next : NULL) {
            if (r->abandoned && now - r->abandoned_ns >= STUCK_NS)
                return true;
        }
    }
    return false;
}

static bool needs_tick(const pg_session *ss)
{
    if (ss->wq_head != NULL)
        return true;
    for (int i = 0; i < ss->nconns; i++) {
        if (ss->conns[i].state != C_UP || ss->conns[i].head != NULL || ss->conns[i].recheck)
            return true;
    }
    return false;
}

static void tick(pg_session *ss)
{
    int64_t now = pins_time_mono_ns();
    uint64_t up_epoch = atomic_load_explicit(&ss->st->up_epoch, memory_order_relaxed);
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (c->state == C_DOWN && (now >= c->retry_ns || c->down_epoch != up_epoch))
            store__pg_conn_start(c);
        else if ((c->state == C_CONNECTING || c->state == C_CHECKING) && now >= c->connect_ns)
            store__pg_conn_fail(c, "connect", "connection attempt timed out");
    }
    while (expire_one(ss, now))
        ;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        store__pg_conn_recheck_due(c);
        if (head_stuck(c, now)) {
            store__pg_conn_fail(c, "timeout",
                                "no answer past a call's deadline: connection dropped");
            continue;
        }
        /* The statement the server is on (the first without a result) serves nobody any more:
         * stop it. Its segment rolls back; the calls still waiting in it run again. */
        pg_req *r = c->recv;
        if (c->state == C_UP && r != NULL && !r->cancel_sent && all_abandoned(r)) {
            r->cancel_sent = true;
            store__pg_cancel_post(c);
        }
    }
}

void store__pg_on_tick(void *arg)
{
    pg_session *ss = arg;
    tick(ss);
    store__pg_dispatch(ss); /* a dropped connection may have freed keys that writes wait for */
    store__pg_tick_arm(ss);
}

void store__pg_tick_arm(pg_session *ss)
{
    if (ss->tick != NULL && needs_tick(ss))
        store__timer_arm(ss->tick, TICK_MS);
}

/* Blocking mode: runs the connections until *done. */
void store__pg_wait_done(pg_session *ss, bool *done)
{
    while (!*done) {
        struct pollfd fds[64];
        pg_conn *who[64];
        nfds_t n = 0;
        for (int i = 0; i < ss->nconns && n < 64; i++) {
            pg_conn *c = &ss->conns[i];
            if (c->pg == NULL || (!c->want_read && !c->want_write))
                continue;
            fds[n] = (struct pollfd){
                .fd = PQsocket(c->pg),
                .events = (short)((c->want_read ? POLLIN : 0) | (c->want_write ? POLLOUT : 0))};
            who[n++] = c;
        }
        int rv = poll(fds, n, TICK_MS);
        if (rv < 0 && errno != EINTR)
            break;
        for (nfds_t i = 0; rv > 0 && i < n; i++) {
            if (fds[i].revents == 0)
                continue;
            bool rd = (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
            bool wr = (fds[i].revents & (POLLOUT | POLLHUP | POLLERR)) != 0;
            conn_pump(who[i], rd, wr);
        }
        tick(ss);
    }
}

int store__pg_conn_init(pg_conn *c, pg_session *ss)
{
    c->ss = ss;
    c->state = C_DOWN;
    c->pstate = P_DOWN;
    store__pool_move(-1, P_DOWN);
    if (ss->evb != NULL && store__io_new(ss->evb, on_conn_io, c, &c->io) != 0)
        return PINS_ENOMEM;
    return 0;
}

void store__pg_conn_close(pg_conn *c)
{
    if (c->ss == NULL)
        return; /* never initialised (store__pg_conn_init was not reached) */
    store__io_free(c->io);
    if (c->pg != NULL)
        PQfinish(c->pg);
    store__pool_move((int)c->pstate, -1);
}
