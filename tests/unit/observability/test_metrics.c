/* tests/unit/observability/test_metrics.c: the registry, its shards and the text exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "observability/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The block of one family in the exposition: from its # HELP line up to the next family. New
 * string; the test frees it. */
static char *family_text(const char *name)
{
    size_t len = 0;
    char *all = metrics_render(&len);
    assert_non_null(all);
    assert_int_equal(strlen(all), len);
    char head[256];
    snprintf(head, sizeof(head), "# HELP %s ", name);
    char *start = strstr(all, head);
    assert_non_null(start);
    char *end = strstr(start + 1, "# HELP ");
    size_t n = end ? (size_t)(end - start) : strlen(start);
    char *out = strndup(start, n);
    free(all);
    assert_non_null(out);
    return out;
}

static void assert_family(const char *name, const char *want)
{
    char *got = family_text(name);
    assert_string_equal(got, want);
    free(got);
}

static int teardown(void **state)
{
    (void)state;
    metrics_shutdown();
    return 0;
}

static void test_counter_renders_help_type_and_sorted_series(void **state)
{
    static const char *const labels[] = {"operation", "status"};
    metrics_family *f = metrics_counter_new("t_ops_total", "Operations.", labels, 2);
    assert_non_null(f);
    metrics_counter_inc(f, (const char *[]){"upsert", "success"});
    metrics_counter_inc(f, (const char *[]){"get", "not_found"});
    metrics_counter_inc(f, (const char *[]){"upsert", "success"});
    metrics_counter_add(f, (const char *[]){"get", "success"}, 5);
    assert_family("t_ops_total", "# HELP t_ops_total Operations.\n"
                                 "# TYPE t_ops_total counter\n"
                                 "t_ops_total{operation=\"get\",status=\"not_found\"} 1\n"
                                 "t_ops_total{operation=\"get\",status=\"success\"} 5\n"
                                 "t_ops_total{operation=\"upsert\",status=\"success\"} 2\n");
}

static void test_counter_add_keeps_fractions_and_ignores_negative(void **state)
{
    metrics_family *f = metrics_counter_new("t_seconds_total", "Seconds.", NULL, 0);
    assert_non_null(f);
    metrics_counter_add(f, NULL, 0.5);
    metrics_counter_add(f, NULL, 0.25);
    metrics_counter_add(f, NULL, -3);
    metrics_counter_add(f, NULL, NAN);
    assert_family("t_seconds_total", "# HELP t_seconds_total Seconds.\n"
                                     "# TYPE t_seconds_total counter\n"
                                     "t_seconds_total 0.75\n");
}

static void test_unlabelled_families_render_zero_before_first_update(void **state)
{
    assert_non_null(metrics_counter_new("t_started_total", "Started.", NULL, 0));
    assert_non_null(metrics_gauge_new("t_up", "Up.", NULL, 0));
    static const char *const labels[] = {"kind"};
    assert_non_null(metrics_counter_new("t_errors_total", "Errors.", labels, 1));
    assert_family("t_started_total",
                  "# HELP t_started_total Started.\n# TYPE t_started_total counter\n"
                  "t_started_total 0\n");
    assert_family("t_up", "# HELP t_up Up.\n# TYPE t_up gauge\nt_up 0\n");
    assert_family("t_errors_total", "# HELP t_errors_total Errors.\n"
                                    "# TYPE t_errors_total counter\n");
}

