/* store/store.h: the store interface every handler uses.
 *
 * Two backends sit behind it (store/store_int.h): the embedded SQLite store (DATABASE_URL unset,
 * data in PINS_DATA_DIR) and PostgreSQL. Both keep the same schema and the same semantics
 * (API.md section 4): versions start at 1 and grow by one per upsert, created_at survives upserts,
 * expiry is counted from the time of each write, expired pins are invisible to get and list (unless
 * asked) but deletable, list order is created_at DESC, id DESC, prefixes match literally.
 *
 * Lifetimes. A `store` lives for the process (opened before the workers start, closed after they
 * stop). A `store_session` belongs to one worker thread and its event loop; it is never shared.
 *
 * Calls. Every operation takes a session and a callback. It returns 0 when the callback will be
 * called exactly once, or a negative PINS_E* code (and the callback is never called). The callback
 * may run before the operation returns (the SQLite backend answers reads at once, and writes too on
 * a session without an event loop), or later from the session's event loop (the SQLite backend
 * commits the writes queued during one loop iteration together, at the end of that iteration), so
 * the caller must not touch state the callback frees after starting an operation.
 * Everything handed to a callback (pins, strings) lives only for that callback: copy what you keep.
 * Request structs and their strings are borrowed until the operation returns (a backend that
 * completes later copies what it needs).
 *
 * Errors delivered to callbacks: PINS_ENOT_FOUND, PINS_EALREADY_EXISTS (create-only on a live pin),
 * PINS_EABORTED (expected_version mismatch), PINS_ESTORE (store unreachable or failing: counts
 * towards the circuit breaker), PINS_EDEADLINE_EXCEEDED, PINS_ENOMEM, PINS_EINTERNAL.
 * The store never puts database text into what it returns; it logs the detail itself.
 *
 * Times are microseconds since the Unix epoch (UTC). The caller passes "now" so that tests can
 * use a fake clock.
 */
#ifndef PINS_STORE_STORE_H
#define PINS_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;

typedef struct store store;
typedef struct store_session store_session;

/* A pin as the store returns it. Strings are NUL-terminated. */
typedef struct store_pin {
    int64_t id;
    const char *tenant_id;
    const char *key;
    const char *value_json; /* a JSON object, compact */
    size_t value_len;
    const char *source;
    int64_t created_us;
    int64_t updated_us;
    bool has_ttl;
    int32_t ttl_seconds;
    bool has_expires;
    int64_t expires_us;
    int64_t version;
    /* The tenant's revision of the pin's last change (see "Revisions and the change feed"). */
    int64_t revision;
    /* The value packed as a google.protobuf.Struct (protobuf-c's bytes for value_json), when the
     * backend has it at hand (the SQLite backend's read cache keeps it), else NULL and 0. An empty
     * object packs to zero bytes: then value_pb is non-NULL and value_pb_len 0. */
    const uint8_t *value_pb;
    size_t value_pb_len;
    /* True when a get was answered from the backend's read cache without asking the database. */
    bool from_cache;
} store_pin;

/* Who asked, for the audit row written with every change. All fields are optional. */
typedef struct store_audit_info {
    const char *agent_id;   /* caller's x-agent-id, NULL if none */
    const char *request_id; /* stored in extra */
    double latency_ms;      /* time spent in the call before the store was asked */
} store_audit_info;

typedef struct store_upsert_req {
    const char *tenant_id; /* as the dispatcher resolved it (rpc_call_tenant), validated */
    const char *key;
    const char *value_json; /* compact JSON object */
    size_t value_len;
    const char *value_hash; /* first 16 hex chars of SHA-256 of value_json */
    /* Optional: value_json packed as a google.protobuf.Struct (NULL: the backend packs it itself
     * when it needs it). Must be the packing of value_json: the store hands it out as the pin's
     * value_pb without checking. */
    const uint8_t *value_pb;
    size_t value_pb_len;
    const char *source; /* already defaulted ("api") */
    bool has_ttl;
    int32_t ttl_seconds;
    bool has_expected_version;
    int64_t expected_version; /* 0: create only */
    int64_t now_us;
    store_audit_info audit;
} store_upsert_req;

typedef struct store_list_req {
    const char *tenant_id;
    const char *prefix; /* "" for all; matched literally */
    int32_t limit;      /* 1..1000 */
    int64_t offset;     /* rows to skip (used when has_cursor is false) */
    bool has_cursor; /* keyset continuation: rows strictly after (cursor_created_us, cursor_id) */
    int64_t cursor_created_us;
    int64_t cursor_id;
    bool include_expired;
    int64_t now_us;
} store_list_req;

