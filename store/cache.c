/* store/cache.c: the process-wide read cache of live pins (the SQLite backend's, and the
 * PostgreSQL backend's that its change feed keeps coherent, store/pg_cache.c).
 *
 * A hash map (tenant_id, key) -> the pin's row, split into STORE_CACHE_STRIPES stripes by the
 * key's hash. Each stripe has its own read-write lock, buckets, bounds and write generation, so
 * that workers reading different keys rarely meet on a lock and two workers reading one hot key
 * share a read lock. The hash is pins_hash_tenant_key (FNV-1a over tenant, a separator and key,
 * mixed): the stripe comes from its high bits, the bucket from its low bits. A stripe's bucket
 * array starts at STORE_CACHE_FIRST_BUCKETS and doubles while the stripe holds more entries than
 * buckets, up to one per entry the stripe may hold: sized for the bound instead (1M entries for
 * the default 256 MiB), the arrays took 8 MiB whatever the cache held, and with 100,000 keys read
 * at random a third of a lookup's time went to the cache miss on a sparse bucket array. An entry is
 * one allocation: the header, then its strings, its JSON value and its packed Struct in one blob,
 * so that a hit copies the blob out with one memcpy.
 *
 * Coherence rests on two rules. Writers (holding the store's write mutex, so they are serialised
 * in commit order; on PostgreSQL the feed thread, in commit order too) replace or remove entries
 * after COMMIT and bump the stripe's generation under its write lock; a replacement older than
 * the cached row (a lower revision) leaves the row. A reader that missed notes the generation under
 * the read lock before it reads SQLite and fills only if the generation is still the same under the
 * write lock, so a row read before a concurrent write can never replace what that write left.
 */
#include "store/cache.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/hash.h"

static_assert((STORE_CACHE_STRIPES & (STORE_CACHE_STRIPES - 1)) == 0,
              "the stripe count must be a power of two");

/* A stripe's buckets at first (a power of two). */
#define STORE_CACHE_FIRST_BUCKETS 64

typedef struct entry {
    struct entry *next; /* bucket chain, or a free list once unlinked */
    uint64_t hash;
    size_t tenant_len;
    size_t key_len;
    size_t size;   /* bytes charged to the stripe */
    store_pin pin; /* strings and value_pb point into blob */
    size_t blob_len;
    unsigned char blob[];
} entry;

typedef struct stripe {
    pthread_rwlock_t lock;
    uint64_t gen; /* bumped by every write that touches the stripe */
    entry **buckets;
    size_t nbuckets; /* a power of two: doubled while count exceeds it, up to max_buckets */
    size_t count;
    size_t bytes;
    size_t evict_at; /* the bucket eviction looks at first */
    char pad[64];    /* keeps neighbouring stripes' locks off one cache line */
} stripe;

struct store_cache {
    size_t max_entries; /* per stripe */
    size_t max_bytes;   /* per stripe */
    size_t max_buckets; /* per stripe, a power of two */
    stripe stripes[STORE_CACHE_STRIPES];
};

static stripe *stripe_of(store_cache *c, uint64_t h)
{
    return &c->stripes[(h >> 40) & (STORE_CACHE_STRIPES - 1)];
}

/* The link pointing at the entry for the key, or at the NULL ending its bucket. Lock held. */
static entry **find(stripe *st, uint64_t h, const char *tenant, size_t tl, const char *key,
                    size_t kl)
{
    entry **link = &st->buckets[h & (st->nbuckets - 1)];
    for (entry *e = *link; e != NULL; link = &e->next, e = e->next) {
        if (e->hash == h && e->tenant_len == tl && e->key_len == kl &&
            memcmp(e->pin.tenant_id, tenant, tl) == 0 && memcmp(e->pin.key, key, kl) == 0)
            return link;
    }
    return link;
}

/* Unlinks *link and pushes it on *pfree. Write lock held. */
static void unlink_entry(stripe *st, entry **link, entry **pfree)
{
    entry *e = *link;
    *link = e->next;
    st->count--;
    st->bytes -= e->size;
    e->next = *pfree;
    *pfree = e;
}

