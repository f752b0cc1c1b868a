/* tests/unit/store/test_cache.c: the stores' read cache (store/cache.c) on its own: copies,
 * bounds, expiry, the write generation that keeps stale fills out, a put never replacing a newer
 * revision, probing and clearing, and readers racing writers on a cache small enough to evict all
 * the time (run it under ThreadSanitizer too).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/error.h"
#include "store/cache.h"

static store_pin make_pin(const char *tenant, const char *key, const char *value, int64_t version)
{
    return (store_pin){
        .id = version,
        .tenant_id = tenant,
        .key = key,
        .value_json = value,
        .value_len = strlen(value),
        .source = "api",
        .version = version,
    };
}

static store_cache *new_cache(size_t entries)
{
    store_cache *c = NULL;
    assert_int_equal(store_cache_new(entries, 64u << 20, &c), 0);
    return c;
}

static store_cache_result lookup(store_cache *c, pins_arena *a, const char *tenant, const char *key,
                                 int64_t now, store_pin *pin, uint64_t *gen)
{
    store_cache_result res;
    uint64_t g = 0;
    assert_int_equal(store_cache_get(c, tenant, key, now, a, pin, &res, &g), 0);
    if (gen != NULL)
        *gen = g;
    return res;
}

static void test_cache_get_returns_a_copy_of_what_was_put(void **state)
{
    store_cache *c = new_cache(1000);
    pins_arena *a = pins_arena_new(0);
    char key[8] = "k";
    static const uint8_t pb[] = {1, 2, 3};
    store_pin in = make_pin("t", key, "{\"a\":1}", 3);
    in.value_pb = pb;
    in.value_pb_len = sizeof(pb);
    in.has_ttl = true;
    in.ttl_seconds = 5;
    store_cache_put(c, &in);
    key[0] = 'x'; /* the cache copied the key */

    store_pin out;
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, NULL), STORE_CACHE_HIT);
    assert_string_equal(out.tenant_id, "t");
    assert_string_equal(out.key, "k");
    assert_string_equal(out.source, "api");
    assert_string_equal(out.value_json, "{\"a\":1}");
    assert_int_equal(out.value_len, 7);
    assert_int_equal(out.version, 3);
    assert_true(out.has_ttl);
    assert_int_equal(out.ttl_seconds, 5);
    assert_int_equal(out.value_pb_len, sizeof(pb));
    assert_memory_equal(out.value_pb, pb, sizeof(pb));
    assert_int_equal(lookup(c, a, "t", "x", 0, &out, NULL), STORE_CACHE_MISS);
    assert_int_equal(lookup(c, a, "u", "k", 0, &out, NULL), STORE_CACHE_MISS);
    /* Tenant and key do not run together: ("t", "k") is not ("", "tk"). */
    assert_int_equal(lookup(c, a, "", "tk", 0, &out, NULL), STORE_CACHE_MISS);

    in = make_pin("t", "nopb", "{}", 1);
    store_cache_put(c, &in);
    assert_int_equal(lookup(c, a, "t", "nopb", 0, &out, NULL), STORE_CACHE_HIT);
    assert_null(out.value_pb);
    assert_int_equal(out.value_pb_len, 0);

    store_cache_remove(c, "t", "k");
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, NULL), STORE_CACHE_MISS);
    assert_int_equal(store_cache_count(c), 1);
    pins_arena_free(a);
    store_cache_free(c);
}

static void test_cache_stays_within_its_bounds(void **state)
{
    store_cache *c = new_cache(STORE_CACHE_STRIPES); /* one entry per stripe */
    char key[16];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        store_pin p = make_pin("t", key, "{}", 1);
        store_cache_put(c, &p);
    }
    assert_true(store_cache_count(c) <= STORE_CACHE_STRIPES);
    assert_true(store_cache_count(c) > 0);
    store_cache_free(c);

    /* A value too large to cache is not cached, and removes the older row of its key. */
    c = new_cache(1000);
    pins_arena *a = pins_arena_new(0);
    store_pin p = make_pin("t", "big", "{}", 1);
    store_cache_put(c, &p);
    size_t len = STORE_CACHE_VALUE_MAX + 1;
    char *big = malloc(len + 1);
    assert_non_null(big);
    memset(big, ' ', len);
    big[len] = '\0';
    p = make_pin("t", "big", big, 2);
    store_cache_put(c, &p);
    store_pin out;
    assert_int_equal(lookup(c, a, "t", "big", 0, &out, NULL), STORE_CACHE_MISS);
    assert_int_equal(store_cache_count(c), 0);
    free(big);
    pins_arena_free(a);
    store_cache_free(c);
}

