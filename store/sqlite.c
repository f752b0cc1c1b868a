/* store/sqlite.c: the embedded SQLite backend (DATABASE_URL unset).
 *
 * One file data_dir/pins.db in WAL mode with synchronous=NORMAL: a commit is appended to the WAL
 * before COMMIT returns, so it survives kill -9 of the process (only a power loss may take the
 * last commits). Each session owns one connection opened with SQLITE_OPEN_NOMUTEX and used only
 * by its thread. Writes of the process are serialised by the store's write mutex (a worker waits
 * microseconds on it instead of sleeping in SQLite's busy handler, which now only meets other
 * processes), and run under BEGIN IMMEDIATE, so the read-compare-write of expected_version and the
 * audit row commit together.
 *
 * Group commit. An upsert or delete copies its request into the session's pending batch and
 * returns; the batch runs in one transaction at the end of the loop iteration (store/loop.c), when
 * it is full, or at once on a session without a loop. Each operation of the batch keeps its own
 * outcome; an I/O failure, a failed BEGIN or COMMIT fails them all and acknowledges nothing. The
 * callbacks run after COMMIT returned, in queue order.
 *
 * Reads go through the process-wide cache (store/cache.c) before SQLite; writes update it after
 * COMMIT, still under the write mutex, so that the cache sees writes in commit order.
 *
 * Revisions. Every change (an upsert, a delete, an expired pin a sweep or cleanup reclaims) takes
 * its tenant's next revision from pin_revisions in its transaction, stores it in the pin's row and
 * adds a pin_changes row. The write mutex covers each transaction from BEGIN IMMEDIATE to past the
 * cache update, and the change feed is called there too, once per change in commit order (the
 * batch's queue order, then the reclaimed pins), so its calls never overlap.
 *
 * Every statement is prepared once per session. Rows handed to callbacks are copied into a
 * per-session scratch arena (reads) or live in the batch's arena (writes), and every statement is
 * reset and every transaction closed before a callback runs, so a callback may start another
 * operation on the same session (each nesting level has its own scratch arena).
 */
#include "store/sqlite_int.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/fmt.h"
#include "common/timeutil.h"
#include "common/utf8.h"

/* Operations a callback may nest inside one another on one session. */
#define SCRATCH_DEPTH 4
/* Hex characters kept of a SHA-256 value hash. */
#define HASH_HEX 16
/* Audit listing filters (tenant, key, operation): one statement pair per combination. */
#define AUDIT_TENANT    1u
#define AUDIT_KEY       2u
#define AUDIT_OPERATION 4u
#define AUDIT_VARIANTS  8u

enum stmt_id {
    ST_BEGIN,
    ST_BEGIN_IMMEDIATE,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_PIN_FIND,
    ST_PIN_GET,
    ST_PIN_INSERT,
    ST_PIN_UPDATE,
    ST_PIN_DELETE,
    ST_AUDIT_INSERT,
    ST_LIST,
    ST_LIST_CURSOR,
    ST_LIST_COUNT,
    ST_CLEANUP_TENANT,
    ST_CLEANUP_ALL,
    ST_SWEEP,
    ST_PING,
    ST_MAUDIT_WRITE,
    ST_RAUDIT_WRITE,
    ST_RAUDIT_LIST,
    ST_RAUDIT_COUNT,
    ST_RAUDIT_CLEANUP,
    ST_RAUDIT_EXPIRE,
    ST_MAUDIT_EXPIRE,
    ST_REV_NEXT,
    ST_REV_GET,
    ST_CHANGE_INSERT,
    ST_CHANGES,
    ST_TRIM,
    ST_HISTORY_EXPIRE,
    ST_COUNT
};

/* The columns of PIN_COLS, in order. */
enum pin_col {
    PC_ID,
    PC_TENANT,
    PC_KEY,
    PC_VALUE,
    PC_SOURCE,
    PC_CREATED,
    PC_UPDATED,
    PC_TTL,
    PC_EXPIRES,
    PC_VERSION,
    PC_REVISION
};

/* The columns of CHANGE_COLS, in order: the type, then PIN_COLS from pin_changes. */
enum change_col { CC_TYPE, CC_PIN };

/* The columns of AUDIT_COLS, in order. */
enum audit_col {
    AC_ID,
    AC_TS,
    AC_OPERATION,
    AC_TENANT,
    AC_KEY,
    AC_AGENT,
    AC_SOURCE,
    AC_CACHE_HIT,
    AC_LATENCY,
    AC_SUCCESS,
    AC_ERROR,
    AC_OLD_HASH,
    AC_NEW_HASH
};

#define PIN_COLS                                                                                   \
    "id, tenant_id, key, value, source, created_at, updated_at, ttl_seconds, expires_at, version," \
    " revision"
#define CHANGE_COLS                                                        \
    "type, pin_id, tenant_id, key, value, source, created_at, updated_at," \
    " ttl_seconds, expires_at, version, revision"
/* Prefixes match literally: substr() compares characters, unlike LIKE and its wildcards. */
#define LIST_WHERE                                              \
    " WHERE tenant_id = ?1 AND substr(key, 1, length(?2)) = ?2" \
    " AND (?3 OR expires_at IS NULL OR expires_at > ?4)"
/* The RBAC audit listing filters: each NULL parameter matches any row. Roles come back joined
 * with U+001F (store__split_roles). */
#define RAUDIT_WHERE                                                       \
    " WHERE (?1 IS NULL OR resource = ?1) AND (?2 IS NULL OR action = ?2)" \
    " AND (?3 IS NULL OR subject = ?3) AND (?4 IS NULL OR tenant_id = ?4)" \
    " AND (?5 IS NULL OR allowed = ?5) AND (?6 IS NULL OR ts >= ?6)"
#define RAUDIT_COLS                                                                   \
    "id, ts, subject, resource, action, allowed, reason,"                             \
    " (SELECT group_concat(value, char(31)) FROM json_each(rbac_audit.roles)), path," \
    " method, tenant_id, request_id, latency_ms"
#define AUDIT_COLS                                                                         \
    "id, ts, operation, tenant_id, key, agent_id, source, cache_hit, latency_ms, success," \
    " error_message, old_value_hash, new_value_hash"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN",
    [ST_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_PIN_FIND] = "SELECT " PIN_COLS " FROM memory_pins WHERE tenant_id = ?1 AND key = ?2",
    [ST_PIN_GET] = "SELECT " PIN_COLS " FROM memory_pins WHERE tenant_id = ?1 AND key = ?2"
                   " AND (expires_at IS NULL OR expires_at > ?3)",
    [ST_PIN_INSERT] = "INSERT INTO memory_pins (key, tenant_id, value, source, created_at,"
                      " updated_at, ttl_seconds, expires_at, version, revision)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, 1, ?8)",
    [ST_PIN_UPDATE] = "UPDATE memory_pins SET value = ?1, source = ?2, updated_at = ?3,"
                      " ttl_seconds = ?4, expires_at = ?5, version = ?6, revision = ?8"
                      " WHERE id = ?7",
    [ST_PIN_DELETE] = "DELETE FROM memory_pins WHERE id = ?1",
    [ST_AUDIT_INSERT] = "INSERT INTO memory_audit (ts, operation, tenant_id, key, agent_id,"
                        " source, cache_hit, latency_ms, success, old_value_hash, new_value_hash,"
                        " extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, 1, ?8, ?9, ?10)",
    [ST_LIST] = "SELECT " PIN_COLS " FROM memory_pins" LIST_WHERE
                " ORDER BY created_at DESC, id DESC LIMIT ?5 OFFSET ?6",
    [ST_LIST_CURSOR] = "SELECT " PIN_COLS " FROM memory_pins" LIST_WHERE
                       " AND (created_at, id) < (?5, ?6) ORDER BY created_at DESC, id DESC"
                       " LIMIT ?7",
    [ST_LIST_COUNT] = "SELECT count(*) FROM memory_pins" LIST_WHERE,
    /* The reclaims of expired pins return the rows they delete: each becomes an EXPIRE change. */
    [ST_CLEANUP_TENANT] = "DELETE FROM memory_pins WHERE tenant_id = ?1"
                          " AND expires_at IS NOT NULL AND expires_at <= ?2 RETURNING " PIN_COLS,
    [ST_CLEANUP_ALL] = "DELETE FROM memory_pins WHERE expires_at IS NOT NULL AND expires_at <= ?1"
                       " RETURNING " PIN_COLS,
    [ST_SWEEP] = "DELETE FROM memory_pins WHERE id IN (SELECT id FROM memory_pins"
                 " WHERE expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY expires_at"
                 " LIMIT ?2) RETURNING " PIN_COLS,
    [ST_PING] = "SELECT 1",
    [ST_MAUDIT_WRITE] = "INSERT INTO memory_audit (ts, operation, tenant_id, key, agent_id, source,"
                        " cache_hit, latency_ms, success, error_message, old_value_hash,"
                        " new_value_hash, extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,"
                        " ?11, ?12, CASE WHEN ?14 IS NOT NULL THEN ?14"
                        " WHEN ?13 > 1 THEN json_object('reads', ?13) ELSE '{}' END)",
    [ST_RAUDIT_WRITE] = "INSERT INTO rbac_audit (ts, subject, resource, action, allowed, reason,"
                        " roles, path, method, tenant_id, request_id, latency_ms, extra)"
                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,"
                        " CASE WHEN ?13 > 1 THEN json_object('count', ?13) ELSE '{}' END)",
    [ST_RAUDIT_LIST] = "SELECT " RAUDIT_COLS " FROM rbac_audit" RAUDIT_WHERE
                       " ORDER BY ts DESC, id DESC LIMIT ?7 OFFSET ?8",
    [ST_RAUDIT_COUNT] = "SELECT count(*) FROM rbac_audit" RAUDIT_WHERE,
    [ST_RAUDIT_CLEANUP] = "DELETE FROM rbac_audit WHERE ts < ?1",
    /* The audit retention: the oldest rows first, through the ts indexes. */
    [ST_RAUDIT_EXPIRE] = "DELETE FROM rbac_audit WHERE id IN (SELECT id FROM rbac_audit"
                         " WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
    [ST_MAUDIT_EXPIRE] = "DELETE FROM memory_audit WHERE id IN (SELECT id FROM memory_audit"
                         " WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
    /* The tenant's next revision, taken inside the change's transaction. */
    [ST_REV_NEXT] = "INSERT INTO pin_revisions (tenant_id, revision) VALUES (?1, 1)"
                    " ON CONFLICT (tenant_id) DO UPDATE SET revision = revision + 1"
                    " RETURNING revision",
    [ST_REV_GET] = "SELECT revision, trimmed FROM pin_revisions WHERE tenant_id = ?1",
    [ST_CHANGE_INSERT] = "INSERT INTO pin_changes (type, pin_id, tenant_id, key, value, source,"
                         " created_at, updated_at, ttl_seconds, expires_at, version, revision, ts)"
                         " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    /* Through the (tenant_id, revision) index; prefixes match literally (LIST_WHERE). */
    [ST_CHANGES] = "SELECT " CHANGE_COLS " FROM pin_changes WHERE tenant_id = ?1"
                   " AND revision > ?2 AND substr(key, 1, length(?3)) = ?3"
                   " ORDER BY revision LIMIT ?4",
    [ST_TRIM] = "UPDATE pin_revisions SET trimmed = max(trimmed, ?2) WHERE tenant_id = ?1",
    /* The history retention: the oldest rows written before ?1 (through the ts index) and those
     * ?2 or more seqs below the newest (max(seq) is one step down the primary key; seqs a rolled
     * back insert skipped make the count bound keep slightly fewer rows), at most ?3 of them,
     * oldest first. */
    [ST_HISTORY_EXPIRE] =
        "DELETE FROM pin_changes WHERE seq IN (SELECT seq FROM ("
        " SELECT seq FROM (SELECT seq FROM pin_changes WHERE ts < ?1 ORDER BY ts LIMIT ?3)"
        " UNION SELECT seq FROM (SELECT seq FROM pin_changes WHERE ?2 > 0 AND seq <="
        " (SELECT max(seq) FROM pin_changes) - ?2 ORDER BY seq LIMIT ?3))"
        " ORDER BY seq LIMIT ?3) RETURNING tenant_id, revision",
};

