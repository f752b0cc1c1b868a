/* tools/pinsctl/bench_hist.h: a latency histogram with bounded relative error (log-linear, as
 * HdrHistogram): constant memory, O(1) record, exact count, min, max and sum.
 *
 * Values are nanoseconds. Below 2^BENCH_HIST_SUB_BITS ns every value has its own bucket; above,
 * each power of two is split into 2^BENCH_HIST_SUB_BITS equal buckets, so a bucket's width is
 * at most 1/128 of its lower bound, and a percentile (reported as the middle of its bucket,
 * clamped to the exact min and max) is within BENCH_HIST_REL_ERROR of the true order statistic.
 * Values above BENCH_HIST_MAX_NS (100 s) count in its bucket; max stays exact.
 *
 * bench_shist is the same histogram with 2^BENCH_SHIST_SUB_BITS buckets per power of two, for
 * the per-second timeline: about 4.3 KiB instead of 31 KiB, and percentiles within
 * BENCH_SHIST_REL_ERROR (1/32, 3.1%) instead of 1/256.
 */
#ifndef PINSCTL_BENCH_HIST_H
#define PINSCTL_BENCH_HIST_H

#include <stdint.h>

#define BENCH_HIST_SUB_BITS  7
#define BENCH_HIST_SUB_COUNT (1u << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_MAX_NS    UINT64_C(100000000000)
/* 37 octaves cover 100 s = 1e11 ns < 2^37 (a few buckets of the last one stay unused); the
 * first 2^SUB_BITS values are exact. */
#define BENCH_HIST_BUCKETS ((37 - BENCH_HIST_SUB_BITS + 1) * BENCH_HIST_SUB_COUNT)
/* Relative error of a reported percentile: half a bucket's width over its lower bound. */
#define BENCH_HIST_REL_ERROR (1.0 / (2.0 * BENCH_HIST_SUB_COUNT))

typedef struct bench_hist {
    uint64_t count;
    uint64_t min; /* UINT64_MAX when empty */
    uint64_t max;
    uint64_t sum; /* for the mean */
    uint64_t buckets[BENCH_HIST_BUCKETS];
} bench_hist;

/* Empties h (about 31 KiB; embed it or allocate it, no allocation inside). */
void bench_hist_init(bench_hist *h);
/* Records one value in nanoseconds. */
void bench_hist_record(bench_hist *h, uint64_t ns);
/* Adds every value of src to dst. */
void bench_hist_merge(bench_hist *dst, const bench_hist *src);
/* The value at percentile p (0..100): the smallest recorded value v such that at least p% of the
 * values are <= v, within BENCH_HIST_REL_ERROR; exact max for p = 100; 0 when empty. */
uint64_t bench_hist_percentile(const bench_hist *h, double p);
/* The mean in nanoseconds (0 when empty). */
double bench_hist_mean(const bench_hist *h);

/* Bucket arithmetic, exposed for the unit tests: the bucket of a value, and the lowest and
 * highest value a bucket holds. */
unsigned bench_hist_bucket_of(uint64_t ns);
uint64_t bench_hist_bucket_low(unsigned b);
uint64_t bench_hist_bucket_high(unsigned b);

/* ---- the coarse histogram of one second ---------------------------------------------------- */

#define BENCH_SHIST_SUB_BITS  4
#define BENCH_SHIST_SUB_COUNT (1u << BENCH_SHIST_SUB_BITS)
#define BENCH_SHIST_BUCKETS   ((37 - BENCH_SHIST_SUB_BITS + 1) * BENCH_SHIST_SUB_COUNT)
/* Relative error of a reported percentile: half a bucket's width over its lower bound. */
#define BENCH_SHIST_REL_ERROR (1.0 / (2.0 * BENCH_SHIST_SUB_COUNT))

typedef struct bench_shist {
    uint64_t count;
    uint64_t min; /* UINT64_MAX when empty */
    uint64_t max;
    uint64_t buckets[BENCH_SHIST_BUCKETS];
} bench_shist;

/* Empties h (about 4.3 KiB, no allocation inside). */
void bench_shist_init(bench_shist *h);
/* Records one value in nanoseconds. */
void bench_shist_record(bench_shist *h, uint64_t ns);
/* As bench_hist_percentile, within BENCH_SHIST_REL_ERROR; exact max for p = 100; 0 when
 * empty. */
uint64_t bench_shist_percentile(const bench_shist *h, double p);
/* Bucket arithmetic of bench_shist, for the unit tests. */
unsigned bench_shist_bucket_of(uint64_t ns);
uint64_t bench_shist_bucket_low(unsigned b);
uint64_t bench_shist_bucket_high(unsigned b);

#endif
