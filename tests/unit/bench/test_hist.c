/* tests/unit/bench/test_hist.c: pinsctl bench's latency histogram (tools/pinsctl/bench_hist.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "bench_gen.h"
#include "bench_hist.h"

#include <math.h>
#include <stdlib.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The exact order statistic the histogram estimates: the ceil(p% * n)-th smallest. */
static uint64_t exact_percentile(const uint64_t *sorted, size_t n, double p)
{
    if (p >= 100.0)
        return sorted[n - 1];
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    if (rank < 1)
        rank = 1;
    return sorted[rank - 1];
}

static void assert_within_rel(uint64_t got, uint64_t want, double rel)
{
    double err = fabs((double)got - (double)want);
    if (err > rel * (double)want) {
        print_error("got %llu, want %llu within %.4f%%\n", (unsigned long long)got,
                    (unsigned long long)want, rel * 100.0);
        fail();
    }
}

static void test_hist_buckets_hold_their_values_and_are_narrow(void **state)
{
    (void)state;
    bench_rng r;
    bench_rng_seed(&r, 7);
    for (int i = 0; i < 200000; i++) {
        /* log-uniform over 1 ns .. 100 s */
        uint64_t v = (uint64_t)exp(bench_rng_double(&r) * log(1e11));
        unsigned b = bench_hist_bucket_of(v);
        assert_true(b < BENCH_HIST_BUCKETS);
        assert_true(bench_hist_bucket_low(b) <= v);
        assert_true(v <= bench_hist_bucket_high(b));
        uint64_t width = bench_hist_bucket_high(b) - bench_hist_bucket_low(b) + 1;
        if (v < BENCH_HIST_SUB_COUNT)
            assert_int_equal(width, 1);
        else
            assert_true((double)width / (double)bench_hist_bucket_low(b) <= 1.0 / 128.0);
    }
    /* Buckets tile the range: each starts one past the previous one's end. */
    for (unsigned b = 1; b < BENCH_HIST_BUCKETS; b++)
        assert_int_equal(bench_hist_bucket_low(b), bench_hist_bucket_high(b - 1) + 1);
    /* Values above the range share the bucket of BENCH_HIST_MAX_NS, inside the array. */
    assert_true(bench_hist_bucket_of(BENCH_HIST_MAX_NS) < BENCH_HIST_BUCKETS);
    assert_int_equal(bench_hist_bucket_of(UINT64_MAX), bench_hist_bucket_of(BENCH_HIST_MAX_NS));
}

static void check_distribution(uint64_t *vals, size_t n)
{
    static bench_hist h;
    bench_hist_init(&h);
    for (size_t i = 0; i < n; i++)
        bench_hist_record(&h, vals[i]);
    qsort(vals, n, sizeof(vals[0]), cmp_u64);
    static const double ps[] = {0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
        assert_within_rel(bench_hist_percentile(&h, ps[i]), exact_percentile(vals, n, ps[i]),
                          BENCH_HIST_REL_ERROR);
    assert_int_equal(h.count, n);
    assert_int_equal(h.min, vals[0]);
    assert_int_equal(h.max, vals[n - 1]);
    assert_int_equal(bench_hist_percentile(&h, 100), vals[n - 1]);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)vals[i];
    assert_true(fabs(bench_hist_mean(&h) - sum / (double)n) <= 1e-9 * sum / (double)n + 1e-9);
}

static void test_hist_percentiles_of_uniform_within_stated_error(void **state)
{
    (void)state;
    size_t n = 1000000;
    uint64_t *vals = malloc(n * sizeof(*vals));
    assert_non_null(vals);
    /* Every microsecond value from 1 us to 1 s. */
    for (size_t i = 0; i < n; i++)
        vals[i] = (uint64_t)(i + 1) * 1000;
    check_distribution(vals, n);
    free(vals);
}

static void test_hist_percentiles_of_exponential_within_stated_error(void **state)
{
    (void)state;
    size_t n = 500000;
    uint64_t *vals = malloc(n * sizeof(*vals));
    assert_non_null(vals);
    bench_rng r;
    bench_rng_seed(&r, 11);
    /* Mean 2 ms, plus a tail up to tens of seconds from a few large values. */
    for (size_t i = 0; i < n; i++)
        vals[i] = 1000 + (uint64_t)(-log(1.0 - bench_rng_double(&r)) * 2e6);
    vals[17] = UINT64_C(42123456789);
    check_distribution(vals, n);
    free(vals);
}

static void test_hist_percentiles_of_lognormal_within_stated_error(void **state)
{
    (void)state;
    size_t n = 300000;
    uint64_t *vals = malloc(n * sizeof(*vals));
    assert_non_null(vals);
    bench_rng r;
    bench_rng_seed(&r, 3);
    for (size_t i = 0; i < n; i++) {
        double u1 = bench_rng_double(&r) + 1e-12;
        double u2 = bench_rng_double(&r);
        double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
        vals[i] = (uint64_t)exp(log(300e3) + 1.5 * z); /* median 300 us, wide spread */
    }
    check_distribution(vals, n);
    free(vals);
}

static void test_hist_max_is_exact_beyond_range(void **state)
{
    (void)state;
    static bench_hist h;
    bench_hist_init(&h);
    assert_int_equal(bench_hist_percentile(&h, 50), 0);
    assert_true(bench_hist_mean(&h) == 0.0);
    bench_hist_record(&h, 1234567);
    assert_int_equal(bench_hist_percentile(&h, 50), 1234567); /* clamped to min and max */
    assert_int_equal(bench_hist_percentile(&h, 100), 1234567);
    uint64_t huge = UINT64_C(250000000001); /* 250 s, above the range */
    bench_hist_record(&h, huge);
    assert_int_equal(h.max, huge);
    assert_int_equal(bench_hist_percentile(&h, 100), huge);
    /* Below the max, a value beyond the range reads as the range's end (100 s). */
    assert_within_rel(bench_hist_percentile(&h, 99.9), BENCH_HIST_MAX_NS, BENCH_HIST_REL_ERROR);
    assert_int_equal(h.min, 1234567);
}

static void test_hist_merge_equals_recording_all(void **state)
{
    (void)state;
    static bench_hist a, b, all;
    bench_hist_init(&a);
    bench_hist_init(&b);
    bench_hist_init(&all);
    bench_rng r;
    bench_rng_seed(&r, 5);
    for (int i = 0; i < 100000; i++) {
        uint64_t v = 500 + bench_rng_below(&r, 50000000);
        bench_hist_record(i % 3 == 0 ? &a : &b, v);
        bench_hist_record(&all, v);
    }
    bench_hist_record(&b, 7); /* b holds the min */
    bench_hist_record(&all, 7);
    bench_hist_merge(&a, &b);
    assert_memory_equal(&a, &all, sizeof(all));
    static bench_hist empty;
    bench_hist_init(&empty);
    bench_hist_merge(&a, &empty);
    assert_memory_equal(&a, &all, sizeof(all));
    bench_hist_merge(&empty, &all);
    assert_memory_equal(&empty, &all, sizeof(all));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_buckets_hold_their_values_and_are_narrow),
        cmocka_unit_test(test_hist_percentiles_of_uniform_within_stated_error),
        cmocka_unit_test(test_hist_percentiles_of_exponential_within_stated_error),
        cmocka_unit_test(test_hist_percentiles_of_lognormal_within_stated_error),
        cmocka_unit_test(test_hist_max_is_exact_beyond_range),
        cmocka_unit_test(test_hist_merge_equals_recording_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
