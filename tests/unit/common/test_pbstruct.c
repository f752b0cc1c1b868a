/* tests/unit/common/test_pbstruct.c: Struct <-> JSON conversion and the value hash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/pbstruct.h"
#include "common/pbwire.h"

#define NO_LIMIT ((size_t)-1)

static int setup(void **state)
{
    *state = pins_arena_new(0);
    return *state == NULL;
}

static int teardown(void **state)
{
    pins_arena_free(*state);
    return 0;
}

static int parse(pins_arena *a, const char *json, int max_depth, Google__Protobuf__Struct **ps)
{
    return pbstruct_from_json(a, json, strlen(json), max_depth, ps);
}

/* Parses json and writes it back; the result must be exactly expect. */
static void assert_round_trip(pins_arena *a, const char *json, const char *expect)
{
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, json, 64, &s), 0);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), 0);
    assert_string_equal(out, expect);
    assert_int_equal(len, strlen(expect));
    free(out);
}

static void assert_rejected(pins_arena *a, const char *json, pbstruct_reason reason)
{
    Google__Protobuf__Struct *sentinel = (Google__Protobuf__Struct *)&sentinel, *s = sentinel;
    int rv = parse(a, json, 64, &s);
    if (rv != PINS_EINVALID_ARGUMENT)
        print_error("accepted or wrong code %d: %s\n", rv, json);
    assert_int_equal(rv, PINS_EINVALID_ARGUMENT);
    assert_ptr_equal(s, sentinel);
    if (pbstruct_last_reason() != reason)
        print_error("reason %d, want %d: %s\n", pbstruct_last_reason(), reason, json);
    assert_int_equal(pbstruct_last_reason(), reason);
}

static char *to_json(const Google__Protobuf__Struct *s)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), 0);
    return out;
}

static Google__Protobuf__Struct *one_number(pins_arena *a, double d)
{
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"n\":0}", 64, &s), 0);
    s->fields[0]->value->number_value = d;
    return s;
}

static void assert_number_prints(pins_arena *a, double d, const char *expect)
{
    char *out = to_json(one_number(a, d));
    char want[128];
    snprintf(want, sizeof(want), "{\"n\":%s}", expect);
    assert_string_equal(out, want);
    free(out);
}

/* "{"a":" ... "}" nesting depth levels, the innermost being open ("{" or "["). */
static char *nested(int depth, char open)
{
    size_t cap = (size_t)depth * 8 + 16;
    char *buf = malloc(cap);
    size_t n = 0;
    assert_non_null(buf);
    buf[n++] = '{';
    for (int i = 1; i < depth; i++) {
        if (open == '{') {
            memcpy(buf + n, "\"a\":{", 5);
            n += 5;
        } else {
            memcpy(buf + n, i == 1 ? "\"a\":[" : "[", i == 1 ? 5 : 1);
            n += i == 1 ? 5 : 1;
        }
    }
    for (int i = 1; i < depth; i++)
        buf[n++] = open == '{' ? '}' : ']';
    buf[n++] = '}';
    buf[n] = '\0';
    return buf;
}

static void test_pbstruct_round_trips_every_json_kind(void **state)
{
    pins_arena *a = *state;
    assert_round_trip(a, "{}", "{}");
    assert_round_trip(a,
                      "{\"s\":\"x\",\"n\":1,\"f\":-2.5,\"t\":true,\"F\":false,\"z\":null,"
                      "\"o\":{\"k\":[]},\"l\":[1,\"two\",{},[null]],\"e\":\"\"}",
                      "{\"s\":\"x\",\"n\":1,\"f\":-2.5,\"t\":true,\"F\":false,\"z\":null,"
                      "\"o\":{\"k\":[]},\"l\":[1,\"two\",{},[null]],\"e\":\"\"}");
    assert_round_trip(a, " \t\r\n{ \"a\" : [ 1 , 2 ] , \"b\" : { } }\n ", "{\"a\":[1,2],\"b\":{}}");
}

