/* auth/ratelimit_lease.c: the arithmetic of a worker's lease on a tenant's Redis bucket.
 *
 * Instead of one EVALSHA per call, a worker takes up to `want` tokens at once (the script grants
 * min(want, whole tokens available) atomically) and spends them locally, asking again when they
 * are spent or RATELIMIT__LEASE_AGE_MS old. Unspent tokens of an old lease are dropped, never
 * returned: a lease can only make the limiter admit fewer calls than the bucket allows, never
 * more. The size adapts: doubling from the last size up to ratelimit__lease_max(burst) =
 * min(RATELIMIT__LEASE_MAX, burst / 100), and never over 1/RATELIMIT__LEASE_SHARE_DIV of what the
 * bucket held at the last answer (at least one), so that the tokens one worker may let lapse stay
 * a small share of what is left as the bucket runs low, down to one token per call near empty;
 * at least as many as the
 * calls already waiting, up to burst / 100 (beyond RATELIMIT__LEASE_MAX: those calls spend the
 * grant at once, so none of it lapses). Small bursts (under 200) therefore never lease more than
 * one token per call, like the per-call script.
 */
#include "auth/ratelimit_int.h"

int ratelimit__lease_max(int burst)
{
    int max = burst / 100;
    if (max > RATELIMIT__LEASE_MAX)
        max = RATELIMIT__LEASE_MAX;
    return max < 1 ? 1 : max;
}

int ratelimit__lease_want(const ratelimit__lease *l, int burst, size_t waiting)
{
    int max = ratelimit__lease_max(burst);
    int want = 1;
    if (l->known) {
        int64_t share = l->remaining / RATELIMIT__LEASE_SHARE_DIV;
        want = l->want < 1 ? 2 : l->want * 2;
        if (want > share)
            want = share > 1 ? (int)share : 1;
    }
    if (want > max)
        want = max;
    /* Calls already waiting spend the grant at once: none of it can lapse. */
    int wmax = burst / 100 > max ? burst / 100 : max;
    if ((size_t)want < waiting)
        want = waiting > (size_t)wmax ? wmax : (int)waiting;
    return want;
}

void ratelimit__lease_grant(ratelimit__lease *l, int want, int64_t granted, int64_t remaining,
                            int64_t reset_ms, int64_t retry_ms, int64_t now_ns)
{
    l->known = true;
    l->want = want;
    l->tokens = granted > 0 ? granted : 0;
    l->remaining = remaining > 0 ? remaining : 0;
    l->reset_ms = reset_ms > 0 ? reset_ms : 0;
    l->retry_ms = retry_ms > 0 ? retry_ms : 0;
    l->at_ns = now_ns;
}

bool ratelimit__lease_usable(const ratelimit__lease *l, int64_t now_ns)
{
    return l->tokens > 0 && now_ns - l->at_ns < (int64_t)RATELIMIT__LEASE_AGE_MS * 1000000;
}

bool ratelimit__lease_take(ratelimit__lease *l, int64_t now_ns, ratelimit__decision *pd)
{
    if (!ratelimit__lease_usable(l, now_ns)) {
        l->tokens = 0; /* an old lease's tokens are dropped, not returned */
        return false;
    }
    l->tokens--;
    *pd = (ratelimit__decision){
        .allowed = true,
        .remaining = l->remaining + l->tokens,
        .reset_s = (l->reset_ms + 999) / 1000,
    };
    return true;
}

void ratelimit__lease_refusal(const ratelimit__lease *l, ratelimit__decision *pd)
{
    int64_t retry_s = (l->retry_ms + 999) / 1000;
    *pd = (ratelimit__decision){
        .allowed = false,
        .remaining = l->remaining + l->tokens,
        .reset_s = (l->reset_ms + 999) / 1000,
        .retry_after_s = retry_s < 1 ? 1 : retry_s,
    };
}
