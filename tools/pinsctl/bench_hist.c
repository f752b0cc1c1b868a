/* tools/pinsctl/bench_hist.c: the log-linear latency histograms (bench_hist.h).
 *
 * Both sizes share the bucket arithmetic, with the number of sub-bucket bits as a parameter.
 */
#include <math.h>
#include <string.h>

#include "bench_hist.h"

static unsigned bucket_of(uint64_t ns, unsigned bits)
{
    uint64_t sub_count = UINT64_C(1) << bits;
    if (ns > BENCH_HIST_MAX_NS)
        ns = BENCH_HIST_MAX_NS;
    if (ns < sub_count)
        return (unsigned)ns;
    /* ns has e+1 significant bits, e >= bits: keep the top bits+1 of them. */
    unsigned e = 63u - (unsigned)__builtin_clzll(ns);
    unsigned shift = e - bits;
    unsigned sub = (unsigned)((ns >> shift) - sub_count);
    return (shift + 1) * (unsigned)sub_count + sub;
}

static uint64_t bucket_low(unsigned b, unsigned bits)
{
    unsigned sub_count = 1u << bits;
    if (b < sub_count)
        return b;
    unsigned shift = b / sub_count - 1;
    uint64_t sub = b % sub_count;
    return (sub_count + sub) << shift;
}

static uint64_t bucket_high(unsigned b, unsigned bits)
{
    unsigned sub_count = 1u << bits;
    if (b < sub_count)
        return b;
    unsigned shift = b / sub_count - 1;
    return bucket_low(b, bits) + (UINT64_C(1) << shift) - 1;
}

/* The percentile p of nb buckets holding count values within [min, max]. */
static uint64_t percentile(const uint64_t *buckets, unsigned nb, unsigned bits, uint64_t count,
                           uint64_t min, uint64_t max, double p)
{
    if (count == 0)
        return 0;
    if (p >= 100.0)
        return max;
    if (p < 0.0)
        p = 0.0;
    /* The rank of the value asked for, 1-based: ceil(p% of count), at least 1. */
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < nb; b++) {
        seen += buckets[b];
        if (seen < rank)
            continue;
        uint64_t lo = bucket_low(b, bits);
        uint64_t v = lo + (bucket_high(b, bits) - lo) / 2;
        if (v < min)
            v = min;
        if (v > max)
            v = max;
        return v;
    }
    return max;
}

unsigned bench_hist_bucket_of(uint64_t ns)
{
    return bucket_of(ns, BENCH_HIST_SUB_BITS);
}

uint64_t bench_hist_bucket_low(unsigned b)
{
    return bucket_low(b, BENCH_HIST_SUB_BITS);
}

uint64_t bench_hist_bucket_high(unsigned b)
{
    return bucket_high(b, BENCH_HIST_SUB_BITS);
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
    return percentile(h->buckets, BENCH_HIST_BUCKETS, BENCH_HIST_SUB_BITS, h->count, h->min, h->max,
                      p);
}

double bench_hist_mean(const bench_hist *h)
{
    return h->count == 0 ? 0.0 : (double)h->sum / (double)h->count;
}

unsigned bench_shist_bucket_of(uint64_t ns)
{
    return bucket_of(ns, BENCH_SHIST_SUB_BITS);
}

uint64_t bench_shist_bucket_low(unsigned b)
{
    return bucket_low(b, BENCH_SHIST_SUB_BITS);
}

uint64_t bench_shist_bucket_high(unsigned b)
{
    return bucket_high(b, BENCH_SHIST_SUB_BITS);
}

void bench_shist_init(bench_shist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void bench_shist_record(bench_shist *h, uint64_t ns)
{
    h->buckets[bench_shist_bucket_of(ns)]++;
    h->count++;
    if (ns < h->min)
        h->min = ns;
    if (ns > h->max)
        h->max = ns;
}

uint64_t bench_shist_percentile(const bench_shist *h, double p)
{
    return percentile(h->buckets, BENCH_SHIST_BUCKETS, BENCH_SHIST_SUB_BITS, h->count, h->min,
                      h->max, p);
}
