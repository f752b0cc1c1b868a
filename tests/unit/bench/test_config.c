/* tests/unit/bench/test_config.c: pinsctl bench's command line (tools/pinsctl/bench.c,
 * bench_config_parse) and its report (tools/pinsctl/bench_report.c) read back as JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "bench.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(bench_config *cfg, pinsctl_global *g, const char *const *args, int n)
{
    char *argv[64];
    argv[0] = "bench";
    for (int i = 0; i < n; i++)
        argv[i + 1] = (char *)args[i];
    pinsctl_global_init(g);
    bench_config_init(cfg);
    return bench_config_parse(cfg, g, n + 1, argv);
}

#define PARSE(cfg, g, ...)                            \
    parse(cfg, g, (const char *const[]){__VA_ARGS__}, \
          (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)))

static void test_config_defaults(void **state)
{
    (void)state;
    bench_config cfg;
    pinsctl_global g;
    assert_int_equal(parse(&cfg, &g, NULL, 0), 0);
    assert_int_equal(cfg.connections, 1);
    assert_int_equal(cfg.streams, 10);
    assert_int_equal(cfg.duration_ms, 10000);
    assert_int_equal(cfg.requests, 0);
    assert_true(cfg.rate == 0.0);
    assert_int_equal(cfg.mix[BENCH_OP_GET], 100);
    assert_int_equal(cfg.mix[BENCH_OP_PUT], 0);
    assert_int_equal(cfg.keys, 1000);
    assert_int_equal(cfg.dist, BENCH_DIST_UNIFORM);
    assert_int_equal(cfg.tenants, 1);
    assert_false(cfg.prefill);
    assert_false(cfg.json);
}

static void test_config_every_option(void **state)
{
    (void)state;
    bench_config cfg;
    pinsctl_global g;
    assert_int_equal(PARSE(&cfg, &g, "-c", "4", "--streams", "8", "-d", "3s", "--warmup", "500ms",
                           "-r", "1000.5", "--mix", "get=1,put=2,list=3,delete=4", "--keys", "50",
                           "--dist", "zipfian", "--zipf-s=1.2", "--tenants", "3", "--value-size",
                           "300", "--list-limit", "7", "--prefill", "--conflicts", "0.25", "--seed",
                           "9", "--key-prefix", "k-", "--tenant-prefix", "t-", "--addr",
                           "127.0.0.1:1", "--timeout", "2s", "--json"),
                     0);
    assert_int_equal(cfg.connections, 4);
    assert_int_equal(cfg.streams, 8);
    assert_int_equal(cfg.duration_ms, 3000);
    assert_int_equal(cfg.warmup_ms, 500);
    assert_true(cfg.rate == 1000.5);
    assert_int_equal(cfg.mix[BENCH_OP_GET], 1);
    assert_int_equal(cfg.mix[BENCH_OP_DELETE], 4);
    assert_int_equal(cfg.keys, 50);
    assert_int_equal(cfg.dist, BENCH_DIST_ZIPFIAN);
    assert_true(cfg.zipf_s == 1.2);
    assert_int_equal(cfg.tenants, 3);
    assert_int_equal(cfg.value_size, 300);
    assert_int_equal(cfg.list_limit, 7);
    assert_true(cfg.prefill);
    assert_true(cfg.conflicts == 0.25);
    assert_int_equal(cfg.seed, 9);
    assert_string_equal(cfg.prefix, "k-");
    assert_string_equal(cfg.tenant_prefix, "t-");
    assert_string_equal(g.opts.addr, "127.0.0.1:1");
    assert_int_equal(g.opts.timeout_ms, 2000);
    assert_true(cfg.json);

    assert_int_equal(PARSE(&cfg, &g, "-n", "100", "--connections=2"), 0);
    assert_int_equal(cfg.requests, 100);
    assert_int_equal(cfg.connections, 2);
    assert_int_equal(PARSE(&cfg, &g, "--help"), 1);
}

static void test_config_refuses_bad_values(void **state)
{
    (void)state;
    static const char *const bad[][3] = {
        {"-c", "0", NULL},
        {"-c", "x", NULL},
        {"-m", "-1", NULL},
        {"-d", "0s", NULL},
        {"-d", "soon", NULL},
        {"-n", "0", NULL},
        {"-r", "0", NULL},
        {"-r", "nan", NULL},
        {"--mix", "get=0", NULL},
        {"--keys", "0", NULL},
        {"--dist", "pareto", NULL},
        {"--zipf-s", "0", NULL},
        {"--tenants", "0", NULL},
        {"--list-limit", "1001", NULL},
        {"--conflicts", "1.5", NULL},
        {"--conflicts", "-0.1", NULL},
        {"--seed", "-3", NULL},
        {"--bogus", "1", NULL},
        {"-n", NULL, NULL},
        {"extra", NULL, NULL},
        {"--value-size", "2000000", NULL},
        {"--tenant-prefix", "", NULL},
        {"-d", "8761h", NULL},
        {"-d", "6000000h", NULL},
        {"--warmup", "8761h", NULL},
        {"--warmup", "6000000h", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bench_config cfg;
        pinsctl_global g;
        int n = bad[i][1] != NULL ? 2 : 1;
        if (parse(&cfg, &g, bad[i], n) != -1) {
            print_error("accepted %s %s\n", bad[i][0], bad[i][1] != NULL ? bad[i][1] : "");
            fail();
        }
    }
    bench_config cfg;
    pinsctl_global g;
    assert_int_equal(PARSE(&cfg, &g, "-d", "1s", "-n", "5"), -1);
    /* The longest durations are taken. */
    assert_int_equal(PARSE(&cfg, &g, "-d", "8760h", "--warmup", "8760h"), 0);
    assert_true(cfg.duration_ms == BENCH_MAX_DURATION_MS);
    assert_true(cfg.warmup_ms == BENCH_MAX_DURATION_MS);
}

