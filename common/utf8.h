/* common/utf8.h: strict UTF-8. */
#ifndef PINS_COMMON_UTF8_H
#define PINS_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Number of code points of s[0..len) if it is valid UTF-8 (no overlongs, surrogates or values
 * over U+10FFFF; NUL counts as a character), or -1. */
long pins_utf8_count(const char *s, size_t len);
/* True when s[0..len) (valid UTF-8) holds a C0 or C1 control character or DEL. */
bool pins_utf8_has_control(const char *s, size_t len);

#endif
