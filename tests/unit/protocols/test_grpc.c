/* tests/unit/protocols/test_grpc.c: the gRPC pieces without HTTP/2 (protocols/grpc.c):
 * grpc-timeout, percent-encoded grpc-message, content types. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "common/arena.h"
#include "common/error.h"
#include "protocols/grpc.h"
#include "rpc/rpc_int.h"
#include "common/timeutil.h"

#define NS_PER_S INT64_C(1000000000)

static int64_t timeout_ok(const char *s)
{
    int64_t ns = -1;
    assert_int_equal(proto_grpc_timeout_parse(s, strlen(s), &ns), 0);
    return ns;
}

static void timeout_bad(const char *s, size_t len)
{
    int64_t ns = 12345;
    assert_int_equal(proto_grpc_timeout_parse(s, len, &ns), PINS_EINVALID_ARGUMENT);
    assert_int_equal(ns, 12345); /* untouched on failure */
}

/* ---- grpc-timeout -----------------------------------------------------------------------------
 */

static void test_timeout_parses_every_unit(void **state)
{
    assert_int_equal(timeout_ok("2H"), 2 * 3600 * NS_PER_S);
    assert_int_equal(timeout_ok("3M"), 3 * 60 * NS_PER_S);
    assert_int_equal(timeout_ok("5S"), 5 * NS_PER_S);
    assert_int_equal(timeout_ok("100m"), 100 * INT64_C(1000000));
    assert_int_equal(timeout_ok("7u"), 7000);
    assert_int_equal(timeout_ok("1n"), 1);
    assert_int_equal(timeout_ok("0n"), 0);
}

static void test_timeout_accepts_eight_digits(void **state)
{
    assert_int_equal(timeout_ok("99999999n"), 99999999);
    assert_int_equal(timeout_ok("00000001S"), NS_PER_S);
    assert_int_equal(timeout_ok("12345678u"), INT64_C(12345678000));
    assert_int_equal(timeout_ok("99999999S"), INT64_C(99999999) * NS_PER_S); /* 3 years */
}

static void test_timeout_rejects_nine_digits(void **state)
{
    timeout_bad("123456789S", 10);
    timeout_bad("000000001n", 10);
}

static void test_timeout_rejects_empty_and_missing_parts(void **state)
{
    timeout_bad("", 0);
    timeout_bad("S", 1);  /* no digits */
    timeout_bad("10", 2); /* no unit */
}

static void test_timeout_rejects_bad_units_and_digits(void **state)
{
    timeout_bad("10s", 3);
    timeout_bad("10h", 3);
    timeout_bad("10x", 3);
    timeout_bad("10 S", 4);
    timeout_bad("-1S", 3);
    timeout_bad("+1S", 3);
    timeout_bad("1.5S", 4);
    timeout_bad("a1S", 3);
}

static void test_timeout_reads_only_len_bytes(void **state)
{
    int64_t ns = 0;
    /* "5S" followed by garbage that is not part of the value. */
    assert_int_equal(proto_grpc_timeout_parse("5Sxyz", 2, &ns), 0);
    assert_int_equal(ns, 5 * NS_PER_S);
    /* An embedded NUL is not a digit. */
    timeout_bad("1\0S", 3);
}

static void test_timeout_clamps_overflow_to_a_deadline_that_can_be_added(void **state)
{
    /* 99999999 hours is more than int64 nanoseconds hold: clamped, not wrapped. */
    int64_t hours = timeout_ok("99999999H");
    assert_true(hours >= 100 * INT64_C(365) * 24 * 3600 * NS_PER_S);
    /* The transport adds it to a monotonic start time: that must not overflow. */
    assert_true(hours <= INT64_MAX - pins_time_mono_ns());
}

static void test_timeout_clamp_never_shortens_a_longer_timeout(void **state)
{
    /* A longer timeout must never give an earlier deadline: 99999999H (clamped) must be at least
     * 99999999M (exact, 190 years). */
    assert_true(timeout_ok("99999999H") >= timeout_ok("99999999M"));
    assert_true(timeout_ok("99999999H") >= timeout_ok("9999999H"));
}

/* ---- grpc-message ------------------------------------------------------------------------------
 */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1; /* lower case is not what we emit */
}

/* Percent-decodes s into out (at least strlen(s) + 1 bytes); fails the test on a bad escape. */
static void percent_decode(const char *s, char *out)
{
    while (*s != '\0') {
        if (*s == '%') {
            int hi = hexval(s[1]), lo = hi >= 0 ? hexval(s[2]) : -1;
            assert_true(hi >= 0 && lo >= 0);
            *out++ = (char)(hi << 4 | lo);
            s += 3;
        } else {
            *out++ = *s++;
        }
    }
    *out = '\0';
}