typedef struct store_delete_req {
    const char *tenant_id;
    const char *key;
    bool has_expected_version;
    int64_t expected_version;
    int64_t now_us;
    store_audit_info audit;
} store_delete_req;

/* A memory audit row (ListMemoryAudit). */
typedef struct store_memory_audit {
    int64_t id;
    int64_t ts_us;
    const char *operation;
    const char *tenant_id;
    const char *key;
    const char *agent_id; /* NULL if none */
    const char *source;   /* NULL if none */
    bool cache_hit;
    double latency_ms;
    bool success;
    const char *error_message;  /* NULL if none */
    const char *old_value_hash; /* NULL if none */
    const char *new_value_hash; /* NULL if none */
    int64_t reads;    /* identical reads this row stands for (0 or 1: one); >1 is kept in extra as
                       * {"reads": N} and latency_ms is then the largest of them */
    const char *keys; /* a read summary (key "*"): the JSON object {"<key>": reads, ...} of the
                       * keys it stands for, kept in extra as {"reads": N, "keys": {...}} and
                       * matched by a listing's key filter; NULL for every other row. Written,
                       * never listed. */
} store_memory_audit;

/* The most rows one store_memory_audit_write or store_rbac_audit_write accepts. */
#define STORE_AUDIT_WRITE_MAX 1024

typedef struct store_audit_list_req {
    const char *tenant_id; /* NULL: any */
    const char *key;       /* NULL: any */
    const char *operation; /* NULL: any */
    int32_t limit;
    int64_t offset;
} store_audit_list_req;

/* An RBAC decision row (system.rbac_audit). Strings are NUL-terminated; the optional ones may be
 * NULL. Written by store_rbac_audit_write (id ignored), returned by store_rbac_audit_list. */
typedef struct store_rbac_audit {
    int64_t id;
    int64_t ts_us;
    const char *subject;
    const char *resource;
    const char *action;
    bool allowed;
    const char *reason;       /* NULL if none */
    const char *const *roles; /* nroles role names (a role must not contain U+001F) */
    size_t nroles;
    const char *path;       /* the RPC path or REST route, NULL if none */
    const char *method;     /* the RPC method name or HTTP method, NULL if none */
    const char *tenant_id;  /* NULL if the request named none */
    const char *request_id; /* NULL if none */
    double latency_ms;
    int64_t count; /* decisions this row stands for (0 or 1: one); >1 is kept in extra as
                    * {"count": N} (identical denials aggregated by rpc/audit.c); not listed */
} store_rbac_audit;

typedef struct store_rbac_audit_list_req {
    const char *resource;  /* NULL: any */
    const char *action;    /* NULL: any */
    const char *subject;   /* NULL: any */
    const char *tenant_id; /* NULL: any */
    bool has_allowed;      /* filter on allowed */
    bool allowed;
    bool has_since; /* only rows with ts >= since_us */
    int64_t since_us;
    int32_t limit; /* 1..1000 */
    int64_t offset;
} store_rbac_audit_list_req;

/* pin: the pin as written (upsert) or as it was (delete); created: upsert inserted a new pin. */
typedef void (*store_pin_cb)(void *arg, int err, const store_pin *pin, bool created);
/* pins[0..npins) in list order; total: every match, ignoring limit and offset; revision: the
 * tenant's revision the page was read at (every change up to it is in the page, none after it):
 * a watch from that revision misses nothing. */
typedef void (*store_list_cb)(void *arg, int err, const store_pin *pins, size_t npins,
                              int64_t total, int64_t revision);
typedef void (*store_count_cb)(void *arg, int err, int64_t count);
typedef void (*store_audit_list_cb)(void *arg, int err, const store_memory_audit *rows,
                                    size_t nrows, int64_t total);
typedef void (*store_rbac_audit_list_cb)(void *arg, int err, const store_rbac_audit *rows,
                                         size_t nrows, int64_t total);

