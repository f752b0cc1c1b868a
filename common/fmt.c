/* common/fmt.c: decimal numbers without printf (common/fmt.h). */
#include "common/fmt.h"

char *pins_fmt_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    *p = '\0';
    return p;
}

char *pins_fmt_i64(char *p, int64_t v)
{
    if (v < 0) {
        *p++ = '-';
        return pins_fmt_u64(p, 0 - (uint64_t)v);
    }
    return pins_fmt_u64(p, (uint64_t)v);
}

char *pins_fmt_digits(char *p, uint64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + (width > 0 ? width : 0);
}
