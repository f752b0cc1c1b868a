/* common/utf8.h: strict UTF-8. */
#ifndef PINS_COMMON_UTF8_H
#define PINS_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Number of code points of s[0..len) if it is valid UTF-8 (no overlongs, surrogates or values
 * over U+10FFFF; NUL counts as a character), or -1. */
long pins_utf8_count(const char *s, size_t len);
/* Length (1..4) of the valid UTF-8 sequence starting at s[0..n), or 0 when it is not valid
 * (overlong, surrogate, over U+10FFFF, cut short). n >= 1. */
size_t pins_utf8_seq(const unsigned char *s, size_t n);
/* True when s[0..len) (valid UTF-8) holds a C0 or C1 control character or DEL. */
bool pins_utf8_has_control(const char *s, size_t len);

#endif
