/* auth/ratelimit_int.h: the parts of the rate limiter shared by its files and its tests.
 *
 *   ratelimit.c        the limiter, the per-worker Redis connection and script, the call glue
 *   ratelimit_local.c  the process-wide local bucket table (also the fail-open fallback)
 *   ratelimit_lease.c  the arithmetic of a worker's lease of tokens from a Redis bucket
 */
#ifndef PINS_AUTH_RATELIMIT_INT_H
#define PINS_AUTH_RATELIMIT_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/ratelimit.h"

/* The outcome of taking one token. */
typedef struct ratelimit__decision {
    bool allowed;
    int64_t remaining;     /* whole tokens left after this call */
    int64_t reset_s;       /* seconds until the bucket is full again (rounded up) */
    int64_t retry_after_s; /* refused: seconds until one token is back (>= 1); else 0 */
} ratelimit__decision;

/* ---- ratelimit_local.c ----------------------------------------------------------------------- */

typedef struct ratelimit__local ratelimit__local;

/* Stripes of the local table (one mutex each). */
#define RATELIMIT__STRIPES 32

/* A new table of buckets of rpm tokens per minute (> 0) and burst tokens (> 0), holding at most
 * max_buckets tenants (rounded up to a multiple of RATELIMIT__STRIPES). Returns 0 or PINS_ENOMEM.
 */
int ratelimit__local_new(int rpm, int burst, size_t max_buckets, ratelimit__local **pl);
void ratelimit__local_free(ratelimit__local *l);
/* Takes one token from tenant's bucket at now_ns (a monotonic clock; tests pass a fake one).
 * A tenant not in the table starts with a full bucket. When a stripe is full, its idle buckets
 * are evicted, or else its least recently used one. Any thread. Returns 0 or PINS_ENOMEM (*pd
 * untouched). */
int ratelimit__local_take(ratelimit__local *l, const char *tenant, int64_t now_ns,
                          ratelimit__decision *pd);
/* Buckets held now. */
size_t ratelimit__local_size(ratelimit__local *l);

/* ---- ratelimit_lease.c ----------------------------------------------------------------------- */

#define RATELIMIT__LEASE_MAX       256 /* tokens one request may take */
#define RATELIMIT__LEASE_AGE_MS    250 /* a lease older than this is dropped (not returned) */
#define RATELIMIT__LEASE_SHARE_DIV 100 /* a lease is at most remaining / this (at least 1) */

/* One worker's lease on one tenant's bucket. Zero is "never asked". */
typedef struct ratelimit__lease {
    bool known;        /* Redis answered at least once */
    int want;          /* the size asked for last */
    int64_t tokens;    /* granted and not spent yet */
    int64_t remaining; /* the bucket's whole tokens after the last grant, as Redis said */
    int64_t reset_ms;  /* ... and its time until full, and until one token is back */
    int64_t retry_ms;
    int64_t at_ns; /* when the last grant arrived (monotonic) */
} ratelimit__lease;

/* The largest lease for a burst: min(RATELIMIT__LEASE_MAX, burst / 100), at least 1. */
int ratelimit__lease_max(int burst);
/* How many tokens to ask for, with waiting calls queued for the answer. */
int ratelimit__lease_want(const ratelimit__lease *l, int burst, size_t waiting);
/* Records Redis's answer to a request of want tokens: granted, the bucket's remaining whole
 * tokens, reset_ms and retry_ms, at now_ns. Replaces any older lease. */
void ratelimit__lease_grant(ratelimit__lease *l, int want, int64_t granted, int64_t remaining,
                            int64_t reset_ms, int64_t retry_ms, int64_t now_ns);
/* True when l has a token to spend at now_ns. */
bool ratelimit__lease_usable(const ratelimit__lease *l, int64_t now_ns);
/* Spends one token of l at now_ns: true and *pd (allowed; remaining is the bucket as Redis last
 * reported it plus what is left of the lease), or false (spent or too old; an old lease's tokens
 * are dropped) with *pd untouched. */
bool ratelimit__lease_take(ratelimit__lease *l, int64_t now_ns, ratelimit__decision *pd);
/* The refusal after Redis granted fewer tokens than the calls waiting for them. */
void ratelimit__lease_refusal(const ratelimit__lease *l, ratelimit__decision *pd);

/* ---- ratelimit.c ----------------------------------------------------------------------------- */

/* REDIS_URL taken apart. Strings are new, freed by ratelimit__redis_url_free. */
typedef struct ratelimit__redis_url {
    char *host;      /* NULL for unix:// */
    int port;        /* default 6379 */
    char *unix_path; /* unix:///path */
    char *user;      /* NULL: AUTH with the password only */
    char *password;  /* NULL: no AUTH (a secret: never logged) */
    int db;          /* SELECT, default 0 */
    bool tls;        /* rediss:// */
} ratelimit__redis_url;

/* Parses redis://[user:pass@]host[:port][/db], rediss://..., unix:///path[?db=N]; userinfo may be
 * percent-encoded, host may be a bracketed IPv6 address. On failure *pwhy gets a static reason
 * (never a part of the URL). Returns 0, PINS_EINVALID_ARGUMENT, PINS_ENOMEM. */
int ratelimit__redis_url_parse(const char *url, ratelimit__redis_url *pu, const char **pwhy);
void ratelimit__redis_url_free(ratelimit__redis_url *u);

/* The bucket script run in Redis (KEYS[1] the bucket, ARGV rpm, burst and the tokens wanted;
 * takes min(wanted, whole tokens available) and replies {granted, remaining, reset_ms,
 * retry_ms}, retry_ms being 0 while a whole token is left). */
extern const char ratelimit__script[];

/* ---- ratelimit_throttled.c: distinct tenants refused in the last minute ------------------------
 *
 * rate_limit_throttled_tenants counts the distinct tenants the limiter refused within the last
 * RATELIMIT__THROTTLED_WINDOW_S seconds, in bounded memory and without tenant names: a fixed table
 * of RATELIMIT__THROTTLED_SLOTS slots, each a 64-bit hash of a tenant and the second it was last
 * refused, claimed and refreshed with atomics (no lock; any thread). A tenant whose probe sequence
 * meets no free or stale slot is not recorded: the count saturates at the table size. The allowed
 * path never touches it. */
#define RATELIMIT__THROTTLED_SLOTS    1024 /* a power of two */
#define RATELIMIT__THROTTLED_WINDOW_S 60
#define RATELIMIT__THROTTLED_PROBES   64

typedef struct ratelimit__throttled {
    _Atomic uint64_t hash[RATELIMIT__THROTTLED_SLOTS]; /* 0: never used */
    _Atomic int64_t last_s[RATELIMIT__THROTTLED_SLOTS];
} ratelimit__throttled;

/* Records that tenant was refused at now_s (a monotonic second). */
void ratelimit__throttled_note(ratelimit__throttled *t, const char *tenant, int64_t now_s);
/* The tenants recorded in (now_s - RATELIMIT__THROTTLED_WINDOW_S, now_s]. */
int ratelimit__throttled_count(ratelimit__throttled *t, int64_t now_s);

#endif
