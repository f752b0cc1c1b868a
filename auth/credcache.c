/* auth/credcache.c: the per-thread cache of verified bearer tokens (auth_int.h).
 *
 * Verifying a JWT costs two base64url decodes, an HMAC-SHA256 and two JSON parses; a client sends
 * the same Authorization value on every call. Each thread keeps what it verified: two
 * set-associative tables (accepted and refused tokens) of AUTH__CACHE_WAYS entries per set,
 * indexed by a seeded hash of the exact header value's length and last KEY_HASH_BYTES bytes (a
 * bearer token's signature, which differs from token to token, so a lookup need not read the
 * whole token) and confirmed by comparing every byte, with least-recently-used eviction inside a
 * set. The seed is random, so a caller cannot steer its header value into a comparison with
 * another caller's. Nothing is shared between threads, so nothing is locked; a thread's tables
 * are freed when it exits (a pthread key destructor).
 *
 * An accepted entry holds the claims (copied into the call's arena at each hit, since the entry
 * may be evicted while the call still uses them) and exp / nbf, which are checked against the
 * clock at every use: a cached token stops working at the same second an uncached one would.
 * The claims are kept as one block (the subject, role and tenant strings, preceded by their
 * offsets), so that a hit copies them with one allocation and one memcpy and turns the offsets
 * into pointers. A refused entry holds only the static reason; only refusals that do not depend
 * on the clock are kept (a token that is merely expired or not yet valid is never verified again:
 * it becomes an accepted entry that fails its time check). Tokens are never logged; the tables
 * hold copies of header values only in this thread's heap memory.
 */
#include "auth/auth_int.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"

typedef struct entry {
    uint64_t hash;
    char *key; /* the Authorization header value; NULL: free slot */
    size_t keylen;
    uint64_t used; /* the table's clock at the last use */
    /* accepted tokens: the claims as one block of (1 + nroles + ntenants) offsets (the subject's
     * first, SIZE_MAX when absent), then the strings they point at, NUL-terminated */
    auth__jwt_times times;
    char *claims;
    size_t claims_len;
    size_t nroles;
    bool restricted;
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
    free(e->claims);
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

/* Bytes of a key that its hash reads: the end of a bearer token, its signature. */
#define KEY_HASH_BYTES 32

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

/* The hash of a key: its length and its last KEY_HASH_BYTES bytes. */
static uint64_t key_hash(uint64_t seed, const char *key, size_t keylen)
{
    size_t n = keylen < KEY_HASH_BYTES ? keylen : KEY_HASH_BYTES;
    return hash_of(seed ^ ((uint64_t)keylen * 0xd6e8feb86659fd93ull), key + keylen - n, n);
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

/* Lays the claims out as one block (see entry); returns it (malloc'd) and its size, or NULL. */
static char *claims_pack(const auth__claims *c, size_t *plen)
{
    size_t n = 1 + c->nroles + c->ntenants;
    size_t len = n * sizeof(size_t);
    len += c->sub != NULL ? strlen(c->sub) + 1 : 0;
    for (size_t i = 0; i < c->nroles; i++)
        len += strlen(c->roles[i]) + 1;
    for (size_t i = 0; i < c->ntenants; i++)
        len += strlen(c->tenants[i]) + 1;
    char *b = malloc(len);
    if (b == NULL)
        return NULL;
    size_t *off = (size_t *)(void *)b;
    size_t at = n * sizeof(size_t);
    for (size_t i = 0; i < n; i++) {
        const char *str = i == 0           ? c->sub
                          : i <= c->nroles ? c->roles[i - 1]
                                           : c->tenants[i - 1 - c->nroles];
        if (str == NULL) {
            off[i] = SIZE_MAX;
            continue;
        }
        size_t sl = strlen(str) + 1;
        memcpy(b + at, str, sl);
        off[i] = at;
        at += sl;
    }
    *plen = len;
    return b;
}

/* Fills a fresh slot e with the key and an accepted token's claims; false (e emptied) when out of
 * memory. */
static bool entry_fill_good(entry *e, uint64_t h, const char *key, size_t keylen,
                            const auth__claims *c, const auth__jwt_times *times)
{
    e->key = malloc(keylen + 1);
    e->claims = claims_pack(c, &e->claims_len);
    if (e->key == NULL || e->claims == NULL) {
        entry_clear(e);
        return false;
    }
    memcpy(e->key, key, keylen);
    e->key[keylen] = '\0';
    e->keylen = keylen;
    e->hash = h;
    e->times = *times;
    e->nroles = c->nroles;
    e->restricted = c->restricted;
    e->ntenants = c->ntenants;
    return true;
}

/* The claims of an accepted entry, copied into a: one block, its offsets turned into pointers in
 * place. Returns 0 or PINS_ENOMEM. */
static int claims_copy(pins_arena *a, const entry *e, auth__claims *pc)
{
    static_assert(sizeof(size_t) == sizeof(char *), "offsets become pointers in place");
    char *b = pins_arena_alloc(a, e->claims_len);
    if (b == NULL)
        return PINS_ENOMEM;
    memcpy(b, e->claims, e->claims_len);
    size_t n = 1 + e->nroles + e->ntenants;
    const size_t *off = (const size_t *)(void *)b;
    const char **ptr = (const char **)(void *)b;
    for (size_t i = 0; i < n; i++)
        ptr[i] = off[i] != SIZE_MAX ? b + off[i] : NULL;
    auth__claims c = {.sub = ptr[0], .restricted = e->restricted};
    if (e->nroles > 0) {
        c.roles = ptr + 1;
        c.nroles = e->nroles;
    }
    if (e->restricted) {
        /* A restricted credential always has a list, even an empty one: the block's end then. */
        c.tenants = ptr + 1 + e->nroles;
        c.ntenants = e->ntenants;
    }
    *pc = c;
    return 0;
}

int auth__jwt_verify_cached(pins_arena *a, const char *authz, size_t keylen, const char *token,
                            size_t len, const char *secret, size_t secretlen, int64_t now_s,
                            auth__claims *pclaims, const char **pwhy)
{
    cache *c = cache_get();
    if (c == NULL || secretlen == 0 || len > AUTH__MAX_TOKEN || !cache_sync(c, secret, secretlen))
        return auth__jwt_verify(a, token, len, secret, secretlen, now_s, pclaims, pwhy);

    uint64_t h = key_hash(c->seed, authz, keylen);
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
