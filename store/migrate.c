/* store/migrate.c: the PostgreSQL schema runner behind store_migrate_* (store.h).
 *
 * Blocking libpq: it runs in pinsctl and in tests, never on a worker's loop. Every step is one
 * transaction that first takes pg_advisory_xact_lock(STORE_MIGRATE_LOCK_KEY) and re-reads the
 * current version under it, so concurrent runners serialise and a step another runner applied
 * meanwhile is not applied twice. A transaction-scoped lock (not a session lock) keeps the runner
 * usable through PgBouncer in transaction pooling mode.
 */
#include "store/pg_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "common/error.h"

#define LOCK_SQL "SELECT pg_advisory_xact_lock(7364856700001)"
#define TABLE_SQL                                                 \
    "CREATE SCHEMA IF NOT EXISTS system;"                         \
    " CREATE TABLE IF NOT EXISTS system.pins_schema_migrations (" \
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL,"            \
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
#define CURRENT_SQL "SELECT coalesce(max(version), 0) FROM system.pins_schema_migrations"

static_assert(STORE_MIGRATE_LOCK_KEY == 7364856700001LL, "LOCK_SQL repeats the key");

static void set_err(char *err, size_t cap, const char *what, const char *detail)
{
    if (err == NULL || cap == 0)
        return;
    snprintf(err, cap, "%s%s%s", what, detail != NULL ? ": " : "", detail != NULL ? detail : "");
    size_t n = strlen(err);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
        err[--n] = '\0';
}

/* Runs sql (one or more statements); on failure records what and the server's text. */
static bool exec_ok(PGconn *pg, const char *sql, const char *what, char *err, size_t cap)
{
    PGresult *res = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(res);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        set_err(err, cap, what, res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(pg));
    PQclear(res);
    return ok;
}

/* NOTICEs ("schema system already exists, skipping") are noise for an operator. */
static void on_notice(void *arg, const char *message)
{
}

static PGconn *connect_db(const char *url, char *err, size_t cap)
{
    const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"pinsctl", "10", url, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (pg == NULL) {
        set_err(err, cap, "cannot connect to the database", "out of memory");
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        set_err(err, cap, "cannot connect to the database", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, on_notice, NULL);
    return pg;
}

/* Opens a step's transaction: lock, bookkeeping table, current version into *pcur. */
static bool begin_step(PGconn *pg, int *pcur, char *err, size_t cap)
{
    if (!exec_ok(pg, "BEGIN", "cannot start a transaction", err, cap) ||
        !exec_ok(pg, LOCK_SQL, "cannot take the migration lock", err, cap) ||
        !exec_ok(pg, TABLE_SQL, "cannot create system.pins_schema_migrations", err, cap))
        return false;
    PGresult *res = PQexec(pg, CURRENT_SQL);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok)
        *pcur = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
    else
        set_err(err, cap, "cannot read the schema version", PQresultErrorMessage(res));
    PQclear(res);
    return ok;
}

static void rollback(PGconn *pg)
{
    PQclear(PQexec(pg, "ROLLBACK"));
}

static const store__migration *find(int version)
{
    for (size_t i = 0; i < store__postgres_migrations_count; i++) {
        if (store__postgres_migrations[i].version == version)
            return &store__postgres_migrations[i];
    }
    return NULL;
}

