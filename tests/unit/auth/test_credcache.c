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
    assert_null(p.sub_unused_marker_never_defined);
}
