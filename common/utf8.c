/* common/utf8.c: strict UTF-8 checks shared by the wire pre-check and the validation rules. */
#include "common/utf8.h"

#include <stdint.h>

long pins_utf8_count(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    long n = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= len || (s[i + 1] & 0xc0) != 0x80)
                return -1;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
                return -1;
            if (c == 0xe0 && s[i + 1] < 0xa0) /* overlong */
                return -1;
            if (c == 0xed && s[i + 1] >= 0xa0) /* surrogates */
                return -1;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 ||
                (s[i + 3] & 0xc0) != 0x80)
                return -1;
            if (c == 0xf0 && s[i + 1] < 0x90) /* overlong */
                return -1;
            if (c == 0xf4 && s[i + 1] >= 0x90) /* over U+10FFFF */
                return -1;
            i += 4;
        } else {
            return -1;
        }
        n++;
    }
    return n;
}

bool pins_utf8_has_control(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return true;
        /* C1 controls U+0080..U+009F are encoded as C2 80..C2 9F. */
        if (s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return true;
    }
    return false;
}

size_t pins_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    uint32_t cp = c & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}
