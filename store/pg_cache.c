/* store/pg_cache.c: the PostgreSQL backend's read cache and its read index (store/pg_int.h;
 * store/README.md, "The PostgreSQL read cache").
 *
 * The cache is store/cache.c's map of live pins, kept by the change feed's thread: every change
 * the feed receives (in commit order) replaces or removes its key before the change goes on to
 * the watchers, and then raises its tenant's applied revision, the highest revision of the tenant
 * whose changes have all reached the cache. A GetPin batch reads, in the same statement as the
 * keys it does not take from the cache, the current revision of each of its tenants (the read
 * index); a call is answered from the cache only when its tenant's applied revision has reached
 * that revision. The statement ran after the call started, so every write acknowledged before the
 * call has a revision at most the one read, and the cache holds it (or something newer).
 *
 * Why the cache holds every change up to the applied revision. A tenant's changes commit in
 * revision order (its revision row is locked until commit) and PostgreSQL delivers notifications
 * in commit order, so when the feed has applied revision R of a tenant, it has applied every
 * earlier change that committed after LISTEN. Changes that committed before LISTEN are not in the
 * cache at all: the cache is emptied after LISTEN (store__pg_rcache_reset), and a row read from
 * the database enters it only if no change reached its stripe since the reader looked it up
 * (store/cache.c, the generation), from a snapshot taken after that look-up. A tenant no change
 * reached since LISTEN gets its applied revision from the list of all revisions read after
 * LISTEN (store__pg_rcache_sync_rows), which counts only once the feed received the notification
 * it sent after reading that list (the barrier): every change the list includes committed before
 * the barrier, so it was applied before it.
 *
 * The feed down (its connection lost, a notification it could not read) makes the cache unusable
 * and empty until the feed is listening again and its barrier came back: reads then go to the
 * database. Tenants are bounded (RCACHE_TENANTS_MAX); a tenant without an applied revision is
 * read from the database, as before the cache.
 */
#include "store/pg_int.h"

#include <pthread.h>
#include <string.h>

#include "common/error.h"
#include "common/hash.h"
#include "observability/log.h"
#include "store/cache.h"

#define RCACHE_BUCKETS 65536 /* tenant map buckets (a power of two) */

typedef struct tenant_rev {
    struct tenant_rev *next;
    uint64_t hash;
    int64_t applied;
    size_t len;
    char tenant[];
} tenant_rev;

struct pg_rcache {
    store_cache *cache;
    atomic_bool ready;     /* synced: the cache and the applied revisions may be used */
    atomic_bool resync;    /* a session asked the feed to start the cache over */
    pthread_rwlock_t lock; /* the tenant map */
    tenant_rev **buckets;  /* RCACHE_BUCKETS chains */
    size_t ntenants;       /* at most RCACHE_TENANTS_MAX */
    pins_arena *scratch;   /* feed thread: store__pack_value's */
    pins_arena *packed;    /* feed thread: the packed value of the change being applied */
};

int store__pg_rcache_new(size_t bytes, pg_rcache **prc)
{
    pg_rcache *rc = calloc(1, sizeof(*rc));
    if (rc == NULL)
        return PINS_ENOMEM;
    atomic_init(&rc->ready, false);
    atomic_init(&rc->resync, false);
    rc->buckets = calloc(RCACHE_BUCKETS, sizeof(*rc->buckets));
    rc->scratch = pins_arena_new(0);
    rc->packed = pins_arena_new(0);
    int err = rc->buckets == NULL || rc->scratch == NULL || rc->packed == NULL
                  ? PINS_ENOMEM
                  : store_cache_new(bytes / STORE_CACHE_ENTRY_MIN, bytes, &rc->cache);
    if (err == 0 && pthread_rwlock_init(&rc->lock, NULL) != 0) {
        store_cache_free(rc->cache);
        err = PINS_ENOMEM;
    }
    if (err != 0) {
        free(rc->buckets);
        pins_arena_free(rc->scratch);
        pins_arena_free(rc->packed);
        free(rc);
        return err;
    }
    *prc = rc;
    return 0;
}

/* Empties the tenant map. Write lock held. */
static void map_clear(pg_rcache *rc)
{
    for (size_t b = 0; b < RCACHE_BUCKETS; b++) {
        for (tenant_rev *t = rc->buckets[b], *next; t != NULL; t = next) {
            next = t->next;
            free(t);
        }
        rc->buckets[b] = NULL;
    }
    rc->ntenants = 0;
}

void store__pg_rcache_free(pg_rcache *rc)
{
    if (rc == NULL)
        return;
    map_clear(rc);
    free(rc->buckets);
    pthread_rwlock_destroy(&rc->lock);
    store_cache_free(rc->cache);
    pins_arena_free(rc->scratch);
    pins_arena_free(rc->packed);
    free(rc);
}