/* The store's default sizing (entries bounded at one per STORE_CACHE_ENTRY_MIN bytes) holds the
 * 100,000 pins of 200-byte values of a realistic workload (100 tenants of 1000 keys) without
 * evicting any: an entry bound equal to the key count evicted some from the fuller stripes, and
 * every read of those went to SQLite. */
static void test_cache_default_size_holds_a_realistic_key_set(void **state)
{
    store_cache *c = NULL;
    assert_int_equal(
        store_cache_new(STORE_CACHE_BYTES / STORE_CACHE_ENTRY_MIN, STORE_CACHE_BYTES, &c), 0);
    char value[201];
    memset(value, 'v', sizeof(value) - 1);
    value[0] = '{';
    value[sizeof(value) - 2] = '}';
    value[sizeof(value) - 1] = '\0';
    char tenant[16], key[16];
    for (int t = 0; t < 100; t++) {
        snprintf(tenant, sizeof(tenant), "bench-t%d", t);
        for (int k = 0; k < 1000; k++) {
            snprintf(key, sizeof(key), "bench-%d", k);
            store_pin p = make_pin(tenant, key, value, 1);
            store_cache_put(c, &p);
        }
    }
    assert_int_equal(store_cache_count(c), 100000);
    store_cache_free(c);
}

/* A stripe's buckets start few and double as it fills (rehashing every entry): 100,000 entries
 * over 64 stripes pass through several doublings, and afterwards every entry is found with its
 * own row, a removed one is gone, and the others stay. */
static void test_cache_buckets_grow_and_keep_every_entry(void **state)
{
    store_cache *c = NULL;
    assert_int_equal(
        store_cache_new(STORE_CACHE_BYTES / STORE_CACHE_ENTRY_MIN, STORE_CACHE_BYTES, &c), 0);
    pins_arena *a = pins_arena_new(0);
    char tenant[16], key[16];
    for (int i = 0; i < 100000; i++) {
        snprintf(tenant, sizeof(tenant), "t%d", i % 100);
        snprintf(key, sizeof(key), "k%d", i);
        store_pin p = make_pin(tenant, key, "{\"a\":1}", i + 1);
        store_cache_put(c, &p);
    }
    assert_int_equal(store_cache_count(c), 100000);
    for (int i = 0; i < 100000; i += 2) {
        snprintf(tenant, sizeof(tenant), "t%d", i % 100);
        snprintf(key, sizeof(key), "k%d", i);
        store_cache_remove(c, tenant, key);
    }
    assert_int_equal(store_cache_count(c), 50000);
    for (int i = 0; i < 100000; i++) {
        snprintf(tenant, sizeof(tenant), "t%d", i % 100);
        snprintf(key, sizeof(key), "k%d", i);
        store_pin out;
        store_cache_result res = lookup(c, a, tenant, key, 0, &out, NULL);
        if (i % 2 == 0) {
            assert_int_equal(res, STORE_CACHE_MISS);
        } else {
            assert_int_equal(res, STORE_CACHE_HIT);
            assert_string_equal(out.tenant_id, tenant);
            assert_string_equal(out.key, key);
            assert_int_equal(out.version, i + 1);
        }
        if (i % 1000 == 0)
            pins_arena_reset(a);
    }
    pins_arena_free(a);
    store_cache_free(c);
}

