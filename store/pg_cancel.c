/* store/pg_cancel.c: the PostgreSQL backend's cancel requests (store/pg_int.h).
 *
 * PQcancel opens a connection of its own to the server and waits for it, so it runs on one
 * process-wide thread (started at the first cancel, detached, every signal blocked) fed by a
 * small queue; the loops only copy the connection's cancel key (PQgetCancel, no I/O). A request
 * the full queue cannot take is dropped: the connection is then dropped STUCK_NS past the
 * deadline, as when the server does not answer the cancel (pg_conn.c, the tick).
 */
#include "store/pg_int.h"

#include <pthread.h>
#include <signal.h>

#define CANCEL_QUEUE 64

static pthread_mutex_t cancel_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cancel_cv = PTHREAD_COND_INITIALIZER;
static PGcancel *cancel_q[CANCEL_QUEUE];
static int cancel_first, cancel_len;
static bool cancel_started;

static void *cancel_main(void *arg)
{
    for (;;) {
        pthread_mutex_lock(&cancel_mu);
        while (cancel_len == 0)
            pthread_cond_wait(&cancel_cv, &cancel_mu);
        PGcancel *pc = cancel_q[cancel_first];
        cancel_q[cancel_first] = NULL;
        cancel_first = (cancel_first + 1) % CANCEL_QUEUE;
        cancel_len--;
        pthread_mutex_unlock(&cancel_mu);
        char err[256];
        (void)PQcancel(pc, err, (int)sizeof(err)); /* the statement's own error tells the rest */
        PQfreeCancel(pc);
    }
    return NULL;
}

static bool cancel_thread_start(void)
{
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return false;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t t;
    bool ok = pthread_create(&t, &attr, cancel_main, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return ok;
}

/* Asks c's server to cancel what it is running; true when the request was queued. */
bool store__pg_cancel_post(pg_conn *c)
{
    PGcancel *pc = PQgetCancel(c->pg);
    if (pc == NULL)
        return false;
    bool queued = false;
    pthread_mutex_lock(&cancel_mu);
    if (!cancel_started)
        cancel_started = cancel_thread_start();
    if (cancel_started && cancel_len < CANCEL_QUEUE) {
        cancel_q[(cancel_first + cancel_len) % CANCEL_QUEUE] = pc;
        cancel_len++;
        queued = true;
        pthread_cond_signal(&cancel_cv);
    }
    pthread_mutex_unlock(&cancel_mu);
    if (!queued)
        PQfreeCancel(pc);
    return queued;
}
