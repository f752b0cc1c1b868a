/* tests/unit/auth/test_ratelimit.c: the local token buckets (auth/ratelimit_local.c) with a fake
 * clock, REDIS_URL parsing, the limiter's /ready line without Redis, and the set of throttled
 * tenants behind rate_limit_throttled_tenants (auth/ratelimit_throttled.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/ratelimit_int.h"
#include "common/config.h"
#include "common/error.h"
#include "fake_clock.h"
#include "scrape.h"

#define SEC 1000000000ll

static ratelimit__local *new_local(int rpm, int burst, size_t max)
{
    ratelimit__local *l = NULL;
    assert_int_equal(ratelimit__local_new(rpm, burst, max, &l), 0);
    assert_non_null(l);
    return l;
}

static ratelimit__decision take(ratelimit__local *l, const char *tenant, int64_t now)
{
    ratelimit__decision d;
    assert_int_equal(ratelimit__local_take(l, tenant, now, &d), 0);
    return d;
}

static void test_local_allows_exactly_the_burst_then_refuses(void **state)
{
    ratelimit__local *l = new_local(60, 100, 1024);
    int64_t now = 1000 * SEC;
    for (int i = 0; i < 100; i++) {
        ratelimit__decision d = take(l, "t", now);
        assert_true(d.allowed);
        assert_int_equal(d.remaining, 99 - i);
    }
    ratelimit__decision d = take(l, "t", now);
    assert_false(d.allowed);
    assert_int_equal(d.remaining, 0);
    assert_int_equal(d.retry_after_s, 1); /* 60 per minute: one token a second */
    assert_int_equal(d.reset_s, 100);     /* 100 tokens at one a second */
    ratelimit__local_free(l);
}

static void test_local_refills_at_rpm_with_a_fake_clock(void **state)
{
    ratelimit__local *l = new_local(60, 10, 1024);
    int64_t now = 5 * SEC;
    for (int i = 0; i < 10; i++)
        assert_true(take(l, "t", now).allowed);
    assert_false(take(l, "t", now).allowed);
    /* Half a second: half a token, still refused, one second to wait (rounded up). */
    ratelimit__decision d = take(l, "t", now + SEC / 2);
    assert_false(d.allowed);
    assert_int_equal(d.retry_after_s, 1);
    /* One second after the start: exactly one token. */
    assert_true(take(l, "t", now + SEC).allowed);
    assert_false(take(l, "t", now + SEC).allowed);
    /* Three more seconds: three tokens. */
    for (int i = 0; i < 3; i++)
        assert_true(take(l, "t", now + 4 * SEC).allowed);
    assert_false(take(l, "t", now + 4 * SEC).allowed);
    ratelimit__local_free(l);
}

static void test_local_refill_never_exceeds_the_burst(void **state)
{
    ratelimit__local *l = new_local(600, 5, 1024);
    assert_true(take(l, "t", 0).allowed);
    /* An hour idle refills 36000 tokens' worth, capped at the burst. */
    ratelimit__decision d = take(l, "t", 3600 * SEC);
    assert_true(d.allowed);
    assert_int_equal(d.remaining, 4);
    for (int i = 0; i < 4; i++)
        assert_true(take(l, "t", 3600 * SEC).allowed);
    assert_false(take(l, "t", 3600 * SEC).allowed);
    ratelimit__local_free(l);
}

static void test_local_clock_going_back_refills_nothing(void **state)
{
    ratelimit__local *l = new_local(60, 1, 1024);
    assert_true(take(l, "t", 100 * SEC).allowed);
    assert_false(take(l, "t", 50 * SEC).allowed);
    assert_false(take(l, "t", 100 * SEC).allowed);
    assert_true(take(l, "t", 101 * SEC).allowed);
    ratelimit__local_free(l);
}

