/* store/sqlite_ckpt.c: the SQLite backend's WAL checkpointer (sqlite_int.h).
 *
 * A checkpoint copies the WAL's pages back into the database file and fsyncs both. Left to SQLite
 * (wal_autocheckpoint), it runs inside the COMMIT that crossed the threshold, on a worker's
 * thread and under the store's write mutex: every call on that worker and every other writer
 * waited for the copy and the fsync (tens to hundreds of milliseconds for a WAL of 10000 pages).
 * Here the sessions' connections only report the WAL's size (sqlite3_wal_hook, which also turns
 * their automatic checkpoints off) and this thread, on a connection of its own, runs PASSIVE
 * checkpoints: they copy what no reader still needs, never take the write lock and never wait
 * for a reader or a writer, so no request waits for them. A commit that leaves at least
 * STORE__CKPT_FRAMES frames wakes the thread; it also runs every STORE__CKPT_INTERVAL_MS while
 * the WAL holds frames, so that a quiet database is checkpointed too.
 *
 * The WAL file is rewound by the next writer once every frame is in the database (SQLite does
 * that itself) and truncated to journal_size_limit (configure() in sqlite.c) when it had grown.
 * Under a steady stream of commits a checkpoint may never catch up with the last frame, and the
 * WAL would grow without end. So a run repeats its pass, without any lock, while the one before
 * left frames behind (at most CKPT_PASSES times): each copies only what was committed during the
 * previous one, and one that ends between two group commits lets the next writer rewind. Only
 * when the WAL still holds STORE__CKPT_LOCKED_FRAMES frames after that does a last pass hold the
 * store's write mutex (this process's writers wait, its readers do not) to copy the rest, so that
 * the WAL is wholly in the database when the next writer starts. The same holds when the passes
 * left at most STORE__CKPT_LOCKED_SMALL frames, at any size of the WAL: writers wait for a copy of
 * a few pages, and the WAL is rewound at almost every run instead of growing to
 * STORE__CKPT_LOCKED_FRAMES between two rewinds, so each run copies fewer versions of the same
 * pages (measured: 6,400 upserts/s paced over 100,000 keys, 125 against 98 us of CPU per upsert).
 * Writers never wait for the bulk of a copy or its fsync, unless this thread falls behind: a
 * commit that leaves STORE__CKPT_BACKSTOP_FRAMES frames runs a PASSIVE checkpoint itself, so the
 * WAL stays bounded on a machine too busy to schedule this thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include <sqlite3.h>

#include "common/error.h"
#include "observability/log.h"
#include "observability/metrics.h"
#include "store/sqlite_int.h"

struct store__ckpt {
    sqlite3 *db;                 /* the checkpointer's own connection, used only on its thread */
    pthread_mutex_t *write_lock; /* the store's write mutex (borrowed) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;         /* under mu */
    bool due;          /* under mu: a commit crossed STORE__CKPT_FRAMES */
    bool written;      /* under mu: a session committed since the last run */
    int wal_frames;    /* under mu: the WAL's frames after the last commit a session reported */
    int backstop_at;   /* under mu: the WAL's frames when a writer last ran the backstop */
    uint64_t runs;     /* under mu: checkpoints run */
    uint64_t failures; /* under mu: checkpoints that failed (other than SQLITE_BUSY) */
};

/* Passes of one run without the write mutex, while each leaves frames behind. */
#define CKPT_PASSES 4

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;
static metrics_family *m_runs;

static void metrics_init(void)
{
    static const char *const result[] = {"result"};
    m_runs = metrics_counter_new("store_sqlite_checkpoints_total",
                                 "WAL checkpoints of the embedded store by result (ok_locked: "
                                 "the last pass held the write mutex; busy: another connection "
                                 "was checkpointing).",
                                 result, 1);
}

/* The WAL's end (its frames) after the last commit a session reported. */
static int wal_end(store__ckpt *c)
{
    pthread_mutex_lock(&c->mu);
    int end = c->wal_frames;
    pthread_mutex_unlock(&c->mu);
    return end;
}

