/* rpc/watch.h: change notifications for WatchPins streams, across worker threads.
 *
 * A handler that changed a pin publishes the change as a packed WatchPinsResponse; every open
 * WatchPins stream of the same tenant whose prefix matches the key receives it, on whichever
 * worker it lives, in the order the publishing worker published. Publishing costs one atomic
 * load when nobody watches (check rpc_watch_active() before building the event).
 *
 * Delivery between workers goes through a mutex-protected inbox per worker and an event on the
 * worker's loop; a watcher that reads too slowly (more than 4 MiB pending) is ended with
 * RESOURCE_EXHAUSTED rather than buffering without bound. Notifications cover the writes of this
 * process.
 */
#ifndef PINS_RPC_WATCH_H
#define PINS_RPC_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/call.h"

/* Open WatchPins streams in the process at most. */
#define RPC_WATCH_MAX 10000

/* True when at least one WatchPins stream is open in the process. */
bool rpc_watch_active(void);
/* Publishes msg (a packed WatchPinsResponse, copied) for (tenant_id, key). origin is the call
 * that made the change (its worker publishes). */
void rpc_watch_publish(rpc_call *origin, const char *tenant_id, const char *key, const uint8_t *msg,
                       size_t len);
/* Subscribes a server-streaming call: it receives every later change of tenant_id whose key
 * starts with prefix ("" for all), until the client leaves or the server drains, when the call
 * is finished. Returns 0, PINS_ERESOURCE_EXHAUSTED (RPC_WATCH_MAX reached), PINS_ENOMEM. */
int rpc_watch_subscribe(rpc_call *call, const char *tenant_id, const char *prefix);

#endif