static void test_local_tenants_are_isolated(void **state)
{
    ratelimit__local *l = new_local(60, 3, 1024);
    for (int i = 0; i < 3; i++)
        assert_true(take(l, "noisy", 0).allowed);
    assert_false(take(l, "noisy", 0).allowed);
    ratelimit__decision d = take(l, "quiet", 0);
    assert_true(d.allowed);
    assert_int_equal(d.remaining, 2);
    assert_true(take(l, "global", 0).allowed);
    assert_false(take(l, "noisy", 0).allowed);
    assert_int_equal(ratelimit__local_size(l), 3);
    ratelimit__local_free(l);
}

static void test_local_table_is_bounded_and_evicts_idle_buckets_first(void **state)
{
    /* One bucket per stripe. */
    ratelimit__local *l = new_local(60, 2, RATELIMIT__STRIPES);
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "tenant-%d", i);
        assert_true(take(l, name, 0).allowed);
        assert_true(ratelimit__local_size(l) <= RATELIMIT__STRIPES);
    }
    /* A busy tenant whose bucket is evicted by newcomers in its stripe only while idle. */
    ratelimit__local_free(l);
    l = new_local(60, 2, RATELIMIT__STRIPES);
    assert_true(take(l, "busy", 0).allowed);
    assert_true(take(l, "busy", 0).allowed);
    assert_false(take(l, "busy", 0).allowed);
    /* Two seconds later the bucket is full again (idle): forgetting it changes nothing. */
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof(name), "other-%d", i);
        assert_true(take(l, name, 2 * SEC).allowed);
    }
    ratelimit__decision d = take(l, "busy", 2 * SEC);
    assert_true(d.allowed);
    assert_int_equal(d.remaining, 1);
    ratelimit__local_free(l);
}

typedef struct race {
    ratelimit__local *l;
    int allowed;
} race;

static void *race_main(void *arg)
{
    race *r = arg;
    for (int i = 0; i < 5000; i++) {
        ratelimit__decision d;
        if (ratelimit__local_take(r->l, "shared", 0, &d) == 0 && d.allowed)
            r->allowed++;
    }
    return NULL;
}

static void test_local_two_threads_share_one_bucket(void **state)
{
    ratelimit__local *l = new_local(60, 1000, 1024);
    race a = {.l = l}, b = {.l = l};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, race_main, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, race_main, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    /* The clock stands still: exactly the burst between both threads, no token twice. */
    assert_int_equal(a.allowed + b.allowed, 1000);
    ratelimit__local_free(l);
}

static void test_redis_url_parses_every_part(void **state)
{
    ratelimit__redis_url u;
    const char *why = NULL;
    assert_int_equal(ratelimit__redis_url_parse("redis://app:p%40ss@cache.local:6380/3", &u, &why),
                     0);
    assert_string_equal(u.host, "cache.local");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "p@ss");
    assert_false(u.tls);
    ratelimit__redis_url_free(&u);

    assert_int_equal(ratelimit__redis_url_parse("redis://127.0.0.1", &u, &why), 0);
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_null(u.password);
    ratelimit__redis_url_free(&u);

    assert_int_equal(ratelimit__redis_url_parse("redis://:secret@[::1]:7000/", &u, &why), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 7000);
    assert_null(u.user);
    assert_string_equal(u.password, "secret");
    ratelimit__redis_url_free(&u);

    assert_int_equal(ratelimit__redis_url_parse("rediss://h:1", &u, &why), 0);
    assert_true(u.tls);
    ratelimit__redis_url_free(&u);

    assert_int_equal(ratelimit__redis_url_parse("unix:///run/redis.sock?db=2", &u, &why), 0);
    assert_string_equal(u.unix_path, "/run/redis.sock");
    assert_int_equal(u.db, 2);
    ratelimit__redis_url_free(&u);
}

