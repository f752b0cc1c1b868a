/* auth/credcache.c: the per-thread cache of verified bearer tokens (auth_int.h).
 *
 * Verifying a JWT costs two base64url decodes, an HMAC-SHA256 and two JSON parses; a client sends
 * the same Authorization value on every call. Each thread keeps what it verified: two
 * set-associative tables (accepted and refused tokens) of AUTH__CACHE_WAYS entries per set,
 * indexed by a seeded FNV-1a hash of the exact header value and confirmed by comparing every
 * byte, with least-recently-used eviction inside a set. Nothing is shared between threads, so
 * nothing is locked; a thread's tables are freed when it exits (a pthread key destructor).
 *
 * An accepted entry holds the claims (copied into the call's arena at each hit, since the entry
 * may be evicted while the call still uses them) and exp / nbf, which are checked against the
 * clock at every use: a cached token stops working at the same second an uncached one would.
 * A refused entry holds only the static reason; only refusals that do not depend on the clock are
 * kept (a token that is merely expired or not yet valid is never verified again: it becomes an
 * accepted entry that fails its time check). Tokens are never logged; the tables hold copies of
 * header values only in this thread's heap memory.
 */
#include "auth/auth_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"

typedef struct entry {
    uint64_t hash;
    char *key; /* the Authorization header value; NULL: free slot */
    size_t keylen;
    uint64_t used; /* the table's clock at the last use */
    /* accepted tokens */
    auth__jwt_times times;
    char *sub; /* NULL when absent */
    char **roles;
    size_t nroles;
    bool restricted;
    char **tenants;
    size_t ntenants;
    /* refused tokens */
    const char *why; /* static */
} entry;

typedef struct table {
    entry *slots; /* nsets * AUTH__CACHE_WAYS */
    size_t nsets;
    size_t n;
    uint64_t clock;
} table;

typedef struct cache {
    table good;
    table bad;
    char *secret; /* the JWT secret the tables were filled under */
    size_t secretlen;
    unsigned generation;
    uint64_t seed;
    auth__cache_stats stats;
} cache;

static _Thread_local cache *tl_cache;
static _Atomic unsigned generation;
static pthread_key_t cache_key;
static pthread_once_t cache_key_once = PTHREAD_ONCE_INIT;

static void entry_clear(entry *e)
{
    free(e->key);
    free(e->sub);
    for (size_t i = 0; i < e->nroles; i++)
        free(e->roles[i]);
    free(e->roles);
    for (size_t i = 0; i < e->ntenants; i++)
        free(e->tenants[i]);
    free(e->tenants);
    *e = (entry){0};
}

static void table_clear(table *t)
{
    for (size_t i = 0; t->slots != NULL && i < t->nsets * AUTH__CACHE_WAYS; i++)
        entry_clear(&t->slots[i]);
    t->n = 0;
}

static void cache_free(void *arg)
{
    cache *c = arg;
    if (c == NULL)
        return;
    table_clear(&c->good);
    table_clear(&c->bad);
    free(c->good.slots);
    free(c->bad.slots);
    free(c->secret);
    free(c);
}

static void make_key(void)
{
    pthread_key_create(&cache_key, cache_free);
}

/* The calling thread's cache, created on first use; NULL when out of memory. */
static cache *cache_get(void)
{
    if (tl_cache != NULL)
        return tl_cache;
    pthread_once(&cache_key_once, make_key);
    cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->good.nsets = AUTH__CACHE_SETS;
    c->bad.nsets = AUTH__CACHE_BAD_SETS;
    c->good.slots = calloc(AUTH__CACHE_SETS * AUTH__CACHE_WAYS, sizeof(entry));
    c->bad.slots = calloc(AUTH__CACHE_BAD_SETS * AUTH__CACHE_WAYS, sizeof(entry));
    if (c->good.slots == NULL || c->bad.slots == NULL) {
        cache_free(c);
        return NULL;
    }
    c->generation = atomic_load_explicit(&generation, memory_order_acquire);
    /* The seed only spreads keys over sets; collisions cost a full comparison, not safety. */
    c->seed = 0xcbf29ce484222325ull ^ (uint64_t)pins_time_mono_ns() ^ (uint64_t)(uintptr_t)c;
    pthread_setspecific(cache_key, c);
    tl_cache = c;
    return c;
}

