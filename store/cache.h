/* store/cache.h: the stores' read cache, a component of its own: store/sqlite.c and
 * store/pg_cache.c use it, tests/unit/store/test_cache.c drives it alone. Nothing above store/
 * has a use for it.
 */
#ifndef PINS_STORE_CACHE_H
#define PINS_STORE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "store/store.h"

/* The SQLite backend's read cache: stripes (each with its own lock and buckets), and the default
 * bound of the whole cache in bytes (PINS_CACHE_MAX_BYTES), split evenly between stripes. The
 * store bounds the entries at one per STORE_CACHE_ENTRY_MIN bytes (an entry's fixed part and short
 * strings take about that), so the bytes are what limits the cache: 256 MiB holds the 100,000
 * pins of 200-byte values of a realistic benchmark with room to spare. A value whose JSON is
 * longer than STORE_CACHE_VALUE_MAX is never cached. */
#define STORE_CACHE_STRIPES   64
#define STORE_CACHE_BYTES     (256u << 20)
#define STORE_CACHE_ENTRY_MIN 256
#define STORE_CACHE_VALUE_MAX (256u << 10)

/*
 * A process-wide map (tenant_id, key) -> the pin's current row (every store_pin field, revision
 * included), safe to use from any thread. It is
 * correct only while one process writes the database and every write of that process reports to
 * it after COMMIT (store_cache_put, _remove, _remove_expired), serialised in commit order by the
 * store's write mutex. Readers call store_cache_get and, on a miss, read SQLite and offer the row
 * with store_cache_fill and the generation the miss returned. */
typedef struct store_cache store_cache;

typedef enum store_cache_result {
    STORE_CACHE_MISS,    /* not cached: read the database */
    STORE_CACHE_HIT,     /* *ppin is the live pin */
    STORE_CACHE_EXPIRED, /* cached but expired at now: absent (the entry was dropped) */
} store_cache_result;

typedef enum store_cache_fill_result {
    STORE_CACHE_FILLED,  /* the row entered the cache */
    STORE_CACHE_STALE,   /* a write reached the stripe since the miss: the row may be old */
    STORE_CACHE_SKIPPED, /* already cached, too large, or out of memory */
} store_cache_fill_result;

/* A new empty cache of at most max_entries entries and about max_bytes bytes (both split evenly
 * between STORE_CACHE_STRIPES stripes; a full stripe evicts arbitrary entries). *pcache is freed
 * with store_cache_free(). Returns 0 or PINS_ENOMEM. */
int store_cache_new(size_t max_entries, size_t max_bytes, store_cache **pcache);
/* Frees the cache and every entry. NULL is allowed. */
void store_cache_free(store_cache *c);
/* Looks (tenant_id, key) up. On a hit at now_us, *ppin gets a copy whose strings and value_pb live
 * in a; on a miss, *pgen gets the stripe's write generation, read before returning, to pass to
 * store_cache_fill. *pres tells which. Returns 0, or PINS_ENOMEM when a is exhausted (then
 * nothing is set). */
int store_cache_get(store_cache *c, const char *tenant_id, const char *key, int64_t now_us,
                    pins_arena *a, store_pin *ppin, store_cache_result *pres, uint64_t *pgen);
/* Caches pin (read from the database after a miss that returned gen) unless a write reached its
 * stripe since then. pin is copied. */
store_cache_fill_result store_cache_fill(store_cache *c, const store_pin *pin, uint64_t gen);
/* After a committed upsert: pin (copied) replaces what the cache holds for its key, unless that
 * has a higher revision (read from a later snapshot). When it cannot be cached (too large, out
 * of memory) the old entry is still removed. */
void store_cache_put(store_cache *c, const store_pin *pin);
/* After a committed delete of (tenant_id, key). */
void store_cache_remove(store_cache *c, const char *tenant_id, const char *key);
/* After a committed cleanup or sweep at now_us: removes every entry of tenant_id (NULL: of every
 * tenant) expired at now_us, a superset of the rows deleted, and invalidates pending fills of
 * every stripe. */
void store_cache_remove_expired(store_cache *c, const char *tenant_id, int64_t now_us);
/* Whether (tenant_id, key) has an entry, expired or not; *pgen gets the stripe's write
 * generation either way, for a store_cache_fill of a row read after this call. */
bool store_cache_probe(store_cache *c, const char *tenant_id, const char *key, uint64_t *pgen);
/* Removes every entry and invalidates every pending fill. */
void store_cache_clear(store_cache *c);
/* The number of entries. */
size_t store_cache_count(store_cache *c);

#endif
