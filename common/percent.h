/* common/percent.h: percent-decoding (RFC 3986 section 2.1), for URL paths, query strings and
 * form bodies (the REST routes) and the user and password of REDIS_URL.
 *
 * Strict: a '%' must be followed by two hex digits (either case), else the text is refused; every
 * other byte is copied as it is (no check that it was allowed unencoded). Decoding never makes a
 * text longer, so out may be s itself.
 *
 * Flags, or-ed:
 *   PINS_PERCENT_PLUS_SPACE  '+' decodes to a space (application/x-www-form-urlencoded, query
 *                            strings); without it '+' stays '+' (paths, URLs' userinfo).
 *   PINS_PERCENT_NO_NUL      %00 is refused, for results used as C strings. Without it the
 *                            result may hold NUL bytes: use the length, not strlen.
 */
#ifndef PINS_COMMON_PERCENT_H
#define PINS_COMMON_PERCENT_H

#include <stddef.h>

#include "common/arena.h"

enum {
    PINS_PERCENT_PLUS_SPACE = 1u << 0,
    PINS_PERCENT_NO_NUL = 1u << 1,
};

/* Decodes s[0..len) into out (room for len + 1 bytes; may be s), NUL-terminates it and sets
 * *pn to the decoded length. Returns 0, or PINS_EMALFORMED for a bad escape (out then holds a
 * part, *pn is untouched). */
int pins_percent_decode(const char *s, size_t len, unsigned flags, char *out, size_t *pn);

/* As pins_percent_decode, into a new NUL-terminated string in a (*pout, *pn). Returns 0,
 * PINS_EMALFORMED or PINS_ENOMEM; the out-parameters are untouched on failure. */
int pins_percent_decode_arena(pins_arena *a, const char *s, size_t len, unsigned flags, char **pout,
                              size_t *pn);

#endif