typedef struct sqlite_store {
    store base;
    char *path;                 /* data_dir/pins.db */
    pthread_mutex_t write_lock; /* held around every write transaction of the process */
    bool write_lock_ready;      /* write_lock was initialised */
    store_cache *cache;         /* live pins, process-wide */
    store__ckpt *ckpt;          /* the WAL checkpointer (sqlite_ckpt.c) */
    /* The change feed: set and cleared under write_lock, and called under it after each commit
     * that made changes; feed_fn NULL while no feed is started. */
    store_change_fn feed_fn;
    void *feed_arg;
    _Atomic bool feed_on; /* store_feed_live, read from any thread */
} sqlite_store;

/* How a connection waits for another process's lock (on_busy). */
typedef struct busy_wait {
    int64_t start_ns;       /* when the current wait began (pins_time_mono_ns) */
    int64_t write_start_ns; /* when the write holding the write mutex began waiting for it; 0
                             * outside writes_lock / writes_unlock */
    int timeout_ms;
} busy_wait;

/* What a queued write does. */
typedef enum write_kind {
    WRITE_UPSERT,
    WRITE_DELETE,
} write_kind;

/* One queued upsert or delete. The request's strings are copies in the batch arena. */
typedef struct write_op {
    write_kind kind;
    bool failed;          /* failed on its own (err set): left out of the batch's next attempt */
    store_upsert_req up;  /* WRITE_UPSERT */
    store_delete_req del; /* WRITE_DELETE */
    store_pin_cb cb;
    void *arg;
    int err;            /* the outcome */
    const char *detail; /* the last_error text for a failure, in the batch arena */
    store_pin pin;      /* on success: as written (upsert) or as it was (delete) */
    bool created;
} write_op;

/* Writes committed together. */
typedef struct batch {
    struct batch *next; /* the session's spare list */
    pins_arena *arena;  /* the copied requests and the results */
    write_op *ops;
    size_t n;
    size_t cap;
    size_t bytes; /* copied request bytes */
    size_t mark;  /* arena bytes used before the copies of the op being queued */
} batch;

typedef struct sqlite_session {
    store_session base;
    sqlite3 *db;
    busy_wait busy;
    sqlite3_stmt *st[ST_COUNT];
    sqlite3_stmt *audit_list_st[AUDIT_VARIANTS];  /* prepared on first use */
    sqlite3_stmt *audit_count_st[AUDIT_VARIANTS]; /* prepared on first use */
    EVP_MD *sha256;
    EVP_MD_CTX *md;
    pins_arena *scratch[SCRATCH_DEPTH]; /* scratch[d]: operations started at callback depth d */
    int depth;                          /* callbacks currently running on this session */
    pins_arena *pack;                   /* scratch for packing a value as a Struct */
    store__defer *flush;                /* the end-of-iteration commit; NULL without a loop */
    batch *pending;                     /* writes waiting for the commit, or NULL */
    batch *spare;                       /* batches to reuse */
    bool closing;                       /* sqlite_session_free is cancelling the pending writes */
    bool pooled;                        /* counted in store_pool_connections */
    int commit_fault;                   /* test hook: the next write COMMIT fails with this */
    void (*fill_hook)(void *arg);       /* test hook, see store_sqlite_set_fill_hook */
    void *fill_arg;
    store_sqlite_stats stats;
} sqlite_session;

/* Bind parameters one after another; the first failure sticks in rc. */
typedef struct binder {
    sqlite3_stmt *st;
    int rc;
} binder;

static const store__backend sqlite_backend;

/* ---- errors --------------------------------------------------------------------------------- */

/* What a failed SQLite call says about the store: locked past the timeout, the file or the disk
 * failing (I/O, full, unreadable, corrupt), or neither (a statement this code misused). */
typedef enum rc_class {
    RC_BUSY,
    RC_IO,
    RC_OTHER,
} rc_class;

static rc_class classify(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return RC_BUSY;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_PROTOCOL:
    case SQLITE_PERM:
    case SQLITE_NOLFS:
        return RC_IO;
    default:
        return RC_OTHER;
    }
}

/* The PINS_E* code for a SQLite result code: a busy or failing store is unavailable (PINS_ESTORE,
 * counted by the breaker); anything else means this code misused SQLite (PINS_EINTERNAL). */
static int map_rc(int rc)
{
    if (rc == SQLITE_NOMEM || rc == SQLITE_IOERR_NOMEM)
        return PINS_ENOMEM;
    return classify(rc) == RC_OTHER ? PINS_EINTERNAL : PINS_ESTORE;
}

/* The store_errors_total kinds of the SQLite backend, all shown from the start. */
static const char *const error_kinds[] = {"busy", "io", "query", "schema"};

/* The store_errors_total kind of a failed SQLite call. */
static const char *error_kind(int rc)
{
    static const char *const kinds[] = {[RC_BUSY] = "busy", [RC_IO] = "io", [RC_OTHER] = "query"};
    return kinds[classify(rc)];
}

/* Records why "what" failed with rc on the session, counts it, and returns the PINS_E* code for
 * it. */
static int db_fail(sqlite_session *ss, int rc, const char *what)
{
    store__session_error(&ss->base, "could not %s: %s (sqlite error %d)", what,
                         sqlite3_errmsg(ss->db), rc);
    store__count_error(error_kind(rc));
    return map_rc(rc);
}

/* Takes the write mutex, with the session's connection counted busy while it holds it. One busy
 * timeout bounds the whole wait of a write: for the mutex, then (on_busy, from the same start) for
 * another process's lock. Without the bound a write would queue behind every other session's own
 * full wait while another process holds the database (the sweeper retries each second), far past
 * the timeout. Returns 0, or PINS_ESTORE (a busy store error) when the timeout passed before the
 * mutex came free. */
static int writes_lock(sqlite_session *ss, const char *what)
{
    pthread_mutex_t *mu = &((sqlite_store *)ss->base.store)->write_lock;
    int64_t start_ns = pins_time_mono_ns();
    int rc = pthread_mutex_trylock(mu);
    if (rc == EBUSY) {
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        int64_t ns = deadline.tv_nsec + (int64_t)ss->busy.timeout_ms * 1000000;
        deadline.tv_sec += (time_t)(ns / 1000000000);
        deadline.tv_nsec = (long)(ns % 1000000000);
        rc = pthread_mutex_clocklock(mu, CLOCK_MONOTONIC, &deadline);
    }
    if (rc != 0) {
        store__session_error(&ss->base,
                             "could not %s: other writes held the write lock past the busy "
                             "timeout (%d ms)",
                             what, ss->busy.timeout_ms);
        store__count_error("busy");
        return map_rc(SQLITE_BUSY);
    }
    ss->busy.write_start_ns = start_ns;
    store__pool_move(STORE__POOL_IDLE, STORE__POOL_BUSY);
    return 0;
}

static void writes_unlock(sqlite_session *ss)
{
    ss->busy.write_start_ns = 0;
    store__pool_move(STORE__POOL_BUSY, STORE__POOL_IDLE);
    pthread_mutex_unlock(&((sqlite_store *)ss->base.store)->write_lock);
}

static int out_of_memory(sqlite_session *ss, const char *what)
{
    store__session_error(&ss->base, "out of memory while %s", what);
    return PINS_ENOMEM;
}

/* ---- connections ---------------------------------------------------------------------------- */

/* SQLite's own busy handler sleeps at least a millisecond per retry; a write transaction holds
 * the lock for tens of microseconds to a few milliseconds (a batch), so yield first, then sleep
 * briefly, then longer, until the timeout (STORE__BUSY_TIMEOUT_MS) has passed, counted for a write
 * from when it began waiting for the write mutex (writes_lock). Writers of this process never get
 * here: they queue on the write mutex; this waits for other processes. */
static int on_busy(void *arg, int count)
{
    busy_wait *bw = arg;
    int64_t now_ns = pins_time_mono_ns();
    if (count == 0) /* a write's budget began when it started waiting for the write mutex */
        bw->start_ns = bw->write_start_ns != 0 ? bw->write_start_ns : now_ns;
    if (now_ns - bw->start_ns >= (int64_t)bw->timeout_ms * 1000000)
        return 0;
    if (count < 16) {
        sched_yield();
    } else {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = count < 256 ? 20000 : 1000000};
        nanosleep(&pause, NULL);
    }
    return 1;
}

/* Per-connection settings: extended result codes, the busy handler, synchronous=NORMAL (durable
 * against a process crash in WAL mode), a 16 MiB page cache (the audit table's six indexes do not
 * fit SQLite's default 2 MiB, and re-reading their pages doubled the cost of a write), a WAL
 * file truncated back to 64 MiB when it is rewound after growing, and automatic checkpoints
 * every 10000 pages for a connection the checkpointer (sqlite_ckpt.c) does not take over: the
 * store's first connection, which applies the migrations. Returns a SQLite result code. */
static int configure(sqlite3 *db, busy_wait *busy)
{
    sqlite3_extended_result_codes(db, 1);
    *busy = (busy_wait){.timeout_ms = STORE__BUSY_TIMEOUT_MS};
    int rc = sqlite3_busy_handler(db, on_busy, busy);
    if (rc == SQLITE_OK)
        rc =
            sqlite3_exec(db,
                         "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;"
                         " PRAGMA wal_autocheckpoint = 10000; PRAGMA journal_size_limit = 67108864",
                         NULL, NULL, NULL);
    return rc;
}

/* Switches the database to WAL (persistent in the file). Returns a SQLite result code. */
static int enable_wal(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        goto out;
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    /* A file system without shared memory keeps the rollback journal: refuse it. */
    rc = mode != NULL && strcmp(mode, "wal") == 0 ? SQLITE_OK : SQLITE_CANTOPEN;
out:
    sqlite3_finalize(st);
    return rc;
}

/* Applies the embedded migrations not yet recorded in schema_migrations, all in one transaction,
 * so that concurrent openers serialise and a failure leaves the schema as it was. Returns a SQLite
 * result code; SQLITE_CANTOPEN when the database is newer than this build. */
static int migrate(sqlite3 *db)
{
    sqlite3_stmt *applied = NULL;
    sqlite3_stmt *record = NULL;
    sqlite3_stmt *newest = NULL;
    int rc = sqlite3_exec(db,
                          "BEGIN IMMEDIATE;"
                          "CREATE TABLE IF NOT EXISTS schema_migrations ("
                          " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                          " applied_at INTEGER NOT NULL)",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_prepare_v2(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", -1,
                            &newest, NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_step(newest);
    if (rc != SQLITE_ROW)
        goto out;
    int64_t current = sqlite3_column_int64(newest, 0);
    sqlite3_reset(newest);
    if (current > store__sqlite_migrations[store__sqlite_migrations_count - 1].version) {
        rc = SQLITE_CANTOPEN;
        goto out;
    }
    rc = sqlite3_prepare_v2(db, "SELECT 1 FROM schema_migrations WHERE version = ?1", -1, &applied,
                            NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "INSERT INTO schema_migrations (version, name, applied_at)"
                                " VALUES (?1, ?2, ?3)",
                                -1, &record, NULL);
    if (rc != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < store__sqlite_migrations_count; i++) {
        const store__migration *m = &store__sqlite_migrations[i];
        sqlite3_reset(applied);
        sqlite3_bind_int(applied, 1, m->version);
        rc = sqlite3_step(applied);
        if (rc == SQLITE_ROW)
            continue;
        if (rc != SQLITE_DONE)
            goto out;
        rc = sqlite3_exec(db, m->up, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto out;
        sqlite3_reset(record);
        sqlite3_bind_int(record, 1, m->version);
        sqlite3_bind_text(record, 2, m->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(record, 3, pins_time_now_us()); /* applied_at: the wall clock */
        rc = sqlite3_step(record);
        if (rc != SQLITE_DONE)
            goto out;
    }
    sqlite3_reset(applied);
    rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
out:
    sqlite3_finalize(newest);
    sqlite3_finalize(applied);
    sqlite3_finalize(record);
    if (rc != SQLITE_OK && !sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* mkdir -p with mode 0700 for what it creates. Returns 0, PINS_ESTORE, PINS_ENOMEM. */
static int make_dirs(const char *dir)
{
    int err = 0;
    size_t len = strlen(dir);
    char *path = malloc(len + 1);
    if (path == NULL)
        return PINS_ENOMEM;
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        struct stat sb;
        if (mkdir(path, 0700) != 0 && (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))) {
            err = PINS_ESTORE;
            goto out;
        }
        path[i] = c;
    }
out:
    free(path);
    return err;
}

/* ---- statements ----------------------------------------------------------------------------- */

static void bind_text(binder *b, int i, const char *s, size_t len)
{
    if (b->rc != SQLITE_OK)
        return;
    if (s == NULL)
        b->rc = sqlite3_bind_null(b->st, i);
    else
        b->rc = sqlite3_bind_text64(b->st, i, s, len, SQLITE_STATIC, SQLITE_UTF8);
}

static void bind_str(binder *b, int i, const char *s)
{
    bind_text(b, i, s, s != NULL ? strlen(s) : 0);
}

static void bind_int(binder *b, int i, int64_t v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->st, i, v);
}

static void bind_null(binder *b, int i)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_null(b->st, i);
}

