/* tests/unit/common/test_timeutil.c: RFC 3339 parsing (common/timeutil.c) and the injectable
 * clock. Formatting is compared with printf in test_fmt.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"
#include "fake_clock.h"

static int parse(const char *s, int64_t *pus)
{
    return pins_time_parse_us(s, strlen(s), pus);
}

static void check_us(const char *s, int64_t want)
{
    int64_t us = 0;
    assert_int_equal(parse(s, &us), 0);
    assert_int_equal(us, want);
}

static void check_refused(const char *s)
{
    int64_t us = 42;
    assert_int_equal(parse(s, &us), PINS_EINVALID_ARGUMENT);
    assert_int_equal(us, 42); /* untouched */
}

static void test_parse_reads_offsets_and_fractions(void **state)
{
    (void)state;
    check_us("1970-01-01T00:00:00Z", 0);
    check_us("1970-01-01t00:00:00z", 0);
    check_us("1970-01-01T00:00:00.5Z", 500000);
    check_us("1970-01-01T00:00:00.123456789Z", 123456); /* truncated to microseconds */
    check_us("1970-01-01T01:00:00+01:00", 0);
    check_us("1969-12-31T23:30:00-00:30", 0);
    check_us("2026-12-06T19:40:00Z", 1796586000LL * 1000000);
    check_us("2016-12-31T23:59:60Z", 1483228799LL * 1000000); /* a leap second reads as :59 */
    check_refused("1970-01-01T00:00:00");
    check_refused("1970-01-01T00:00:00.Z");
    check_refused("1970-01-01T00:00:00.1234567890Z");
    check_refused("1970-01-01 00:00:00Z");
    check_refused("1970-01-01T24:00:00Z");
    check_refused("1970-01-01T00:60:00Z");
    check_refused("1970-01-01T00:00:61Z");
    check_refused("1970-01-01T00:00:00+24:00");
    check_refused("1970-01-01T00:00:00Zjunk");
}

static void test_parse_checks_the_day_against_its_month(void **state)
{
    (void)state;
    /* The last day of every month is accepted, the day after it refused. */
    static const char *const last[] = {"2023-01-31", "2023-02-28", "2023-03-31", "2023-04-30",
                                       "2023-05-31", "2023-06-30", "2023-07-31", "2023-08-31",
                                       "2023-09-30", "2023-10-31", "2023-11-30", "2023-12-31"};
    static const char *const after[] = {"2023-01-32", "2023-02-29", "2023-03-32", "2023-04-31",
                                        "2023-05-32", "2023-06-31", "2023-07-32", "2023-08-32",
                                        "2023-09-31", "2023-10-32", "2023-11-31", "2023-12-32"};
    for (size_t i = 0; i < 12; i++) {
        char s[32];
        int64_t us;
        memcpy(s, last[i], 10);
        memcpy(s + 10, "T12:00:00Z", 11);
        assert_int_equal(parse(s, &us), 0);
        memcpy(s, after[i], 10);
        check_refused(s);
    }
    /* 29 February only in leap years: every 4th, not every 100th, but every 400th. */
    check_us("2024-02-29T00:00:00Z", 1709164800LL * 1000000);
    check_us("2000-02-29T00:00:00Z", 951782400LL * 1000000);
    check_refused("2023-02-29T00:00:00Z");
    check_refused("1900-02-29T00:00:00Z");
    check_refused("2100-02-29T00:00:00Z");
    check_refused("2024-02-30T00:00:00Z");
    check_refused("2024-02-31T00:00:00Z");
    check_refused("2024-00-10T00:00:00Z");
    check_refused("2024-13-10T00:00:00Z");
    check_refused("2024-01-00T00:00:00Z");
}

static void test_fake_clock_moves_both_clocks_by_hand(void **state)
{
    (void)state;
    fake_clock_install();
    int64_t mono = pins_time_mono_ns(), wall = pins_time_now_us();
    assert_int_equal(pins_time_mono_ns(), mono); /* stands still */
    fake_clock_advance_ms(1500);
    assert_int_equal(pins_time_mono_ns() - mono, 1500000000);
    assert_int_equal(pins_time_now_us() - wall, 1500000);
    fake_clock_uninstall();
    assert_true(pins_time_now_us() > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_reads_offsets_and_fractions),
        cmocka_unit_test(test_parse_checks_the_day_against_its_month),
        cmocka_unit_test(test_fake_clock_moves_both_clocks_by_hand),
    };
    return cmocka_run_group_tests_name("common/timeutil", tests, NULL, NULL);
}
