/* tools/pinsctl/bench_gen.h: what pinsctl bench draws and schedules, apart from any I/O so the
 * unit tests check it exactly: a seeded PRNG, the uniform and zipfian key distributions, the
 * operation mix, the fraction scheduler of --conflicts and the pacer of --rate.
 *
 * Everything here is deterministic for a given seed and allocates nothing.
 */
#ifndef PINSCTL_BENCH_GEN_H
#define PINSCTL_BENCH_GEN_H

#include <stdbool.h>
#include <stdint.h>

#include "bench.h"

/* xoshiro256** (Blackman and Vigna), seeded through splitmix64: fast, 2^256-1 period. */
typedef struct bench_rng {
    uint64_t s[4];
} bench_rng;

void bench_rng_seed(bench_rng *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double bench_rng_double(bench_rng *r);
/* Uniform in [0, n), unbiased (Lemire's multiply-and-reject); n >= 1. */
uint64_t bench_rng_below(bench_rng *r, uint64_t n);

/* Zipfian ranks over [0, n): P(rank r) = (r+1)^-s / H(n, s), for any s > 0, exactly (Hörmann
 * and Derflinger's rejection-inversion, "Rejection-inversion to generate variates from monotone
 * discrete distributions", 1996): O(1) setup and an expected O(1) draw whatever n, no table. */
typedef struct bench_zipf {
    uint64_t n;
    double s;
    double h_integral_x1; /* H(1.5) - 1 */
    double h_integral_n;  /* H(n + 0.5) */
    double threshold;     /* 2 - H^-1(H(2.5) - h(2)) */
} bench_zipf;

/* n >= 1, s > 0. */
void bench_zipf_init(bench_zipf *z, uint64_t n, double s);
uint64_t bench_zipf_next(const bench_zipf *z, bench_rng *r);
/* The exact probability of rank r (0-based) under Zipf(n, s), summing H(n, s) (O(n)); for tests
 * and for the report's expectations. */
double bench_zipf_pmf(uint64_t n, double s, uint64_t r);

/* The operation mix: smooth weighted round-robin, so that over any sum(weights) consecutive
 * draws each operation comes exactly weight times, evenly interleaved (get=90,put=10: one put
 * in every ten calls). */
typedef struct bench_mix {
    int weight[BENCH_OP__COUNT];
    int current[BENCH_OP__COUNT];
    int total;
} bench_mix;

/* weights sum to > 0 (bench_parse_mix checks). */
void bench_mix_init(bench_mix *m, const unsigned weights[BENCH_OP__COUNT]);
bench_op bench_mix_next(bench_mix *m);

/* A fraction scheduler: bench_frac_next returns true for exactly floor(k * f) of the first k
 * calls, evenly spread (Bresenham). */
typedef struct bench_frac {
    double f;
    uint64_t k;
} bench_frac;

void bench_frac_init(bench_frac *fr, double f);
bool bench_frac_next(bench_frac *fr);

/* The pacer of one connection: send k (from 0) is due at start + offset + k * interval, in
 * nanoseconds on the monotonic clock; the schedule never slips, so a late send keeps its due
 * time (latency counts from it) and later sends stay on the grid. */
typedef struct bench_pacer {
    uint64_t start_ns;
    double interval_ns; /* 0: no pacing, every send is due at once */
    uint64_t offset_ns;
    uint64_t next; /* index of the next send */
} bench_pacer;

/* rate: this connection's calls per second (> 0, or 0 for none); offset spreads the
 * connections' grids over one interval. */
void bench_pacer_init(bench_pacer *p, uint64_t start_ns, double rate, uint64_t offset_ns);
/* The due time of the next send. */
uint64_t bench_pacer_due(const bench_pacer *p);
/* Consumes the next send when it is due at now; returns its due time in *pdue. */
bool bench_pacer_take(bench_pacer *p, uint64_t now_ns, uint64_t *pdue);

#endif
