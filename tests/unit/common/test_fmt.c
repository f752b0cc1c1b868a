/* tests/unit/common/test_fmt.c: decimal formatting without printf, against printf. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/fmt.h"
#include "common/timeutil.h"

static void test_integers_match_printf(void **state)
{
    const int64_t cases[] = {0,   1,         -1,         9,         10,        -10,          99,
                             100, 123456789, -987654321, INT64_MAX, INT64_MIN, INT64_MIN + 1};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char want[40], got[PINS_FMT_INT_MAX];
        snprintf(want, sizeof(want), "%lld", (long long)cases[i]);
        char *end = pins_fmt_i64(got, cases[i]);
        assert_string_equal(got, want);
        assert_int_equal(end - got, strlen(want));
    }
    char got[PINS_FMT_INT_MAX];
    assert_int_equal(pins_fmt_u64(got, UINT64_MAX) - got, 20);
    assert_string_equal(got, "18446744073709551615");
}

static void test_fixed_width_digits_are_zero_padded(void **state)
{
    char buf[16];
    memset(buf, 'x', sizeof(buf));
    assert_ptr_equal(pins_fmt_digits(buf, 7, 4), buf + 4);
    assert_memory_equal(buf, "0007x", 5);
    assert_ptr_equal(pins_fmt_digits(buf, 123456, 6), buf + 6);
    assert_memory_equal(buf, "123456", 6);
    pins_fmt_digits(buf, 12345, 3); /* the lowest digits */
    assert_memory_equal(buf, "345", 3);
}

static void test_timestamps_match_printf(void **state)
{
    /* Every field at its widths' edges, against the printf rendering it replaced. */
    const int64_t cases[] = {0,
                             1,
                             999999,
                             1000000,
                             86399999999,
                             1764287602123456,
                             -1,
                             -62135596800000000 /* 0001-01-01 */,
                             253402300799999999};
    const char *const want[] = {
        "1970-01-01T00:00:00.000000Z", "1970-01-01T00:00:00.000001Z", "1970-01-01T00:00:00.999999Z",
        "1970-01-01T00:00:01.000000Z", "1970-01-01T23:59:59.999999Z", "2025-11-27T23:53:22.123456Z",
        "1969-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[PINS_TIME_RFC3339_LEN];
        size_t n = pins_time_format_us(cases[i], buf);
        assert_string_equal(buf, want[i]);
        assert_int_equal(n, strlen(want[i]));
        int64_t back = 0;
        assert_int_equal(pins_time_parse_us(buf, n, &back), 0);
        assert_int_equal(back, cases[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integers_match_printf),
        cmocka_unit_test(test_fixed_width_digits_are_zero_padded),
        cmocka_unit_test(test_timestamps_match_printf),
    };
    return cmocka_run_group_tests_name("common/fmt", tests, NULL, NULL);
}
