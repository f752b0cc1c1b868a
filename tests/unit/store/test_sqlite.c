/* tests/unit/store/test_sqlite.c: what the SQLite backend (store/sqlite.c) adds behind store.h:
 * group commit of the writes queued in one loop iteration, the process-wide write mutex and the
 * read cache with its packed values. The backend-agnostic behaviour is in test_store.c; these
 * tests look at the backend's counters (store_sqlite_session_stats) and use its test hooks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/pbstruct.h"
#include "common/timeutil.h"
#include "fake_clock.h"
#include "scrape.h"
#include "store_fixture.h"
#include "store/store.h"
#include "store/sqlite.h"

#define SEC         INT64_C(1000000)
#define T0          (INT64_C(1800000000) * SEC)
#define NO_TTL      (-1)
#define ANY_VERSION (-1)
#define TENANT      "t"

typedef store_fixture fixture;

typedef struct pin_result {
    int calls;
    int seq; /* order among the callbacks of a test */
    int err;
    bool created;
    char detail[512]; /* store_session_last_error() (longer than the store keeps) */
    int64_t id;
    int64_t version;
    int64_t revision;
    bool from_cache;
    char value[256];
    uint8_t pb[256];
    size_t pb_len;
    bool has_pb;
} pin_result;

static int seq_counter;

/* ---- fixture ------------------------------------------------------------------------------- */

static int setup(void **state)
{
    *state = store_fixture_new("pins-sqlite-test", (store_options){0});
    seq_counter = 0;
    return 0;
}

static int teardown(void **state)
{
    store_fixture_free(*state);
    return 0;
}

static store_sqlite_stats stats_of(store_session *ss)
{
    store_sqlite_stats st;
    assert_int_equal(store_sqlite_session_stats(ss, &st), 0);
    return st;
}

static store_sqlite_stats stats(fixture *fx)
{
    store_sqlite_stats st;
    assert_int_equal(store_sqlite_session_stats(fx->ss, &st), 0);
    return st;
}

/* One pass of the loop: the commit of what was queued runs in it. */
static void loop_once(fixture *fx)
{
    assert_true(event_base_loop(fx->base, EVLOOP_NONBLOCK) >= 0);
}

/* ---- callbacks and requests ---------------------------------------------------------------- */

static void on_pin(void *arg, int err, const store_pin *pin, bool created, store_session *ss)
{
    pin_result *r = arg;
    r->calls++;
    r->seq = ++seq_counter;
    r->err = err;
    r->created = created;
    snprintf(r->detail, sizeof(r->detail), "%s", ss != NULL ? store_session_last_error(ss) : "");
    if (err != 0) {
        assert_null(pin);
        return;
    }
    r->id = pin->id;
    r->version = pin->version;
    r->revision = pin->revision;
    r->from_cache = pin->from_cache;
    snprintf(r->value, sizeof(r->value), "%s", pin->value_json);
    r->has_pb = pin->value_pb != NULL;
    r->pb_len = pin->value_pb_len;
    if (pin->value_pb != NULL) {
        assert_true(pin->value_pb_len <= sizeof(r->pb));
        memcpy(r->pb, pin->value_pb, pin->value_pb_len);
    } else {
        assert_int_equal(pin->value_pb_len, 0);
    }
}

static store_session *cb_session; /* whose last error on_pin_cb records */

static void on_pin_cb(void *arg, int err, const store_pin *pin, bool created)
{
    on_pin(arg, err, pin, created, cb_session);
}

static store_upsert_req upsert_req(const char *key, const char *value, int ttl, int64_t expected,
                                   int64_t now)
{
    return (store_upsert_req){
        .tenant_id = TENANT,
        .key = key,
        .value_json = value,
        .value_len = strlen(value),
        .value_hash = "0000000000000000",
        .source = "api",
        .has_ttl = ttl != NO_TTL,
        .ttl_seconds = ttl != NO_TTL ? ttl : 0,
        .has_expected_version = expected != ANY_VERSION,
        .expected_version = expected != ANY_VERSION ? expected : 0,
        .now_us = now,
        .audit = {.request_id = "req"},
    };
}

/* Queues an upsert on ss; the request is built on the stack and gone when this returns. */
static void queue_upsert(store_session *ss, const char *key, const char *value, int64_t expected,
                         pin_result *r)
{
    char key_copy[64];
    char value_copy[128];
    snprintf(key_copy, sizeof(key_copy), "%s", key);
    snprintf(value_copy, sizeof(value_copy), "%s", value);
    store_upsert_req req = upsert_req(key_copy, value_copy, NO_TTL, expected, T0);
    cb_session = ss;
    assert_int_equal(store_pin_upsert(ss, &req, on_pin_cb, r), 0);
    memset(key_copy, 'X', sizeof(key_copy) - 1); /* the store must have copied them */
    memset(value_copy, 'X', sizeof(value_copy) - 1);
}

static void queue_delete(store_session *ss, const char *key, int64_t expected, pin_result *r)
{
    const store_delete_req req = {
        .tenant_id = TENANT,
        .key = key,
        .has_expected_version = expected != ANY_VERSION,
        .expected_version = expected != ANY_VERSION ? expected : 0,
        .now_us = T0,
    };
    cb_session = ss;
    assert_int_equal(store_pin_delete(ss, &req, on_pin_cb, r), 0);
}

/* Upserts and waits for the callback. */
static int upsert(fixture *fx, const char *key, const char *value, int ttl, int64_t now,
                  pin_result *r)
{
    pin_result local = {0};
    pin_result *res = r != NULL ? r : &local;
    memset(res, 0, sizeof(*res));
    store_upsert_req req = upsert_req(key, value, ttl, ANY_VERSION, now);
    cb_session = fx->ss;
    assert_int_equal(store_pin_upsert(fx->ss, &req, on_pin_cb, res), 0);
    while (res->calls == 0)
        loop_once(fx);
    return res->err;
}

static int get(fixture *fx, const char *key, int64_t now, pin_result *r)
{
    pin_result local = {0};
    pin_result *res = r != NULL ? r : &local;
    memset(res, 0, sizeof(*res));
    cb_session = fx->ss;
    assert_int_equal(store_pin_get(fx->ss, TENANT, key, now, on_pin_cb, res), 0);
    assert_int_equal(res->calls, 1); /* reads complete at once */
    return res->err;
}

static void on_count(void *arg, int err, int64_t count)
{
    assert_int_equal(err, 0);
    *(int64_t *)arg = count;
}

typedef struct counted {
    int calls;
    int err;
    int64_t count;
} counted;

static void on_counted(void *arg, int err, int64_t count)
{
    counted *c = arg;
    c->calls++;
    c->err = err;
    c->count = count;
}

