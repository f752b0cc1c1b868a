/* common/timeutil.h: clocks and RFC 3339 timestamps. */
#ifndef PINS_COMMON_TIMEUTIL_H
#define PINS_COMMON_TIMEUTIL_H

#include <stddef.h>
#include <stdint.h>

#define PINS_TIME_RFC3339_LEN 32

/* The clock every time-dependent module reads: the breaker, the rate limiter, both stores, the
 * call and connection timers. A test replaces it (pins_clock_set) to move time without sleeping.
 * Both functions must be safe to call from any thread. */
typedef struct pins_clock {
    int64_t (*now_us)(void *arg);  /* wall clock, microseconds since the Unix epoch */
    int64_t (*mono_ns)(void *arg); /* monotonic, nanoseconds */
    void *arg;
} pins_clock;
/* Makes c (borrowed until the next call) the process's clock; NULL restores the system clock.
 * Call it before other threads read the clock (tests do, before they start anything). */
void pins_clock_set(const pins_clock *c);

/* Wall clock, microseconds since the Unix epoch (the clock set by pins_clock_set). */
int64_t pins_time_now_us(void);
/* Monotonic clock, nanoseconds (the clock set by pins_clock_set). */
int64_t pins_time_mono_ns(void);
/* Formats us as "2026-11-27T23:53:22.123456Z" into buf (at least PINS_TIME_RFC3339_LEN bytes).
 * Returns the length written. */
size_t pins_time_format_us(int64_t us, char *buf);
/* Parses an RFC 3339 timestamp (any offset, fraction up to nanoseconds, truncated to
 * microseconds). The day must exist in its month (no 31 April, 29 February only in leap years);
 * second 60 (a leap second) reads as 59. Returns 0 or PINS_EINVALID_ARGUMENT (*pus untouched). */
int pins_time_parse_us(const char *s, size_t len, int64_t *pus);

#endif