static void test_cache_expired_entry_is_absent_and_dropped(void **state)
{
    store_cache *c = new_cache(1000);
    pins_arena *a = pins_arena_new(0);
    store_pin p = make_pin("t", "e", "{}", 1);
    p.has_expires = true;
    p.expires_us = 100;
    store_cache_put(c, &p);
    store_pin out;
    assert_int_equal(lookup(c, a, "t", "e", 99, &out, NULL), STORE_CACHE_HIT);
    assert_int_equal(lookup(c, a, "t", "e", 100, &out, NULL), STORE_CACHE_EXPIRED);
    assert_int_equal(store_cache_count(c), 0);
    assert_int_equal(lookup(c, a, "t", "e", 99, &out, NULL), STORE_CACHE_MISS);

    /* remove_expired: by tenant, or every tenant. */
    store_pin q[4] = {make_pin("t", "a", "{}", 1), make_pin("t", "b", "{}", 1),
                      make_pin("u", "a", "{}", 1), make_pin("t", "keep", "{}", 1)};
    for (int i = 0; i < 3; i++) {
        q[i].has_expires = true;
        q[i].expires_us = 100;
    }
    for (int i = 0; i < 4; i++)
        store_cache_put(c, &q[i]);
    store_cache_remove_expired(c, "t", 99);
    assert_int_equal(store_cache_count(c), 4);
    store_cache_remove_expired(c, "t", 100);
    assert_int_equal(store_cache_count(c), 2);
    assert_int_equal(lookup(c, a, "u", "a", 0, &out, NULL), STORE_CACHE_HIT);
    store_cache_remove_expired(c, NULL, 100);
    assert_int_equal(store_cache_count(c), 1);
    assert_int_equal(lookup(c, a, "t", "keep", 1000, &out, NULL), STORE_CACHE_HIT);
    pins_arena_free(a);
    store_cache_free(c);
}

static void test_cache_fill_after_a_write_is_refused(void **state)
{
    store_cache *c = new_cache(1000);
    pins_arena *a = pins_arena_new(0);
    store_pin out;
    uint64_t gen;
    /* Miss, then the row read from the database is offered: accepted once. */
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, &gen), STORE_CACHE_MISS);
    store_pin v1 = make_pin("t", "k", "{\"v\":1}", 1);
    assert_int_equal(store_cache_fill(c, &v1, gen), STORE_CACHE_FILLED);
    assert_int_equal(store_cache_fill(c, &v1, gen), STORE_CACHE_SKIPPED);

    /* Miss; a write of the key lands; the reader's older row must not replace it. */
    store_cache_remove(c, "t", "k");
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, &gen), STORE_CACHE_MISS);
    store_pin v2 = make_pin("t", "k", "{\"v\":2}", 2);
    store_cache_put(c, &v2);
    assert_int_equal(store_cache_fill(c, &v1, gen), STORE_CACHE_STALE);
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, NULL), STORE_CACHE_HIT);
    assert_int_equal(out.version, 2);

    /* A delete between the read and the fill: the deleted row must not come back. */
    store_cache_remove(c, "t", "k");
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, &gen), STORE_CACHE_MISS);
    store_cache_remove(c, "t", "k");
    assert_int_equal(store_cache_fill(c, &v2, gen), STORE_CACHE_STALE);
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, NULL), STORE_CACHE_MISS);

    /* So does a cleanup. */
    assert_int_equal(lookup(c, a, "t", "k", 0, &out, &gen), STORE_CACHE_MISS);
    store_cache_remove_expired(c, NULL, 0);
    assert_int_equal(store_cache_fill(c, &v2, gen), STORE_CACHE_STALE);
    pins_arena_free(a);
    store_cache_free(c);
}

/* ---- readers racing writers ---------------------------------------------------------------- */

enum { RACE_KEYS = 512, RACE_WRITES = 20000, RACE_READS = 60000 };

/* The "database": the current version of each key, written under the "write mutex". */
typedef struct race {
    store_cache *c;
    pthread_mutex_t db_lock;
    int64_t versions[RACE_KEYS];
} race;

typedef struct racer {
    race *r;
    unsigned seed;
    int regressions;
    int failures;
} racer;