/* Records (or forgets) version inside the step's transaction. */
static bool record(PGconn *pg, const store__migration *m, bool applied, char *err, size_t cap)
{
    char v[16];
    snprintf(v, sizeof(v), "%d", m->version);
    const char *params[] = {v, m->name};
    PGresult *res =
        applied
            ? PQexecParams(pg,
                           "INSERT INTO system.pins_schema_migrations (version, name)"
                           " VALUES ($1::int4, $2)",
                           2, NULL, params, NULL, NULL, 0)
            : PQexecParams(pg, "DELETE FROM system.pins_schema_migrations WHERE version = $1::int4",
                           1, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        set_err(err, cap, "cannot record the migration", PQresultErrorMessage(res));
    PQclear(res);
    return ok;
}

int store_migrate_latest(void)
{
    return store__postgres_migrations[store__postgres_migrations_count - 1].version;
}

/* Rolls back a step's transaction. Returns err. */
static int step_failed(PGconn *pg, int err)
{
    rollback(pg);
    return err;
}

/* Applies (up) or reverts m in the step's transaction and commits it. Returns 1 or PINS_ESTORE
 * (rolled back, err set). */
static int step_run(PGconn *pg, const store__migration *m, bool up, char *err, size_t cap)
{
    char what[96];
    snprintf(what, sizeof(what), up ? "migration %s failed" : "reverting migration %s failed",
             m->name);
    if (!exec_ok(pg, up ? m->up : m->down, what, err, cap) || !record(pg, m, up, err, cap) ||
        !exec_ok(pg, "COMMIT", what, err, cap))
        return step_failed(pg, PINS_ESTORE);
    return 1;
}

/* One step of a run, in its own transaction; limit and done as run_steps passes them. Returns 1
 * when it applied or reverted a migration, 0 when the run is over (nothing left open), or an
 * error (err set). */
typedef int (*step_fn)(PGconn *pg, int limit, int done, char *err, size_t cap);

/* Upgrades one step towards version target. */
static int step_up(PGconn *pg, int target, int done, char *err, size_t cap)
{
    int cur = 0;
    if (!begin_step(pg, &cur, err, cap))
        return step_failed(pg, PINS_ESTORE);
    if (cur > target && done == 0) {
        set_err(err, cap, "the database is already past the target version (use downgrade)", NULL);
        return step_failed(pg, PINS_EINVALID_ARGUMENT);
    }
    for (size_t i = 0; i < store__postgres_migrations_count; i++) {
        const store__migration *m = &store__postgres_migrations[i];
        if (m->version > cur && m->version <= target)
            return step_run(pg, m, true, err, cap);
    }
    return exec_ok(pg, "COMMIT", "cannot commit", err, cap) ? 0 : step_failed(pg, PINS_ESTORE);
}

/* Reverts one step, unless steps (< 0: all) were reverted already. */
static int step_down(PGconn *pg, int steps, int done, char *err, size_t cap)
{
    if (steps >= 0 && done >= steps)
        return 0;
    int cur = 0;
    if (!begin_step(pg, &cur, err, cap))
        return step_failed(pg, PINS_ESTORE);
    if (cur == 0) {
        if (!exec_ok(pg, "COMMIT", "cannot commit", err, cap))
            return step_failed(pg, PINS_ESTORE);
        if (steps < 0)
            return 0;
        set_err(err, cap, "no applied migration left to revert", NULL);
        return PINS_EINVALID_ARGUMENT;
    }
    const store__migration *m = find(cur);
    if (m == NULL || m->down == NULL) {
        set_err(err, cap,
                m == NULL ? "the database is at a version this binary does not know"
                          : "the current migration cannot be reverted",
                NULL);
        return step_failed(pg, PINS_ESTORE);
    }
    return step_run(pg, m, false, err, cap);
}

/* Connects and runs step until it reports the end or an error; the steps done go to *pdone. */
static int run_steps(const char *url, step_fn step, int limit, int *pdone, char *err, size_t cap)
{
    PGconn *pg = connect_db(url, err, cap);
    if (pg == NULL)
        return PINS_ESTORE;
    int done = 0;
    int rv = step(pg, limit, done, err, cap);
    while (rv > 0) {
        done++;
        rv = step(pg, limit, done, err, cap);
    }
    PQfinish(pg);
    if (pdone != NULL)
        *pdone = done;
    return rv;
}

int store_migrate_up(const char *url, int target, int *papplied, char *err, size_t cap)
{
    if (target <= 0)
        target = store_migrate_latest();
    if (find(target) == NULL) {
        set_err(err, cap, "no such migration version", NULL);
        return PINS_EINVALID_ARGUMENT;
    }
    return run_steps(url, step_up, target, papplied, err, cap);
}

int store_migrate_down(const char *url, int steps, int *preverted, char *err, size_t cap)
{
    return run_steps(url, step_down, steps, preverted, err, cap);
}

int store_migrate_current(const char *url, int *pversion, char *err, size_t cap)
{
    PGconn *pg = connect_db(url, err, cap);
    if (pg == NULL)
        return PINS_ESTORE;
    int cur = 0;
    int rv = PINS_ESTORE;
    if (begin_step(pg, &cur, err, cap) && exec_ok(pg, "COMMIT", "cannot commit", err, cap)) {
        *pversion = cur;
        rv = 0;
    } else {
        rollback(pg);
    }
    PQfinish(pg);
    return rv;
}

int store_migrate_history(const char *url, store_migration_info *rows, size_t cap_rows, size_t *pn,
                          char *err, size_t cap)
{
    int rv = PINS_ESTORE;
    size_t n = 0;
    PGresult *res = NULL;
    int cur = 0;
    PGconn *pg = connect_db(url, err, cap);
    if (pg == NULL)
        return PINS_ESTORE;
    if (!begin_step(pg, &cur, err, cap))
        goto out;
    res = PQexec(pg, "SELECT version, name, to_char(applied_at AT TIME ZONE 'UTC',"
                     " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM system.pins_schema_migrations"
                     " ORDER BY version");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        set_err(err, cap, "cannot read the migration history", PQresultErrorMessage(res));
        goto out;
    }
    for (size_t i = 0; i < store__postgres_migrations_count && n < cap_rows; i++) {
        const store__migration *m = &store__postgres_migrations[i];
        rows[n] = (store_migration_info){.version = m->version};
        snprintf(rows[n].name, sizeof(rows[n].name), "%s", m->name);
        n++;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        int v = (int)strtol(PQgetvalue(res, r, 0), NULL, 10);
        size_t at = 0;
        while (at < n && rows[at].version != v)
            at++;
        if (at == n) {
            if (n == cap_rows)
                continue;
            rows[n] = (store_migration_info){.version = v};
            snprintf(rows[n].name, sizeof(rows[n].name), "%s", PQgetvalue(res, r, 1));
            n++;
        }
        snprintf(rows[at].applied_at, sizeof(rows[at].applied_at), "%s", PQgetvalue(res, r, 2));
    }
    rv = 0;
out:
    PQclear(res);
    rollback(pg);
    PQfinish(pg);
    if (rv == 0)
        *pn = n;
    return rv;
}
