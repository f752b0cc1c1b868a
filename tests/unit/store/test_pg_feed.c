/* tests/unit/store/test_pg_feed.c: the PostgreSQL change feed (store/pg_feed.c) and the
 * notifications the writing statements send (store/pg_sql.c), against a real PostgreSQL.
 *
 * Runs only with PINS_TEST_DATABASE_URL (tests/integration/test_pg_store.py sets it; every test
 * is skipped without it). PINS_TEST_POOLER_URL, when set, is a URL through PgBouncer in
 * transaction mode, for the pooler test. Each test opens two stores on the database, as two
 * replicas would: the writer's and the listener's, whose feed records what it is handed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "store/store.h"
#include "store_fixture.h"

#define SEC       INT64_C(1000000)
#define T0        (INT64_C(1800000000) * SEC)
#define MAX_SEEN  1024
#define WAIT_MS   10000
#define BIG_VALUE 20000 /* bytes: over NOTIFY's 8000-byte payload */
#define MANY      240   /* writes per thread in the ordering test */
#define NTHREADS  2
#define BATCH     12 /* writes queued at once by a writer */

typedef struct seen_change {
    int type;
    int64_t revision, id, version, created_us, updated_us, expires_us;
    int32_t ttl_seconds;
    bool has_ttl, has_expires;
    char tenant[64], key[64], source[32];
    char *value; /* malloc'd */
} seen_change;

/* What a feed handed over, filled on the feed's thread. */
typedef struct feed_rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const char *tenant; /* only changes of this tenant are kept */
    seen_change ch[MAX_SEEN];
    int n;
    int ups, downs; /* state(true), state(false) calls */
} feed_rec;

