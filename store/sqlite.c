/* store/sqlite.c: the embedded SQLite backend (DATABASE_URL unset).
 *
 * One file data_dir/pins.db in WAL mode with synchronous=NORMAL: a commit is appended to the WAL
 * before the call completes, so it survives kill -9 of the process (only a power loss may take the
 * last commits). Each session owns one connection opened with SQLITE_OPEN_NOMUTEX and used only
 * by its thread; connections of one process coordinate through the WAL locks. Writes run under
 * BEGIN IMMEDIATE, so the read-compare-write of expected_version and the audit row commit
 * together, and a writer waits for another one in on_busy rather than failing at once.
 *
 * Every statement is prepared once per session. Rows handed to callbacks are copied into a
 * per-session scratch arena and every statement is reset and every transaction closed before the
 * callback runs, so a callback may start another operation on the same session (each nesting level
 * has its own arena).
 */
#include "store/store_int.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "common/arena.h"
#include "common/error.h"

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
    PC_VERSION
};

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

#define PIN_COLS \
    "id, tenant_id, key, value, source, created_at, updated_at, ttl_seconds, expires_at, version"
/* Prefixes match literally: substr() compares characters, unlike LIKE and its wildcards. */
#define LIST_WHERE                                              \
    " WHERE tenant_id = ?1 AND substr(key, 1, length(?2)) = ?2" \
    " AND (?3 OR expires_at IS NULL OR expires_at > ?4)"
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
                      " updated_at, ttl_seconds, expires_at, version)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, 1)",
    [ST_PIN_UPDATE] = "UPDATE memory_pins SET value = ?1, source = ?2, updated_at = ?3,"
                      " ttl_seconds = ?4, expires_at = ?5, version = ?6 WHERE id = ?7",
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
    [ST_CLEANUP_TENANT] = "DELETE FROM memory_pins WHERE tenant_id = ?1"
                          " AND expires_at IS NOT NULL AND expires_at <= ?2",
    [ST_CLEANUP_ALL] = "DELETE FROM memory_pins WHERE expires_at IS NOT NULL AND expires_at <= ?1",
    [ST_SWEEP] = "DELETE FROM memory_pins WHERE id IN (SELECT id FROM memory_pins"
                 " WHERE expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY expires_at"
                 " LIMIT ?2)",
    [ST_PING] = "SELECT 1",
};

typedef struct sqlite_store {
    store base;
    char *path; /* data_dir/pins.db */
} sqlite_store;

typedef struct sqlite_session {
    store_session base;
    sqlite3 *db;
    struct timespec busy_start; /* when the current wait for a lock began (on_busy) */
    sqlite3_stmt *st[ST_COUNT];
    sqlite3_stmt *audit_list_st[AUDIT_VARIANTS];  /* prepared on first use */
    sqlite3_stmt *audit_count_st[AUDIT_VARIANTS]; /* prepared on first use */
    EVP_MD *sha256;
    EVP_MD_CTX *md;
    pins_arena *scratch[SCRATCH_DEPTH]; /* scratch[d]: operations started at callback depth d */
    int depth;                          /* callbacks currently running on this session */
} sqlite_session;

/* Bind parameters one after another; the first failure sticks in rc. */
typedef struct binder {
    sqlite3_stmt *st;
    int rc;
} binder;

static const store__backend sqlite_backend;

/* ---- errors --------------------------------------------------------------------------------- */

/* The PINS_E* code for a SQLite result code. A store that is locked past the timeout, failing
 * I/O, full, unreadable or corrupt is unavailable (PINS_ESTORE, counted by the breaker); anything
 * else means this code misused SQLite (PINS_EINTERNAL). */
static int map_rc(int rc)
{
    if (rc == SQLITE_NOMEM || rc == SQLITE_IOERR_NOMEM)
        return PINS_ENOMEM;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_PROTOCOL:
    case SQLITE_PERM:
    case SQLITE_NOLFS:
        return PINS_ESTORE;
    default:
        return PINS_EINTERNAL;
    }
}

/* Records why "what" failed with rc on the session and returns the PINS_E* code for it. */
static int db_fail(sqlite_session *ss, int rc, const char *what)
{
    store__session_error(&ss->base, "could not %s: %s (sqlite error %d)", what,
                         sqlite3_errmsg(ss->db), rc);
    return map_rc(rc);
}