static void *race_writer(void *arg)
{
    racer *w = arg;
    char key[16];
    for (int i = 0; i < RACE_WRITES; i++) {
        int k = (int)(rand_r(&w->seed) % RACE_KEYS);
        snprintf(key, sizeof(key), "k%d", k);
        pthread_mutex_lock(&w->r->db_lock);
        int64_t v = ++w->r->versions[k];
        store_pin p = make_pin("t", key, "{}", v);
        store_cache_put(w->r->c, &p);
        pthread_mutex_unlock(&w->r->db_lock);
    }
    return NULL;
}

static void *race_reader(void *arg)
{
    racer *rd = arg;
    int64_t *last = calloc(RACE_KEYS, sizeof(*last));
    pins_arena *a = pins_arena_new(0);
    if (last == NULL || a == NULL) {
        rd->failures++;
        goto out;
    }
    char key[16];
    for (int i = 0; i < RACE_READS; i++) {
        int k = (int)(rand_r(&rd->seed) % RACE_KEYS);
        snprintf(key, sizeof(key), "k%d", k);
        store_pin p;
        store_cache_result res;
        uint64_t gen = 0;
        if (store_cache_get(rd->r->c, "t", key, 0, a, &p, &res, &gen) != 0) {
            rd->failures++;
            break;
        }
        int64_t seen;
        if (res == STORE_CACHE_HIT) {
            seen = p.version;
        } else {
            /* A read of the database, then the fill, with a write possibly in between. */
            pthread_mutex_lock(&rd->r->db_lock);
            seen = rd->r->versions[k];
            pthread_mutex_unlock(&rd->r->db_lock);
            if (seen > 0) {
                store_pin row = make_pin("t", key, "{}", seen);
                store_cache_fill(rd->r->c, &row, gen);
            }
        }
        if (seen < last[k])
            rd->regressions++;
        last[k] = seen;
        pins_arena_reset(a);
    }
out:
    pins_arena_free(a);
    free(last);
    return NULL;
}

static void test_cache_readers_never_see_a_version_go_back(void **state)
{
    race *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->c = new_cache(64); /* 1 entry per stripe: constant eviction, misses and fills */
    assert_int_equal(pthread_mutex_init(&r->db_lock, NULL), 0);
    enum { WRITERS = 2, READERS = 2 };
    racer rs[WRITERS + READERS];
    pthread_t tid[WRITERS + READERS];
    for (int i = 0; i < WRITERS + READERS; i++) {
        rs[i] = (racer){.r = r, .seed = 1234u + (unsigned)i};
        assert_int_equal(
            pthread_create(&tid[i], NULL, i < WRITERS ? race_writer : race_reader, &rs[i]), 0);
    }
    for (int i = 0; i < WRITERS + READERS; i++) {
        assert_int_equal(pthread_join(tid[i], NULL), 0);
        assert_int_equal(rs[i].failures, 0);
        assert_int_equal(rs[i].regressions, 0);
    }
    /* Whatever the cache holds now is the latest version. */
    pins_arena *a = pins_arena_new(0);
    char key[16];
    for (int k = 0; k < RACE_KEYS; k++) {
        snprintf(key, sizeof(key), "k%d", k);
        store_pin p;
        if (lookup(r->c, a, "t", key, 0, &p, NULL) == STORE_CACHE_HIT)
            assert_int_equal(p.version, r->versions[k]);
    }
    pins_arena_free(a);
    pthread_mutex_destroy(&r->db_lock);
    store_cache_free(r->c);
    free(r);
}

/* A put older than the cached row (a change the feed delivers after a fill read a later
 * snapshot, on PostgreSQL) leaves the newer row; a newer put replaces it; both bump the
 * generation so that a pending fill is refused. */
