/* tests/unit/pinsctl/test_seed.c: pinsctl seed's file validation, JWT detection, backoff, retry
 * policy and value comparison (tools/pinsctl/cmd_seed.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/pbstruct.h"
#include "pinsctl.h"

/* Parses text; returns the result and leaves the error in err. */
static int parse(const char *text, pinsctl_seed_plan *plan, char *err, size_t n)
{
    err[0] = '\0';
    return pinsctl_seed_parse(text, strlen(text), plan, err, n);
}

/* Asserts text is refused with an error containing every one of want (NULL-terminated). */
static void refused(const char *text, const char *const *want)
{
    pinsctl_seed_plan plan;
    char err[768];
    int rv = parse(text, &plan, err, sizeof(err));
    if (rv == 0)
        fail_msg("accepted: %s", text);
    for (; *want != NULL; want++) {
        if (strstr(err, *want) == NULL)
            fail_msg("error for %s is \"%s\", without \"%s\"", text, err, *want);
    }
    assert_null(strchr(err, '\n'));
    pinsctl_seed_plan_free(&plan);
}

static void test_array_format_with_defaults(void **state)
{
    (void)state;
    pinsctl_seed_plan plan;
    char err[768];
    assert_int_equal(parse("[{\"pins\": {\"a\": {\"x\": 1}, \"b\": {}}},"
                           " {\"tenant_id\": \"t\", \"source\": \"s\", \"ttl_seconds\": 60,"
                           "  \"pins\": {\"c\": {\"y\": [1, \"z\", null]}}}]",
                           &plan, err, sizeof(err)),
                     0);
    assert_int_equal(plan.nentries, 2);
    assert_int_equal(plan.npins, 3);
    assert_string_equal(plan.pins[0].tenant, "global");
    assert_string_equal(plan.pins[0].source, "seed_script");
    assert_false(plan.pins[0].has_ttl);
    assert_string_equal(plan.pins[0].key, "a");
    assert_string_equal(plan.pins[0].value_json, "{\"x\":1}");
    assert_string_equal(plan.pins[1].key, "b");
    assert_string_equal(plan.pins[1].value_json, "{}");
    assert_int_equal(plan.pins[1].entry, 0);
    assert_string_equal(plan.pins[2].tenant, "t");
    assert_string_equal(plan.pins[2].source, "s");
    assert_true(plan.pins[2].has_ttl);
    assert_int_equal(plan.pins[2].ttl, 60);
    assert_int_equal(plan.pins[2].entry, 1);
    assert_string_equal(plan.pins[2].value_json, "{\"y\":[1,\"z\",null]}");
    pinsctl_seed_plan_free(&plan);
}

