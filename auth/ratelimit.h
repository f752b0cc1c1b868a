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
 * The limiter answers a verdict (ratelimit_verdict: allowed or not, and the numbers); it never
 * touches the call. The core's dispatcher adds the headers below as call metadata with
 * trailer true (gRPC trailing metadata; REST, Connect and gRPC-Web headers), from the verdict's
 * numbers and the limiter's constant texts (ratelimit_texts, formatted once), and fails a refused
 * call (API.md 7; the IETF draft draft-ietf-httpapi-ratelimit-headers-07 fields):
 *   RateLimit-Policy: <rpm>;w=60                 (";burst=<b>" added when the burst differs)
 *   RateLimit: limit=<rpm>, remaining=<tokens left, whole>, reset=<seconds until the bucket is
 *              full again>
 *   X-RateLimit-Limit: <rpm>
 *   X-RateLimit-Remaining: <tokens left>     (Redis: its remaining at the last answer plus the
 *                                            worker's unspent lease; see auth/README.md)
 *   Retry-After: <seconds until one token is back, >= 1>      (refused calls only)
 * A refused call fails with PINS_ERATE_LIMITED (RESOURCE_EXHAUSTED, REST 429; protocols/rest.c
 * builds the body from the verdict's limit and retry_after_s, kept on the call).
 *
 * Metrics: rate_limit_decisions_total{decision="allowed|limited",backend="redis|local|disabled"},
 * rate_limit_redis_up (1 when every worker's Redis connection is up, else 0).
 *
 * The bucket is the tenant the caller names: the dispatcher passes the request's resolved tenant,
 * or the default tenant for a request that names none or every tenant.
 *
 * Threads. ratelimit_new() and ratelimit_free() run while no worker uses the limiter. A
 * ratelimit_worker and the checks it decides belong to one worker thread; the limiter itself
 * (local bucket, state for /ready) may be used from any thread. REDIS_URL's password is never
 * logged.
 */
#ifndef PINS_AUTH_RATELIMIT_H
#define PINS_AUTH_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

#include <stdint.h>

#include "common/arena.h"
#include "common/config.h"

struct event_base;

/* How long a call waits for Redis before the local bucket decides it. */
#define RATELIMIT_WAIT_MS 50

typedef struct ratelimit ratelimit;
typedef struct ratelimit_worker ratelimit_worker;

/* The constant header values of a limiter, formatted once when it is made; they live as long as
 * the limiter. Each string is NUL-terminated, of the given length. */
typedef struct ratelimit_texts {
    const char *policy; /* RateLimit-Policy: "<rpm>;w=60" (";burst=<b>" when it differs) */
    size_t policy_len;
    const char *limit; /* X-RateLimit-Limit: "<rpm>" */
    size_t limit_len;
    const char *state; /* the start of every RateLimit value: "limit=<rpm>, remaining=" */
    size_t state_len;
} ratelimit_texts;

/* The answer to one ratelimit_check(), handed to its callback (borrowed for the callback). */
typedef struct ratelimit_verdict {
    int err;      /* 0: decided; PINS_ECANCELLED: not decided, the worker is shutting down */
    bool allowed; /* the call may proceed (always true when texts is NULL) */
    /* NULL when rate limiting is off (RATE_LIMIT_RPM=0): no numbers, no headers. */
    const ratelimit_texts *texts;
    int64_t limit;         /* RATE_LIMIT_RPM: tokens per minute */
    int64_t remaining;     /* whole tokens left after this call */
    int64_t reset_s;       /* seconds until the bucket is full again */
    int64_t retry_after_s; /* refused: seconds until one token is back (>= 1); else 0 */
} ratelimit_verdict;

/* Called once per ratelimit_check(), on the worker's thread, possibly before that returns. */
typedef void (*ratelimit_cb)(void *arg, const ratelimit_verdict *v);

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
/* Closes the worker's Redis connection; checks still waiting for a reply get a verdict with err
 * PINS_ECANCELLED. Runs on the worker's thread, after its loop stopped. NULL is allowed. */
void ratelimit_worker_free(ratelimit_worker *w);

/* Takes one token from tenant's bucket and calls cb(arg, verdict) once, at once or when Redis
 * answers (at most RATELIMIT_WAIT_MS later). A check that waits keeps its entry in a (the call's
 * arena: no allocation of its own). tenant and a must live until cb ran. */
void ratelimit_check(ratelimit_worker *w, const char *tenant, pins_arena *a, ratelimit_cb cb,
                     void *arg);

/* The rate limiter's line of /ready's checks: "disabled" (no REDIS_URL or RATE_LIMIT_RPM=0; also
 * for rl NULL), "ok" (every worker's Redis connection is up), or "down (fail-open)". */
const char *ratelimit_redis_check(const ratelimit *rl);

#endif