static void test_redis_url_rejects_bad_ones_without_echoing_secrets(void **state)
{
    static const char *const bad[] = {
        "http://h",          "redis://",        "redis://h:0",    "redis://h:99999",
        "redis://h:port",    "redis://h/db",    "redis://[::1",   "redis://u:%zz@h",
        "redis://h:1/0?x=1", "unix://relative", "unix:///s?db=x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ratelimit__redis_url u;
        const char *why = NULL;
        assert_int_equal(ratelimit__redis_url_parse(bad[i], &u, &why), PINS_EINVALID_ARGUMENT);
        assert_non_null(why);
        assert_null(strstr(why, "zz"));
    }
}

static void test_limiter_refuses_rediss_and_reports_disabled_without_redis(void **state)
{
    pins_config cfg;
    pins_config_defaults(&cfg);
    ratelimit *rl = NULL;
    char err[256] = "";
    assert_int_equal(ratelimit_new(&cfg, &rl, err, sizeof(err)), 0);
    assert_string_equal(ratelimit_redis_check(rl), "disabled");
    ratelimit_free(rl);
    assert_string_equal(ratelimit_redis_check(NULL), "disabled");

    cfg.redis_url = strdup("rediss://user:topsecret@h:6380");
    rl = NULL;
    assert_int_equal(ratelimit_new(&cfg, &rl, err, sizeof(err)), PINS_EINVALID_ARGUMENT);
    assert_null(rl);
    assert_non_null(strstr(err, "REDIS_URL"));
    assert_null(strstr(err, "topsecret"));
    pins_config_free(&cfg);
}

static void on_verdict(void *arg, const ratelimit_verdict *v)
{
    *(ratelimit_verdict *)arg = *v;
}

/* One check of tenant; the verdict is copied out of the callback. */
static ratelimit_verdict check(ratelimit_worker *w, pins_arena *a, const char *tenant)
{
    ratelimit_verdict v = {.err = -1};
    ratelimit_check(w, tenant, a, on_verdict, &v);
    assert_int_equal(v.err, 0); /* without Redis the local bucket answers at once */
    return v;
}

/* A limiter without Redis, one worker of it on its own loop, and an arena for the checks. */
typedef struct limiter {
    pins_config cfg; /* borrowed by rl */
    struct event_base *base;
    pins_arena *a;
    ratelimit *rl;
    ratelimit_worker *w;
} limiter;

static void limiter_start(limiter *l, int rpm, int burst)
{
    pins_config_defaults(&l->cfg);
    l->cfg.rate_limit_rpm = rpm;
    l->cfg.rate_limit_burst = burst;
    l->base = event_base_new();
    l->a = pins_arena_new(0);
    assert_non_null(l->base);
    assert_non_null(l->a);
    char err[256] = "";
    l->rl = NULL;
    l->w = NULL;
    assert_int_equal(ratelimit_new(&l->cfg, &l->rl, err, sizeof(err)), 0);
    assert_int_equal(ratelimit_worker_new(l->rl, l->base, &l->w), 0);
}

static void limiter_stop(limiter *l)
{
    ratelimit_worker_free(l->w);
    ratelimit_free(l->rl);
    pins_arena_free(l->a);
    event_base_free(l->base);
    pins_config_free(&l->cfg);
}

static void test_check_answers_a_verdict_with_typed_numbers(void **state)
{
    limiter l;
    limiter_start(&l, 120, 2);
    ratelimit_worker *w = l.w;
    pins_arena *a = l.a;

    ratelimit_verdict v = check(w, a, "t");
    assert_true(v.allowed);
    assert_non_null(v.texts);
    assert_string_equal(v.texts->policy, "120;w=60;burst=2");
    assert_int_equal(v.texts->policy_len, strlen("120;w=60;burst=2"));
    assert_string_equal(v.texts->limit, "120");
    assert_string_equal(v.texts->state, "limit=120, remaining=");
    assert_int_equal(v.limit, 120);
    assert_int_equal(v.remaining, 1);
    assert_int_equal(v.retry_after_s, 0);
    v = check(w, a, "t");
    assert_true(v.allowed);
    assert_int_equal(v.remaining, 0);
    assert_int_equal(v.reset_s, 1);
    /* Empty: refused with the seconds until one token is back (2 per second: at least 1). */
    v = check(w, a, "t");
    assert_false(v.allowed);
    assert_int_equal(v.remaining, 0);
    assert_int_equal(v.retry_after_s, 1);
    assert_true(check(w, a, "u").allowed);
    limiter_stop(&l);

    /* RATE_LIMIT_RPM=0: always allowed, no numbers, no headers. */
    limiter_start(&l, 0, 2);
    v = check(l.w, l.a, "t");
    assert_true(v.allowed);
    assert_null(v.texts);
    limiter_stop(&l);
}

