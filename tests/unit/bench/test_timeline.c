/* tests/unit/bench/test_timeline.c: pinsctl bench's per-second latency (the coarse histogram of
 * tools/pinsctl/bench_hist.c, the timeline and stall figures of tools/pinsctl/bench_report.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "bench.h"
#include "bench_gen.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS UINT64_C(1000000)

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
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

static void test_shist_buckets_hold_their_values_and_are_narrow(void **state)
{
    (void)state;
    bench_rng r;
    bench_rng_seed(&r, 9);
    for (int i = 0; i < 200000; i++) {
        uint64_t v = (uint64_t)exp(bench_rng_double(&r) * log(1e11));
        unsigned b = bench_shist_bucket_of(v);
        assert_true(b < BENCH_SHIST_BUCKETS);
        assert_true(bench_shist_bucket_low(b) <= v);
        assert_true(v <= bench_shist_bucket_high(b));
        uint64_t width = bench_shist_bucket_high(b) - bench_shist_bucket_low(b) + 1;
        if (v >= BENCH_SHIST_SUB_COUNT)
            assert_true((double)width / (double)bench_shist_bucket_low(b) <= 1.0 / 16.0);
    }
    for (unsigned b = 1; b < BENCH_SHIST_BUCKETS; b++)
        assert_int_equal(bench_shist_bucket_low(b), bench_shist_bucket_high(b - 1) + 1);
    assert_true(bench_shist_bucket_of(BENCH_HIST_MAX_NS) < BENCH_SHIST_BUCKETS);
    assert_int_equal(bench_shist_bucket_of(UINT64_MAX), bench_shist_bucket_of(BENCH_HIST_MAX_NS));
    /* A second's histogram is the small one the timeline can afford 3600 of. */
    assert_true(sizeof(bench_shist) < 5000);
    assert_true(BENCH_SHIST_REL_ERROR <= 0.032);
}

static void test_shist_percentiles_within_stated_error(void **state)
{
    (void)state;
    size_t n = 50000;
    uint64_t *vals = malloc(n * sizeof(*vals));
    assert_non_null(vals);
    bench_rng r;
    bench_rng_seed(&r, 3);
    static bench_shist h;
    bench_shist_init(&h);
    assert_int_equal(bench_shist_percentile(&h, 99), 0);
    for (size_t i = 0; i < n; i++) {
        double u1 = bench_rng_double(&r) + 1e-12;
        double u2 = bench_rng_double(&r);
        double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
        vals[i] = (uint64_t)exp(log(300e3) + 1.5 * z);
        bench_shist_record(&h, vals[i]);
    }
    qsort(vals, n, sizeof(vals[0]), cmp_u64);
    static const double ps[] = {0, 1, 50, 90, 99, 99.9, 100};
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
        size_t rank = (size_t)ceil(ps[i] / 100.0 * (double)n);
        uint64_t want = vals[(rank < 1 ? 1 : rank) - 1];
        assert_within_rel(bench_shist_percentile(&h, ps[i]), want, BENCH_SHIST_REL_ERROR);
    }
    assert_int_equal(h.count, n);
    assert_int_equal(h.min, vals[0]);
    assert_int_equal(h.max, vals[n - 1]);
    assert_int_equal(bench_shist_percentile(&h, 100), vals[n - 1]);
    free(vals);
}

/* Records an answer as bench_run does: in the run's histogram and in its second's. */
static void answer(bench_stats *st, uint64_t sec, uint64_t ns)
{
    bench_hist_record(&st->lat[BENCH_OP_GET], ns);
    st->answers[BENCH_OP_GET]++;
    st->sent[BENCH_OP_GET]++;
    st->ok[BENCH_OP_GET]++;
    st->timeline_ok[sec]++;
    if (sec + 1 > st->timeline_len)
        st->timeline_len = sec + 1;
    assert_int_equal(bench_stats_timeline_record(st, sec, ns), 0);
}

/* Seconds 0..9 with 1000 answers of 0.5..1.5 ms each, except second 3 (5 answers of 100 ms:
 * too few to count); second 6 has 30 more of 20 ms (3%: its p99 is 20 ms); second 10 is the
 * partial last one (30 answers of 50 ms, the run ends 0.4 s into it). */
static bench_stats *spiky_run(void)
{
    bench_stats *st = malloc(sizeof(*st));
    assert_non_null(st);
    bench_stats_init(st);
    for (uint64_t s = 0; s < 10; s++) {
        if (s == 3)
            continue;
        for (uint64_t j = 0; j < 1000; j++)
            answer(st, s, 500000 + j * 1000);
    }
    for (int j = 0; j < 5; j++)
        answer(st, 3, 100 * MS);
    for (int j = 0; j < 30; j++)
        answer(st, 6, 20 * MS);
    for (int j = 0; j < 30; j++)
        answer(st, 10, 50 * MS);
    st->measured_ns = UINT64_C(10400000000);
    return st;
}

