/* tests/unit/store/test_store.c: the store interface (store/store.h) against a real backend.
 *
 * The behaviour tests are backend-agnostic: they open the store the setup chose (the embedded
 * SQLite store in a fresh directory under /tmp, or PINS_TEST_DATABASE_URL when set), use a tenant
 * of their own, pass a fake clock and wait for callbacks through an event loop, so the same suite
 * runs against PostgreSQL. Tests named test_sqlite_* look inside the SQLite file and are skipped
 * with a database URL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/error.h"
#include "store/store.h"
#include "store/sqlite_int.h"
#include "scrape.h"
#include "store_fixture.h"

#define SEC         INT64_C(1000000)
#define T0          (INT64_C(1800000000) * SEC) /* the fake clock starts in 2027 */
#define NO_TTL      (-1)
#define ANY_VERSION (-1)
#define MAX_ROWS    64

typedef store_fixture fixture;

typedef struct pin_result {
    int calls;
    int err;
    bool created;
    store_pin pin; /* strings point into the copies below */
    char tenant[300];
    char key[600];
    char source[80];
    char *value; /* malloc'd */
} pin_result;

/* What every listing callback records of the page the store answered. */
typedef struct page_seen {
    int calls;
    int err;
    size_t n;
    int64_t total;
} page_seen;

/* Records the page a listing callback got (at most MAX_ROWS rows). */
static void see_page(page_seen *p, int err, size_t n, int64_t total)
{
    p->calls++;
    p->err = err;
    p->n = n;
    p->total = total;
    assert_true(n <= MAX_ROWS);
}

typedef struct list_result {
    page_seen page;
    char keys[MAX_ROWS][64];
    int64_t ids[MAX_ROWS];
    int64_t created[MAX_ROWS];
    int64_t versions[MAX_ROWS];
    bool has_expires[MAX_ROWS];
    int64_t revisions[MAX_ROWS];
    int64_t revision; /* the tenant's, at the read */
} list_result;

typedef struct count_result {
    int calls;
    int err;
    int64_t count;
} count_result;

typedef struct audit_result {
    page_seen page;
    int64_t ts[MAX_ROWS];
    char operation[MAX_ROWS][16];
    char tenant[MAX_ROWS][48];
    char key[MAX_ROWS][64];
    char agent[MAX_ROWS][32];    /* "" when NULL */
    char source[MAX_ROWS][32];   /* "" when NULL */
    char old_hash[MAX_ROWS][20]; /* "" when NULL */
    char new_hash[MAX_ROWS][20]; /* "" when NULL */
    double latency_ms[MAX_ROWS];
    bool success[MAX_ROWS];
} audit_result;

/* What store_changes_since answered. */
typedef struct changes_result {
    int calls;
    int err;
    size_t n;
    int64_t revision; /* the tenant's latest */
    int type[MAX_ROWS];
    char key[MAX_ROWS][64];
    char value[MAX_ROWS][64];
    int64_t rev[MAX_ROWS];
    int64_t version[MAX_ROWS];
    int64_t id[MAX_ROWS];
} changes_result;

/* ---- fixture ------------------------------------------------------------------------------- */

static const char *database_url(void)
{
    const char *url = getenv("PINS_TEST_DATABASE_URL");
    return url != NULL && url[0] != '\0' ? url : NULL;
}

static int setup(void **state)
{
    *state = store_fixture_new(
        "pins-store-test",
        (store_options){.database_url = database_url(), .pool_size = 4, .workers = 2});
    return 0;
}

static int teardown(void **state)
{
    store_fixture_free(*state);
    return 0;
}

/* Runs the loop until *calls is set (at once for a backend that completes synchronously). */
static void wait_for(fixture *fx, const int *calls)
{
    while (*calls == 0) {
        if (event_base_loop(fx->base, EVLOOP_ONCE) != 0)
            break;
    }
    assert_int_equal(*calls, 1);
}

/* ---- callbacks ----------------------------------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

static void on_pin(void *arg, int err, const store_pin *pin, bool created)
{
    pin_result *r = arg;
    r->calls++;
    r->err = err;
    r->created = created;
    if (err != 0) {
        assert_null(pin);
        return;
    }
    assert_non_null(pin);
    r->pin = *pin;
    copy_str(r->tenant, sizeof(r->tenant), pin->tenant_id);
    copy_str(r->key, sizeof(r->key), pin->key);
    copy_str(r->source, sizeof(r->source), pin->source);
    free(r->value);
    r->value = malloc(pin->value_len + 1);
    assert_non_null(r->value);
    memcpy(r->value, pin->value_json, pin->value_len);
    r->value[pin->value_len] = '\0';
    assert_int_equal(strlen(pin->value_json), pin->value_len);
    r->pin.tenant_id = r->tenant;
    r->pin.key = r->key;
    r->pin.source = r->source;
    r->pin.value_json = r->value;
}

static void on_list(void *arg, int err, const store_pin *pins, size_t npins, int64_t total,
                    int64_t revision)
{
    list_result *r = arg;
    see_page(&r->page, err, npins, total);
    r->revision = revision;
    for (size_t i = 0; i < npins; i++) {
        copy_str(r->keys[i], sizeof(r->keys[i]), pins[i].key);
        r->ids[i] = pins[i].id;
        r->created[i] = pins[i].created_us;
        r->versions[i] = pins[i].version;
        r->has_expires[i] = pins[i].has_expires;
        r->revisions[i] = pins[i].revision;
    }
}

static void on_changes(void *arg, int err, const store_change *changes, size_t n, int64_t revision)
{
    changes_result *r = arg;
    r->calls++;
    r->err = err;
    r->n = n;
    r->revision = revision;
    assert_true(n <= MAX_ROWS);
    if (err != 0)
        assert_int_equal(n, 0);
    for (size_t i = 0; i < n; i++) {
        r->type[i] = changes[i].type;
        copy_str(r->key[i], sizeof(r->key[i]), changes[i].pin.key);
        copy_str(r->value[i], sizeof(r->value[i]), changes[i].pin.value_json);
        r->rev[i] = changes[i].pin.revision;
        r->version[i] = changes[i].pin.version;
        r->id[i] = changes[i].pin.id;
    }
}

static void on_count(void *arg, int err, int64_t count)
{
    count_result *r = arg;
    r->calls++;
    r->err = err;
    r->count = count;
}

static void on_audit(void *arg, int err, const store_memory_audit *rows, size_t nrows,
                     int64_t total)
{
    audit_result *r = arg;
    see_page(&r->page, err, nrows, total);
    for (size_t i = 0; i < nrows; i++) {
        r->ts[i] = rows[i].ts_us;
        copy_str(r->operation[i], sizeof(r->operation[i]), rows[i].operation);
        copy_str(r->tenant[i], sizeof(r->tenant[i]), rows[i].tenant_id);
        copy_str(r->key[i], sizeof(r->key[i]), rows[i].key);
        copy_str(r->agent[i], sizeof(r->agent[i]), rows[i].agent_id);
        copy_str(r->source[i], sizeof(r->source[i]), rows[i].source);
        copy_str(r->old_hash[i], sizeof(r->old_hash[i]), rows[i].old_value_hash);
        copy_str(r->new_hash[i], sizeof(r->new_hash[i]), rows[i].new_value_hash);
        r->latency_ms[i] = rows[i].latency_ms;
        r->success[i] = rows[i].success;
    }
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* First 16 hex characters of SHA-256 of s, as the handlers compute value_hash. */
static void hash16(const char *s, char out[17])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void pin_result_free(pin_result *r)
{
    free(r->value);
    memset(r, 0, sizeof(*r));
}

/* Upserts value at (tenant, key); ttl NO_TTL and expected ANY_VERSION leave them unset. Returns
 * the callback's error; r (optional) gets the result. */
static int upsert_full(fixture *fx, const char *tenant, const char *key, const char *value, int ttl,
                       int64_t expected, int64_t now, const char *agent, const char *request_id,
                       pin_result *r)
{
    pin_result local = {0};
    pin_result *res = r != NULL ? r : &local;
    pin_result_free(res);
    char hash[17];
    hash16(value, hash);
    const store_upsert_req req = {
        .tenant_id = tenant,
        .key = key,
        .value_json = value,
        .value_len = strlen(value),
        .value_hash = hash,
        .source = "api",
        .has_ttl = ttl != NO_TTL,
        .ttl_seconds = ttl != NO_TTL ? ttl : 0,
        .has_expected_version = expected != ANY_VERSION,
        .expected_version = expected != ANY_VERSION ? expected : 0,
        .now_us = now,
        .audit = {.agent_id = agent, .request_id = request_id, .latency_ms = 1.5},
    };
    assert_int_equal(store_pin_upsert(fx->ss, &req, on_pin, res), 0);
    wait_for(fx, &res->calls);
    int err = res->err;
    pin_result_free(&local);
    return err;
}

static int upsert(fixture *fx, const char *key, const char *value, int ttl, int64_t expected,
                  int64_t now, pin_result *r)
{
    return upsert_full(fx, fx->tenant, key, value, ttl, expected, now, NULL, NULL, r);
}

static int get(fixture *fx, const char *key, int64_t now, pin_result *r)
{
    pin_result local = {0};
    pin_result *res = r != NULL ? r : &local;
    pin_result_free(res);
    assert_int_equal(store_pin_get(fx->ss, fx->tenant, key, now, on_pin, res), 0);
    wait_for(fx, &res->calls);
    int err = res->err;
    pin_result_free(&local);
    return err;
}

static int del(fixture *fx, const char *key, int64_t expected, int64_t now, pin_result *r)
{
    pin_result local = {0};
    pin_result *res = r != NULL ? r : &local;
    pin_result_free(res);
    const store_delete_req req = {
        .tenant_id = fx->tenant,
        .key = key,
        .has_expected_version = expected != ANY_VERSION,
        .expected_version = expected != ANY_VERSION ? expected : 0,
        .now_us = now,
        .audit = {.agent_id = "agent-d", .request_id = "req-d", .latency_ms = 0.25},
    };
    assert_int_equal(store_pin_delete(fx->ss, &req, on_pin, res), 0);
    wait_for(fx, &res->calls);
    int err = res->err;
    pin_result_free(&local);
    return err;
}

static void list(fixture *fx, const store_list_req *req, list_result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(store_pin_list(fx->ss, req, on_list, r), 0);
    wait_for(fx, &r->page.calls);
}

static store_list_req list_req(fixture *fx, const char *prefix, int32_t limit, int64_t now)
{
    return (store_list_req){
        .tenant_id = fx->tenant, .prefix = prefix, .limit = limit, .now_us = now};
}

static int64_t cleanup(fixture *fx, const char *tenant, int64_t now)
{
    count_result r = {0};
    assert_int_equal(store_pin_cleanup(fx->ss, tenant, now, on_count, &r), 0);
    wait_for(fx, &r.calls);
    assert_int_equal(r.err, 0);
    return r.count;
}

static int64_t sweep(fixture *fx, int64_t now, int batch)
{
    count_result r = {0};
    assert_int_equal(store_pin_sweep(fx->ss, now, batch, on_count, &r), 0);
    wait_for(fx, &r.calls);
    assert_int_equal(r.err, 0);
    return r.count;
}

/* store_changes_since of tenant; returns the callback's error, r gets the answer. */
static int changes(fixture *fx, const char *tenant, const char *prefix, int64_t after, int limit,
                   changes_result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(store_changes_since(fx->ss, tenant, prefix, after, limit, on_changes, r), 0);
    wait_for(fx, &r->calls);
    return r->err;
}

/* The tenant's latest revision, as a listing reads it. */
static int64_t revision_of(fixture *fx, const char *tenant)
{
    list_result l;
    store_list_req q = list_req(fx, "", 1, T0);
    q.tenant_id = tenant;
    list(fx, &q, &l);
    assert_int_equal(l.page.err, 0);
    return l.revision;
}

static void audit(fixture *fx, const store_audit_list_req *req, audit_result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(store_audit_list(fx->ss, req, on_audit, r), 0);
    wait_for(fx, &r->page.calls);
    assert_int_equal(r->page.err, 0);
}

/* ---- upsert and get ------------------------------------------------------------------------ */

