/* common/percent.c: percent-decoding. */
#include "common/percent.h"

#include "common/error.h"

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int pins_percent_decode(const char *s, size_t len, unsigned flags, char *out, size_t *pn)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = i + 2 < len ? hex_value((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < len ? hex_value((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || ((flags & PINS_PERCENT_NO_NUL) && hi == 0 && lo == 0))
                return PINS_EMALFORMED;
            c = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && (flags & PINS_PERCENT_PLUS_SPACE)) {
            c = ' ';
        }
        out[o++] = c;
    }
    out[o] = '\0';
    *pn = o;
    return 0;
}

int pins_percent_decode_arena(pins_arena *a, const char *s, size_t len, unsigned flags, char **pout,
                              size_t *pn)
{
    char *out = pins_arena_alloc(a, len + 1);
    if (out == NULL)
        return PINS_ENOMEM;
    size_t n = 0;
    int rv = pins_percent_decode(s, len, flags, out, &n);
    if (rv != 0)
        return rv;
    *pout = out;
    *pn = n;
    return 0;
}