static void test_stall_finds_the_spike_and_skips_partial_and_sparse_seconds(void **state)
{
    (void)state;
    bench_stats *st = spiky_run();
    assert_int_equal(st->timeline_len, 11);
    bench_stall s;
    bench_stall_compute(st, &s);
    /* The run's p99: the 8975th of 9065 values, a 1.497 ms one (the spikes are its top 0.7%). */
    assert_within_rel(s.run_p99_ns, 1497000, BENCH_HIST_REL_ERROR);
    assert_int_equal(s.considered, 9); /* not 3 (5 answers), not 10 (partial) */
    assert_false(bench_stall_second_counts(st, 3));
    assert_false(bench_stall_second_counts(st, 10));
    assert_true(bench_stall_second_counts(st, 9));
    assert_int_equal(s.worst_second, 6);
    assert_within_rel(s.worst_p99_ns, 20 * MS, BENCH_SHIST_REL_ERROR);
    double ratio = (double)s.worst_p99_ns / (double)s.run_p99_ns;
    assert_true(ratio > 13.0 && ratio < 13.8);
    assert_int_equal(s.over, 1);
    /* The other seconds' p99 is about the run's. */
    for (uint64_t i = 0; i < 10; i++) {
        if (i == 3 || i == 6)
            continue;
        assert_within_rel(bench_shist_percentile(st->timeline_lat[i], 99), 1490000,
                          BENCH_SHIST_REL_ERROR);
    }
    /* Sending went on to the end of second 10 (-d 11s paced, the last answer early): it is whole
     * all the same. */
    st->sending_ns = UINT64_C(11000000000);
    assert_int_equal(bench_stall_end_ns(st), st->sending_ns);
    assert_true(bench_stall_second_counts(st, 10));
    st->sending_ns = UINT64_C(10900000000); /* a ^C in it: partial */
    assert_false(bench_stall_second_counts(st, 10));
    st->sending_ns = 0;
    /* A run that ends exactly at a second's end counts that second. */
    st->measured_ns = UINT64_C(11000000000);
    assert_true(bench_stall_second_counts(st, 10));
    bench_stall_compute(st, &s);
    assert_int_equal(s.considered, 10);
    assert_int_equal(s.worst_second, 10);
    assert_int_equal(s.over, 2);
    bench_stats_clear(st);
    for (uint64_t i = 0; i < BENCH_TIMELINE_MAX; i++)
        assert_null(st->timeline_lat[i]);
    free(st);
}

static void test_stall_without_a_counted_second(void **state)
{
    (void)state;
    bench_stats *st = malloc(sizeof(*st));
    assert_non_null(st);
    bench_stats_init(st);
    bench_stall s;
    bench_stall_compute(st, &s);
    assert_int_equal(s.considered, 0);
    assert_int_equal(s.run_p99_ns, 0);
    /* A run shorter than a second has only its partial second. */
    for (int j = 0; j < 100; j++)
        answer(st, 0, MS);
    st->measured_ns = 900 * MS;
    bench_stall_compute(st, &s);
    assert_int_equal(s.considered, 0);
    assert_int_equal(s.over, 0);
    /* Answers past the timeline's end share its last slot, which never counts. */
    assert_int_equal(bench_stats_timeline_record(st, BENCH_TIMELINE_MAX + 5, MS), 0);
    assert_int_equal(st->timeline_lat[BENCH_TIMELINE_MAX - 1]->count, 1);
    st->measured_ns = UINT64_C(4000) * 1000 * MS;
    assert_false(bench_stall_second_counts(st, BENCH_TIMELINE_MAX - 1));
    bench_stats_clear(st);
    free(st);
}

static char *report(bench_stats *st, bool json, bool timeline)
{
    bench_config cfg;
    pinsctl_global g;
    bench_config_init(&cfg);
    pinsctl_global_init(&g);
    cfg.timeline = timeline;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    if (json)
        bench_report_json(f, &cfg, &g.opts, st);
    else
        bench_report_text(f, &cfg, &g.opts, st);
    fclose(f);
    return buf;
}