static void test_upsert_creates_pin_with_version_one(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "k1", "{\"a\":1}", NO_TTL, ANY_VERSION, T0, &r), 0);
    assert_true(r.created);
    assert_int_equal(r.pin.version, 1);
    assert_true(r.pin.id > 0);
    assert_string_equal(r.pin.tenant_id, fx->tenant);
    assert_string_equal(r.pin.key, "k1");
    assert_string_equal(r.pin.value_json, "{\"a\":1}");
    assert_string_equal(r.pin.source, "api");
    assert_int_equal(r.pin.created_us, T0);
    assert_int_equal(r.pin.updated_us, T0);
    assert_false(r.pin.has_ttl);
    assert_false(r.pin.has_expires);

    assert_int_equal(get(fx, "k1", T0 + SEC, &r), 0);
    assert_int_equal(r.pin.version, 1);
    assert_string_equal(r.pin.value_json, "{\"a\":1}");
    assert_string_equal(r.pin.tenant_id, fx->tenant);
    assert_int_equal(r.pin.created_us, T0);
    pin_result_free(&r);
}

static void test_upsert_increments_version_and_keeps_created_at(void **state)
{
    fixture *fx = *state;
    pin_result first = {0};
    pin_result r = {0};
    assert_int_equal(upsert(fx, "k", "{\"v\":1}", NO_TTL, ANY_VERSION, T0, &first), 0);
    assert_int_equal(upsert(fx, "k", "{\"v\":2}", NO_TTL, ANY_VERSION, T0 + 5 * SEC, &r), 0);
    assert_false(r.created);
    assert_int_equal(r.pin.version, 2);
    assert_int_equal(r.pin.id, first.pin.id);
    assert_int_equal(r.pin.created_us, T0);
    assert_int_equal(r.pin.updated_us, T0 + 5 * SEC);
    assert_int_equal(upsert(fx, "k", "{\"v\":3}", NO_TTL, ANY_VERSION, T0 + 9 * SEC, &r), 0);
    assert_int_equal(r.pin.version, 3);

    assert_int_equal(get(fx, "k", T0 + 10 * SEC, &r), 0);
    assert_int_equal(r.pin.version, 3);
    assert_int_equal(r.pin.created_us, T0);
    assert_int_equal(r.pin.updated_us, T0 + 9 * SEC);
    assert_string_equal(r.pin.value_json, "{\"v\":3}");
    pin_result_free(&first);
    pin_result_free(&r);
}

static void test_upsert_ttl_counts_from_each_write(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "t", "{}", 10, ANY_VERSION, T0, &r), 0);
    assert_true(r.pin.has_ttl);
    assert_int_equal(r.pin.ttl_seconds, 10);
    assert_true(r.pin.has_expires);
    assert_int_equal(r.pin.expires_us, T0 + 10 * SEC);

    /* Rewritten at T0+8: the clock restarts, so it lives until T0+18. */
    assert_int_equal(upsert(fx, "t", "{}", 10, ANY_VERSION, T0 + 8 * SEC, &r), 0);
    assert_int_equal(r.pin.expires_us, T0 + 18 * SEC);
    assert_int_equal(get(fx, "t", T0 + 17 * SEC, &r), 0);
    assert_int_equal(r.pin.expires_us, T0 + 18 * SEC);
    assert_int_equal(get(fx, "t", T0 + 18 * SEC, &r), PINS_ENOT_FOUND);

    /* Written without a TTL: expiry is cleared. */
    assert_int_equal(upsert(fx, "u", "{}", 5, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "u", "{}", NO_TTL, ANY_VERSION, T0 + SEC, &r), 0);
    assert_false(r.pin.has_ttl);
    assert_false(r.pin.has_expires);
    assert_int_equal(get(fx, "u", T0 + 1000 * SEC, &r), 0);
    assert_false(r.pin.has_expires);
    pin_result_free(&r);
}

static void test_get_hides_expired_pin(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "e", "{}", 2, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(get(fx, "e", T0 + 2 * SEC - 1, NULL), 0);
    assert_int_equal(get(fx, "e", T0 + 2 * SEC, NULL), PINS_ENOT_FOUND);
    assert_int_equal(get(fx, "absent", T0, NULL), PINS_ENOT_FOUND);
}

static void test_get_is_tenant_scoped(void **state)
{
    fixture *fx = *state;
    char other[64];
    snprintf(other, sizeof(other), "%s-other", fx->tenant);
    assert_int_equal(upsert_full(fx, other, "k", "{}", NO_TTL, ANY_VERSION, T0, NULL, NULL, NULL),
                     0);
    assert_int_equal(get(fx, "k", T0, NULL), PINS_ENOT_FOUND);
    pin_result r = {0};
    assert_int_equal(upsert(fx, "k", "{}", NO_TTL, ANY_VERSION, T0, &r), 0);
    assert_true(r.created);
    pin_result_free(&r);
}

static void test_upsert_over_expired_pin_creates_anew(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "x", "{\"old\":1}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "x", "{\"old\":2}", 1, ANY_VERSION, T0 + 100, NULL), 0);
    assert_int_equal(upsert(fx, "x", "{\"new\":1}", NO_TTL, ANY_VERSION, T0 + 5 * SEC, &r), 0);
    assert_true(r.created);
    assert_int_equal(r.pin.version, 1);
    assert_int_equal(r.pin.created_us, T0 + 5 * SEC);
    assert_int_equal(get(fx, "x", T0 + 6 * SEC, &r), 0);
    assert_int_equal(r.pin.version, 1);
    assert_string_equal(r.pin.value_json, "{\"new\":1}");

    /* Create-only succeeds over an expired pin too. */
    assert_int_equal(upsert(fx, "y", "{}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "y", "{}", NO_TTL, 0, T0 + 2 * SEC, &r), 0);
    assert_true(r.created);
    assert_int_equal(r.pin.version, 1);
    pin_result_free(&r);
}

static void test_upsert_expected_version_zero_creates_only(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "c", "{\"a\":1}", NO_TTL, 0, T0, &r), 0);
    assert_true(r.created);
    assert_int_equal(upsert(fx, "c", "{\"a\":2}", NO_TTL, 0, T0 + 1, &r), PINS_EALREADY_EXISTS);
    assert_int_equal(get(fx, "c", T0 + 2, &r), 0);
    assert_int_equal(r.pin.version, 1);
    assert_string_equal(r.pin.value_json, "{\"a\":1}");
    pin_result_free(&r);
}

static void test_upsert_expected_version_matches_or_aborts(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "v", "{}", NO_TTL, 5, T0, NULL), PINS_EABORTED); /* absent */
    assert_int_equal(upsert(fx, "v", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "v", "{\"n\":2}", NO_TTL, 1, T0 + 1, &r), 0);
    assert_int_equal(r.pin.version, 2);
    assert_false(r.created);
    assert_int_equal(upsert(fx, "v", "{\"n\":3}", NO_TTL, 1, T0 + 2, NULL), PINS_EABORTED);
    assert_int_equal(upsert(fx, "v", "{\"n\":3}", NO_TTL, 3, T0 + 2, NULL), PINS_EABORTED);
    assert_int_equal(get(fx, "v", T0 + 3, &r), 0);
    assert_int_equal(r.pin.version, 2);
    assert_string_equal(r.pin.value_json, "{\"n\":2}");

    /* An expired pin counts as absent for expected_version too. */
    assert_int_equal(upsert(fx, "w", "{}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "w", "{}", NO_TTL, 1, T0 + 2 * SEC, NULL), PINS_EABORTED);
    pin_result_free(&r);
}

static void test_value_round_trips_unicode_and_large(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    const char *uni = "{\"t\":\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x93\x8c\",\"q\":\"a\\\"b\"}";
    const char *key = "cl\xc3\xa9/\xe2\x9c\x93"; /* validation is the callers' job */
    assert_int_equal(upsert(fx, key, uni, NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(get(fx, key, T0, &r), 0);
    /* jsonb orders keys (shorter first, then bytewise) and drops blanks: PostgreSQL returns the
     * same object, not the same text (store/README.md). */
    assert_string_equal(
        r.pin.value_json,
        database_url() == NULL
            ? uni
            : "{\"q\":\"a\\\"b\",\"t\":\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x93\x8c\"}");
    assert_string_equal(r.pin.key, key);

    size_t big = 1024 * 1024;
    char *value = malloc(big + 1);
    assert_non_null(value);
    memset(value, 'x', big);
    memcpy(value, "{\"b\":\"", 6);
    memcpy(value + big - 2, "\"}", 2);
    value[big] = '\0';
    assert_int_equal(upsert(fx, "big", value, NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(get(fx, "big", T0, &r), 0);
    assert_int_equal(r.pin.value_len, big);
    assert_memory_equal(r.pin.value_json, value, big);
    free(value);
    pin_result_free(&r);
}

/* ---- list ---------------------------------------------------------------------------------- */

static void test_list_orders_by_created_desc_then_id_desc(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "p1", "{}", NO_TTL, ANY_VERSION, T0 + 1, NULL), 0);
    assert_int_equal(upsert(fx, "p2", "{}", NO_TTL, ANY_VERSION, T0 + 3, NULL), 0);
    assert_int_equal(upsert(fx, "p3", "{}", NO_TTL, ANY_VERSION, T0 + 2, NULL), 0);
    assert_int_equal(upsert(fx, "p4", "{}", NO_TTL, ANY_VERSION, T0 + 3, NULL), 0);
    /* An update does not move a pin: order is by created_at. */
    assert_int_equal(upsert(fx, "p1", "{\"u\":1}", NO_TTL, ANY_VERSION, T0 + 9, NULL), 0);

    list_result r;
    store_list_req req = list_req(fx, "", 100, T0 + 10);
    list(fx, &req, &r);
    assert_int_equal(r.page.err, 0);
    assert_int_equal(r.page.n, 4);
    assert_int_equal(r.page.total, 4);
    assert_string_equal(r.keys[0], "p4"); /* same created_at as p2, larger id */
    assert_string_equal(r.keys[1], "p2");
    assert_string_equal(r.keys[2], "p3");
    assert_string_equal(r.keys[3], "p1");
    assert_true(r.ids[0] > r.ids[1]);
    assert_int_equal(r.versions[3], 2);
}

static void test_list_hides_expired_unless_asked(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "live", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "soon", "{}", 100, ANY_VERSION, T0 + 1, NULL), 0);
    assert_int_equal(upsert(fx, "gone", "{}", 1, ANY_VERSION, T0 + 2, NULL), 0);

    list_result r;
    store_list_req req = list_req(fx, "", 100, T0 + 10 * SEC);
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 2);
    assert_int_equal(r.page.total, 2);
    assert_string_equal(r.keys[0], "soon");
    assert_string_equal(r.keys[1], "live");

    req.include_expired = true;
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 3);
    assert_int_equal(r.page.total, 3);
    assert_string_equal(r.keys[0], "gone");
    assert_true(r.has_expires[0]);
}

static void test_list_prefix_is_literal(void **state)
{
    fixture *fx = *state;
    /* "\303\251" is U+00E9. */
    static const char *const keys[] = {
        "a%b", "a_b", "axb", "a%", "ab", "b%", "A%b", "\303\251t\303\251", "\303\251a", "e"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        assert_int_equal(upsert(fx, keys[i], "{}", NO_TTL, ANY_VERSION, T0 + (int64_t)i, NULL), 0);
    list_result r;
    store_list_req req = list_req(fx, "a%", 100, T0 + SEC);
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 2);
    assert_int_equal(r.page.total, 2);
    assert_string_equal(r.keys[0], "a%");
    assert_string_equal(r.keys[1], "a%b");

    req.prefix = "a_";
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 1);
    assert_string_equal(r.keys[0], "a_b");

    req.prefix = "a";
    list(fx, &req, &r);
    assert_int_equal(r.page.total, 5); /* case-sensitive: not "A%b" */

    req.prefix = "\303\251";
    list(fx, &req, &r);
    assert_int_equal(r.page.total, 2);

    req.prefix = "zzz";
    list(fx, &req, &r);
    assert_int_equal(r.page.err, 0);
    assert_int_equal(r.page.n, 0);
    assert_int_equal(r.page.total, 0);

    req.prefix = NULL; /* treated as "" */
    list(fx, &req, &r);
    assert_int_equal(r.page.total, 10);
}

static void test_list_limit_offset_and_total(void **state)
{
    fixture *fx = *state;
    char key[16];
    for (int i = 0; i < 7; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(upsert(fx, key, "{}", NO_TTL, ANY_VERSION, T0 + i, NULL), 0);
    }
    list_result r;
    store_list_req req = list_req(fx, "", 3, T0 + SEC);
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 3);
    assert_int_equal(r.page.total, 7);
    assert_string_equal(r.keys[0], "k6");
    assert_string_equal(r.keys[2], "k4");

    req.offset = 3;
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 3);
    assert_int_equal(r.page.total, 7);
    assert_string_equal(r.keys[0], "k3");

    req.offset = 6;
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 1);
    assert_string_equal(r.keys[0], "k0");

    req.offset = 50;
    list(fx, &req, &r);
    assert_int_equal(r.page.n, 0);
    assert_int_equal(r.page.total, 7);
}

