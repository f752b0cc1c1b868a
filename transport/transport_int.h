/* transport/transport_int.h: what the files of transport/ share (conn.c owns connections; h1.c
 * speaks HTTP/1.1 on one). Not for other folders.
 */
#ifndef PINS_TRANSPORT_TRANSPORT_INT_H
#define PINS_TRANSPORT_TRANSPORT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/core.h"
#include "transport/transport.h"

struct bufferevent;
struct evbuffer;
struct event;
struct transport_h1;

/* ---- connections -------------------------------------------------------------------------- */

typedef struct transport__conn transport__conn;

/* ---- the connection (conn.c) ------------------------------------------------------------- */

/* Past this many bytes waiting in the socket's output buffer an HTTP/2 connection stops reading
 * (its peer does not read what it is sent) and nghttp2 is not asked for more frames. */
#define TRANSPORT__OUTPUT_HIGH_WATER (1u << 20)

struct nghttp2_session;
struct transport__h2_stream;

enum transport__proto { TRANSPORT__SNIFF, TRANSPORT__H2, TRANSPORT__H1 };

struct transport__conn {
    struct transport__conn *prev, *next;
    transport_worker *tw;
    rpc_worker *w; /* tw->w */
    struct bufferevent *bev;
    int plain_fd; /* the socket, written directly while the output buffer is empty; -1 over TLS */
    struct nghttp2_session *h2;
    enum transport__proto proto;
    int in_recv;             /* inside a read callback (nghttp2_session_mem_recv, llhttp) */
    bool want_flush;         /* output produced inside callbacks */
    bool closing;            /* close once the outermost callback unwinds */
    bool goaway_sent;        /* draining */
    bool close_after_flush;  /* HTTP/1.1 asked to close once the output drained */
    uint32_t varies_indexed; /* varying header names indexed once, by name length (h2.c) */
    bool read_paused;        /* the peer does not read: stop reading it (OUTPUT_HIGH_WATER) */
    bool lingering;          /* closed for writing after GOAWAY; reading until the peer closes */
    struct transport_h1 *h1;
    struct transport__h2_stream *streams; /* h2.c */
    size_t nstreams;
    size_t charged;          /* bytes charged to this connection (transport__conn_charge) */
    int64_t out_progress_ns; /* when response bytes last left a stream's buffer */
    uint64_t wire_sent;      /* bytes that left the output buffer (on_output_change) */
    uint64_t wire_seen;      /* wire_sent at the last tick */
    int64_t wire_stuck_ns;   /* since when output waits and none left; 0: it moves */
    int64_t over_ns;         /* since when the tick saw it over its budget; 0: it is not */
    struct event *linger_ev; /* ends a lingering close */
};

/* Sends what the connection has (nghttp2's frames, within the high-water mark); closes it when
 * it is over. Not inside a read callback (in_recv): set want_flush there instead. */
void transport__conn_flush(transport__conn *c);
/* Frees c when it is closing and no callback of its is on the stack. */
void transport__conn_maybe_free(transport__conn *c);
/* True when c or its worker holds more than its budget of buffered bytes. */
bool transport__conn_over_budget(const transport__conn *c);
/* Charges n response bytes to c without refusal: an answer that was produced goes out. */
void transport__conn_charge_out(transport__conn *c, size_t n);

/* ---- HTTP/2 (h2.c) ---------------------------------------------------------------------- */

/* Starts the nghttp2 session of c (the preface was seen). Returns 0 or PINS_ENOMEM. */
int transport__h2_start(transport__conn *c);
/* Feeds what in holds to the session and drains it; a protocol error sets c->closing. */
void transport__h2_recv(transport__conn *c, struct evbuffer *in);
/* Lets nghttp2 write its frames. Returns 0, or nonzero when the session failed. */
int transport__h2_send(transport__conn *c);
/* True when the session wants to write. */
bool transport__h2_want_write(const transport__conn *c);
/* True when the session wants neither to read nor to write (it ended after GOAWAY). */
bool transport__h2_done(const transport__conn *c);
/* Queues GOAWAY naming the last stream processed (idle, drain). */
void transport__h2_goaway(transport__conn *c);
/* Closes every stream (their calls are detached or abandoned) and frees the session. */
void transport__h2_free(transport__conn *c);
/* The per-stream part of the worker tick: answers requests not complete within limit
 * nanoseconds of their HEADERS and resets watch streams whose reader took nothing for as long.
 * Returns true when something was answered (the caller flushes). */
bool transport__h2_tick(transport__conn *c, int64_t now, int64_t limit);

/* For transport/h1.c: the connection's bufferevent, its worker, and a request to close it once the
 * outermost callback unwinds (after the output drained when after_flush is true). */
struct bufferevent *transport__conn_bev(transport__conn *c);
rpc_worker *transport__conn_worker(transport__conn *c);
void transport__conn_close(transport__conn *c, bool after_flush);

/* ---- buffered bytes ---------------------------------------------------------------------------
 *
 * What a connection holds for its peer (request bodies, decoded request messages, response
 * output not yet sent) is charged to the connection (PINS_CONN_BUFFER_BYTES) and to the process
 * (PINS_BUFFER_BYTES, shared out evenly between the workers, which the kernel gives connections
 * evenly too). A charge that would pass either limit is refused, except the first charge
 * of a connection that holds nothing, so that one request at a time always makes progress; the
 * caller then refuses the request (RESOURCE_EXHAUSTED, HTTP 503) instead of buffering it. */

/* Charges n bytes to c and the process. Returns 0 or PINS_ERESOURCE_EXHAUSTED. */
int transport__conn_charge(transport__conn *c, size_t n);
/* Gives back n bytes charged to c. */
void transport__conn_uncharge(transport__conn *c, size_t n);

/* ---- metrics (metrics.c) --------------------------------------------------------------------- */

void transport__metrics_buffer_refused(void);
/* reason: "idle", "output_stalled", "protocol_error" (nghttp2 sent GOAWAY with an error). */
void transport__metrics_conn_closed(const char *reason);
void transport__metrics_request_timeout(void);

#endif
