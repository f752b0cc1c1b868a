/* store/evloop.c: socket watchers and timers on a libevent loop, for backends that talk to a
 * server (STYLE.md rule 18; the PostgreSQL backend uses them, store/loop.c has the deferred call).
 *
 * Two adapters: a watcher of a connection's socket (readable, and writable while libpq has bytes
 * it could not send or a connection attempt waits for the socket), and a one-shot timer that
 * drives reconnection, connect timeouts and deadlines. A client library's socket may change while
 * it connects (libpq's does), so a watcher is rebound by store__io_set rather than kept per fd.
 */
#include "store/store_int.h"

#include <stdlib.h>

#include <event2/event.h>

#include "common/error.h"

struct store__io {
    struct event_base *base;
    struct event *ev;
    int fd;
    short what;
    void (*fn)(void *arg, bool readable, bool writable);
    void *arg;
};

struct store__timer {
    struct event *ev;
    void (*fn)(void *arg);
    void *arg;
};

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    store__io *io = arg;
    io->fn(io->arg, (what & EV_READ) != 0, (what & EV_WRITE) != 0);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    store__timer *t = arg;
    t->fn(t->arg);
}

int store__io_new(struct event_base *base, void (*fn)(void *arg, bool readable, bool writable),
                  void *arg, store__io **pio)
{
    store__io *io = calloc(1, sizeof(*io));
    if (io == NULL)
        return PINS_ENOMEM;
    io->base = base;
    io->fd = -1;
    io->fn = fn;
    io->arg = arg;
    *pio = io;
    return 0;
}

int store__io_set(store__io *io, int fd, bool want_read, bool want_write)
{
    short what = (short)(EV_PERSIST | (want_read ? EV_READ : 0) | (want_write ? EV_WRITE : 0));
    if (io->ev != NULL && io->fd == fd && io->what == what)
        return 0;
    if (io->ev != NULL) {
        event_free(io->ev);
        io->ev = NULL;
    }
    io->fd = fd;
    io->what = what;
    if (fd < 0 || (!want_read && !want_write))
        return 0;
    io->ev = event_new(io->base, fd, what, on_io, io);
    if (io->ev == NULL || event_add(io->ev, NULL) != 0)
        return PINS_ENOMEM;
    return 0;
}

void store__io_free(store__io *io)
{
    if (io == NULL)
        return;
    if (io->ev != NULL)
        event_free(io->ev);
    free(io);
}

int store__timer_new(struct event_base *base, void (*fn)(void *arg), void *arg,
                     store__timer **ptimer)
{
    store__timer *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return PINS_ENOMEM;
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(base, on_timer, t);
    if (t->ev == NULL) {
        free(t);
        return PINS_ENOMEM;
    }
    *ptimer = t;
    return 0;
}

void store__timer_arm(store__timer *t, int64_t ms)
{
    if (evtimer_pending(t->ev, NULL))
        return;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(t->ev, &tv);
}

void store__timer_free(store__timer *t)
{
    if (t == NULL)
        return;
    event_free(t->ev);
    free(t);
}