static void test_label_values_and_help_are_escaped(void **state)
{
    static const char *const labels[] = {"v"};
    metrics_family *f =
        metrics_counter_new("t_esc_total", "Back\\slash and\nnewline \"q\".", labels, 1);
    assert_non_null(f);
    metrics_counter_inc(f, (const char *[]){"a\\b\"c\nd"});
    assert_family("t_esc_total", "# HELP t_esc_total Back\\\\slash and\\nnewline \"q\".\n"
                                 "# TYPE t_esc_total counter\n"
                                 "t_esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
}

static void test_null_label_value_is_empty_string(void **state)
{
    static const char *const labels[] = {"a", "b"};
    metrics_family *f = metrics_counter_new("t_null_total", "N.", labels, 2);
    metrics_counter_inc(f, (const char *[]){NULL, "x"});
    metrics_counter_inc(f, (const char *[]){"", "x"});
    assert_family("t_null_total", "# HELP t_null_total N.\n# TYPE t_null_total counter\n"
                                  "t_null_total{a=\"\",b=\"x\"} 2\n");
}

static void test_histogram_buckets_are_cumulative_with_inf_sum_and_count(void **state)
{
    static const char *const labels[] = {"operation"};
    static const double buckets[] = {0.5, 1, 10};
    metrics_family *f =
        metrics_histogram_new("t_latency_seconds", "Latency.", labels, 1, buckets, 3);
    assert_non_null(f);
    const char *const get[] = {"get"};
    metrics_histogram_observe(f, get, 0.25);
    metrics_histogram_observe(f, get, 0.5); /* upper bounds are inclusive */
    metrics_histogram_observe(f, get, 0.75);
    metrics_histogram_observe(f, get, 4);
    metrics_histogram_observe(f, get, 64);
    assert_family("t_latency_seconds", "# HELP t_latency_seconds Latency.\n"
                                       "# TYPE t_latency_seconds histogram\n"
                                       "t_latency_seconds_bucket{operation=\"get\",le=\"0.5\"} 2\n"
                                       "t_latency_seconds_bucket{operation=\"get\",le=\"1\"} 3\n"
                                       "t_latency_seconds_bucket{operation=\"get\",le=\"10\"} 4\n"
                                       "t_latency_seconds_bucket{operation=\"get\",le=\"+Inf\"} 5\n"
                                       "t_latency_seconds_sum{operation=\"get\"} 69.5\n"
                                       "t_latency_seconds_count{operation=\"get\"} 5\n");
}

static void test_latency_buckets_render_as_short_le_values(void **state)
{
    assert_int_equal(metrics_latency_nbuckets, 13);
    metrics_family *f = metrics_histogram_new("t_rbac_seconds", "RBAC.", NULL, 0,
                                              metrics_latency_buckets, metrics_latency_nbuckets);
    assert_non_null(f);
    metrics_histogram_observe(f, NULL, 0.003);
    assert_family("t_rbac_seconds", "# HELP t_rbac_seconds RBAC.\n"
                                    "# TYPE t_rbac_seconds histogram\n"
                                    "t_rbac_seconds_bucket{le=\"0.0001\"} 0\n"
                                    "t_rbac_seconds_bucket{le=\"0.00025\"} 0\n"
                                    "t_rbac_seconds_bucket{le=\"0.0005\"} 0\n"
                                    "t_rbac_seconds_bucket{le=\"0.001\"} 0\n"
                                    "t_rbac_seconds_bucket{le=\"0.0025\"} 0\n"
                                    "t_rbac_seconds_bucket{le=\"0.005\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"0.01\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"0.025\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"0.05\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"0.1\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"0.25\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"0.5\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"1\"} 1\n"
                                    "t_rbac_seconds_bucket{le=\"+Inf\"} 1\n"
                                    "t_rbac_seconds_sum 0.003\n"
                                    "t_rbac_seconds_count 1\n");
}

struct worker {
    metrics_family *counter;
    metrics_family *hist;
    int n;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    const char *const ok[] = {"ok"};
    for (int i = 0; i < w->n; i++) {
        metrics_counter_inc(w->counter, ok);
        metrics_histogram_observe(w->hist, ok, i % 2 ? 0.5 : 2);
    }
    return NULL;
}

static void test_counter_sums_shards_of_two_threads_after_they_exit(void **state)
{
    static const char *const labels[] = {"status"};
    static const double buckets[] = {1};
    struct worker w = {
        .counter = metrics_counter_new("t_threads_total", "T.", labels, 1),
        .hist = metrics_histogram_new("t_threads_seconds", "H.", labels, 1, buckets, 1),
        .n = 10000,
    };
    assert_non_null(w.counter);
    assert_non_null(w.hist);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, work, &w), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    metrics_counter_inc(w.counter, (const char *[]){"ok"}); /* and the main thread's shard */
    assert_family("t_threads_total", "# HELP t_threads_total T.\n"
                                     "# TYPE t_threads_total counter\n"
                                     "t_threads_total{status=\"ok\"} 20001\n");
    assert_family("t_threads_seconds", "# HELP t_threads_seconds H.\n"
                                       "# TYPE t_threads_seconds histogram\n"
                                       "t_threads_seconds_bucket{status=\"ok\",le=\"1\"} 10000\n"
                                       "t_threads_seconds_bucket{status=\"ok\",le=\"+Inf\"} 20000\n"
                                       "t_threads_seconds_sum{status=\"ok\"} 25000\n"
                                       "t_threads_seconds_count{status=\"ok\"} 20000\n");
}

