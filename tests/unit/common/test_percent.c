/* tests/unit/common/test_percent.c: percent-decoding (common/percent.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/percent.h"

static void check(const char *s, unsigned flags, const char *want, size_t wn)
{
    char out[64];
    size_t n = 999;
    assert_int_equal(pins_percent_decode(s, strlen(s), flags, out, &n), 0);
    assert_int_equal(n, wn);
    assert_memory_equal(out, want, wn);
    assert_int_equal(out[n], '\0');
}

static void check_refused(const char *s, unsigned flags)
{
    char out[64];
    size_t n = 999;
    assert_int_equal(pins_percent_decode(s, strlen(s), flags, out, &n), PINS_EMALFORMED);
    assert_int_equal(n, 999);
}

static void test_percent_decodes_escapes_in_either_case(void **state)
{
    (void)state;
    check("", 0, "", 0);
    check("plain", 0, "plain", 5);
    check("a%20b%2Fc%2fd", 0, "a b/c/d", 7);
    check("%C3%A9t%c3%a9", 0, "\xc3\xa9t\xc3\xa9", 5);
    check("%41", 0, "A", 1); /* an escape that ends the text */
    check("100%25", 0, "100%", 4);
}

static void test_percent_plus_is_a_space_only_when_asked(void **state)
{
    (void)state;
    check("a+b%2B", 0, "a+b+", 4);
    check("a+b%2B", PINS_PERCENT_PLUS_SPACE, "a b+", 4);
}

static void test_percent_nul_is_kept_or_refused(void **state)
{
    (void)state;
    check("a%00b", 0, "a\0b", 3);
    check_refused("a%00b", PINS_PERCENT_NO_NUL);
    check("%01", PINS_PERCENT_NO_NUL, "\x01", 1);
}

static void test_percent_refuses_bad_escapes(void **state)
{
    (void)state;
    check_refused("%", 0);
    check_refused("%4", 0);
    check_refused("a%4", 0);
    check_refused("%4g", 0);
    check_refused("%g4", 0);
    check_refused("% 41", 0);
    check_refused("%%41", 0);
}

static void test_percent_decodes_in_place_and_into_an_arena(void **state)
{
    (void)state;
    char s[] = "x%41%42+y";
    size_t n = 0;
    assert_int_equal(pins_percent_decode(s, strlen(s), PINS_PERCENT_PLUS_SPACE, s, &n), 0);
    assert_string_equal(s, "xAB y");
    assert_int_equal(n, 5);

    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    char *out = NULL;
    assert_int_equal(pins_percent_decode_arena(a, "k%3Dv", 5, 0, &out, &n), 0);
    assert_string_equal(out, "k=v");
    assert_int_equal(n, 3);
    char *untouched = (char *)"x";
    out = untouched;
    assert_int_equal(pins_percent_decode_arena(a, "k%3", 3, 0, &out, &n), PINS_EMALFORMED);
    assert_ptr_equal(out, untouched);
    pins_arena_free(a);
    pins_arena *tiny = pins_arena_new(1);
    assert_non_null(tiny);
    assert_int_equal(pins_percent_decode_arena(tiny, "abcdefgh", 8, 0, &out, &n), PINS_ENOMEM);
    pins_arena_free(tiny);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percent_decodes_escapes_in_either_case),
        cmocka_unit_test(test_percent_plus_is_a_space_only_when_asked),
        cmocka_unit_test(test_percent_nul_is_kept_or_refused),
        cmocka_unit_test(test_percent_refuses_bad_escapes),
        cmocka_unit_test(test_percent_decodes_in_place_and_into_an_arena),
    };
    return cmocka_run_group_tests_name("percent", tests, NULL, NULL);
}