/* The limiter reads the time itself (pins_time_mono_ns): a bucket emptied now refills as the fake
 * clock moves, with no sleep. 60 per minute: one token a second. */
static void test_check_refills_as_the_fake_clock_moves(void **state)
{
    fake_clock_install();
    limiter l;
    limiter_start(&l, 60, 3);
    ratelimit_worker *w = l.w;
    pins_arena *a = l.a;

    for (int i = 0; i < 3; i++)
        assert_true(check(w, a, "t").allowed);
    ratelimit_verdict v = check(w, a, "t");
    assert_false(v.allowed);
    assert_int_equal(v.retry_after_s, 1);
    fake_clock_advance_ms(999); /* not yet a whole token */
    assert_false(check(w, a, "t").allowed);
    fake_clock_advance_ms(1);
    v = check(w, a, "t");
    assert_true(v.allowed);
    assert_int_equal(v.remaining, 0);
    assert_false(check(w, a, "t").allowed);
    fake_clock_advance_ms(2000); /* two more tokens */
    assert_true(check(w, a, "t").allowed);
    v = check(w, a, "t");
    assert_true(v.allowed);
    assert_int_equal(v.remaining, 0);
    assert_false(check(w, a, "t").allowed);
    fake_clock_advance_ms(3600 * 1000); /* an idle hour refills to the burst, no more */
    v = check(w, a, "t");
    assert_true(v.allowed);
    assert_int_equal(v.remaining, 2);
    assert_int_equal(v.reset_s, 1);
    limiter_stop(&l);
    fake_clock_uninstall();
}

/* ---- leases (ratelimit_lease.c) against a model of the Redis script ----------------------------
 */

#define MS 1000000ll

/* The script's arithmetic without refill: grants min(want, whole tokens). */
typedef struct fake_bucket {
    double tokens;
    int rpm;
    int burst;
    int requests;
} fake_bucket;

static void fake_request(fake_bucket *b, ratelimit__lease *l, size_t waiting, int64_t now)
{
    int want = ratelimit__lease_want(l, b->burst, waiting);
    int64_t granted = (int64_t)b->tokens < want ? (int64_t)b->tokens : want;
    b->tokens -= (double)granted;
    b->requests++;
    int64_t full_ms = (int64_t)((b->burst - b->tokens) * 60000 / b->rpm + 0.999);
    int64_t retry_ms = b->tokens < 1 ? (int64_t)((1 - b->tokens) * 60000 / b->rpm + 0.999) : 0;
    ratelimit__lease_grant(l, want, granted, (int64_t)b->tokens, full_ms, retry_ms, now);
}

/* One call on a worker holding lease l: spends the lease or asks the fake bucket. */
static bool fake_call(fake_bucket *b, ratelimit__lease *l, int64_t now, ratelimit__decision *pd)
{
    if (ratelimit__lease_take(l, now, pd))
        return true;
    fake_request(b, l, 1, now);
    if (ratelimit__lease_take(l, now, pd))
        return true;
    ratelimit__lease_refusal(l, pd);
    return false;
}