static void bind_double(binder *b, int i, double v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_double(b->st, i, v);
}

/* Steps st once, expecting no row or one row to ignore, and resets it. Returns 0 or the mapped
 * error (detail recorded). */
static int run(sqlite_session *ss, sqlite3_stmt *st, const char *what)
{
    int err = 0;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        err = db_fail(ss, rc, what);
    sqlite3_reset(st);
    return err;
}

/* Ends a failed transaction, if SQLite has not already rolled it back. */
static void rollback(sqlite_session *ss)
{
    if (!sqlite3_get_autocommit(ss->db)) {
        sqlite3_step(ss->st[ST_ROLLBACK]);
        sqlite3_reset(ss->st[ST_ROLLBACK]);
    }
}

/* The audit listing statement for the filters in mask (count: the total instead of a page). */
static int audit_stmt(sqlite_session *ss, unsigned mask, bool count, sqlite3_stmt **pst)
{
    sqlite3_stmt **slot = count ? &ss->audit_count_st[mask] : &ss->audit_list_st[mask];
    if (*slot == NULL) {
        char sql[512];
        snprintf(sql, sizeof(sql), "SELECT %s FROM memory_audit WHERE 1%s%s%s%s",
                 count ? "count(*)" : AUDIT_COLS, mask & AUDIT_TENANT ? " AND tenant_id = ?1" : "",
                 mask & AUDIT_KEY ? " AND (key = ?2 OR (key = '*' AND EXISTS (SELECT 1"
                                    " FROM json_each(memory_audit.extra, '$.keys') AS j"
                                    " WHERE j.key = ?2)))"
                                  : "",
                 mask & AUDIT_OPERATION ? " AND operation = ?3" : "",
                 count ? "" : " ORDER BY ts DESC, id DESC LIMIT ?4 OFFSET ?5");
        int rc = sqlite3_prepare_v3(ss->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL);
        if (rc != SQLITE_OK)
            return db_fail(ss, rc, "prepare the audit listing");
    }
    *pst = *slot;
    return 0;
}

/* ---- rows ----------------------------------------------------------------------------------- */

/* Copies text column c into a; a NULL column gives NULL. Returns 0 or PINS_ENOMEM. */
static int col_text(sqlite3_stmt *st, int c, pins_arena *a, const char **ps, size_t *plen)
{
    if (sqlite3_column_type(st, c) == SQLITE_NULL) {
        *ps = NULL;
        *plen = 0;
        return 0;
    }
    const unsigned char *text = sqlite3_column_text(st, c);
    if (text == NULL)
        return PINS_ENOMEM;
    size_t len = (size_t)sqlite3_column_bytes(st, c);
    char *copy = pins_arena_strndup(a, (const char *)text, len);
    if (copy == NULL)
        return PINS_ENOMEM;
    *ps = copy;
    *plen = len;
    return 0;
}

/* The PIN_COLS of the current row of st from column c0 on, strings copied into a. Returns 0 or
 * PINS_ENOMEM. */
static int read_pin_at(sqlite3_stmt *st, int c0, pins_arena *a, store_pin *ppin)
{
    store_pin p = {
        .id = sqlite3_column_int64(st, c0 + PC_ID),
        .created_us = sqlite3_column_int64(st, c0 + PC_CREATED),
        .updated_us = sqlite3_column_int64(st, c0 + PC_UPDATED),
        .has_ttl = sqlite3_column_type(st, c0 + PC_TTL) != SQLITE_NULL,
        .has_expires = sqlite3_column_type(st, c0 + PC_EXPIRES) != SQLITE_NULL,
        .version = sqlite3_column_int64(st, c0 + PC_VERSION),
        .revision = sqlite3_column_int64(st, c0 + PC_REVISION),
    };
    p.ttl_seconds = p.has_ttl ? sqlite3_column_int(st, c0 + PC_TTL) : 0;
    p.expires_us = p.has_expires ? sqlite3_column_int64(st, c0 + PC_EXPIRES) : 0;
    size_t len;
    int err = col_text(st, c0 + PC_TENANT, a, &p.tenant_id, &len);
    if (err == 0)
        err = col_text(st, c0 + PC_KEY, a, &p.key, &len);
    if (err == 0)
        err = col_text(st, c0 + PC_VALUE, a, &p.value_json, &p.value_len);
    if (err == 0)
        err = col_text(st, c0 + PC_SOURCE, a, &p.source, &len);
    if (err == 0)
        *ppin = p;
    return err;
}

/* The current row of a PIN_COLS statement, strings copied into a. Returns 0 or PINS_ENOMEM. */
static int read_pin(sqlite3_stmt *st, pins_arena *a, store_pin *ppin)
{
    return read_pin_at(st, 0, a, ppin);
}

/* The current row of an AUDIT_COLS statement, strings copied into a. Returns 0 or PINS_ENOMEM. */
static int read_audit(sqlite3_stmt *st, pins_arena *a, store_memory_audit *prow)
{
    store_memory_audit r = {
        .id = sqlite3_column_int64(st, AC_ID),
        .ts_us = sqlite3_column_int64(st, AC_TS),
        .cache_hit = sqlite3_column_int(st, AC_CACHE_HIT) != 0,
        .latency_ms = sqlite3_column_double(st, AC_LATENCY),
        .success = sqlite3_column_int(st, AC_SUCCESS) != 0,
    };
    const struct {
        int col;
        const char **field;
    } texts[] = {
        {AC_OPERATION, &r.operation},
        {AC_TENANT, &r.tenant_id},
        {AC_KEY, &r.key},
        {AC_AGENT, &r.agent_id},
        {AC_SOURCE, &r.source},
        {AC_ERROR, &r.error_message},
        {AC_OLD_HASH, &r.old_value_hash},
        {AC_NEW_HASH, &r.new_value_hash},
    };
    size_t len;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        int err = col_text(st, texts[i].col, a, texts[i].field, &len);
        if (err != 0)
            return err;
    }
    *prow = r;
    return 0;
}

/* The first HASH_HEX hex characters of SHA-256 of data, NUL-terminated. Returns 0 or
 * PINS_EINTERNAL. */
static int value_hash(sqlite_session *ss, const void *data, size_t len, char phex[HASH_HEX + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestInit_ex(ss->md, ss->sha256, NULL) != 1 ||
        EVP_DigestUpdate(ss->md, data, len) != 1 || EVP_DigestFinal_ex(ss->md, md, &mdlen) != 1 ||
        mdlen * 2 < HASH_HEX) {
        store__session_error(&ss->base, "could not hash the previous value (openssl)");
        return PINS_EINTERNAL;
    }
    for (size_t i = 0; i < HASH_HEX / 2; i++) {
        phex[2 * i] = hex[md[i] >> 4];
        phex[2 * i + 1] = hex[md[i] & 0xf];
    }
    phex[HASH_HEX] = '\0';
    return 0;
}

/* memory_audit.extra for a write: {"request_id":"..."} built in a (invalid UTF-8 becomes U+FFFD,
 * so the column always holds valid JSON), or "{}" without a request id. Returns 0 or
 * PINS_ENOMEM. */
static int audit_extra(pins_arena *a, const char *request_id, const char **pjson, size_t *plen)
{
    static const char head[] = "{\"request_id\":\"";
    static const char hex[] = "0123456789abcdef";
    if (request_id == NULL || request_id[0] == '\0') {
        *pjson = "{}";
        *plen = 2;
        return 0;
    }
    size_t n = strlen(request_id);
    if (n > (SIZE_MAX - sizeof(head) - 3) / 6)
        return PINS_ENOMEM;
    char *out = pins_arena_alloc(a, sizeof(head) + n * 6 + 3);
    if (out == NULL)
        return PINS_ENOMEM;
    size_t o = sizeof(head) - 1;
    memcpy(out, head, o);
    const unsigned char *s = (const unsigned char *)request_id;
    for (size_t i = 0; i < n;) {
        size_t len = pins_utf8_seq(s + i, n - i);
        if (len == 0) {
            memcpy(out + o, "\\ufffd", 6);
            o += 6;
            i++;
        } else if (s[i] == '"' || s[i] == '\\') {
            out[o++] = '\\';
            out[o++] = (char)s[i++];
        } else if (s[i] < 0x20 || s[i] == 0x7f) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[s[i] >> 4];
            out[o + 5] = hex[s[i] & 0xf];
            o += 6;
            i++;
        } else {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        }
    }
    memcpy(out + o, "\"}", 3);
    *pjson = out;
    *plen = o + 2;
    return 0;
}

/* ---- operations ----------------------------------------------------------------------------- */

/* The scratch arena of an operation starting now. Returns 0, PINS_EINTERNAL when callbacks nest
 * operations too deeply, PINS_ENOMEM. */
static int scratch(sqlite_session *ss, pins_arena **pa)
{
    if (ss->depth >= SCRATCH_DEPTH) {
        store__session_error(&ss->base, "operations nested more than %d deep in callbacks",
                             SCRATCH_DEPTH);
        return PINS_EINTERNAL;
    }
    if (ss->scratch[ss->depth] == NULL) {
        ss->scratch[ss->depth] = pins_arena_new(0);
        if (ss->scratch[ss->depth] == NULL)
            return out_of_memory(ss, "starting an operation");
    }
    *pa = ss->scratch[ss->depth];
    return 0;
}

/* Called after an operation's callback returned: frees what the operation copied. */
static void scratch_done(sqlite_session *ss)
{
    if (ss->scratch[ss->depth] != NULL)
        pins_arena_reset(ss->scratch[ss->depth]);
}

typedef int (*row_read_fn)(sqlite3_stmt *st, pins_arena *a, void *prow);

static int read_pin_row(sqlite3_stmt *st, pins_arena *a, void *prow)
{
    return read_pin(st, a, prow);
}

static int read_audit_row(sqlite3_stmt *st, pins_arena *a, void *prow)
{
    return read_audit(st, a, prow);
}

/* The current row of a CHANGE_COLS statement. */
static int read_change_row(sqlite3_stmt *st, pins_arena *a, void *prow)
{
    store_change *ch = prow;
    ch->type = sqlite3_column_int(st, CC_TYPE);
    return read_pin_at(st, CC_PIN, a, &ch->pin);
}

/* Reads the latest and the highest trimmed revision of tenant_id (0 and 0 for a tenant that never
 * changed) inside the caller's transaction. */
static int read_revision(sqlite_session *ss, const char *tenant_id, int64_t *prev,
                         int64_t *ptrimmed)
{
    sqlite3_stmt *st = ss->st[ST_REV_GET];
    binder b = {.st = st, .rc = SQLITE_OK};
    bind_str(&b, 1, tenant_id);
    int err = 0;
    int rc = b.rc == SQLITE_OK ? sqlite3_step(st) : b.rc;
    if (rc == SQLITE_ROW) {
        *prev = sqlite3_column_int64(st, 0);
        *ptrimmed = sqlite3_column_int64(st, 1);
    } else if (rc == SQLITE_DONE) {
        *prev = 0;
        *ptrimmed = 0;
    } else {
        err = db_fail(ss, rc, "read the tenant's revision");
    }
    sqlite3_reset(st);
    return err;
}

