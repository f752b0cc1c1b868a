/* tests/unit/support/store_fixture.h: the store and session a store test runs against
 * (tests/unit/store/test_store.c, test_sqlite.c).
 *
 * store_fixture_new() opens the store its options name (the embedded SQLite store in a fresh
 * directory under /tmp when they name no database_url) with one session on an event loop of its
 * own; store_fixture_free() closes them and removes the directory. Every step is asserted with
 * cmocka, so a test that gets a fixture may use it at once.
 */
#ifndef PINS_TESTS_STORE_FIXTURE_H
#define PINS_TESTS_STORE_FIXTURE_H

#include <sqlite3.h>
#include <stdint.h>
#include <sys/types.h>

#include "store/store.h"

struct event_base;

typedef struct store_fixture {
    char dir[64];      /* the temporary directory ("" with a database URL) */
    char data_dir[80]; /* dir/data: store_open creates it */
    store_options opts;
    struct event_base *base;
    store *s;
    store_session *ss;
    char tenant[48]; /* unique per fixture of the process, so that a shared database needs no
                      * truncation */
} store_fixture;

/* A new fixture (store_fixture_free frees it) whose store is opened with opts; without
 * opts.database_url, in a new directory /tmp/<prefix>-XXXXXX (opts.data_dir is its data/). */
store_fixture *store_fixture_new(const char *prefix, store_options opts);
/* Closes the session and the store, frees the loop, removes the directory and frees fx. */
void store_fixture_free(store_fixture *fx);

/* Opens fx's store again with fx->opts, and a session on fx->base. */
void store_fixture_open(store_fixture *fx);
/* Frees fx's session and closes its store (both NULL after). */
void store_fixture_close(store_fixture *fx);

/* Closes fx's store (no database connection crosses the fork) and forks. Returns the child's pid
 * in the parent, 0 in the child. */
pid_t store_fixture_fork(store_fixture *fx);
/* Waits for the child pid, which must have died of SIGKILL, and opens fx's store again. */
void store_fixture_reopen_after_kill(store_fixture *fx, pid_t pid);

/* Removes the directory tree dir and everything in it. */
void store_fixture_remove_tree(const char *dir);

/* The SQLite store's file (data_dir/pins.db) opened read-write beside the store; the caller
 * closes it with sqlite3_close. */
sqlite3 *store_fixture_open_raw(const store_fixture *fx);
/* The integer in the first column of the first row of sql, run on db. */
int64_t store_fixture_raw_int(sqlite3 *db, const char *sql);

#endif
