/* auth/ratelimit.h: the per-tenant rate limiter of API.md section 7.
 *
 * A token bucket per tenant over every MemoryPins RPC: RATE_LIMIT_RPM tokens per minute, at most
 * RATE_LIMIT_BURST in the bucket, one token per call. RATE_LIMIT_RPM=0 disables it (every call is
 * allowed and counted with backend "disabled"; no headers are added).
 *
 * With REDIS_URL every replica shares one bucket per tenant in Redis: a single Lua script run with
 * EVALSHA on key "pinsd:rl:{<tenant>}" (the hash tag keeps it Redis-Cluster safe), using the Redis
 * server's TIME so that replicas' clocks do not matter, with PEXPIRE so that idle buckets vanish.
 * Each worker owns one hiredis async connection on its own libevent loop and leases tokens from
 * a tenant's bucket (up to min(256, burst / 100) per EVALSHA and 1% of what the bucket holds, at
 * least one; unspent tokens are dropped after 250 ms, never returned), spending them
 * locally; a call that finds no lease waits for the tenant's one request in flight at most
 * RATELIMIT_WAIT_MS, past which it is decided by the local bucket. While Redis is
 * unreachable every worker decides by the local bucket (fail-open) and reconnects by itself with
 * a jittered backoff of 100 ms .. 2 s. Without REDIS_URL the local bucket is the limiter.
 *
 * The local bucket is process wide (the limit holds across workers): a striped hash map of tenant
 * -> bucket, one mutex per stripe, bounded; an idle bucket (refilled to the burst) is evicted
 * first, since forgetting it changes nothing.
 *
 * Answers (API.md 7; the IETF draft draft-ietf-httpapi-ratelimit-headers-07 fields), added as call
 * metadata with trailer true (gRPC trailing metadata; REST, Connect and gRPC-Web headers):
 *   RateLimit-Policy: <rpm>;w=60                 (";burst=<b>" added when the burst differs)
 *   RateLimit: limit=<rpm>, remaining=<tokens left, whole>, reset=<seconds until the bucket is
 *              full again>
 *   X-RateLimit-Limit: <rpm>
 *   X-RateLimit-Remaining: <tokens left>     (Redis: its remaining at the last answer plus the
 *                                            worker's unspent lease; see auth/README.md)
 *   Retry-After: <seconds until one token is back, >= 1>      (refused calls only)
 * A refused call fails with PINS_ERATE_LIMITED (RESOURCE_EXHAUSTED, REST 429; protocols/rest.c
 * builds the body from x-ratelimit-limit and retry-after).
 *
 * Metrics: rate_limit_decisions_total{decision="allowed|limited",backend="redis|local|disabled"},
 * rate_limit_redis_up (1 when every worker's Redis connection is up, else 0).
 *
 * The request's tenant is the one the dispatcher resolved (rpc_call_tenant()); a request without a
 * concrete tenant (none, or every tenant) counts against the default tenant.
 *
 * Threads. ratelimit_new() and ratelimit_free() run while no worker uses the limiter. A
 * ratelimit_worker and the calls it decides belong to one worker thread; the limiter itself
 * (local bucket, state for /ready) may be used from any thread. REDIS_URL's password is never
 * logged.
 */
#ifndef PINS_AUTH_RATELIMIT_H
#define PINS_AUTH_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/config.h"
#include "rpc/call.h"

struct event_base;

/* How long a call waits for Redis before the local bucket decides it. */
#define RATELIMIT_WAIT_MS 50

typedef struct ratelimit ratelimit;
typedef struct ratelimit_worker ratelimit_worker;

/* Called once per ratelimit_call_check(), on the call's worker, possibly before that returns.
 * proceed false: the call has been finished (refused, or the worker is shutting down). */
typedef void (*ratelimit_call_cb)(rpc_call *call, bool proceed);

/* A new limiter for cfg (borrowed; must outlive the limiter): parses REDIS_URL and registers the
 * rate_limit_* metric families. On failure writes one line naming REDIS_URL into err (never the
 * password). Returns 0, PINS_EINVALID_ARGUMENT (unusable REDIS_URL, e.g. rediss:// with a hiredis
 * without TLS), PINS_ENOMEM. */
int ratelimit_new(const pins_config *cfg, ratelimit **prl, char *err, size_t errlen);
/* Frees the limiter (after every ratelimit_worker of it was freed). NULL is allowed. */
void ratelimit_free(ratelimit *rl);

/* A worker's part of rl on base (the worker's loop): starts connecting to Redis when REDIS_URL is
 * set. Returns 0 or PINS_ENOMEM. */
int ratelimit_worker_new(ratelimit *rl, struct event_base *base, ratelimit_worker **pw);
/* Closes the worker's Redis connection; calls still waiting for a reply are finished with
 * PINS_ECANCELLED (their callback gets proceed false). Runs on the worker's thread, after its
 * loop stopped. NULL is allowed. */
void ratelimit_worker_free(ratelimit_worker *w);

/* Decides call (a MemoryPins RPC whose RBAC decision is set) against its tenant's bucket, adds
 * the rate limit metadata, refuses the call with PINS_ERATE_LIMITED when the bucket is empty, and
 * then calls cb. The caller keeps call alive until cb runs. */
void ratelimit_call_check(ratelimit_worker *w, rpc_call *call, ratelimit_call_cb cb);

/* The rate limiter's line of /ready's checks: "disabled" (no REDIS_URL or RATE_LIMIT_RPM=0; also
 * for rl NULL), "ok" (every worker's Redis connection is up), or "down (fail-open)". */
const char *ratelimit_redis_check(const ratelimit *rl);

#endif
