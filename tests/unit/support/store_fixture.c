/* tests/unit/support/store_fixture.c: the store tests' fixture (store_fixture.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "store_fixture.h"

#include <event2/event.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int fixtures; /* made by this process: each gets a tenant of its own */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

void store_fixture_remove_tree(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void store_fixture_open(store_fixture *fx)
{
    assert_int_equal(store_open(&fx->opts, &fx->s), 0);
    assert_int_equal(store_session_new(fx->s, fx->base, &fx->ss), 0);
}

void store_fixture_close(store_fixture *fx)
{
    store_session_free(fx->ss);
    fx->ss = NULL;
    store_close(fx->s);
    fx->s = NULL;
}

store_fixture *store_fixture_new(const char *prefix, store_options opts)
{
    store_fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->opts = opts;
    if (opts.database_url == NULL) {
        snprintf(fx->dir, sizeof(fx->dir), "/tmp/%s-XXXXXX", prefix);
        assert_non_null(mkdtemp(fx->dir));
        snprintf(fx->data_dir, sizeof(fx->data_dir), "%s/data", fx->dir);
        fx->opts.data_dir = fx->data_dir;
    }
    fx->base = event_base_new();
    assert_non_null(fx->base);
    snprintf(fx->tenant, sizeof(fx->tenant), "tenant-%ld-%d", (long)getpid(), ++fixtures);
    store_fixture_open(fx);
    return fx;
}

void store_fixture_free(store_fixture *fx)
{
    store_fixture_close(fx);
    event_base_free(fx->base);
    if (fx->dir[0] != '\0')
        store_fixture_remove_tree(fx->dir);
    free(fx);
}

pid_t store_fixture_fork(store_fixture *fx)
{
    store_fixture_close(fx);
    pid_t pid = fork();
    assert_true(pid >= 0);
    return pid;
}

void store_fixture_reopen_after_kill(store_fixture *fx, pid_t pid)
{
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    store_fixture_open(fx);
}

sqlite3 *store_fixture_open_raw(const store_fixture *fx)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/pins.db", fx->data_dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    return db;
}

int64_t store_fixture_raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}
