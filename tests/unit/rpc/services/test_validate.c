/* tests/unit/rpc/services/test_validate.c: the validation rules of API.md section 4
 * (rpc/services/validate.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/services/validate.h"

static long count(const char *s)
{
    return pins_utf8_count(s, strlen(s));
}

static bool control(const char *s)
{
    return pins_utf8_has_control(s, strlen(s));
}

/* A new string of n copies of unit. */
static char *repeat(const char *unit, size_t n)
{
    size_t ul = strlen(unit);
    char *s = malloc(ul * n + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * ul, unit, ul);
    s[ul * n] = '\0';
    return s;
}

/* ---- pins_utf8_count ------------------------------------------------------------------------- */

static void test_utf8_counts_code_points_of_every_length(void **state)
{
    assert_int_equal(count(""), 0);
    assert_int_equal(count("abc"), 3);
    assert_int_equal(count("\xc3\xa9"), 1);         /* U+00E9 */
    assert_int_equal(count("\xe2\x82\xac"), 1);     /* U+20AC */
    assert_int_equal(count("\xf0\x9f\x93\x8c"), 1); /* U+1F4CC */
    assert_int_equal(count("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x93\x8c"), 4);
    assert_int_equal(count("\xc2\x80"), 1);         /* U+0080, smallest two-byte */
    assert_int_equal(count("\xe0\xa0\x80"), 1);     /* U+0800, smallest three-byte */
    assert_int_equal(count("\xf0\x90\x80\x80"), 1); /* U+10000, smallest four-byte */
    assert_int_equal(count("\xf4\x8f\xbf\xbf"), 1); /* U+10FFFF, the largest */
    assert_int_equal(count("\xed\x9f\xbf"), 1);     /* U+D7FF, just below the surrogates */
    assert_int_equal(count("\xee\x80\x80"), 1);     /* U+E000, just above them */
}

static void test_utf8_rejects_overlong_forms(void **state)
{
    assert_int_equal(count("\xc0\xaf"), -1); /* '/' in two bytes */
    assert_int_equal(count("\xc1\xbf"), -1);
    assert_int_equal(count("\xe0\x80\xaf"), -1);     /* '/' in three bytes */
    assert_int_equal(count("\xe0\x9f\xbf"), -1);     /* U+07FF in three bytes */
    assert_int_equal(count("\xf0\x80\x80\xaf"), -1); /* '/' in four bytes */
    assert_int_equal(count("\xf0\x8f\xbf\xbf"), -1); /* U+FFFF in four bytes */
}

static void test_utf8_rejects_surrogates(void **state)
{
    assert_int_equal(count("\xed\xa0\x80"), -1);             /* U+D800 */
    assert_int_equal(count("\xed\xbf\xbf"), -1);             /* U+DFFF */
    assert_int_equal(count("\xed\xa0\xbd\xed\xb3\x8c"), -1); /* a CESU-8 pair */
}

static void test_utf8_rejects_code_points_over_10ffff(void **state)
{
    assert_int_equal(count("\xf4\x90\x80\x80"), -1); /* U+110000 */
    assert_int_equal(count("\xf5\x80\x80\x80"), -1);
    assert_int_equal(count("\xf7\xbf\xbf\xbf"), -1);
    assert_int_equal(count("\xf8\x88\x80\x80\x80"), -1); /* five-byte form */
    assert_int_equal(count("\xfe"), -1);
    assert_int_equal(count("\xff"), -1);
}

static void test_utf8_rejects_truncated_sequences(void **state)
{
    assert_int_equal(count("\xc3"), -1);
    assert_int_equal(count("\xe2\x82"), -1);
    assert_int_equal(count("\xf0\x9f\x93"), -1);
    assert_int_equal(count("a\xc3"), -1);
    /* A lead byte followed by something that is not a continuation. */
    assert_int_equal(count("\xc3"
                           "a"),
                     -1);
    assert_int_equal(count("\xe2\x82"
                           "a"),
                     -1);
    assert_int_equal(count("\xf0\x9f\x93"
                           "a"),
                     -1);
    /* A lone continuation byte. */
    assert_int_equal(count("\x80"), -1);
    assert_int_equal(count("a\xbf"), -1);
    /* The length bounds the sequence even when more bytes follow in memory. */
    assert_int_equal(pins_utf8_count("\xc3\xa9", 1), -1);
    assert_int_equal(pins_utf8_count("\xf0\x9f\x93\x8c", 3), -1);
}