/* Steps st (bound) to the end, each row read into a new element of a growing array of row_size
 * bytes (malloc'd: the caller frees *prows), its strings in a; resets st. Returns 0, PINS_ENOMEM
 * or the mapped error. */
static int collect(sqlite_session *ss, pins_arena *a, sqlite3_stmt *st, size_t row_size,
                   row_read_fn read, const char *what, void **prows, size_t *pn)
{
    unsigned char *rows = NULL;
    size_t n = 0, cap = 0;
    int err = 0;
    int rc = SQLITE_DONE;
    while (err == 0) {
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            break;
        if (n == cap) {
            size_t ncap = cap > 0 ? cap * 2 : 16;
            unsigned char *grown = realloc(rows, ncap * row_size);
            if (grown == NULL) {
                err = out_of_memory(ss, what);
                break;
            }
            rows = grown;
            cap = ncap;
        }
        if (read(st, a, rows + n * row_size) != 0)
            err = out_of_memory(ss, what);
        else
            n++;
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = db_fail(ss, rc, what);
    sqlite3_reset(st);
    if (err != 0) {
        free(rows);
        return err;
    }
    *prows = rows;
    *pn = n;
    return 0;
}

/* One page of a listing and the count of every match, read in one transaction so that they
 * agree: count (bound) yields the total, page (bound) at most limit rows, each copied into an
 * array in a by read. *prows, *pn and *ptotal are set on success, and with a tenant (pin
 * listings; NULL for the audits) *prev gets its revision read in the same transaction. */
static int read_page(sqlite_session *ss, pins_arena *a, sqlite3_stmt *count, sqlite3_stmt *page,
                     size_t limit, size_t row_size, row_read_fn read, const char *what,
                     const char *tenant, void **prows, size_t *pn, int64_t *ptotal, int64_t *prev)
{
    int err = run(ss, ss->st[ST_BEGIN], "start a read");
    if (err != 0)
        return err;
    int64_t revision = 0, trimmed;
    if (tenant != NULL) {
        err = read_revision(ss, tenant, &revision, &trimmed);
        if (err != 0)
            goto out;
    }
    int64_t total = 0;
    size_t n = 0;
    unsigned char *rows = pins_arena_calloc(a, limit, row_size);
    if (rows == NULL) {
        err = out_of_memory(ss, what);
        goto out;
    }
    int rc = sqlite3_step(count);
    if (rc == SQLITE_ROW)
        total = sqlite3_column_int64(count, 0);
    else
        err = db_fail(ss, rc, what);
    sqlite3_reset(count);
    if (err != 0)
        goto out;
    rc = SQLITE_DONE;
    while (err == 0 && n < limit) {
        rc = sqlite3_step(page);
        if (rc != SQLITE_ROW)
            break;
        if (read(page, a, rows + n * row_size) != 0)
            err = out_of_memory(ss, what);
        else
            n++;
    }
    if (err == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = db_fail(ss, rc, what);
    sqlite3_reset(page);
    if (err == 0)
        err = run(ss, ss->st[ST_COMMIT], "end the read");
    if (err == 0) {
        *prows = rows;
        *pn = n;
        *ptotal = total;
        if (prev != NULL)
            *prev = revision;
    }
out:
    if (err != 0)
        rollback(ss);
    return err;
}

/* Writes the memory_audit row of a change inside the caller's transaction. */
static int write_audit(sqlite_session *ss, pins_arena *a, const char *operation,
                       const char *tenant_id, const char *key, const char *source,
                       const store_audit_info *info, const char *old_hash, const char *new_hash,
                       int64_t now_us)
{
    const char *extra;
    size_t extra_len;
    if (audit_extra(a, info->request_id, &extra, &extra_len) != 0)
        return out_of_memory(ss, "writing the audit row");
    sqlite3_stmt *st = ss->st[ST_AUDIT_INSERT];
    binder b = {.st = st, .rc = SQLITE_OK};
    bind_int(&b, 1, now_us);
    bind_str(&b, 2, operation);
    bind_str(&b, 3, tenant_id);
    bind_str(&b, 4, key);
    bind_str(&b, 5, info->agent_id);
    bind_str(&b, 6, source);
    bind_double(&b, 7, info->latency_ms);
    bind_str(&b, 8, old_hash);
    bind_str(&b, 9, new_hash);
    bind_text(&b, 10, extra, extra_len);
    if (b.rc != SQLITE_OK)
        return db_fail(ss, b.rc, "bind the audit row");
    return run(ss, st, "write the audit row");
}

/* The row an upsert finds at (tenant_id, key). */
typedef struct current {
    bool exists;
    bool live; /* exists and unexpired at now */
    int64_t id;
    int64_t created_us;
    int64_t version;
    char hash[HASH_HEX + 1]; /* of the live value */
} current;

/* Reads the row at (tenant_id, key) inside the caller's transaction. */
static int find_current(sqlite_session *ss, const store_upsert_req *req, current *pcur)
{
    current cur = {.exists = false};
    int err = 0;
    sqlite3_stmt *find = ss->st[ST_PIN_FIND];
    binder b = {.st = find, .rc = SQLITE_OK};
    bind_str(&b, 1, req->tenant_id);
    bind_str(&b, 2, req->key);
    int rc = b.rc == SQLITE_OK ? sqlite3_step(find) : b.rc;
    if (rc == SQLITE_ROW) {
        cur.exists = true;
        cur.id = sqlite3_column_int64(find, PC_ID);
        cur.created_us = sqlite3_column_int64(find, PC_CREATED);
        cur.version = sqlite3_column_int64(find, PC_VERSION);
        cur.live = sqlite3_column_type(find, PC_EXPIRES) == SQLITE_NULL ||
                   sqlite3_column_int64(find, PC_EXPIRES) > req->now_us;
        if (cur.live) {
            const void *old = sqlite3_column_blob(find, PC_VALUE);
            size_t old_len = (size_t)sqlite3_column_bytes(find, PC_VALUE);
            err = value_hash(ss, old != NULL ? old : "", old_len, cur.hash);
        }
    } else if (rc != SQLITE_DONE) {
        err = db_fail(ss, rc, "look the pin up");
    }
    sqlite3_reset(find);
    if (err == 0)
        *pcur = cur;
    return err;
}

/* Binds an optional integer: v when has, else NULL. */
static void bind_opt_int(binder *b, int i, bool has, int64_t v)
{
    if (has)
        bind_int(b, i, v);
    else
        bind_null(b, i);
}

/* Takes the next revision of tenant_id inside the caller's transaction. */
static int next_revision(sqlite_session *ss, const char *tenant_id, int64_t *prev)
{
    sqlite3_stmt *st = ss->st[ST_REV_NEXT];
    binder b = {.st = st, .rc = SQLITE_OK};
    bind_str(&b, 1, tenant_id);
    int err = 0;
    int rc = b.rc == SQLITE_OK ? sqlite3_step(st) : b.rc;
    if (rc == SQLITE_ROW) {
        *prev = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st); /* run the statement to its end */
    }
    if (rc != SQLITE_DONE)
        err = db_fail(ss, rc, "take the next revision");
    sqlite3_reset(st);
    return err;
}

/* Adds the change of type to pin (with its revision) to the history, inside the caller's
 * transaction; ts is when it was written. */
static int record_change(sqlite_session *ss, int type, const store_pin *pin, int64_t ts)
{
    sqlite3_stmt *st = ss->st[ST_CHANGE_INSERT];
    binder b = {.st = st, .rc = SQLITE_OK};
    bind_int(&b, 1, type);
    bind_int(&b, 2, pin->id);
    bind_str(&b, 3, pin->tenant_id);
    bind_str(&b, 4, pin->key);
    bind_text(&b, 5, pin->value_json, pin->value_len);
    bind_str(&b, 6, pin->source);
    bind_int(&b, 7, pin->created_us);
    bind_int(&b, 8, pin->updated_us);
    bind_opt_int(&b, 9, pin->has_ttl, pin->ttl_seconds);
    bind_opt_int(&b, 10, pin->has_expires, pin->expires_us);
    bind_int(&b, 11, pin->version);
    bind_int(&b, 12, pin->revision);
    bind_int(&b, 13, ts);
    if (b.rc != SQLITE_OK)
        return db_fail(ss, b.rc, "bind the change");
    return run(ss, st, "record the change");
}

/* Updates the live pin cur or inserts a new one (after removing an expired cur), inside the
 * caller's transaction; pin gets the id, created_us and version written, and carries the revision
 * to write. */
static int write_pin(sqlite_session *ss, const store_upsert_req *req, const current *cur,
                     store_pin *pin)
{
    if (cur->exists && !cur->live) {
        /* An expired pin is gone for every reader: replace it by a new one. */
        binder d = {.st = ss->st[ST_PIN_DELETE], .rc = SQLITE_OK};
        bind_int(&d, 1, cur->id);
        int err = d.rc == SQLITE_OK ? run(ss, d.st, "replace the expired pin")
                                    : db_fail(ss, d.rc, "bind the expired pin");
        if (err != 0)
            return err;
    }
    binder b = {.st = ss->st[cur->live ? ST_PIN_UPDATE : ST_PIN_INSERT], .rc = SQLITE_OK};
    if (cur->live) {
        pin->id = cur->id;
        pin->created_us = cur->created_us;
        pin->version = cur->version + 1;
        bind_text(&b, 1, req->value_json, req->value_len);
        bind_str(&b, 2, req->source);
        bind_int(&b, 3, req->now_us);
        bind_opt_int(&b, 4, pin->has_ttl, pin->ttl_seconds);
        bind_opt_int(&b, 5, pin->has_expires, pin->expires_us);
        bind_int(&b, 6, pin->version);
        bind_int(&b, 7, cur->id);
        bind_int(&b, 8, pin->revision);
    } else {
        pin->created_us = req->now_us;
        pin->version = 1;
        bind_str(&b, 1, req->key);
        bind_str(&b, 2, req->tenant_id);
        bind_text(&b, 3, req->value_json, req->value_len);
        bind_str(&b, 4, req->source);
        bind_int(&b, 5, req->now_us);
        bind_opt_int(&b, 6, pin->has_ttl, pin->ttl_seconds);
        bind_opt_int(&b, 7, pin->has_expires, pin->expires_us);
        bind_int(&b, 8, pin->revision);
    }
    if (b.rc != SQLITE_OK)
        return db_fail(ss, b.rc, "bind the pin");
    int err = run(ss, b.st, "write the pin");
    if (err == 0 && !cur->live)
        pin->id = sqlite3_last_insert_rowid(ss->db);
    return err;
}

/* True for the outcomes that are a status of one call, not a failure of the store. */
static bool is_domain(int err)
{
    return err == PINS_ENOT_FOUND || err == PINS_EALREADY_EXISTS || err == PINS_EABORTED;
}

/* value_json[0..len) packed into a (store__pack_value), the Struct built in the session's pack
 * arena. Also PINS_EINVALID_ARGUMENT when the value is too large to cache. */
static int pack_value(sqlite_session *ss, pins_arena *a, const char *json, size_t len,
                      const uint8_t **ppb, size_t *plen)
{
    if (len > STORE_CACHE_VALUE_MAX)
        return PINS_EINVALID_ARGUMENT;
    if (ss->pack == NULL) {
        ss->pack = pins_arena_new(0);
        if (ss->pack == NULL)
            return PINS_ENOMEM;
    }
    return store__pack_value(ss->pack, a, json, len, ppb, plen);
}

/* The upsert of op inside the batch's transaction; on success op->pin is the pin as written
 * (strings borrowed from op->up, in the batch arena). Returns 0, a domain code (nothing written)
 * or a failure (the transaction must be rolled back). */
static int upsert_op(sqlite_session *ss, pins_arena *a, write_op *op)
{
    const store_upsert_req *req = &op->up;
    current cur;
    int err = find_current(ss, req, &cur);
    if (err != 0)
        return err;
    if (req->has_expected_version) {
        if (req->expected_version == 0 && cur.live)
            return PINS_EALREADY_EXISTS;
        if (req->expected_version != 0 && (!cur.live || cur.version != req->expected_version))
            return PINS_EABORTED;
    }
    store_pin pin = {
        .tenant_id = req->tenant_id,
        .key = req->key,
        .value_json = req->value_json,
        .value_len = req->value_len,
        .source = req->source,
        .updated_us = req->now_us,
        .has_ttl = req->has_ttl,
        .ttl_seconds = req->has_ttl ? req->ttl_seconds : 0,
        .has_expires = req->has_ttl,
        .expires_us = req->has_ttl ? req->now_us + (int64_t)req->ttl_seconds * 1000000 : 0,
        .value_pb = req->value_pb,
        .value_pb_len = req->value_pb != NULL ? req->value_pb_len : 0,
    };
    err = next_revision(ss, req->tenant_id, &pin.revision);
    if (err == 0)
        err = write_pin(ss, req, &cur, &pin);
    if (err == 0)
        err = record_change(ss, STORE_CHANGE_PUT, &pin, req->now_us);
    if (err == 0)
        err = write_audit(ss, a, "upsert", req->tenant_id, req->key, req->source, &req->audit,
                          cur.live ? cur.hash : NULL, req->value_hash, req->now_us);
    if (err == 0) {
        op->pin = pin;
        op->created = !cur.live;
    }
    return err;
}

/* The delete of op inside the batch's transaction; on success op->pin is the pin as it was
 * (strings in a, no value_pb) with the revision of the delete. Returns 0, a domain code (nothing
 * written) or a failure. */
static int delete_op(sqlite_session *ss, pins_arena *a, write_op *op)
{
    const store_delete_req *req = &op->del;
    sqlite3_stmt *find = ss->st[ST_PIN_FIND];
    binder b = {.st = find, .rc = SQLITE_OK};
    bind_str(&b, 1, req->tenant_id);
    bind_str(&b, 2, req->key);
    char old_hash[HASH_HEX + 1] = "";
    store_pin old;
    int err = 0;
    int rc = b.rc == SQLITE_OK ? sqlite3_step(find) : b.rc;
    if (rc == SQLITE_ROW) {
        if (read_pin(find, a, &old) != 0)
            err = out_of_memory(ss, "copying the deleted pin");
        else
            err = value_hash(ss, old.value_json, old.value_len, old_hash);
    } else if (rc == SQLITE_DONE) {
        err = PINS_ENOT_FOUND;
    } else {
        err = db_fail(ss, rc, "look the pin up");
    }
    sqlite3_reset(find);
    if (err != 0)
        return err;
    if (req->has_expected_version && old.version != req->expected_version)
        return PINS_EABORTED;
    err = next_revision(ss, req->tenant_id, &old.revision);
    if (err != 0)
        return err;
    sqlite3_stmt *del = ss->st[ST_PIN_DELETE];
    rc = sqlite3_bind_int64(del, 1, old.id);
    if (rc != SQLITE_OK)
        return db_fail(ss, rc, "bind the pin");
    err = run(ss, del, "delete the pin");
    if (err == 0)
        err = record_change(ss, STORE_CHANGE_DELETE, &old, req->now_us);
    if (err == 0)
        err = write_audit(ss, a, "delete", req->tenant_id, req->key, old.source, &req->audit,
                          old_hash, NULL, req->now_us);
    if (err == 0)
        op->pin = old;
    return err;
}

/* COMMIT of a write transaction (or the failure a test asked for). */
static int commit(sqlite_session *ss)
{
    if (ss->commit_fault != 0) {
        int rc = ss->commit_fault;
        ss->commit_fault = 0;
        store__session_error(&ss->base, "could not commit the writes: injected (sqlite error %d)",
                             rc);
        store__count_error(error_kind(rc)); /* as the failure it stands for would be */
        return map_rc(rc);
    }
    return run(ss, ss->st[ST_COMMIT], "commit the writes");
}

/* One attempt at b: BEGIN IMMEDIATE, every operation not failed on its own, COMMIT. Returns 0
 * once committed. Otherwise rolls back and returns the error, with *pbad the index of the
 * operation that failed on its own (PINS_ENOMEM, PINS_EINTERNAL: retry without it), or b->n when
 * the batch as a whole failed (BEGIN, COMMIT, an I/O or lock failure: PINS_ESTORE). */
static int attempt(sqlite_session *ss, batch *b, size_t *pbad)
{
    *pbad = b->n;
    int err = run(ss, ss->st[ST_BEGIN_IMMEDIATE], "start a write");
    for (size_t i = 0; i < b->n && err == 0; i++) {
        write_op *op = &b->ops[i];
        if (op->failed)
            continue;
        int rv = 0;
        switch (op->kind) {
        case WRITE_UPSERT:
            rv = upsert_op(ss, b->arena, op);
            break;
        case WRITE_DELETE:
            rv = delete_op(ss, b->arena, op);
            break;
        }
        op->err = rv;
        if (rv != 0 && !is_domain(rv)) {
            err = rv;
            if (rv != PINS_ESTORE)
                *pbad = i;
        }
    }
    if (err == 0)
        err = commit(ss);
    if (err != 0)
        rollback(ss);
    return err;
}

/* Hands one committed change to the feed. Write mutex held, feed started. */
static void feed_emit(sqlite_store *s, int type, const store_pin *pin)
{
    const store_change ch = {.type = type, .pin = *pin};
    s->feed_fn(s->feed_arg, &ch);
}

/* Gives pin (a row about to leave the cache: deleted or reclaimed) the packed value the cache
 * holds for this very row, copied into a; pin is left as it is when the cache has no such row.
 * Write mutex held, before the change reaches the cache. */
static void cached_pb(store_cache *c, pins_arena *a, store_pin *pin)
{
    store_pin hit;
    store_cache_result res = STORE_CACHE_MISS;
    uint64_t gen;
    /* INT64_MIN as now: an expired row is still this row, and the lookup must not drop it. */
    if (store_cache_get(c, pin->tenant_id, pin->key, INT64_MIN, a, &hit, &res, &gen) != 0 ||
        res != STORE_CACHE_HIT || hit.id != pin->id || hit.version != pin->version ||
        hit.value_pb == NULL)
        return;
    pin->value_pb = hit.value_pb;
    pin->value_pb_len = hit.value_pb_len;
}

/* Runs b in one transaction under the write mutex and, once committed, applies it to the cache
 * and hands its changes to the feed, in commit order (still under the mutex). Every operation
 * ends with its outcome in err. */
static void run_batch(sqlite_session *ss, batch *b)
{
    sqlite_store *s = (sqlite_store *)ss->base.store;
    ss->stats.batches++;
    ss->stats.batched_ops += b->n;
    int lock_err = writes_lock(ss, "start a write");
    if (lock_err != 0) {
        const char *detail = pins_arena_strdup(b->arena, ss->base.last_error);
        for (size_t i = 0; i < b->n; i++) {
            if (!b->ops[i].failed) {
                b->ops[i].err = lock_err;
                b->ops[i].detail = detail;
            }
        }
        return;
    }
    for (;;) {
        size_t bad;
        int err = attempt(ss, b, &bad);
        if (err == 0)
            break;
        const char *detail = pins_arena_strdup(b->arena, ss->base.last_error);
        if (bad < b->n) {
            /* Only this operation is at fault: the others run again without it. */
            b->ops[bad].failed = true;
            b->ops[bad].err = err;
            b->ops[bad].detail = detail;
            continue;
        }
        for (size_t i = 0; i < b->n; i++) {
            if (!b->ops[i].failed) {
                b->ops[i].err = err;
                b->ops[i].detail = detail;
            }
        }
        writes_unlock(ss);
        return;
    }
    ss->stats.write_commits++;
    bool feed = s->feed_fn != NULL;
    for (size_t i = 0; i < b->n; i++) {
        const write_op *op = &b->ops[i];
        if (op->err != 0)
            continue;
        switch (op->kind) {
        case WRITE_UPSERT:
            store_cache_put(s->cache, &op->pin);
            if (feed)
                feed_emit(s, STORE_CHANGE_PUT, &op->pin);
            break;
        case WRITE_DELETE: {
            store_pin was = op->pin;
            if (feed)
                cached_pb(s->cache, b->arena, &was);
            store_cache_remove(s->cache, op->del.tenant_id, op->del.key);
            if (feed)
                feed_emit(s, STORE_CHANGE_DELETE, &was);
            break;
        }
        }
    }
    writes_unlock(ss);
}

/* Puts b back on the session's spare list (one spare kept, the rest freed). */
static void batch_recycle(sqlite_session *ss, batch *b)
{
    pins_arena_reset(b->arena);
    b->n = 0;
    b->bytes = 0;
    if (ss->spare == NULL) {
        b->next = NULL;
        ss->spare = b;
        return;
    }
    pins_arena_free(b->arena);
    free(b->ops);
    free(b);
}

/* Calls every callback of b in queue order with its outcome, then recycles b. */
static void complete_batch(sqlite_session *ss, batch *b)
{
    ss->depth++;
    for (size_t i = 0; i < b->n; i++) {
        const write_op *op = &b->ops[i];
        if (op->err == PINS_ESTORE || op->err == PINS_ENOMEM || op->err == PINS_EINTERNAL)
            snprintf(ss->base.last_error, sizeof(ss->base.last_error), "%s",
                     op->detail != NULL ? op->detail : "");
        else
            ss->base.last_error[0] = '\0';
        op->cb(op->arg, op->err, op->err == 0 ? &op->pin : NULL, op->created);
    }
    ss->depth--;
    batch_recycle(ss, b);
}

/* Commits the pending batch, if any, and runs its callbacks. A callback may queue new writes:
 * they go to a new batch. */
static void flush_pending(sqlite_session *ss)
{
    batch *b = ss->pending;
    if (b == NULL)
        return;
    ss->pending = NULL;
    if (b->n > 0)
        run_batch(ss, b);
    complete_batch(ss, b);
}

static void on_flush(void *arg)
{
    flush_pending(arg);
}

/* A slot at the end of the pending batch (created on demand) for a write of kind answered by cb;
 * the caller copies its request into the batch's arena and calls op_queued(). Returns 0,
 * PINS_EINTERNAL (nested too deeply), PINS_ECANCELLED (the session is being freed),
 * PINS_ENOMEM. */
static int op_new(sqlite_session *ss, write_kind kind, store_pin_cb cb, void *arg, write_op **pop)
{
    if (ss->closing)
        return PINS_ECANCELLED;
    if (ss->depth >= SCRATCH_DEPTH) {
        store__session_error(&ss->base, "operations nested more than %d deep in callbacks",
                             SCRATCH_DEPTH);
        return PINS_EINTERNAL;
    }
    batch *b = ss->pending;
    if (b == NULL && ss->spare != NULL) {
        b = ss->spare;
        ss->spare = NULL;
    } else if (b == NULL) {
        b = calloc(1, sizeof(*b));
        if (b == NULL)
            return out_of_memory(ss, "queueing a write");
        b->arena = pins_arena_new(0);
        if (b->arena == NULL) {
            free(b);
            return out_of_memory(ss, "queueing a write");
        }
    }
    ss->pending = b;
    if (b->n == b->cap) {
        size_t cap = b->cap > 0 ? b->cap * 2 : 16;
        write_op *ops = realloc(b->ops, cap * sizeof(*ops));
        if (ops == NULL)
            return out_of_memory(ss, "queueing a write");
        b->ops = ops;
        b->cap = cap;
    }
    write_op *op = &b->ops[b->n];
    *op = (write_op){.kind = kind, .cb = cb, .arg = arg};
    b->mark = pins_arena_used(b->arena);
    *pop = op;
    return 0;
}

/* Adds the slot op_new() gave to the pending batch when its copies succeeded (err 0), and commits
 * the batch now when it is full or the session has no loop, else at the end of the loop iteration.
 * Returns 0 or PINS_ENOMEM (err). */
static int op_queued(sqlite_session *ss, int err)
{
    if (err != 0)
        return out_of_memory(ss, "queueing a write");
    batch *b = ss->pending;
    b->n++;
    b->bytes += pins_arena_used(b->arena) - b->mark;
    if (ss->flush == NULL || b->n >= STORE_SQLITE_BATCH_MAX_OPS ||
        b->bytes >= STORE__BATCH_MAX_BYTES)
        flush_pending(ss);
    else if (b->n == 1)
        store__defer_arm(ss->flush);
    return 0;
}

/* Replaces each of the n strings *strs[i] by a copy in a (NULL stays NULL). Returns 0 or
 * PINS_ENOMEM. */
static int copy_strs(pins_arena *a, const char **const strs[], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (*strs[i] == NULL)
            continue;
        const char *copy = pins_arena_strdup(a, *strs[i]);
        if (copy == NULL)
            return PINS_ENOMEM;
        *strs[i] = copy;
    }
    return 0;
}

