/* transport/transport.h: connections, as the composition root (server/server.c) drives them.
 *
 * One transport_worker per worker thread holds that worker's open connections and its part of
 * the buffered-byte budget. Accepted sockets become connections: TLS when a context is set, then
 * sniffed (the HTTP/2 preface, else HTTP/1.1); every request is handed to the protocols
 * (protocols/protocols.h) as an exchange. Everything runs on the worker's thread, except the
 * connection count across workers (nconns_all, atomic) and the buffered gauge (relaxed loads).
 */
#ifndef PINS_TRANSPORT_TRANSPORT_H
#define PINS_TRANSPORT_TRANSPORT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/core.h"

struct transport__conn;

typedef struct transport_worker {
    rpc_worker *w;                 /* the core's worker: event base, configuration, call arenas */
    void *tls_ctx;                 /* SSL_CTX * (transport/tls.h), NULL without TLS; borrowed */
    _Atomic int *nconns_all;       /* open connections across workers, for PINS_MAX_CONNECTIONS */
    struct transport__conn *conns; /* doubly linked list of open connections */
    size_t nconns;
    _Atomic int64_t buffered; /* bytes its connections hold (transport__conn_charge); written by
                                 the worker only, read by the metrics gauge */
    int64_t buffer_share;     /* its part of PINS_BUFFER_BYTES: the total over the workers */
} transport_worker;

/* Accepts fd on tw (TLS when tw has a context). Takes fd. */
void transport_conn_accept(transport_worker *tw, int fd);
/* Starts a graceful shutdown of every connection (GOAWAY, finish in-flight). */
void transport_conn_drain_all(transport_worker *tw);
/* Closes every connection now. */
void transport_conn_close_all(transport_worker *tw);
/* Runs every TRANSPORT_TICK_MS on each worker: answers requests that did not arrive within
 * PINS_REQUEST_TIMEOUT_SECONDS and closes connections whose output stalled past it. */
#define TRANSPORT_TICK_MS 250
void transport_conn_tick(transport_worker *tw);
/* Open connections of tw. */
size_t transport_conn_count(const transport_worker *tw);

/* Registers the transport's metric families (connection_buffered_bytes sampled over the n
 * workers of tws, which must outlive the registry's use; connection_buffer_refusals_total,
 * connection_closed_total, request_timeouts_total). Call again with a new array to re-bind. */
void transport_metrics_init(transport_worker *tws, int n);

#endif