static void *render_loop(void *arg)
{
    for (int i = 0; i < 50; i++) {
        char *s = metrics_render(NULL);
        assert_non_null(s);
        free(s);
    }
    (void)arg;
    return NULL;
}

static void test_render_while_threads_update_is_safe(void **state)
{
    static const char *const labels[] = {"status"};
    static const double buckets[] = {1};
    struct worker w = {
        .counter = metrics_counter_new("t_busy_total", "T.", labels, 1),
        .hist = metrics_histogram_new("t_busy_seconds", "H.", labels, 1, buckets, 1),
        .n = 20000,
    };
    pthread_t t[2];
    assert_int_equal(pthread_create(&t[0], NULL, work, &w), 0);
    assert_int_equal(pthread_create(&t[1], NULL, render_loop, NULL), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_family("t_busy_total", "# HELP t_busy_total T.\n"
                                  "# TYPE t_busy_total counter\n"
                                  "t_busy_total{status=\"ok\"} 20000\n");
}

static double answer(void *arg)
{
    return *(double *)arg;
}

static void test_gauges_set_add_and_sample_callbacks(void **state)
{
    static const char *const labels[] = {"state"};
    metrics_family *f = metrics_gauge_new("t_pool", "Pool.", labels, 1);
    assert_non_null(f);
    double cb_value = 42.5;
    metrics_gauge_set(f, (const char *[]){"idle"}, 3);
    metrics_gauge_add(f, (const char *[]){"idle"}, -1);
    metrics_gauge_add(f, (const char *[]){"busy"}, 7);
    metrics_gauge_set_cb(f, (const char *[]){"max"}, answer, &cb_value);
    assert_family("t_pool", "# HELP t_pool Pool.\n"
                            "# TYPE t_pool gauge\n"
                            "t_pool{state=\"busy\"} 7\n"
                            "t_pool{state=\"idle\"} 2\n"
                            "t_pool{state=\"max\"} 42.5\n");
    cb_value = -1.25; /* sampled at every exposition */
    assert_family("t_pool", "# HELP t_pool Pool.\n"
                            "# TYPE t_pool gauge\n"
                            "t_pool{state=\"busy\"} 7\n"
                            "t_pool{state=\"idle\"} 2\n"
                            "t_pool{state=\"max\"} -1.25\n");
    metrics_gauge_set(f, (const char *[]){"max"}, 9); /* a plain value replaces the callback */
    cb_value = 100;
    char *got = family_text("t_pool");
    assert_non_null(strstr(got, "t_pool{state=\"max\"} 9\n"));
    free(got);
}

static void test_values_render_in_forms_prometheus_parses(void **state)
{
    static const char *const labels[] = {"v"};
    metrics_family *f = metrics_gauge_new("t_fmt", "F.", labels, 1);
    metrics_gauge_set(f, (const char *[]){"a_small"}, 1e-05);
    metrics_gauge_set(f, (const char *[]){"b_tenth"}, 0.1);
    metrics_gauge_set(f, (const char *[]){"c_big_int"}, 1e15);
    metrics_gauge_set(f, (const char *[]){"d_int"}, 123456789012.0);
    metrics_gauge_set(f, (const char *[]){"e_nan"}, NAN);
    metrics_gauge_set(f, (const char *[]){"f_inf"}, INFINITY);
    metrics_gauge_set(f, (const char *[]){"g_neg_inf"}, -INFINITY);
    metrics_gauge_set(f, (const char *[]){"h_neg"}, -2.5);
    metrics_gauge_set(f, (const char *[]){"i_third"}, 1.0 / 3.0);
    metrics_gauge_set(f, (const char *[]){"j_neg_zero"}, -0.0);
    assert_family("t_fmt", "# HELP t_fmt F.\n"
                           "# TYPE t_fmt gauge\n"
                           "t_fmt{v=\"a_small\"} 1e-05\n"
                           "t_fmt{v=\"b_tenth\"} 0.1\n"
                           "t_fmt{v=\"c_big_int\"} 1000000000000000\n"
                           "t_fmt{v=\"d_int\"} 123456789012\n"
                           "t_fmt{v=\"e_nan\"} NaN\n"
                           "t_fmt{v=\"f_inf\"} +Inf\n"
                           "t_fmt{v=\"g_neg_inf\"} -Inf\n"
                           "t_fmt{v=\"h_neg\"} -2.5\n"
                           "t_fmt{v=\"i_third\"} 0.3333333333333333\n"
                           "t_fmt{v=\"j_neg_zero\"} 0\n");
}

static void test_series_limit_drops_updates_and_counts_them(void **state)
{
    static const char *const labels[] = {"id"};
    metrics_family *f = metrics_counter_new("t_many_total", "Many.", labels, 1);
    char id[16];
    for (int i = 0; i < 10002; i++) {
        snprintf(id, sizeof(id), "%05d", i);
        metrics_counter_inc(f, (const char *[]){id});
    }
    metrics_counter_inc(f, (const char *[]){"00000"}); /* existing series still count */
    char *got = family_text("t_many_total");
    size_t lines = 0;
    for (char *p = got; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 2 + 10000);
    assert_non_null(strstr(got, "t_many_total{id=\"00000\"} 2\n"));
    assert_non_null(strstr(got, "t_many_total{id=\"09999\"} 1\n"));
    assert_null(strstr(got, "\"10000\""));
    free(got);
    assert_family("pins_metrics_dropped_series_total",
                  "# HELP pins_metrics_dropped_series_total Metric updates dropped because a "
                  "family reached its series limit.\n"
                  "# TYPE pins_metrics_dropped_series_total counter\n"
                  "pins_metrics_dropped_series_total 2\n");
}

static void test_render_includes_process_series(void **state)
{
    char *all = metrics_render(NULL);
    assert_non_null(all);
    static const char *const names[] = {
        "process_cpu_seconds_total", "process_resident_memory_bytes",
        "process_open_fds",          "process_virtual_memory_bytes",
        "process_max_fds",           "process_start_time_seconds",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "\n%s ", names[i]);
        char *p = strstr(all, line);
        assert_non_null(p);
        double v = strtod(p + strlen(line), NULL);
        assert_true(v >= 0);
        if (strcmp(names[i], "process_start_time_seconds") == 0)
            assert_true(v > 1.5e9);
        if (strcmp(names[i], "process_open_fds") == 0)
            assert_true(v >= 3);
    }
    assert_non_null(strstr(all, "# TYPE process_cpu_seconds_total counter\n"));
    assert_non_null(strstr(all, "# TYPE process_open_fds gauge\n"));
    free(all);
}