static void free_list(entry *e)
{
    while (e != NULL) {
        entry *next = e->next;
        free(e);
        e = next;
    }
}

/* Makes room for size more bytes and one more entry by unlinking arbitrary entries (the heads of
 * buckets, round robin) onto *pfree. Write lock held. */
static void make_room(store_cache *c, stripe *st, size_t size, entry **pfree)
{
    while (st->count > 0 && (st->count >= c->max_entries || st->bytes + size > c->max_bytes)) {
        size_t b = st->evict_at;
        while (st->buckets[b] == NULL)
            b = (b + 1) & (st->nbuckets - 1);
        unlink_entry(st, &st->buckets[b], pfree);
        st->evict_at = (b + 1) & (st->nbuckets - 1);
    }
}

/* Doubles st's buckets and rehashes its entries; out of memory, the chains just stay longer.
 * Write lock held. */
static void grow(stripe *st)
{
    size_t n = st->nbuckets * 2;
    entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < st->nbuckets; i++) {
        for (entry *e = st->buckets[i], *next; e != NULL; e = next) {
            next = e->next;
            entry **head = &b[e->hash & (n - 1)];
            e->next = *head;
            *head = e;
        }
    }
    free(st->buckets);
    st->buckets = b;
    st->nbuckets = n;
    st->evict_at = 0;
}

/* Links e (not present) into its bucket. Write lock held. */
static void insert(store_cache *c, stripe *st, entry *e, entry **pfree)
{
    make_room(c, st, e->size, pfree);
    if (st->count >= st->nbuckets && st->nbuckets < c->max_buckets)
        grow(st);
    entry **head = &st->buckets[e->hash & (st->nbuckets - 1)];
    e->next = *head;
    *head = e;
    st->count++;
    st->bytes += e->size;
}

static const void *rebase(const void *p, const unsigned char *from, unsigned char *to)
{
    return to + ((const unsigned char *)p - from);
}

/* A new entry holding copies of pin, or NULL when out of memory or the value is too large. */
static entry *entry_new(const store_pin *pin, uint64_t h, size_t tl, size_t kl)
{
    if (pin->value_len > STORE_CACHE_VALUE_MAX)
        return NULL;
    size_t sl = strlen(pin->source);
    size_t pbl = pin->value_pb != NULL ? pin->value_pb_len : 0;
    size_t blob_len = tl + 1 + kl + 1 + sl + 1 + pin->value_len + 1 + pbl;
    entry *e = malloc(sizeof(*e) + blob_len);
    if (e == NULL)
        return NULL;
    e->hash = h;
    e->tenant_len = tl;
    e->key_len = kl;
    e->size = sizeof(*e) + blob_len;
    e->blob_len = blob_len;
    e->pin = *pin;
    unsigned char *p = e->blob;
    const struct {
        const char **field;
        const char *src;
        size_t len;
    } strs[] = {
        {&e->pin.tenant_id, pin->tenant_id, tl},
        {&e->pin.key, pin->key, kl},
        {&e->pin.source, pin->source, sl},
        {&e->pin.value_json, pin->value_json, pin->value_len},
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        memcpy(p, strs[i].src, strs[i].len);
        p[strs[i].len] = '\0';
        *strs[i].field = (const char *)p;
        p += strs[i].len + 1;
    }
    if (pin->value_pb != NULL) {
        if (pbl > 0)
            memcpy(p, pin->value_pb, pbl);
        e->pin.value_pb = p;
    } else {
        e->pin.value_pb = NULL;
        e->pin.value_pb_len = 0;
    }
    return e;
}