typedef struct store_options {
    /* NULL or "": embedded SQLite; postgres://... or postgresql://... (or libpq's key=value
     * connection string): PostgreSQL. */
    const char *database_url;
    /* PostgreSQL: the URL of a direct connection (not through a pooler: PgBouncer's transaction
     * mode cannot carry LISTEN) for the change feed; NULL or "": database_url, which must then be
     * direct. A secret, like database_url. */
    const char *listen_url;
    const char *data_dir; /* SQLite: directory of pins.db, created if missing */
    int pool_size;        /* PostgreSQL connections in total */
    int workers;          /* number of sessions that will be created */
    /* The read cache's bound in bytes; 0: STORE_CACHE_BYTES (store/cache.h). */
    int64_t cache_bytes;
    /* PostgreSQL: keep a read cache of pins, coherent with every replica's writes through the
     * change feed (it serves reads only while store_feed_start's feed is up, store/README.md,
     * "The PostgreSQL read cache"); false: every read asks PostgreSQL. SQLite always has one. */
    bool pg_read_cache;
    /* Optional: when store_open fails for a reason the operator must fix (a DATABASE_URL that
     * selects no backend, one PostgreSQL cannot parse), err gets it, err_cap bytes at most,
     * NUL-terminated. Never the URL itself (a secret). */
    char *err;
    size_t err_cap;
} store_options;

/* Opens the store (for SQLite: creates the directory and the schema). *pstore gets a new store
 * freed by store_close(). Returns 0, PINS_ESTORE (with the reason logged), PINS_ENOMEM. */
int store_open(const store_options *opts, store **pstore);
/* Closes the store. Every session must be freed first. */
void store_close(store *s);
/* "sqlite" or "postgres". */
const char *store_backend_name(const store *s);
/* The backend name of the session's store. */
const char *store_session_backend_name(const store_session *ss);

/* A session for the calling worker thread, driven by base (may be NULL for backends that do not
 * need a loop, and in tests). Returns 0, PINS_ESTORE, PINS_ENOMEM. */
int store_session_new(store *s, struct event_base *base, store_session **psession);
/* Frees the session; operations still pending complete with PINS_ECANCELLED first (a write
 * queued for the next group commit is then not written). Free the sessions before their loop. */
void store_session_free(store_session *ss);
/* The detail of the failure of the last operation started on ss (the database's own text and
 * code, for the log only: never send it to a client), or "" when that operation did not fail
 * with PINS_ESTORE, PINS_ENOMEM or PINS_EINTERNAL. The string belongs to the session and is
 * valid until the next operation on it; read it in the callback that received the error. */
const char *store_session_last_error(const store_session *ss);
/* True when the last operation started on ss failed with PINS_ESTORE because the database's
 * schema is older than this binary needs (PostgreSQL: `pinsctl migrate upgrade head` is due;
 * pinsd never migrates by itself), so that /ready can report "schema_behind" rather than
 * "down". False after any other outcome. Valid, like store_session_last_error(), until the next
 * operation on ss: read it in the callback that received the error. */
bool store_session_schema_behind(const store_session *ss);

/* Sets the monotonic deadline (CLOCK_MONOTONIC nanoseconds, 0: none) of the operations started on
 * ss from now on, until the next call. A backend that completes later (PostgreSQL) completes an
 * operation still pending at its deadline with PINS_EDEADLINE_EXCEEDED (its statement may still
 * run to completion in the database); operations without a deadline get the backend's own limit.
 * The SQLite backend completes before the deadline could matter and ignores it. */
void store_session_set_deadline(store_session *ss, int64_t deadline_ns);

/* Insert or update (tenant_id, key), honouring expected_version, and write the audit row in the
 * same transaction. An expired pin counts as absent: the write creates it anew (version 1). */
int store_pin_upsert(store_session *ss, const store_upsert_req *req, store_pin_cb cb, void *arg);
/* A live (unexpired at now_us) pin, or PINS_ENOT_FOUND. */
int store_pin_get(store_session *ss, const char *tenant_id, const char *key, int64_t now_us,
                  store_pin_cb cb, void *arg);
/* One page of a tenant's pins. */
int store_pin_list(store_session *ss, const store_list_req *req, store_list_cb cb, void *arg);
/* Deletes the pin (expired or not) and writes the audit row in the same transaction.
 * PINS_ENOT_FOUND when absent, PINS_EABORTED when expected_version does not match. */
int store_pin_delete(store_session *ss, const store_delete_req *req, store_pin_cb cb, void *arg);
/* Deletes every pin of tenant_id (NULL: of every tenant) expired at now_us; count = rows. */
int store_pin_cleanup(store_session *ss, const char *tenant_id, int64_t now_us, store_count_cb cb,
                      void *arg);
