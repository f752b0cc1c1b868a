/* transport/h1.h: HTTP/1.1 connections (llhttp), plugged into transport/conn.c.
 *
 * transport/conn.c sniffs each new connection: without the HTTP/2 preface (or with ALPN http/1.1)
 * it hands the connection to this module, which parses requests with llhttp, turns each into a
 * proto_stream (protocols/protocols.h) and writes the responses, in order, to the connection's
 * bufferevent. The connection itself (socket, TLS, list membership, freeing) stays with
 * transport/conn.c; this module owns its per-connection parser state, created by
 * transport__h1_new() and freed by transport__h1_free() (called by conn.c when the connection goes,
 * never from inside one of this module's own calls into conn.c).
 */
#ifndef PINS_TRANSPORT_H1_H
#define PINS_TRANSPORT_H1_H

#include <stdbool.h>

#include "transport/transport_int.h"

struct evbuffer;
typedef struct transport_h1 transport_h1;

/* New HTTP/1.1 state for connection c. Returns NULL when out of memory (conn.c then closes). */
transport_h1 *transport__h1_new(transport__conn *c);
/* New bytes arrived in in (the connection's input buffer); consume what was parsed. */
void transport__h1_on_read(transport_h1 *h, struct evbuffer *in);
/* The connection's output buffer drained. */
void transport__h1_on_write_done(transport_h1 *h);
/* The server drains: answer the request in progress (with Connection: close), then close. */
void transport__h1_drain(transport_h1 *h);
/* True while a request's headers are arriving (bounded by the 10 s header timeout) or a request
 * is being answered: the idle timeout must not close then. A request body that stops arriving is
 * left to the idle timeout. */
bool transport__h1_busy(const transport_h1 *h);
/* Frees the state; responses in progress are abandoned (their calls cancelled). */
void transport__h1_free(transport_h1 *h);

#endif