/* protobuf-c's packing of json as a google.protobuf.Struct. */
static size_t pack_json(const char *json, uint8_t *out, size_t cap)
{
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_from_json(a, json, strlen(json), 64, &s), 0);
    size_t n = protobuf_c_message_get_packed_size(&s->base);
    assert_true(n <= cap);
    protobuf_c_message_pack(&s->base, out);
    pins_arena_free(a);
    return n;
}

/* ---- group commit -------------------------------------------------------------------------- */

typedef struct commit_probe {
    fixture *fx;
    int64_t rows_seen; /* rows of TENANT committed when the first callback ran */
    pin_result r;
} commit_probe;

static void on_first(void *arg, int err, const store_pin *pin, bool created)
{
    commit_probe *p = arg;
    on_pin(&p->r, err, pin, created, NULL);
    sqlite3 *db = store_fixture_open_raw(p->fx); /* another connection sees only committed rows */
    p->rows_seen =
        store_fixture_raw_int(db, "SELECT count(*) FROM memory_pins WHERE tenant_id = 't'");
    sqlite3_close(db);
}

static void test_sqlite_upserts_queued_in_one_iteration_commit_once(void **state)
{
    fixture *fx = *state;
    enum { N = 50 };
    static pin_result r[N];
    memset(r, 0, sizeof(r));
    store_sqlite_stats before = stats(fx);
    commit_probe probe = {.fx = fx};
    store_upsert_req first = upsert_req("k-first", "{}", NO_TTL, ANY_VERSION, T0);
    assert_int_equal(store_pin_upsert(fx->ss, &first, on_first, &probe), 0);
    char key[16];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        queue_upsert(fx->ss, key, "{\"n\":1}", ANY_VERSION, &r[i]);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(r[i].calls, 0); /* nothing acknowledged before the commit */
    assert_int_equal(probe.r.calls, 0);

    loop_once(fx);
    store_sqlite_stats after = stats(fx);
    assert_int_equal(after.batches - before.batches, 1);
    assert_int_equal(after.write_commits - before.write_commits, 1);
    assert_int_equal(after.batched_ops - before.batched_ops, N + 1);
    assert_int_equal(probe.r.calls, 1);
    assert_int_equal(probe.r.err, 0);
    assert_int_equal(probe.rows_seen, N + 1); /* every row committed before any callback */
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, 0);
        assert_true(r[i].created);
        assert_int_equal(r[i].version, 1);
        assert_string_equal(r[i].value, "{\"n\":1}");
        assert_int_equal(r[i].seq, i + 2); /* in queue order, after the first */
    }
    pin_result g;
    assert_int_equal(get(fx, "k49", T0, &g), 0);
    assert_int_equal(g.version, 1);
}

static void test_sqlite_ops_on_one_key_in_a_batch_see_each_other(void **state)
{
    fixture *fx = *state;
    pin_result r[7];
    memset(r, 0, sizeof(r));
    queue_upsert(fx->ss, "k", "{\"v\":1}", 0, &r[0]);           /* creates version 1 */
    queue_upsert(fx->ss, "k", "{\"v\":9}", 0, &r[1]);           /* create-only: exists now */
    queue_upsert(fx->ss, "k", "{\"v\":2}", 1, &r[2]);           /* version 2 */
    queue_delete(fx->ss, "k", 1, &r[3]);                        /* stale version */
    queue_delete(fx->ss, "k", 2, &r[4]);                        /* deletes version 2 */
    queue_upsert(fx->ss, "k", "{\"v\":3}", ANY_VERSION, &r[5]); /* a new pin */
    queue_delete(fx->ss, "missing", ANY_VERSION, &r[6]);
    store_sqlite_stats before = stats(fx);
    loop_once(fx);
    assert_int_equal(stats(fx).write_commits - before.write_commits, 1);

    assert_int_equal(r[0].err, 0);
    assert_true(r[0].created);
    assert_int_equal(r[0].version, 1);
    assert_int_equal(r[1].err, PINS_EALREADY_EXISTS);
    assert_string_equal(r[1].detail, ""); /* a domain outcome has no detail */
    assert_int_equal(r[2].err, 0);
    assert_false(r[2].created);
    assert_int_equal(r[2].version, 2);
    assert_int_equal(r[2].id, r[0].id);
    assert_int_equal(r[3].err, PINS_EABORTED);
    assert_int_equal(r[4].err, 0);
    assert_int_equal(r[4].version, 2);
    assert_string_equal(r[4].value, "{\"v\":2}");
    assert_int_equal(r[5].err, 0);
    assert_true(r[5].created);
    assert_int_equal(r[5].version, 1);
    assert_int_equal(r[6].err, PINS_ENOT_FOUND);
    for (int i = 0; i < 7; i++)
        assert_int_equal(r[i].seq, i + 1);

    pin_result g;
    assert_int_equal(get(fx, "k", T0, &g), 0);
    assert_string_equal(g.value, "{\"v\":3}");
    assert_int_equal(g.version, 1);
    sqlite3 *db = store_fixture_open_raw(fx);
    /* Audit rows only for the four changes. */
    assert_int_equal(
        store_fixture_raw_int(db, "SELECT count(*) FROM memory_audit WHERE tenant_id = 't'"), 4);
    sqlite3_close(db);
}

static void test_sqlite_batch_that_cannot_begin_acknowledges_nothing(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "k0", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    assert_int_equal(store_sqlite_set_busy_timeout(fx->ss, 50), 0);
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    pin_result r[3];
    memset(r, 0, sizeof(r));
    queue_upsert(fx->ss, "k0", "{\"v\":2}", ANY_VERSION, &r[0]);
    queue_upsert(fx->ss, "k1", "{}", ANY_VERSION, &r[1]);
    queue_delete(fx->ss, "k0", ANY_VERSION, &r[2]);
    double busy = scrape_value("store_errors_total{kind=\"busy\"}", -1);
    double io = scrape_value("store_errors_total{kind=\"io\"}", -1);
    assert_true(busy >= 0 && io >= 0);
    loop_once(fx);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, PINS_ESTORE);
        assert_non_null(strstr(r[i].detail, "locked"));
    }
    /* One failed BEGIN, counted as busy; the connection is idle again. */
    assert_true(scrape_value("store_errors_total{kind=\"busy\"}", -1) == busy + 1);
    assert_true(scrape_value("store_errors_total{kind=\"io\"}", -1) == io);
    assert_true(scrape_value("store_pool_connections{state=\"busy\"}", -1) == 0);
    assert_true(scrape_value("store_pool_connections{state=\"idle\"}", -1) >= 1);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    pin_result g;
    assert_int_equal(get(fx, "k0", T0, &g), 0);
    assert_string_equal(g.value, "{\"v\":1}");
    assert_int_equal(get(fx, "k1", T0, NULL), PINS_ENOT_FOUND);
}

