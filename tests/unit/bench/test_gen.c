/* tests/unit/bench/test_gen.c: pinsctl bench's draws and schedules (tools/pinsctl/bench_gen.c):
 * the zipfian and uniform key distributions, the operation mix, the --conflicts fraction and the
 * --rate pacer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "bench_gen.h"

#include <math.h>
#include <stdlib.h>

static void assert_close(double got, double want, double rel, const char *what)
{
    if (fabs(got - want) > rel * want) {
        print_error("%s: got %.6f, want %.6f within %.2f%%\n", what, got, want, rel * 100.0);
        fail();
    }
}

/* Draws `draws` ranks of Zipf(n, s) with a fixed seed and compares: rank 1 (index 0) and each of
 * the next ranks up to 10 with their exact probability, and the mass of the tail in decades. */
static void check_zipf(uint64_t n, double s, uint64_t seed, int draws)
{
    bench_zipf z;
    bench_zipf_init(&z, n, s);
    bench_rng r;
    bench_rng_seed(&r, seed);
    uint64_t *count = calloc(n, sizeof(*count));
    assert_non_null(count);
    for (int i = 0; i < draws; i++) {
        uint64_t k = bench_zipf_next(&z, &r);
        assert_true(k < n);
        count[k]++;
    }
    double hsum = 0;
    for (uint64_t k = n; k >= 1; k--)
        hsum += pow((double)k, -s);
    /* The hottest key: its frequency within 2% of the theory (several standard deviations). */
    assert_close((double)count[0] / draws, 1.0 / hsum, 0.02, "rank 1 frequency");
    assert_close(bench_zipf_pmf(n, s, 0), 1.0 / hsum, 1e-9, "pmf of rank 1");
    /* The head, rank by rank; then the tail in decades [10,100), [100,1000), ... */
    for (uint64_t k = 1; k < 10 && k < n; k++)
        assert_close((double)count[k] / draws, pow((double)(k + 1), -s) / hsum, 0.05, "head rank");
    for (uint64_t lo = 10; lo < n; lo *= 10) {
        uint64_t hi = lo * 10 < n ? lo * 10 : n;
        double want = 0, got = 0;
        for (uint64_t k = lo; k < hi; k++) {
            want += pow((double)(k + 1), -s) / hsum;
            got += (double)count[k] / draws;
        }
        assert_close(got, want, 0.03, "tail decade");
    }
    /* Monotone on average: each decade's first rank is drawn more than its last. */
    free(count);
}

static void test_zipf_s099_matches_theory(void **state)
{
    (void)state;
    check_zipf(1000, 0.99, 42, 1000000);
}

static void test_zipf_large_keyspace_and_other_exponents(void **state)
{
    (void)state;
    check_zipf(100000, 0.99, 1, 1000000);
    check_zipf(1000, 1.0, 2, 500000); /* the s = 1 special case of H */
    check_zipf(1000, 0.5, 3, 500000);
    check_zipf(500, 1.5, 4, 500000);
}

static void test_zipf_single_key_and_determinism(void **state)
{
    (void)state;
    bench_zipf z;
    bench_zipf_init(&z, 1, 0.99);
    bench_rng r;
    bench_rng_seed(&r, 9);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(bench_zipf_next(&z, &r), 0);
    bench_zipf_init(&z, 1000, 0.99);
    bench_rng a, b;
    bench_rng_seed(&a, 123);
    bench_rng_seed(&b, 123);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(bench_zipf_next(&z, &a), bench_zipf_next(&z, &b));
}

static void test_uniform_is_flat_and_in_range(void **state)
{
    (void)state;
    bench_rng r;
    bench_rng_seed(&r, 77);
    uint64_t count[10] = {0};
    int draws = 1000000;
    for (int i = 0; i < draws; i++) {
        uint64_t k = bench_rng_below(&r, 10);
        assert_true(k < 10);
        count[k]++;
    }
    for (int k = 0; k < 10; k++)
        assert_close((double)count[k], draws / 10.0, 0.01, "uniform bucket");
    for (int i = 0; i < 1000; i++)
        assert_int_equal(bench_rng_below(&r, 1), 0);
    /* A range that does not divide 2^64 evenly, near its top. */
    uint64_t n = (UINT64_C(1) << 63) + 12345;
    uint64_t above_half = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t k = bench_rng_below(&r, n);
        assert_true(k < n);
        above_half += k >= n / 2;
    }
    assert_close((double)above_half, 50000.0, 0.02, "upper half");
    for (int i = 0; i < 100000; i++) {
        double d = bench_rng_double(&r);
        assert_true(d >= 0.0 && d < 1.0);
    }
}