static void test_report_has_per_second_percentiles_and_stall(void **state)
{
    (void)state;
    bench_stats *st = spiky_run();
    st->timeline_local[11] = 4; /* a second with local failures only: no latency */
    st->timeline_len = 12;
    st->measured_ns = UINT64_C(11400000000);
    char *buf = report(st, true, false);
    json_error_t jerr;
    json_t *doc = json_loads(buf, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON: %s: %s", jerr.text, buf);
    json_t *tl = json_object_get(doc, "timeline");
    assert_int_equal(json_array_size(tl), 12);
    json_t *t6 = json_array_get(tl, 6);
    assert_int_equal(json_integer_value(json_object_get(t6, "ok")), 1030);
    assert_true(fabs(json_number_value(json_object_get(t6, "p99_ms")) - 20.0) <= 0.001);
    assert_true(fabs(json_number_value(json_object_get(t6, "max_ms")) - 20.0) <= 0.001);
    double p50 = json_number_value(json_object_get(t6, "p50_ms"));
    assert_true(p50 > 1.0 * (1 - BENCH_SHIST_REL_ERROR) &&
                p50 < 1.02 * (1 + BENCH_SHIST_REL_ERROR));
    assert_non_null(json_object_get(t6, "p99.9_ms"));
    json_t *t11 = json_array_get(tl, 11);
    assert_int_equal(json_integer_value(json_object_get(t11, "failed_locally")), 4);
    assert_true(json_is_null(json_object_get(t11, "p50_ms")));
    assert_true(json_is_null(json_object_get(t11, "p99_ms")));
    assert_true(json_is_null(json_object_get(t11, "max_ms")));
    json_t *stall = json_object_get(doc, "stall");
    assert_non_null(stall);
    /* Second 10 is complete here (the run went on to 11.4 s), and its 50 ms the worst. */
    assert_int_equal(json_integer_value(json_object_get(stall, "worst_second")), 10);
    double run_p99 = json_number_value(json_object_get(stall, "run_p99_ms"));
    assert_true(fabs(run_p99 - 1.497) <= 1.497 * BENCH_HIST_REL_ERROR);
    assert_true(fabs(run_p99 -
                     json_number_value(json_object_get(json_object_get(doc, "latency_us"), "p99")) /
                         1e3) < 0.001);
    double ratio = json_number_value(json_object_get(stall, "ratio"));
    assert_true(ratio > 33.0 && ratio < 34.0);
    assert_true(fabs(json_number_value(json_object_get(stall, "worst_p99_ms")) - 50.0) <= 0.001);
    assert_int_equal(json_integer_value(json_object_get(stall, "seconds_over_3x")), 2);
    assert_int_equal(json_integer_value(json_object_get(stall, "seconds_considered")), 10);
    assert_int_equal(json_integer_value(json_object_get(stall, "min_answers")),
                     BENCH_STALL_MIN_ANSWERS);
    assert_true(fabs(json_number_value(json_object_get(stall, "complete_until_s")) - 11.4) < 1e-9);
    json_decref(doc);
    free(buf);

    buf = report(st, false, true);
    assert_non_null(strstr(buf, "per second: worst p99 50.000 ms in second 10"));
    assert_non_null(strstr(buf, "2 seconds over 3x (of 10 complete seconds"));
    assert_non_null(strstr(buf, "  second    answers"));
    assert_non_null(strstr(buf, "\n       3          5          0          0    100.000    100.000"
                                "    100.000 *\n"));
    assert_non_null(strstr(buf, "\n      11          0          0          4          -"));
    free(buf);
    buf = report(st, false, false);
    assert_null(strstr(buf, "  second    answers"));
    free(buf);
    bench_stats_clear(st);
    free(st);

    /* No second counts: the stall figures are null, the count 0. */
    st = malloc(sizeof(*st));
    assert_non_null(st);
    bench_stats_init(st);
    buf = report(st, true, false);
    doc = json_loads(buf, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON: %s: %s", jerr.text, buf);
    stall = json_object_get(doc, "stall");
    assert_true(json_is_null(json_object_get(stall, "run_p99_ms")));
    assert_true(json_is_null(json_object_get(stall, "worst_second")));
    assert_true(json_is_null(json_object_get(stall, "worst_p99_ms")));
    assert_true(json_is_null(json_object_get(stall, "ratio")));
    assert_int_equal(json_integer_value(json_object_get(stall, "seconds_over_3x")), 0);
    json_decref(doc);
    free(buf);
    buf = report(st, false, false);
    assert_non_null(strstr(buf, "per second: no complete second with 20 answers or more"));
    free(buf);
    free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shist_buckets_hold_their_values_and_are_narrow),
        cmocka_unit_test(test_shist_percentiles_within_stated_error),
        cmocka_unit_test(test_stall_finds_the_spike_and_skips_partial_and_sparse_seconds),
        cmocka_unit_test(test_stall_without_a_counted_second),
        cmocka_unit_test(test_report_has_per_second_percentiles_and_stall),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
