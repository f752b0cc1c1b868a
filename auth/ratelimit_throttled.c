/* auth/ratelimit_throttled.c: the distinct tenants refused in the last minute
 * (rate_limit_throttled_tenants; auth/ratelimit_int.h).
 *
 * A tenant's slots are the RATELIMIT__THROTTLED_PROBES slots from its hash on. Noting a tenant
 * first looks for its hash among them (the common case, a tenant refused again and again, stops
 * at the first slot: one load, and a store once a second), and only when it is absent claims the
 * first slot that is free or stale with a compare-and-swap. Two threads noting one new tenant at
 * the same instant may both claim a slot; the gauge then counts it twice for a minute at most.
 */
#include "auth/ratelimit_int.h"

#include <assert.h>

#include "common/hash.h"

#define MASK (RATELIMIT__THROTTLED_SLOTS - 1)

static_assert((RATELIMIT__THROTTLED_SLOTS & MASK) == 0, "the slot count is a power of two");

static bool is_live(ratelimit__throttled *t, size_t i, int64_t now_s)
{
    return atomic_load_explicit(&t->hash[i], memory_order_relaxed) != 0 &&
           atomic_load_explicit(&t->last_s[i], memory_order_relaxed) >
               now_s - RATELIMIT__THROTTLED_WINDOW_S;
}

static void refresh(ratelimit__throttled *t, size_t i, int64_t now_s)
{
    if (atomic_load_explicit(&t->last_s[i], memory_order_relaxed) != now_s)
        atomic_store_explicit(&t->last_s[i], now_s, memory_order_relaxed);
}

void ratelimit__throttled_note(ratelimit__throttled *t, const char *tenant, int64_t now_s)
{
    uint64_t h = pins_fnv1a_str(PINS_FNV1A_INIT, tenant, NULL);
    if (h == 0)
        h = 1; /* 0 marks a free slot */
    size_t start = (size_t)h & MASK;
    for (size_t p = 0; p < RATELIMIT__THROTTLED_PROBES; p++) {
        size_t i = (start + p) & MASK;
        if (atomic_load_explicit(&t->hash[i], memory_order_relaxed) == h) {
            refresh(t, i, now_s);
            return;
        }
    }
    for (size_t p = 0; p < RATELIMIT__THROTTLED_PROBES; p++) {
        size_t i = (start + p) & MASK;
        if (is_live(t, i, now_s))
            continue;
        uint64_t cur = atomic_load_explicit(&t->hash[i], memory_order_relaxed);
        /* Free or stale. Between the swap and the time store another thread may take the slot
         * as stale too; the tenant is then recorded again at its next refusal. */
        if (atomic_compare_exchange_strong(&t->hash[i], &cur, h)) {
            atomic_store_explicit(&t->last_s[i], now_s, memory_order_relaxed);
            return;
        }
        if (cur == h) {
            refresh(t, i, now_s);
            return;
        }
    }
    /* Every slot of its sequence is taken by a tenant refused within the window: saturated. */
}

int ratelimit__throttled_count(ratelimit__throttled *t, int64_t now_s)
{
    int n = 0;
    for (size_t i = 0; i < RATELIMIT__THROTTLED_SLOTS; i++)
        n += is_live(t, i, now_s);
    return n;
}