/* Empties both tables when the secret or the generation changed; then remembers the secret.
 * Returns false when the secret cannot be copied (the cache is then not used). */
static bool cache_sync(cache *c, const char *secret, size_t secretlen)
{
    unsigned g = atomic_load_explicit(&generation, memory_order_acquire);
    if (g == c->generation && c->secret != NULL && c->secretlen == secretlen &&
        memcmp(c->secret, secret, secretlen) == 0)
        return true;
    table_clear(&c->good);
    table_clear(&c->bad);
    free(c->secret);
    c->secret = malloc(secretlen + 1);
    c->secretlen = secretlen;
    c->generation = g;
    if (c->secret == NULL)
        return false;
    memcpy(c->secret, secret, secretlen);
    c->secret[secretlen] = '\0';
    return true;
}

/* A seeded 64-bit hash of s[0..n), eight bytes at a time. */
static uint64_t hash_of(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, sizeof(v));
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    memcpy(&tail, s + i, n - i);
    h = (h ^ tail) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static entry *table_find(table *t, uint64_t h, const char *key, size_t keylen)
{
    entry *set = &t->slots[(h % t->nsets) * AUTH__CACHE_WAYS];
    for (size_t i = 0; i < AUTH__CACHE_WAYS; i++) {
        entry *e = &set[i];
        if (e->key != NULL && e->hash == h && e->keylen == keylen &&
            memcmp(e->key, key, keylen) == 0) {
            e->used = ++t->clock;
            return e;
        }
    }
    return NULL;
}

/* A slot for a new entry of hash h: a free one of its set, or its least recently used one
 * (emptied). */
static entry *table_slot(table *t, uint64_t h, uint64_t *pevictions)
{
    entry *set = &t->slots[(h % t->nsets) * AUTH__CACHE_WAYS];
    entry *victim = &set[0];
    for (size_t i = 0; i < AUTH__CACHE_WAYS; i++) {
        if (set[i].key == NULL)
            return &set[i];
        if (set[i].used < victim->used)
            victim = &set[i];
    }
    entry_clear(victim);
    t->n--;
    (*pevictions)++;
    return victim;
}

