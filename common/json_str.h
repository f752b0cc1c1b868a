/* common/json_str.h: the one JSON string writer (RFC 8259 section 7).
 *
 * Output rules, the same in both functions: the string is written in double quotes; '"' and '\'
 * are escaped with a backslash; the control characters below U+0020 are escaped, \b \f \n \r \t in
 * their short forms and every other one as \u00XX with lower-case hex digits; everything else
 * (DEL, '/', valid non-ASCII UTF-8) is copied as it is. The two functions differ only in what
 * they do with bytes that do not start a valid UTF-8 sequence (pins_utf8_seq: overlong forms,
 * surrogates, values above U+10FFFF, stray continuation bytes, cut sequences):
 *   - pins_json_str_put replaces each such byte with the escape \ufffd (U+FFFD, the replacement
 *     character) and goes on, so that any bytes make a line that parses (logs);
 *   - pins_json_str_put_strict refuses the string (values that must round-trip, such as a pin's
 *     Struct).
 *
 * Both are all-or-nothing: on failure b's content is as it was before the call.
 */
#ifndef PINS_COMMON_JSON_STR_H
#define PINS_COMMON_JSON_STR_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* n for a NUL-terminated s (as SQLite's negative lengths): saves the caller a strlen pass. */
#define PINS_JSON_STR_NUL SIZE_MAX

/* Appends s[0..n) (borrowed; may hold NUL bytes, written as \u0000), or the NUL-terminated s when
 * n is PINS_JSON_STR_NUL, to b as a quoted JSON string, invalid UTF-8 replaced. Returns 0,
 * PINS_ETOO_LARGE or PINS_ENOMEM (from b). */
int pins_json_str_put(pins_buf *b, const char *s, size_t n);

/* As pins_json_str_put, but s must be valid UTF-8. Returns 0, PINS_EINVALID_ARGUMENT when it is
 * not, PINS_ETOO_LARGE or PINS_ENOMEM. */
int pins_json_str_put_strict(pins_buf *b, const char *s, size_t n);

#endif