static void test_sqlite_batch_whose_commit_fails_acknowledges_nothing(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "k0", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    assert_int_equal(upsert(fx, "gone", "{}", NO_TTL, T0, NULL), 0);
    assert_int_equal(get(fx, "k0", T0, NULL), 0); /* cached */
    sqlite3 *db = store_fixture_open_raw(fx);
    int64_t audits = store_fixture_raw_int(db, "SELECT count(*) FROM memory_audit");

    pin_result r[3];
    memset(r, 0, sizeof(r));
    queue_upsert(fx->ss, "k0", "{\"v\":2}", ANY_VERSION, &r[0]);
    queue_upsert(fx->ss, "k9", "{}", ANY_VERSION, &r[1]);
    queue_delete(fx->ss, "gone", ANY_VERSION, &r[2]);
    assert_int_equal(store_sqlite_fail_next_commit(fx->ss, SQLITE_IOERR_WRITE), 0);
    store_sqlite_stats before = stats(fx);
    double io = scrape_value("store_errors_total{kind=\"io\"}", -1);
    loop_once(fx);
    assert_true(scrape_value("store_errors_total{kind=\"io\"}", -1) == io + 1);
    assert_int_equal(stats(fx).write_commits, before.write_commits);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, PINS_ESTORE);
        assert_non_null(strstr(r[i].detail, "commit"));
    }
    /* Nothing reached the file, and the cache still holds the committed rows. */
    assert_int_equal(store_fixture_raw_int(db, "SELECT version FROM memory_pins WHERE key = 'k0'"),
                     1);
    assert_int_equal(
        store_fixture_raw_int(db, "SELECT count(*) FROM memory_pins WHERE key IN ('k9', 'gone')"),
        1);
    assert_int_equal(store_fixture_raw_int(db, "SELECT count(*) FROM memory_audit"), audits);
    sqlite3_close(db);
    pin_result g;
    assert_int_equal(get(fx, "k0", T0, &g), 0);
    assert_string_equal(g.value, "{\"v\":1}");
    assert_int_equal(get(fx, "k9", T0, NULL), PINS_ENOT_FOUND);
    assert_int_equal(get(fx, "gone", T0, NULL), 0);

    /* The session goes on: the next batch commits. */
    assert_int_equal(upsert(fx, "k0", "{\"v\":3}", NO_TTL, T0, &g), 0);
    assert_int_equal(g.version, 2);
}

static void test_sqlite_full_batch_commits_without_waiting_for_the_loop(void **state)
{
    fixture *fx = *state;
    enum { N = STORE_SQLITE_BATCH_MAX_OPS + 6 };
    pin_result *r = calloc(N, sizeof(*r));
    assert_non_null(r);
    store_sqlite_stats before = stats(fx);
    char key[16];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        queue_upsert(fx->ss, key, "{}", ANY_VERSION, &r[i]);
        if (i == STORE_SQLITE_BATCH_MAX_OPS - 1)
            assert_int_equal(r[0].calls, 1); /* the full batch committed at once */
    }
    assert_int_equal(r[N - 1].calls, 0);
    loop_once(fx);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].err, 0);
    }
    store_sqlite_stats after = stats(fx);
    assert_int_equal(after.batches - before.batches, 2);
    assert_int_equal(after.write_commits - before.write_commits, 2);
    free(r);
}

static void test_sqlite_freeing_the_session_cancels_queued_writes(void **state)
{
    fixture *fx = *state;
    pin_result r[2];
    memset(r, 0, sizeof(r));
    queue_upsert(fx->ss, "a", "{}", ANY_VERSION, &r[0]);
    queue_delete(fx->ss, "b", ANY_VERSION, &r[1]);
    cb_session = NULL;
    store_session_free(fx->ss);
    fx->ss = NULL;
    assert_int_equal(r[0].calls, 1);
    assert_int_equal(r[0].err, PINS_ECANCELLED);
    assert_int_equal(r[1].calls, 1);
    assert_int_equal(r[1].err, PINS_ECANCELLED);
    assert_int_equal(store_session_new(fx->s, fx->base, &fx->ss), 0);
    loop_once(fx); /* the old session's commit event is gone with it */
    assert_int_equal(get(fx, "a", T0, NULL), PINS_ENOT_FOUND);
}

static void test_sqlite_session_without_loop_commits_each_write(void **state)
{
    fixture *fx = *state;
    store_session *ss = NULL;
    assert_int_equal(store_session_new(fx->s, NULL, &ss), 0);
    pin_result r = {0};
    queue_upsert(ss, "sync", "{}", ANY_VERSION, &r);
    assert_int_equal(r.calls, 1); /* before store_pin_upsert returned */
    assert_int_equal(r.err, 0);
    store_sqlite_stats st;
    assert_int_equal(store_sqlite_session_stats(ss, &st), 0);
    assert_int_equal(st.write_commits, 1);
    store_session_free(ss);
}

/* Commits leave the WAL to the checkpointer's thread, which keeps it from growing without end
 * under a steady stream of commits: the sessions never checkpoint themselves (their hook replaced
 * SQLite's automatic checkpoints), and the 10000 commits below write about 70000 frames (270 MB)
 * that would all stay in the WAL. The checkpointer copies them while the commits go on, and the
 * WAL is rewound once its passes catch up (under the write mutex at the latest when the WAL holds
 * STORE_SQLITE_CKPT_LOCKED_FRAMES frames). */
static void test_sqlite_checkpointer_keeps_the_wal_bounded(void **state)
{
    fixture *fx = *state;
    store_session *ss = NULL;
    assert_int_equal(store_session_new(fx->s, NULL, &ss), 0);
    char path[4096];
    snprintf(path, sizeof(path), "%s/pins.db-wal", fx->opts.data_dir);
    char key[32];
    struct stat sb;
    off_t largest = 0;
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "k%d", i % 500);
        pin_result r = {0};
        queue_upsert(ss, key, "{\"a\":1}", ANY_VERSION, &r);
        assert_int_equal(r.err, 0);
        if (stat(path, &sb) == 0 && sb.st_size > largest)
            largest = sb.st_size;
    }
    store_sqlite_stats st = stats_of(ss);
    assert_true(st.checkpoints > 0);
    assert_true(largest < (off_t)STORE_SQLITE_CKPT_LOCKED_FRAMES * 4096 * 2);
    store_session_free(ss);
}

typedef struct killed_child {
    int calls;
    int failures;
} killed_child;

static void on_child_pin(void *arg, int err, const store_pin *pin, bool created)
{
    killed_child *k = arg;
    k->calls++;
    if (err != 0)
        k->failures++;
}

