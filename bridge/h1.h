/* bridge/h1.h: HTTP/1.1 connections (llhttp), plugged into rpc/conn.c.
 *
 * rpc/conn.c sniffs each new connection: without the HTTP/2 preface (or with ALPN http/1.1) it
 * hands the connection to this module, which parses requests with llhttp, turns each into a
 * bridge_stream (bridge/bridge.h) and writes the responses, in order, to the connection's
 * bufferevent. The connection itself (socket, TLS, list membership, freeing) stays with
 * rpc/conn.c; this module owns its per-connection parser state, created by bridge__h1_new() and
 * freed by bridge__h1_free() (called by conn.c when the connection goes, never from inside one of
 * this module's own calls into conn.c).
 */
#ifndef PINS_BRIDGE_H1_H
#define PINS_BRIDGE_H1_H

#include <stdbool.h>

#include "rpc/rpc_int.h"

struct evbuffer;
typedef struct bridge_h1 bridge_h1;

/* New HTTP/1.1 state for connection c. Returns NULL when out of memory (conn.c then closes). */
bridge_h1 *bridge__h1_new(rpc__conn *c);
/* New bytes arrived in in (the connection's input buffer); consume what was parsed. */
void bridge__h1_on_read(bridge_h1 *h, struct evbuffer *in);
/* The connection's output buffer drained. */
void bridge__h1_on_write_done(bridge_h1 *h);
/* The server drains: answer the request in progress (with Connection: close), then close. */
void bridge__h1_drain(bridge_h1 *h);
/* True while a request's headers are arriving (bounded by the 10 s header timeout) or a request
 * is being answered: the idle timeout must not close then. A request body that stops arriving is
 * left to the idle timeout. */
bool bridge__h1_busy(const bridge_h1 *h);
/* Frees the state; responses in progress are abandoned (their calls cancelled). */
void bridge__h1_free(bridge_h1 *h);

#endif
