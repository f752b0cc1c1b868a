/* tests/unit/auth/test_credcache.c: the per-thread cache of verified bearer tokens
 * (auth/credcache.c) through auth__credentials(): hits, the clock checked at every use, refused
 * tokens kept as such, eviction, a changed secret, and one cache per thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth_int.h"
#include "common/error.h"
#include "jwt_mint.h"

#define SECRET "cache-secret-0123456789"
#define NOW    1800000000LL

typedef struct fixture {
    pins_arena *a;
    pins_config cfg;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->a = pins_arena_new(1 << 22);
    assert_non_null(f->a);
    f->cfg.jwt_secret = SECRET;
    auth__cred_cache_free_thread();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    auth__cred_cache_free_thread();
    pins_arena_free(f->a);
    free(f);
    return 0;
}

static const char *lookup(void *arg, const char *name)
{
    return strcmp(name, "authorization") == 0 ? arg : NULL;
}

static auth__principal creds_at(fixture *f, const char *authz, int64_t now)
{
    auth__principal p;
    assert_int_equal(auth__credentials(f->a, &f->cfg, lookup, (void *)authz, now, &p), 0);
    return p;
}

/* "Bearer <token>" for payload into out. */
static char *bearer(char *out, size_t cap, const char *payload)
{
    char tok[1024];
    assert_non_null(mint_jwt(tok, sizeof(tok), payload, SECRET));
    snprintf(out, cap, "Bearer %s", tok);
    return out;
}

static auth__cache_stats stats(void)
{
    auth__cache_stats s;
    auth__cred_cache_stats(&s);
    return s;
}

static void test_hit_gives_the_same_claims(void **state)
{
    fixture *f = *state;
    char v[1200];
    bearer(v, sizeof(v), "{\"sub\":\"ann\",\"roles\":[\"admin\",\"dev\"],\"tenants\":[\"t1\"]}");
    for (int i = 0; i < 3; i++) {
        auth__principal p = creds_at(f, v, NOW);
        assert_int_equal(p.status, AUTH__CRED_OK);
        assert_string_equal(p.subject, "ann");
        assert_int_equal(p.nroles, 2);
        assert_string_equal(p.roles[0], "admin");
        assert_string_equal(p.roles[1], "dev");
        assert_true(p.restricted);
        assert_int_equal(p.ntenants, 1);
        assert_string_equal(p.tenants[0], "t1");
    }
    auth__cache_stats s = stats();
    assert_int_equal(s.misses, 1);
    assert_int_equal(s.hits, 2);
    assert_int_equal(s.size, 1);
    /* The key is the exact header value: other spacing is another entry, same answer. */
    char v2[1300];
    snprintf(v2, sizeof(v2), "Bearer  %s", v + 7);
    assert_int_equal(creds_at(f, v2, NOW).status, AUTH__CRED_OK);
    assert_int_equal(stats().misses, 2);
    /* A restricted token with an empty list stays restricted on a hit. */
    bearer(v, sizeof(v), "{\"roles\":\"dev\",\"tenants\":[]}");
    assert_true(creds_at(f, v, NOW).restricted);
    auth__principal p = creds_at(f, v, NOW);
    assert_true(p.restricted);
    assert_int_equal(p.ntenants, 0);
    assert_string_equal(p.subject, "jwt");
}

static void test_expiry_is_checked_at_every_use(void **state)
{
    fixture *f = *state;
    char v[1200], payload[128];
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"exp\":%lld}", NOW + 10);
    bearer(v, sizeof(v), payload);
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_OK);
    assert_int_equal(creds_at(f, v, NOW + 10 + AUTH__LEEWAY_S - 1).status, AUTH__CRED_OK);
    /* Cached, yet refused once exp + leeway has passed. */
    auth__principal p = creds_at(f, v, NOW + 10 + AUTH__LEEWAY_S);
    assert_int_equal(p.status, AUTH__CRED_INVALID);
    assert_string_equal(p.why, "expired");
    assert_int_equal(stats().misses, 1);
    /* Not yet valid: refused before nbf - leeway, accepted from it on, one verification. */
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"nbf\":%lld}", NOW + 100);
    bearer(v, sizeof(v), payload);
    p = creds_at(f, v, NOW);
    assert_int_equal(p.status, AUTH__CRED_INVALID);
    assert_string_equal(p.why, "not yet valid");
    assert_int_equal(creds_at(f, v, NOW + 100 - AUTH__LEEWAY_S).status, AUTH__CRED_OK);
    assert_int_equal(stats().misses, 2);
    /* A token first seen expired is refused too. */
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"exp\":%lld}", NOW - 100);
    bearer(v, sizeof(v), payload);
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_INVALID);
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_INVALID);
}