static void test_sqlite_group_committed_write_survives_kill(void **state)
{
    fixture *fx = *state;
    pid_t pid = store_fixture_fork(fx);
    if (pid == 0) {
        struct event_base *base = event_base_new();
        store *s = NULL;
        store_session *ss = NULL;
        if (base == NULL || store_open(&fx->opts, &s) != 0 || store_session_new(s, base, &ss) != 0)
            _exit(1);
        killed_child k = {0};
        const char *keys[] = {"a", "b", "c"};
        for (int i = 0; i < 3; i++) {
            store_upsert_req req = upsert_req(keys[i], "{\"k\":9}", NO_TTL, ANY_VERSION, T0);
            if (store_pin_upsert(ss, &req, on_child_pin, &k) != 0)
                _exit(2);
        }
        while (k.calls < 3)
            event_base_loop(base, EVLOOP_ONCE);
        store_sqlite_stats st;
        if (k.failures != 0 || store_sqlite_session_stats(ss, &st) != 0 || st.write_commits != 1)
            _exit(3);
        kill(getpid(), SIGKILL);
        _exit(4);
    }
    store_fixture_reopen_after_kill(fx, pid);
    pin_result r;
    assert_int_equal(get(fx, "a", T0, &r), 0);
    assert_string_equal(r.value, "{\"k\":9}");
    assert_int_equal(get(fx, "c", T0, NULL), 0);
}

/* ---- cache --------------------------------------------------------------------------------- */