/* ---- pins_utf8_has_control ------------------------------------------------------------------- */

static void test_utf8_finds_c0_controls_and_del(void **state)
{
    assert_true(control("\x01"));
    assert_true(control("a\nb"));
    assert_true(control("tab\there"));
    assert_true(control("\x1f"));
    assert_true(control("del\x7f"));
    assert_true(pins_utf8_has_control("a\0b", 3));
}

static void test_utf8_finds_c1_controls(void **state)
{
    assert_true(control("\xc2\x80"));   /* U+0080 */
    assert_true(control("x\xc2\x85y")); /* U+0085 NEL */
    assert_true(control("\xc2\x9f"));   /* U+009F */
}

static void test_utf8_allows_printable_text(void **state)
{
    assert_false(control(""));
    assert_false(control("plain text ~"));
    assert_false(control("\xc2\xa0")); /* U+00A0, no-break space: not a control */
    assert_false(control("\xc3\xa9\xe2\x82\xac\xf0\x9f\x93\x8c"));
    assert_false(control("\xe2\x80\x85"));     /* U+2005: the 0x85 is a continuation byte */
    assert_false(control("\xf0\x9f\x82\x80")); /* U+1F080: 0x82 0x80 inside a sequence */
}

/* ---- pins_check_* ---------------------------------------------------------------------------- */

static void test_check_key_accepts_512_characters_counting_multibyte_as_one(void **state)
{
    char *ascii = repeat("k", 512);
    char *two = repeat("\xc3\xa9", 512);
    char *four = repeat("\xf0\x9f\x93\x8c", 512);
    assert_null(pins_check_key(ascii));
    assert_null(pins_check_key(two));
    assert_null(pins_check_key(four));
    free(ascii);
    free(two);
    free(four);
}

static void test_check_key_rejects_513_characters(void **state)
{
    char *ascii = repeat("k", 513);
    char *two = repeat("\xc3\xa9", 513);
    assert_string_equal(pins_check_key(ascii), "must be at most 512 characters");
    assert_string_equal(pins_check_key(two), "must be at most 512 characters");
    free(ascii);
    free(two);
}

static void test_check_key_rejects_forbidden_content(void **state)
{
    assert_string_equal(pins_check_key(""), "must not be empty");
    assert_string_equal(pins_check_key("a..b"), "must not contain '..'");
    assert_string_equal(pins_check_key(".."), "must not contain '..'");
    assert_string_equal(pins_check_key("a/b"), "must not contain '/'");
    assert_string_equal(pins_check_key("a\\b"), "must not contain '\\'");
    assert_string_equal(pins_check_key("a\tb"), "must not contain control characters");
    assert_string_equal(pins_check_key("a\xc2\x85"), "must not contain control characters");
    assert_string_equal(pins_check_key("a\xff"), "must be valid UTF-8");
    assert_string_equal(pins_check_key("\xed\xa0\x80"), "must be valid UTF-8");
    assert_string_equal(pins_check_key("a\xc0\xaf"), "must be valid UTF-8"); /* overlong '/' */
}

static void test_check_key_accepts_single_dots_and_unicode(void **state)
{
    assert_null(pins_check_key("a.b.c"));
    assert_null(pins_check_key(".hidden"));
    assert_null(pins_check_key("caf\xc3\xa9 \xf0\x9f\x93\x8c"));
    assert_null(pins_check_key("a b%_*"));
}

static void test_check_tenant_boundary_is_256_characters(void **state)
{
    char *ok = repeat("\xe2\x82\xac", 256);
    char *over = repeat("t", 257);
    assert_null(pins_check_tenant(ok));
    assert_string_equal(pins_check_tenant(over), "must be at most 256 characters");
    free(ok);
    free(over);
}