static void test_list_keyset_cursor_continues_after_last_row(void **state)
{
    fixture *fx = *state;
    char key[16];
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        /* k1 and k2 share a created_at: the id breaks the tie. */
        int64_t created = T0 + (i == 2 ? 1 : i);
        assert_int_equal(upsert(fx, key, "{}", NO_TTL, ANY_VERSION, created, NULL), 0);
    }
    const char *expect[] = {"k4", "k3", "k2", "k1", "k0"};
    store_list_req req = list_req(fx, "", 2, T0 + SEC);
    size_t seen = 0;
    list_result r;
    list(fx, &req, &r);
    req.offset = 99; /* ignored with a cursor */
    while (r.page.n > 0) {
        for (size_t i = 0; i < r.page.n; i++)
            assert_string_equal(r.keys[i], expect[seen + i]);
        seen += r.page.n;
        assert_int_equal(r.page.total, 5);
        req.has_cursor = true;
        req.cursor_created_us = r.created[r.page.n - 1];
        req.cursor_id = r.ids[r.page.n - 1];
        list(fx, &req, &r);
    }
    assert_int_equal(seen, 5);
}

static void test_list_rejects_page_out_of_range(void **state)
{
    fixture *fx = *state;
    list_result r = {0};
    store_list_req req = list_req(fx, "", 0, T0);
    assert_int_equal(store_pin_list(fx->ss, &req, on_list, &r), PINS_EINVALID_ARGUMENT);
    req.limit = 1001;
    assert_int_equal(store_pin_list(fx->ss, &req, on_list, &r), PINS_EINVALID_ARGUMENT);
    req.limit = 1000;
    req.offset = -1;
    assert_int_equal(store_pin_list(fx->ss, &req, on_list, &r), PINS_EINVALID_ARGUMENT);
    assert_int_equal(r.page.calls, 0);
    req.offset = 0;
    list(fx, &req, &r);
    assert_int_equal(r.page.err, 0);
}

/* ---- delete, cleanup, sweep ---------------------------------------------------------------- */

static void test_delete_returns_pin_as_it_was(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "d", "{\"a\":1}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "d", "{\"a\":2}", NO_TTL, ANY_VERSION, T0 + 1, NULL), 0);
    assert_int_equal(del(fx, "d", ANY_VERSION, T0 + 2, &r), 0);
    assert_string_equal(r.pin.value_json, "{\"a\":2}");
    assert_string_equal(r.pin.key, "d");
    assert_string_equal(r.pin.tenant_id, fx->tenant);
    assert_int_equal(r.pin.version, 2);
    assert_int_equal(r.pin.created_us, T0);
    assert_int_equal(get(fx, "d", T0 + 3, NULL), PINS_ENOT_FOUND);
    assert_int_equal(del(fx, "d", ANY_VERSION, T0 + 3, NULL), PINS_ENOT_FOUND);
    pin_result_free(&r);
}

static void test_delete_removes_expired_pin(void **state)
{
    fixture *fx = *state;
    pin_result r = {0};
    assert_int_equal(upsert(fx, "old", "{}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(get(fx, "old", T0 + 5 * SEC, NULL), PINS_ENOT_FOUND);
    assert_int_equal(del(fx, "old", ANY_VERSION, T0 + 5 * SEC, &r), 0);
    assert_true(r.pin.has_expires);
    assert_int_equal(del(fx, "old", ANY_VERSION, T0 + 5 * SEC, NULL), PINS_ENOT_FOUND);
    pin_result_free(&r);
}

static void test_delete_expected_version_mismatch_aborts(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "d", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "d", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(del(fx, "d", 1, T0, NULL), PINS_EABORTED);
    assert_int_equal(del(fx, "d", 0, T0, NULL), PINS_EABORTED);
    assert_int_equal(get(fx, "d", T0, NULL), 0);
    assert_int_equal(del(fx, "d", 2, T0, NULL), 0);
    assert_int_equal(del(fx, "d", 2, T0, NULL), PINS_ENOT_FOUND);
}

static void test_cleanup_deletes_one_tenants_expired_pins(void **state)
{
    fixture *fx = *state;
    char other[64];
    snprintf(other, sizeof(other), "%s-other", fx->tenant);
    assert_int_equal(upsert(fx, "e1", "{}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "e2", "{}", 2, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "live", "{}", 1000, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "forever", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert_full(fx, other, "e", "{}", 1, ANY_VERSION, T0, NULL, NULL, NULL), 0);

    assert_int_equal(cleanup(fx, fx->tenant, T0 + 10 * SEC), 2);
    assert_int_equal(cleanup(fx, fx->tenant, T0 + 10 * SEC), 0);
    list_result r;
    store_list_req req = list_req(fx, "", 100, T0);
    req.include_expired = true;
    list(fx, &req, &r);
    assert_int_equal(r.page.total, 2);
    req.tenant_id = other;
    list(fx, &req, &r);
    assert_int_equal(r.page.total, 1); /* the other tenant's expired pin is kept */
}

static void test_cleanup_without_tenant_deletes_every_expired_pin(void **state)
{
    fixture *fx = *state;
    const int64_t now = T0 + 100000 * SEC; /* past every expiry of this suite */
    cleanup(fx, NULL, now);                /* a shared database may hold other tests' pins */
    char other[64];
    snprintf(other, sizeof(other), "%s-other", fx->tenant);
    assert_int_equal(upsert(fx, "e1", "{}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "keep", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert_full(fx, other, "e2", "{}", 1, ANY_VERSION, T0, NULL, NULL, NULL), 0);
    assert_int_equal(upsert_full(fx, other, "e3", "{}", 3, ANY_VERSION, T0, NULL, NULL, NULL), 0);
    assert_int_equal(cleanup(fx, NULL, T0 + 2 * SEC), 2);
    assert_int_equal(cleanup(fx, NULL, now), 1);
    assert_int_equal(cleanup(fx, NULL, now), 0);
    assert_int_equal(get(fx, "keep", now, NULL), 0);
}

static void test_sweep_deletes_at_most_batch(void **state)
{
    fixture *fx = *state;
    const int64_t far = T0 + 100000 * SEC;
    sweep(fx, far, 1000000); /* a shared database may hold other tests' pins */
    char key[16];
    for (int i = 0; i < 7; i++) {
        snprintf(key, sizeof(key), "s%d", i);
        assert_int_equal(upsert(fx, key, "{}", 1, ANY_VERSION, T0, NULL), 0);
    }
    assert_int_equal(upsert(fx, "keep", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "later", "{}", 1000, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(sweep(fx, T0 + 2 * SEC, 3), 3);
    assert_int_equal(sweep(fx, T0 + 2 * SEC, 3), 3);
    assert_int_equal(sweep(fx, T0 + 2 * SEC, 3), 1);
    assert_int_equal(sweep(fx, T0 + 2 * SEC, 3), 0);
    assert_int_equal(get(fx, "keep", T0 + 2 * SEC, NULL), 0);
    assert_int_equal(get(fx, "later", T0 + 2 * SEC, NULL), 0);

    count_result c = {0};
    assert_int_equal(store_pin_sweep(fx->ss, T0, 0, on_count, &c), PINS_EINVALID_ARGUMENT);
    assert_int_equal(c.calls, 0);
}

/* ---- audit --------------------------------------------------------------------------------- */

static void test_audit_rows_for_upsert_and_delete(void **state)
{
    fixture *fx = *state;
    char h1[17], h2[17];
    hash16("{\"a\":1}", h1);
    hash16("{\"a\":2}", h2);
    assert_int_equal(upsert_full(fx, fx->tenant, "k", "{\"a\":1}", NO_TTL, ANY_VERSION, T0,
                                 "agent-7", "req-1", NULL),
                     0);
    assert_int_equal(upsert_full(fx, fx->tenant, "k", "{\"a\":2}", NO_TTL, ANY_VERSION, T0 + 1,
                                 NULL, NULL, NULL),
                     0);
    assert_int_equal(del(fx, "k", ANY_VERSION, T0 + 2, NULL), 0);
    /* Failed writes change nothing and leave no row. */
    assert_int_equal(del(fx, "k", ANY_VERSION, T0 + 3, NULL), PINS_ENOT_FOUND);

    audit_result r;
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .limit = 10}, &r);
    assert_int_equal(r.page.n, 3);
    assert_int_equal(r.page.total, 3);
    /* Newest first. */
    assert_string_equal(r.operation[0], "delete");
    assert_int_equal(r.ts[0], T0 + 2);
    assert_string_equal(r.old_hash[0], h2);
    assert_string_equal(r.new_hash[0], "");
    assert_string_equal(r.agent[0], "agent-d");
    assert_string_equal(r.source[0], "api");
    assert_true(r.latency_ms[0] == 0.25);

    assert_string_equal(r.operation[1], "upsert");
    assert_string_equal(r.old_hash[1], h1);
    assert_string_equal(r.new_hash[1], h2);
    assert_string_equal(r.agent[1], "");

    assert_string_equal(r.operation[2], "upsert");
    assert_int_equal(r.ts[2], T0);
    assert_string_equal(r.old_hash[2], ""); /* nothing before it */
    assert_string_equal(r.new_hash[2], h1);
    assert_string_equal(r.agent[2], "agent-7");
    assert_string_equal(r.key[2], "k");
    assert_string_equal(r.tenant[2], fx->tenant);
    assert_true(r.success[2]);
    assert_true(r.latency_ms[2] == 1.5);
}

static void test_audit_upsert_over_expired_has_no_old_hash(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "k", "{\"a\":1}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "k", "{\"a\":2}", 1, ANY_VERSION, T0 + 5 * SEC, NULL), 0);
    audit_result r;
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .limit = 10}, &r);
    assert_int_equal(r.page.n, 2);
    assert_string_equal(r.old_hash[0], "");
}

static void test_audit_list_filters_pages_and_counts(void **state)
{
    fixture *fx = *state;
    char other[64];
    snprintf(other, sizeof(other), "%s-other", fx->tenant);
    assert_int_equal(upsert(fx, "a", "{}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "a", "{}", NO_TTL, ANY_VERSION, T0 + 1, NULL), 0);
    assert_int_equal(upsert(fx, "b", "{}", NO_TTL, ANY_VERSION, T0 + 2, NULL), 0);
    assert_int_equal(del(fx, "a", ANY_VERSION, T0 + 3, NULL), 0);
    assert_int_equal(
        upsert_full(fx, other, "a", "{}", NO_TTL, ANY_VERSION, T0 + 4, NULL, NULL, NULL), 0);

    audit_result r;
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .limit = 100}, &r);
    assert_int_equal(r.page.total, 4);
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "a", .limit = 100}, &r);
    assert_int_equal(r.page.total, 3);
    assert_int_equal(r.page.n, 3);
    audit(fx,
          &(store_audit_list_req){
              .tenant_id = fx->tenant, .key = "a", .operation = "upsert", .limit = 100},
          &r);
    assert_int_equal(r.page.total, 2);
    assert_int_equal(r.ts[0], T0 + 1);
    assert_int_equal(r.ts[1], T0);
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .operation = "delete", .limit = 5},
          &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.key[0], "a");
    audit(fx, &(store_audit_list_req){.tenant_id = other, .limit = 5}, &r);
    assert_int_equal(r.page.total, 1);

    /* Paging: total ignores limit and offset. */
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .limit = 2, .offset = 1}, &r);
    assert_int_equal(r.page.total, 4);
    assert_int_equal(r.page.n, 2);
    assert_int_equal(r.ts[0], T0 + 2);
    assert_int_equal(r.ts[1], T0 + 1);

    /* No filter: every tenant, newest first. */
    audit(fx, &(store_audit_list_req){.limit = 1}, &r);
    assert_int_equal(r.page.n, 1);
    assert_true(r.page.total >= 5);

    audit_result bad = {0};
    assert_int_equal(store_audit_list(fx->ss, &(store_audit_list_req){.limit = 0}, on_audit, &bad),
                     PINS_EINVALID_ARGUMENT);
    assert_int_equal(bad.page.calls, 0);
}

/* ---- batched audit writes and the rbac audit ------------------------------------------------ */

