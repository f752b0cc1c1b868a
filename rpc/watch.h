/* rpc/watch.h: change notifications for WatchPins streams, across worker threads.
 *
 * A handler that changed a pin publishes the change as a packed WatchPinsResponse; every open
 * WatchPins stream of the same tenant whose prefix matches the key receives it, on whichever
 * worker it lives, in the order the publishing worker published. Publishing costs one atomic
 * load when nobody watches (check rpc_watch_active() before building the event).
 *
 * Delivery between workers goes through a mutex-protected inbox per worker and an event on the
 * worker's loop. Notifications cover the writes of this process; no history is kept, so a stream
 * cannot resume where an earlier one stopped.
 *
 * Bounds (common/config.h). A stream whose reader falls more than PINS_WATCH_PENDING_BYTES behind
 * is ended with RESOURCE_EXHAUSTED. Streams are counted per principal, the subject of the call's
 * RBAC decision ("machine", a JWT's sub, "x-roles"; every caller without credentials is the one
 * principal "anonymous"), at most PINS_WATCH_MAX_PER_PRINCIPAL each and PINS_WATCH_MAX in the
 * process, so one principal holds at most that many times PINS_WATCH_PENDING_BYTES of watch
 * buffers. Transports that support it send the response headers as soon as a stream is
 * subscribed, and a heartbeat on every stream every PINS_SSE_HEARTBEAT_SECONDS (SSE).
 */
#ifndef PINS_RPC_WATCH_H
#define PINS_RPC_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/call.h"

/* True when at least one WatchPins stream is open in the process. */
bool rpc_watch_active(void);
/* Publishes msg (a packed WatchPinsResponse, copied) for (tenant_id, key). origin is the call
 * that made the change (its worker publishes). */
void rpc_watch_publish(rpc_call *origin, const char *tenant_id, const char *key, const uint8_t *msg,
                       size_t len);
/* Subscribes a server-streaming call: it receives every later change of tenant_id whose key
 * starts with prefix ("" for all), until the client leaves, reads too slowly, or the server
 * drains, when the call is finished. On PINS_ERESOURCE_EXHAUSTED *pwhy gets the client-visible
 * reason (in the call's arena, or static). Returns 0, PINS_ERESOURCE_EXHAUSTED (the principal's
 * or the process's watch streams are all in use), PINS_ECANCELLED (the client already left),
 * PINS_ENOMEM. */
int rpc_watch_subscribe(rpc_call *call, const char *tenant_id, const char *prefix,
                        const char **pwhy);

#endif
