/* store/sqlite_int.h: the SQLite backend's internals shared inside store/ (store/sqlite.c, its
 * read cache store/cache.c, store.c's backend table) and its counters and hooks for tests and
 * benchmarks. Not part of the backend contract (store/store_int.h): another backend needs
 * nothing from here.
 */
#ifndef PINS_STORE_SQLITE_INT_H
#define PINS_STORE_SQLITE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "store/store_int.h"

/* How long a write waits for another connection's write lock before failing with PINS_ESTORE. */
#define STORE__BUSY_TIMEOUT_MS 5000
/* Group commit (SQLite): a batch is committed once it holds this many writes or this many bytes of
 * copied requests, without waiting for the end of the loop iteration. */
#define STORE__BATCH_MAX_OPS   1024
#define STORE__BATCH_MAX_BYTES (8u << 20)
/* The SQLite backend's read cache: stripes (each with its own lock and buckets), and the bounds
 * of the whole cache, split evenly between stripes. A value whose JSON is longer than
 * STORE__CACHE_VALUE_MAX is never cached. */
#define STORE__CACHE_STRIPES   64
#define STORE__CACHE_ENTRIES   100000
#define STORE__CACHE_BYTES     (256u << 20)
#define STORE__CACHE_VALUE_MAX (256u << 10)

/* The SQLite migrations in ascending version order (generated source). */
extern const store__migration store__sqlite_migrations[];
extern const size_t store__sqlite_migrations_count;

/* Opens the embedded SQLite store in opts->data_dir (store/sqlite.c). Same contract as
 * store_open(). */
int store__sqlite_open(const store_options *opts, store **pstore);

/* ---- the SQLite backend's read cache (store/cache.c) ------------------------------------------
 *
 * A process-wide map (tenant_id, key) -> the pin's current row, safe to use from any thread. It is
 * correct only while one process writes the database and every write of that process reports to
 * it after COMMIT (store__cache_put, _remove, _remove_expired), serialised in commit order by the
 * store's write mutex. Readers call store__cache_get and, on a miss, read SQLite and offer the row
 * with store__cache_fill and the generation the miss returned. */
typedef struct store__cache store__cache;

typedef enum store__cache_result {
    STORE__CACHE_MISS,    /* not cached: read the database */
    STORE__CACHE_HIT,     /* *ppin is the live pin */
    STORE__CACHE_EXPIRED, /* cached but expired at now: absent (the entry was dropped) */
} store__cache_result;

typedef enum store__cache_fill_result {
    STORE__CACHE_FILLED,  /* the row entered the cache */
    STORE__CACHE_STALE,   /* a write reached the stripe since the miss: the row may be old */
    STORE__CACHE_SKIPPED, /* already cached, too large, or out of memory */
} store__cache_fill_result;

/* A new empty cache of at most max_entries entries and about max_bytes bytes (both split evenly
 * between STORE__CACHE_STRIPES stripes; a full stripe evicts arbitrary entries). *pcache is freed
 * with store__cache_free(). Returns 0 or PINS_ENOMEM. */
int store__cache_new(size_t max_entries, size_t max_bytes, store__cache **pcache);
/* Frees the cache and every entry. NULL is allowed. */
void store__cache_free(store__cache *c);
/* Looks (tenant_id, key) up. On a hit at now_us, *ppin gets a copy whose strings and value_pb live
 * in a; on a miss, *pgen gets the stripe's write generation, read before returning, to pass to
 * store__cache_fill. *pres tells which. Returns 0, or PINS_ENOMEM when a is exhausted (then
 * nothing is set). */
int store__cache_get(store__cache *c, const char *tenant_id, const char *key, int64_t now_us,
                     pins_arena *a, store_pin *ppin, store__cache_result *pres, uint64_t *pgen);
/* Caches pin (read from the database after a miss that returned gen) unless a write reached its
 * stripe since then. pin is copied. */
store__cache_fill_result store__cache_fill(store__cache *c, const store_pin *pin, uint64_t gen);
/* After a committed upsert: pin (copied) replaces what the cache holds for its key. When it
 * cannot be cached (too large, out of memory) the old entry is still removed. */
void store__cache_put(store__cache *c, const store_pin *pin);
/* After a committed delete of (tenant_id, key). */
void store__cache_remove(store__cache *c, const char *tenant_id, const char *key);
/* After a committed cleanup or sweep at now_us: removes every entry of tenant_id (NULL: of every
 * tenant) expired at now_us, a superset of the rows deleted, and invalidates pending fills of
 * every stripe. */
void store__cache_remove_expired(store__cache *c, const char *tenant_id, int64_t now_us);
/* The number of entries. */
size_t store__cache_count(store__cache *c);

/* ---- SQLite backend: counters and hooks for tests and benchmarks (not for the service) ------ */

/* What one SQLite session did since it was created (cache_entries: the whole cache, now). */
typedef struct store__sqlite_stats {
    uint64_t write_commits; /* write transactions committed: batches, cleanups, sweeps */
    uint64_t batches;       /* group commits attempted (failed ones included) */
    uint64_t batched_ops;   /* upserts and deletes run in those batches */
    uint64_t cache_hits;    /* gets answered from the cache, SQLite untouched */
    uint64_t cache_misses;  /* gets that read SQLite */
    uint64_t cache_fills;   /* misses whose row entered the cache */
    uint64_t cache_refused; /* fills dropped because a write reached the stripe meanwhile */
    uint64_t cache_entries; /* entries in the process-wide cache */
} store__sqlite_stats;

/* Copies ss's counters into *pstats. Returns 0, or PINS_EINTERNAL when ss is not a SQLite
 * session (then *pstats is untouched). */
int store__sqlite_session_stats(store_session *ss, store__sqlite_stats *pstats);
/* How long ss's writes wait for another connection's lock (default STORE__BUSY_TIMEOUT_MS).
 * Returns 0 or PINS_EINTERNAL (not a SQLite session). */
int store__sqlite_set_busy_timeout(store_session *ss, int timeout_ms);
/* Makes the next write COMMIT on ss fail as if SQLite had answered rc (e.g. SQLITE_IOERR), after
 * every statement of the transaction ran; the transaction is rolled back. Returns 0 or
 * PINS_EINTERNAL (not a SQLite session). */
int store__sqlite_fail_next_commit(store_session *ss, int rc);
/* hook(arg) runs inside every store_pin_get on ss that misses the cache and finds the row, between
 * the SQLite read and the cache fill (NULL: none). It may write through another session. Returns
 * 0 or PINS_EINTERNAL (not a SQLite session). */
int store__sqlite_set_fill_hook(store_session *ss, void (*hook)(void *arg), void *arg);

#endif