static int sqlite_pin_upsert(store_session *base, const store_upsert_req *req, store_pin_cb cb,
                             void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    write_op *op;
    int err = op_new(ss, WRITE_UPSERT, cb, arg, &op);
    if (err != 0)
        return err;
    pins_arena *a = ss->pending->arena;
    op->up = *req;
    store_upsert_req *r = &op->up;
    r->value_json = pins_arena_strndup(a, req->value_json, req->value_len);
    const char **const strs[] = {&r->tenant_id,      &r->key,
                                 &r->source,         &r->value_hash,
                                 &r->audit.agent_id, &r->audit.request_id};
    err = r->value_json != NULL ? copy_strs(a, strs, sizeof(strs) / sizeof(strs[0])) : PINS_ENOMEM;
    if (err == 0 && req->value_pb != NULL) {
        uint8_t *pb = pins_arena_alloc(a, req->value_pb_len > 0 ? req->value_pb_len : 1);
        if (pb == NULL)
            err = PINS_ENOMEM;
        else if (req->value_pb_len > 0)
            memcpy(pb, req->value_pb, req->value_pb_len);
        r->value_pb = pb;
    } else if (err == 0) {
        r->value_pb = NULL;
        r->value_pb_len = 0;
        pack_value(ss, a, r->value_json, r->value_len, &r->value_pb, &r->value_pb_len);
    }
    return op_queued(ss, err);
}

