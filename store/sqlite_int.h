/* store/sqlite_int.h: the SQLite backend's internals shared inside store/ (store/sqlite.c, its
 * read cache store/cache.c, store.c's backend table). Its read cache (store/cache.h) and its
 * counters and hooks for tests and benchmarks (store/sqlite.h) have headers of their own. Not part
 * of the backend contract (store/store_int.h): another backend needs nothing from here.
 */
#ifndef PINS_STORE_SQLITE_INT_H
#define PINS_STORE_SQLITE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "store/cache.h"
#include "store/sqlite.h"
#include "store/store_int.h"

/* How long a write waits for another connection's write lock before failing with PINS_ESTORE. */
#define STORE__BUSY_TIMEOUT_MS 5000
/* How long background maintenance (the sweeper, the audit retention) waits in all for the write
 * mutex and another process's lock: it blocks its worker's loop while it waits, and runs again
 * next tick. Long enough for this process's writers (milliseconds) and most checkpoints. */
#define STORE__BACKGROUND_BUSY_MS 250
/* Group commit (SQLite): a batch is committed once it holds STORE_SQLITE_BATCH_MAX_OPS writes or
 * this many bytes of copied requests, without waiting for the end of the loop iteration. */
#define STORE__BATCH_MAX_BYTES (8u << 20)

/* The SQLite migrations in ascending version order (generated source). */
extern const store__migration store__sqlite_migrations[];
extern const size_t store__sqlite_migrations_count;

/* Opens the embedded SQLite store in opts->data_dir (store/sqlite.c). Same contract as
 * store_open(). */
int store__sqlite_open(const store_options *opts, store **pstore);

#endif