static int out_of_memory(sqlite_session *ss, const char *what)
{
    store__session_error(&ss->base, "out of memory while %s", what);
    return PINS_ENOMEM;
}

/* ---- connections ---------------------------------------------------------------------------- */

/* SQLite's own busy handler sleeps at least a millisecond per retry; a write transaction here
 * holds the lock for tens of microseconds, so yield first, then sleep briefly, then longer, until
 * STORE__BUSY_TIMEOUT_MS have passed. */
static int on_busy(void *arg, int count)
{
    struct timespec *start = arg;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (count == 0)
        *start = now;
    int64_t waited_us =
        (int64_t)(now.tv_sec - start->tv_sec) * 1000000 + (now.tv_nsec - start->tv_nsec) / 1000;
    if (waited_us >= (int64_t)STORE__BUSY_TIMEOUT_MS * 1000)
        return 0;
    if (count < 16) {
        sched_yield();
    } else {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = count < 256 ? 20000 : 1000000};
        nanosleep(&pause, NULL);
    }
    return 1;
}

/* Per-connection settings: extended result codes, the busy handler and synchronous=NORMAL
 * (durable against a process crash in WAL mode). Returns a SQLite result code. */
static int configure(sqlite3 *db, struct timespec *busy_start)
{
    sqlite3_extended_result_codes(db, 1);
    int rc = sqlite3_busy_handler(db, on_busy, busy_start);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
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

/* The wall clock in microseconds since the epoch (schema_migrations.applied_at only). */
static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
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
        sqlite3_bind_int64(record, 3, wall_us());
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
                 mask & AUDIT_KEY ? " AND key = ?2" : "",
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

/* The current row of a PIN_COLS statement, strings copied into a. Returns 0 or PINS_ENOMEM. */
static int read_pin(sqlite3_stmt *st, pins_arena *a, store_pin *ppin)
{
    store_pin p = {
        .id = sqlite3_column_int64(st, PC_ID),
        .created_us = sqlite3_column_int64(st, PC_CREATED),
        .updated_us = sqlite3_column_int64(st, PC_UPDATED),
        .has_ttl = sqlite3_column_type(st, PC_TTL) != SQLITE_NULL,
        .has_expires = sqlite3_column_type(st, PC_EXPIRES) != SQLITE_NULL,
        .version = sqlite3_column_int64(st, PC_VERSION),
    };
    p.ttl_seconds = p.has_ttl ? sqlite3_column_int(st, PC_TTL) : 0;
    p.expires_us = p.has_expires ? sqlite3_column_int64(st, PC_EXPIRES) : 0;
    size_t len;
    int err = col_text(st, PC_TENANT, a, &p.tenant_id, &len);
    if (err == 0)
        err = col_text(st, PC_KEY, a, &p.key, &len);
    if (err == 0)
        err = col_text(st, PC_VALUE, a, &p.value_json, &p.value_len);
    if (err == 0)
        err = col_text(st, PC_SOURCE, a, &p.source, &len);
    if (err == 0)
        *ppin = p;
    return err;
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

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not valid UTF-8. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    uint32_t cp = c & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
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
        size_t len = utf8_len(s + i, n - i);
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

/* One page of a listing and the count of every match, read in one transaction so that they
 * agree: count (bound) yields the total, page (bound) at most limit rows, each copied into an
 * array in a by read. *prows, *pn and *ptotal are set on success. */
static int read_page(sqlite_session *ss, pins_arena *a, sqlite3_stmt *count, sqlite3_stmt *page,
                     size_t limit, size_t row_size, row_read_fn read, const char *what,
                     void **prows, size_t *pn, int64_t *ptotal)
{
    int err = run(ss, ss->st[ST_BEGIN], "start a read");
    if (err != 0)
        return err;
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

/* Updates the live pin cur or inserts a new one (after removing an expired cur), inside the
 * caller's transaction; pin gets the id, created_us and version written. */
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
    }
    if (b.rc != SQLITE_OK)
        return db_fail(ss, b.rc, "bind the pin");
    int err = run(ss, b.st, "write the pin");
    if (err == 0 && !cur->live)
        pin->id = sqlite3_last_insert_rowid(ss->db);
    return err;
}

/* The upsert transaction; on success *ppin is the pin as written (strings borrowed from req). */
static int upsert_tx(sqlite_session *ss, pins_arena *a, const store_upsert_req *req,
                     store_pin *ppin, bool *pcreated)
{
    int err = run(ss, ss->st[ST_BEGIN_IMMEDIATE], "start a write");
    if (err != 0)
        return err;
    current cur;
    err = find_current(ss, req, &cur);
    if (err != 0)
        goto out;
    if (req->has_expected_version) {
        if (req->expected_version == 0 && cur.live) {
            err = PINS_EALREADY_EXISTS;
            goto out;
        }
        if (req->expected_version != 0 && (!cur.live || cur.version != req->expected_version)) {
            err = PINS_EABORTED;
            goto out;
        }
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
    };
    err = write_pin(ss, req, &cur, &pin);
    if (err == 0)
        err = write_audit(ss, a, "upsert", req->tenant_id, req->key, req->source, &req->audit,
                          cur.live ? cur.hash : NULL, req->value_hash, req->now_us);
    if (err == 0)
        err = run(ss, ss->st[ST_COMMIT], "commit the pin");
    if (err == 0) {
        *ppin = pin;
        *pcreated = !cur.live;
    }
out:
    if (err != 0)
        rollback(ss);
    return err;
}

static int pin_upsert(store_session *base, const store_upsert_req *req, store_pin_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_pin pin;
    bool created = false;
    err = upsert_tx(ss, a, req, &pin, &created);
    ss->depth++;
    cb(arg, err, err == 0 ? &pin : NULL, created);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

static int pin_get(store_session *base, const store__get_req *req, store_pin_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_pin pin;
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
                   size_t *pn, int64_t *ptotal)
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
                        read_pin_row, "list pins", &rows, pn, ptotal);
    if (err == 0)
        *ppins = rows;
    return err;
}