/* The row at (tenant_id, key) live at now from SQLite, packed, offered to the cache with the
 * generation gen of the miss. */
static int read_and_fill(sqlite_session *ss, pins_arena *a, const store__get_req *req, uint64_t gen,
                         store_pin *ppin)
{
    store_cache *cache = ((sqlite_store *)ss->base.store)->cache;
    ss->stats.cache_misses++;
    store_pin pin;
    int err = 0;
    sqlite3_stmt *st = ss->st[ST_PIN_GET];
    binder b = {.st = st, .rc = SQLITE_OK};
    bind_str(&b, 1, req->tenant_id);
    bind_str(&b, 2, req->key);
    bind_int(&b, 3, req->now_us);
    int rc = b.rc == SQLITE_OK ? sqlite3_step(st) : b.rc;
    if (rc == SQLITE_ROW) {
        if (read_pin(st, a, &pin) != 0)
            err = out_of_memory(ss, "copying the pin");
    } else if (rc == SQLITE_DONE) {
        err = PINS_ENOT_FOUND;
    } else {
        err = db_fail(ss, rc, "read the pin");
    }
    sqlite3_reset(st);
    if (err != 0)
        return err;
    pack_value(ss, a, pin.value_json, pin.value_len, &pin.value_pb, &pin.value_pb_len);
    if (ss->fill_hook != NULL)
        ss->fill_hook(ss->fill_arg);
    store_cache_fill_result res = store_cache_fill(cache, &pin, gen);
    if (res == STORE_CACHE_FILLED)
        ss->stats.cache_fills++;
    else if (res == STORE_CACHE_STALE)
        ss->stats.cache_refused++;
    *ppin = pin;
    return 0;
}