static void test_report_json_is_one_object_with_the_counts(void **state)
{
    (void)state;
    bench_config cfg;
    pinsctl_global g;
    assert_int_equal(PARSE(&cfg, &g, "--mix", "get=3,put=1", "--addr", "a\"b:1", "--conflicts",
                           "0.5", "-r", "100"),
                     0);
    bench_stats *st = malloc(sizeof(*st));
    assert_non_null(st);
    bench_stats_init(st);
    st->sent[BENCH_OP_GET] = st->answers[BENCH_OP_GET] = 30;
    st->ok[BENCH_OP_GET] = 28;
    st->errors[BENCH_OP_GET] = 2;
    st->codes[PINS_CODE_NOT_FOUND] = 2;
    st->sent[BENCH_OP_PUT] = st->answers[BENCH_OP_PUT] = 10;
    st->ok[BENCH_OP_PUT] = 5;
    st->conflicts_sent = 5;
    st->aborted = 5;
    st->sent[BENCH_OP_GET] += 7; /* no answer from pinsd: not in answers, req/s or latency */
    st->failed_locally[BENCH_OP_GET] = 7;
    st->local_codes[PINS_CODE_UNAVAILABLE] = 5;
    st->local_codes[PINS_CODE_DEADLINE_EXCEEDED] = 2;
    st->timeline_local[1] = 7;
    st->measured_ns = 2000000000;
    st->timeline_len = 2;
    st->timeline_ok[0] = 20;
    st->timeline_ok[1] = 13;
    st->timeline_err[1] = 7;
    for (int i = 0; i < 30; i++)
        bench_hist_record(&st->lat[BENCH_OP_GET], 1000000 + (uint64_t)i * 1000);
    for (int i = 0; i < 10; i++)
        bench_hist_record(&st->lat[BENCH_OP_PUT], 5000000);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    bench_report_json(f, &cfg, &g.opts, st);
    fclose(f);
    assert_non_null(strchr(buf, '\n'));
    assert_int_equal(strchr(buf, '\n') - buf, (long)len - 1); /* one line */
    json_error_t jerr;
    json_t *doc = json_loads(buf, 0, &jerr);
    if (doc == NULL)
        fail_msg("not JSON: %s: %s", jerr.text, buf);
    assert_string_equal(json_string_value(json_object_get(doc, "addr")), "a\"b:1");
    assert_int_equal(json_integer_value(json_object_get(doc, "requests")), 47);
    assert_int_equal(json_integer_value(json_object_get(doc, "failed_locally")), 7);
    json_t *lcodes = json_object_get(doc, "failed_locally_by_code");
    assert_int_equal(json_object_size(lcodes), 2);
    assert_int_equal(json_integer_value(json_object_get(lcodes, "UNAVAILABLE")), 5);
    assert_int_equal(json_integer_value(json_object_get(lcodes, "DEADLINE_EXCEEDED")), 2);
    json_t *get = json_object_get(json_object_get(doc, "ops"), "get");
    assert_int_equal(json_integer_value(json_object_get(get, "failed_locally")), 7);
    assert_int_equal(json_integer_value(json_object_get(get, "answers")), 30);
    assert_true(json_number_value(json_object_get(get, "rps")) == 15.0);
    json_t *t1 = json_array_get(json_object_get(doc, "timeline"), 1);
    assert_int_equal(json_integer_value(json_object_get(t1, "failed_locally")), 7);
    assert_int_equal(json_integer_value(json_object_get(doc, "answers")), 40);
    assert_int_equal(json_integer_value(json_object_get(doc, "ok")), 33);
    assert_int_equal(json_integer_value(json_object_get(doc, "errors")), 2);
    assert_int_equal(json_integer_value(json_object_get(doc, "aborted")), 5);
    assert_true(json_number_value(json_object_get(doc, "rps")) == 20.0);
    assert_true(json_number_value(json_object_get(doc, "target_rate")) == 100.0);
    json_t *codes = json_object_get(doc, "errors_by_code");
    assert_int_equal(json_object_size(codes), 1);
    assert_int_equal(json_integer_value(json_object_get(codes, "NOT_FOUND")), 2);
    json_t *put = json_object_get(json_object_get(doc, "ops"), "put");
    assert_int_equal(json_integer_value(json_object_get(put, "aborted")), 5);
    json_t *lat = json_object_get(doc, "latency_us");
    assert_int_equal(json_integer_value(json_object_get(lat, "count")), 40);
    assert_true(json_number_value(json_object_get(lat, "max")) == 5000.0);
    assert_true(json_number_value(json_object_get(lat, "min")) == 1000.0);
    double p50 = json_number_value(json_object_get(lat, "p50"));
    assert_true(p50 >= 1014.0 * (1 - BENCH_HIST_REL_ERROR) &&
                p50 <= 1015.0 * (1 + BENCH_HIST_REL_ERROR));
    assert_int_equal(json_array_size(json_object_get(doc, "timeline")), 2);
    json_decref(doc);
    free(buf);

    /* The text report names the same totals. */
    f = open_memstream(&buf, &len);
    assert_non_null(f);
    bench_report_text(f, &cfg, &g.opts, st);
    fclose(f);
    assert_non_null(strstr(buf, "requests: 47 sent, 40 answered, 7 failed locally, 0 unanswered"));
    assert_non_null(strstr(buf, "rate:     20.0 req/s"));
    assert_non_null(strstr(buf, "by status: DEADLINE_EXCEEDED 2 UNAVAILABLE 5"));
    assert_non_null(strstr(buf, "NOT_FOUND 2"));
    assert_non_null(strstr(buf, "p99.9"));
    free(buf);
    free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_config_every_option),
        cmocka_unit_test(test_config_refuses_bad_values),
        cmocka_unit_test(test_report_json_is_one_object_with_the_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