static void test_entries_object_format_and_null_ttl(void **state)
{
    (void)state;
    pinsctl_seed_plan plan;
    char err[768];
    assert_int_equal(parse("{\"description\": \"d\", \"version\": \"1.0.0\", \"entries\": "
                           "[{\"ttl_seconds\": null, \"pins\": {\"k\": {\"v\": true}}}, "
                           "{\"pins\": {}}]}",
                           &plan, err, sizeof(err)),
                     0);
    assert_int_equal(plan.nentries, 2);
    assert_int_equal(plan.npins, 1);
    assert_false(plan.pins[0].has_ttl);
    pinsctl_seed_plan_free(&plan);
    /* Empty files of both shapes are valid and hold nothing. */
    assert_int_equal(parse(" [] ", &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.npins, 0);
    pinsctl_seed_plan_free(&plan);
    assert_int_equal(parse("{\"entries\": []}", &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.npins, 0);
    pinsctl_seed_plan_free(&plan);
}

static void test_the_repository_seed_file_is_valid(void **state)
{
    (void)state;
    /* The repository from this file's path (CMake compiles it by its absolute path). */
    static const char self[] = "tests/unit/pinsctl/test_seed.c";
    const char *file = __FILE__;
    size_t n = strlen(file);
    if (file[0] != '/' || n < sizeof(self) || strcmp(file + n - (sizeof(self) - 1), self) != 0)
        skip();
    char path[1024];
    snprintf(path, sizeof(path), "%.*sops/memory_pins_seed.json", (int)(n - (sizeof(self) - 1)),
             file);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char text[1 << 16];
    n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    pinsctl_seed_plan plan;
    char err[768];
    assert_int_equal(pinsctl_seed_parse(text, n, &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.npins, 8); /* M7's seven and global/test-key */
    int ttl_pins = 0, test_key = 0;
    for (size_t i = 0; i < plan.npins; i++) {
        assert_string_equal(plan.pins[i].source, "seed_script");
        ttl_pins += plan.pins[i].has_ttl;
        if (strcmp(plan.pins[i].tenant, "global") == 0 && strcmp(plan.pins[i].key, "test-key") == 0)
            test_key++;
    }
    assert_int_equal(ttl_pins, 1);
    assert_int_equal(test_key, 1);
    pinsctl_seed_plan_free(&plan);
}

static void test_malformed_files_are_refused_naming_where(void **state)
{
    (void)state;
    refused("", (const char *const[]){"invalid JSON", "empty", NULL});
    refused("[{\"pins\": {}}", (const char *const[]){"invalid JSON", "line 1", NULL});
    refused("[\n{\"pins\": {]\n", (const char *const[]){"invalid JSON", "line 2", NULL});
    refused("[] []", (const char *const[]){"after the top-level value", NULL});
    refused("\"entries\"", (const char *const[]){"top level", "a string", NULL});
    refused("42", (const char *const[]){"top level", "a number", NULL});
    refused("{\"pins\": {}}", (const char *const[]){"\"entries\" array", "missing", NULL});
    refused("{\"entries\": {}}", (const char *const[]){"\"entries\" array", "an object", NULL});
    refused("[1]", (const char *const[]){"entries[0]", "must be an object", NULL});
    refused("[{\"pins\": {}}, {}]", (const char *const[]){"entries[1]", "no \"pins\"", NULL});
    refused("[{\"pins\": []}]",
            (const char *const[]){"entries[0]", "pins must be an object", NULL});
    refused("[{\"pins\": null}]", (const char *const[]){"entries[0]", "pins", "null", NULL});
    refused("[{\"tenant_id\": 5, \"pins\": {}}]",
            (const char *const[]){"entries[0]", "tenant_id must be a string", NULL});
    refused("[{\"source\": [], \"pins\": {}}]",
            (const char *const[]){"entries[0]", "source must be a string", NULL});
    refused("[{\"pins\": {\"a\": {}}}, {\"pins\": {\"k\": [1]}}]",
            (const char *const[]){"entries[1].pins[\"k\"]", "JSON object", "an array", NULL});
    refused("[{\"pins\": {\"k\": \"text\"}}]",
            (const char *const[]){"entries[0].pins[\"k\"]", "a string", NULL});
    refused("[{\"pins\": {\"k\": null}}]", (const char *const[]){"pins[\"k\"]", "null", NULL});
    refused("[{\"pins\": {\"k\": {}}}, {\"tenant_id\": \"global\", \"pins\": {\"k\": {}}}]",
            (const char *const[]){"entries[1].pins[\"k\"]", "already given in entries[0]", NULL});
}

static void test_ttl_must_be_a_positive_integer(void **state)
{
    (void)state;
    static const char *const bad[] = {"-5", "0", "1.5", "\"60\"", "true", "31536001", "1e300"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[{\"ttl_seconds\": %s, \"pins\": {\"k\": {}}}]", bad[i]);
        refused(text, (const char *const[]){"entries[0]", "ttl_seconds", NULL});
    }
    static const struct {
        const char *text;
        int32_t ttl;
    } good[] = {{"1", 1}, {"3600", 3600}, {"60.0", 60}, {"31536000", 31536000}};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[{\"ttl_seconds\": %s, \"pins\": {\"k\": {}}}]",
                 good[i].text);
        pinsctl_seed_plan plan;
        char err[768];
        assert_int_equal(parse(text, &plan, err, sizeof(err)), 0);
        assert_true(plan.pins[0].has_ttl);
        assert_int_equal(plan.pins[0].ttl, good[i].ttl);
        pinsctl_seed_plan_free(&plan);
    }
}

static void test_values_nested_too_deep_are_refused(void **state)
{
    (void)state;
    /* 65 levels of objects under the key: one more than a pin value may have. */
    char text[1024];
    size_t n = (size_t)snprintf(text, sizeof(text), "[{\"pins\": {\"deep\": ");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "{\"a\":");
    n += (size_t)snprintf(text + n, sizeof(text) - n, "{}");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "}");
    snprintf(text + n, sizeof(text) - n, "}}]");
    refused(text, (const char *const[]){"entries[0].pins[\"deep\"]", NULL});
}

static void test_jwt_detection(void **state)
{
    (void)state;
    /* {"alg":"HS256","typ":"JWT"} . {"sub":"x"} . signature */
    assert_true(pinsctl_seed_is_jwt("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0."
                                    "c2lnbmF0dXJl"));
    /* {"alg":"none"} with an empty signature is still a JWT (pinsd judges it). */
    assert_true(pinsctl_seed_is_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
    /* A machine secret, random text, or dotted text whose head is not a JSON object with alg. */
    assert_false(pinsctl_seed_is_jwt("interop-machine-secret"));
    assert_false(pinsctl_seed_is_jwt("s3cr3t-token-0123456789abcdef"));
    assert_false(pinsctl_seed_is_jwt("a.b.c"));
    assert_false(pinsctl_seed_is_jwt("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln")); /* no alg */
    assert_false(pinsctl_seed_is_jwt("WzFd.eyJzdWIiOiJ4In0.c2ln"));               /* [1] */
    assert_false(pinsctl_seed_is_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0"));     /* two parts */
    assert_false(pinsctl_seed_is_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln.x"));
    assert_false(pinsctl_seed_is_jwt("eyJhbGciOiJub25lIn0..c2ln"));
    assert_false(pinsctl_seed_is_jwt("eyJhbGciOiJub25lIn0=.eyJzdWIiOiJ4In0.c2ln"));
    assert_false(pinsctl_seed_is_jwt("eyJhbGciOiJub25lIn0.ey+zdWIiOiJ4In0.c2ln"));
    assert_false(pinsctl_seed_is_jwt(""));
    assert_false(pinsctl_seed_is_jwt(NULL));
}

static void test_backoff_doubles_and_honours_retry_after(void **state)
{
    (void)state;
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 0, -1), 1000);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 1, -1), 2000);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 2, -1), 4000);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 3, -1), 8000);
    /* The server's retry-after only when longer. */
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 0, 3000), 3000);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 2, 3000), 4000);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 0, 0), 1000);
    /* Capped, also for huge attempts and retry-afters. */
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 30, -1), PINSCTL_SEED_BACKOFF_MAX_MS);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 1000, -1), PINSCTL_SEED_BACKOFF_MAX_MS);
    assert_int_equal(pinsctl_seed_backoff_ms(1000, 0, INT64_MAX), PINSCTL_SEED_BACKOFF_MAX_MS);
    assert_int_equal(pinsctl_seed_backoff_ms(0, 5, -1), 0);
    assert_int_equal(pinsctl_seed_backoff_ms(10, 3, -1), 80);
}