static void test_pbstruct_builds_messages_protobuf_c_can_pack(void **state)
{
    pins_arena *a = *state;
    const char *json = "{\"a\":[1,\"x\",{\"b\":null}],\"c\":true,\"d\":{\"e\":0.25}}";
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, json, 64, &s), 0);
    size_t n = google__protobuf__struct__get_packed_size(s);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    assert_int_equal(google__protobuf__struct__pack(s, buf), n);
    assert_int_equal(pbwire_check(buf, n, &google__protobuf__struct__descriptor, 64), 0);
    Google__Protobuf__Struct *u = google__protobuf__struct__unpack(NULL, n, buf);
    assert_non_null(u);
    char *out = to_json(u);
    assert_string_equal(out, json);
    free(out);
    google__protobuf__struct__free_unpacked(u, NULL);
    free(buf);
}

static void test_pbstruct_escapes_quotes_backslashes_and_control_chars(void **state)
{
    pins_arena *a = *state;
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"k\\n\":\"\"}", 64, &s), 0);
    s->fields[0]->value->string_value = "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f end";
    char *out = to_json(s);
    assert_string_equal(out, "{\"k\\n\":\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f end\"}");
    free(out);
    assert_round_trip(a, "{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0001\\u001F\"}",
                      "{\"a\":\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\"}");
}

static void test_pbstruct_decodes_unicode_escapes_and_keeps_utf8(void **state)
{
    pins_arena *a = *state;
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"a\":\"\\u00e9\\u20AC\\ud83d\\ude00x\"}", 64, &s), 0);
    assert_string_equal(s->fields[0]->value->string_value, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80x");
    /* Non-ASCII text is written as UTF-8, not escaped. */
    assert_round_trip(a, "{\"\xc3\xa9\":\"\xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf\"}",
                      "{\"\xc3\xa9\":\"\xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf\"}");
}

static void test_pbstruct_prints_integral_numbers_without_fraction(void **state)
{
    pins_arena *a = *state;
    assert_number_prints(a, 1.0, "1");
    assert_number_prints(a, -42.0, "-42");
    assert_number_prints(a, 0.0, "0");
    assert_number_prints(a, -0.0, "0");
    assert_number_prints(a, 9007199254740992.0, "9007199254740992");
    assert_number_prints(a, -9007199254740992.0, "-9007199254740992");
    assert_number_prints(a, 1e21, "1e+21");
    assert_round_trip(a, "{\"a\":1.0,\"b\":100e-2,\"c\":2E3,\"d\":-0}",
                      "{\"a\":1,\"b\":1,\"c\":2000,\"d\":0}");
}

static void test_pbstruct_prints_fractions_in_shortest_round_trip_form(void **state)
{
    pins_arena *a = *state;
    assert_number_prints(a, 0.1, "0.1");
    assert_number_prints(a, -2.5, "-2.5");
    assert_number_prints(a, 1.0 / 3.0, "0.3333333333333333");
    assert_number_prints(a, 0.1 + 0.2, "0.30000000000000004");
    assert_number_prints(a, 1e-7, "1e-07");
    assert_number_prints(a, 123456789.125, "123456789.125");
    assert_number_prints(a, 5e-324, "4.94065645841247e-324");
    /* Every printed form reads back to the same double. */
    const double probes[] = {M_PI,
                             1.7976931348623157e308,
                             2.2250738585072014e-308,
                             9007199254740993.0 * 3,
                             0.1 * 3,
                             1e22 + 0.5,
                             123.456e-150};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        char *out = to_json(one_number(a, probes[i]));
        Google__Protobuf__Struct *s = NULL;
        assert_int_equal(parse(a, out, 64, &s), 0);
        assert_true(s->fields[0]->value->number_value == probes[i]);
        free(out);
    }
}

static void test_pbstruct_parses_numbers_like_strtod(void **state)
{
    pins_arena *a = *state;
    const char *nums[] = {"0",
                          "-0",
                          "7",
                          "-12.5E+3",
                          "3.14159",
                          "0.1e1",
                          "1e-7",
                          "0.000001",
                          "123456789012345",
                          "1234567890123456789",
                          "123456789012345678901234567890",
                          "0.30000000000000004",
                          "2.2250738585072014e-308",
                          "4.9e-324",
                          "1e-400",
                          "1.7976931348623157e308",
                          "9007199254740993",
                          "0.00000000000000000000000000000000000000000000001",
                          "1.00000000000000000000000000000000000000000000000000000000000000001",
                          "123.456e-10",
                          "1e22",
                          "1e23"};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), "{\"n\":%s}", nums[i]);
        Google__Protobuf__Struct *s = NULL;
        assert_int_equal(parse(a, json, 64, &s), 0);
        double want = strtod(nums[i], NULL);
        if (s->fields[0]->value->number_value != want)
            print_error("%s parsed as %.17g, want %.17g\n", nums[i],
                        s->fields[0]->value->number_value, want);
        assert_true(s->fields[0]->value->number_value == want);
        assert_int_equal(signbit(s->fields[0]->value->number_value), signbit(want));
    }
}