static void test_cache_put_never_replaces_a_newer_revision(void **state)
{
    (void)state;
    store_cache *c = new_cache(100);
    pins_arena *a = pins_arena_new(0);
    store_pin newer = make_pin("t", "k", "{\"v\":2}", 2);
    newer.revision = 20;
    uint64_t gen;
    store_pin got;
    assert_int_equal(lookup(c, a, "t", "k", 0, &got, &gen), STORE_CACHE_MISS);
    assert_int_equal(store_cache_fill(c, &newer, gen), STORE_CACHE_FILLED);
    store_pin older = make_pin("t", "k", "{\"v\":1}", 1);
    older.revision = 10;
    store_cache_put(c, &older);
    assert_int_equal(lookup(c, a, "t", "k", 0, &got, NULL), STORE_CACHE_HIT);
    assert_int_equal(got.revision, 20);
    assert_string_equal(got.value_json, "{\"v\":2}");
    store_pin next = make_pin("t", "k", "{\"v\":3}", 3);
    next.revision = 21;
    store_cache_put(c, &next);
    assert_int_equal(lookup(c, a, "t", "k", 0, &got, NULL), STORE_CACHE_HIT);
    assert_int_equal(got.revision, 21);
    /* the refused put still invalidates a fill of its key pending across it */
    store_cache_remove(c, "t", "k");
    assert_int_equal(lookup(c, a, "t", "k", 0, &got, &gen), STORE_CACHE_MISS);
    store_cache_put(c, &newer);
    store_cache_put(c, &older);
    assert_int_equal(store_cache_fill(c, &older, gen), STORE_CACHE_STALE);
    assert_int_equal(lookup(c, a, "t", "k", 0, &got, NULL), STORE_CACHE_HIT);
    assert_int_equal(got.revision, 20);
    pins_arena_free(a);
    store_cache_free(c);
}

/* probe tells presence (expired entries included) without copying, and hands out the generation
 * a fill needs; clear drops every entry and refuses every fill pending across it. */
static void test_cache_probe_and_clear(void **state)
{
    (void)state;
    store_cache *c = new_cache(1000);
    pins_arena *a = pins_arena_new(0);
    char keys[100][8];
    for (int i = 0; i < 100; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        store_pin p = make_pin("t", keys[i], "{}", 1);
        p.has_expires = i == 0;
        p.expires_us = 5;
        store_cache_put(c, &p);
    }
    uint64_t gen = 0;
    assert_true(store_cache_probe(c, "t", "k0", &gen)); /* expired at any later clock */
    assert_true(store_cache_probe(c, "t", "k99", &gen));
    assert_false(store_cache_probe(c, "t", "absent", &gen));
    assert_false(store_cache_probe(c, "u", "k1", &gen));
    store_cache_clear(c);
    assert_int_equal(store_cache_count(c), 0);
    store_pin got;
    assert_int_equal(lookup(c, a, "t", "k1", 0, &got, NULL), STORE_CACHE_MISS);
    /* a fill whose generation came from a probe after the clear is taken */
    store_pin late = make_pin("t", "absent", "{}", 1);
    assert_false(store_cache_probe(c, "t", "absent", &gen));
    assert_int_equal(store_cache_fill(c, &late, gen), STORE_CACHE_FILLED);
    /* one pending across a clear is refused */
    assert_false(store_cache_probe(c, "t", "k2", &gen));
    store_cache_clear(c);
    store_pin again = make_pin("t", "k2", "{}", 1);
    assert_int_equal(store_cache_fill(c, &again, gen), STORE_CACHE_STALE);
    assert_int_equal(store_cache_count(c), 0);
    pins_arena_free(a);
    store_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_get_returns_a_copy_of_what_was_put),
        cmocka_unit_test(test_cache_stays_within_its_bounds),
        cmocka_unit_test(test_cache_default_size_holds_a_realistic_key_set),
        cmocka_unit_test(test_cache_buckets_grow_and_keep_every_entry),
        cmocka_unit_test(test_cache_expired_entry_is_absent_and_dropped),
        cmocka_unit_test(test_cache_fill_after_a_write_is_refused),
        cmocka_unit_test(test_cache_readers_never_see_a_version_go_back),
        cmocka_unit_test(test_cache_put_never_replaces_a_newer_revision),
        cmocka_unit_test(test_cache_probe_and_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