static void test_only_transient_failures_are_retried(void **state)
{
    (void)state;
    pins_status st = PINS_STATUS_INIT;
    static const int again[] = {PINS_CODE_RESOURCE_EXHAUSTED, PINS_CODE_UNAVAILABLE,
                                PINS_CODE_DEADLINE_EXCEEDED};
    for (size_t i = 0; i < sizeof(again) / sizeof(again[0]); i++) {
        st.code = again[i];
        st.retry_after_ms = 1000; /* the rate limit's answer carries retry-after */
        st.from_server = true;
        assert_true(pinsctl_seed_retryable(&st));
        st.from_server = false;
        assert_true(pinsctl_seed_retryable(&st));
    }
    static const int final[] = {PINS_CODE_INVALID_ARGUMENT,    PINS_CODE_PERMISSION_DENIED,
                                PINS_CODE_UNAUTHENTICATED,     PINS_CODE_NOT_FOUND,
                                PINS_CODE_ALREADY_EXISTS,      PINS_CODE_ABORTED,
                                PINS_CODE_FAILED_PRECONDITION, PINS_CODE_UNIMPLEMENTED};
    for (size_t i = 0; i < sizeof(final) / sizeof(final[0]); i++) {
        st.code = final[i];
        st.from_server = true;
        assert_false(pinsctl_seed_retryable(&st));
    }
    /* RESOURCE_EXHAUSTED without a retry-after (a message over the size limit) is final. */
    st.retry_after_ms = -1;
    st.code = PINS_CODE_RESOURCE_EXHAUSTED;
    st.from_server = true;
    assert_false(pinsctl_seed_retryable(&st));
    st.from_server = false;
    assert_false(pinsctl_seed_retryable(&st));
    st.retry_after_ms = 0;
    assert_true(pinsctl_seed_retryable(&st));
    st.retry_after_ms = -1;
    /* INTERNAL from pinsd is final; a connection that broke before an answer is not. */
    st.code = PINS_CODE_INTERNAL;
    st.from_server = true;
    assert_false(pinsctl_seed_retryable(&st));
    st.from_server = false;
    assert_true(pinsctl_seed_retryable(&st));
}