static void test_pbstruct_rejects_nan_and_infinity(void **state)
{
    pins_arena *a = *state;
    const double bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < 3; i++) {
        char *sentinel = (char *)&sentinel, *out = sentinel;
        size_t len = 7;
        assert_int_equal(pbstruct_to_json(one_number(a, bad[i]), NO_LIMIT, 64, &out, &len),
                         PINS_EINVALID_ARGUMENT);
        assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_BAD_NUMBER);
        assert_ptr_equal(out, sentinel);
        assert_int_equal(len, 7);
    }
    assert_rejected(a, "{\"a\":1e400}", PBSTRUCT_REASON_BAD_NUMBER);
    assert_rejected(a, "{\"a\":-1e309}", PBSTRUCT_REASON_BAD_NUMBER);
    assert_rejected(a, "{\"a\":NaN}", PBSTRUCT_REASON_SYNTAX);
    assert_rejected(a, "{\"a\":Infinity}", PBSTRUCT_REASON_SYNTAX);
}

static void test_pbstruct_accepts_depth_64_and_rejects_65(void **state)
{
    pins_arena *a = *state;
    for (int k = 0; k < 2; k++) {
        char open = k == 0 ? '{' : '[';
        char *ok = nested(64, open), *deep = nested(65, open);
        Google__Protobuf__Struct *s = NULL;
        assert_int_equal(parse(a, ok, 64, &s), 0);
        char *out = NULL;
        size_t len;
        assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), 0);
        assert_string_equal(out, ok);
        free(out);
        assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 63, &out, &len), PINS_EINVALID_ARGUMENT);
        assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_TOO_DEEP);
        assert_rejected(a, deep, PBSTRUCT_REASON_TOO_DEEP);
        free(ok);
        free(deep);
    }
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{}", 1, &s), 0);
    assert_int_equal(parse(a, "{\"a\":[]}", 1, &s), PINS_EINVALID_ARGUMENT);
}

static void test_pbstruct_caps_hostile_nesting_without_recursing_into_it(void **state)
{
    pins_arena *a = *state;
    size_t n = 1000000;
    char *json = malloc(n + 8);
    assert_non_null(json);
    memcpy(json, "{\"a\":", 5);
    memset(json + 5, '[', n);
    json[n + 5] = '\0';
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_from_json(a, json, n + 5, 1000000, &s), PINS_EINVALID_ARGUMENT);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_TOO_DEEP);
    free(json);
}

static void test_pbstruct_to_json_rejects_output_over_max_bytes(void **state)
{
    pins_arena *a = *state;
    const char *json = "{\"a\":\"0123456789\",\"b\":[1,2,3]}";
    size_t n = strlen(json);
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, json, 64, &s), 0);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(pbstruct_to_json(s, n, 64, &out, &len), 0);
    assert_int_equal(len, n);
    free(out);
    for (size_t max = 0; max < n; max++) {
        char *sentinel = (char *)&sentinel;
        out = sentinel;
        len = 99;
        assert_int_equal(pbstruct_to_json(s, max, 64, &out, &len), PINS_EINVALID_ARGUMENT);
        assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_TOO_LARGE);
        assert_ptr_equal(out, sentinel);
        assert_int_equal(len, 99);
    }
    assert_string_equal(pbstruct_reason_text(PBSTRUCT_REASON_TOO_LARGE),
                        "value larger than the size limit");
}