typedef struct rbac_result {
    page_seen page;
    int64_t ts[MAX_ROWS];
    char subject[MAX_ROWS][32];
    char action[MAX_ROWS][16];
    char reason[MAX_ROWS][40]; /* "" when NULL */
    char roles[MAX_ROWS][64];  /* joined with ',' */
    char path[MAX_ROWS][64];
    char request_id[MAX_ROWS][32];
    bool allowed[MAX_ROWS];
    double latency_ms[MAX_ROWS];
} rbac_result;

static void on_rbac(void *arg, int err, const store_rbac_audit *rows, size_t nrows, int64_t total)
{
    rbac_result *r = arg;
    see_page(&r->page, err, nrows, total);
    for (size_t i = 0; i < nrows; i++) {
        r->ts[i] = rows[i].ts_us;
        copy_str(r->subject[i], sizeof(r->subject[i]), rows[i].subject);
        copy_str(r->action[i], sizeof(r->action[i]), rows[i].action);
        copy_str(r->reason[i], sizeof(r->reason[i]), rows[i].reason);
        copy_str(r->path[i], sizeof(r->path[i]), rows[i].path);
        copy_str(r->request_id[i], sizeof(r->request_id[i]), rows[i].request_id);
        r->roles[i][0] = '\0';
        for (size_t k = 0; k < rows[i].nroles; k++) {
            size_t len = strlen(r->roles[i]);
            snprintf(r->roles[i] + len, sizeof(r->roles[i]) - len, "%s%s", k ? "," : "",
                     rows[i].roles[k]);
        }
        r->allowed[i] = rows[i].allowed;
        r->latency_ms[i] = rows[i].latency_ms;
    }
}

static void rbac_list(fixture *fx, store_rbac_audit_list_req req, rbac_result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(store_rbac_audit_list(fx->ss, &req, on_rbac, r), 0);
    wait_for(fx, &r->page.calls);
    assert_int_equal(r->page.err, 0);
}

static void rbac_write(fixture *fx, const store_rbac_audit *rows, size_t n)
{
    count_result c = {0};
    assert_int_equal(store_rbac_audit_write(fx->ss, rows, n, on_count, &c), 0);
    wait_for(fx, &c.calls);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.count, (int64_t)n);
}

static void test_rbac_audit_write_then_list_filters_and_pages(void **state)
{
    fixture *fx = *state;
    static const char *const two[] = {"dev", "read\"only\\"};
    const store_rbac_audit rows[] = {
        {.ts_us = T0,
         .subject = "alice",
         .resource = "memory_pin",
         .action = "write",
         .allowed = false,
         .reason = "insufficient-permissions",
         .roles = two,
         .nroles = 2,
         .path = "/api/v1/memory/pins",
         .method = "POST",
         .tenant_id = fx->tenant,
         .request_id = "r-1",
         .latency_ms = 0.25},
        {.ts_us = T0 + SEC,
         .subject = "anonymous",
         .resource = "memory_pin",
         .action = "read",
         .allowed = false,
         .reason = "no-credentials",
         .tenant_id = fx->tenant},
        {.ts_us = T0 + 2 * SEC,
         .subject = "machine",
         .resource = "rbac",
         .action = "read",
         .allowed = true,
         .reason = "role-allowed",
         .tenant_id = fx->tenant},
    };
    rbac_write(fx, rows, 3);

    rbac_result r;
    rbac_list(fx, (store_rbac_audit_list_req){.tenant_id = fx->tenant, .limit = 100}, &r);
    assert_int_equal(r.page.total, 3);
    assert_int_equal(r.page.n, 3);
    assert_string_equal(r.subject[0], "machine"); /* newest first */
    assert_string_equal(r.subject[2], "alice");
    assert_int_equal(r.ts[2], T0);
    assert_string_equal(r.roles[2], "dev,read\"only\\");
    assert_string_equal(r.roles[1], "");
    assert_string_equal(r.path[2], "/api/v1/memory/pins");
    assert_string_equal(r.request_id[2], "r-1");
    assert_string_equal(r.reason[2], "insufficient-permissions");
    assert_true(r.latency_ms[2] > 0.24 && r.latency_ms[2] < 0.26);
    assert_false(r.allowed[2]);
    assert_true(r.allowed[0]);

    rbac_list(fx,
              (store_rbac_audit_list_req){
                  .tenant_id = fx->tenant, .has_allowed = true, .allowed = false, .limit = 100},
              &r);
    assert_int_equal(r.page.total, 2);
    rbac_list(fx,
              (store_rbac_audit_list_req){
                  .tenant_id = fx->tenant, .resource = "memory_pin", .action = "read", .limit = 9},
              &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.subject[0], "anonymous");
    rbac_list(fx,
              (store_rbac_audit_list_req){.tenant_id = fx->tenant, .subject = "alice", .limit = 9},
              &r);
    assert_int_equal(r.page.total, 1);
    rbac_list(fx,
              (store_rbac_audit_list_req){
                  .tenant_id = fx->tenant, .has_since = true, .since_us = T0 + SEC, .limit = 9},
              &r);
    assert_int_equal(r.page.total, 2);
    assert_string_equal(r.subject[1], "anonymous");
    /* Paging: total ignores limit and offset. */
    rbac_list(fx, (store_rbac_audit_list_req){.tenant_id = fx->tenant, .limit = 1, .offset = 1},
              &r);
    assert_int_equal(r.page.total, 3);
    assert_int_equal(r.page.n, 1);
    assert_string_equal(r.subject[0], "anonymous");

    rbac_result bad = {0};
    assert_int_equal(
        store_rbac_audit_list(fx->ss, &(store_rbac_audit_list_req){.limit = 1001}, on_rbac, &bad),
        PINS_EINVALID_ARGUMENT);
    count_result c = {0};
    assert_int_equal(store_rbac_audit_write(fx->ss, rows, 0, on_count, &c), PINS_EINVALID_ARGUMENT);
    assert_int_equal(bad.page.calls + c.calls, 0);
}

static void test_rbac_audit_cleanup_deletes_only_older_rows(void **state)
{
    fixture *fx = *state;
    const int64_t old = INT64_C(700000000) * SEC; /* 1992: older than any other test's rows */
    const store_rbac_audit rows[] = {
        {.ts_us = old,
         .subject = "a",
         .resource = "rbac",
         .action = "read",
         .tenant_id = fx->tenant},
        {.ts_us = old + SEC,
         .subject = "b",
         .resource = "rbac",
         .action = "read",
         .tenant_id = fx->tenant},
        {.ts_us = old + 10 * SEC,
         .subject = "c",
         .resource = "rbac",
         .action = "read",
         .tenant_id = fx->tenant},
    };
    rbac_write(fx, rows, 3);
    count_result c = {0};
    assert_int_equal(store_rbac_audit_cleanup(fx->ss, old + 2 * SEC, on_count, &c), 0);
    wait_for(fx, &c.calls);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.count, 2);
    rbac_result r;
    rbac_list(fx, (store_rbac_audit_list_req){.tenant_id = fx->tenant, .limit = 10}, &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.subject[0], "c");
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_rbac_audit_cleanup(fx->ss, old + 2 * SEC, on_count, &c), 0);
    wait_for(fx, &c.calls);
    assert_int_equal(c.count, 0);
}

static void test_audit_expire_deletes_the_oldest_rows_in_bounded_batches(void **state)
{
    fixture *fx = *state;
    const int64_t old = INT64_C(315532800) * SEC; /* 1980: older than any other test's rows */
    store_rbac_audit rows[4];
    for (int i = 0; i < 4; i++)
        rows[i] = (store_rbac_audit){.ts_us = old + (i == 3 ? 10 : i) * SEC,
                                     .subject = i == 3 ? "kept" : "expired",
                                     .resource = "rbac",
                                     .action = "read",
                                     .tenant_id = fx->tenant,
                                     .count = i + 1};
    rbac_write(fx, rows, 4);
    /* Batches of two: two, then the last one older than the limit, then none. */
    const int64_t want[] = {2, 1, 0};
    for (size_t i = 0; i < 3; i++) {
        count_result c = {0};
        assert_int_equal(
            store_audit_expire(fx->ss, STORE_AUDIT_RBAC, old + 5 * SEC, 2, on_count, &c), 0);
        wait_for(fx, &c.calls);
        assert_int_equal(c.err, 0);
        assert_int_equal(c.count, want[i]);
    }
    rbac_result r;
    rbac_list(fx, (store_rbac_audit_list_req){.tenant_id = fx->tenant, .limit = 10}, &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.subject[0], "kept");

    const store_memory_audit mrows[] = {
        {.ts_us = old, .operation = "get", .tenant_id = fx->tenant, .key = "a", .success = true},
        {.ts_us = old + 10 * SEC,
         .operation = "get",
         .tenant_id = fx->tenant,
         .key = "b",
         .success = true},
    };
    count_result c = {0};
    assert_int_equal(store_memory_audit_write(fx->ss, mrows, 2, on_count, &c), 0);
    wait_for(fx, &c.calls);
    memset(&c, 0, sizeof(c));
    assert_int_equal(
        store_audit_expire(fx->ss, STORE_AUDIT_MEMORY, old + 5 * SEC, 100, on_count, &c), 0);
    wait_for(fx, &c.calls);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.count, 1);

    /* Bad arguments change nothing and never call back. */
    memset(&c, 0, sizeof(c));
    assert_int_equal(store_audit_expire(fx->ss, STORE_AUDIT_RBAC, old + 60 * SEC, 0, on_count, &c),
                     PINS_EINVALID_ARGUMENT);
    assert_int_equal(
        store_audit_expire(fx->ss, (store_audit_table)7, old + 60 * SEC, 5, on_count, &c),
        PINS_EINVALID_ARGUMENT);
    assert_int_equal(c.calls, 0);
    rbac_list(fx, (store_rbac_audit_list_req){.tenant_id = fx->tenant, .limit = 10}, &r);
    assert_int_equal(r.page.total, 1);
}

static void test_memory_audit_write_rows_are_listed(void **state)
{
    fixture *fx = *state;
    const store_memory_audit rows[] = {
        {.ts_us = T0,
         .operation = "get",
         .tenant_id = fx->tenant,
         .key = "k1",
         .agent_id = "agent-1",
         .cache_hit = true,
         .latency_ms = 1.5,
         .success = true},
        {.ts_us = T0 + 1,
         .operation = "list",
         .tenant_id = fx->tenant,
         .key = "pre",
         .success = false,
         .error_message = "store unavailable"},
    };
    count_result c = {0};
    assert_int_equal(store_memory_audit_write(fx->ss, rows, 2, on_count, &c), 0);
    wait_for(fx, &c.calls);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.count, 2);
    audit_result r;
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .limit = 10}, &r);
    assert_int_equal(r.page.total, 2);
    assert_string_equal(r.operation[0], "list");
    assert_string_equal(r.key[0], "pre");
    assert_false(r.success[0]);
    assert_string_equal(r.operation[1], "get");
    assert_string_equal(r.agent[1], "agent-1");
    assert_true(r.success[1]);
    assert_int_equal(r.ts[1], T0);
    assert_true(r.latency_ms[1] > 1.4 && r.latency_ms[1] < 1.6);
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .operation = "get", .limit = 10},
          &r);
    assert_int_equal(r.page.total, 1);
}

/* A read summary (key "*") is returned by a listing filtered on any key it lists, and only
 * then; its keys never leak into another key's listing. */
static void test_memory_audit_summary_rows_match_the_keys_they_list(void **state)
{
    fixture *fx = *state;
    const store_memory_audit rows[] = {
        {.ts_us = T0,
         .operation = "get",
         .tenant_id = fx->tenant,
         .key = "*",
         .success = true,
         .reads = 5,
         .keys = "{\"alpha\":3,\"be\\\"ta\":1,\"g\xc3\xa4mma\":1}"},
        {.ts_us = T0 + 1,
         .operation = "get",
         .tenant_id = fx->tenant,
         .key = "alpha",
         .success = true},
        {.ts_us = T0 + 2,
         .operation = "get",
         .tenant_id = fx->tenant,
         .key = "*",
         .success = true,
         .reads = 2,
         .keys = "{\"delta\":2}"},
    };
    count_result c = {0};
    assert_int_equal(store_memory_audit_write(fx->ss, rows, 3, on_count, &c), 0);
    wait_for(fx, &c.calls);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.count, 3);
    audit_result r;
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "alpha", .limit = 10}, &r);
    assert_int_equal(r.page.total, 2);
    assert_string_equal(r.key[0], "alpha");
    assert_string_equal(r.key[1], "*");
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "be\"ta", .limit = 10}, &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.key[0], "*");
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "g\xc3\xa4mma", .limit = 10},
          &r);
    assert_int_equal(r.page.total, 1);
    audit(fx, &(store_audit_list_req){.key = "delta", .limit = 10}, &r);
    assert_int_equal(r.page.total, 1);
    assert_int_equal(r.ts[0], T0 + 2);
    /* Neither a key it does not list nor a part of one. */
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "alph", .limit = 10}, &r);
    assert_int_equal(r.page.total, 0);
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "reads", .limit = 10}, &r);
    assert_int_equal(r.page.total, 0);
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "keys", .limit = 10}, &r);
    assert_int_equal(r.page.total, 0);
    /* The key "*" itself lists the summaries (and reads of a pin named "*"). */
    audit(fx, &(store_audit_list_req){.tenant_id = fx->tenant, .key = "*", .limit = 10}, &r);
    assert_int_equal(r.page.total, 2);
}