static Google__Protobuf__Struct *obj(pins_arena *a, const char *json)
{
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_from_json(a, json, strlen(json), 64, &s), 0);
    return s;
}

static void test_values_compare_as_json_objects(void **state)
{
    (void)state;
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    /* Key order does not matter (jsonb reorders keys); everything else does. */
    assert_true(pinsctl_seed_value_equal(obj(a, "{\"a\":1,\"b\":{\"c\":[1,2]}}"),
                                         obj(a, "{\"b\":{\"c\":[1,2]},\"a\":1.0}")));
    assert_true(pinsctl_seed_value_equal(obj(a, "{}"), obj(a, "{}")));
    assert_true(pinsctl_seed_value_equal(obj(a, "{\"a\":1,\"a\":2}"), obj(a, "{\"a\":2}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":1}"), obj(a, "{\"a\":2}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":1}"), obj(a, "{\"a\":1,\"b\":1}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":[1,2]}"), obj(a, "{\"a\":[2,1]}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":\"1\"}"), obj(a, "{\"a\":1}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":null}"), obj(a, "{\"a\":false}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":{}}"), obj(a, "{\"a\":[]}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":1}"), NULL));
    /* Repeated keys: the last one counts, on either side. */
    assert_true(
        pinsctl_seed_value_equal(obj(a, "{\"a\":1,\"b\":1,\"a\":2}"), obj(a, "{\"b\":1,\"a\":2}")));
    assert_true(pinsctl_seed_value_equal(obj(a, "{\"b\":1,\"a\":2}"),
                                         obj(a, "{\"a\":3,\"a\":2,\"b\":0,\"b\":1}")));
    assert_false(pinsctl_seed_value_equal(obj(a, "{\"a\":2,\"a\":1}"), obj(a, "{\"a\":2}")));
    assert_false(
        pinsctl_seed_value_equal(obj(a, "{\"a\":1,\"a\":1}"), obj(a, "{\"a\":1,\"b\":1}")));
    pins_arena_free(a);
}

/* JSON text of an object with n keys k0..k(n-1) (in reverse order when reverse), the value of
 * key k<odd> being odd when not 0 (-1: none). New text. */
static char *wide_object(size_t n, bool reverse, long odd)
{
    size_t cap = n * 24 + 16, len = 0;
    char *t = malloc(cap);
    assert_non_null(t);
    t[len++] = '{';
    for (size_t j = 0; j < n; j++) {
        size_t i = reverse ? n - 1 - j : j;
        len += (size_t)snprintf(t + len, cap - len, "%s\"k%zu\":%ld", j ? "," : "", i,
                                (long)i == odd ? -1L : (long)i);
    }
    t[len++] = '}';
    t[len] = '\0';
    return t;
}

static void test_wide_values_compare_in_n_log_n(void **state)
{
    (void)state;
    /* 100k keys each side: the old pairwise comparison took ~10^10 string compares. */
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    char *x = wide_object(100000, false, -1), *y = wide_object(100000, true, -1),
         *z = wide_object(100000, true, 77777);
    Google__Protobuf__Struct *sx = obj(a, x), *sy = obj(a, y), *sz = obj(a, z);
    assert_true(pinsctl_seed_value_equal(sx, sy));
    assert_false(pinsctl_seed_value_equal(sx, sz));
    free(x);
    free(y);
    free(z);
    pins_arena_free(a);
}

/* A seed file of n pins, key p<i> in tenant t<i % 7>, plus extra (or nothing). New text. */
static char *many_pins(size_t n, const char *extra)
{
    size_t cap = n * 40 + 256 + strlen(extra), len = 0;
    char *t = malloc(cap);
    assert_non_null(t);
    len += (size_t)snprintf(t, cap, "[");
    for (int tn = 0; tn < 7; tn++) {
        len += (size_t)snprintf(t + len, cap - len, "%s{\"tenant_id\":\"t%d\",\"pins\":{",
                                tn ? "," : "", tn);
        bool first = true;
        for (size_t i = (size_t)tn; i < n; i += 7) {
            len += (size_t)snprintf(t + len, cap - len, "%s\"p%zu\":{\"v\":%zu}", first ? "" : ",",
                                    i, i);
            first = false;
        }
        len += (size_t)snprintf(t + len, cap - len, "}}");
    }
    snprintf(t + len, cap - len, "%s]", extra);
    return t;
}

static void test_many_pins_and_a_late_duplicate(void **state)
{
    (void)state;
    pinsctl_seed_plan plan;
    char err[768];
    char *t = many_pins(200000, "");
    assert_int_equal(parse(t, &plan, err, sizeof(err)), 0);
    assert_int_equal(plan.npins, 200000);
    pinsctl_seed_plan_free(&plan);
    free(t);
    /* The same key in another tenant is not a duplicate; the same tenant and key is. */
    t = many_pins(200000, ",{\"tenant_id\":\"t1\",\"pins\":{\"p0\":{}}}"
                          ",{\"tenant_id\":\"t3\",\"pins\":{\"p199993\":{}}}");
    assert_int_not_equal(parse(t, &plan, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "entries[8].pins[\"p199993\"]"));
    assert_non_null(strstr(err, "already given in entries[3]"));
    pinsctl_seed_plan_free(&plan);
    free(t);
}

static void test_empty_tenant_is_global(void **state)
{
    (void)state;
    pinsctl_seed_plan plan;
    char err[768];
    assert_int_equal(
        parse("[{\"tenant_id\": \"\", \"pins\": {\"k\": {}}}]", &plan, err, sizeof(err)), 0);
    assert_string_equal(plan.pins[0].tenant, "global");
    pinsctl_seed_plan_free(&plan);
    refused("[{\"tenant_id\":\"\",\"pins\":{\"k\":{\"a\":1}}},{\"pins\":{\"k\":{\"a\":2}}}]",
            (const char *const[]){"entries[1].pins[\"k\"]", "tenant global",
                                  "already given in entries[0]", NULL});
    refused("[{\"pins\":{\"k\":{}}},{\"tenant_id\":\"\",\"pins\":{\"k\":{}}}]",
            (const char *const[]){"entries[1]", "already given in entries[0]", NULL});
}

static void test_memory_is_bounded_by_the_file_size(void **state)
{
    (void)state;
    /* Tiny values cost far more than their text: nested empty arrays take 2 bytes of text and
     * about 100 bytes of parse tree each. The parse stops with a clear error once the tree would
     * outgrow its share (a bound proportional to the file), instead of taking gigabytes. */
    size_t groups = 5000, depth = 200;
    char *t = malloc(groups * (2 * depth + 1) + 8);
    assert_non_null(t);
    size_t len = 0;
    t[len++] = '[';
    for (size_t g = 0; g < groups; g++) {
        if (g > 0)
            t[len++] = ',';
        memset(t + len, '[', depth);
        memset(t + len + depth, ']', depth);
        len += 2 * depth;
    }
    t[len++] = ']';
    t[len] = '\0';
    pinsctl_seed_plan plan;
    char err[768];
    assert_int_not_equal(parse(t, &plan, err, sizeof(err)), 0);
    if (strstr(err, "out of memory") == NULL)
        fail_msg("error: %s", err);
    pinsctl_seed_plan_free(&plan);
    /* The limit itself: proportional to the file's length. */
    assert_int_equal(parse("[]", &plan, err, sizeof(err)), 0);
    assert_true(pins_arena_limit(plan.arena) <= 2 * 64 + ((size_t)4 << 20));
    pinsctl_seed_plan_free(&plan);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_format_with_defaults),
        cmocka_unit_test(test_entries_object_format_and_null_ttl),
        cmocka_unit_test(test_the_repository_seed_file_is_valid),
        cmocka_unit_test(test_malformed_files_are_refused_naming_where),
        cmocka_unit_test(test_ttl_must_be_a_positive_integer),
        cmocka_unit_test(test_values_nested_too_deep_are_refused),
        cmocka_unit_test(test_jwt_detection),
        cmocka_unit_test(test_backoff_doubles_and_honours_retry_after),
        cmocka_unit_test(test_only_transient_failures_are_retried),
        cmocka_unit_test(test_values_compare_as_json_objects),
        cmocka_unit_test(test_wide_values_compare_in_n_log_n),
        cmocka_unit_test(test_many_pins_and_a_late_duplicate),
        cmocka_unit_test(test_empty_tenant_is_global),
        cmocka_unit_test(test_memory_is_bounded_by_the_file_size),
    };
    return cmocka_run_group_tests_name("pinsctl_seed", tests, NULL, NULL);
}