static void test_check_tenant_rejects_empty_control_and_bad_utf8(void **state)
{
    assert_string_equal(pins_check_tenant(""), "must not be empty");
    assert_string_equal(pins_check_tenant("acme\n"), "must not contain control characters");
    assert_string_equal(pins_check_tenant("acme\x7f"), "must not contain control characters");
    assert_string_equal(pins_check_tenant("acme\xc3"), "must be valid UTF-8");
    assert_null(pins_check_tenant("global"));
    /* '/' and '..' are fine in a tenant (only keys forbid them). */
    assert_null(pins_check_tenant("org/team..x"));
}

static void test_check_source_boundary_is_64_characters(void **state)
{
    char *ok = repeat("\xc3\xa9", 64);
    char *over = repeat("s", 65);
    assert_null(pins_check_source(ok));
    assert_null(pins_check_source(""));
    assert_string_equal(pins_check_source(over), "must be at most 64 characters");
    assert_string_equal(pins_check_source("a\x01"), "must not contain control characters");
    assert_string_equal(pins_check_source("\xff"), "must be valid UTF-8");
    free(ok);
    free(over);
}

static void test_check_ttl_boundaries(void **state)
{
    assert_null(pins_check_ttl(0));
    assert_null(pins_check_ttl(1));
    assert_null(pins_check_ttl(31536000));
    assert_string_equal(pins_check_ttl(-1), "must be null or between 0 and 31536000");
    assert_string_equal(pins_check_ttl(31536001), "must be null or between 0 and 31536000");
    assert_non_null(pins_check_ttl(INT64_MIN));
    assert_non_null(pins_check_ttl(INT64_MAX));
}

static void test_check_page_limit_and_offset_boundaries(void **state)
{
    assert_null(pins_check_limit(1));
    assert_null(pins_check_limit(1000));
    assert_string_equal(pins_check_limit(0), "must be between 1 and 1000");
    assert_string_equal(pins_check_limit(1001), "must be between 1 and 1000");
    assert_non_null(pins_check_limit(INT64_MIN));
    assert_null(pins_check_offset(0));
    assert_null(pins_check_offset(INT64_MAX));
    assert_string_equal(pins_check_offset(-1), "must be at least 0");
}

static void test_check_prefix_allows_empty_and_512_characters(void **state)
{
    char *ok = repeat("\xf0\x9f\x93\x8c", 512);
    char *over = repeat("p", 513);
    assert_null(pins_check_prefix(""));
    assert_null(pins_check_prefix(ok));
    assert_null(pins_check_prefix("50%_off"));
    assert_string_equal(pins_check_prefix(over), "must be at most 512 characters");
    assert_string_equal(pins_check_prefix("p\x1b"), "must not contain control characters");
    assert_string_equal(pins_check_prefix("p\xe2\x82"), "must be valid UTF-8");
    free(ok);
    free(over);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_counts_code_points_of_every_length),
        cmocka_unit_test(test_utf8_rejects_overlong_forms),
        cmocka_unit_test(test_utf8_rejects_surrogates),
        cmocka_unit_test(test_utf8_rejects_code_points_over_10ffff),
        cmocka_unit_test(test_utf8_rejects_truncated_sequences),
        cmocka_unit_test(test_utf8_finds_c0_controls_and_del),
        cmocka_unit_test(test_utf8_finds_c1_controls),
        cmocka_unit_test(test_utf8_allows_printable_text),
        cmocka_unit_test(test_check_key_accepts_512_characters_counting_multibyte_as_one),
        cmocka_unit_test(test_check_key_rejects_513_characters),
        cmocka_unit_test(test_check_key_rejects_forbidden_content),
        cmocka_unit_test(test_check_key_accepts_single_dots_and_unicode),
        cmocka_unit_test(test_check_tenant_boundary_is_256_characters),
        cmocka_unit_test(test_check_tenant_rejects_empty_control_and_bad_utf8),
        cmocka_unit_test(test_check_source_boundary_is_64_characters),
        cmocka_unit_test(test_check_ttl_boundaries),
        cmocka_unit_test(test_check_page_limit_and_offset_boundaries),
        cmocka_unit_test(test_check_prefix_allows_empty_and_512_characters),
    };
    return cmocka_run_group_tests_name("rpc/services/validate", tests, NULL, NULL);
}
