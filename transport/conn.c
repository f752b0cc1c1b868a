/* transport/conn.c: connections: accept, TLS, sniffing the HTTP/2 preface, the buffered-byte
 * budgets, the idle timeout and the lingering close, output stalls and the per-worker tick. The
 * protocols on a connection are h2.c (HTTP/2) and h1.c (HTTP/1.1).
 *
 * A connection is never freed inside one of its own callbacks: closing is set, and the outermost
 * callback frees it (conn_maybe_free), as redis's freeClientAsync does.
 */
#include "transport/transport_int.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "observability/log.h"
#include "transport/h1.h"
#include "transport/tls.h"
#include "common/timeutil.h"

#define PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define PREFACE_LEN 24
#define LINGER_MS   2000 /* reading after GOAWAY, until the peer closes */

static void conn_free(transport__conn *c);

/* ---- buffered bytes ------------------------------------------------------------------------ */

/* The worker's part of PINS_BUFFER_BYTES. Each worker counts its own connections' bytes, so
 * that a charge is a plain add on the worker's thread instead of an atomic operation on a line
 * every worker writes; the gauge sums the workers (relaxed loads). */
static int64_t worker_buffered(const transport_worker *tw)
{
    return atomic_load_explicit(&tw->buffered, memory_order_relaxed);
}

static void worker_add(transport_worker *tw, int64_t n)
{
    atomic_store_explicit(&tw->buffered, worker_buffered(tw) + n, memory_order_relaxed);
}

bool transport__conn_over_budget(const transport__conn *c)
{
    return (int64_t)c->charged > c->w->server->cfg->conn_buffer_bytes ||
           worker_buffered(c->tw) > c->tw->buffer_share;
}

int transport__conn_charge(transport__conn *c, size_t n)
{
    transport_worker *tw = c->tw;
    int64_t before = worker_buffered(tw);
    bool refuse = before >= tw->buffer_share;
    if (!refuse && c->charged > 0)
        refuse = (int64_t)(c->charged + n) > c->w->server->cfg->conn_buffer_bytes ||
                 before + (int64_t)n > tw->buffer_share;
    if (refuse) {
        transport__metrics_buffer_refused();
        return PINS_ERESOURCE_EXHAUSTED;
    }
    worker_add(tw, (int64_t)n);
    c->charged += n;
    return 0;
}

void transport__conn_uncharge(transport__conn *c, size_t n)
{
    if (n == 0)
        return;
    if (n > c->charged)
        n = c->charged;
    c->charged -= n;
    worker_add(c->tw, -(int64_t)n);
}

/* Response bytes are charged without refusal: an answer that was produced goes out. What limits
 * them is that a connection over its budget gets no new streams and no further stream output. */
void transport__conn_charge_out(transport__conn *c, size_t n)
{
    c->charged += n;
    worker_add(c->tw, (int64_t)n);
}

/* ---- connection --------------------------------------------------------------------------------
 */

static void conn_free(transport__conn *c)
{
    transport_worker *tw = c->tw;
    if (c->h2 != NULL)
        transport__h2_free(c);
    if (c->h1 != NULL)
        transport__h1_free(c->h1);
    if (c->bev != NULL)
        bufferevent_free(c->bev);
    if (c->linger_ev != NULL)
        event_free(c->linger_ev);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        tw->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    tw->nconns--;
    atomic_fetch_sub(tw->nconns_all, 1);
    free(c);
}

static bool conn_done(transport__conn *c)
{
    if (c->h2 == NULL)
        return false;
    return transport__h2_done(c) && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
}

static void on_linger_over(evutil_socket_t fd, short what, void *arg)
{
    transport__conn *c = arg;
    c->closing = true;
    transport__conn_maybe_free(c);
}

/* The connection is over and its output written: an HTTP/2 session after GOAWAY, an HTTP/1.1
 * connection after a "connection: close" answer (possibly to a request whose body it refused to
 * read). Over plain TCP the write side is shut and what the peer still sends is read and dropped
 * until it closes, for LINGER_MS at most: closing a socket with unread input sends a TCP reset,
 * which can destroy the last answer or GOAWAY before the peer read it, and the peer would then
 * see its requests fail instead of reading the answer or retrying them on a new connection.
 * Over TLS the connection just closes. */
static void conn_finish(transport__conn *c)
{
    if (c->lingering || c->closing)
        return;
    int fd = bufferevent_getfd(c->bev);
    if (c->tw->tls_ctx == NULL && fd >= 0 && c->linger_ev == NULL)
        c->linger_ev = evtimer_new(c->w->base, on_linger_over, c);
    if (c->tw->tls_ctx != NULL || fd < 0 || c->linger_ev == NULL || shutdown(fd, SHUT_WR) != 0) {
        c->closing = true;
        return;
    }
    c->lingering = true;
    struct timeval tv = {.tv_sec = LINGER_MS / 1000, .tv_usec = (LINGER_MS % 1000) * 1000};
    evtimer_add(c->linger_ev, &tv);
    bufferevent_set_timeouts(c->bev, NULL, NULL);
    bufferevent_enable(c->bev, EV_READ);
}

