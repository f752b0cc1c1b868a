/* auth/ratelimit_local.c: the process-wide local token buckets.
 *
 * Tenants hash to one of RATELIMIT__STRIPES stripes, each a small chained hash table behind its
 * own mutex, so that workers contend only when their tenants share a stripe. Tokens are kept as a
 * double and refilled lazily on each take from the time elapsed since the last one. A stripe holds
 * at most cap buckets; on overflow the idle ones (refilled to the burst, indistinguishable from a
 * bucket never seen) go first, else the least recently used one.
 */
#include "auth/ratelimit_int.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/hash.h"

#define CHAINS 64

typedef struct bucket {
    struct bucket *next;
    uint64_t hash;
    double tokens;
    int64_t ts_ns; /* last refill */
    char tenant[];
} bucket;

typedef struct stripe {
    pthread_mutex_t mu;
    bucket *chains[CHAINS];
    size_t n;
} stripe;

struct ratelimit__local {
    double rpm;
    double burst;
    size_t cap; /* buckets per stripe */
    stripe stripes[RATELIMIT__STRIPES];
};

static double refilled(const ratelimit__local *l, const bucket *b, int64_t now_ns)
{
    if (now_ns <= b->ts_ns)
        return b->tokens;
    double t = b->tokens + (double)(now_ns - b->ts_ns) * l->rpm / 60e9;
    return t < l->burst ? t : l->burst;
}

/* Makes room for one bucket in a full stripe. */
static void evict(ratelimit__local *l, stripe *s, int64_t now_ns)
{
    bucket **oldest = NULL;
    for (size_t c = 0; c < CHAINS; c++) {
        bucket **pp = &s->chains[c];
        while (*pp != NULL) {
            bucket *b = *pp;
            if (refilled(l, b, now_ns) >= l->burst) {
                *pp = b->next;
                free(b);
                s->n--;
                continue;
            }
            if (oldest == NULL || b->ts_ns < (*oldest)->ts_ns)
                oldest = pp;
            pp = &b->next;
        }
    }
    if (s->n >= l->cap && oldest != NULL) {
        bucket *b = *oldest;
        *oldest = b->next;
        free(b);
        s->n--;
    }
}

int ratelimit__local_new(int rpm, int burst, size_t max_buckets, ratelimit__local **pl)
{
    ratelimit__local *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return PINS_ENOMEM;
    l->rpm = (double)rpm;
    l->burst = (double)burst;
    l->cap = (max_buckets + RATELIMIT__STRIPES - 1) / RATELIMIT__STRIPES;
    if (l->cap == 0)
        l->cap = 1;
    for (size_t i = 0; i < RATELIMIT__STRIPES; i++)
        pthread_mutex_init(&l->stripes[i].mu, NULL);
    *pl = l;
    return 0;
}

void ratelimit__local_free(ratelimit__local *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < RATELIMIT__STRIPES; i++) {
        stripe *s = &l->stripes[i];
        for (size_t c = 0; c < CHAINS; c++) {
            bucket *b = s->chains[c];
            while (b != NULL) {
                bucket *next = b->next;
                free(b);
                b = next;
            }
        }
        pthread_mutex_destroy(&s->mu);
    }
    free(l);
}

int ratelimit__local_take(ratelimit__local *l, const char *tenant, int64_t now_ns,
                          ratelimit__decision *pd)
{
    uint64_t h = pins_fnv1a_str(PINS_FNV1A_INIT, tenant, NULL);
    stripe *s = &l->stripes[h % RATELIMIT__STRIPES];
    size_t chain = (size_t)((h / RATELIMIT__STRIPES) % CHAINS);
    int rv = 0;

    pthread_mutex_lock(&s->mu);
    bucket *b = s->chains[chain];
    while (b != NULL && (b->hash != h || strcmp(b->tenant, tenant) != 0))
        b = b->next;
    if (b == NULL) {
        if (s->n >= l->cap)
            evict(l, s, now_ns);
        size_t len = strlen(tenant);
        b = malloc(sizeof(*b) + len + 1);
        if (b == NULL) {
            rv = PINS_ENOMEM;
            goto out;
        }
        memcpy(b->tenant, tenant, len + 1);
        b->hash = h;
        b->tokens = l->burst;
        b->ts_ns = now_ns;
        b->next = s->chains[chain];
        s->chains[chain] = b;
        s->n++;
    }
    b->tokens = refilled(l, b, now_ns);
    if (now_ns > b->ts_ns)
        b->ts_ns = now_ns;
    bool allowed = b->tokens >= 1.0;
    if (allowed)
        b->tokens -= 1.0;
    double per_s = l->rpm / 60.0;
    *pd = (ratelimit__decision){
        .allowed = allowed,
        .remaining = (int64_t)floor(b->tokens),
        .reset_s = (int64_t)ceil((l->burst - b->tokens) / per_s),
        .retry_after_s = allowed ? 0 : (int64_t)ceil((1.0 - b->tokens) / per_s),
    };
    if (!allowed && pd->retry_after_s < 1)
        pd->retry_after_s = 1;
out:
    pthread_mutex_unlock(&s->mu);
    return rv;
}

size_t ratelimit__local_size(ratelimit__local *l)
{
    size_t n = 0;
    for (size_t i = 0; i < RATELIMIT__STRIPES; i++) {
        pthread_mutex_lock(&l->stripes[i].mu);
        n += l->stripes[i].n;
        pthread_mutex_unlock(&l->stripes[i].mu);
    }
    return n;
}