/* Deletes at most batch pins expired at now_us (the background sweeper); count = rows. */
int store_pin_sweep(store_session *ss, int64_t now_us, int batch, store_count_cb cb, void *arg);
/* Memory audit rows, newest first. */
int store_audit_list(store_session *ss, const store_audit_list_req *req, store_audit_list_cb cb,
                     void *arg);
/* Writes rows[0..n) (1..STORE_AUDIT_WRITE_MAX) to the memory audit in one transaction: all or
 * none; count = rows written. Each row's id is ignored; its operation, tenant_id and key are
 * required. For audits recorded off the request path (reads); changes write their own audit row.
 * The rows are borrowed until the call returns. */
int store_memory_audit_write(store_session *ss, const store_memory_audit *rows, size_t n,
                             store_count_cb cb, void *arg);
/* Writes rows[0..n) (1..STORE_AUDIT_WRITE_MAX) to the RBAC audit in one transaction: all or none;
 * count = rows written. subject, resource and action are required. Borrowed until the call
 * returns. */
int store_rbac_audit_write(store_session *ss, const store_rbac_audit *rows, size_t n,
                           store_count_cb cb, void *arg);
/* RBAC audit rows matching every filter set, newest first (ts DESC, id DESC); total: every match.
 */
int store_rbac_audit_list(store_session *ss, const store_rbac_audit_list_req *req,
                          store_rbac_audit_list_cb cb, void *arg);
/* Deletes every RBAC audit row older than before_us (ts < before_us); count = rows deleted. */
int store_rbac_audit_cleanup(store_session *ss, int64_t before_us, store_count_cb cb, void *arg);
/* The audit tables that store_audit_expire() trims. */
typedef enum store_audit_table {
    STORE_AUDIT_RBAC,   /* system.rbac_audit */
    STORE_AUDIT_MEMORY, /* system.memory_audit */
} store_audit_table;
/* Deletes at most batch (>= 1) rows of table older than before_us (ts < before_us), oldest
 * first, in one statement (the audit retention, rpc/audit.h); count = rows deleted. Returns 0 or
 * PINS_EINVALID_ARGUMENT (batch < 1, unknown table) without calling cb. */
int store_audit_expire(store_session *ss, store_audit_table table, int64_t before_us, int batch,
                       store_count_cb cb, void *arg);
/* Adds n to memory_audit_writes_total{status} ("success", "error", "dropped"): the one family
 * shared by the PostgreSQL backend (the audit rows of changes) and the callers of
 * store_memory_audit_write (rpc/audit.c), which count its outcomes themselves. Thread safe. */
void store_memory_audit_count(const char *status, size_t n);
/* A cheap round trip proving the store answers (for /ready); count is 0. */
int store_ping(store_session *ss, store_count_cb cb, void *arg);

/* ---- revisions and the change feed -----------------------------------------------------------
 *
 * Every change of a pin (an upsert, a delete, an expired pin reclaimed by store_pin_sweep or
 * store_pin_cleanup) takes the next revision of its tenant, in the transaction that makes the
 * change: a tenant's revisions grow in commit order (a revision may be skipped, never reused or
 * reordered), and the change is kept in the history table with its revision until the retention
 * trims it (store_history_expire). Revisions are per tenant: every replica sharing one database
 * sees the same ones.
 *
 * The change feed hands every committed change, of this process or of any other sharing the
 * database, to one function of the process, in each tenant's commit order:
 * - SQLite: called on the thread that committed, after the commit, while the store's write lock is
 *   still held (so calls never overlap and follow commit order).
 * - PostgreSQL: NOTIFY in the writing transaction, LISTEN on one direct connection of the process
 *   (the feed thread); called on that thread. When that connection is lost the store calls
 *   state(arg, false): changes committed from then on until state(arg, true) may never reach fn,
 *   and a consumer that must not miss any reads them back with store_changes_since.
 * fn and state must be quick and must not call the store. */

typedef enum store_change_type {
    STORE_CHANGE_PUT = 1,
    STORE_CHANGE_DELETE = 2,
    STORE_CHANGE_EXPIRE = 3, /* reclaimed after its expiry by the sweeper or a cleanup */
} store_change_type;

typedef struct store_change {
    int type; /* store_change_type */
    /* PUT: the pin as written; DELETE, EXPIRE: the pin as it was, with pin.revision the revision
     * of this change. value_pb may be NULL (decode value_json). */
    store_pin pin;
} store_change;

