/* store/loop.c: the deferred call on a libevent loop, for every backend (STYLE.md rule 18; with
 * store/evloop.c, the only store files that know libevent).
 *
 * The SQLite backend commits the writes queued during one loop iteration together, and the
 * PostgreSQL backend cuts its queue into segments once per iteration. Each asks for a call at
 * the end of the iteration through a store__defer: an event with no file descriptor that
 * is activated by hand. An activated event joins the tail of the active queue of its priority, so
 * it runs after every callback already ready in this iteration (all the I/O epoll reported) and
 * before the loop polls again. The event keeps the base's default priority: a lower one would let
 * a steady stream of reads postpone the commit for many iterations.
 */
#include "store/store_int.h"

#include <stdlib.h>

#include <event2/event.h>

#include "common/error.h"

struct store__defer {
    struct event *ev;
    void (*fn)(void *arg);
    void *arg;
};

static void on_deferred(evutil_socket_t fd, short what, void *arg)
{
    store__defer *d = arg;
    d->fn(d->arg);
}

int store__defer_new(struct event_base *base, void (*fn)(void *arg), void *arg,
                     store__defer **pdefer)
{
    store__defer *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return PINS_ENOMEM;
    d->fn = fn;
    d->arg = arg;
    d->ev = event_new(base, -1, 0, on_deferred, d);
    if (d->ev == NULL) {
        free(d);
        return PINS_ENOMEM;
    }
    *pdefer = d;
    return 0;
}

void store__defer_arm(store__defer *d)
{
    event_active(d->ev, EV_TIMEOUT, 0);
}

void store__defer_free(store__defer *d)
{
    if (d == NULL)
        return;
    event_free(d->ev);
    free(d);
}