static void test_message_keeps_printable_ascii(void **state)
{
    pins_arena *a = *state;
    const char *msg = "key: must not contain '..' (see API.md #4) ~!@#$^&*()_+{}|:\"<>?";
    assert_string_equal(proto_grpc_message_encode(a, msg), msg);
    assert_string_equal(proto_grpc_message_encode(a, ""), "");
    assert_string_equal(proto_grpc_message_encode(a, " "), " ");
}

static void test_message_encodes_percent(void **state)
{
    pins_arena *a = *state;
    assert_string_equal(proto_grpc_message_encode(a, "100%"), "100%25");
    assert_string_equal(proto_grpc_message_encode(a, "%%"), "%25%25");
}

static void test_message_encodes_non_ascii_as_upper_case_hex(void **state)
{
    pins_arena *a = *state;
    assert_string_equal(proto_grpc_message_encode(a, "Pin not found: caf\xc3\xa9"),
                        "Pin not found: caf%C3%A9");
    assert_string_equal(proto_grpc_message_encode(a, "\xf0\x9f\x93\x8c"), "%F0%9F%93%8C");
    assert_string_equal(proto_grpc_message_encode(a, "\xff"), "%FF");
}

static void test_message_encodes_control_characters(void **state)
{
    pins_arena *a = *state;
    assert_string_equal(proto_grpc_message_encode(a, "a\nb\tc\rd"), "a%0Ab%09c%0Dd");
    assert_string_equal(proto_grpc_message_encode(a, "\x01\x1f"), "%01%1F");
    assert_string_equal(proto_grpc_message_encode(a, "del\x7f"), "del%7F");
}

static void test_message_round_trips_every_byte(void **state)
{
    pins_arena *a = *state;
    char all[256];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    char *enc = proto_grpc_message_encode(a, all);
    assert_non_null(enc);
    for (const char *p = enc; *p != '\0'; p++)
        assert_true(*p >= 0x20 && *p <= 0x7e); /* the wire form is printable ASCII */
    char dec[256];
    percent_decode(enc, dec);
    assert_memory_equal(dec, all, 256);
}

