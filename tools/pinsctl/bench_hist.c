/* tools/pinsctl/bench_hist.c: the log-linear latency histogram (bench_hist.h). */
#include <math.h>
#include <string.h>

#include "bench_hist.h"

unsigned bench_hist_bucket_of(uint64_t ns)
{
    if (ns > BENCH_HIST_MAX_NS)
        ns = BENCH_HIST_MAX_NS;
    if (ns < BENCH_HIST_SUB_COUNT)
        return (unsigned)ns;
    /* ns has e+1 significant bits, e >= SUB_BITS: keep the top SUB_BITS+1 of them. */
    unsigned e = 63u - (unsigned)__builtin_clzll(ns);
    unsigned shift = e - BENCH_HIST_SUB_BITS;
    unsigned sub = (unsigned)(ns >> shift) - BENCH_HIST_SUB_COUNT;
    return (shift + 1) * BENCH_HIST_SUB_COUNT + sub;
}

uint64_t bench_hist_bucket_low(unsigned b)
{
    if (b < BENCH_HIST_SUB_COUNT)
        return b;
    unsigned shift = b / BENCH_HIST_SUB_COUNT - 1;
    uint64_t sub = b % BENCH_HIST_SUB_COUNT;
    return (BENCH_HIST_SUB_COUNT + sub) << shift;
}

uint64_t bench_hist_bucket_high(unsigned b)
{
    if (b < BENCH_HIST_SUB_COUNT)
        return b;
    unsigned shift = b / BENCH_HIST_SUB_COUNT - 1;
    return bench_hist_bucket_low(b) + (UINT64_C(1) << shift) - 1;
}

void bench_hist_init(bench_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void bench_hist_record(bench_hist *h, uint64_t ns)
{
    h->buckets[bench_hist_bucket_of(ns)]++;
    h->count++;
    h->sum += ns;
    if (ns < h->min)
        h->min = ns;
    if (ns > h->max)
        h->max = ns;
}

void bench_hist_merge(bench_hist *dst, const bench_hist *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t bench_hist_percentile(const bench_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p >= 100.0)
        return h->max;
    if (p < 0.0)
        p = 0.0;
    /* The rank of the value asked for, 1-based: ceil(p% of count), at least 1. */
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < BENCH_HIST_BUCKETS; b++) {
        seen += h->buckets[b];
        if (seen < rank)
            continue;
        uint64_t lo = bench_hist_bucket_low(b);
        uint64_t v = lo + (bench_hist_bucket_high(b) - lo) / 2;
        if (v < h->min)
            v = h->min;
        if (v > h->max)
            v = h->max;
        return v;
    }
    return h->max;
}

double bench_hist_mean(const bench_hist *h)
{
    return h->count == 0 ? 0.0 : (double)h->sum / (double)h->count;
}
