/* tests/unit/support/fake_clock.h: a clock the test moves by hand (common/timeutil.h).
 *
 * fake_clock_install() makes the process read a clock that stands still until the test calls
 * fake_clock_advance_ms() (both the monotonic and the wall clock move together), so that the
 * breaker's cool-down, the rate limiter's refill, cache and lease expiry and the stores' deadlines
 * are tested without sleeping. fake_clock_uninstall() restores the system clock. Install before
 * any thread that reads the clock starts; the fake's time is read atomically, so a test may
 * advance it while a store thread reads it.
 */
#ifndef PINS_TESTS_FAKE_CLOCK_H
#define PINS_TESTS_FAKE_CLOCK_H

#include <stdint.h>

/* Starts the fake clock at the system clock's current values. */
void fake_clock_install(void);
/* Moves both clocks forward by ms milliseconds. */
void fake_clock_advance_ms(int64_t ms);
/* Moves both clocks forward by ns nanoseconds. */
void fake_clock_advance_ns(int64_t ns);
/* Back to the system clock. */
void fake_clock_uninstall(void);

#endif
