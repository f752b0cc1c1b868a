/* common/fmt.h: decimal numbers without printf, for the paths every call takes (a response's
 * numbers and timestamps, rate-limit values). */
#ifndef PINS_COMMON_FMT_H
#define PINS_COMMON_FMT_H

#include <stdint.h>

/* Room for any int64 or uint64 in decimal, sign and NUL included. */
#define PINS_FMT_INT_MAX 22

/* Writes v in decimal at p (PINS_FMT_INT_MAX bytes of room), NUL-terminated. Returns the end
 * (where the NUL is). */
char *pins_fmt_i64(char *p, int64_t v);
char *pins_fmt_u64(char *p, uint64_t v);
/* Writes the width lowest decimal digits of v, zero-padded (v mod 10^width), without a NUL.
 * Returns the end. */
char *pins_fmt_digits(char *p, uint64_t v, int width);

#endif