static void test_mix_ratios_are_exact_and_interleaved(void **state)
{
    (void)state;
    bench_mix m;
    unsigned w1[BENCH_OP__COUNT] = {90, 10, 0, 0};
    bench_mix_init(&m, w1);
    uint64_t count[BENCH_OP__COUNT] = {0};
    for (int i = 0; i < 100000; i++) {
        bench_op op = bench_mix_next(&m);
        count[op]++;
        /* Every completed window of 10 calls holds exactly one put. */
        if ((i + 1) % 10 == 0)
            assert_int_equal(count[BENCH_OP_PUT], (uint64_t)(i + 1) / 10);
    }
    assert_int_equal(count[BENCH_OP_GET], 90000);
    assert_int_equal(count[BENCH_OP_PUT], 10000);
    assert_int_equal(count[BENCH_OP_LIST], 0);
    assert_int_equal(count[BENCH_OP_DELETE], 0);

    unsigned w2[BENCH_OP__COUNT] = {50, 30, 15, 5};
    bench_mix_init(&m, w2);
    uint64_t c2[BENCH_OP__COUNT] = {0};
    int n = 12345; /* not a multiple of the weights' sum */
    for (int i = 0; i < n; i++)
        c2[bench_mix_next(&m)]++;
    for (int op = 0; op < BENCH_OP__COUNT; op++)
        assert_close((double)c2[op] / n, w2[op] / 100.0, 0.01, "mix ratio");

    unsigned w3[BENCH_OP__COUNT] = {0, 0, 0, 3};
    bench_mix_init(&m, w3);
    for (int i = 0; i < 100; i++)
        assert_int_equal(bench_mix_next(&m), BENCH_OP_DELETE);
}

static void test_parse_mix(void **state)
{
    (void)state;
    unsigned mix[BENCH_OP__COUNT] = {1, 2, 3, 4};
    assert_true(bench_parse_mix("get=90,put=10,list=0,delete=0", mix));
    assert_int_equal(mix[BENCH_OP_GET], 90);
    assert_int_equal(mix[BENCH_OP_PUT], 10);
    assert_int_equal(mix[BENCH_OP_LIST], 0);
    assert_true(bench_parse_mix("delete=1", mix));
    assert_int_equal(mix[BENCH_OP_GET], 0);
    assert_int_equal(mix[BENCH_OP_DELETE], 1);
    static const char *const bad[] = {"",       "get",         "get=",        "get=-1",
                                      "get=0",  "get=1,",      "post=1",      "get=1,get=2",
                                      "get=1x", "get=1;put=1", "put=0,list=0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_false(bench_parse_mix(bad[i], mix));
        assert_int_equal(mix[BENCH_OP_DELETE], 1); /* untouched */
    }
}

static void test_frac_is_exact(void **state)
{
    (void)state;
    static const double fs[] = {0.0, 0.1, 0.25, 1.0 / 3.0, 0.999, 1.0};
    for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); i++) {
        bench_frac fr;
        bench_frac_init(&fr, fs[i]);
        uint64_t yes = 0;
        for (int k = 1; k <= 10000; k++) {
            yes += bench_frac_next(&fr);
            assert_int_equal(yes, (uint64_t)floor(k * fs[i]));
        }
    }
}

static void test_pacer_spaces_sends_evenly(void **state)
{
    (void)state;
    bench_pacer p;
    uint64_t start = 1000000000;
    bench_pacer_init(&p, start, 1000.0, 250000); /* 1 ms apart, offset 0.25 ms */
    uint64_t due = 0;
    assert_false(bench_pacer_take(&p, start, &due));
    assert_int_equal(bench_pacer_due(&p), start + 250000);
    assert_true(bench_pacer_take(&p, start + 250000, &due));
    assert_int_equal(due, start + 250000);
    assert_false(bench_pacer_take(&p, start + 1000000, &due));
    /* Late by 10.5 ms: the ten sends due meanwhile come out at once, each with its own due
     * time on the grid, and the grid does not move. */
    uint64_t now = start + 250000 + 10500000;
    for (int k = 1; k <= 10; k++) {
        assert_true(bench_pacer_take(&p, now, &due));
        assert_int_equal(due, start + 250000 + (uint64_t)k * 1000000);
    }
    assert_false(bench_pacer_take(&p, now, &due));
    assert_int_equal(bench_pacer_due(&p), start + 250000 + 11 * 1000000);

    /* A rate whose interval is not whole nanoseconds does not drift: send 3,000,000 of
     * 3000/s is due at exactly 1000 s. */
    bench_pacer_init(&p, 0, 3000.0, 0);
    p.next = 3000000;
    assert_int_equal(bench_pacer_due(&p), UINT64_C(1000000000000));
    /* Even spacing: consecutive due times differ by 333333 or 333334 ns. */
    p.next = 0;
    uint64_t prev = bench_pacer_due(&p);
    for (int k = 1; k < 100000; k++) {
        p.next = (uint64_t)k;
        uint64_t d = bench_pacer_due(&p);
        assert_true(d - prev == 333333 || d - prev == 333334);
        prev = d;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zipf_s099_matches_theory),
        cmocka_unit_test(test_zipf_large_keyspace_and_other_exponents),
        cmocka_unit_test(test_zipf_single_key_and_determinism),
        cmocka_unit_test(test_uniform_is_flat_and_in_range),
        cmocka_unit_test(test_mix_ratios_are_exact_and_interleaved),
        cmocka_unit_test(test_parse_mix),
        cmocka_unit_test(test_frac_is_exact),
        cmocka_unit_test(test_pacer_spaces_sends_evenly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