store_cache *store__pg_rcache_cache(pg_rcache *rc)
{
    return rc->cache;
}

/* The map's entry of tenant (len bytes, hash h), or NULL. Lock held. */
static tenant_rev *map_find(pg_rcache *rc, uint64_t h, const char *tenant, size_t len)
{
    for (tenant_rev *t = rc->buckets[h & (RCACHE_BUCKETS - 1)]; t != NULL; t = t->next) {
        if (t->hash == h && t->len == len && memcmp(t->tenant, tenant, len) == 0)
            return t;
    }
    return NULL;
}

/* Raises tenant's applied revision to at least rev; a tenant not in the map is added while there
 * is room when add, else left out. */
static void map_raise(pg_rcache *rc, const char *tenant, size_t len, int64_t rev, bool add)
{
    uint64_t h = pins_hash_tenant_key(tenant, "", NULL, NULL);
    pthread_rwlock_wrlock(&rc->lock);
    tenant_rev *t = map_find(rc, h, tenant, len);
    if (t == NULL && add && rc->ntenants < RCACHE_TENANTS_MAX) {
        t = malloc(sizeof(*t) + len + 1);
        if (t != NULL) {
            t->hash = h;
            t->len = len;
            t->applied = rev;
            memcpy(t->tenant, tenant, len);
            t->tenant[len] = '\0';
            tenant_rev **head = &rc->buckets[h & (RCACHE_BUCKETS - 1)];
            t->next = *head;
            *head = t;
            rc->ntenants++;
        }
    } else if (t != NULL && t->applied < rev) {
        t->applied = rev;
    }
    pthread_rwlock_unlock(&rc->lock);
}

void store__pg_rcache_apply(pg_rcache *rc, store_change *ch)
{
    store_pin *pin = &ch->pin;
    if (ch->type == STORE_CHANGE_PUT) {
        pins_arena_reset(rc->packed);
        if (pin->value_pb == NULL &&
            store__pack_value(rc->scratch, rc->packed, pin->value_json, pin->value_len,
                              &pin->value_pb, &pin->value_pb_len) != 0) {
            pin->value_pb = NULL;
            pin->value_pb_len = 0;
        }
        store_cache_put(rc->cache, pin);
    } else {
        store_cache_remove(rc->cache, pin->tenant_id, pin->key);
    }
    map_raise(rc, pin->tenant_id, strlen(pin->tenant_id), pin->revision, true);
}

void store__pg_rcache_skip(pg_rcache *rc, const char *tenant, int64_t rev)
{
    /* A tenant without an applied revision stays without: it may have changes the feed missed
     * before a reset. */
    map_raise(rc, tenant, strlen(tenant), rev, false);
}

void store__pg_rcache_invalidate(pg_rcache *rc)
{
    atomic_store(&rc->ready, false);
    atomic_store(&rc->resync, true);
}

bool store__pg_rcache_take_resync(pg_rcache *rc)
{
    return atomic_exchange(&rc->resync, false);
}

void store__pg_rcache_reset(pg_rcache *rc)
{
    atomic_store(&rc->ready, false);
    pthread_rwlock_wrlock(&rc->lock);
    map_clear(rc);
    pthread_rwlock_unlock(&rc->lock);
    store_cache_clear(rc->cache);
}

void store__pg_rcache_sync_rows(pg_rcache *rc, const PGresult *res)
{
    for (int i = 0; i < PQntuples(res); i++)
        map_raise(rc, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                  store__pg_col_i64(res, i, 1), true);
    atomic_store(&rc->ready, true);
}

bool store__pg_rcache_ready(pg_rcache *rc)
{
    return rc != NULL && atomic_load(&rc->ready);
}

/* Whether tenant has an applied revision, into *papplied. */
static bool applied_of(pg_rcache *rc, const char *tenant, int64_t *papplied)
{
    size_t len = strlen(tenant);
    uint64_t h = pins_hash_tenant_key(tenant, "", NULL, NULL);
    pthread_rwlock_rdlock(&rc->lock);
    const tenant_rev *t = map_find(rc, h, tenant, len);
    if (t != NULL)
        *papplied = t->applied;
    pthread_rwlock_unlock(&rc->lock);
    return t != NULL;
}

bool store__pg_rcache_covers(pg_rcache *rc, const char *tenant, int64_t rev)
{
    if (!atomic_load(&rc->ready))
        return false;
    if (rev <= 0)
        return true; /* the tenant never changed: the cache holds only rows read since LISTEN */
    int64_t applied;
    return applied_of(rc, tenant, &applied) && applied >= rev && atomic_load(&rc->ready);
}

bool store__pg_rcache_known(pg_rcache *rc, const char *tenant)
{
    int64_t applied;
    return applied_of(rc, tenant, &applied);
}
