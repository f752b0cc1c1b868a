/* store/store_int.h: the backend interface behind store.h. Included only inside store/.
 *
 * A backend is a table of functions (store__backend) plus two structs that start with the common
 * heads below: a backend's store struct begins with `struct store` and its session struct with
 * `struct store_session`, so that store.c can dispatch through `->be` and the backend can cast
 * back to its own type. store.c checks the arguments every backend would check (NULL pointers,
 * limits) and clears the session's last error before dispatching, so a backend function may assume
 * a well-formed request.
 *
 * Contract of every operation function: the same as the public function of the same name in
 * store.h. Return 0 when cb will be called exactly once (possibly before returning), or a negative
 * PINS_E* code without calling it. Failures of the database itself are delivered to cb as
 * PINS_ESTORE, PINS_ENOMEM or PINS_EINTERNAL, after the backend recorded the detail with
 * store__session_error(). Callbacks must be called with no transaction open and no statement in
 * progress, so that a callback may start another operation on the same session.
 */
#ifndef PINS_STORE_STORE_INT_H
#define PINS_STORE_STORE_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "store/store.h"

/* Bytes kept of a session's last error detail, NUL included; longer details are truncated. */
#define STORE__ERROR_MAX 320
/* Largest page store_pin_list and store_audit_list accept (API.md section 4). */
#define STORE__LIST_MAX 1000
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

/* store_pin_get's arguments as one request, so that every operation takes (session, request). */
typedef struct store__get_req {
    const char *tenant_id;
    const char *key;
    int64_t now_us;
} store__get_req;

/* store_pin_cleanup's arguments; tenant_id NULL means every tenant. */
typedef struct store__cleanup_req {
    const char *tenant_id;
    int64_t now_us;
} store__cleanup_req;

/* store_pin_sweep's arguments; batch >= 1. */
typedef struct store__sweep_req {
    int64_t now_us;
    int batch;
} store__sweep_req;

/* store_audit_expire's arguments; table checked, batch >= 1. */
typedef struct store__expire_req {
    store_audit_table table;
    int64_t before_us;
    int batch;
} store__expire_req;

/* One backend. Every member is required. */
typedef struct store__backend {
    const char *name; /* "sqlite", "postgres": what store_backend_name() returns */
    /* Frees the backend's store (sessions are already freed). */
    void (*close)(store *s);
    /* A new session for the calling thread; *pss is freed by session_free. Returns 0,
     * PINS_ESTORE, PINS_ENOMEM. */
    int (*session_new)(store *s, struct event_base *base, store_session **pss);
    void (*session_free)(store_session *ss);
    int (*pin_upsert)(store_session *ss, const store_upsert_req *req, store_pin_cb cb, void *arg);
    int (*pin_get)(store_session *ss, const store__get_req *req, store_pin_cb cb, void *arg);
    int (*pin_list)(store_session *ss, const store_list_req *req, store_list_cb cb, void *arg);
    int (*pin_delete)(store_session *ss, const store_delete_req *req, store_pin_cb cb, void *arg);
    int (*pin_cleanup)(store_session *ss, const store__cleanup_req *req, store_count_cb cb,
                       void *arg);
    int (*pin_sweep)(store_session *ss, const store__sweep_req *req, store_count_cb cb, void *arg);
    int (*audit_list)(store_session *ss, const store_audit_list_req *req, store_audit_list_cb cb,
                      void *arg);
    int (*ping)(store_session *ss, store_count_cb cb, void *arg);
    int (*memory_audit_write)(store_session *ss, const store_memory_audit *rows, size_t n,
                              store_count_cb cb, void *arg);
    int (*rbac_audit_write)(store_session *ss, const store_rbac_audit *rows, size_t n,
                            store_count_cb cb, void *arg);
    int (*rbac_audit_list)(store_session *ss, const store_rbac_audit_list_req *req,
                           store_rbac_audit_list_cb cb, void *arg);
    int (*rbac_audit_cleanup)(store_session *ss, int64_t before_us, store_count_cb cb, void *arg);
    int (*audit_expire)(store_session *ss, const store__expire_req *req, store_count_cb cb,
                        void *arg);
} store__backend;

/* The head of every backend's store. */
struct store {
    const store__backend *be;
};

/* The head of every backend's session. */
struct store_session {
    const store__backend *be;
    store *store;
    char last_error[STORE__ERROR_MAX]; /* "" or the detail of the last failed operation */
    int64_t deadline_ns; /* store_session_set_deadline: 0 or the monotonic deadline of new calls */
};

/* Records the detail of a failure on ss, printf style, replacing the previous one. The text is
 * for the log (it may contain database text), never for the client. */