static void test_family_new_rejects_bad_names_labels_and_buckets(void **state)
{
    static const char *const dup[] = {"a", "a"};
    static const char *const le[] = {"le"};
    static const char *const reserved[] = {"__x"};
    static const char *const bad[] = {"a-b"};
    static const double descending[] = {1, 0.5};
    assert_null(metrics_counter_new("1abc", "x", NULL, 0));
    assert_null(metrics_counter_new("a b", "x", NULL, 0));
    assert_null(metrics_counter_new(NULL, "x", NULL, 0));
    assert_null(metrics_counter_new("t_dup", "x", dup, 2));
    assert_null(metrics_counter_new("t_res", "x", reserved, 1));
    assert_null(metrics_counter_new("t_bad", "x", bad, 1));
    assert_null(metrics_histogram_new("t_le", "x", le, 1, metrics_latency_buckets, 13));
    assert_null(metrics_histogram_new("t_desc", "x", NULL, 0, descending, 2));
    assert_non_null(metrics_counter_new("t_once:total", "x", NULL, 0));
    assert_null(metrics_gauge_new("t_once:total", "x", NULL, 0));
}

static void test_updates_of_the_wrong_kind_are_ignored(void **state)
{
    metrics_family *c = metrics_counter_new("t_kind_total", "K.", NULL, 0);
    metrics_gauge_set(c, NULL, 5);
    metrics_histogram_observe(c, NULL, 5);
    metrics_counter_inc(NULL, NULL);
    assert_family("t_kind_total", "# HELP t_kind_total K.\n# TYPE t_kind_total counter\n"
                                  "t_kind_total 0\n");
}

