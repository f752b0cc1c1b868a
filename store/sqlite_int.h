/* store/sqlite_int.h: the SQLite backend's internals shared inside store/ (store/sqlite.c,
 * store.c's backend table). Its read cache (store/cache.h) and its
 * counters and hooks for tests and benchmarks (store/sqlite.h) have headers of their own. Not part
 * of the backend contract (store/store_int.h): another backend needs nothing from here.
 */
#ifndef PINS_STORE_SQLITE_INT_H
#define PINS_STORE_SQLITE_INT_H

#include <pthread.h>
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

/* The WAL checkpointer (store/sqlite_ckpt.c): a thread per store that checkpoints the WAL
 * (PASSIVE) on a connection of its own, so that no commit of a session runs a checkpoint. A
 * commit that leaves STORE__CKPT_FRAMES frames in the WAL wakes it; it also runs every
 * STORE__CKPT_INTERVAL_MS while frames were written since its last run. */
#define STORE__CKPT_FRAMES      1000
#define STORE__CKPT_INTERVAL_MS 1000
/* A run whose unlocked passes leave the WAL at least this long (64 MiB of 4 KiB pages) copies
 * the rest under the store's write mutex, so that the next writer rewinds the WAL. */
#define STORE__CKPT_LOCKED_FRAMES STORE_SQLITE_CKPT_LOCKED_FRAMES
/* ... and only when the rest to copy is at most this many frames (16 MiB). */
#define STORE__CKPT_LOCKED_REST 4000
/* A run whose unlocked passes leave at most this many frames (1 MiB) copies them under the write
 * mutex whatever the WAL's size, so that the WAL is rewound. */
#define STORE__CKPT_LOCKED_SMALL 256
/* The backstop: a commit that leaves the WAL this long (96 MiB) runs a PASSIVE checkpoint itself,
 * on its own thread, because the checkpointer's thread has not kept up (a machine too busy to
 * schedule it). Never reached while the checkpointer runs. */
#define STORE__CKPT_BACKSTOP_FRAMES (STORE__CKPT_LOCKED_FRAMES + STORE__CKPT_LOCKED_FRAMES / 2)

typedef struct store__ckpt store__ckpt;
struct sqlite3;

/* Opens the checkpointer's connection to the database at path (already in WAL mode) and starts
 * its thread, which holds write_lock (the store's write mutex, borrowed) for the last part of
 * each checkpoint. Returns 0, PINS_ENOMEM or PINS_ESTORE. */
int store__ckpt_start(const char *path, pthread_mutex_t *write_lock, store__ckpt **pc);
/* Stops the thread (a checkpoint in progress completes first), closes its connection, frees c.
 * NULL is allowed. Call it after every session that it was attached to is closed. */
void store__ckpt_stop(store__ckpt *c);
/* Makes the session connection db report its commits to c instead of checkpointing itself. No-op
 * when c is NULL (db keeps SQLite's automatic checkpoints). */
void store__ckpt_attach(store__ckpt *c, struct sqlite3 *db);
/* Checkpoints c has run (tests). */
uint64_t store__ckpt_runs(store__ckpt *c);

/* The SQLite migrations in ascending version order (generated source). */
extern const store__migration store__sqlite_migrations[];
extern const size_t store__sqlite_migrations_count;

/* Opens the embedded SQLite store in opts->data_dir (store/sqlite.c). Same contract as
 * store_open(). */
int store__sqlite_open(const store_options *opts, store **pstore);

#endif
