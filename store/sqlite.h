/* store/sqlite.h: the SQLite backend's counters and hooks, for tests and benchmarks (never called
 * by the service): tests/unit/store/test_sqlite.c, tests/unit/rpc/test_audit.c,
 * tools/bench/store_bench.c.
 */
#ifndef PINS_STORE_SQLITE_H
#define PINS_STORE_SQLITE_H

#include <stdint.h>

#include "store/store.h"

/* Group commit: a batch is committed once it holds this many writes (or STORE__BATCH_MAX_BYTES of
 * copied requests, store/sqlite_int.h). */
#define STORE_SQLITE_BATCH_MAX_OPS 1024

/* The WAL checkpointer (store/sqlite_ckpt.c) copies the rest of the WAL under the write mutex
 * once its unlocked passes leave it this long (frames of 4 KiB: 64 MiB), so the WAL stays
 * within about twice this under a steady stream of commits. */
#define STORE_SQLITE_CKPT_LOCKED_FRAMES 16000

/* What one SQLite session did since it was created (cache_entries: the whole cache, now). */
typedef struct store_sqlite_stats {
    uint64_t write_commits; /* write transactions committed: batches, cleanups, sweeps */
    uint64_t batches;       /* group commits attempted (failed ones included) */
    uint64_t batched_ops;   /* upserts and deletes run in those batches */
    uint64_t cache_hits;    /* gets answered from the cache, SQLite untouched */
    uint64_t cache_misses;  /* gets that read SQLite */
    uint64_t cache_fills;   /* misses whose row entered the cache */
    uint64_t cache_refused; /* fills dropped because a write reached the stripe meanwhile */
    uint64_t cache_entries; /* entries in the process-wide cache */
    uint64_t checkpoints;   /* WAL checkpoints the store's checkpointer ran (process-wide) */
} store_sqlite_stats;

/* Copies ss's counters into *pstats. Returns 0, or PINS_EINTERNAL when ss is not a SQLite
 * session (then *pstats is untouched). */
int store_sqlite_session_stats(store_session *ss, store_sqlite_stats *pstats);
/* How long ss's writes wait for another connection's lock (default STORE__BUSY_TIMEOUT_MS).
 * Returns 0 or PINS_EINTERNAL (not a SQLite session). */
int store_sqlite_set_busy_timeout(store_session *ss, int timeout_ms);
/* Makes the next write COMMIT on ss fail as if SQLite had answered rc (e.g. SQLITE_IOERR), after
 * every statement of the transaction ran; the transaction is rolled back. Returns 0 or
 * PINS_EINTERNAL (not a SQLite session). */
int store_sqlite_fail_next_commit(store_session *ss, int rc);
/* hook(arg) runs inside every store_pin_get on ss that misses the cache and finds the row, between
 * the SQLite read and the cache fill (NULL: none). It may write through another session. Returns
 * 0 or PINS_EINTERNAL (not a SQLite session). */
int store_sqlite_set_fill_hook(store_session *ss, void (*hook)(void *arg), void *arg);
/* The SQL that reverts embedded migration `version` (store/migrations/sqlite/NNN_*.down.sql), or
 * NULL when the binary has none: tests rebuild an older database with it. */
const char *store_sqlite_migration_down(int version);

#endif
