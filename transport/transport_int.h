/* transport/transport_int.h: what the files of transport/ share (conn.c owns connections; h1.c
 * speaks HTTP/1.1 on one). Not for other folders.
 */
#ifndef PINS_TRANSPORT_TRANSPORT_INT_H
#define PINS_TRANSPORT_TRANSPORT_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "rpc/core.h"
#include "transport/transport.h"

struct bufferevent;

/* ---- connections -------------------------------------------------------------------------- */

typedef struct transport__conn transport__conn;

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