static int pin_list(store_session *base, const store_list_req *req, store_list_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_pin *pins = NULL;
    size_t n = 0;
    int64_t total = 0;
    err = list_tx(ss, a, req, &pins, &n, &total);
    ss->depth++;
    cb(arg, err, pins, n, total);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

/* The delete transaction; on success *ppin is the pin as it was (strings in a). */
static int delete_tx(sqlite_session *ss, pins_arena *a, const store_delete_req *req,
                     store_pin *ppin)
{
    int err = run(ss, ss->st[ST_BEGIN_IMMEDIATE], "start a write");
    if (err != 0)
        return err;
    sqlite3_stmt *find = ss->st[ST_PIN_FIND];
    binder b = {.st = find, .rc = SQLITE_OK};
    bind_str(&b, 1, req->tenant_id);
    bind_str(&b, 2, req->key);
    char old_hash[HASH_HEX + 1] = "";
    store_pin old;
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
        goto out;
    if (req->has_expected_version && old.version != req->expected_version) {
        err = PINS_EABORTED;
        goto out;
    }
    sqlite3_stmt *del = ss->st[ST_PIN_DELETE];
    rc = sqlite3_bind_int64(del, 1, old.id);
    if (rc != SQLITE_OK) {
        err = db_fail(ss, rc, "bind the pin");
        goto out;
    }
    err = run(ss, del, "delete the pin");
    if (err == 0)
        err = write_audit(ss, a, "delete", req->tenant_id, req->key, old.source, &req->audit,
                          old_hash, NULL, req->now_us);
    if (err == 0)
        err = run(ss, ss->st[ST_COMMIT], "commit the delete");
    if (err == 0)
        *ppin = old;
out:
    if (err != 0)
        rollback(ss);
    return err;
}

static int pin_delete(store_session *base, const store_delete_req *req, store_pin_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    pins_arena *a;
    int err = scratch(ss, &a);
    if (err != 0)
        return err;
    store_pin pin;
    err = delete_tx(ss, a, req, &pin);
    ss->depth++;
    cb(arg, err, err == 0 ? &pin : NULL, false);
    ss->depth--;
    scratch_done(ss);
    return 0;
}

/* Runs a DELETE statement whose parameters are bound (b.rc) and reports the rows it removed. */
static int delete_count(sqlite_session *ss, binder *b, const char *what, store_count_cb cb,
                        void *arg)
{
    int err = b->rc == SQLITE_OK ? run(ss, b->st, what) : db_fail(ss, b->rc, what);
    int64_t count = err == 0 ? sqlite3_changes64(ss->db) : 0;
    ss->depth++;
    cb(arg, err, count);
    ss->depth--;
    return 0;
}

static int pin_cleanup(store_session *base, const store__cleanup_req *req, store_count_cb cb,
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
    return delete_count(ss, &b, "delete expired pins", cb, arg);
}

static int pin_sweep(store_session *base, const store__sweep_req *req, store_count_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    binder b = {.st = ss->st[ST_SWEEP], .rc = SQLITE_OK};
    bind_int(&b, 1, req->now_us);
    bind_int(&b, 2, req->batch);
    return delete_count(ss, &b, "sweep expired pins", cb, arg);
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
                    read_audit_row, "list audit rows", &rows, pn, ptotal);
    if (err == 0)
        *prows = rows;
    return err;
}