/* Sends what nghttp2 has, within the output high-water mark. */
void transport__conn_flush(transport__conn *c)
{
    c->want_flush = false;
    if (c->closing)
        return;
    if (c->proto == TRANSPORT__H1) {
        if (c->close_after_flush && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_finish(c);
        return;
    }
    if (c->h2 == NULL)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) < TRANSPORT__OUTPUT_HIGH_WATER) {
        int rv = transport__h2_send(c);
        if (rv != 0) {
            c->closing = true;
            return;
        }
    }
    if (conn_done(c))
        conn_finish(c);
}

void transport__conn_maybe_free(transport__conn *c)
{
    if (c->closing && c->in_recv == 0)
        conn_free(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    transport__conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->lingering) {
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    if (c->proto == TRANSPORT__SNIFF) {
        size_t n = evbuffer_get_length(in);
        size_t k = n < PREFACE_LEN ? n : PREFACE_LEN;
        unsigned char *p = evbuffer_pullup(in, (ssize_t)k);
        if (p == NULL)
            return;
        if (memcmp(p, PREFACE, k) != 0) {
            c->h1 = transport__h1_new(c);
            if (c->h1 == NULL) {
                conn_free(c);
                return;
            }
            c->proto = TRANSPORT__H1;
        } else if (k < PREFACE_LEN) {
            return;
        } else if (transport__h2_start(c) != 0) {
            conn_free(c);
            return;
        }
    }
    c->in_recv++;
    if (c->proto == TRANSPORT__H1) {
        transport__h1_on_read(c->h1, in);
    } else {
        transport__h2_recv(c, in);
    }
    c->in_recv--;
    transport__conn_flush(c);
    if (c->proto == TRANSPORT__H2 && !c->closing && !c->lingering && !c->read_paused &&
        evbuffer_get_length(bufferevent_get_output(bev)) >= TRANSPORT__OUTPUT_HIGH_WATER) {
        /* The peer does not read what we send: read no more requests from it until it does
         * (on_write), so that nghttp2's queue of frames does not grow either. */
        bufferevent_disable(bev, EV_READ);
        c->read_paused = true;
    }
    transport__conn_maybe_free(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    transport__conn *c = arg;
    if (c->proto == TRANSPORT__H1) {
        if (c->close_after_flush) {
            conn_finish(c);
        } else {
            c->in_recv++;
            transport__h1_on_write_done(c->h1);
            c->in_recv--;
        }
        transport__conn_maybe_free(c);
        return;
    }
    if (c->read_paused && !c->lingering && !c->closing) {
        c->read_paused = false;
        bufferevent_enable(bev, EV_READ);
    }
    if (c->h2 != NULL && transport__h2_want_write(c))
        transport__conn_flush(c);
    else if (conn_done(c))
        conn_finish(c);
    transport__conn_maybe_free(c);
}

static void on_event(struct bufferevent *bev, short events, void *arg)
{
    transport__conn *c = arg;
    if (events & BEV_EVENT_CONNECTED) {
        /* TLS handshake done; ALPN chose h2 or http/1.1, the preface sniffing decides. */
        return;
    }
    if (c->lingering) {
        c->closing = true; /* the peer closed (or failed) after our last answer: done */
        transport__conn_maybe_free(c);
        return;
    }
    if ((events & BEV_EVENT_TIMEOUT) &&
        (c->nstreams > 0 || (c->h1 != NULL && transport__h1_busy(c->h1)))) {
        bufferevent_enable(bev, EV_READ); /* busy, not idle */
        return;
    }
    if ((events & BEV_EVENT_TIMEOUT) && c->h2 != NULL && !c->goaway_sent && !c->lingering) {
        /* Idle: GOAWAY first (RFC 9113 section 6.8), naming the last stream processed, so that
         * a request the client sends meanwhile is known unprocessed and retried elsewhere; the
         * connection closes once the GOAWAY is written (conn_finish). */
        transport__metrics_conn_closed("idle");
        transport__h2_goaway(c);
        bufferevent_enable(bev, EV_READ);
        transport__conn_flush(c);
        transport__conn_maybe_free(c);
        return;
    }
    if ((events & BEV_EVENT_EOF) && c->h1 != NULL && !transport__h1_busy(c->h1)) {
        /* An HTTP/1.1 client that half-closes after its requests still gets the answers queued. */
        transport__conn_close(c, true);
        return;
    }
    c->closing = true;
    transport__conn_maybe_free(c);
}

/* Counts the bytes that leave the connection's output buffer, for the stall check of the tick. */
static void on_output_change(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    transport__conn *c = arg;
    c->wire_sent += info->n_deleted;
}

void transport_conn_accept(transport_worker *tw, int fd)
{
    rpc_worker *w = tw->w;
    rpc_server *s = w->server;
    if (atomic_fetch_add(tw->nconns_all, 1) >= s->cfg->max_connections) {
        atomic_fetch_sub(tw->nconns_all, 1);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    transport__conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        atomic_fetch_sub(tw->nconns_all, 1);
        close(fd);
        return;
    }
    c->tw = tw;
    c->w = w;
    c->plain_fd = tw->tls_ctx != NULL ? -1 : fd;
    if (tw->tls_ctx != NULL) {
        struct ssl_st *ssl = transport_tls_ssl_new(tw->tls_ctx);
        if (ssl != NULL)
            c->bev = bufferevent_openssl_socket_new(w->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                    BEV_OPT_CLOSE_ON_FREE);
    } else {
        c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (c->bev == NULL) {
        atomic_fetch_sub(tw->nconns_all, 1);
        close(fd);
        free(c);
        return;
    }
    c->next = tw->conns;
    if (tw->conns != NULL)
        tw->conns->prev = c;
    tw->conns = c;
    tw->nconns++;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    evbuffer_add_cb(bufferevent_get_output(c->bev), on_output_change, c);
    if (s->cfg->idle_timeout_seconds > 0) {
        struct timeval tv = {.tv_sec = s->cfg->idle_timeout_seconds};
        bufferevent_set_timeouts(c->bev, &tv, NULL);
    }
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

void transport_conn_drain_all(transport_worker *tw)
{
    for (transport__conn *c = tw->conns; c != NULL;) {
        transport__conn *next = c->next;
        if (c->h2 != NULL && !c->goaway_sent) {
            transport__h2_goaway(c);
            if (!c->in_recv) {
                transport__conn_flush(c);
                transport__conn_maybe_free(c);
            }
        } else if (c->h1 != NULL) {
            c->in_recv++;
            transport__h1_drain(c->h1);
            c->in_recv--;
            transport__conn_flush(c);
            transport__conn_maybe_free(c);
        } else if (c->h2 == NULL && !c->in_recv) {
            c->closing = true;
            transport__conn_maybe_free(c);
        }
        c = next;
    }
}

/* A request that did not arrive in time: answered (408, DEADLINE_EXCEEDED) or reset. */
void transport_conn_tick(transport_worker *tw)
{
    const pins_config *cfg = tw->w->server->cfg;
    int64_t now = pins_time_mono_ns();
    int64_t limit = (int64_t)cfg->request_timeout_seconds * 1000000000;
    for (transport__conn *c = tw->conns; c != NULL;) {
        transport__conn *next = c->next;
        if (c->closing || c->lingering) {
            c = next;
            continue;
        }
        /* Bytes in the socket's output buffer that the peer does not read, on any protocol
         * (an HTTP/2 peer whose reading paused, an SSE or HTTP/1.1 client that stopped). */
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 ||
            c->wire_sent != c->wire_seen) {
            c->wire_stuck_ns = 0;
        } else if (c->wire_stuck_ns == 0) {
            c->wire_stuck_ns = now;
        } else if (now - c->wire_stuck_ns >= limit) {
            transport__metrics_conn_closed("output_stalled");
            c->closing = true;
            transport__conn_maybe_free(c);
            c = next;
            continue;
        }
        c->wire_seen = c->wire_sent;
        if (c->h2 == NULL) {
            c = next;
            continue;
        }
        c->in_recv++;
        bool answered = transport__h2_tick(c, now, limit);
        /* Output the peer holds over its budget with flow-control windows it never opens. */
        bool over = (int64_t)c->charged > cfg->conn_buffer_bytes;
        if (!over)
            c->over_ns = 0;
        else if (c->over_ns == 0)
            c->over_ns = now;
        int64_t since = c->out_progress_ns > c->over_ns ? c->out_progress_ns : c->over_ns;
        if (over && now - since >= limit) {
            transport__metrics_conn_closed("output_stalled");
            c->closing = true;
        }
        c->in_recv--;
        if (answered)
            transport__conn_flush(c);
        transport__conn_maybe_free(c);
        c = next;
    }
}

void transport_conn_close_all(transport_worker *tw)
{
    while (tw->conns != NULL)
        conn_free(tw->conns);
}

struct bufferevent *transport__conn_bev(transport__conn *c)
{
    return c->bev;
}

rpc_worker *transport__conn_worker(transport__conn *c)
{
    return c->w;
}

void transport__conn_close(transport__conn *c, bool after_flush)
{
    if (after_flush) {
        c->close_after_flush = true;
        bufferevent_disable(c->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_finish(c);
    } else {
        c->closing = true;
    }
    transport__conn_maybe_free(c);
}

size_t transport_conn_count(const transport_worker *tw)
{
    return tw->nconns;
}