int store_cache_new(size_t max_entries, size_t max_bytes, store_cache **pcache)
{
    store_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return PINS_ENOMEM;
    c->max_entries = (max_entries + STORE_CACHE_STRIPES - 1) / STORE_CACHE_STRIPES;
    if (c->max_entries == 0)
        c->max_entries = 1;
    c->max_bytes = max_bytes / STORE_CACHE_STRIPES;
    c->max_buckets = 1;
    while (c->max_buckets < c->max_entries)
        c->max_buckets <<= 1;
    size_t first =
        c->max_buckets < STORE_CACHE_FIRST_BUCKETS ? c->max_buckets : STORE_CACHE_FIRST_BUCKETS;
    size_t ready = 0;
    int err = 0;
    for (; ready < STORE_CACHE_STRIPES; ready++) {
        stripe *st = &c->stripes[ready];
        st->nbuckets = first;
        st->buckets = calloc(first, sizeof(*st->buckets));
        if (st->buckets == NULL) {
            err = PINS_ENOMEM;
            break;
        }
        if (pthread_rwlock_init(&st->lock, NULL) != 0) {
            free(st->buckets);
            err = PINS_ENOMEM;
            break;
        }
    }
    if (err != 0) {
        while (ready-- > 0) {
            pthread_rwlock_destroy(&c->stripes[ready].lock);
            free(c->stripes[ready].buckets);
        }
        free(c);
        return err;
    }
    *pcache = c;
    return 0;
}

void store_cache_free(store_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < STORE_CACHE_STRIPES; i++) {
        stripe *st = &c->stripes[i];
        for (size_t b = 0; b < st->nbuckets; b++)
            free_list(st->buckets[b]);
        free(st->buckets);
        pthread_rwlock_destroy(&st->lock);
    }
    free(c);
}

int store_cache_get(store_cache *c, const char *tenant_id, const char *key, int64_t now_us,
                    pins_arena *a, store_pin *ppin, store_cache_result *pres, uint64_t *pgen)
{
    size_t tl, kl;
    uint64_t h = pins_hash_tenant_key(tenant_id, key, &tl, &kl);
    stripe *st = stripe_of(c, h);
    pthread_rwlock_rdlock(&st->lock);
    entry *e = *find(st, h, tenant_id, tl, key, kl);
    if (e == NULL) {
        *pgen = st->gen;
        pthread_rwlock_unlock(&st->lock);
        *pres = STORE_CACHE_MISS;
        return 0;
    }
    if (e->pin.has_expires && e->pin.expires_us <= now_us) {
        pthread_rwlock_unlock(&st->lock);
        /* Expired at now: absent for this reader. Drop it if it is still there and expired. */
        entry *dead = NULL;
        pthread_rwlock_wrlock(&st->lock);
        entry **link = find(st, h, tenant_id, tl, key, kl);
        if (*link != NULL && (*link)->pin.has_expires && (*link)->pin.expires_us <= now_us)
            unlink_entry(st, link, &dead);
        pthread_rwlock_unlock(&st->lock);
        free_list(dead);
        *pres = STORE_CACHE_EXPIRED;
        return 0;
    }
    unsigned char *blob = pins_arena_alloc(a, e->blob_len);
    if (blob == NULL) {
        pthread_rwlock_unlock(&st->lock);
        return PINS_ENOMEM;
    }
    memcpy(blob, e->blob, e->blob_len);
    store_pin p = e->pin;
    p.tenant_id = rebase(e->pin.tenant_id, e->blob, blob);
    p.key = rebase(e->pin.key, e->blob, blob);
    p.source = rebase(e->pin.source, e->blob, blob);
    p.value_json = rebase(e->pin.value_json, e->blob, blob);
    if (e->pin.value_pb != NULL)
        p.value_pb = rebase(e->pin.value_pb, e->blob, blob);
    pthread_rwlock_unlock(&st->lock);
    *ppin = p;
    *pres = STORE_CACHE_HIT;
    return 0;
}

store_cache_fill_result store_cache_fill(store_cache *c, const store_pin *pin, uint64_t gen)
{
    size_t tl, kl;
    uint64_t h = pins_hash_tenant_key(pin->tenant_id, pin->key, &tl, &kl);
    stripe *st = stripe_of(c, h);
    entry *e = entry_new(pin, h, tl, kl);
    if (e == NULL)
        return STORE_CACHE_SKIPPED;
    entry *dead = NULL;
    store_cache_fill_result res = STORE_CACHE_FILLED;
    pthread_rwlock_wrlock(&st->lock);
    if (st->gen != gen)
        res = STORE_CACHE_STALE;
    else if (*find(st, h, pin->tenant_id, tl, pin->key, kl) != NULL)
        res = STORE_CACHE_SKIPPED; /* another reader filled the same row meanwhile */
    else
        insert(c, st, e, &dead);
    pthread_rwlock_unlock(&st->lock);
    if (res != STORE_CACHE_FILLED)
        free(e);
    free_list(dead);
    return res;
}

