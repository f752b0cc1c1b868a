/* rpc/watch.h: WatchPins streams, fed by the store's change feed (store/store.h).
 *
 * Every committed change of a pin, made by this process or by any other replica sharing the
 * database, reaches the process through the store's change feed (rpc_watch_feed), in each
 * tenant's commit order. It is packed once as a WatchPinsResponse and queued to every worker that
 * has streams; each open WatchPins stream of the tenant whose prefix matches the key receives it,
 * on its own worker, in that order. Publishing costs one atomic load when nobody watches.
 *
 * Revisions and resuming. Every change carries its tenant's revision (pin.revision, and the SSE
 * event's id). A stream started with since_revision N first reads the kept changes above N from
 * the store's history (store_changes_since), page by page, then goes live; a live change is sent
 * only when its revision is above the last one the stream sent, so the history and the live feed
 * meet without a gap or a duplicate: every change above N exactly once, in commit order. While a
 * stream catches up, the live changes it would receive are not queued: it only remembers the
 * highest revision among them and reads the history again until it has reached it. History the
 * retention trimmed answers OUT_OF_RANGE.
 *
 * When the feed is interrupted (PostgreSQL: the LISTEN connection was lost), changes may have been
 * missed: every stream is ended with UNAVAILABLE naming the last revision it saw, and new streams
 * are refused until the feed is live again; a client resumes from that revision, on this replica
 * or another, and misses nothing.
 *
 * Delivery between workers goes through a mutex-protected inbox per worker and an event on the
 * worker's loop.
 *
 * Bounds (common/config.h). A stream whose reader falls more than PINS_WATCH_PENDING_BYTES behind
 * is ended with RESOURCE_EXHAUSTED (it may resume from its last revision). Streams are counted per
 * principal, the subject of the call's RBAC decision ("machine", a JWT's sub, "x-roles"; every
 * caller without credentials is the one principal "anonymous"), at most
 * PINS_WATCH_MAX_PER_PRINCIPAL each and PINS_WATCH_MAX in the process, so one principal holds at
 * most that many times PINS_WATCH_PENDING_BYTES of watch buffers. A stream catching up reads one
 * page of history at a time. Transports that support it send the response headers as soon as a
 * stream is subscribed, and a heartbeat on every stream every PINS_SSE_HEARTBEAT_SECONDS (SSE).
 */
#ifndef PINS_RPC_WATCH_H
#define PINS_RPC_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/call.h"

struct store_change;

/* True when at least one WatchPins stream is open in the process. */
bool rpc_watch_active(void);
/* The store's change feed (store_change_fn): arg is the rpc_server. Any thread. */
void rpc_watch_feed(void *arg, const struct store_change *ch);
/* The store's feed state (store_feed_state_fn): live false ends every stream (see above). */
void rpc_watch_feed_state(void *arg, bool live);
/* Subscribes a server-streaming call: it receives every change of tenant_id whose key starts
 * with prefix ("" for all) above revision since (0: from now on), until the client leaves, reads
 * too slowly, or the server drains, when the call is finished. On failure *pwhy may get the
 * client-visible reason (in the call's arena, or static). Returns 0, PINS_ERESOURCE_EXHAUSTED
 * (the principal's or the process's watch streams are all in use), PINS_EUNAVAILABLE (the change
 * feed is down), PINS_ECANCELLED (the client already left), PINS_ENOMEM. OUT_OF_RANGE for a
 * revision whose history is gone ends the call later, from the store's answer. */
int rpc_watch_subscribe(rpc_call *call, const char *tenant_id, const char *prefix, int64_t since,
                        const char **pwhy);

#endif