static void test_lease_size_adapts_to_the_burst_and_the_bucket(void **state)
{
    assert_int_equal(ratelimit__lease_max(100), 1);
    assert_int_equal(ratelimit__lease_max(199), 1);
    assert_int_equal(ratelimit__lease_max(1000), 10);
    assert_int_equal(ratelimit__lease_max(1000000), RATELIMIT__LEASE_MAX);
    assert_int_equal(ratelimit__lease_max(0), 1);
    ratelimit__lease l = {0};
    /* Unknown bucket: one token, or as many as calls already wait (bounded). */
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 0), 1);
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 5), 5);
    /* Calls waiting spend the grant at once: up to burst / 100 of them, past the maximum. */
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 500), 500);
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 50000), 10000);
    assert_int_equal(ratelimit__lease_want(&l, 1000, 500), 10);
    assert_int_equal(ratelimit__lease_want(&l, 100, 5), 1);
    /* Plenty left: doubling up to the maximum. */
    int sizes[10];
    for (int i = 0; i < 10; i++) {
        sizes[i] = ratelimit__lease_want(&l, 1000000, 0);
        ratelimit__lease_grant(&l, sizes[i], sizes[i], 900000, 1000, 0, 0);
    }
    assert_int_equal(sizes[0], 1);
    assert_int_equal(sizes[1], 2);
    assert_int_equal(sizes[2], 4);
    assert_int_equal(sizes[6], 64);
    assert_int_equal(sizes[8], RATELIMIT__LEASE_MAX);
    assert_int_equal(sizes[9], RATELIMIT__LEASE_MAX);
    /* A quarter left is still plenty: the lease stays at its maximum. */
    ratelimit__lease_grant(&l, 256, 256, 1000000 / 4 - 1, 1000, 0, 0);
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 0), RATELIMIT__LEASE_MAX);
    /* Running low: at most 1% of what is left, down to one token at a time. */
    ratelimit__lease_grant(&l, 256, 256, 5000, 1000, 0, 0);
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 0), 50);
    ratelimit__lease_grant(&l, 50, 50, 199, 1000, 0, 0);
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 0), 1);
    ratelimit__lease_grant(&l, 1, 1, 0, 1000, 0, 0);
    assert_int_equal(ratelimit__lease_want(&l, 1000000, 0), 1);
}

static void test_lease_spends_locally_and_reports_the_bucket(void **state)
{
    ratelimit__lease l = {0};
    ratelimit__decision d;
    int64_t now = 1000 * SEC;
    assert_false(ratelimit__lease_take(&l, now, &d)); /* nothing leased yet */
    ratelimit__lease_grant(&l, 8, 8, 500, 30000, 0, now);
    for (int i = 0; i < 8; i++) {
        assert_true(ratelimit__lease_take(&l, now + i * MS, &d));
        assert_true(d.allowed);
        /* Redis's remaining plus what this worker still holds: as if spent one by one. */
        assert_int_equal(d.remaining, 500 + 7 - i);
        assert_int_equal(d.reset_s, 30);
    }
    assert_false(ratelimit__lease_take(&l, now + 8 * MS, &d));
    /* A lease is dropped (not returned) once RATELIMIT__LEASE_AGE_MS old. */
    ratelimit__lease_grant(&l, 8, 8, 500, 30000, 0, now);
    assert_true(ratelimit__lease_usable(&l, now + (RATELIMIT__LEASE_AGE_MS - 1) * MS));
    assert_false(ratelimit__lease_take(&l, now + RATELIMIT__LEASE_AGE_MS * MS, &d));
    assert_int_equal(l.tokens, 0);
    /* Refusal: what Redis said, at least one second to wait. */
    ratelimit__lease_grant(&l, 1, 0, 0, 60000, 400, now);
    ratelimit__lease_refusal(&l, &d);
    assert_false(d.allowed);
    assert_int_equal(d.remaining, 0);
    assert_int_equal(d.reset_s, 60);
    assert_int_equal(d.retry_after_s, 1);
}