void store_cache_put(store_cache *c, const store_pin *pin)
{
    size_t tl, kl;
    uint64_t h = pins_hash_tenant_key(pin->tenant_id, pin->key, &tl, &kl);
    stripe *st = stripe_of(c, h);
    /* NULL (too large, out of memory) still removes the old row below: never leave it stale. */
    entry *e = entry_new(pin, h, tl, kl);
    entry *dead = NULL;
    pthread_rwlock_wrlock(&st->lock);
    st->gen++;
    entry **link = find(st, h, pin->tenant_id, tl, pin->key, kl);
    if (*link != NULL && (*link)->pin.revision > pin->revision) {
        /* A newer row is cached already (a fill from a later snapshot than this change). */
        pthread_rwlock_unlock(&st->lock);
        free(e);
        return;
    }
    if (*link != NULL)
        unlink_entry(st, link, &dead);
    if (e != NULL)
        insert(c, st, e, &dead);
    pthread_rwlock_unlock(&st->lock);
    free_list(dead);
}

void store_cache_remove(store_cache *c, const char *tenant_id, const char *key)
{
    size_t tl, kl;
    uint64_t h = pins_hash_tenant_key(tenant_id, key, &tl, &kl);
    stripe *st = stripe_of(c, h);
    entry *dead = NULL;
    pthread_rwlock_wrlock(&st->lock);
    st->gen++;
    entry **link = find(st, h, tenant_id, tl, key, kl);
    if (*link != NULL)
        unlink_entry(st, link, &dead);
    pthread_rwlock_unlock(&st->lock);
    free_list(dead);
}

/* Removes from every stripe the entries of tenant_id (NULL: of every tenant) expired at now_us,
 * or every entry when all, and bumps every stripe's generation. */
static void remove_where(store_cache *c, const char *tenant_id, int64_t now_us, bool all)
{
    size_t tl = tenant_id != NULL ? strlen(tenant_id) : 0;
    for (size_t i = 0; i < STORE_CACHE_STRIPES; i++) {
        stripe *st = &c->stripes[i];
        entry *dead = NULL;
        pthread_rwlock_wrlock(&st->lock);
        st->gen++;
        for (size_t b = 0; b < st->nbuckets && st->count > 0; b++) {
            entry **link = &st->buckets[b];
            while (*link != NULL) {
                const entry *e = *link;
                bool match =
                    all || (e->pin.has_expires && e->pin.expires_us <= now_us &&
                            (tenant_id == NULL || (e->tenant_len == tl &&
                                                   memcmp(e->pin.tenant_id, tenant_id, tl) == 0)));
                if (match)
                    unlink_entry(st, link, &dead);
                else
                    link = &(*link)->next;
            }
        }
        pthread_rwlock_unlock(&st->lock);
        free_list(dead);
    }
}

void store_cache_remove_expired(store_cache *c, const char *tenant_id, int64_t now_us)
{
    remove_where(c, tenant_id, now_us, false);
}

bool store_cache_probe(store_cache *c, const char *tenant_id, const char *key, uint64_t *pgen)
{
    size_t tl, kl;
    uint64_t h = pins_hash_tenant_key(tenant_id, key, &tl, &kl);
    stripe *st = stripe_of(c, h);
    pthread_rwlock_rdlock(&st->lock);
    bool present = *find(st, h, tenant_id, tl, key, kl) != NULL;
    *pgen = st->gen;
    pthread_rwlock_unlock(&st->lock);
    return present;
}

void store_cache_clear(store_cache *c)
{
    remove_where(c, NULL, 0, true);
}

size_t store_cache_count(store_cache *c)
{
    size_t n = 0;
    for (size_t i = 0; i < STORE_CACHE_STRIPES; i++) {
        pthread_rwlock_rdlock(&c->stripes[i].lock);
        n += c->stripes[i].count;
        pthread_rwlock_unlock(&c->stripes[i].lock);
    }
    return n;
}