static void test_bad_tokens_are_kept_as_refused(void **state)
{
    fixture *f = *state;
    char v[1200];
    bearer(v, sizeof(v), "{\"roles\":\"admin\"}");
    v[strlen(v) - 2] ^= 1; /* break the signature */
    for (int i = 0; i < 5; i++) {
        auth__principal p = creds_at(f, v, NOW);
        assert_int_equal(p.status, AUTH__CRED_INVALID);
        assert_string_equal(p.kind, "jwt");
        assert_non_null(p.why);
    }
    auth__cache_stats s = stats();
    assert_int_equal(s.misses, 1);
    assert_int_equal(s.bad_hits, 4);
    assert_int_equal(s.bad_size, 1);
    assert_int_equal(s.size, 0);
    /* A flood of distinct bad tokens stays within its own small table. */
    char junk[64];
    for (int i = 0; i < 1000; i++) {
        snprintf(junk, sizeof(junk), "Bearer a.b.%d", i);
        assert_int_equal(creds_at(f, junk, NOW).status, AUTH__CRED_INVALID);
    }
    s = stats();
    assert_true(s.bad_size <= AUTH__CACHE_BAD_SETS * AUTH__CACHE_WAYS);
    assert_int_equal(s.size, 0);
}

static void test_eviction_bounds_the_table(void **state)
{
    fixture *f = *state;
    char v[1200], payload[128], first[1200];
    const size_t cap = AUTH__CACHE_SETS * AUTH__CACHE_WAYS;
    bearer(first, sizeof(first), "{\"sub\":\"first\",\"roles\":\"dev\"}");
    assert_int_equal(creds_at(f, first, NOW).status, AUTH__CRED_OK);
    for (size_t i = 0; i < cap * 4; i++) {
        snprintf(payload, sizeof(payload), "{\"sub\":\"u%zu\",\"roles\":\"dev\"}", i);
        bearer(v, sizeof(v), payload);
        auth__principal p = creds_at(f, v, NOW);
        assert_int_equal(p.status, AUTH__CRED_OK);
        /* Keeping the first token in use keeps it (least recently used goes first). */
        assert_string_equal(creds_at(f, first, NOW).subject, "first");
    }
    auth__cache_stats s = stats();
    assert_true(s.size <= cap);
    assert_true(s.evictions >= cap * 4 + 1 - cap);
    assert_int_equal(s.misses, cap * 4 + 1);
    /* An evicted token is simply verified again. */
    snprintf(payload, sizeof(payload), "{\"sub\":\"u%d\",\"roles\":\"dev\"}", 0);
    bearer(v, sizeof(v), payload);
    assert_string_equal(creds_at(f, v, NOW).subject, "u0");
}

static void test_secret_change_and_invalidate_empty_the_cache(void **state)
{
    fixture *f = *state;
    char v[1200];
    bearer(v, sizeof(v), "{\"roles\":\"admin\"}");
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_OK);
    /* Another secret: the token is checked against it (and refused), not served from memory. */
    f->cfg.jwt_secret = "another-secret";
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_INVALID);
    f->cfg.jwt_secret = "";
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_INVALID);
    f->cfg.jwt_secret = SECRET;
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_OK);
    uint64_t misses = stats().misses;
    auth__cred_cache_invalidate();
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_OK);
    assert_int_equal(stats().misses, misses + 1);
}