/* ---- sessions, durability, misc ------------------------------------------------------------ */

static void test_ping_answers(void **state)
{
    fixture *fx = *state;
    count_result r = {0};
    assert_int_equal(store_ping(fx->ss, on_count, &r), 0);
    wait_for(fx, &r.calls);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.count, 0);
    assert_string_equal(store_session_last_error(fx->ss), "");
    assert_false(store_session_schema_behind(fx->ss));
}

static void test_backend_name_matches_options(void **state)
{
    fixture *fx = *state;
    assert_string_equal(store_backend_name(fx->s), database_url() != NULL ? "postgres" : "sqlite");
}

static void test_two_sessions_write_the_same_store(void **state)
{
    fixture *fx = *state;
    store_session *second = NULL;
    assert_int_equal(store_session_new(fx->s, fx->base, &second), 0);
    pin_result r = {0};
    assert_int_equal(upsert(fx, "shared", "{\"by\":1}", NO_TTL, ANY_VERSION, T0, NULL), 0);

    store_session *first = fx->ss;
    fx->ss = second;
    assert_int_equal(upsert(fx, "shared", "{\"by\":2}", NO_TTL, 1, T0 + 1, &r), 0);
    assert_int_equal(r.pin.version, 2);
    assert_int_equal(upsert(fx, "own", "{}", NO_TTL, ANY_VERSION, T0 + 2, NULL), 0);
    fx->ss = first;
    assert_int_equal(get(fx, "shared", T0 + 3, &r), 0);
    assert_string_equal(r.pin.value_json, "{\"by\":2}");
    assert_int_equal(get(fx, "own", T0 + 3, NULL), 0);
    assert_int_equal(upsert(fx, "shared", "{}", NO_TTL, 1, T0 + 4, NULL), PINS_EABORTED);
    store_session_free(second);
    pin_result_free(&r);
}

typedef struct writer {
    store *s;
    int calls; /* of the current write */
    int err;
    const char *tenant;
    int id;
    int writes;
    int failures;
} writer;

/* No cmocka assertion off the main thread: only count. */
static void on_writer_pin(void *arg, int err, const store_pin *pin, bool created)
{
    writer *w = arg;
    w->calls++;
    w->err = err;
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    store_session *ss = NULL;
    if (store_session_new(w->s, NULL, &ss) != 0) {
        w->failures = w->writes;
        return NULL;
    }
    char key[32];
    for (int i = 0; i < w->writes; i++) {
        /* Every other write goes to the key both threads update. */
        if (i % 2 == 0)
            snprintf(key, sizeof(key), "shared");
        else
            snprintf(key, sizeof(key), "w%d-%d", w->id, i);
        const store_upsert_req req = {
            .tenant_id = w->tenant,
            .key = key,
            .value_json = "{}",
            .value_len = 2,
            .value_hash = "44136fa355b3678a",
            .source = "api",
            .now_us = T0 + i,
        };
        w->calls = 0;
        if (store_pin_upsert(ss, &req, on_writer_pin, w) != 0 || w->calls != 1 || w->err != 0)
            w->failures++;
    }
    store_session_free(ss);
    return NULL;
}

