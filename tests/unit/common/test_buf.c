/* tests/unit/common/test_buf.c: the bounded growable buffer (common/buf.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/error.h"

static void test_buf_starts_empty_and_allocates_on_first_byte(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 100);
    assert_null(pins_buf_ptr(&b));
    assert_int_equal(pins_buf_len(&b), 0);
    assert_int_equal(pins_buf_add(&b, NULL, 0), 0); /* nothing to add: still nothing allocated */
    assert_null(pins_buf_ptr(&b));
    size_t len = 7;
    assert_null(pins_buf_take(&b, &len));
    assert_int_equal(len, 0);
    assert_int_equal(pins_buf_add_byte(&b, 'x'), 0);
    assert_string_equal(pins_buf_ptr(&b), "x");
    pins_buf_free(&b);
    assert_null(pins_buf_ptr(&b));
    pins_buf_free(&b); /* twice is fine */
}

static void test_buf_appends_bytes_strings_and_formats(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 1 << 20);
    assert_int_equal(pins_buf_add(&b, "ab\0c", 4), 0);
    assert_int_equal(pins_buf_add_str(&b, "def"), 0);
    assert_int_equal(pins_buf_add_byte(&b, '\0'), 0);
    assert_int_equal(pins_buf_addf(&b, "%d-%s", 42, "x"), 0);
    assert_int_equal(pins_buf_len(&b), 4 + 3 + 1 + 4);
    assert_memory_equal(pins_buf_ptr(&b),
                        "ab\0cdef\0"
                        "42-x",
                        13); /* with the NUL after */
    pins_buf_setlen(&b, 2);
    assert_string_equal(pins_buf_ptr(&b), "ab");
    pins_buf_setlen(&b, 5); /* longer than the content: nothing changes */
    assert_int_equal(pins_buf_len(&b), 2);
    pins_buf_reset(&b);
    assert_int_equal(pins_buf_len(&b), 0);
    assert_string_equal(pins_buf_ptr(&b), "");
    pins_buf_free(&b);
}

static void test_buf_grows_across_many_appends(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX);
    char want[100000];
    for (size_t i = 0; i < sizeof(want); i++) {
        want[i] = (char)('a' + i % 26);
        assert_int_equal(pins_buf_add_byte(&b, want[i]), 0);
    }
    assert_int_equal(pins_buf_len(&b), sizeof(want));
    assert_memory_equal(pins_buf_ptr(&b), want, sizeof(want));
    assert_int_equal(pins_buf_ptr(&b)[sizeof(want)], '\0');
    /* A long printf output that does not fit the room left. */
    pins_buf_reset(&b);
    assert_int_equal(pins_buf_addf(&b, "%.*s", 5000, want), 0);
    assert_int_equal(pins_buf_len(&b), 5000);
    assert_memory_equal(pins_buf_ptr(&b), want, 5000);
    pins_buf_free(&b);
}

static void test_buf_holds_exactly_max_bytes(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 10);
    assert_int_equal(pins_buf_add(&b, "0123456789", 10), 0);
    assert_int_equal(pins_buf_len(&b), 10);
    assert_true(b.cap <= 11); /* the allocation never exceeds max + 1 */
    assert_int_equal(pins_buf_add_byte(&b, 'x'), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_add(&b, "x", 1), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_add_str(&b, ""), 0);
    assert_string_equal(pins_buf_ptr(&b), "0123456789");
    pins_buf_free(&b);
}

static void test_buf_refuses_growth_past_max_and_stays_valid(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 300);
    assert_int_equal(pins_buf_add_str(&b, "head "), 0);
    char big[400];
    memset(big, 'z', sizeof(big));
    /* All or nothing: a piece that does not fit adds no part of itself. */
    assert_int_equal(pins_buf_add(&b, big, 296), PINS_ETOO_LARGE);
    assert_string_equal(pins_buf_ptr(&b), "head ");
    assert_int_equal(pins_buf_addf(&b, "%.*s", 296, big), PINS_ETOO_LARGE);
    assert_string_equal(pins_buf_ptr(&b), "head ");
    assert_int_equal(pins_buf_len(&b), 5);
    assert_int_equal(pins_buf_reserve(&b, 296), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_add(&b, big, SIZE_MAX), PINS_ETOO_LARGE);
    /* What fits still goes in, up to the maximum. */
    assert_int_equal(pins_buf_reserve(&b, 295), 0);
    assert_int_equal(pins_buf_add(&b, big, 295), 0);
    assert_int_equal(pins_buf_len(&b), 300);
    size_t len = 0;
    char *p = pins_buf_take(&b, &len);
    assert_int_equal(len, 300);
    assert_int_equal(strlen(p), 300);
    assert_memory_equal(p, "head zzz", 8);
    free(p);
    /* take leaves an empty buffer with the same maximum. */
    assert_null(pins_buf_ptr(&b));
    assert_int_equal(pins_buf_add(&b, big, 301), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_add(&b, big, 300), 0);
    pins_buf_free(&b);
}

static void test_buf_error_sticks_until_reset(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 4);
    assert_int_equal(pins_buf_error(&b), 0);
    assert_int_equal(pins_buf_add_str(&b, "ab"), 0);
    assert_int_equal(pins_buf_add_str(&b, "cde"), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_add_str(&b, "c"), 0); /* later appends still run */
    assert_int_equal(pins_buf_error(&b), PINS_ETOO_LARGE);
    pins_buf_reset(&b);
    assert_int_equal(pins_buf_error(&b), 0);
    assert_int_equal(pins_buf_reserve(&b, 5), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_error(&b), PINS_ETOO_LARGE);
    free(pins_buf_take(&b, NULL));
    assert_int_equal(pins_buf_error(&b), 0);
    pins_buf_free(&b);
}

static void test_buf_with_zero_max_holds_nothing(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 0);
    assert_int_equal(pins_buf_add_byte(&b, 'a'), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_addf(&b, "%s", "a"), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_addf(&b, "%s", ""), 0);
    assert_int_equal(pins_buf_len(&b), 0);
    pins_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_starts_empty_and_allocates_on_first_byte),
        cmocka_unit_test(test_buf_appends_bytes_strings_and_formats),
        cmocka_unit_test(test_buf_grows_across_many_appends),
        cmocka_unit_test(test_buf_holds_exactly_max_bytes),
        cmocka_unit_test(test_buf_refuses_growth_past_max_and_stays_valid),
        cmocka_unit_test(test_buf_error_sticks_until_reset),
        cmocka_unit_test(test_buf_with_zero_max_holds_nothing),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