static int audit_list(store_session *base, const store_audit_list_req *req, store_audit_list_cb cb,
                      void *arg)
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

static int ping(store_session *base, store_count_cb cb, void *arg)
{
    sqlite_session *ss = (sqlite_session *)base;
    int err = run(ss, ss->st[ST_PING], "ping the database");
    ss->depth++;
    cb(arg, err, 0);
    ss->depth--;
    return 0;
}

/* ---- store and sessions --------------------------------------------------------------------- */

static void session_free(store_session *base)
{
    sqlite_session *ss = (sqlite_session *)base;
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(ss->st[i]);
    for (size_t i = 0; i < AUDIT_VARIANTS; i++) {
        sqlite3_finalize(ss->audit_list_st[i]);
        sqlite3_finalize(ss->audit_count_st[i]);
    }
    sqlite3_close(ss->db);
    EVP_MD_CTX_free(ss->md);
    EVP_MD_free(ss->sha256);
    for (size_t i = 0; i < SCRATCH_DEPTH; i++)
        pins_arena_free(ss->scratch[i]);
    free(ss);
}

static int session_new(store *base, struct event_base *loop, store_session **pss)
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
    int rc = sqlite3_open_v2(s->path, &ss->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = configure(ss->db, &ss->busy_start);
    for (size_t i = 0; i < ST_COUNT && rc == SQLITE_OK; i++)
        rc = sqlite3_prepare_v3(ss->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &ss->st[i],
                                NULL);
    if (rc != SQLITE_OK)
        err = map_rc(rc);
out:
    if (err != 0) {
        session_free(&ss->base);
        return err;
    }
    *pss = &ss->base;
    return 0;
}

static void store_free(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    free(s->path);
    free(s);
}

int store__sqlite_open(const store_options *opts, store **pstore)
{
    static const char file[] = "/pins.db";
    const char *dir =
        opts->data_dir != NULL && opts->data_dir[0] != '\0' ? opts->data_dir : "./var";
    sqlite3 *db = NULL;
    struct timespec busy_start;
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
    memcpy(s->path, dir, len);
    memcpy(s->path + len, file, sizeof(file));
    int rc = sqlite3_open_v2(
        s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = configure(db, &busy_start);
    if (rc == SQLITE_OK)
        rc = enable_wal(db);
    if (rc == SQLITE_OK)
        rc = migrate(db);
    if (rc != SQLITE_OK)
        err = map_rc(rc) == PINS_ENOMEM ? PINS_ENOMEM : PINS_ESTORE;
out:
    sqlite3_close(db);
    if (err != 0) {
        if (s != NULL)
            store_free(&s->base);
        return err;
    }
    *pstore = &s->base;
    return 0;
}

static const store__backend sqlite_backend = {
    .name = "sqlite",
    .close = store_free,
    .session_new = session_new,
    .session_free = session_free,
    .pin_upsert = pin_upsert,
    .pin_get = pin_get,
    .pin_list = pin_list,
    .pin_delete = pin_delete,
    .pin_cleanup = pin_cleanup,
    .pin_sweep = pin_sweep,
    .audit_list = audit_list,
    .ping = ping,
};