static void test_shutdown_then_new_registry_starts_from_zero(void **state)
{
    metrics_family *f = metrics_counter_new("t_again_total", "A.", NULL, 0);
    metrics_counter_add(f, NULL, 10);
    metrics_shutdown();
    f = metrics_counter_new("t_again_total", "A.", NULL, 0);
    assert_non_null(f);
    metrics_counter_inc(f, NULL);
    assert_family("t_again_total", "# HELP t_again_total A.\n# TYPE t_again_total counter\n"
                                   "t_again_total 1\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_counter_renders_help_type_and_sorted_series, teardown),
        cmocka_unit_test_teardown(test_counter_add_keeps_fractions_and_ignores_negative, teardown),
        cmocka_unit_test_teardown(test_unlabelled_families_render_zero_before_first_update,
                                  teardown),
        cmocka_unit_test_teardown(test_label_values_and_help_are_escaped, teardown),
        cmocka_unit_test_teardown(test_null_label_value_is_empty_string, teardown),
        cmocka_unit_test_teardown(test_histogram_buckets_are_cumulative_with_inf_sum_and_count,
                                  teardown),
        cmocka_unit_test_teardown(test_latency_buckets_render_as_short_le_values, teardown),
        cmocka_unit_test_teardown(test_counter_sums_shards_of_two_threads_after_they_exit,
                                  teardown),
        cmocka_unit_test_teardown(test_render_while_threads_update_is_safe, teardown),
        cmocka_unit_test_teardown(test_gauges_set_add_and_sample_callbacks, teardown),
        cmocka_unit_test_teardown(test_values_render_in_forms_prometheus_parses, teardown),
        cmocka_unit_test_teardown(test_series_limit_drops_updates_and_counts_them, teardown),
        cmocka_unit_test_teardown(test_render_includes_process_series, teardown),
        cmocka_unit_test_teardown(test_family_new_rejects_bad_names_labels_and_buckets, teardown),
        cmocka_unit_test_teardown(test_updates_of_the_wrong_kind_are_ignored, teardown),
        cmocka_unit_test_teardown(test_shutdown_then_new_registry_starts_from_zero, teardown),
    };
    return cmocka_run_group_tests_name("observability/metrics", tests, NULL, NULL);
}