static void test_pbstruct_rejects_non_object(void **state)
{
    pins_arena *a = *state;
    const char *bad[] = {"", "   ", "[]", "[{}]", "1", "\"s\"", "null", "true", "false"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_rejected(a, bad[i], PBSTRUCT_REASON_NOT_OBJECT);
}

static void test_pbstruct_rejects_invalid_utf8(void **state)
{
    pins_arena *a = *state;
    const char *bad[] = {
        "{\"a\":\"\xff\"}",             /* never valid */
        "{\"a\":\"\xc0\xaf\"}",         /* overlong '/' */
        "{\"a\":\"\xe0\x80\xaf\"}",     /* overlong, 3 bytes */
        "{\"a\":\"\xed\xa0\x80\"}",     /* encoded surrogate */
        "{\"a\":\"\xf4\x90\x80\x80\"}", /* above U+10FFFF */
        "{\"a\":\"\xe2\x82\"}",         /* cut short */
        "{\"a\":\"\x80\"}",             /* lone continuation */
        "{\"\xfe\":1}",                 /* in a key */
        "{\"a\":\"\\ud800\"}",          /* lone high surrogate escape */
        "{\"a\":\"\\udc00\"}",          /* lone low surrogate escape */
        "{\"a\":\"\\ud800\\u0041\"}",   /* high surrogate without a low one */
        "{\"a\":\"\\u0000\"}",          /* NUL cannot live in a C string */
        "{\"a\":\"\\u0000\\ud800\"}",   /* the string is checked whole first */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_rejected(a, bad[i], PBSTRUCT_REASON_BAD_UTF8);

    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"a\":\"\"}", 64, &s), 0);
    char *out = NULL;
    size_t len;
    s->fields[0]->value->string_value = "ok\xc3";
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), PINS_EINVALID_ARGUMENT);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_BAD_UTF8);
    s->fields[0]->value->string_value = "x";
    s->fields[0]->key = "\xed\xbf\xbf";
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), PINS_EINVALID_ARGUMENT);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_BAD_UTF8);
}

static void test_pbstruct_rejects_trailing_garbage(void **state)
{
    pins_arena *a = *state;
    assert_rejected(a, "{\"a\":1}x", PBSTRUCT_REASON_SYNTAX);
    assert_rejected(a, "{\"a\":1}{}", PBSTRUCT_REASON_SYNTAX);
    assert_rejected(a, "{} ,", PBSTRUCT_REASON_SYNTAX);
    Google__Protobuf__Struct *s = NULL;
    /* The length bounds the text: a NUL inside it is garbage too. */
    assert_int_equal(pbstruct_from_json(a, "{}\0", 3, 64, &s), PINS_EINVALID_ARGUMENT);
    /* ...and nothing after len is read. */
    assert_int_equal(pbstruct_from_json(a, "{\"a\":12}garbage", 8, 64, &s), 0);
    assert_true(s->fields[0]->value->number_value == 12.0);
}

static void test_pbstruct_rejects_malformed_json(void **state)
{
    pins_arena *a = *state;
    const char *bad[] = {"{",
                         "{\"a\"}",
                         "{\"a\":}",
                         "{\"a\":1,}",
                         "{,}",
                         "{\"a\" 1}",
                         "{\"a\":1 \"b\":2}",
                         "{a:1}",
                         "{'a':1}",
                         "{\"a\":01}",
                         "{\"a\":1.}",
                         "{\"a\":.5}",
                         "{\"a\":-}",
                         "{\"a\":+1}",
                         "{\"a\":1e}",
                         "{\"a\":1e+}",
                         "{\"a\":0x10}",
                         "{\"a\":tru}",
                         "{\"a\":nul}",
                         "{\"a\":True}",
                         "{\"a\":[1,]}",
                         "{\"a\":[1 2]}",
                         "{\"a\":[}",
                         "{\"a\":\"abc}",
                         "{\"a\":\"\\x\"}",
                         "{\"a\":\"\\u12\"}",
                         "{\"a\":\"\\u12g4\"}",
                         "{\"a\":\"\\",
                         "{\"a\":\"tab\there\"}",
                         "{\"a\":\"nl\nhere\"}",
                         "{\"a\":1}}",
                         "{\"a\":{}",
                         "\xef\xbb\xbf{}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Google__Protobuf__Struct *s = NULL;
        int rv = parse(a, bad[i], 64, &s);
        if (rv != PINS_EINVALID_ARGUMENT)
            print_error("accepted: %s\n", bad[i]);
        assert_int_equal(rv, PINS_EINVALID_ARGUMENT);
    }
}