static void test_leases_never_admit_more_than_the_bucket(void **state)
{
    /* Small bursts: exactly the burst, one request per call (no lease ever above one token). */
    fake_bucket b = {.tokens = 100, .rpm = 60, .burst = 100};
    ratelimit__lease w[2] = {{0}};
    ratelimit__decision d;
    int ok = 0;
    for (int i = 0; i < 1000; i++)
        ok += fake_call(&b, &w[i % 2], 1000 * SEC, &d);
    assert_int_equal(ok, 100);
    assert_false(d.allowed);
    assert_int_equal(b.requests, 1000);
    /* A big burst shared by four workers: exactly the burst while calls keep coming, with far
     * fewer requests than calls. */
    fake_bucket big = {.tokens = 100000, .rpm = 100000, .burst = 100000};
    ratelimit__lease ws[4] = {{0}};
    ok = 0;
    for (int i = 0; i < 200000; i++) {
        ok += fake_call(&big, &ws[i % 4], 1000 * SEC + i * 1000, &d);
        if (i == 50000 - 1) /* plenty left: leases of up to 64 tokens */
            assert_true(big.requests < 50000 / 16);
    }
    assert_int_equal(ok, 100000);
    assert_int_equal(ratelimit__lease_want(&ws[0], big.burst, 0), 1); /* empty: one at a time */
    /* Leases that age out unused only lose tokens: fewer admissions, never more. */
    fake_bucket aged = {.tokens = 100000, .rpm = 100000, .burst = 100000};
    ratelimit__lease la = {0};
    ok = 0;
    int64_t now = 1000 * SEC;
    for (int i = 0; i < 50; i++) {
        ok += fake_call(&aged, &la, now, &d);
        ok += fake_call(&aged, &la, now, &d);
        now += RATELIMIT__LEASE_AGE_MS * MS; /* the rest of the lease is dropped */
    }
    assert_int_equal(ok, 100);
    assert_true(aged.tokens < 100000 - 100);
}

/* ---- rate_limit_throttled_tenants ------------------------------------------------------------ */

static ratelimit__throttled *new_throttled(void)
{
    ratelimit__throttled *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    return t;
}

static void test_throttled_counts_distinct_tenants_once(void **state)
{
    ratelimit__throttled *t = new_throttled();
    assert_int_equal(ratelimit__throttled_count(t, 1000), 0);
    ratelimit__throttled_note(t, "a", 1000);
    ratelimit__throttled_note(t, "a", 1000);
    ratelimit__throttled_note(t, "a", 1001);
    assert_int_equal(ratelimit__throttled_count(t, 1001), 1);
    ratelimit__throttled_note(t, "b", 1001);
    assert_int_equal(ratelimit__throttled_count(t, 1001), 2);
    /* A clock still near its start (a freshly booted host) counts the same. */
    ratelimit__throttled *young = new_throttled();
    ratelimit__throttled_note(young, "a", 0);
    assert_int_equal(ratelimit__throttled_count(young, 0), 1);
    assert_int_equal(ratelimit__throttled_count(young, 5), 1);
    free(young);
    free(t);
}

static void test_throttled_forgets_tenants_after_the_window(void **state)
{
    ratelimit__throttled *t = new_throttled();
    ratelimit__throttled_note(t, "a", 1000);
    ratelimit__throttled_note(t, "b", 1030);
    assert_int_equal(ratelimit__throttled_count(t, 1059), 2);
    assert_int_equal(ratelimit__throttled_count(t, 1060), 1); /* a: 60 s ago */
    /* Refused again: counted again, in the slot it had (no second entry). */
    ratelimit__throttled_note(t, "a", 1061);
    assert_int_equal(ratelimit__throttled_count(t, 1061), 2);
    assert_int_equal(ratelimit__throttled_count(t, 1090), 1); /* b gone, a still there */
    assert_int_equal(ratelimit__throttled_count(t, 1121), 0);
    free(t);
}