static void test_message_fails_cleanly_over_the_arena_limit(void **state)
{
    pins_arena *small = pins_arena_new(64);
    assert_non_null(small);
    char big[200];
    memset(big, '%', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_null(proto_grpc_message_encode(small, big));
    pins_arena_free(small);
}

static void test_message_is_cut_at_a_character_boundary_past_the_cap(void **state)
{
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    /* 70 KB of an echoed name: what Health/Check answered for an unknown service. */
    size_t n = 70000;
    char *big = pins_arena_alloc(a, n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    const char *enc = proto_grpc_message_encode(a, big);
    assert_non_null(enc);
    assert_int_equal(strlen(enc), PROTO_GRPC_MESSAGE_MAX);
    assert_string_equal(enc + PROTO_GRPC_MESSAGE_MAX - 3, "...");
    /* The cap counts encoded bytes, and a cut never splits a UTF-8 sequence: "é" is two bytes,
     * %C3%A9 after encoding. */
    for (size_t i = 0; i + 1 < n; i += 2) {
        big[i] = '\xc3';
        big[i + 1] = '\xa9';
    }
    enc = proto_grpc_message_encode(a, big);
    assert_non_null(enc);
    size_t len = strlen(enc);
    assert_true(len <= PROTO_GRPC_MESSAGE_MAX);
    assert_true(len > PROTO_GRPC_MESSAGE_MAX - 12);
    assert_string_equal(enc + len - 3, "...");
    assert_int_equal((len - 3) % 6, 0);
    assert_memory_equal(enc + len - 9, "%C3%A9", 6);
    /* At the cap exactly, nothing is cut; one byte more is. */
    memset(big, 'y', PROTO_GRPC_MESSAGE_MAX);
    big[PROTO_GRPC_MESSAGE_MAX] = '\0';
    assert_string_equal(proto_grpc_message_encode(a, big), big);
    big[PROTO_GRPC_MESSAGE_MAX] = 'y';
    big[PROTO_GRPC_MESSAGE_MAX + 1] = '\0';
    enc = proto_grpc_message_encode(a, big);
    assert_int_equal(strlen(enc), PROTO_GRPC_MESSAGE_MAX);
    assert_string_equal(enc + PROTO_GRPC_MESSAGE_MAX - 3, "...");
    pins_arena_free(a);
}

/* ---- message frame prefix ----------------------------------------------------------------------
 */

static void test_frame_prefix_reads_flags_and_length(void **state)
{
    proto_grpc_frame f = {.compressed = true, .len = 99};
    const uint8_t plain[] = {0, 0, 0, 1, 2, 0xaa};
    assert_int_equal(proto_grpc_frame_parse(plain, sizeof(plain), &f), 0);
    assert_false(f.compressed);
    assert_int_equal(f.len, 258);
    const uint8_t comp[] = {1, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(proto_grpc_frame_parse(comp, sizeof(comp), &f), 0);
    assert_true(f.compressed);
    assert_int_equal(f.len, UINT32_MAX);
}

static void test_frame_prefix_rejects_reserved_flags_and_short_input(void **state)
{
    proto_grpc_frame f = {.compressed = true, .len = 7};
    for (unsigned flag = 2; flag < 256; flag++) {
        const uint8_t p[] = {(uint8_t)flag, 0, 0, 0, 0};
        assert_int_equal(proto_grpc_frame_parse(p, sizeof(p), &f), PINS_EINVALID_ARGUMENT);
    }
    const uint8_t p[] = {0, 0, 0, 0, 0};
    assert_int_equal(proto_grpc_frame_parse(p, 4, &f), PINS_EINVALID_ARGUMENT);
    assert_true(f.compressed); /* untouched on failure */
    assert_int_equal(f.len, 7);
}

/* ---- content-type ------------------------------------------------------------------------------
 */

static bool ct(const char *s)
{
    return proto_grpc_content_type(s, strlen(s));
}

static void test_content_type_accepts_grpc_and_proto(void **state)
{
    assert_true(ct("application/grpc"));
    assert_true(ct("application/grpc+proto"));
}

static void test_content_type_accepts_parameters(void **state)
{
    assert_true(ct("application/grpc;charset=utf-8"));
    assert_true(ct("application/grpc+proto;charset=utf-8"));
    assert_true(ct("application/grpc+proto; charset=utf-8"));
}

static void test_content_type_is_case_insensitive(void **state)
{
    assert_true(ct("Application/GRPC"));
    assert_true(ct("APPLICATION/GRPC+PROTO"));
    assert_true(ct("application/gRPC+Proto;Charset=UTF-8"));
}

static void test_content_type_rejects_grpc_web(void **state)
{
    assert_false(ct("application/grpc-web"));
    assert_false(ct("application/grpc-web+proto"));
    assert_false(ct("application/grpc-web-text"));
}

static void test_content_type_rejects_json_codec(void **state)
{
    /* +json is another codec; pinsd speaks only protobuf on the gRPC transport. */
    assert_false(ct("application/grpc+json"));
    assert_false(ct("application/grpc+json;charset=utf-8"));
}

static void test_content_type_rejects_other_types(void **state)
{
    assert_false(ct("text/plain"));
    assert_false(ct("application/json"));
    assert_false(ct(""));
    assert_false(ct("application/grp"));
    assert_false(ct("application/grpcx"));
    assert_false(ct("application/grpc+"));
    assert_false(ct("application/grpc+protobuf"));
    assert_false(ct("application/grpc+prot"));
    assert_false(ct("xapplication/grpc"));
}

static void test_content_type_reads_only_len_bytes(void **state)
{
    assert_true(proto_grpc_content_type("application/grpc+protoXYZ", 22));
    assert_true(proto_grpc_content_type("application/grpc-web", 16));
    assert_false(proto_grpc_content_type("application/grpc", 15));
}

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timeout_parses_every_unit),
        cmocka_unit_test(test_timeout_accepts_eight_digits),
        cmocka_unit_test(test_timeout_rejects_nine_digits),
        cmocka_unit_test(test_timeout_rejects_empty_and_missing_parts),
        cmocka_unit_test(test_timeout_rejects_bad_units_and_digits),
        cmocka_unit_test(test_timeout_reads_only_len_bytes),
        cmocka_unit_test(test_timeout_clamps_overflow_to_a_deadline_that_can_be_added),
        cmocka_unit_test(test_timeout_clamp_never_shortens_a_longer_timeout),
        cmocka_unit_test_setup_teardown(test_message_keeps_printable_ascii, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_encodes_percent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_encodes_non_ascii_as_upper_case_hex, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_message_encodes_control_characters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_round_trips_every_byte, setup, teardown),
        cmocka_unit_test(test_message_fails_cleanly_over_the_arena_limit),
        cmocka_unit_test(test_content_type_accepts_grpc_and_proto),
        cmocka_unit_test(test_content_type_accepts_parameters),
        cmocka_unit_test(test_content_type_is_case_insensitive),
        cmocka_unit_test(test_content_type_rejects_grpc_web),
        cmocka_unit_test(test_content_type_rejects_json_codec),
        cmocka_unit_test(test_content_type_rejects_other_types),
        cmocka_unit_test(test_content_type_reads_only_len_bytes),
        cmocka_unit_test(test_message_is_cut_at_a_character_boundary_past_the_cap),
        cmocka_unit_test(test_frame_prefix_reads_flags_and_length),
        cmocka_unit_test(test_frame_prefix_rejects_reserved_flags_and_short_input),
    };
    return cmocka_run_group_tests_name("protocols/grpc", tests, NULL, NULL);
}