static void test_pbstruct_rejects_value_without_kind(void **state)
{
    pins_arena *a = *state;
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"a\":[1]}", 64, &s), 0);
    Google__Protobuf__Value *v = s->fields[0]->value->list_value->values[0];
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND__NOT_SET;
    char *out = NULL;
    size_t len;
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), PINS_EINVALID_ARGUMENT);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_NO_KIND);
    s->fields[0]->value->list_value->values[0] = NULL;
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), PINS_EINVALID_ARGUMENT);
    s->fields[0]->value->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
    s->fields[0]->value->struct_value = NULL;
    assert_int_equal(pbstruct_to_json(s, NO_LIMIT, 64, &out, &len), PINS_EINVALID_ARGUMENT);
    assert_int_equal(pbstruct_to_json(NULL, NO_LIMIT, 64, &out, &len), PINS_EINVALID_ARGUMENT);
}

static void test_pbstruct_emits_only_the_last_of_duplicate_keys(void **state)
{
    pins_arena *a = *state;
    /* The parser keeps every member; the writer keeps the last of each key. */
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"a\":1,\"b\":2,\"a\":3}", 64, &s), 0);
    assert_int_equal(s->n_fields, 3);
    assert_round_trip(a, "{\"a\":1,\"b\":2,\"a\":3}", "{\"b\":2,\"a\":3}");
    assert_round_trip(a, "{\"a\":1,\"a\":{\"a\":2,\"a\":[3]}}", "{\"a\":{\"a\":[3]}}");

    /* Past the small-object path: a hash table finds them. */
    char json[2048], expect[2048];
    size_t n = 0, m = 0;
    n += (size_t)snprintf(json + n, sizeof(json) - n, "{");
    m += (size_t)snprintf(expect + m, sizeof(expect) - m, "{");
    for (int i = 0; i < 40; i++) {
        n += (size_t)snprintf(json + n, sizeof(json) - n, "%s\"k%d\":{\"x\":%d,\"y\":1,\"x\":%d}",
                              i ? "," : "", i % 30, i, i + 1);
        if (i >= 10)
            m += (size_t)snprintf(expect + m, sizeof(expect) - m, "%s\"k%d\":{\"y\":1,\"x\":%d}",
                                  i > 10 ? "," : "", i % 30, i + 1);
    }
    snprintf(json + n, sizeof(json) - n, "}");
    snprintf(expect + m, sizeof(expect) - m, "}");
    assert_round_trip(a, json, expect);
}

static void test_pbstruct_handles_wide_objects_and_long_arrays(void **state)
{
    pins_arena *a = *state;
    size_t cap = 1 << 20, n = 0;
    char *json = malloc(cap);
    assert_non_null(json);
    n += (size_t)snprintf(json + n, cap - n, "{\"list\":[");
    for (int i = 0; i < 5000; i++)
        n += (size_t)snprintf(json + n, cap - n, "%s%d", i ? "," : "", i);
    n += (size_t)snprintf(json + n, cap - n, "]");
    for (int i = 0; i < 3000; i++)
        n += (size_t)snprintf(json + n, cap - n, ",\"key%d\":[%d,{\"z\":\"%d\"}]", i, i, i);
    snprintf(json + n, cap - n, "}");
    assert_round_trip(a, json, json);
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, json, 64, &s), 0);
    assert_int_equal(s->n_fields, 3001);
    assert_int_equal(s->fields[0]->value->list_value->n_values, 5000);
    free(json);
}

static void test_pbstruct_reports_nomem_when_the_arena_is_full(void **state)
{
    (void)state;
    pins_arena *small = pins_arena_new(256);
    assert_non_null(small);
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(small, "{\"a\":[1,2,3,4,5,6,7,8,9,10],\"b\":\"text\"}", 64, &s),
                     PINS_ENOMEM);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_NOMEM);
    assert_null(s);
    pins_arena_free(small);
}

static void test_pbstruct_hash_is_the_sha256_prefix(void **state)
{
    (void)state;
    char out[17];
    assert_int_equal(pbstruct_value_hash("abc", 3, out), 0);
    assert_string_equal(out, "ba7816bf8f01cfea");
    assert_int_equal(pbstruct_value_hash("{}", 2, out), 0);
    assert_string_equal(out, "44136fa355b3678a");
    assert_int_equal(pbstruct_value_hash("{\"a\":1}", 7, out), 0);
    assert_string_equal(out, "015abd7f5cc57a2d");
}

