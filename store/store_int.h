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
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Bytes kept of a session's last error detail, NUL included; longer details are truncated. */
#define STORE__ERROR_MAX 320
/* Largest page store_pin_list and store_audit_list accept (API.md section 4). */
#define STORE__LIST_MAX 1000
/* How long a write waits for another connection's write lock before failing with PINS_ESTORE. */
#define STORE__BUSY_TIMEOUT_MS 5000

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
};

/* Records the detail of a failure on ss, printf style, replacing the previous one. The text is
 * for the log (it may contain database text), never for the client. */
void store__session_error(store_session *ss, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

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

#endif
