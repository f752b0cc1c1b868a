/* store/store_int.h: the backend contract behind store.h: what every backend implements (the
 * store__backend table, the heads of its store and session) and the helpers backends share
 * (last-error detail, JSON strings into a pins_buf, value packing, event-loop glue, migration
 * rows).
 * Included only inside store/. A backend's own internals live in its own header
 * (store/sqlite_int.h, store/pg_int.h), included by its files and by store.c's backend table.
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
#include "common/buf.h"
#include "observability/metrics.h"
#include "store/store.h"

/* Bytes kept of a session's last error detail, NUL included; longer details are truncated. */
#define STORE__ERROR_MAX 320
/* Largest page store_pin_list and store_audit_list accept (API.md section 4). */
#define STORE__LIST_MAX 1000
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

/* store_changes_since's arguments; limit 1..STORE_CHANGES_MAX, after >= 0. */
typedef struct store__changes_req {
    const char *tenant_id;
    const char *prefix; /* "" for all */
    int64_t after;
    int limit;
} store__changes_req;

/* store_history_expire's arguments; batch >= 1, max_rows <= 0: no count bound. */
typedef struct store__history_req {
    int64_t before_us;
    int64_t max_rows;
    int batch;
} store__history_req;

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
    int (*feed_start)(store *s, store_change_fn fn, store_feed_state_fn state, void *arg);
    void (*feed_stop)(store *s);
    bool (*feed_live)(const store *s);
    int (*changes_since)(store_session *ss, const store__changes_req *req, store_changes_cb cb,
                         void *arg);
    int (*history_expire)(store_session *ss, const store__history_req *req, store_count_cb cb,
                          void *arg);
} store__backend;

/* The table of backend `name` whose functions are named <x>_close, <x>_session_new, ...,
 * <x>_audit_expire after its prefix x (store/README.md, "Adding a store backend"). */
#define STORE__BACKEND(x, backend_name)                                                         \
    {                                                                                           \
        .name = backend_name, .close = x##_close, .session_new = x##_session_new,               \
        .session_free = x##_session_free, .pin_upsert = x##_pin_upsert, .pin_get = x##_pin_get, \
        .pin_list = x##_pin_list, .pin_delete = x##_pin_delete, .pin_cleanup = x##_pin_cleanup, \
        .pin_sweep = x##_pin_sweep, .audit_list = x##_audit_list, .ping = x##_ping,             \
        .memory_audit_write = x##_memory_audit_write, .rbac_audit_write = x##_rbac_audit_write, \
        .rbac_audit_list = x##_rbac_audit_list, .rbac_audit_cleanup = x##_rbac_audit_cleanup,   \
        .audit_expire = x##_audit_expire, .feed_start = x##_feed_start,                         \
        .feed_stop = x##_feed_stop, .feed_live = x##_feed_live,                                 \
        .changes_since = x##_changes_since, .history_expire = x##_history_expire,               \
    }

/* The head of every backend's store. */
struct store {
    const store__backend *be;
};

/* The head of every backend's session. */
struct store_session {
    const store__backend *be;
    store *store;
    char last_error[STORE__ERROR_MAX]; /* "" or the detail of the last failed operation */
    /* The last operation failed with PINS_ESTORE because the database's schema is older than
     * this binary needs (store_session_schema_behind); set by the backend with the error. */
    bool schema_behind;
    int64_t deadline_ns; /* store_session_set_deadline: 0 or the monotonic deadline of new calls */
    /* This session's thread's cells of memory_cache_hits_total, memory_cache_misses_total and
     * memory_value_size_bytes, fetched on first use (a session is used by one thread). */
    bool cells_set;
    metrics_cell *read_hit, *read_miss, *value_size;
};

/* Records the detail of a failure on ss, printf style, replacing the previous one. The text is
 * for the log (it may contain database text), never for the client. */
void store__session_error(store_session *ss, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends s to b as a JSON string ("null" for NULL); bytes that are not valid UTF-8 become
 * U+FFFD, so the text is always valid JSON. A failure sticks in pins_buf_error(b). */
void store__json_str(pins_buf *b, const char *s);
/* Appends a JSON array of the n strings, as store__json_str. */
void store__json_strs(pins_buf *b, const char *const *s, size_t n);
/* value_json[0..len) packed as a google.protobuf.Struct into dst; the Struct itself is built in
 * scratch, which is reset afterwards. Returns 0 and sets *ppb and *plen; PINS_EINVALID_ARGUMENT
 * when pbstruct cannot read the value as an object; PINS_ENOMEM. Callers treat a failure as "no
 * packed value": store_pin.value_pb is an optimisation. */
int store__pack_value(pins_arena *scratch, pins_arena *dst, const char *json, size_t len,
                      const uint8_t **ppb, size_t *plen);
/* Splits text (roles joined with U+001F, as both backends list them) into a NULL-free array in a:
 * *pout gets the parts, *pn their number (0 for NULL or ""). Returns 0 or PINS_ENOMEM. */
int store__split_roles(pins_arena *a, const char *text, const char *const **pout, size_t *pn);

/* ---- metrics every backend shares (store/store.c) ------------------------------------------- */

/* The states of store_pool_connections{state}, in the order of its label values. */
typedef enum store__pool_state {
    STORE__POOL_IDLE,
    STORE__POOL_BUSY,
    STORE__POOL_CONNECTING,
    STORE__POOL_DOWN,
    STORE__POOL_STATES
} store__pool_state;

/* Registers the store's families (once per process) and, for the backend named backend, sets
 * store_info{backend} to 1 and creates store_errors_total{kind} at 0 for each of its nkinds error
 * kinds (static strings), so that every series exists before the first failure. Called by each
 * backend's open. */
void store__metrics_open(const char *backend, const char *const *kinds, size_t nkinds);
/* store_errors_total{kind} += 1. */
void store__count_error(const char *kind);
/* Moves one connection of store_pool_connections from state from to state to; -1 for from is
 * a new connection, -1 for to a closed one. Any thread. */
void store__pool_move(int from, int to);
/* store_schema_behind: the database's schema is older than this binary needs (PostgreSQL's schema
 * check); false once a connection passed the check. */
void store__schema_behind_set(bool behind);
/* One single-pin read of ss: answered by the read cache (hit) or by the database (miss).
 * memory_cache_hits_total or memory_cache_misses_total += 1, on ss's thread's cells. */
void store__count_read(store_session *ss, bool hit);

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

/* ---- event-loop glue for backends (store/loop.c, store/evloop.c: the only store files that know
 * libevent) ---------------------------------------------------------------------------------- */

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

#endif