void store__session_error(store_session *ss, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A growable byte buffer for building JSON texts. A failed allocation sets failed and makes every
 * later append a no-op; the text is NUL-terminated while !failed. */
typedef struct store__buf {
    char *p; /* malloc'd, freed with store__buf_free() */
    size_t len;
    size_t cap;
    bool failed;
} store__buf;

/* Appends s[0..n). */
void store__buf_put(store__buf *b, const char *s, size_t n);
/* Appends s as a JSON string ("null" for NULL); bytes that are not valid UTF-8 become U+FFFD, so
 * the text is always valid JSON. */
void store__buf_json_str(store__buf *b, const char *s);
/* Appends a JSON array of the n strings. */
void store__buf_json_strs(store__buf *b, const char *const *s, size_t n);
void store__buf_free(store__buf *b);
/* value_json[0..len) packed as a google.protobuf.Struct into dst; the Struct itself is built in
 * scratch, which is reset afterwards. Returns 0 and sets *ppb and *plen; PINS_EINVALID_ARGUMENT
 * when pbstruct cannot read the value as an object; PINS_ENOMEM. Callers treat a failure as "no
 * packed value": store_pin.value_pb is an optimisation. */
int store__pack_value(pins_arena *scratch, pins_arena *dst, const char *json, size_t len,
                      const uint8_t **ppb, size_t *plen);
/* Splits text (roles joined with U+001F, as both backends list them) into a NULL-free array in a:
 * *pout gets the parts, *pn their number (0 for NULL or ""). Returns 0 or PINS_ENOMEM. */
int store__split_roles(pins_arena *a, const char *text, const char *const **pout, size_t *pn);

/* One embedded migration: store/migrations/<backend>/NNN_name.up.sql and its .down.sql, compiled
 * in by store/migrations/embed.cmake. Texts are NUL-terminated; lengths exclude the NUL. */
typedef struct store__migration {
    int version;      /* NNN */
    const char *name; /* "NNN_name" */
    const char *up;
    size_t up_len;
    const char *down; /* NULL when the folder has no .down.sql for this version */
    size_t down_len;
} store__migration;

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

/* ---- event-loop glue (store/loop.c, the only store file that knows libevent) ----------------- */

typedef struct store__defer store__defer;

/* A deferred call of fn(arg) on base's loop. *pdefer is freed with store__defer_free(). Returns 0
 * or PINS_ENOMEM. */
int store__defer_new(struct event_base *base, void (*fn)(void *arg), void *arg,
                     store__defer **pdefer);
/* Schedules one call of fn in the current loop iteration, after the callbacks already ready (a
 * second arm before the call is a no-op). Call it on the loop's thread. */
void store__defer_arm(store__defer *d);
/* Cancels a scheduled call and frees d. NULL is allowed. */
void store__defer_free(store__defer *d);

/* ---- PostgreSQL event-loop glue (store/pg_loop.c) -------------------------------------------- */

typedef struct store__io store__io;
typedef struct store__timer store__timer;

/* A watcher of one socket on base's loop calling fn(arg, readable, writable); inactive until
 * store__io_set gives it a socket. *pio is freed with store__io_free(). Returns 0 or PINS_ENOMEM.
 */
int store__io_new(struct event_base *base, void (*fn)(void *arg, bool readable, bool writable),
                  void *arg, store__io **pio);
/* Watches fd for the directions asked (fd < 0 or neither: stops watching). Returns 0 or
 * PINS_ENOMEM. */
int store__io_set(store__io *io, int fd, bool want_read, bool want_write);
/* Stops watching and frees io. NULL is allowed. */
void store__io_free(store__io *io);
/* A one-shot timer calling fn(arg) on base's loop. Returns 0 or PINS_ENOMEM. */
int store__timer_new(struct event_base *base, void (*fn)(void *arg), void *arg,
                     store__timer **ptimer);
/* Arms t to fire in ms milliseconds unless it is already armed. */
void store__timer_arm(store__timer *t, int64_t ms);
/* Cancels and frees t. NULL is allowed. */
void store__timer_free(store__timer *t);

/* ---- the PostgreSQL backend (store/postgres.c, store/migrate.c) ------------------------------ */

/* The PostgreSQL migrations in ascending version order (generated source). */
extern const store__migration store__postgres_migrations[];
extern const size_t store__postgres_migrations_count;

/* Opens the PostgreSQL store for opts->database_url without connecting (sessions connect, and
 * reconnect, by themselves). Returns 0, PINS_ESTORE (unparsable URL), PINS_ENOMEM. */
int store__postgres_open(const store_options *opts, store **pstore);

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