/* Where the two codecs differed before they became one: a string is checked whole before its
 * \u0000 is refused, and a key's \u0000 only after its ':'. protocols/json.c had these rules (its
 * REST and Connect answers depend on them); pbstruct refused the \u0000 at once. The stores only
 * see the reason change, for texts they never write. */
static void test_pbstruct_checks_a_string_whole_before_its_nul(void **state)
{
    pins_arena *a = *state;
    assert_rejected(a, "{\"a\":\"\\u0000\\q\"}", PBSTRUCT_REASON_SYNTAX);
    assert_rejected(a, "{\"a\\u0000\" 1}", PBSTRUCT_REASON_SYNTAX);
    assert_rejected(a, "{\"a\\u0000\":1}", PBSTRUCT_REASON_BAD_UTF8);
    assert_rejected(a, "{\"a\":\"\\u0000\\ud800\"}", PBSTRUCT_REASON_BAD_UTF8);
}

/* The codec inside a larger text: starts at pos, stops just past the value, and on failure gives
 * the place, the cause and the path, innermost step first. */
static void test_pbstruct_parse_inside_a_document(void **state)
{
    pins_arena *a = *state;
    const char *doc = "{\"value\":{\"a\":[1,{\"b\":true}]} ,\"x\":2}";
    pbstruct_step path[PBSTRUCT_MAX_DEPTH];
    pbstruct_parse p = {
        .json = doc, .len = strlen(doc), .pos = 9, .depth = 1, .max_depth = 64, .path = path};
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_parse_struct(a, &p, &s), 0);
    assert_int_equal(p.pos, 29);
    assert_int_equal(s->n_fields, 1);
    assert_int_equal(s->fields[0]->value->list_value->n_values, 2);

    Google__Protobuf__Value *v = NULL;
    p.pos = 35; /* the 2 */
    assert_int_equal(pbstruct_parse_value(a, &p, &v), 0);
    assert_int_equal(v->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE);
    assert_int_equal(p.pos, 36);

    const char *bad = "{\"value\":{\"a\":[1,{\"b\":\"x\\u0000\"}]}}";
    p = (pbstruct_parse){
        .json = bad, .len = strlen(bad), .pos = 9, .depth = 1, .max_depth = 64, .path = path};
    assert_int_equal(pbstruct_parse_struct(a, &p, &s), PINS_EINVALID_ARGUMENT);
    assert_int_equal(p.fault, PBSTRUCT_FAULT_NUL);
    assert_int_equal(p.npath, 3);
    assert_string_equal(path[0].key, "b");
    assert_null(path[1].key);
    assert_int_equal(path[1].index, 1);
    assert_string_equal(path[2].key, "a");

    /* Places: a number that is none at its start (after '-'), a literal at its first wrong byte,
     * an escape at its backslash, a missing member at what stands there. */
    static const struct {
        const char *json;
        pbstruct_fault fault;
        size_t pos;
    } cases[] = {
        {"[1.]", PBSTRUCT_FAULT_SYNTAX, 1},     {"[-x]", PBSTRUCT_FAULT_SYNTAX, 2},
        {"[tru]", PBSTRUCT_FAULT_SYNTAX, 4},    {"[\"a\\q\"]", PBSTRUCT_FAULT_ESCAPE, 3},
        {"[1,]", PBSTRUCT_FAULT_SYNTAX, 3},     {"[\"\x01\"]", PBSTRUCT_FAULT_CONTROL, 2},
        {"[\"\xff\"]", PBSTRUCT_FAULT_UTF8, 2}, {"[\"\\udc00\"]", PBSTRUCT_FAULT_SURROGATE, 2},
        {"[1e999]", PBSTRUCT_FAULT_NUMBER, 1},  {"[[[1]]]", PBSTRUCT_FAULT_DEPTH, 2},
        {"[1", PBSTRUCT_FAULT_SYNTAX, 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Google__Protobuf__ListValue *l = NULL;
        p = (pbstruct_parse){.json = cases[i].json, .len = strlen(cases[i].json), .max_depth = 2};
        assert_int_equal(pbstruct_parse_list(a, &p, &l), PINS_EINVALID_ARGUMENT);
        if (p.fault != cases[i].fault ||
            (p.fault != PBSTRUCT_FAULT_NUMBER && p.fault != PBSTRUCT_FAULT_DEPTH &&
             p.err_pos != cases[i].pos))
            print_error("%s: fault %d at %zu\n", cases[i].json, p.fault, p.err_pos);
        assert_int_equal(p.fault, cases[i].fault);
    }
}