static const char *database_url(void)
{
    const char *url = getenv("PINS_TEST_DATABASE_URL");
    return url != NULL && url[0] != '\0' ? url : NULL;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

static void on_change(void *arg, const store_change *ch)
{
    feed_rec *r = arg;
    pthread_mutex_lock(&r->mu);
    if (strcmp(ch->pin.tenant_id, r->tenant) == 0 && r->n < MAX_SEEN) {
        seen_change *s = &r->ch[r->n++];
        *s = (seen_change){
            .type = ch->type,
            .revision = ch->pin.revision,
            .id = ch->pin.id,
            .version = ch->pin.version,
            .created_us = ch->pin.created_us,
            .updated_us = ch->pin.updated_us,
            .expires_us = ch->pin.expires_us,
            .ttl_seconds = ch->pin.ttl_seconds,
            .has_ttl = ch->pin.has_ttl,
            .has_expires = ch->pin.has_expires,
        };
        copy_str(s->tenant, sizeof(s->tenant), ch->pin.tenant_id);
        copy_str(s->key, sizeof(s->key), ch->pin.key);
        copy_str(s->source, sizeof(s->source), ch->pin.source);
        s->value = strndup(ch->pin.value_json, ch->pin.value_len);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void on_state(void *arg, bool live)
{
    feed_rec *r = arg;
    pthread_mutex_lock(&r->mu);
    if (live)
        r->ups++;
    else
        r->downs++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void rec_init(feed_rec *r, const char *tenant)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->tenant = tenant;
}

static void rec_free(feed_rec *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->ch[i].value);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

/* Waits until the feed handed n changes and called state(true) ups times. */
static bool rec_wait(feed_rec *r, int n, int ups)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while ((r->n < n || r->ups < ups) && rc == 0)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &until);
    bool ok = r->n >= n && r->ups >= ups;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

/* The writer's fixture and a listening store beside it, on one database. */
typedef struct feed_fx {
    store_fixture *w;
    store *listener;
    feed_rec rec;
} feed_fx;

static int setup(void **state)
{
    if (database_url() == NULL) {
        *state = NULL;
        return 0;
    }
    feed_fx *f = calloc(1, sizeof(*f));
    f->w = store_fixture_new(
        "pins-feed-test",
        (store_options){.database_url = database_url(), .pool_size = 4, .workers = 1});
    rec_init(&f->rec, f->w->tenant);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    feed_fx *f = *state;
    if (f == NULL)
        return 0;
    if (f->listener != NULL) {
        store_feed_stop(f->listener);
        store_close(f->listener);
    }
    rec_free(&f->rec);
    store_fixture_free(f->w);
    free(f);
    return 0;
}

/* Opens the listening store on listen_url (NULL: the database URL) and starts its feed. */
static void listen_on(feed_fx *f, const char *listen_url, bool wait_live)
{
    char err[256] = "";
    store_options o = {.database_url = database_url(),
                       .listen_url = listen_url,
                       .pool_size = 1,
                       .workers = 1,
                       .err = err,
                       .err_cap = sizeof(err)};
    assert_int_equal(store_open(&o, &f->listener), 0);
    assert_int_equal(store_feed_start(f->listener, on_change, on_state, &f->rec), 0);
    if (wait_live) {
        assert_true(rec_wait(&f->rec, 0, 1));
        assert_true(store_feed_live(f->listener));
    }
}

#define SKIP_WITHOUT_DB(f) \
    do {                   \
        if ((f) == NULL) { \
            skip();        \
        }                  \
    } while (0)

typedef struct pin_res {
    int calls, err;
    int64_t revision, version;
} pin_res;

static void on_pin(void *arg, int err, const store_pin *pin, bool created)
{
    (void)created;
    pin_res *r = arg;
    r->calls++;
    r->err = err;
    if (err == 0) {
        r->revision = pin->revision;
        r->version = pin->version;
    }
}

static void on_count(void *arg, int err, int64_t count)
{
    pin_res *r = arg;
    r->calls++;
    r->err = err;
    r->version = count;
}

static void wait_calls(store_fixture *fx, const int *calls, int n)
{
    while (*calls < n) {
        if (event_base_loop(fx->base, EVLOOP_ONCE) != 0)
            break;
    }
    assert_int_equal(*calls, n);
}

static store_upsert_req upsert_req(const char *tenant, const char *key, const char *value, int ttl,
                                   int64_t now)
{
    return (store_upsert_req){.tenant_id = tenant,
                              .key = key,
                              .value_json = value,
                              .value_len = strlen(value),
                              .value_hash = "0123456789abcdef",
                              .source = "api",
                              .has_ttl = ttl > 0,
                              .ttl_seconds = ttl,
                              .now_us = now};
}

static pin_res upsert(store_fixture *fx, const char *key, const char *value, int ttl, int64_t now)
{
    pin_res r = {0};
    store_upsert_req q = upsert_req(fx->tenant, key, value, ttl, now);
    assert_int_equal(store_pin_upsert(fx->ss, &q, on_pin, &r), 0);
    wait_calls(fx, &r.calls, 1);
    assert_int_equal(r.err, 0);
    return r;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_feed_hands_puts_and_deletes_of_another_store_in_order(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    listen_on(f, NULL, true);
    pin_res a = upsert(f->w, "a", "{\"n\":1}", 0, T0);
    pin_res b = upsert(f->w, "a", "{\"n\":2,\"s\":\"x y\"}", 60, T0 + SEC);
    pin_res d = {0};
    const store_delete_req dq = {.tenant_id = f->w->tenant, .key = "a", .now_us = T0 + 2 * SEC};
    assert_int_equal(store_pin_delete(f->w->ss, &dq, on_pin, &d), 0);
    wait_calls(f->w, &d.calls, 1);
    assert_int_equal(d.err, 0);
    assert_int_equal(a.revision + 1, b.revision);
    assert_int_equal(b.revision + 1, d.revision);

    assert_true(rec_wait(&f->rec, 3, 1));
    seen_change *c = f->rec.ch;
    assert_int_equal(c[0].type, STORE_CHANGE_PUT);
    assert_int_equal(c[0].revision, a.revision);
    assert_string_equal(c[0].key, "a");
    assert_string_equal(c[0].value, "{\"n\":1}");
    assert_string_equal(c[0].source, "api");
    assert_int_equal(c[0].version, 1);
    assert_int_equal(c[0].created_us, T0);
    assert_false(c[0].has_ttl);
    assert_false(c[0].has_expires);
    assert_int_equal(c[1].type, STORE_CHANGE_PUT);
    assert_int_equal(c[1].revision, b.revision);
    assert_string_equal(c[1].value, "{\"n\":2,\"s\":\"x y\"}");
    assert_int_equal(c[1].version, 2);
    assert_int_equal(c[1].updated_us, T0 + SEC);
    assert_true(c[1].has_ttl);
    assert_int_equal(c[1].ttl_seconds, 60);
    assert_int_equal(c[1].expires_us, T0 + 61 * SEC);
    assert_int_equal(c[1].id, c[0].id);
    /* A delete hands the pin as it was, with the delete's revision. */
    assert_int_equal(c[2].type, STORE_CHANGE_DELETE);
    assert_int_equal(c[2].revision, d.revision);
    assert_string_equal(c[2].value, "{\"n\":2,\"s\":\"x y\"}");
    assert_int_equal(c[2].version, 2);
    assert_int_equal(f->rec.downs, 0);
}

static void test_feed_reads_a_change_too_big_to_notify_by_its_seq(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    listen_on(f, NULL, true);
    char *big = malloc(BIG_VALUE + 16);
    int n = snprintf(big, 16, "{\"b\":\"");
    memset(big + n, 'x', BIG_VALUE);
    memcpy(big + n + BIG_VALUE, "\"}", 3);
    pin_res a = upsert(f->w, "big", big, 0, T0);
    pin_res b = upsert(f->w, "small", "{}", 0, T0);
    assert_true(rec_wait(&f->rec, 2, 1));
    /* The big one first: it was read back before the next notification was looked at. */
    assert_int_equal(f->rec.ch[0].revision, a.revision);
    assert_string_equal(f->rec.ch[0].key, "big");
    assert_string_equal(f->rec.ch[0].value, big);
    assert_int_equal(f->rec.ch[1].revision, b.revision);
    assert_string_equal(f->rec.ch[1].value, "{}");
    free(big);
}

static void test_upsert_chain_takes_one_revision_per_call(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    listen_on(f, NULL, true);
    /* Queued in one loop iteration: the scheduler runs them as one statement. */
    pin_res r[4] = {{0}};
    char vals[4][16];
    store_upsert_req q[4];
    for (int i = 0; i < 4; i++) {
        snprintf(vals[i], sizeof(vals[i]), "{\"i\":%d}", i);
        q[i] = upsert_req(f->w->tenant, "chained", vals[i], 0, T0 + i);
        assert_int_equal(store_pin_upsert(f->w->ss, &q[i], on_pin, &r[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        wait_calls(f->w, &r[i].calls, 1);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].err, 0);
        assert_int_equal(r[i].version, i + 1);
        if (i > 0)
            assert_int_equal(r[i].revision, r[i - 1].revision + 1);
    }
    assert_true(rec_wait(&f->rec, 4, 1));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(f->rec.ch[i].revision, r[i].revision);
        assert_int_equal(f->rec.ch[i].version, i + 1);
        assert_string_equal(f->rec.ch[i].value, vals[i]);
    }
}

static void test_sweep_and_cleanup_hand_expire_changes(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    listen_on(f, NULL, true);
    /* Expiries far in the past of every other test's pins: this sweep reclaims ours first. */
    int64_t t = INT64_C(1000000000) * SEC;
    pin_res a = upsert(f->w, "e1", "{\"e\":1}", 1, t);
    pin_res b = upsert(f->w, "e2", "{\"e\":2}", 2, t);
    pin_res c = upsert(f->w, "e3", "{\"e\":3}", 3, t);
    pin_res s = {0};
    assert_int_equal(store_pin_sweep(f->w->ss, t + 2 * SEC, 100, on_count, &s), 0);
    wait_calls(f->w, &s.calls, 1);
    assert_int_equal(s.err, 0);
    assert_true(s.version >= 2); /* e1 and e2 (and whatever else expired by then) */
    pin_res k = {0};
    assert_int_equal(store_pin_cleanup(f->w->ss, f->w->tenant, T0, on_count, &k), 0);
    wait_calls(f->w, &k.calls, 1);
    assert_int_equal(k.err, 0);
    assert_int_equal(k.version, 1); /* e3 */
    assert_true(rec_wait(&f->rec, 6, 1));
    const char *keys[] = {"e1", "e2", "e3"};
    for (int i = 0; i < 3; i++) {
        seen_change *e = &f->rec.ch[3 + i];
        assert_int_equal(e->type, STORE_CHANGE_EXPIRE);
        assert_string_equal(e->key, keys[i]);
        assert_int_equal(e->revision, c.revision + 1 + i);
        assert_int_equal(e->version, 1);
        assert_true(e->has_expires);
    }
    assert_int_equal(a.revision + 2, c.revision);
    assert_int_equal(b.revision + 1, c.revision);
}

/* Kills the feed's backend from another connection. */
static void terminate_feed_backend(void)
{
    PGconn *pg = PQconnectdb(database_url());
    assert_int_equal(PQstatus(pg), CONNECTION_OK);
    PGresult *res = PQexec(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE application_name = 'pinsd-feed'");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_true(PQntuples(res) >= 1);
    PQclear(res);
    PQfinish(pg);
}

static void test_feed_reports_a_lost_connection_and_listens_again(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    listen_on(f, NULL, true);
    terminate_feed_backend();
    assert_true(rec_wait(&f->rec, 0, 2)); /* down, then up again */
    assert_int_equal(f->rec.downs, 1);
    assert_true(store_feed_live(f->listener));
    pin_res a = upsert(f->w, "after", "{}", 0, T0);
    assert_true(rec_wait(&f->rec, 1, 2));
    assert_int_equal(f->rec.ch[0].revision, a.revision);
}

static void test_feed_through_a_pooler_stays_down(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    const char *pooler = getenv("PINS_TEST_POOLER_URL");
    if (pooler == NULL || pooler[0] == '\0')
        skip();
    listen_on(f, pooler, false);
    usleep(1500 * 1000);
    assert_false(store_feed_live(f->listener));
    assert_int_equal(f->rec.ups, 0);
}

static void test_feed_start_refuses_an_unparsable_url(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    store_options o = {.database_url = database_url(),
                       .listen_url = "postgresql://[nope",
                       .pool_size = 1,
                       .workers = 1};
    assert_int_equal(store_open(&o, &f->listener), 0);
    assert_int_equal(store_feed_start(f->listener, on_change, on_state, &f->rec), PINS_ESTORE);
    assert_false(store_feed_live(f->listener));
}

typedef struct writer_arg {
    const char *tenant;
    int idx;
    int errors;
    int changes; /* calls that changed a pin */
    atomic_bool *done;
} writer_arg;

/* Sweeps (and cleans up w->tenant) at a clock past every writer's TTL until *w->done: its
 * statements lock revision rows while the writers' segments do. */
static void *sweeper_main(void *arg)
{
    writer_arg *w = arg;
    store *s = NULL;
    store_session *ss = NULL;
    store_options o = {.database_url = database_url(), .pool_size = 1, .workers = 1};
    if (store_open(&o, &s) != 0 || store_session_new(s, NULL, &ss) != 0) {
        w->errors = 1;
        return NULL;
    }
    for (int i = 0; !atomic_load(w->done); i++) {
        pin_res r = {0};
        int rv = i % 3 == 2 ? store_pin_cleanup(ss, w->tenant, T0 + 10 * SEC, on_count, &r)
                            : store_pin_sweep(ss, T0 + 10 * SEC, 4, on_count, &r);
        if (rv != 0 || r.calls != 1 || r.err != 0) {
            fprintf(stderr, "sweep failed: %d %d: %s\n", rv, r.err, store_session_last_error(ss));
            w->errors++;
        } else
            w->changes += (int)r.version;
    }
    store_session_free(ss);
    store_close(s);
    return NULL;
}

/* MANY upserts and deletes on a store of its own (another replica), queued BATCH at a time on
 * its loop so that they go as multi-statement write segments: both writers' segments touch the
 * same keys of one tenant, the case where a wrong lock order deadlocks. */
static void *writer_main(void *arg)
{
    writer_arg *w = arg;
    store *s = NULL;
    store_session *ss = NULL;
    struct event_base *base = event_base_new();
    store_options o = {.database_url = database_url(), .pool_size = 2, .workers = 1};
    if (base == NULL || store_open(&o, &s) != 0 || store_session_new(s, base, &ss) != 0) {
        w->errors = MANY;
        return NULL;
    }
    for (int i = 0; i < MANY; i += BATCH) {
        pin_res r[BATCH] = {{0}};
        store_upsert_req q[BATCH];
        store_delete_req dq[BATCH];
        char keys[BATCH][32];
        for (int j = 0; j < BATCH; j++) {
            snprintf(keys[j], sizeof(keys[j]), "k%d", (i + j * 3 + w->idx) % 7);
            q[j] = upsert_req(w->tenant, keys[j], "{}", j % 2 == 0 ? 1 : 0, T0 + i);
            dq[j] = (store_delete_req){.tenant_id = w->tenant, .key = keys[j], .now_us = T0 + i};
            if ((j % 4 == 3 ? store_pin_delete(ss, &dq[j], on_pin, &r[j])
                            : store_pin_upsert(ss, &q[j], on_pin, &r[j])) != 0)
                w->errors++;
        }
        for (int j = 0; j < BATCH; j++) {
            while (r[j].calls == 0 && event_base_loop(base, EVLOOP_ONCE) == 0)
                ;
            /* A delete may find its key gone (the other writer deleted it first). */
            if (r[j].calls != 1 || (r[j].err != 0 && r[j].err != PINS_ENOT_FOUND)) {
                fprintf(stderr, "write failed: %d: %s\n", r[j].err, store_session_last_error(ss));
                w->errors++;
            }
            if (r[j].err == 0)
                w->changes++;
        }
    }
    store_session_free(ss);
    store_close(s);
    event_base_free(base);
    return NULL;
}

typedef struct hist_res {
    int calls, err, n;
    int64_t latest;
    int64_t rev[MAX_SEEN];
    int type[MAX_SEEN];
} hist_res;

static void on_history(void *arg, int err, const store_change *chs, size_t n, int64_t revision)
{
    hist_res *h = arg;
    h->calls++;
    h->err = err;
    h->latest = revision;
    for (size_t i = 0; i < n && i < MAX_SEEN; i++) {
        h->rev[i] = chs[i].pin.revision;
        h->type[i] = chs[i].type;
    }
    h->n = (int)n;
}

static void test_concurrent_writers_notify_in_revision_order(void **state)
{
    feed_fx *f = *state;
    SKIP_WITHOUT_DB(f);
    listen_on(f, NULL, true);
    /* The tenant's revision row exists before the writers race: none of their calls, even one
     * that loses an insert race and runs again, skips a revision (only a tenant's very first
     * changes may). */
    pin_res seed = upsert(f->w, "seed", "{}", 0, T0);
    pthread_t th[NTHREADS], sweeper;
    writer_arg wa[NTHREADS];
    atomic_bool done = false;
    writer_arg sw = {.tenant = f->w->tenant, .done = &done};
    assert_int_equal(pthread_create(&sweeper, NULL, sweeper_main, &sw), 0);
    for (int i = 0; i < NTHREADS; i++) {
        wa[i] = (writer_arg){.tenant = f->w->tenant, .idx = i};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &wa[i]), 0);
    }
    int changes = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(wa[i].errors, 0);
        changes += wa[i].changes;
    }
    atomic_store(&done, true);
    pthread_join(sweeper, NULL);
    assert_int_equal(sw.errors, 0);
    int written = changes;
    changes += sw.changes;
    assert_true(written > 0);
    /* The feed handed the tenant's history, as store_changes_since reads it, in its order. */
    hist_res h = {0};
    assert_int_equal(
        store_changes_since(f->w->ss, f->w->tenant, "", 0, STORE_CHANGES_MAX, on_history, &h), 0);
    wait_calls(f->w, &h.calls, 1);
    assert_int_equal(h.err, 0);
    /* The seed, the writers' changes and those of the sweeper (which counts other tenants'). */
    assert_true(h.n > written && h.n <= changes + 1 && h.n < MAX_SEEN);
    assert_true(rec_wait(&f->rec, h.n, 1));
    assert_int_equal(f->rec.n, h.n);
    assert_int_equal(f->rec.ch[0].revision, seed.revision);
    assert_int_equal(h.latest, f->rec.ch[h.n - 1].revision);
    for (int i = 0; i < f->rec.n; i++) {
        assert_int_equal(f->rec.ch[i].revision, h.rev[i]);
        assert_int_equal(f->rec.ch[i].type, h.type[i]);
        if (i > 0)
            assert_int_equal(f->rec.ch[i].revision, f->rec.ch[i - 1].revision + 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_feed_hands_puts_and_deletes_of_another_store_in_order),
        T(test_feed_reads_a_change_too_big_to_notify_by_its_seq),
        T(test_upsert_chain_takes_one_revision_per_call),
        T(test_sweep_and_cleanup_hand_expire_changes),
        T(test_feed_reports_a_lost_connection_and_listens_again),
        T(test_feed_through_a_pooler_stays_down),
        T(test_feed_start_refuses_an_unparsable_url),
        T(test_concurrent_writers_notify_in_revision_order),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