static void test_throttled_saturates_in_fixed_memory(void **state)
{
    ratelimit__throttled *t = new_throttled();
    char name[32];
    for (int i = 0; i < 4 * RATELIMIT__THROTTLED_SLOTS; i++) {
        snprintf(name, sizeof(name), "tenant-%d", i);
        ratelimit__throttled_note(t, name, 500);
    }
    int n = ratelimit__throttled_count(t, 500);
    assert_true(n <= RATELIMIT__THROTTLED_SLOTS);
    assert_true(n >= RATELIMIT__THROTTLED_SLOTS * 9 / 10); /* nearly every slot is in use */
    /* A minute later the slots are free again for new tenants. */
    ratelimit__throttled_note(t, "late", 561);
    assert_int_equal(ratelimit__throttled_count(t, 561), 1);
    free(t);
}

/* Through the limiter: refusals, not allowed calls, make the gauge; the exposition shows it. */
static void test_check_refusals_show_in_the_throttled_gauge(void **state)
{
    fake_clock_install();
    limiter l;
    limiter_start(&l, 60, 1);
    double before = scrape_value("rate_limit_throttled_tenants", -1);
    assert_true(before >= 0);
    assert_true(check(l.w, l.a, "thr-a").allowed);
    assert_true(check(l.w, l.a, "thr-b").allowed);
    assert_true(scrape_value("rate_limit_throttled_tenants", -1) == before);
    assert_false(check(l.w, l.a, "thr-a").allowed);
    assert_false(check(l.w, l.a, "thr-a").allowed);
    assert_true(scrape_value("rate_limit_throttled_tenants", -1) == before + 1);
    assert_false(check(l.w, l.a, "thr-b").allowed);
    assert_true(scrape_value("rate_limit_throttled_tenants", -1) == before + 2);
    assert_true(scrape_value("rate_limit_redis_configured", -1) == 0);
    assert_true(scrape_value("rate_limit_decisions_total{decision=\"limited\",backend=\"redis\"}",
                             -1) == 0);
    /* Two minutes on, past the window of these refusals and of those earlier tests made at most a
     * few fake seconds ahead of this clock. */
    fake_clock_advance_ms(120000);
    assert_true(scrape_value("rate_limit_throttled_tenants", -1) == 0);
    limiter_stop(&l);
    fake_clock_uninstall();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_allows_exactly_the_burst_then_refuses),
        cmocka_unit_test(test_local_refills_at_rpm_with_a_fake_clock),
        cmocka_unit_test(test_local_refill_never_exceeds_the_burst),
        cmocka_unit_test(test_local_clock_going_back_refills_nothing),
        cmocka_unit_test(test_local_tenants_are_isolated),
        cmocka_unit_test(test_local_table_is_bounded_and_evicts_idle_buckets_first),
        cmocka_unit_test(test_local_two_threads_share_one_bucket),
        cmocka_unit_test(test_redis_url_parses_every_part),
        cmocka_unit_test(test_redis_url_rejects_bad_ones_without_echoing_secrets),
        cmocka_unit_test(test_limiter_refuses_rediss_and_reports_disabled_without_redis),
        cmocka_unit_test(test_check_answers_a_verdict_with_typed_numbers),
        cmocka_unit_test(test_check_refills_as_the_fake_clock_moves),
        cmocka_unit_test(test_lease_size_adapts_to_the_burst_and_the_bucket),
        cmocka_unit_test(test_lease_spends_locally_and_reports_the_bucket),
        cmocka_unit_test(test_leases_never_admit_more_than_the_bucket),
        cmocka_unit_test(test_throttled_counts_distinct_tenants_once),
        cmocka_unit_test(test_throttled_forgets_tenants_after_the_window),
        cmocka_unit_test(test_throttled_saturates_in_fixed_memory),
        cmocka_unit_test(test_check_refusals_show_in_the_throttled_gauge),
    };
    return cmocka_run_group_tests_name("auth/ratelimit", tests, NULL, NULL);
}