static int sqlite_pin_get(store_session *base, const store__get_req *req, store_pin_cb cb,
                          void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    store_cache *cache = ((sqlite_store *)base->store)->cache;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_pin pin;
    store_cache_result res = STORE_CACHE_MISS;
    uint64_t gen = 0;
    err = store_cache_get(cache, req->tenant_id, req->key, req->now_us, a, &pin, &res, &gen);
    if (err != 0) {
        err = out_of_memory(ss, "copying the pin");
    } else if (res == STORE_CACHE_MISS) {
        err = read_and_fill(ss, a, req, gen, &pin);
        if (err == 0) /* an absent pin is never cached: its read is not a miss of the cache */
            store__count_read(base, false);
    } else {
        store__count_read(base, true);
        ss->stats.cache_hits++;
        pin.from_cache = true;
        if (res == STORE_CACHE_EXPIRED)
            err = PINS_ENOT_FOUND;
    }
    ss->depth++;
    cb(arg, err, err == 0 ? &pin : NULL, false);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

/* Binds the filters shared by the listing and its count (LIST_WHERE). */
static void bind_list_where(binder *b, const store_list_req *req)
{
    bind_str(b, 1, req->tenant_id);
    bind_str(b, 2, req->prefix);
    bind_int(b, 3, req->include_expired);
    bind_int(b, 4, req->now_us);
}

static int list_tx(sqlite_session *ss, pins_arena *a, const store_list_req *req, store_pin **ppins,
                   size_t *pn, int64_t *ptotal, int64_t *prev)
{
    binder count = {.st = ss->st[ST_LIST_COUNT], .rc = SQLITE_OK};
    bind_list_where(&count, req);
    binder page = {.st = ss->st[req->has_cursor ? ST_LIST_CURSOR : ST_LIST], .rc = SQLITE_OK};
    bind_list_where(&page, req);
    if (req->has_cursor) {
        bind_int(&page, 5, req->cursor_created_us);
        bind_int(&page, 6, req->cursor_id);
        bind_int(&page, 7, req->limit);
    } else {
        bind_int(&page, 5, req->limit);
        bind_int(&page, 6, req->offset);
    }
    if (count.rc != SQLITE_OK || page.rc != SQLITE_OK)
        return db_fail(ss, count.rc != SQLITE_OK ? count.rc : page.rc, "bind the pin listing");
    void *rows;
    int err = read_page(ss, a, count.st, page.st, (size_t)req->limit, sizeof(store_pin),
                        read_pin_row, "list pins", req->tenant_id, &rows, pn, ptotal, prev);
    if (err == 0)
        *ppins = rows;
    return err;
}

static int sqlite_pin_list(store_session *base, const store_list_req *req, store_list_cb cb,
                           void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_pin *pins = NULL;
    size_t n = 0;
    int64_t total = 0, revision = 0;
    err = list_tx(ss, a, req, &pins, &n, &total, &revision);
    ss->depth++;
    cb(arg, err, pins, n, total, revision);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

static int sqlite_pin_delete(store_session *base, const store_delete_req *req, store_pin_cb cb,
                             void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    write_op *op;
    int err = op_new(ss, WRITE_DELETE, cb, arg, &op);
    if (err != 0)
        return err;
    op->del = *req;
    store_delete_req *r = &op->del;
    const char **const strs[] = {&r->tenant_id, &r->key, &r->audit.agent_id, &r->audit.request_id};
    return op_queued(ss, copy_strs(ss->pending->arena, strs, sizeof(strs) / sizeof(strs[0])));
}

/* Background maintenance (the sweeper, the audit and history retention) runs on a worker's loop
 * and comes back next tick: its whole wait (the mutex, then another process's lock) is bounded by
 * STORE__BACKGROUND_BUSY_MS, so that another process holding the database does not stall the
 * worker's calls for the full busy timeout per job. Returns the session's busy timeout, for
 * the caller to restore once it holds its locks. */
static int background_timeout(sqlite_session *ss, bool background)
{
    int timeout_ms = ss->busy.timeout_ms;
    if (background && timeout_ms > STORE__BACKGROUND_BUSY_MS)
        ss->busy.timeout_ms = STORE__BACKGROUND_BUSY_MS;
    return timeout_ms;
}

/* Runs a DELETE of audit rows whose parameters are bound (b->rc), as its own transaction under
 * the write mutex, and reports the rows removed to cb. */
static int delete_count(sqlite_session *ss, binder *b, const char *what, bool background,
                        store_count_cb cb, void *arg)
{
    int64_t count = 0;
    int timeout_ms = background_timeout(ss, background);
    int err = writes_lock(ss, what);
    bool locked = err == 0;
    if (locked)
        err = b->rc == SQLITE_OK ? run(ss, b->st, what) : db_fail(ss, b->rc, what);
    ss->busy.timeout_ms = timeout_ms;
    if (err == 0) {
        ss->stats.write_commits++;
        count = sqlite3_changes64(ss->db);
    }
    sqlite3_clear_bindings(b->st);
    if (locked)
        writes_unlock(ss);
    ss->depth++;
    cb(arg, err, count);
    ss->depth--;
    return 0;
}

/* Takes the write mutex and opens a write transaction of its own (not the group commit), for
 * maintenance when background. Returns 0 with the mutex held, or the error with nothing held. */
static int own_write_begin(sqlite_session *ss, const char *what, bool background)
{
    int timeout_ms = background_timeout(ss, background);
    int err = writes_lock(ss, what);
    if (err == 0) {
        err = run(ss, ss->st[ST_BEGIN_IMMEDIATE], "start a write");
        if (err != 0)
            writes_unlock(ss);
    }
    ss->busy.timeout_ms = timeout_ms;
    return err;
}

/* Ends what own_write_begin() opened: commits when err is 0, else rolls back. Returns the
 * outcome; the mutex stays held. */
static int own_write_end(sqlite_session *ss, int err)
{
    if (err == 0)
        err = commit(ss);
    if (err != 0)
        rollback(ss);
    else
        ss->stats.write_commits++;
    return err;
}

/* Reclaims the expired pins that the bound (b->rc) DELETE ... RETURNING b->st removes (a sweep, or
 * a cleanup of expired->tenant_id, NULL for all, at expired->now_us) in one transaction under the
 * write mutex: each pin takes its tenant's next revision and is kept in the history as an EXPIRE
 * change. After COMMIT, still under the mutex, the cache drops what may have been deleted and the
 * feed gets the changes. Reports the pins reclaimed to cb. */
static int reclaim_expired(sqlite_session *ss, binder *b, const char *what,
                           const store__cleanup_req *expired, bool background, store_count_cb cb,
                           void *arg)
{
    sqlite_store *s = (sqlite_store *)ss->base.store;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0) {
        sqlite3_clear_bindings(b->st);
        return err;
    }
    void *rows = NULL;
    size_t n = 0;
    err = own_write_begin(ss, what, background);
    bool locked = err == 0;
    if (locked) {
        if (b->rc == SQLITE_OK)
            err = collect(ss, a, b->st, sizeof(store_pin), read_pin_row, what, &rows, &n);
        else
            err = db_fail(ss, b->rc, what);
        store_pin *pins = rows;
        for (size_t i = 0; i < n && err == 0; i++) {
            err = next_revision(ss, pins[i].tenant_id, &pins[i].revision);
            if (err == 0)
                err = record_change(ss, STORE_CHANGE_EXPIRE, &pins[i], expired->now_us);
        }
        err = own_write_end(ss, err);
    }
    sqlite3_clear_bindings(b->st);
    if (err == 0 && n > 0) {
        store_pin *pins = rows;
        bool feed = s->feed_fn != NULL;
        for (size_t i = 0; i < n && feed; i++)
            cached_pb(s->cache, a, &pins[i]);
        store_cache_remove_expired(s->cache, expired->tenant_id, expired->now_us);
        for (size_t i = 0; i < n && feed; i++)
            feed_emit(s, STORE_CHANGE_EXPIRE, &pins[i]);
    }
    if (locked)
        writes_unlock(ss);
    free(rows);
    ss->depth++;
    cb(arg, err, err == 0 ? (int64_t)n : 0);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

static int sqlite_pin_cleanup(store_session *base, const store__cleanup_req *req, store_count_cb cb,
                              void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    binder b;
    if (req->tenant_id != NULL) {
        b = (binder){.st = ss->st[ST_CLEANUP_TENANT], .rc = SQLITE_OK};
        bind_str(&b, 1, req->tenant_id);
        bind_int(&b, 2, req->now_us);
    } else {
        b = (binder){.st = ss->st[ST_CLEANUP_ALL], .rc = SQLITE_OK};
        bind_int(&b, 1, req->now_us);
    }
    return reclaim_expired(ss, &b, "delete expired pins", req, false, cb, arg);
}

static int sqlite_pin_sweep(store_session *base, const store__sweep_req *req, store_count_cb cb,
                            void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    binder b = {.st = ss->st[ST_SWEEP], .rc = SQLITE_OK};
    bind_int(&b, 1, req->now_us);
    bind_int(&b, 2, req->batch);
    const store__cleanup_req all = {.tenant_id = NULL, .now_us = req->now_us};
    return reclaim_expired(ss, &b, "sweep expired pins", &all, true, cb, arg);
}

static int audit_tx(sqlite_session *ss, pins_arena *a, const store_audit_list_req *req,
                    store_memory_audit **prows, size_t *pn, int64_t *ptotal)
{
    unsigned mask = (req->tenant_id != NULL ? AUDIT_TENANT : 0) |
                    (req->key != NULL ? AUDIT_KEY : 0) |
                    (req->operation != NULL ? AUDIT_OPERATION : 0);
    binder count = {.rc = SQLITE_OK};
    binder page = {.rc = SQLITE_OK};
    int err = audit_stmt(ss, mask, true, &count.st);
    if (err == 0)
        err = audit_stmt(ss, mask, false, &page.st);
    if (err != 0)
        return err;
    binder *both[] = {&count, &page};
    for (size_t i = 0; i < 2; i++) {
        if (mask & AUDIT_TENANT)
            bind_str(both[i], 1, req->tenant_id);
        if (mask & AUDIT_KEY)
            bind_str(both[i], 2, req->key);
        if (mask & AUDIT_OPERATION)
            bind_str(both[i], 3, req->operation);
    }
    bind_int(&page, 4, req->limit);
    bind_int(&page, 5, req->offset);
    if (count.rc != SQLITE_OK || page.rc != SQLITE_OK)
        return db_fail(ss, count.rc != SQLITE_OK ? count.rc : page.rc, "bind the audit listing");
    void *rows;
    err = read_page(ss, a, count.st, page.st, (size_t)req->limit, sizeof(store_memory_audit),
                    read_audit_row, "list audit rows", NULL, &rows, pn, ptotal, NULL);
    if (err == 0)
        *prows = rows;
    return err;
}

static int sqlite_audit_list(store_session *base, const store_audit_list_req *req,
                             store_audit_list_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_memory_audit *rows = NULL;
    size_t n = 0;
    int64_t total = 0;
    err = audit_tx(ss, a, req, &rows, &n, &total);
    ss->depth++;
    cb(arg, err, rows, n, total);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

static int sqlite_ping(store_session *base, store_count_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    int err = run(ss, ss->st[ST_PING], "ping the database");
    ss->depth++;
    cb(arg, err, 0);
    ss->depth--;
    return 0;
}

/* ---- audit rows written in batches ---------------------------------------------------------- */

typedef int (*bind_row_fn)(binder *b, const void *rows, size_t i, pins_buf *scratch);

static int bind_memory_row(binder *b, const void *rows, size_t i, pins_buf *scratch)
{
    const store_memory_audit *r = &((const store_memory_audit *)rows)[i];
    /* A read summary's extra, {"reads":N,"keys":{...}}, put together here from the keys' JSON
     * (built by rpc/audit.c) rather than by json_object(), which would parse those bytes again. */
    pins_buf_reset(scratch);
    if (r->keys != NULL) {
        char num[PINS_FMT_INT_MAX];
        (void)pins_buf_add_str(scratch, "{\"reads\":");
        (void)pins_buf_add(scratch, num, (size_t)(pins_fmt_i64(num, r->reads) - num));
        (void)pins_buf_add_str(scratch, ",\"keys\":");
        (void)pins_buf_add_str(scratch, r->keys);
        (void)pins_buf_add_byte(scratch, '}');
        if (pins_buf_error(scratch) != 0)
            return PINS_ENOMEM;
    }
    bind_int(b, 1, r->ts_us);
    bind_str(b, 2, r->operation);
    bind_str(b, 3, r->tenant_id);
    bind_str(b, 4, r->key);
    bind_str(b, 5, r->agent_id);
    bind_str(b, 6, r->source);
    bind_int(b, 7, r->cache_hit);
    bind_double(b, 8, r->latency_ms);
    bind_int(b, 9, r->success);
    bind_str(b, 10, r->error_message);
    bind_str(b, 11, r->old_value_hash);
    bind_str(b, 12, r->new_value_hash);
    bind_int(b, 13, r->reads);
    if (r->keys != NULL)
        bind_text(b, 14, pins_buf_ptr(scratch), pins_buf_len(scratch));
    else
        bind_str(b, 14, NULL);
    return 0;
}

static int bind_rbac_row(binder *b, const void *rows, size_t i, pins_buf *scratch)
{
    const store_rbac_audit *r = &((const store_rbac_audit *)rows)[i];
    pins_buf_reset(scratch);
    store__json_strs(scratch, r->roles, r->nroles);
    if (pins_buf_error(scratch) != 0)
        return PINS_ENOMEM;
    bind_int(b, 1, r->ts_us);
    bind_str(b, 2, r->subject);
    bind_str(b, 3, r->resource);
    bind_str(b, 4, r->action);
    bind_int(b, 5, r->allowed);
    bind_str(b, 6, r->reason);
    bind_text(b, 7, pins_buf_ptr(scratch), pins_buf_len(scratch));
    bind_str(b, 8, r->path);
    bind_str(b, 9, r->method);
    bind_str(b, 10, r->tenant_id);
    bind_str(b, 11, r->request_id);
    bind_double(b, 12, r->latency_ms);
    bind_int(b, 13, r->count);
    return 0;
}

/* Inserts rows[0..n) with st in one transaction of their own under the write mutex (not part of
 * the pins' group commit) and reports how many were written: all of them or, on failure, none. */
static int insert_rows(sqlite_session *ss, sqlite3_stmt *st, const void *rows, size_t n,
                       bind_row_fn bind, const char *what, store_count_cb cb, void *arg)
{
    pins_buf scratch;
    pins_buf_init(&scratch, SIZE_MAX); /* one row's roles, which the caller collected */
    int err = writes_lock(ss, what);
    if (err != 0) {
        ss->depth++;
        cb(arg, err, 0);
        ss->depth--;
        return 0;
    }
    err = run(ss, ss->st[ST_BEGIN_IMMEDIATE], "start a write");
    for (size_t i = 0; i < n && err == 0; i++) {
        binder b = {.st = st, .rc = SQLITE_OK};
        err = bind(&b, rows, i, &scratch);
        if (err != 0)
            err = out_of_memory(ss, what);
        else if (b.rc != SQLITE_OK)
            err = db_fail(ss, b.rc, what);
        else
            err = run(ss, st, what);
        sqlite3_clear_bindings(st);
    }
    if (err == 0)
        err = commit(ss);
    if (err != 0)
        rollback(ss);
    else
        ss->stats.write_commits++;
    writes_unlock(ss);
    pins_buf_free(&scratch);
    ss->depth++;
    cb(arg, err, err == 0 ? (int64_t)n : 0);
    ss->depth--;
    return 0;
}

static int sqlite_memory_audit_write(store_session *base, const store_memory_audit *rows, size_t n,
                                     store_count_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    return insert_rows(ss, ss->st[ST_MAUDIT_WRITE], rows, n, bind_memory_row,
                       "write memory audit rows", cb, arg);
}

static int sqlite_rbac_audit_write(store_session *base, const store_rbac_audit *rows, size_t n,
                                   store_count_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    return insert_rows(ss, ss->st[ST_RAUDIT_WRITE], rows, n, bind_rbac_row, "write rbac audit rows",
                       cb, arg);
}

/* The current row of an RAUDIT_COLS statement, strings copied into a. Returns 0 or PINS_ENOMEM. */
static int read_rbac_row(sqlite3_stmt *st, pins_arena *a, void *prow)
{
    store_rbac_audit r = {
        .id = sqlite3_column_int64(st, 0),
        .ts_us = sqlite3_column_int64(st, 1),
        .allowed = sqlite3_column_int(st, 5) != 0,
        .latency_ms = sqlite3_column_double(st, 12),
    };
    const struct {
        int col;
        const char **field;
    } texts[] = {
        {2, &r.subject}, {3, &r.resource}, {4, &r.action},     {6, &r.reason},
        {8, &r.path},    {9, &r.method},   {10, &r.tenant_id}, {11, &r.request_id},
    };
    size_t len;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        if (col_text(st, texts[i].col, a, texts[i].field, &len) != 0)
            return PINS_ENOMEM;
    }
    const char *roles;
    if (col_text(st, 7, a, &roles, &len) != 0 ||
        store__split_roles(a, roles, &r.roles, &r.nroles) != 0)
        return PINS_ENOMEM;
    *(store_rbac_audit *)prow = r;
    return 0;
}

static void bind_rbac_where(binder *b, const store_rbac_audit_list_req *req)
{
    bind_str(b, 1, req->resource);
    bind_str(b, 2, req->action);
    bind_str(b, 3, req->subject);
    bind_str(b, 4, req->tenant_id);
    if (req->has_allowed)
        bind_int(b, 5, req->allowed);
    else
        bind_null(b, 5);
    if (req->has_since)
        bind_int(b, 6, req->since_us);
    else
        bind_null(b, 6);
}

static int sqlite_rbac_audit_list(store_session *base, const store_rbac_audit_list_req *req,
                                  store_rbac_audit_list_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    binder count = {.st = ss->st[ST_RAUDIT_COUNT], .rc = SQLITE_OK};
    binder page = {.st = ss->st[ST_RAUDIT_LIST], .rc = SQLITE_OK};
    bind_rbac_where(&count, req);
    bind_rbac_where(&page, req);
    bind_int(&page, 7, req->limit);
    bind_int(&page, 8, req->offset);
    void *rows = NULL;
    size_t n = 0;
    int64_t total = 0;
    if (count.rc != SQLITE_OK || page.rc != SQLITE_OK)
        err =
            db_fail(ss, count.rc != SQLITE_OK ? count.rc : page.rc, "bind the rbac audit listing");
    else
        err = read_page(ss, a, count.st, page.st, (size_t)req->limit, sizeof(store_rbac_audit),
                        read_rbac_row, "list rbac audit rows", NULL, &rows, &n, &total, NULL);
    ss->depth++;
    cb(arg, err, err == 0 ? rows : NULL, err == 0 ? n : 0, err == 0 ? total : 0);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

static int sqlite_rbac_audit_cleanup(store_session *base, int64_t before_us, store_count_cb cb,
                                     void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    binder b = {.st = ss->st[ST_RAUDIT_CLEANUP], .rc = SQLITE_OK};
    bind_int(&b, 1, before_us);
    return delete_count(ss, &b, "delete old rbac audit rows", false, cb, arg);
}

static int sqlite_audit_expire(store_session *base, const store__expire_req *req, store_count_cb cb,
                               void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    bool rbac = req->table == STORE_AUDIT_RBAC;
    const char *what = rbac ? "expire rbac audit rows" : "expire memory audit rows";
    binder b = {.st = ss->st[rbac ? ST_RAUDIT_EXPIRE : ST_MAUDIT_EXPIRE], .rc = SQLITE_OK};
    bind_int(&b, 1, req->before_us);
    bind_int(&b, 2, req->batch);
    return delete_count(ss, &b, what, true, cb, arg);
}

/* ---- revisions and the change feed ---------------------------------------------------------- */

/* The history of req->tenant_id after req->after, read in one transaction with the tenant's
 * revisions: *pchanges (in a) and *pn on success; *platest also with PINS_EOUT_OF_RANGE. */
static int changes_tx(sqlite_session *ss, pins_arena *a, const store__changes_req *req,
                      store_change **pchanges, size_t *pn, int64_t *platest)
{
    int err = run(ss, ss->st[ST_BEGIN], "start a read");
    if (err != 0)
        return err;
    int64_t latest, trimmed;
    size_t n = 0;
    store_change *changes = NULL;
    err = read_revision(ss, req->tenant_id, &latest, &trimmed);
    if (err != 0)
        goto out;
    *platest = latest;
    if (req->after > latest || req->after < trimmed) {
        /* A revision not reached yet, or history above after that the retention deleted. */
        err = run(ss, ss->st[ST_COMMIT], "end the read");
        if (err == 0)
            err = PINS_EOUT_OF_RANGE;
        goto out;
    }
    changes = pins_arena_calloc(a, (size_t)req->limit, sizeof(*changes));
    if (changes == NULL) {
        err = out_of_memory(ss, "reading the changes");
        goto out;
    }
    sqlite3_stmt *st = ss->st[ST_CHANGES];
    binder b = {.st = st, .rc = SQLITE_OK};
    bind_str(&b, 1, req->tenant_id);
    bind_int(&b, 2, req->after);
    bind_str(&b, 3, req->prefix);
    bind_int(&b, 4, req->limit);
    int rc = b.rc;
    while (err == 0 && rc == SQLITE_OK && n < (size_t)req->limit) {
        int step = sqlite3_step(st);
        if (step == SQLITE_DONE)
            break;
        if (step != SQLITE_ROW)
            rc = step;
        else if (read_change_row(st, a, &changes[n]) != 0)
            err = out_of_memory(ss, "reading the changes");
        else
            n++;
    }
    if (err == 0 && rc != SQLITE_OK)
        err = db_fail(ss, rc, "read the changes");
    sqlite3_reset(st);
    if (err == 0)
        err = run(ss, ss->st[ST_COMMIT], "end the read");
out:
    if (err != 0 && err != PINS_EOUT_OF_RANGE)
        rollback(ss);
    if (err == 0) {
        *pchanges = changes;
        *pn = n;
    }
    return err;
}

static int sqlite_changes_since(store_session *base, const store__changes_req *req,
                                store_changes_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_change *changes = NULL;
    size_t n = 0;
    int64_t latest = 0;
    err = changes_tx(ss, a, req, &changes, &n, &latest);
    ss->depth++;
    cb(arg, err, err == 0 ? changes : NULL, err == 0 ? n : 0, latest);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

/* A history row the retention deleted. */
typedef struct trimmed_row {
    const char *tenant_id;
    int64_t revision;
} trimmed_row;

static int read_trimmed_row(sqlite3_stmt *st, pins_arena *a, void *prow)
{
    trimmed_row *r = prow;
    size_t len;
    r->revision = sqlite3_column_int64(st, 1);
    return col_text(st, 0, a, &r->tenant_id, &len);
}

/* Raises the trimmed revision of tenant_id to at least revision, inside the caller's
 * transaction. */
static int raise_trimmed(sqlite_session *ss, const char *tenant_id, int64_t revision)
{
    binder b = {.st = ss->st[ST_TRIM], .rc = SQLITE_OK};
    bind_str(&b, 1, tenant_id);
    bind_int(&b, 2, revision);
    if (b.rc != SQLITE_OK)
        return db_fail(ss, b.rc, "bind the trimmed revision");
    return run(ss, b.st, "remember the trimmed revision");
}

static int sqlite_history_expire(store_session *base, const store__history_req *req,
                                 store_count_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    static const char what[] = "expire the change history";
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    void *rows = NULL;
    size_t n = 0;
    err = own_write_begin(ss, what, true);
    if (err == 0) {
        binder b = {.st = ss->st[ST_HISTORY_EXPIRE], .rc = SQLITE_OK};
        bind_int(&b, 1, req->before_us);
        bind_int(&b, 2, req->max_rows > 0 ? req->max_rows : 0);
        bind_int(&b, 3, req->batch);
        err = b.rc == SQLITE_OK
                  ? collect(ss, a, b.st, sizeof(trimmed_row), read_trimmed_row, what, &rows, &n)
                  : db_fail(ss, b.rc, what);
        /* Rows come back in no set order: one UPDATE per row, each keeping the highest. */
        const trimmed_row *t = rows;
        for (size_t i = 0; i < n && err == 0; i++)
            err = raise_trimmed(ss, t[i].tenant_id, t[i].revision);
        err = own_write_end(ss, err);
        writes_unlock(ss);
    }
    free(rows);
    ss->depth++;
    cb(arg, err, err == 0 ? (int64_t)n : 0);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

/* The SQLite feed is called on the committing thread under the write mutex: starting and stopping
 * it under the same mutex means no call is in progress when feed_stop returns. state is never
 * called: the feed cannot miss a change of this process, and no other process may write the
 * database (its read cache would not see it either). */
static int sqlite_feed_start(store *base, store_change_fn fn, store_feed_state_fn state, void *arg)
{
    (void)state;
    sqlite_store *s = (sqlite_store *)base;
    int err = 0;
    pthread_mutex_lock(&s->write_lock);
    if (s->feed_fn != NULL) {
        err = PINS_EINTERNAL; /* started twice */
    } else {
        s->feed_fn = fn;
        s->feed_arg = arg;
        atomic_store(&s->feed_on, true);
    }
    pthread_mutex_unlock(&s->write_lock);
    return err;
}

static void sqlite_feed_stop(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    pthread_mutex_lock(&s->write_lock);
    s->feed_fn = NULL;
    s->feed_arg = NULL;
    atomic_store(&s->feed_on, false);
    pthread_mutex_unlock(&s->write_lock);
}

static bool sqlite_feed_live(const store *base)
{
    return atomic_load(&((const sqlite_store *)base)->feed_on);
}

/* ---- store and sessions --------------------------------------------------------------------- */

static void sqlite_session_free(store_session *base)
{
    sqlite_session *ss = (sqlite_session *)base;
    store__defer_free(ss->flush);
    ss->flush = NULL;
    /* Writes still queued are not written: their callbacks learn it now. */
    ss->closing = true;
    batch *b = ss->pending;
    ss->pending = NULL;
    if (b != NULL) {
        for (size_t i = 0; i < b->n; i++)
            b->ops[i].err = PINS_ECANCELLED;
        complete_batch(ss, b);
    }
    if (ss->spare != NULL) {
        pins_arena_free(ss->spare->arena);
        free(ss->spare->ops);
        free(ss->spare);
    }
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(ss->st[i]);
    for (size_t i = 0; i < AUDIT_VARIANTS; i++) {
        sqlite3_finalize(ss->audit_list_st[i]);
        sqlite3_finalize(ss->audit_count_st[i]);
    }
    sqlite3_close(ss->db);
    if (ss->pooled)
        store__pool_move(STORE__POOL_IDLE, -1);
    EVP_MD_CTX_free(ss->md);
    EVP_MD_free(ss->sha256);
    for (size_t i = 0; i < SCRATCH_DEPTH; i++)
        pins_arena_free(ss->scratch[i]);
    pins_arena_free(ss->pack);
    free(ss);
}

static int sqlite_session_new(store *base, struct event_base *loop, store_session **pss)
{
    sqlite_store *s = (sqlite_store *)base;
    int err = 0;
    sqlite_session *ss = calloc(1, sizeof(*ss));
    if (ss == NULL)
        return PINS_ENOMEM;
    ss->base.be = &sqlite_backend;
    ss->base.store = base;
    ss->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    ss->md = EVP_MD_CTX_new();
    if (ss->sha256 == NULL || ss->md == NULL) {
        err = PINS_ENOMEM;
        goto out;
    }
    if (loop != NULL) {
        err = store__defer_new(loop, on_flush, ss, &ss->flush);
        if (err != 0)
            goto out;
    }
    int rc = sqlite3_open_v2(s->path, &ss->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        rc = configure(ss->db, &ss->busy);
        store__ckpt_attach(s->ckpt, ss->db);
    }
    for (size_t i = 0; i < ST_COUNT && rc == SQLITE_OK; i++)
        rc = sqlite3_prepare_v3(ss->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &ss->st[i],
                                NULL);
    if (rc != SQLITE_OK) {
        store__count_error(error_kind(rc));
        err = map_rc(rc);
    }
out:
    if (err != 0) {
        sqlite_session_free(&ss->base);
        return err;
    }
    ss->pooled = true;
    store__pool_move(-1, STORE__POOL_IDLE);
    *pss = &ss->base;
    return 0;
}

static void sqlite_close(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    store__ckpt_stop(s->ckpt);
    store_cache_free(s->cache);
    if (s->write_lock_ready)
        pthread_mutex_destroy(&s->write_lock);
    free(s->path);
    free(s);
}

int store__sqlite_open(const store_options *opts, store **pstore)
{
    static const char file[] = "/pins.db";
    const char *dir =
        opts->data_dir != NULL && opts->data_dir[0] != '\0' ? opts->data_dir : "./var";
    sqlite3 *db = NULL;
    busy_wait busy = {0}; /* no write: on_busy counts the open's own wait */
    int err = make_dirs(dir);
    if (err != 0)
        return err;
    sqlite_store *s = calloc(1, sizeof(*s));
    size_t len = strlen(dir);
    if (s != NULL)
        s->path = malloc(len + sizeof(file));
    if (s == NULL || s->path == NULL) {
        err = PINS_ENOMEM;
        goto out;
    }
    s->base.be = &sqlite_backend;
    if (pthread_mutex_init(&s->write_lock, NULL) != 0) {
        err = PINS_ENOMEM;
        goto out;
    }
    s->write_lock_ready = true;
    store__metrics_open("sqlite", error_kinds, sizeof(error_kinds) / sizeof(error_kinds[0]));
    size_t cache_bytes = opts->cache_bytes > 0 ? (size_t)opts->cache_bytes : STORE_CACHE_BYTES;
    err = store_cache_new(cache_bytes / STORE_CACHE_ENTRY_MIN, cache_bytes, &s->cache);
    if (err != 0)
        goto out;
    memcpy(s->path, dir, len);
    memcpy(s->path + len, file, sizeof(file));
    int rc = sqlite3_open_v2(
        s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = configure(db, &busy);
    if (rc == SQLITE_OK)
        rc = enable_wal(db);
    if (rc == SQLITE_OK) {
        rc = migrate(db);
        if (rc != SQLITE_OK)
            store__count_error("schema");
    } else {
        store__count_error(error_kind(rc));
    }
    if (rc != SQLITE_OK)
        err = map_rc(rc) == PINS_ENOMEM ? PINS_ENOMEM : PINS_ESTORE;
    if (err == 0)
        err = store__ckpt_start(s->path, &s->write_lock, &s->ckpt);
out:
    sqlite3_close(db);
    if (err != 0) {
        if (s != NULL)
            sqlite_close(&s->base);
        return err;
    }
    *pstore = &s->base;
    return 0;
}

/* ---- counters and hooks for tests ----------------------------------------------------------- */

/* ss as a SQLite session, or NULL. */
static sqlite_session *as_sqlite(store_session *ss)
{
    return ss != NULL && ss->be == &sqlite_backend ? (sqlite_session *)ss : NULL;
}

int store_sqlite_session_stats(store_session *base, store_sqlite_stats *pstats)
{
    sqlite_session *ss = as_sqlite(base);
    if (ss == NULL)
        return PINS_EINTERNAL;
    store_sqlite_stats stats = ss->stats;
    stats.cache_entries = store_cache_count(((sqlite_store *)base->store)->cache);
    stats.checkpoints = store__ckpt_runs(((sqlite_store *)base->store)->ckpt);
    *pstats = stats;
    return 0;
}

int store_sqlite_set_busy_timeout(store_session *base, int timeout_ms)
{
    sqlite_session *ss = as_sqlite(base);
    if (ss == NULL)
        return PINS_EINTERNAL;
    ss->busy.timeout_ms = timeout_ms;
    return 0;
}

int store_sqlite_fail_next_commit(store_session *base, int rc)
{
    sqlite_session *ss = as_sqlite(base);
    if (ss == NULL)
        return PINS_EINTERNAL;
    ss->commit_fault = rc;
    return 0;
}

int store_sqlite_set_fill_hook(store_session *base, void (*hook)(void *arg), void *arg)
{
    sqlite_session *ss = as_sqlite(base);
    if (ss == NULL)
        return PINS_EINTERNAL;
    ss->fill_hook = hook;
    ss->fill_arg = arg;
    return 0;
}

const char *store_sqlite_migration_down(int version)
{
    for (size_t i = 0; i < store__sqlite_migrations_count; i++) {
        if (store__sqlite_migrations[i].version == version)
            return store__sqlite_migrations[i].down;
    }
    return NULL;
}

static const store__backend sqlite_backend = STORE__BACKEND(sqlite, "sqlite");