static void test_alternating_tokens_each_get_their_own_claims(void **state)
{
    fixture *f = *state;
    char a[1200], b[1200], c[1200];
    bearer(a, sizeof(a), "{\"sub\":\"a\",\"roles\":[\"admin\"],\"tenants\":[\"t1\",\"t2\"]}");
    bearer(b, sizeof(b), "{\"sub\":\"b\",\"roles\":\"dev\"}");
    /* Same length as b and one byte different: another key (refused), b stays b. */
    memcpy(c, b, strlen(b) + 1);
    c[strlen(c) - 1] = c[strlen(c) - 1] == 'A' ? 'B' : 'A';
    for (int i = 0; i < 4; i++) {
        auth__principal p = creds_at(f, a, NOW);
        assert_string_equal(p.subject, "a");
        assert_int_equal(p.nroles, 1);
        assert_string_equal(p.roles[0], "admin");
        assert_true(p.restricted);
        assert_int_equal(p.ntenants, 2);
        assert_string_equal(p.tenants[0], "t1");
        assert_string_equal(p.tenants[1], "t2");
        p = creds_at(f, b, NOW);
        assert_string_equal(p.subject, "b");
        assert_int_equal(p.nroles, 1);
        assert_string_equal(p.roles[0], "dev");
        assert_false(p.restricted);
        assert_null(p.tenants);
        assert_int_equal(creds_at(f, c, NOW).status, AUTH__CRED_INVALID);
        assert_string_equal(creds_at(f, b, NOW).subject, "b");
    }
    auth__cache_stats s = stats();
    assert_int_equal(s.misses, 3);
    assert_int_equal(s.hits, 4 * 3 - 2);
    assert_int_equal(s.bad_hits, 3);
    /* The scheme in lower case: same length and same end (hence the same hash), another key. */
    char lower[1200];
    memcpy(lower, a, strlen(a) + 1);
    memcpy(lower, "bearer", 6);
    assert_string_equal(creds_at(f, lower, NOW).subject, "a");
    assert_int_equal(stats().misses, 4);
    assert_string_equal(creds_at(f, a, NOW).subject, "a");
    assert_string_equal(creds_at(f, lower, NOW).subject, "a");
    assert_int_equal(stats().misses, 4);
    assert_int_equal(stats().size, 3);
    /* Claims copied at a hit are the call's: a later hit does not change them. */
    auth__principal first = creds_at(f, a, NOW);
    auth__principal second = creds_at(f, a, NOW);
    assert_ptr_not_equal(first.roles, second.roles);
    assert_string_equal(first.roles[0], "admin");
}

typedef struct thread_arg {
    const char *authz;
    auth__cache_stats before;
    auth__cache_stats after;
    int status;
} thread_arg;

static void *other_thread(void *arg)
{
    thread_arg *t = arg;
    pins_arena *a = pins_arena_new(1 << 20);
    pins_config cfg = {.jwt_secret = SECRET};
    auth__principal p;
    auth__cred_cache_stats(&t->before);
    if (a != NULL && auth__credentials(a, &cfg, lookup, (void *)t->authz, NOW, &p) == 0)
        t->status = (int)p.status;
    auth__cred_cache_stats(&t->after);
    pins_arena_free(a);
    return NULL; /* the thread's cache is freed at its exit */
}

static void test_threads_do_not_share(void **state)
{
    fixture *f = *state;
    char v[1200];
    bearer(v, sizeof(v), "{\"roles\":\"admin\"}");
    assert_int_equal(creds_at(f, v, NOW).status, AUTH__CRED_OK);
    assert_int_equal(stats().size, 1);
    thread_arg t = {.authz = v, .status = -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, other_thread, &t), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(t.status, AUTH__CRED_OK);
    /* The other thread started empty and verified the token itself. */
    assert_int_equal(t.before.size, 0);
    assert_int_equal(t.after.misses, 1);
    assert_int_equal(t.after.hits, 0);
    /* ... and this thread's cache did not see that. */
    assert_int_equal(stats().misses, 1);
    assert_int_equal(stats().size, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hit_gives_the_same_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry_is_checked_at_every_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_tokens_are_kept_as_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_bounds_the_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secret_change_and_invalidate_empty_the_cache, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_threads_do_not_share, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alternating_tokens_each_get_their_own_claims, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("auth_credcache", tests, NULL, NULL);
}