static void test_sessions_on_threads_write_concurrently(void **state)
{
    fixture *fx = *state;
    if (database_url() != NULL)
        skip(); /* an asynchronous backend needs each thread's loop */
    enum { THREADS = 2, WRITES = 200 };
    writer w[THREADS];
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (writer){.s = fx->s, .tenant = fx->tenant, .id = i, .writes = WRITES};
        assert_int_equal(pthread_create(&tid[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(tid[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
    }
    pin_result r = {0};
    assert_int_equal(get(fx, "shared", T0 + WRITES, &r), 0);
    assert_int_equal(r.pin.version, THREADS * WRITES / 2);
    list_result l;
    store_list_req req = list_req(fx, "w", 1, T0 + WRITES);
    list(fx, &req, &l);
    assert_int_equal(l.page.total, THREADS * WRITES / 2);
    pin_result_free(&r);
}

static void test_reopening_the_store_keeps_data(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "persist", "{\"x\":true}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "persist", "{\"x\":false}", NO_TTL, ANY_VERSION, T0 + 1, NULL), 0);
    store_fixture_close(fx);
    store_fixture_open(fx); /* migrations run again: harmless */
    store_fixture_close(fx);
    store_fixture_open(fx);
    pin_result r = {0};
    assert_int_equal(get(fx, "persist", T0 + 2, &r), 0);
    assert_int_equal(r.pin.version, 2);
    assert_string_equal(r.pin.value_json, "{\"x\":false}");
    assert_int_equal(upsert(fx, "persist", "{}", NO_TTL, 2, T0 + 3, &r), 0);
    assert_int_equal(r.pin.version, 3);
    pin_result_free(&r);
}

static void test_acknowledged_write_survives_kill(void **state)
{
    fixture *fx = *state;
    pid_t pid = store_fixture_fork(fx);
    if (pid == 0) {
        /* The child writes through a store of its own and is killed right after the ack. */
        store *s = NULL;
        store_session *ss = NULL;
        if (store_open(&fx->opts, &s) != 0 || store_session_new(s, NULL, &ss) != 0)
            _exit(1);
        pin_result r = {0};
        const store_upsert_req req = {
            .tenant_id = fx->tenant,
            .key = "acked",
            .value_json = "{\"k\":9}",
            .value_len = 7,
            .value_hash = "0000000000000000",
            .source = "api",
            .now_us = T0,
        };
        if (store_pin_upsert(ss, &req, on_pin, &r) != 0 || r.err != 0)
            _exit(2);
        kill(getpid(), SIGKILL);
        _exit(3);
    }
    store_fixture_reopen_after_kill(fx, pid);
    pin_result r = {0};
    assert_int_equal(get(fx, "acked", T0, &r), 0);
    assert_string_equal(r.pin.value_json, "{\"k\":9}");
    pin_result_free(&r);
}

typedef struct nested {
    fixture *fx;
    pin_result outer;
    pin_result inner;
    char outer_value_seen_after[32];
} nested;

static void on_outer_get(void *arg, int err, const store_pin *pin, bool created)
{
    nested *n = arg;
    on_pin(&n->outer, err, pin, created);
    /* Another operation from inside the callback, on the same session; the test waits for it
     * after this callback (a backend may complete it at once or later, from the loop). */
    assert_int_equal(store_pin_get(n->fx->ss, n->fx->tenant, "b", T0, on_pin, &n->inner), 0);
    copy_str(n->outer_value_seen_after, sizeof(n->outer_value_seen_after), pin->value_json);
}

static void test_callback_may_start_another_operation(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "a", "{\"which\":\"a\"}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "b", "{\"which\":\"b\"}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    nested n = {.fx = fx};
    assert_int_equal(store_pin_get(fx->ss, fx->tenant, "a", T0, on_outer_get, &n), 0);
    wait_for(fx, &n.outer.calls);
    wait_for(fx, &n.inner.calls);
    assert_int_equal(n.outer.err, 0);
    assert_int_equal(n.inner.err, 0);
    assert_string_equal(n.inner.pin.value_json, "{\"which\":\"b\"}");
    /* The outer pin is still intact after the nested operation. */
    assert_string_equal(n.outer_value_seen_after, "{\"which\":\"a\"}");
    pin_result_free(&n.outer);
    pin_result_free(&n.inner);
}

/* Runs the loop until each of the n results has its callback. */
static void wait_all(fixture *fx, pin_result *r, int n)
{
    for (int i = 0; i < n; i++) {
        while (r[i].calls == 0) {
            if (event_base_loop(fx->base, EVLOOP_ONCE) != 0)
                break;
        }
        assert_int_equal(r[i].calls, 1);
    }
}

#define NGETS 150

static void test_concurrent_gets_each_get_their_own_pin(void **state)
{
    /* Many reads in flight at once (the PostgreSQL backend answers them with one statement per
     * batch): each gets its own pin, NOT_FOUND for missing, expired and other tenants' keys, and
     * keys with quotes, backslashes, commas, braces and blanks arrive intact. */
    fixture *fx = *state;
    static const char *const keys[] = {"plain",   "quo\"te", "back\\slash", "com,ma",
                                       "{brace}", "NULL",    " sp ",        "\xd0\xba\xd0\xbb",
                                       "expired", "missing"};
    const int nkeys = (int)(sizeof(keys) / sizeof(keys[0]));
    for (int i = 0; i < nkeys - 1; i++) {
        char value[64];
        snprintf(value, sizeof(value), "{\"i\":%d}", i);
        int ttl = strcmp(keys[i], "expired") == 0 ? 10 : NO_TTL;
        assert_int_equal(upsert(fx, keys[i], value, ttl, ANY_VERSION, T0, NULL), 0);
    }
    static pin_result r[NGETS];
    memset(r, 0, sizeof(r));
    const int64_t now = T0 + 60 * SEC;
    for (int i = 0; i < NGETS; i++) {
        const char *tenant = i % 7 == 6 ? "some-other-tenant" : fx->tenant;
        assert_int_equal(store_pin_get(fx->ss, tenant, keys[i % nkeys], now, on_pin, &r[i]), 0);
    }
    wait_all(fx, r, NGETS);
    for (int i = 0; i < NGETS; i++) {
        int k = i % nkeys;
        bool found =
            i % 7 != 6 && strcmp(keys[k], "expired") != 0 && strcmp(keys[k], "missing") != 0;
        assert_int_equal(r[i].err, found ? 0 : PINS_ENOT_FOUND);
        if (found) {
            char value[64];
            snprintf(value, sizeof(value), "{\"i\":%d}", k);
            assert_string_equal(r[i].key, keys[k]);
            assert_string_equal(r[i].tenant, fx->tenant);
            assert_string_equal(r[i].value, value);
        }
        pin_result_free(&r[i]);
    }
}

static void test_reads_of_one_key_waiting_together_each_check_their_own_clock(void **state)
{
    /* Reads of one key waiting together (on PostgreSQL one array element serves them all) each
     * get the pin as a read at their own clock would: "hot" expires at T0 + 10 s, so a call at
     * that instant or later gets NOT_FOUND while the others get the pin, whichever order the
     * calls came in; every call of "gone" is at or past its expiry; "cold" has no expiry; the same
     * keys in another tenant are not found. */
    fixture *fx = *state;
    pin_result hot0 = {0};
    assert_int_equal(upsert(fx, "hot", "{\"v\":\"hot\"}", 10, ANY_VERSION, T0, &hot0), 0);
    assert_int_equal(upsert(fx, "gone", "{\"v\":\"gone\"}", 1, ANY_VERSION, T0, NULL), 0);
    assert_int_equal(upsert(fx, "cold", "{\"v\":\"cold\"}", NO_TTL, ANY_VERSION, T0, NULL), 0);
    static const int64_t clocks[] = {11 * SEC, 10 * SEC,     10 * SEC - 1, 5 * SEC,
                                     0,        10 * SEC + 1, 2 * SEC};
    static const char *const keys[] = {"hot", "cold", "gone", "hot", "missing"};
    enum { NCLOCKS = sizeof(clocks) / sizeof(clocks[0]), NKEYS = sizeof(keys) / sizeof(keys[0]) };
    enum { N = 60 };
    static pin_result r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        const char *tenant = i % 11 == 10 ? "some-other-tenant" : fx->tenant;
        int64_t now = T0 + clocks[i % NCLOCKS] + (strcmp(keys[i % NKEYS], "gone") == 0 ? SEC : 0);
        assert_int_equal(store_pin_get(fx->ss, tenant, keys[i % NKEYS], now, on_pin, &r[i]), 0);
    }
    wait_all(fx, r, N);
    int hot_found = 0, hot_expired = 0;
    for (int i = 0; i < N; i++) {
        const char *key = keys[i % NKEYS];
        int64_t clock = clocks[i % NCLOCKS];
        bool hot = strcmp(key, "hot") == 0;
        bool found = i % 11 != 10 && (strcmp(key, "cold") == 0 || (hot && clock < 10 * SEC));
        assert_int_equal(r[i].err, found ? 0 : PINS_ENOT_FOUND);
        if (hot && i % 11 != 10)
            *(found ? &hot_found : &hot_expired) += 1;
        if (found) {
            char value[32];
            snprintf(value, sizeof(value), "{\"v\":\"%s\"}", key);
            assert_string_equal(r[i].tenant, fx->tenant);
            assert_string_equal(r[i].key, key);
            assert_string_equal(r[i].value, value);
            assert_int_equal(r[i].pin.version, 1);
            assert_int_equal(r[i].pin.has_expires, hot);
            if (hot) {
                assert_int_equal(r[i].pin.id, hot0.pin.id);
                assert_int_equal(r[i].pin.expires_us, T0 + 10 * SEC);
                assert_int_equal(r[i].pin.ttl_seconds, 10);
            }
        }
        pin_result_free(&r[i]);
    }
    /* both outcomes of "hot" occurred among calls that waited together */
    assert_true(hot_found > 0);
    assert_true(hot_expired > 0);
    pin_result_free(&hot0);
}

#define NWRITES 40

static void test_concurrent_writes_commit_and_a_bad_one_fails_alone(void **state)
{
    /* Writes in flight at once (one transaction per batch on PostgreSQL): every good write is
     * acknowledged and kept with its audit row, writes of one key get consecutive versions, and
     * on PostgreSQL a value the database refuses (not JSON: the handlers never send one, SQLite
     * does not parse it) fails alone: its transaction rolls back, the others run again. One bad
     * value has a key of its own, the other is among the writes of "same" (one statement for
     * the run of them on PostgreSQL: its calls run again one by one). */
    fixture *fx = *state;
    const int bad = database_url() != NULL ? NWRITES / 2 + 1 : -1;
    const int bad2 = database_url() != NULL ? 4 : -1;
    static pin_result r[NWRITES];
    memset(r, 0, sizeof(r));
    char keys[NWRITES][16];
    for (int i = 0; i < NWRITES; i++) {
        /* Even calls write "same"; odd ones their own key, in descending order. */
        if (i % 2 == 0)
            snprintf(keys[i], sizeof(keys[i]), "same");
        else
            snprintf(keys[i], sizeof(keys[i]), "k%02d", NWRITES - i);
        const char *value = i == bad || i == bad2 ? "{bad" : "{\"ok\":true}";
        char hash[17];
        hash16(value, hash);
        const store_upsert_req req = {
            .tenant_id = fx->tenant,
            .key = keys[i],
            .value_json = value,
            .value_len = strlen(value),
            .value_hash = hash,
            .source = "api",
            .now_us = T0,
            .audit = {.agent_id = "agent-c", .latency_ms = 1},
        };
        assert_int_equal(store_pin_upsert(fx->ss, &req, on_pin, &r[i]), 0);
    }
    pin_result del_r = {0};
    const store_delete_req dq = {.tenant_id = fx->tenant, .key = "k01", .now_us = T0};
    assert_int_equal(store_pin_delete(fx->ss, &dq, on_pin, &del_r), 0);
    wait_all(fx, r, NWRITES);
    wait_all(fx, &del_r, 1);
    bool seen[NWRITES / 2 + 1] = {false};
    int good = 0;
    for (int i = 0; i < NWRITES; i++) {
        if (i == bad || i == bad2) {
            assert_int_equal(r[i].err, PINS_EINVALID_ARGUMENT);
            continue;
        }
        assert_int_equal(r[i].err, 0);
        good++;
        if (i % 2 == 0) {
            assert_true(r[i].pin.version >= 1 && r[i].pin.version <= NWRITES / 2);
            assert_false(seen[r[i].pin.version]);
            seen[r[i].pin.version] = true;
        } else {
            assert_int_equal(r[i].pin.version, 1);
        }
    }
    /* The delete of k01 ran before or after its upsert: either answer is consistent. */
    assert_true(del_r.err == 0 || del_r.err == PINS_ENOT_FOUND);
    pin_result p = {0};
    assert_int_equal(get(fx, "same", T0, &p), 0);
    assert_int_equal(p.pin.version, NWRITES / 2 - (bad2 >= 0 ? 1 : 0));
    for (int i = 1; i < NWRITES; i += 2) {
        if (i == bad)
            assert_int_equal(get(fx, keys[i], T0, NULL), PINS_ENOT_FOUND);
        else if (strcmp(keys[i], "k01") != 0)
            assert_int_equal(get(fx, keys[i], T0, NULL), 0);
    }
    const store_audit_list_req aq = {.tenant_id = fx->tenant, .operation = "upsert", .limit = 1};
    audit_result a;
    audit(fx, &aq, &a);
    assert_int_equal(a.page.total, good);
    pin_result_free(&p);
    pin_result_free(&del_r);
    for (int i = 0; i < NWRITES; i++)
        pin_result_free(&r[i]);
}

#define NRUN 15

typedef struct run_call {
    const char *key;
    int step;         /* the call's place among its key's calls */
    int ttl;          /* NO_TTL or seconds */
    int64_t expected; /* ANY_VERSION or a version */
    int64_t at;       /* now_us */
    int64_t version;  /* what it must get */
    bool created;
    int64_t created_at;
    int id_group; /* calls of one pin share an id: 0 the first pin of "live", ... */
} run_call;

static void test_writes_of_one_key_waiting_together_apply_in_order(void **state)
{
    /* Upserts of one key waiting together (on PostgreSQL a run of them is one statement) end as
     * if run one after the other: each call gets its version, created flag and created_at, its
     * own value, updated_at and expiry, and its own audit row whose old hash is the value before
     * it. "live" starts as a pin, "gone" as an expired one, "new" does not exist; a call with
     * expected_version, and one that comes after the previous call's pin expired, are among them.
     */
    fixture *fx = *state;
    pin_result live0 = {0}, gone0 = {0};
    assert_int_equal(upsert(fx, "live", "{\"v\":\"live-init\"}", NO_TTL, ANY_VERSION, T0, &live0),
                     0);
    assert_int_equal(upsert(fx, "gone", "{\"v\":\"gone-init\"}", 10, ANY_VERSION, T0, &gone0), 0);
    const int64_t t1 = T0 + 60 * SEC, ms = 1000, t2 = t1 + 2 * SEC;
    static run_call q[NRUN];
    const run_call calls[NRUN] = {
        {"live", 0, NO_TTL, ANY_VERSION, t1, 2, false, T0, 0},
        {"live", 1, 3600, ANY_VERSION, t1 + ms, 3, false, T0, 0},
        {"live", 2, NO_TTL, ANY_VERSION, t1 + 2 * ms, 4, false, T0, 0},
        {"live", 3, NO_TTL, ANY_VERSION, t1 + 3 * ms, 5, false, T0, 0},
        {"live", 4, NO_TTL, 5, t1 + 4 * ms, 6, false, T0, 0},
        {"gone", 0, NO_TTL, ANY_VERSION, t1, 1, true, t1, 1},
        {"gone", 1, NO_TTL, ANY_VERSION, t1 + ms, 2, false, t1, 1},
        {"gone", 2, 3600, ANY_VERSION, t1 + 2 * ms, 3, false, t1, 1},
        {"gone", 3, NO_TTL, ANY_VERSION, t1 + 3 * ms, 4, false, t1, 1},
        {"new", 0, NO_TTL, ANY_VERSION, t1, 1, true, t1, 2},
        {"new", 1, NO_TTL, ANY_VERSION, t1 + ms, 2, false, t1, 2},
        {"new", 2, NO_TTL, ANY_VERSION, t1 + 2 * ms, 3, false, t1, 2},
        {"new", 3, 1, ANY_VERSION, t1 + 3 * ms, 4, false, t1, 2},
        {"new", 4, NO_TTL, ANY_VERSION, t2, 1, true, t2,
         3}, /* the last one expired at t1+1.003 s */
        {"new", 5, NO_TTL, ANY_VERSION, t2 + ms, 2, false, t2, 3},
    };
    memcpy(q, calls, sizeof(q));
    static pin_result r[NRUN];
    memset(r, 0, sizeof(r));
    char values[NRUN][32], hashes[NRUN][17];
    /* Queued step by step across the keys, so the store sorts them back into runs. */
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < NRUN; i++) {
            if (q[i].step != step)
                continue;
            snprintf(values[i], sizeof(values[i]), "{\"v\":\"%s-%d\"}", q[i].key, q[i].step);
            hash16(values[i], hashes[i]);
            const store_upsert_req req = {
                .tenant_id = fx->tenant,
                .key = q[i].key,
                .value_json = values[i],
                .value_len = strlen(values[i]),
                .value_hash = hashes[i],
                .source = "api",
                .has_ttl = q[i].ttl != NO_TTL,
                .ttl_seconds = q[i].ttl != NO_TTL ? q[i].ttl : 0,
                .has_expected_version = q[i].expected != ANY_VERSION,
                .expected_version = q[i].expected != ANY_VERSION ? q[i].expected : 0,
                .now_us = q[i].at,
                .audit = {.agent_id = "agent-run", .latency_ms = 2},
            };
            assert_int_equal(store_pin_upsert(fx->ss, &req, on_pin, &r[i]), 0);
        }
    }
    wait_all(fx, r, NRUN);
    int64_t ids[4] = {live0.pin.id, 0, 0, 0};
    for (int i = 0; i < NRUN; i++) {
        assert_int_equal(r[i].err, 0);
        assert_string_equal(r[i].key, q[i].key);
        assert_string_equal(r[i].value, values[i]);
        assert_int_equal(r[i].pin.version, q[i].version);
        assert_int_equal(r[i].created, q[i].created);
        assert_int_equal(r[i].pin.created_us, q[i].created_at);
        assert_int_equal(r[i].pin.updated_us, q[i].at);
        assert_int_equal(r[i].pin.has_ttl, q[i].ttl != NO_TTL);
        assert_int_equal(r[i].pin.has_expires, q[i].ttl != NO_TTL);
        if (q[i].ttl != NO_TTL) {
            assert_int_equal(r[i].pin.ttl_seconds, q[i].ttl);
            assert_int_equal(r[i].pin.expires_us, q[i].at + q[i].ttl * SEC);
        }
        if (ids[q[i].id_group] == 0)
            ids[q[i].id_group] = r[i].pin.id;
        assert_int_equal(r[i].pin.id, ids[q[i].id_group]);
    }
    /* The stored rows are the last call's. */
    static const struct {
        const char *key;
        int last;
    } fin[] = {{"live", 4}, {"gone", 8}, {"new", 14}};
    for (int f = 0; f < 3; f++) {
        pin_result p = {0};
        assert_int_equal(get(fx, fin[f].key, t2 + 10 * ms, &p), 0);
        assert_int_equal(p.pin.version, q[fin[f].last].version);
        assert_string_equal(p.value, values[fin[f].last]);
        pin_result_free(&p);
    }
    /* One audit row per call, newest first; each old hash is the value before it, none over an
     * expired or absent pin. */
    char init[2][17];
    hash16("{\"v\":\"live-init\"}", init[0]);
    hash16("{\"v\":\"gone-init\"}", init[1]);
    static const struct {
        const char *key;
        int from, to;
    } runs[] = {{"live", 0, 4}, {"gone", 5, 8}, {"new", 9, 14}};
    for (int k = 0; k < 3; k++) {
        const store_audit_list_req aq = {
            .tenant_id = fx->tenant, .key = runs[k].key, .operation = "upsert", .limit = 20};
        audit_result a;
        audit(fx, &aq, &a);
        int n = runs[k].to - runs[k].from + 1;
        assert_int_equal(a.page.n,
                         (size_t)(n + (k < 2 ? 1 : 0))); /* "live", "gone": their first write */
        for (int j = 0; j < n; j++) {
            int i = runs[k].to - j;
            assert_int_equal(a.ts[j], q[i].at);
            assert_string_equal(a.new_hash[j], hashes[i]);
            assert_string_equal(a.agent[j], "agent-run");
            const char *old = i > runs[k].from && !q[i].created ? hashes[i - 1]
                              : q[i].created                    ? ""
                                                                : init[0];
            assert_string_equal(a.old_hash[j], old);
        }
    }
    pin_result_free(&live0);
    pin_result_free(&gone0);
    for (int i = 0; i < NRUN; i++)
        pin_result_free(&r[i]);
}

/* ---- revisions and the change history ------------------------------------------------------ */

static void test_revisions_grow_by_one_per_change_per_tenant(void **state)
{
    fixture *fx = *state;
    char other[64];
    snprintf(other, sizeof(other), "%s-other", fx->tenant);
    assert_int_equal(revision_of(fx, fx->tenant), 0); /* never changed */
    pin_result r = {0};
    assert_int_equal(upsert(fx, "a", "{\"v\":1}", NO_TTL, ANY_VERSION, T0, &r), 0);
    assert_int_equal(r.pin.revision, 1);
    assert_int_equal(upsert(fx, "b", "{\"v\":1}", NO_TTL, ANY_VERSION, T0 + 1, &r), 0);
    assert_int_equal(r.pin.revision, 2);
    /* Another tenant counts on its own. */
    assert_int_equal(upsert_full(fx, other, "a", "{}", NO_TTL, ANY_VERSION, T0, NULL, NULL, &r), 0);
    assert_int_equal(r.pin.revision, 1);
    assert_int_equal(upsert(fx, "a", "{\"v\":2}", NO_TTL, ANY_VERSION, T0 + 2, &r), 0);
    assert_int_equal(r.pin.revision, 3);
    /* Failed conditional writes and deletes take none. */
    assert_int_equal(upsert(fx, "a", "{\"v\":9}", NO_TTL, 7, T0 + 3, NULL), PINS_EABORTED);
    assert_int_equal(upsert(fx, "a", "{\"v\":9}", NO_TTL, 0, T0 + 3, NULL), PINS_EALREADY_EXISTS);
    assert_int_equal(del(fx, "a", 7, T0 + 3, NULL), PINS_EABORTED);
    assert_int_equal(del(fx, "none", ANY_VERSION, T0 + 3, NULL), PINS_ENOT_FOUND);
    assert_int_equal(revision_of(fx, fx->tenant), 3);
    /* A delete takes the next one; its pin is the pin as it was, with the delete's revision. */
    assert_int_equal(del(fx, "b", ANY_VERSION, T0 + 4, &r), 0);
    assert_int_equal(r.pin.revision, 4);
    assert_int_equal(r.pin.version, 1);
    assert_int_equal(upsert(fx, "c", "{}", NO_TTL, ANY_VERSION, T0 + 5, &r), 0);
    assert_int_equal(r.pin.revision, 5);
    /* Reads carry the revision of each pin's last change; the listing the tenant's. */
    assert_int_equal(get(fx, "a", T0 + 6, &r), 0);
    assert_int_equal(r.pin.revision, 3);
    list_result l;
    const store_list_req q = list_req(fx, "", 10, T0 + 6);
    list(fx, &q, &l);
    assert_int_equal(l.page.err, 0);
    assert_int_equal(l.revision, 5);
    assert_int_equal(l.page.n, 2);
    assert_string_equal(l.keys[0], "c");
    assert_int_equal(l.revisions[0], 5);
    assert_string_equal(l.keys[1], "a");
    assert_int_equal(l.revisions[1], 3);
    assert_int_equal(revision_of(fx, other), 1);
    pin_result_free(&r);
}

static void test_changes_since_lists_puts_deletes_and_expiries_in_order(void **state)
{
    fixture *fx = *state;
    assert_int_equal(upsert(fx, "a/1", "{\"v\":1}", NO_TTL, ANY_VERSION, T0, NULL), 0);     /* 1 */
    assert_int_equal(upsert(fx, "b/1", "{\"v\":2}", NO_TTL, ANY_VERSION, T0, NULL), 0);     /* 2 */
    assert_int_equal(upsert(fx, "a/2", "{\"v\":3}", 10, ANY_VERSION, T0, NULL), 0);         /* 3 */
    assert_int_equal(upsert(fx, "a/1", "{\"v\":4}", NO_TTL, ANY_VERSION, T0 + 1, NULL), 0); /* 4 */
    assert_int_equal(del(fx, "b/1", ANY_VERSION, T0 + 2, NULL), 0);                         /* 5 */
    assert_int_equal(upsert(fx, "a%", "{\"v\":6}", NO_TTL, ANY_VERSION, T0 + 3, NULL), 0);  /* 6 */
    assert_int_equal(cleanup(fx, fx->tenant, T0 + 60 * SEC), 1); /* a/2 expired: 7 */

    changes_result c;
    assert_int_equal(changes(fx, fx->tenant, "", 0, 100, &c), 0);
    assert_int_equal(c.revision, 7);
    assert_int_equal(c.n, 7);
    static const struct {
        int type;
        const char *key;
        const char *value;
        int64_t version;
    } want[] = {
        {STORE_CHANGE_PUT, "a/1", "{\"v\":1}", 1},    {STORE_CHANGE_PUT, "b/1", "{\"v\":2}", 1},
        {STORE_CHANGE_PUT, "a/2", "{\"v\":3}", 1},    {STORE_CHANGE_PUT, "a/1", "{\"v\":4}", 2},
        {STORE_CHANGE_DELETE, "b/1", "{\"v\":2}", 1}, {STORE_CHANGE_PUT, "a%", "{\"v\":6}", 1},
        {STORE_CHANGE_EXPIRE, "a/2", "{\"v\":3}", 1},
    };
    for (size_t i = 0; i < 7; i++) {
        assert_int_equal(c.rev[i], (int64_t)i + 1);
        assert_int_equal(c.type[i], want[i].type);
        assert_string_equal(c.key[i], want[i].key);
        assert_string_equal(c.value[i], want[i].value);
        assert_int_equal(c.version[i], want[i].version);
    }
    assert_int_equal(c.id[4], c.id[1]); /* the deleted pin as it was */
    assert_int_equal(c.id[6], c.id[2]);

    /* After a revision, at most limit, the prefix matched literally. */
    assert_int_equal(changes(fx, fx->tenant, "", 3, 2, &c), 0);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.rev[0], 4);
    assert_int_equal(c.rev[1], 5);
    assert_int_equal(changes(fx, fx->tenant, "a/", 0, 100, &c), 0);
    assert_int_equal(c.n, 4);
    const int64_t a_revs[] = {1, 3, 4, 7};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(c.rev[i], a_revs[i]);
    assert_int_equal(changes(fx, fx->tenant, "a%", 0, 100, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.rev[0], 6);
    assert_int_equal(changes(fx, fx->tenant, "", 7, 100, &c), 0); /* up to date */
    assert_int_equal(c.n, 0);
    assert_int_equal(c.revision, 7);
    /* A tenant that never changed has nothing, at revision 0. */
    assert_int_equal(changes(fx, "nobody-ever", "", 0, 10, &c), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(c.revision, 0);
}

static void test_changes_since_is_out_of_range_when_trimmed_or_ahead(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(upsert(fx, "k", "{}", NO_TTL, ANY_VERSION, T0 + i, NULL), 0);
    changes_result c;
    assert_int_equal(changes(fx, fx->tenant, "", 4, 10, &c), PINS_EOUT_OF_RANGE);
    assert_int_equal(changes(fx, fx->tenant, "", 3, 10, &c), 0);
    assert_int_equal(changes(fx, "nobody-ever", "", 1, 10, &c), PINS_EOUT_OF_RANGE);

    /* The retention deletes every history row written before 2037 (of the whole database, in
     * batches). */
    const int64_t later = T0 + INT64_C(10) * 365 * 86400 * SEC;
    for (;;) {
        count_result r = {0};
        assert_int_equal(store_history_expire(fx->ss, later, 0, 1000, on_count, &r), 0);
        wait_for(fx, &r.calls);
        assert_int_equal(r.err, 0);
        if (r.count < 1000)
            break;
    }
    assert_int_equal(changes(fx, fx->tenant, "", 0, 10, &c), PINS_EOUT_OF_RANGE);
    assert_int_equal(changes(fx, fx->tenant, "", 2, 10, &c), PINS_EOUT_OF_RANGE);
    /* From the latest revision on, the history is complete again. */
    assert_int_equal(changes(fx, fx->tenant, "", 3, 10, &c), 0);
    assert_int_equal(c.n, 0);
    assert_int_equal(upsert(fx, "k", "{}", NO_TTL, ANY_VERSION, T0 + 5, NULL), 0);
    assert_int_equal(changes(fx, fx->tenant, "", 3, 10, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.rev[0], 4);
    assert_int_equal(c.version[0], 4);
    assert_int_equal(revision_of(fx, fx->tenant), 4);
}

/* ---- SQLite only --------------------------------------------------------------------------- */

static void test_sqlite_open_creates_private_dir_and_wal_file(void **state)
{
    fixture *fx = *state;
    if (database_url() != NULL)
        skip();
    struct stat sb;
    assert_int_equal(stat(fx->data_dir, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(sb.st_mode & 0777, 0700);
    sqlite3 *db = store_fixture_open_raw(fx);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    assert_int_equal(store_fixture_raw_int(db, "SELECT count(*) FROM schema_migrations"),
                     (int64_t)store__sqlite_migrations_count);
    assert_int_equal(store_fixture_raw_int(db, "SELECT max(version) FROM schema_migrations"),
                     store__sqlite_migrations[store__sqlite_migrations_count - 1].version);
    sqlite3_close(db);

    /* Nested directories are created too. */
    char deep[128];
    snprintf(deep, sizeof(deep), "%s/x/y/z", fx->dir);
    store_options opts = {.data_dir = deep};
    store *s = NULL;
    assert_int_equal(store_open(&opts, &s), 0);
    store_close(s);
}

static void test_sqlite_audit_extra_holds_request_id_as_json(void **state)
{
    fixture *fx = *state;
    if (database_url() != NULL)
        skip();
    assert_int_equal(upsert_full(fx, fx->tenant, "j", "{}", NO_TTL, ANY_VERSION, T0, NULL,
                                 "r\"1\\\n\xc3\xa9\xff", NULL),
                     0);
    assert_int_equal(upsert(fx, "j", "{}", NO_TTL, ANY_VERSION, T0 + 1, NULL), 0);
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(
        store_fixture_raw_int(db, "SELECT count(*) FROM memory_audit WHERE json_valid(extra)"), 2);
    assert_int_equal(
        store_fixture_raw_int(db, "SELECT count(*) FROM memory_audit WHERE extra = '{}'"), 1);
    assert_int_equal(store_fixture_raw_int(db, "SELECT count(*) FROM memory_audit WHERE"
                                               " json_extract(extra, '$.request_id') ="
                                               " 'r\"1\\' || char(10) || char(233) || char(65533)"),
                     1);
    sqlite3_close(db);
}

static void test_sqlite_open_fails_on_file_that_is_not_a_database(void **state)
{
    fixture *fx = *state;
    if (database_url() != NULL)
        skip();
    char dir[128];
    char path[160];
    snprintf(dir, sizeof(dir), "%s/junk", fx->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/pins.db", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 512; i++)
        fputs("this is not a database ", f);
    fclose(f);
    store_options opts = {.data_dir = dir};
    store *s = NULL;
    assert_int_equal(store_open(&opts, &s), PINS_ESTORE);
    assert_null(s); /* untouched on failure */

    /* A data_dir that is a regular file. */
    opts.data_dir = path;
    assert_int_equal(store_open(&opts, &s), PINS_ESTORE);
}

static void test_sqlite_open_refuses_newer_schema(void **state)
{
    fixture *fx = *state;
    if (database_url() != NULL)
        skip();
    store_fixture_close(fx);
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO schema_migrations VALUES (999, '999_future', 0)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    store *s = NULL;
    assert_int_equal(store_open(&fx->opts, &s), PINS_ESTORE);
    assert_null(s);
    db = store_fixture_open_raw(fx);
    assert_int_equal(
        sqlite3_exec(db, "DELETE FROM schema_migrations WHERE version = 999", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    store_fixture_open(fx);
}

static void test_sqlite_migration_down_reverts_up(void **state)
{
    if (database_url() != NULL)
        skip();
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    for (size_t i = 0; i < store__sqlite_migrations_count; i++)
        assert_int_equal(sqlite3_exec(db, store__sqlite_migrations[i].up, NULL, NULL, NULL),
                         SQLITE_OK);
    assert_true(store_fixture_raw_int(db, "SELECT count(*) FROM sqlite_master") > 0);
    for (size_t i = store__sqlite_migrations_count; i-- > 0;) {
        assert_non_null(store__sqlite_migrations[i].down);
        assert_int_equal(sqlite3_exec(db, store__sqlite_migrations[i].down, NULL, NULL, NULL),
                         SQLITE_OK);
    }
    /* SQLite keeps sqlite_sequence (made for pin_changes' AUTOINCREMENT), empty, for good. */
    assert_int_equal(store_fixture_raw_int(db, "SELECT count(*) FROM sqlite_master"
                                               " WHERE name <> 'sqlite_sequence'"),
                     0);
    assert_int_equal(store_fixture_raw_int(db, "SELECT count(*) FROM sqlite_sequence"), 0);
    sqlite3_close(db);
}

static void test_sqlite_busy_past_timeout_reports_estore_with_detail(void **state)
{
    fixture *fx = *state;
    if (database_url() != NULL)
        skip();
    sqlite3 *db = store_fixture_open_raw(fx);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    pin_result r = {0};
    assert_int_equal(upsert(fx, "locked", "{}", NO_TTL, ANY_VERSION, T0, &r), PINS_ESTORE);
    assert_non_null(strstr(store_session_last_error(fx->ss), "locked"));
    /* Reads go on while another connection writes (WAL). */
    assert_int_equal(get(fx, "locked", T0, NULL), PINS_ENOT_FOUND);
    assert_string_equal(store_session_last_error(fx->ss), "");
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(upsert(fx, "locked", "{}", NO_TTL, ANY_VERSION, T0, &r), 0);
    assert_true(r.created);
    pin_result_free(&r);
}

static void test_open_with_unparsable_database_url_fails(void **state)
{
    store_options opts = {.database_url = "postgresql://[::1/pins", .pool_size = 1, .workers = 1};
    store *s = NULL;
    assert_int_equal(store_open(&opts, &s), PINS_ESTORE);
    assert_null(s);
}

static void test_postgres_unreachable_opens_and_fails_calls_with_estore(void **state)
{
    /* Nothing listens on port 1: the store opens (pinsd starts while PostgreSQL is down) and
     * calls fail at once with PINS_ESTORE, the detail kept for the log. */
    store_options opts = {
        .database_url = "postgresql://pins@127.0.0.1:1/pins", .pool_size = 2, .workers = 1};
    store *s = NULL;
    store_session *ss = NULL;
    assert_int_equal(store_open(&opts, &s), 0);
    assert_string_equal(store_backend_name(s), "postgres");
    assert_int_equal(store_session_new(s, NULL, &ss), 0);
    count_result r = {0};
    assert_int_equal(store_ping(ss, on_count, &r), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, PINS_ESTORE);
    assert_true(strlen(store_session_last_error(ss)) > 0);
    assert_false(store_session_schema_behind(ss)); /* down, not behind */
    pin_result p = {0};
    assert_int_equal(store_pin_get(ss, "t", "k", T0, on_pin, &p), 0);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.err, PINS_ESTORE);
    store_session_free(ss);
    store_close(s);
}

static void test_open_picks_the_backend_from_the_url_scheme(void **state)
{
    char err[256] = "";
    store *s = NULL;
    /* A scheme no backend accepts: refused, with the accepted schemes and without the URL. */
    store_options opts = {.database_url = "mysql://pins:secret@db/pins",
                          .pool_size = 1,
                          .workers = 1,
                          .err = err,
                          .err_cap = sizeof(err)};
    assert_int_equal(store_open(&opts, &s), PINS_ESTORE);
    assert_null(s);
    assert_non_null(strstr(err, "postgres://"));
    assert_non_null(strstr(err, "postgresql://"));
    assert_null(strstr(err, "secret"));
    /* Both PostgreSQL schemes, and libpq's key=value form, open the PostgreSQL store (it connects
     * later, so nothing needs to listen). */
    const char *const pg[] = {"postgres://pins@127.0.0.1:1/pins",
                              "postgresql://pins@127.0.0.1:1/pins",
                              "host=127.0.0.1 port=1 dbname=pins user=pins"};
    for (size_t i = 0; i < sizeof(pg) / sizeof(pg[0]); i++) {
        opts.database_url = pg[i];
        assert_int_equal(store_open(&opts, &s), 0);
        assert_string_equal(store_backend_name(s), "postgres");
        store_close(s);
        s = NULL;
    }
}

/* A database whose schema is older than the binary (here: its migrations table moved away, as
 * before the first `pinsctl migrate upgrade`) fails calls with PINS_ESTORE and says why in a
 * typed way, so /ready reports schema_behind rather than down. */
static void test_postgres_schema_behind_is_reported_apart_from_down(void **state)
{
    const char *url = database_url();
    if (url == NULL)
        skip();
    PGconn *admin = PQconnectdb(url);
    assert_int_equal(PQstatus(admin), CONNECTION_OK);
    PGresult *res = PQexec(admin, "ALTER TABLE system.pins_schema_migrations"
                                  " RENAME TO pins_schema_migrations_moved");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    store_options opts = {.database_url = url, .pool_size = 1, .workers = 1};
    store *s = NULL;
    store_session *ss = NULL;
    count_result r = {0};
    bool behind = false;
    char detail[STORE__ERROR_MAX] = "";
    int rv = store_open(&opts, &s);
    if (rv == 0)
        rv = store_session_new(s, NULL, &ss);
    if (rv == 0)
        rv = store_ping(ss, on_count, &r); /* blocks until answered: no loop */
    if (ss != NULL) {
        behind = store_session_schema_behind(ss);
        snprintf(detail, sizeof(detail), "%s", store_session_last_error(ss));
    }
    store_session_free(ss);
    store_close(s);
    res = PQexec(admin, "ALTER TABLE system.pins_schema_migrations_moved"
                        " RENAME TO pins_schema_migrations");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    PQfinish(admin);
    assert_int_equal(rv, 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.err, PINS_ESTORE);
    assert_true(behind);
    assert_non_null(strstr(detail, "pinsctl migrate upgrade head"));
}

/* The store's families exist with every series from the open on, and single-pin reads are counted
 * as cache hits or misses: SQLite's second read of a pin comes from its cache, PostgreSQL (no
 * cache) counts every read as a miss. */
static void test_metrics_show_from_the_open_and_count_cache_reads(void **state)
{
    fixture *fx = *state;
    bool pg = database_url() != NULL;
    const char *backend =
        pg ? "store_info{backend=\"postgres\"}" : "store_info{backend=\"sqlite\"}";
    assert_true(scrape_value(backend, -1) == 1);
    static const char *const sqlite_kinds[] = {"busy", "io", "query", "schema"};
    static const char *const pg_kinds[] = {"connect", "query", "timeout", "queue_full", "schema"};
    const char *const *kinds = pg ? pg_kinds : sqlite_kinds;
    size_t nkinds = pg ? 5 : 4;
    char series[96];
    for (size_t i = 0; i < nkinds; i++) {
        snprintf(series, sizeof(series), "store_errors_total{kind=\"%s\"}", kinds[i]);
        assert_true(scrape_value(series, -1) >= 0);
    }
    static const char *const states[] = {"idle", "busy", "connecting", "down"};
    double conns = 0;
    for (size_t i = 0; i < 4; i++) {
        snprintf(series, sizeof(series), "store_pool_connections{state=\"%s\"}", states[i]);
        double v = scrape_value(series, -1);
        assert_true(v >= 0);
        conns += v;
    }
    assert_true(conns >= 1); /* the fixture's session holds at least one connection */
    assert_true(scrape_value("memory_audit_writes_total{status=\"success\"}", -1) >= 0);
    assert_true(scrape_value("memory_audit_writes_total{status=\"error\"}", -1) >= 0);
    assert_true(scrape_value("store_schema_behind", -1) == 0);

    double hits = scrape_value("memory_cache_hits_total", -1);
    double misses = scrape_value("memory_cache_misses_total", -1);
    double sized = scrape_value("memory_value_size_bytes_count", -1);
    double big = scrape_value("memory_value_size_bytes_bucket{le=\"64\"}", -1);
    assert_true(hits >= 0 && misses >= 0 && sized >= 0 && big >= 0);
    char value[200];
    snprintf(value, sizeof(value), "{\"v\":\"%0100d\"}", 7); /* 108 bytes */
    assert_int_equal(upsert(fx, "m", value, NO_TTL, ANY_VERSION, T0, NULL), 0);
    assert_true(scrape_value("memory_value_size_bytes_count", -1) == sized + 1);
    assert_true(scrape_value("memory_value_size_bytes_bucket{le=\"64\"}", -1) == big);
    assert_true(scrape_value("memory_value_size_bytes_bucket{le=\"256\"}", -1) >= 1);
    store_fixture_close(fx); /* a new store: SQLite's cache starts empty */
    store_fixture_open(fx);
    assert_int_equal(get(fx, "m", T0, NULL), 0);
    assert_int_equal(get(fx, "m", T0, NULL), 0);
    assert_int_equal(get(fx, "absent", T0, NULL), PINS_ENOT_FOUND);
    double hits2 = scrape_value("memory_cache_hits_total", -1);
    double misses2 = scrape_value("memory_cache_misses_total", -1);
    if (pg) {
        assert_true(hits2 == hits);
        assert_true(misses2 == misses + 2); /* both reads of "m"; an absent pin is never a miss */
    } else {
        assert_true(hits2 == hits + 1);     /* the second read */
        assert_true(misses2 == misses + 1); /* the first read; an absent pin is never a miss */
    }
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_upsert_creates_pin_with_version_one),
        T(test_metrics_show_from_the_open_and_count_cache_reads),
        T(test_upsert_increments_version_and_keeps_created_at),
        T(test_upsert_ttl_counts_from_each_write),
        T(test_get_hides_expired_pin),
        T(test_get_is_tenant_scoped),
        T(test_upsert_over_expired_pin_creates_anew),
        T(test_upsert_expected_version_zero_creates_only),
        T(test_upsert_expected_version_matches_or_aborts),
        T(test_value_round_trips_unicode_and_large),
        T(test_list_orders_by_created_desc_then_id_desc),
        T(test_list_hides_expired_unless_asked),
        T(test_list_prefix_is_literal),
        T(test_list_limit_offset_and_total),
        T(test_list_keyset_cursor_continues_after_last_row),
        T(test_list_rejects_page_out_of_range),
        T(test_delete_returns_pin_as_it_was),
        T(test_delete_removes_expired_pin),
        T(test_delete_expected_version_mismatch_aborts),
        T(test_cleanup_deletes_one_tenants_expired_pins),
        T(test_cleanup_without_tenant_deletes_every_expired_pin),
        T(test_sweep_deletes_at_most_batch),
        T(test_audit_rows_for_upsert_and_delete),
        T(test_audit_upsert_over_expired_has_no_old_hash),
        T(test_audit_list_filters_pages_and_counts),
        T(test_rbac_audit_write_then_list_filters_and_pages),
        T(test_rbac_audit_cleanup_deletes_only_older_rows),
        T(test_audit_expire_deletes_the_oldest_rows_in_bounded_batches),
        T(test_memory_audit_write_rows_are_listed),
        T(test_memory_audit_summary_rows_match_the_keys_they_list),
        T(test_ping_answers),
        T(test_backend_name_matches_options),
        T(test_two_sessions_write_the_same_store),
        T(test_sessions_on_threads_write_concurrently),
        T(test_reopening_the_store_keeps_data),
        T(test_acknowledged_write_survives_kill),
        T(test_callback_may_start_another_operation),
        T(test_concurrent_gets_each_get_their_own_pin),
        T(test_concurrent_writes_commit_and_a_bad_one_fails_alone),
        T(test_writes_of_one_key_waiting_together_apply_in_order),
        T(test_revisions_grow_by_one_per_change_per_tenant),
        T(test_changes_since_lists_puts_deletes_and_expiries_in_order),
        T(test_changes_since_is_out_of_range_when_trimmed_or_ahead),
        T(test_reads_of_one_key_waiting_together_each_check_their_own_clock),
        T(test_sqlite_open_creates_private_dir_and_wal_file),
        T(test_sqlite_audit_extra_holds_request_id_as_json),
        T(test_sqlite_open_fails_on_file_that_is_not_a_database),
        T(test_sqlite_open_refuses_newer_schema),
        T(test_sqlite_migration_down_reverts_up),
        T(test_sqlite_busy_past_timeout_reports_estore_with_detail),
        T(test_open_with_unparsable_database_url_fails),
        T(test_postgres_unreachable_opens_and_fails_calls_with_estore),
        T(test_open_picks_the_backend_from_the_url_scheme),
        T(test_postgres_schema_behind_is_reported_apart_from_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