typedef void (*store_change_fn)(void *arg, const store_change *ch);
typedef void (*store_feed_state_fn)(void *arg, bool live);
/* changes[0..n) oldest first; revision: the tenant's latest revision when the history was read. */
typedef void (*store_changes_cb)(void *arg, int err, const store_change *changes, size_t n,
                                 int64_t revision);

/* Starts the change feed of s (at most once; before the workers start). state may be NULL.
 * Returns 0, PINS_ESTORE (PostgreSQL: no direct connection for LISTEN could be made; the reason
 * is logged), PINS_ENOMEM. */
int store_feed_start(store *s, store_change_fn fn, store_feed_state_fn state, void *arg);
/* Stops the feed: fn and state are not called after it returns. Idempotent. */
void store_feed_stop(store *s);
/* True while the feed delivers every change (SQLite: always once started; PostgreSQL: while its
 * LISTEN connection is up). Any thread. */
bool store_feed_live(const store *s);

/* The kept changes of tenant_id whose key starts with prefix ("": all) and whose revision is
 * above after, oldest first, at most limit (1..STORE_CHANGES_MAX). Fewer than limit means no
 * later change was committed when the history was read. PINS_EOUT_OF_RANGE when the history above
 * after is no longer complete (the retention trimmed part of it) or after is above the tenant's
 * latest revision. */
int store_changes_since(store_session *ss, const char *tenant_id, const char *prefix, int64_t after,
                        int limit, store_changes_cb cb, void *arg);
#define STORE_CHANGES_MAX 1000
/* The history retention: deletes at most batch (>= 1) of the oldest history rows among those
 * written before before_us or beyond the newest max_rows (max_rows <= 0: no count bound), in one
 * statement; count = rows deleted. A tenant's trimmed revisions are remembered, so that
 * store_changes_since answers PINS_EOUT_OF_RANGE for them. */
int store_history_expire(store_session *ss, int64_t before_us, int64_t max_rows, int batch,
                         store_count_cb cb, void *arg);

/* ---- PostgreSQL schema migrations (store/migrate.c) -----------------------------------------
 *
 * The PostgreSQL schema is versioned in system.pins_schema_migrations (version, name, applied_at)
 * by the migrations compiled into the binary (store/migrations/postgres/). pinsd never migrates by
 * itself: `pinsctl migrate upgrade head` is the deployment step, and a pinsd whose database is
 * behind its binary reports the store down on /ready and refuses MemoryPins calls. Each function
 * opens its own blocking connection to url, takes pg_advisory_lock(STORE_MIGRATE_LOCK_KEY) so that
 * concurrent runners serialise, runs every step in its own transaction and closes the connection.
 * Re-running an upgrade to a version already reached changes nothing. On failure, err (cap bytes,
 * may be NULL) gets a message for the operator: what failed, and the server's text, never the URL.
 */

/* The key of the advisory lock every runner holds while it reads or changes the schema. */
#define STORE_MIGRATE_LOCK_KEY 7364856700001LL

/* One applied migration, as recorded. */
typedef struct store_migration_info {
    int version;
    char name[64];
    char applied_at[40]; /* RFC 3339 UTC, "" for a migration not applied */
} store_migration_info;

/* The newest migration this binary knows. */
int store_migrate_latest(void);
/* Applies the migrations above the current version up to target (<= 0: the newest). *papplied
 * (may be NULL) gets how many were applied. Returns 0, PINS_EINVALID_ARGUMENT (target unknown or
 * below the current version), PINS_ESTORE. */
int store_migrate_up(const char *url, int target, int *papplied, char *err, size_t cap);
/* Reverts the newest `steps` applied migrations (steps < 0: all of them, down to the base).
 * *preverted (may be NULL) gets how many were reverted. Returns 0, PINS_EINVALID_ARGUMENT (more
 * steps than applied migrations), PINS_ESTORE. */
int store_migrate_down(const char *url, int steps, int *preverted, char *err, size_t cap);
/* *pversion gets the current schema version (0: none). Returns 0 or PINS_ESTORE. */
int store_migrate_current(const char *url, int *pversion, char *err, size_t cap);
/* Fills rows[0..*pn) (at most cap_rows) with every migration the binary knows, in version order,
 * applied_at set for the applied ones, plus applied versions the binary does not know. Returns 0
 * or PINS_ESTORE. */
int store_migrate_history(const char *url, store_migration_info *rows, size_t cap_rows, size_t *pn,
                          char *err, size_t cap);

#endif