/* A budget bounds the arena bytes a parse may take: past it, TOO_LARGE and PINS_ETOO_LARGE. */
static void test_pbstruct_parse_keeps_within_its_budget(void **state)
{
    pins_arena *a = *state;
    const char *doc = "{\"a\":[1,2,3,4,5,6,7,8,9,10],\"b\":\"a long enough string\"}";
    pbstruct_parse p = {.json = doc,
                        .len = strlen(doc),
                        .max_depth = 8,
                        .budget = 64,
                        .budget_base = pins_arena_used(a)};
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_parse_struct(a, &p, &s), PINS_ETOO_LARGE);
    assert_int_equal(p.fault, PBSTRUCT_FAULT_TOO_LARGE);
    assert_null(s);
    p = (pbstruct_parse){.json = doc,
                         .len = strlen(doc),
                         .max_depth = 8,
                         .budget = 1 << 20,
                         .budget_base = pins_arena_used(a)};
    assert_int_equal(pbstruct_parse_struct(a, &p, &s), 0);
}

/* The writer appends to the caller's buffer, after what it holds. */
static void test_pbstruct_put_appends_to_the_callers_buffer(void **state)
{
    pins_arena *a = *state;
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(parse(a, "{\"a\":[1,\"x\",null],\"a\":2}", 64, &s), 0);
    pins_buf b;
    pins_buf_init(&b, 100);
    assert_int_equal(pins_buf_add(&b, "v=", 2), 0);
    assert_int_equal(pbstruct_put_struct(&b, s, 64), 0);
    assert_string_equal(pins_buf_ptr(&b), "v={\"a\":2}");
    assert_int_equal(pbstruct_put_value(&b, s->fields[0]->value, 64), 0);
    assert_string_equal(pins_buf_ptr(&b), "v={\"a\":2}[1,\"x\",null]");
    assert_int_equal(pbstruct_put_list(&b, s->fields[0]->value->list_value, 1), 0);
    assert_int_equal(pbstruct_put_list(&b, s->fields[0]->value->list_value, 0),
                     PINS_EINVALID_ARGUMENT);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_TOO_DEEP);
    pins_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_pbstruct_round_trips_every_json_kind),
        T(test_pbstruct_builds_messages_protobuf_c_can_pack),
        T(test_pbstruct_escapes_quotes_backslashes_and_control_chars),
        T(test_pbstruct_decodes_unicode_escapes_and_keeps_utf8),
        T(test_pbstruct_prints_integral_numbers_without_fraction),
        T(test_pbstruct_prints_fractions_in_shortest_round_trip_form),
        T(test_pbstruct_parses_numbers_like_strtod),
        T(test_pbstruct_rejects_nan_and_infinity),
        T(test_pbstruct_accepts_depth_64_and_rejects_65),
        T(test_pbstruct_caps_hostile_nesting_without_recursing_into_it),
        T(test_pbstruct_to_json_rejects_output_over_max_bytes),
        T(test_pbstruct_rejects_non_object),
        T(test_pbstruct_rejects_invalid_utf8),
        T(test_pbstruct_rejects_trailing_garbage),
        T(test_pbstruct_rejects_malformed_json),
        T(test_pbstruct_rejects_value_without_kind),
        T(test_pbstruct_emits_only_the_last_of_duplicate_keys),
        T(test_pbstruct_handles_wide_objects_and_long_arrays),
        T(test_pbstruct_reports_nomem_when_the_arena_is_full),
        T(test_pbstruct_hash_is_the_sha256_prefix),
        T(test_pbstruct_checks_a_string_whole_before_its_nul),
        T(test_pbstruct_parse_inside_a_document),
        T(test_pbstruct_parse_keeps_within_its_budget),
        T(test_pbstruct_put_appends_to_the_callers_buffer),
#undef T
    };
    return cmocka_run_group_tests_name("common/pbstruct", tests, NULL, NULL);
}
