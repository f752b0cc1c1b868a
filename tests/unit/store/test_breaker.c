/* tests/unit/store/test_breaker.c: the store circuit breaker (store/breaker.c), on the fake clock:
 * its rolling minute, the open -> half-open cool-down and the probe's verdicts, without sleeping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/error.h"
#include "fake_clock.h"
#include "store/breaker.h"

#define LIMIT     3  /* errors per minute tolerated */
#define OPEN_SECS 30 /* the cool-down */

static int setup(void **state)
{
    fake_clock_install();
    store_breaker_configure(LIMIT, OPEN_SECS);
    return 0;
}

static int teardown(void **state)
{
    fake_clock_uninstall();
    return 0;
}

/* Records LIMIT + 1 store errors: one more than tolerated, so the breaker opens. */
static void trip(void)
{
    for (int i = 0; i <= LIMIT; i++) {
        assert_true(store_breaker_allow());
        store_breaker_record(PINS_ESTORE);
    }
    assert_int_equal(store_breaker_get(), STORE_BREAKER_OPEN);
}

static void test_breaker_opens_past_the_errors_per_minute(void **state)
{
    for (int i = 0; i < LIMIT; i++)
        store_breaker_record(PINS_ESTORE);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_CLOSED);
    assert_int_equal(store_breaker_errors_last_minute(), LIMIT);
    store_breaker_record(PINS_ESTORE);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_OPEN);
    assert_false(store_breaker_allow());
}

static void test_breaker_forgets_errors_older_than_a_minute(void **state)
{
    for (int i = 0; i < LIMIT; i++)
        store_breaker_record(PINS_ESTORE);
    fake_clock_advance_ms(60000);
    assert_int_equal(store_breaker_errors_last_minute(), 0);
    for (int i = 0; i < LIMIT; i++)
        store_breaker_record(PINS_ESTORE);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_CLOSED);
    assert_int_equal(store_breaker_errors_last_minute(), LIMIT);
}

static void test_breaker_lets_one_probe_through_after_the_cool_down(void **state)
{
    trip();
    fake_clock_advance_ms(OPEN_SECS * 1000 - 1);
    assert_false(store_breaker_allow());
    assert_int_equal(store_breaker_get(), STORE_BREAKER_OPEN);
    fake_clock_advance_ms(1);
    assert_true(store_breaker_allow()); /* the probe */
    assert_int_equal(store_breaker_get(), STORE_BREAKER_HALF_OPEN);
    assert_false(store_breaker_allow());   /* one probe at a time */
    store_breaker_record(PINS_ENOT_FOUND); /* the store answered */
    assert_int_equal(store_breaker_get(), STORE_BREAKER_CLOSED);
    assert_true(store_breaker_allow());
    assert_int_equal(store_breaker_errors_last_minute(), 0);
}

static void test_breaker_reopens_when_the_probe_fails(void **state)
{
    trip();
    fake_clock_advance_ms(OPEN_SECS * 1000);
    assert_true(store_breaker_allow());
    store_breaker_record(PINS_EDEADLINE_EXCEEDED);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_OPEN);
    fake_clock_advance_ms(OPEN_SECS * 1000 - 1); /* a new cool-down from the failed probe */
    assert_false(store_breaker_allow());
    fake_clock_advance_ms(1);
    assert_true(store_breaker_allow());
    store_breaker_record(PINS_ESTORE);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_OPEN);
}

static void test_breaker_lets_another_probe_when_one_gives_no_verdict(void **state)
{
    trip();
    fake_clock_advance_ms(OPEN_SECS * 1000);
    assert_true(store_breaker_allow());
    store_breaker_record(PINS_EINVALID_ARGUMENT); /* says nothing about the store */
    assert_int_equal(store_breaker_get(), STORE_BREAKER_HALF_OPEN);
    assert_false(store_breaker_allow());
    fake_clock_advance_ms(OPEN_SECS * 1000 - 1);
    assert_false(store_breaker_allow());
    fake_clock_advance_ms(1);
    assert_true(store_breaker_allow()); /* the first probe never reported: another may try */
    store_breaker_record(0);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_CLOSED);
}

static void test_breaker_probes_at_once_when_the_store_is_back(void **state)
{
    store_breaker_store_back(); /* closed: nothing to cut short */
    assert_int_equal(store_breaker_get(), STORE_BREAKER_CLOSED);
    trip();
    fake_clock_advance_ms(1000);
    assert_false(store_breaker_allow());
    store_breaker_store_back(); /* e.g. a reconnect to a promoted standby */
    assert_true(store_breaker_allow());
    assert_int_equal(store_breaker_get(), STORE_BREAKER_HALF_OPEN);
    assert_false(store_breaker_allow()); /* one probe only */
    store_breaker_store_back();          /* half-open: no second probe either */
    assert_false(store_breaker_allow());
    store_breaker_record(PINS_ESTORE); /* the probe failed: a full cool-down again */
    assert_int_equal(store_breaker_get(), STORE_BREAKER_OPEN);
    fake_clock_advance_ms(OPEN_SECS * 1000 - 1);
    assert_false(store_breaker_allow());
    store_breaker_store_back();
    assert_true(store_breaker_allow());
    store_breaker_record(0);
    assert_int_equal(store_breaker_get(), STORE_BREAKER_CLOSED);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_breaker_opens_past_the_errors_per_minute),
        T(test_breaker_forgets_errors_older_than_a_minute),
        T(test_breaker_lets_one_probe_through_after_the_cool_down),
        T(test_breaker_reopens_when_the_probe_fails),
        T(test_breaker_lets_another_probe_when_one_gives_no_verdict),
        T(test_breaker_probes_at_once_when_the_store_is_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