static void test_sqlite_cache_answers_get_without_sqlite(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "k", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    store_sqlite_stats before = stats(fx);
    pin_result r;
    assert_int_equal(get(fx, "k", T0, &r), 0);
    assert_string_equal(r.value, "{\"v\":1}");
    store_sqlite_stats after = stats(fx);
    assert_int_equal(after.cache_hits - before.cache_hits, 1);
    assert_int_equal(after.cache_misses, before.cache_misses);

    /* Proof that SQLite is not read: a change behind the store's back is not seen. */
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(
        sqlite3_exec(db, "UPDATE memory_pins SET value = '{\"v\":7}'", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(get(fx, "k", T0, &r), 0);
    assert_string_equal(r.value, "{\"v\":1}");

    /* A new store starts cold: a miss reads SQLite and fills, the next get hits. */
    store_fixture_close(fx);
    store_fixture_open(fx);
    assert_int_equal(stats(fx).cache_entries, 0);
    assert_int_equal(get(fx, "k", T0, &r), 0);
    assert_string_equal(r.value, "{\"v\":7}");
    assert_int_equal(get(fx, "k", T0, &r), 0);
    after = stats(fx);
    assert_int_equal(after.cache_misses, 1);
    assert_int_equal(after.cache_fills, 1);
    assert_int_equal(after.cache_hits, 1);
    assert_int_equal(after.cache_entries, 1);
    /* A miss on an absent pin caches nothing. */
    assert_int_equal(get(fx, "none", T0, NULL), PINS_ENOT_FOUND);
    assert_int_equal(stats(fx).cache_entries, 1);
}

static void test_sqlite_cache_follows_every_write(void **state)
{
    fixture *fx = *state;
    pin_result r;
    assert_int_equal(upsert(fx, "k", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    assert_int_equal(upsert(fx, "k", "{\"v\":2}", NO_TTL, T0 + 1, NULL), 0);
    store_sqlite_stats before = stats(fx);
    assert_int_equal(get(fx, "k", T0 + 2, &r), 0);
    assert_string_equal(r.value, "{\"v\":2}");
    assert_int_equal(r.version, 2);
    assert_int_equal(stats(fx).cache_hits - before.cache_hits, 1);

    pin_result d = {0};
    queue_delete(fx->ss, "k", ANY_VERSION, &d);
    loop_once(fx);
    assert_int_equal(d.err, 0);
    assert_int_equal(get(fx, "k", T0 + 3, NULL), PINS_ENOT_FOUND);

    /* Cleanup and sweep: asked at a later time than the read, so only the cache could still
     * answer with the deleted rows. */
    assert_int_equal(upsert(fx, "e", "{}", 1, T0, NULL), 0);
    assert_int_equal(upsert(fx, "s", "{}", 1, T0, NULL), 0);
    assert_int_equal(upsert(fx, "keep", "{}", NO_TTL, T0, NULL), 0);
    assert_int_equal(get(fx, "e", T0, NULL), 0);
    int64_t n = -1;
    assert_int_equal(store_pin_cleanup(fx->ss, "other-tenant", T0 + 10 * SEC, on_count, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(get(fx, "e", T0, NULL), 0);
    assert_int_equal(store_pin_cleanup(fx->ss, TENANT, T0 + 10 * SEC, on_count, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(get(fx, "e", T0, NULL), PINS_ENOT_FOUND);
    assert_int_equal(get(fx, "keep", T0, NULL), 0);

    assert_int_equal(upsert(fx, "s", "{}", 1, T0, NULL), 0);
    assert_int_equal(get(fx, "s", T0, NULL), 0);
    assert_int_equal(store_pin_sweep(fx->ss, T0 + 10 * SEC, 100, on_count, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(get(fx, "s", T0, NULL), PINS_ENOT_FOUND);
    assert_int_equal(get(fx, "keep", T0, NULL), 0);
}

static void test_sqlite_cache_drops_expired_entries(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "e", "{}", 2, T0, NULL), 0);
    assert_int_equal(get(fx, "e", T0 + SEC, NULL), 0);
    store_sqlite_stats before = stats(fx);
    assert_int_equal(before.cache_entries, 1);
    assert_int_equal(get(fx, "e", T0 + 2 * SEC, NULL), PINS_ENOT_FOUND);
    store_sqlite_stats after = stats(fx);
    assert_int_equal(after.cache_hits - before.cache_hits, 1); /* no SQLite read */
    assert_int_equal(after.cache_entries, 0);
    /* Still in the file (until a sweep): a read at an earlier time finds it and caches it. */
    assert_int_equal(get(fx, "e", T0 + SEC, NULL), 0);
    assert_int_equal(stats(fx).cache_entries, 1);
}

typedef struct racer {
    store_session *other; /* writes through its own session, without a loop */
    pin_result r;
} racer;

static void on_fill_race(void *arg)
{
    racer *x = arg;
    queue_upsert(x->other, "k", "{\"v\":2}", ANY_VERSION, &x->r);
}

static void test_sqlite_cache_refuses_a_fill_older_than_a_write(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "k", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    store_fixture_close(fx); /* a cold cache: the next get misses */
    store_fixture_open(fx);
    racer x = {0};
    assert_int_equal(store_session_new(fx->s, NULL, &x.other), 0);
    assert_int_equal(store_sqlite_set_fill_hook(fx->ss, on_fill_race, &x), 0);

    /* The get reads version 1; before it fills, another session writes version 2. */
    pin_result r;
    assert_int_equal(get(fx, "k", T0, &r), 0);
    assert_int_equal(r.version, 1);
    assert_int_equal(x.r.calls, 1);
    assert_int_equal(x.r.version, 2);
    store_sqlite_stats st = stats(fx);
    assert_int_equal(st.cache_refused, 1);
    assert_int_equal(st.cache_fills, 0);
    assert_int_equal(store_sqlite_set_fill_hook(fx->ss, NULL, NULL), 0);

    /* The cache holds what the write left, not the older row. */
    assert_int_equal(get(fx, "k", T0, &r), 0);
    assert_int_equal(r.version, 2);
    assert_string_equal(r.value, "{\"v\":2}");
    assert_int_equal(stats(fx).cache_hits - st.cache_hits, 1);
    store_session_free(x.other);
}

static void test_sqlite_value_pb_is_the_protobuf_c_packing(void **state)
{
    fixture *fx = *state;
    const char *value = "{\"s\":\"h\xc3\xa9\",\"n\":1.5,\"i\":-3,\"b\":true,\"z\":null,"
                        "\"l\":[1,\"a\",{\"o\":{}}],\"o\":{\"p\":[]}}";
    uint8_t want[256];
    size_t want_len = pack_json(value, want, sizeof(want));

    pin_result r;
    assert_int_equal(upsert(fx, "k", value, NO_TTL, T0, &r), 0);
    assert_true(r.has_pb);
    assert_int_equal(r.pb_len, want_len);
    assert_memory_equal(r.pb, want, want_len);
    assert_int_equal(get(fx, "k", T0, &r), 0); /* from the cache */
    assert_true(r.has_pb);
    assert_int_equal(r.pb_len, want_len);
    assert_memory_equal(r.pb, want, want_len);
    store_fixture_close(fx);
    store_fixture_open(fx);
    assert_int_equal(get(fx, "k", T0, &r), 0); /* from SQLite */
    assert_int_equal(stats(fx).cache_misses, 1);
    assert_true(r.has_pb);
    assert_int_equal(r.pb_len, want_len);
    assert_memory_equal(r.pb, want, want_len);

    /* An empty object packs to nothing, but the pointer is set. */
    assert_int_equal(upsert(fx, "empty", "{}", NO_TTL, T0, &r), 0);
    assert_true(r.has_pb);
    assert_int_equal(r.pb_len, 0);

    /* Bytes given by the caller are handed out as they are. */
    static const uint8_t given[] = {0x0a, 0x05, 0x0a, 0x01, 0x78, 0x12, 0x00};
    store_upsert_req req = upsert_req("given", "{\"x\":null}", NO_TTL, ANY_VERSION, T0);
    req.value_pb = given;
    req.value_pb_len = sizeof(given);
    memset(&r, 0, sizeof(r));
    cb_session = fx->ss;
    assert_int_equal(store_pin_upsert(fx->ss, &req, on_pin_cb, &r), 0);
    while (r.calls == 0)
        loop_once(fx);
    assert_int_equal(r.pb_len, sizeof(given));
    assert_memory_equal(r.pb, given, sizeof(given));
    assert_int_equal(get(fx, "given", T0, &r), 0);
    assert_memory_equal(r.pb, given, sizeof(given));

    /* A delete answers from SQLite: no packed value. */
    pin_result d = {0};
    queue_delete(fx->ss, "k", ANY_VERSION, &d);
    loop_once(fx);
    assert_int_equal(d.err, 0);
    assert_false(d.has_pb);
}

/* ---- threads ------------------------------------------------------------------------------- */

enum { THREAD_KEYS = 16, THREAD_ROUNDS = 100, THREAD_BATCH = 8 };

typedef struct worker {
    store *s;
    int id;
    int calls;
    int failures;
    int regressions; /* a get saw an older version than an earlier get of the same key */
} worker;

static void on_worker_pin(void *arg, int err, const store_pin *pin, bool created)
{
    worker *w = arg;
    w->calls++;
    if (err != 0)
        w->failures++;
}

typedef struct seen {
    int64_t version;
    int err;
} seen;

static void on_worker_get(void *arg, int err, const store_pin *pin, bool created)
{
    seen *s = arg;
    s->err = err;
    s->version = err == 0 ? pin->version : 0;
}

/* Each round queues THREAD_BATCH upserts on shared keys, commits them in one loop pass, and reads
 * every key, checking that versions never go back. No cmocka assertion off the main thread. */
static void *worker_main(void *arg)
{
    worker *w = arg;
    struct event_base *base = event_base_new();
    store_session *ss = NULL;
    if (base == NULL || store_session_new(w->s, base, &ss) != 0) {
        w->failures = -1;
        event_base_free(base);
        return NULL;
    }
    int64_t last[THREAD_KEYS] = {0};
    char key[16];
    for (int round = 0; round < THREAD_ROUNDS; round++) {
        int want = w->calls + THREAD_BATCH;
        for (int i = 0; i < THREAD_BATCH; i++) {
            snprintf(key, sizeof(key), "k%d", (round * THREAD_BATCH + i + w->id) % THREAD_KEYS);
            store_upsert_req req = upsert_req(key, "{\"w\":1}", NO_TTL, ANY_VERSION, T0);
            if (store_pin_upsert(ss, &req, on_worker_pin, w) != 0)
                w->failures++;
        }
        while (w->calls < want)
            event_base_loop(base, EVLOOP_ONCE);
        for (int k = 0; k < THREAD_KEYS; k++) {
            snprintf(key, sizeof(key), "k%d", k);
            seen s = {0};
            if (store_pin_get(ss, TENANT, key, T0, on_worker_get, &s) != 0 ||
                (s.err != 0 && s.err != PINS_ENOT_FOUND))
                w->failures++;
            if (s.version < last[k])
                w->regressions++;
            last[k] = s.version;
        }
    }
    store_session_free(ss);
    event_base_free(base);
    return NULL;
}

static void test_sqlite_sessions_on_threads_share_mutex_and_cache(void **state)
{
    fixture *fx = *state;
    enum { THREADS = 3 };
    worker w[THREADS];
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.s = fx->s, .id = i};
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(tid[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
        assert_int_equal(w[i].regressions, 0);
        assert_int_equal(w[i].calls, THREAD_ROUNDS * THREAD_BATCH);
    }
    /* Every write landed: the versions add up. */
    int64_t total = 0;
    char key[16];
    for (int k = 0; k < THREAD_KEYS; k++) {
        snprintf(key, sizeof(key), "k%d", k);
        pin_result r;
        assert_int_equal(get(fx, key, T0, &r), 0);
        total += r.version;
    }
    assert_int_equal(total, THREADS * THREAD_ROUNDS * THREAD_BATCH);
}

/* Background maintenance gives up after STORE__BACKGROUND_BUSY_MS while another process holds
 * the database, whatever the session's busy timeout: here 10 minutes, which a sweep waiting it
 * out would turn into a ctest timeout. */
static void test_sqlite_sweep_gives_up_soon_on_another_process_lock(void **state)
{
    fixture *fx = *state;
    assert_int_equal(store_sqlite_set_busy_timeout(fx->ss, 600000), 0);
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    double busy = scrape_value("store_errors_total{kind=\"busy\"}", -1);
    counted c = {.err = -1};
    assert_int_equal(store_pin_sweep(fx->ss, T0, 100, on_counted, &c), 0);
    while (c.calls == 0)
        loop_once(fx);
    assert_int_equal(c.err, PINS_ESTORE);
    assert_non_null(strstr(store_session_last_error(fx->ss), "locked"));
    assert_true(scrape_value("store_errors_total{kind=\"busy\"}", -1) == busy + 1);
    assert_true(scrape_value("store_pool_connections{state=\"busy\"}", -1) == 0);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    c = (counted){.err = -1};
    assert_int_equal(store_pin_sweep(fx->ss, T0, 100, on_counted, &c), 0);
    while (c.calls == 0)
        loop_once(fx);
    assert_int_equal(c.err, 0);
}

/* Another process that lets go of its lock after a while. */
static void *release_after(void *arg)
{
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 300000000};
    nanosleep(&pause, NULL);
    sqlite3_exec(arg, "ROLLBACK", NULL, NULL, NULL);
    return NULL;
}

/* Opening the store waits for another process's lock like any write (the busy timeout, counted
 * from the open's own first wait): a process that holds the database for 300 ms, as a backup or
 * the previous pinsd committing does, delays the open and does not fail it. */
static void test_sqlite_open_waits_for_another_process_lock(void **state)
{
    fixture *fx = *state;
    store_fixture_close(fx);
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, release_after, db), 0);
    store_fixture_open(fx);
    assert_int_equal(pthread_join(tid, NULL), 0);
    sqlite3_close(db);
    assert_int_equal(upsert(fx, "after", "{}", NO_TTL, T0, NULL), 0);
}

/* A session of another thread that waits (up to 30 s) for another process's lock while it holds
 * the write mutex. */
typedef struct mutex_holder {
    store *s;
    _Atomic int err; /* the upsert's outcome; -1 until it ends */
    int failures;    /* setup failures (no cmocka assertion off the main thread) */
} mutex_holder;

static void on_holder_pin(void *arg, int err, const store_pin *pin, bool created)
{
    ((mutex_holder *)arg)->err = err;
}

static void *holder_main(void *arg)
{
    mutex_holder *h = arg;
    struct event_base *base = event_base_new();
    store_session *ss = NULL;
    if (base == NULL || store_session_new(h->s, base, &ss) != 0 ||
        store_sqlite_set_busy_timeout(ss, 30000) != 0) {
        h->failures++;
        h->err = PINS_EINTERNAL;
    } else {
        store_upsert_req req = upsert_req("held", "{}", NO_TTL, ANY_VERSION, T0);
        if (store_pin_upsert(ss, &req, on_holder_pin, h) != 0)
            h->failures++;
        while (h->err == -1 && h->failures == 0)
            event_base_loop(base, EVLOOP_ONCE);
    }
    store_session_free(ss);
    event_base_free(base);
    return NULL;
}

/* One busy timeout bounds a write's whole wait: while another session holds the write mutex
 * waiting out another process's lock, this session's write fails when its own timeout (200 ms)
 * has passed, with its own reason, instead of queueing behind that wait (30 s). */
static void test_sqlite_write_waits_for_the_mutex_no_longer_than_its_busy_timeout(void **state)
{
    fixture *fx = *state;
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    double busy = scrape_value("store_errors_total{kind=\"busy\"}", -1);
    mutex_holder h = {.s = fx->s, .err = -1};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, holder_main, &h), 0);
    /* Until the other session holds the write mutex (its connection counts busy), bounded. */
    for (int i = 0; i < 10000 && scrape_value("store_pool_connections{state=\"busy\"}", -1) < 1;
         i++) {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 1000000};
        nanosleep(&pause, NULL);
    }
    assert_true(scrape_value("store_pool_connections{state=\"busy\"}", -1) >= 1);
    assert_int_equal(store_sqlite_set_busy_timeout(fx->ss, 200), 0);
    pin_result r = {0};
    queue_upsert(fx->ss, "mine", "{}", ANY_VERSION, &r);
    while (r.calls == 0)
        loop_once(fx);
    assert_int_equal(r.err, PINS_ESTORE);
    assert_non_null(strstr(r.detail, "write lock past the busy timeout"));
    assert_true(scrape_value("store_errors_total{kind=\"busy\"}", -1) == busy + 1);
    /* The other process lets go: the waiting write goes through. */
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(pthread_join(tid, NULL), 0);
    assert_int_equal(h.failures, 0);
    assert_int_equal(h.err, 0);
    assert_int_equal(get(fx, "held", T0, NULL), 0);
    assert_int_equal(get(fx, "mine", T0, NULL), PINS_ENOT_FOUND);
}

/* The clock the handlers pass as now_us is the process clock: a pin written with a TTL is served
 * from the cache until the fake clock reaches its expiry, and absent from then on, without a
 * sleep. */
static void test_sqlite_pin_expires_when_the_clock_reaches_its_ttl(void **state)
{
    fixture *fx = *state;
    fake_clock_install();
    assert_int_equal(upsert(fx, "ttl", "{\"v\":1}", 2, pins_time_now_us(), NULL), 0);
    assert_int_equal(get(fx, "ttl", pins_time_now_us(), NULL), 0);
    fake_clock_advance_ms(1999);
    assert_int_equal(get(fx, "ttl", pins_time_now_us(), NULL), 0);
    store_sqlite_stats before = stats(fx);
    fake_clock_advance_ms(1);
    assert_int_equal(get(fx, "ttl", pins_time_now_us(), NULL), PINS_ENOT_FOUND);
    store_sqlite_stats after = stats(fx);
    assert_int_equal(after.cache_hits - before.cache_hits, 1); /* the cached entry expired */
    assert_int_equal(after.cache_entries, 0);
    fake_clock_uninstall();
}

/* store_open records when each migration was applied with the process's wall clock. */
static void test_sqlite_migrations_record_the_clock_time(void **state)
{
    fixture *fx = *state;
    store_fixture_close(fx);
    store_fixture_remove_tree(fx->data_dir);
    fake_clock_install();
    fake_clock_advance_ms(86400000); /* a day ahead of the system clock */
    int64_t now = pins_time_now_us();
    store_fixture_open(fx);
    fake_clock_uninstall();
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(store_fixture_raw_int(db, "SELECT min(applied_at) FROM schema_migrations"),
                     now);
    assert_int_equal(store_fixture_raw_int(db, "SELECT max(applied_at) FROM schema_migrations"),
                     now);
    sqlite3_close(db);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

/* ---- revisions and the change feed --------------------------------------------------------- */

#define FEED_MAX 4096

/* What the feed delivered, in call order. */
typedef struct feed_log {
    _Atomic int inside; /* calls in progress: never more than one */
    int overlaps;
    size_t n;
    int type[FEED_MAX];
    char key[FEED_MAX][32];
    int64_t revision[FEED_MAX];
    int64_t version[FEED_MAX];
    bool has_pb[FEED_MAX];
    bool pb_matches[FEED_MAX]; /* value_pb is the packing of value_json */
} feed_log;

static void on_change(void *arg, const store_change *ch)
{
    feed_log *f = arg;
    if (atomic_fetch_add(&f->inside, 1) != 0)
        f->overlaps++;
    if (f->n < FEED_MAX) {
        size_t i = f->n;
        f->type[i] = ch->type;
        snprintf(f->key[i], sizeof(f->key[i]), "%s", ch->pin.key);
        f->revision[i] = ch->pin.revision;
        f->version[i] = ch->pin.version;
        f->has_pb[i] = ch->pin.value_pb != NULL;
        if (ch->pin.value_pb != NULL) {
            uint8_t pb[256];
            size_t n = pack_json(ch->pin.value_json, pb, sizeof(pb));
            f->pb_matches[i] = n == ch->pin.value_pb_len && memcmp(pb, ch->pin.value_pb, n) == 0;
        }
    }
    f->n++;
    atomic_fetch_sub(&f->inside, 1);
}

static void test_sqlite_feed_gets_each_change_once_in_commit_order(void **state)
{
    fixture *fx = *state;
    static feed_log f;
    memset(&f, 0, sizeof(f));
    assert_false(store_feed_live(fx->s));
    /* A write before the feed starts is not delivered. */
    assert_int_equal(upsert(fx, "before", "{\"v\":0}", NO_TTL, T0, NULL), 0);
    assert_int_equal(store_feed_start(fx->s, on_change, NULL, &f), 0);
    assert_true(store_feed_live(fx->s));

    /* Writes queued in one iteration: one commit, the changes in queue order; the failed
     * conditional write has none. */
    pin_result r[5];
    memset(r, 0, sizeof(r));
    store_sqlite_stats before = stats(fx);
    queue_upsert(fx->ss, "a", "{\"v\":1}", ANY_VERSION, &r[0]);
    queue_upsert(fx->ss, "b", "{\"v\":2}", ANY_VERSION, &r[1]);
    queue_upsert(fx->ss, "a", "{\"v\":3}", 7, &r[2]); /* aborted */
    queue_delete(fx->ss, "before", ANY_VERSION, &r[3]);
    queue_upsert(fx->ss, "a", "{\"v\":4}", ANY_VERSION, &r[4]);
    assert_int_equal(f.n, 0); /* nothing before the commit */
    loop_once(fx);
    assert_int_equal(stats(fx).write_commits - before.write_commits, 1);
    assert_int_equal(r[2].err, PINS_EABORTED);
    assert_int_equal(f.n, 4);
    /* Expired pins reclaimed by the sweeper and by a cleanup are EXPIRE changes. */
    assert_int_equal(upsert(fx, "s", "{\"v\":5}", 1, T0, NULL), 0);
    assert_int_equal(upsert(fx, "c", "{\"v\":6}", 10, T0, NULL), 0);
    int64_t n = -1;
    assert_int_equal(store_pin_sweep(fx->ss, T0 + 2 * SEC, 10, on_count, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_pin_cleanup(fx->ss, TENANT, T0 + 20 * SEC, on_count, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_pin_cleanup(fx->ss, TENANT, T0 + 20 * SEC, on_count, &n), 0);
    assert_int_equal(n, 0); /* nothing left: no change */

    static const struct {
        int type;
        const char *key;
        int64_t version;
    } want[] = {
        {STORE_CHANGE_PUT, "a", 1},         {STORE_CHANGE_PUT, "b", 1},
        {STORE_CHANGE_DELETE, "before", 1}, {STORE_CHANGE_PUT, "a", 2},
        {STORE_CHANGE_PUT, "s", 1},         {STORE_CHANGE_PUT, "c", 1},
        {STORE_CHANGE_EXPIRE, "s", 1},      {STORE_CHANGE_EXPIRE, "c", 1},
    };
    assert_int_equal(f.n, 8);
    assert_int_equal(f.overlaps, 0);
    for (size_t i = 0; i < 8; i++) {
        assert_int_equal(f.type[i], want[i].type);
        assert_int_equal(f.revision[i], (int64_t)i + 2); /* "before" took revision 1 */
        assert_int_equal(f.version[i], want[i].version);
        assert_string_equal(f.key[i], want[i].key);
        /* The request packed every put; the cache held the deleted and expired rows. */
        assert_true(f.has_pb[i]);
        assert_true(f.pb_matches[i]);
    }
    assert_int_equal(r[4].revision, 5);
    assert_int_equal(r[3].revision, 4);

    /* Stopped: no more calls. */
    store_feed_stop(fx->s);
    assert_false(store_feed_live(fx->s));
    assert_int_equal(upsert(fx, "a", "{}", NO_TTL, T0, NULL), 0);
    assert_int_equal(f.n, 8);
    store_feed_stop(fx->s); /* idempotent */
}

/* Writes of sessions on several threads reach the feed one call at a time, in commit order: the
 * tenant's revisions come 1, 2, 3, ... and every key's versions grow. */
static void test_sqlite_feed_from_threads_follows_commit_order(void **state)
{
    fixture *fx = *state;
    static feed_log f;
    memset(&f, 0, sizeof(f));
    assert_int_equal(store_feed_start(fx->s, on_change, NULL, &f), 0);
    enum { THREADS = 3 };
    worker w[THREADS];
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.s = fx->s, .id = i};
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(tid[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
    }
    store_feed_stop(fx->s);
    const size_t total = THREADS * THREAD_ROUNDS * THREAD_BATCH;
    assert_true(total <= FEED_MAX);
    assert_int_equal(f.n, total);
    assert_int_equal(f.overlaps, 0);
    int64_t last[THREAD_KEYS] = {0};
    for (size_t i = 0; i < total; i++) {
        assert_int_equal(f.type[i], STORE_CHANGE_PUT);
        assert_int_equal(f.revision[i], (int64_t)i + 1);
        int k = (int)strtol(f.key[i] + 1, NULL, 10);
        assert_true(k >= 0 && k < THREAD_KEYS);
        assert_int_equal(f.version[i], last[k] + 1);
        last[k] = f.version[i];
    }
}

static void test_sqlite_cache_keeps_the_revision(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "a", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    assert_int_equal(upsert(fx, "b", "{\"v\":1}", NO_TTL, T0, NULL), 0);
    assert_int_equal(upsert(fx, "a", "{\"v\":2}", NO_TTL, T0, NULL), 0);
    pin_result r;
    assert_int_equal(get(fx, "a", T0, &r), 0); /* the upsert's row, put in the cache */
    assert_true(r.from_cache);
    assert_int_equal(r.revision, 3);
    /* Filled from SQLite after a miss, then answered from the cache. */
    store_fixture_close(fx);
    store_fixture_open(fx);
    assert_int_equal(get(fx, "b", T0, &r), 0);
    assert_false(r.from_cache);
    assert_int_equal(r.revision, 2);
    assert_int_equal(get(fx, "b", T0, &r), 0);
    assert_true(r.from_cache);
    assert_int_equal(r.revision, 2);
}

typedef struct history {
    int calls;
    int err;
    size_t n;
    int64_t revision;
    int64_t first;
} history;

static void on_history(void *arg, int err, const store_change *changes, size_t n, int64_t revision)
{
    history *h = arg;
    h->calls++;
    h->err = err;
    h->n = n;
    h->revision = revision;
    h->first = n > 0 ? changes[0].pin.revision : 0;
}

static history since(fixture *fx, const char *tenant, int64_t after)
{
    history h = {0};
    assert_int_equal(store_changes_since(fx->ss, tenant, "", after, 100, on_history, &h), 0);
    assert_int_equal(h.calls, 1); /* reads complete at once */
    return h;
}

static int64_t expire_history(fixture *fx, int64_t before_us, int64_t max_rows, int batch)
{
    counted c = {0};
    assert_int_equal(store_history_expire(fx->ss, before_us, max_rows, batch, on_counted, &c), 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.err, 0);
    return c.count;
}

static void test_sqlite_history_expire_trims_by_age_and_by_count(void **state)
{
    fixture *fx = *state;
    /* Five changes of TENANT 10 s apart, then two of another tenant. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(upsert(fx, "k", "{}", NO_TTL, T0 + i * 10 * SEC, NULL), 0);
    for (int i = 0; i < 2; i++) {
        store_upsert_req req = upsert_req("k", "{}", NO_TTL, ANY_VERSION, T0 + 100 * SEC);
        req.tenant_id = "u";
        pin_result r = {0};
        cb_session = fx->ss;
        assert_int_equal(store_pin_upsert(fx->ss, &req, on_pin_cb, &r), 0);
        while (r.calls == 0)
            loop_once(fx);
        assert_int_equal(r.err, 0);
    }
    /* By age: the two written before T0 + 15 s. */
    assert_int_equal(expire_history(fx, T0 + 15 * SEC, 0, 100), 2);
    assert_int_equal(since(fx, TENANT, 1).err, PINS_EOUT_OF_RANGE);
    history h = since(fx, TENANT, 2);
    assert_int_equal(h.err, 0);
    assert_int_equal(h.n, 3);
    assert_int_equal(h.first, 3);
    assert_int_equal(h.revision, 5);
    assert_int_equal(since(fx, "u", 0).n, 2); /* another tenant is untouched */
    /* By count, at most batch at a time, the oldest first: keep the newest 3 of the 5 left. */
    assert_int_equal(expire_history(fx, 0, 3, 1), 1);
    assert_int_equal(since(fx, TENANT, 2).err, PINS_EOUT_OF_RANGE);
    assert_int_equal(since(fx, TENANT, 3).err, 0);
    assert_int_equal(expire_history(fx, 0, 3, 10), 1);
    assert_int_equal(expire_history(fx, 0, 3, 10), 0);
    h = since(fx, TENANT, 4);
    assert_int_equal(h.err, 0);
    assert_int_equal(h.n, 1);
    assert_int_equal(h.first, 5);
    assert_int_equal(since(fx, "u", 0).n, 2);
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(store_fixture_raw_int(db, "SELECT count(*) FROM pin_changes"), 3);
    assert_int_equal(
        store_fixture_raw_int(db, "SELECT trimmed FROM pin_revisions WHERE tenant_id = 't'"), 4);
    sqlite3_close(db);
    /* Without a bound of either kind nothing goes. */
    assert_int_equal(expire_history(fx, 0, 0, 10), 0);
}

/* A database written before revisions existed keeps its pins, at revision 0, and the next change
 * of their tenant takes revision 1. */
static void test_sqlite_migration_gives_old_pins_revision_zero(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "old", "{}", NO_TTL, T0, NULL), 0);
    store_fixture_close(fx);
    sqlite3 *db = store_fixture_open_raw(fx);
    const char *down = store_sqlite_migration_down(2);
    assert_non_null(down);
    assert_int_equal(sqlite3_exec(db, down, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "DELETE FROM schema_migrations WHERE version >= 2", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    store_fixture_open(fx);
    pin_result r;
    assert_int_equal(get(fx, "old", T0, &r), 0);
    assert_int_equal(r.revision, 0);
    assert_int_equal(since(fx, TENANT, 0).n, 0);
    assert_int_equal(upsert(fx, "new", "{}", NO_TTL, T0, &r), 0);
    assert_int_equal(r.revision, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_sqlite_upserts_queued_in_one_iteration_commit_once),
        T(test_sqlite_ops_on_one_key_in_a_batch_see_each_other),
        T(test_sqlite_batch_that_cannot_begin_acknowledges_nothing),
        T(test_sqlite_batch_whose_commit_fails_acknowledges_nothing),
        T(test_sqlite_full_batch_commits_without_waiting_for_the_loop),
        T(test_sqlite_freeing_the_session_cancels_queued_writes),
        T(test_sqlite_session_without_loop_commits_each_write),
        T(test_sqlite_checkpointer_keeps_the_wal_bounded),
        T(test_sqlite_group_committed_write_survives_kill),
        T(test_sqlite_cache_answers_get_without_sqlite),
        T(test_sqlite_cache_follows_every_write),
        T(test_sqlite_cache_drops_expired_entries),
        T(test_sqlite_pin_expires_when_the_clock_reaches_its_ttl),
        T(test_sqlite_migrations_record_the_clock_time),
        T(test_sqlite_cache_refuses_a_fill_older_than_a_write),
        T(test_sqlite_value_pb_is_the_protobuf_c_packing),
        T(test_sqlite_sweep_gives_up_soon_on_another_process_lock),
        T(test_sqlite_open_waits_for_another_process_lock),
        T(test_sqlite_write_waits_for_the_mutex_no_longer_than_its_busy_timeout),
        T(test_sqlite_sessions_on_threads_share_mutex_and_cache),
        T(test_sqlite_feed_gets_each_change_once_in_commit_order),
        T(test_sqlite_feed_from_threads_follows_commit_order),
        T(test_sqlite_cache_keeps_the_revision),
        T(test_sqlite_history_expire_trims_by_age_and_by_count),
        T(test_sqlite_migration_gives_old_pins_revision_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