static void *ckpt_main(void *arg)
{
    store__ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        if (!c->due) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += (long)STORE__CKPT_INTERVAL_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            while (!c->stop && !c->due) {
                if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT)
                    break;
            }
            if (c->stop)
                break;
            if (!c->due && !c->written)
                continue; /* nothing written since the last checkpoint */
        }
        c->due = false;
        c->written = false;
        pthread_mutex_unlock(&c->mu);
        bool locked = false;
        int log = 0, done = 0, end = 0, rc = SQLITE_OK;
        for (int pass = 0; pass < CKPT_PASSES; pass++) {
            rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
            if (rc != SQLITE_OK)
                break;
            /* Caught up with the last commit (or a writer rewound the WAL meanwhile): the next
             * writer rewinds it. */
            end = wal_end(c);
            if (done >= end)
                break;
        }
        /* The mutex only for a short rest: a reader holding an old snapshot stops the passes,
         * and a locked pass would then copy nothing, or everything once the reader is gone,
         * while every writer waits. */
        if (rc == SQLITE_OK && done < end &&
            ((end >= STORE__CKPT_LOCKED_FRAMES && end - done <= STORE__CKPT_LOCKED_REST) ||
             end - done <= STORE__CKPT_LOCKED_SMALL)) {
            pthread_mutex_lock(c->write_lock);
            rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
            pthread_mutex_unlock(c->write_lock);
            locked = true;
        }
        const char *v[] = {rc != SQLITE_OK ? (rc == SQLITE_BUSY ? "busy" : "error")
                           : locked        ? "ok_locked"
                                           : "ok"};
        if (m_runs != NULL)
            metrics_counter_add(m_runs, v, 1);
        pthread_mutex_lock(&c->mu);
        c->runs++;
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            if (c->failures++ == 0 || c->failures % 1000 == 0) {
                pthread_mutex_unlock(&c->mu);
                pins_log_warn("sqlite checkpoint failed", "error", sqlite3_errstr(rc), NULL);
                pthread_mutex_lock(&c->mu);
            }
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int store__ckpt_start(const char *path, pthread_mutex_t *write_lock, store__ckpt **pc)
{
    pthread_once(&metrics_once, metrics_init);
    store__ckpt *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return PINS_ENOMEM;
    c->write_lock = write_lock;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return PINS_ENOMEM;
    }
    pthread_condattr_t ca;
    bool cv_ok = pthread_condattr_init(&ca) == 0;
    if (cv_ok) {
        cv_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
                pthread_cond_init(&c->cv, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!cv_ok) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return PINS_ENOMEM;
    }
    int rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) /* reading the schema may wait for another process's lock */
        rc = sqlite3_busy_timeout(c->db, STORE__BUSY_TIMEOUT_MS);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(c->db,
                          "PRAGMA wal_autocheckpoint = 0;"
                          /* Reading the schema opens the WAL: until a connection has read the
                           * database, a checkpoint on it does nothing. */
                          " SELECT count(*) FROM sqlite_master",
                          NULL, NULL, NULL);
    int err = rc == SQLITE_OK ? 0 : rc == SQLITE_NOMEM ? PINS_ENOMEM : PINS_ESTORE;
    if (err == 0 && pthread_create(&c->thread, NULL, ckpt_main, c) != 0)
        err = PINS_ENOMEM;
    if (err != 0) {
        sqlite3_close(c->db);
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        free(c);
        return err;
    }
    *pc = c;
    return 0;
}

void store__ckpt_stop(store__ckpt *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    sqlite3_close(c->db);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* sqlite3_wal_hook: runs after every commit of a session's connection, on its thread. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int frames)
{
    store__ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    c->wal_frames = frames;
    c->written = true;
    if (frames >= STORE__CKPT_FRAMES && !c->due) {
        c->due = true;
        pthread_cond_signal(&c->cv);
    }
    /* Once per eighth of the backstop's length of growth (or after the WAL was rewound): a
     * reader that keeps the WAL from being rewound would otherwise make every commit run it. */
    bool backstop =
        frames >= STORE__CKPT_BACKSTOP_FRAMES &&
        (frames < c->backstop_at || frames - c->backstop_at >= STORE__CKPT_BACKSTOP_FRAMES / 8);
    if (backstop)
        c->backstop_at = frames;
    pthread_mutex_unlock(&c->mu);
    if (backstop) {
        /* The checkpointer's thread has fallen behind: this writer (holding the store's write
         * mutex) copies what no reader needs, so that the next writer can rewind the WAL. A
         * callback of sqlite3_wal_hook may checkpoint (SQLite's own automatic one does). */
        int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&c->mu);
        c->runs++;
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            c->failures++;
        pthread_mutex_unlock(&c->mu);
    }
    return SQLITE_OK;
}

void store__ckpt_attach(store__ckpt *c, sqlite3 *db)
{
    if (c != NULL)
        sqlite3_wal_hook(db, on_wal, c);
}

uint64_t store__ckpt_runs(store__ckpt *c)
{
    if (c == NULL)
        return 0;
    pthread_mutex_lock(&c->mu);
    uint64_t n = c->runs;
    pthread_mutex_unlock(&c->mu);
    return n;
}