static char *str_dup(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static char **list_dup(const char *const *list, size_t n, bool *pnomem)
{
    if (n == 0)
        return NULL;
    char **out = calloc(n, sizeof(*out));
    if (out == NULL) {
        *pnomem = true;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(list[i]);
        if (out[i] == NULL)
            *pnomem = true;
    }
    return out;
}

/* Fills a fresh slot e with the key and an accepted token's claims; false (e emptied) when out of
 * memory. */
static bool entry_fill_good(entry *e, uint64_t h, const char *key, size_t keylen,
                            const auth__claims *c, const auth__jwt_times *times)
{
    bool nomem = false;
    e->key = malloc(keylen + 1);
    if (e->key == NULL)
        return false;
    memcpy(e->key, key, keylen);
    e->key[keylen] = '\0';
    e->keylen = keylen;
    e->hash = h;
    e->times = *times;
    e->sub = str_dup(c->sub);
    nomem = c->sub != NULL && e->sub == NULL;
    e->roles = list_dup(c->roles, c->nroles, &nomem);
    e->nroles = e->roles != NULL ? c->nroles : 0;
    e->restricted = c->restricted;
    e->tenants = list_dup(c->tenants, c->ntenants, &nomem);
    e->ntenants = e->tenants != NULL ? c->ntenants : 0;
    if (nomem) {
        entry_clear(e);
        return false;
    }
    return true;
}

/* The claims of an accepted entry, copied into a. Returns 0 or PINS_ENOMEM. */
static int claims_copy(pins_arena *a, const entry *e, auth__claims *pc)
{
    auth__claims c = {.restricted = e->restricted};
    if (e->sub != NULL) {
        c.sub = pins_arena_strndup(a, e->sub, strlen(e->sub));
        if (c.sub == NULL)
            return PINS_ENOMEM;
    }
    if (e->nroles > 0) {
        c.roles = pins_arena_calloc(a, e->nroles, sizeof(*c.roles));
        if (c.roles == NULL)
            return PINS_ENOMEM;
        for (size_t i = 0; i < e->nroles; i++) {
            c.roles[i] = pins_arena_strndup(a, e->roles[i], strlen(e->roles[i]));
            if (c.roles[i] == NULL)
                return PINS_ENOMEM;
        }
        c.nroles = e->nroles;
    }
    if (e->restricted) {
        /* A restricted credential always has a list, even an empty one. */
        c.tenants = pins_arena_calloc(a, e->ntenants ? e->ntenants : 1, sizeof(*c.tenants));
        if (c.tenants == NULL)
            return PINS_ENOMEM;
        for (size_t i = 0; i < e->ntenants; i++) {
            c.tenants[i] = pins_arena_strndup(a, e->tenants[i], strlen(e->tenants[i]));
            if (c.tenants[i] == NULL)
                return PINS_ENOMEM;
        }
        c.ntenants = e->ntenants;
    }
    *pc = c;
    return 0;
}

int auth__jwt_verify_cached(pins_arena *a, const char *authz, const char *token, size_t len,
                            const char *secret, size_t secretlen, int64_t now_s,
                            auth__claims *pclaims, const char **pwhy)
{
    cache *c = cache_get();
    size_t keylen = strlen(authz);
    if (c == NULL || secretlen == 0 || len > AUTH__MAX_TOKEN || !cache_sync(c, secret, secretlen))
        return auth__jwt_verify(a, token, len, secret, secretlen, now_s, pclaims, pwhy);

    uint64_t h = hash_of(c->seed, authz, keylen);
    entry *e = table_find(&c->good, h, authz, keylen);
    if (e != NULL) {
        const char *tp = auth__jwt_time_problem(&e->times, now_s);
        if (tp != NULL) {
            if (pwhy != NULL)
                *pwhy = tp;
            return PINS_EUNAUTHENTICATED;
        }
        int rv = claims_copy(a, e, pclaims);
        if (rv == 0) {
            c->stats.hits++;
            if (pwhy != NULL)
                *pwhy = NULL;
        }
        return rv;
    }
    e = table_find(&c->bad, h, authz, keylen);
    if (e != NULL) {
        c->stats.bad_hits++;
        if (pwhy != NULL)
            *pwhy = e->why;
        return PINS_EUNAUTHENTICATED;
    }

    c->stats.misses++;
    auth__claims claims;
    auth__jwt_times times;
    const char *why = NULL;
    int rv = auth__jwt_check(a, token, len, secret, secretlen, &claims, &times, &why);
    if (rv == PINS_ENOMEM)
        return rv;
    if (rv != 0) {
        e = table_slot(&c->bad, h, &c->stats.evictions);
        e->key = malloc(keylen + 1);
        if (e->key != NULL) {
            memcpy(e->key, authz, keylen);
            e->key[keylen] = '\0';
            e->keylen = keylen;
            e->hash = h;
            e->why = why;
            e->used = ++c->bad.clock;
            c->bad.n++;
        }
        if (pwhy != NULL)
            *pwhy = why;
        return rv;
    }
    e = table_slot(&c->good, h, &c->stats.evictions);
    if (entry_fill_good(e, h, authz, keylen, &claims, &times)) {
        e->used = ++c->good.clock;
        c->good.n++;
    }
    const char *tp = auth__jwt_time_problem(&times, now_s);
    if (pwhy != NULL)
        *pwhy = tp;
    if (tp != NULL)
        return PINS_EUNAUTHENTICATED;
    *pclaims = claims;
    return 0;
}

void auth__cred_cache_stats(auth__cache_stats *ps)
{
    cache *c = tl_cache;
    *ps = c != NULL ? c->stats : (auth__cache_stats){0};
    ps->size = c != NULL ? c->good.n : 0;
    ps->bad_size = c != NULL ? c->bad.n : 0;
}

void auth__cred_cache_invalidate(void)
{
    atomic_fetch_add_explicit(&generation, 1, memory_order_acq_rel);
}

void auth__cred_cache_free_thread(void)
{
    cache *c = tl_cache;
    if (c == NULL)
        return;
    tl_cache = NULL;
    pthread_setspecific(cache_key, NULL);
    cache_free(c);
}
