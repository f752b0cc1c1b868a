/* common/base64.c: base64 with table lookups (one per character, in both directions). */
#include "common/base64.h"

#include <stdbool.h>

#include "common/error.h"

/* Decoding tables hold value + 1, so that 0 marks a foreign character. */
#define B64_62                                                                                     \
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8,        \
    ['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, \
    ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23,            \
    ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30,            \
    ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37,            \
    ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44,            \
    ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49, ['x'] = 50, ['y'] = 51,            \
    ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57, ['5'] = 58,            \
    ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62

static const uint8_t dec_std[256] = {B64_62, ['+'] = 63, ['/'] = 64};
static const uint8_t dec_url[256] = {B64_62, ['-'] = 63, ['_'] = 64};
static const uint8_t dec_mixed[256] = {B64_62, ['+'] = 63, ['/'] = 64, ['-'] = 63, ['_'] = 64};

static const char enc_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char enc_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t pins_base64_encoded_len(size_t n, unsigned flags)
{
    if (flags & PINS_BASE64_PAD)
        return (n + 2) / 3 * 4;
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

size_t pins_base64_encode(const void *in, size_t n, unsigned flags, char *out)
{
    const char *alpha = flags & PINS_BASE64_URL ? enc_url : enc_std;
    const uint8_t *p = in;
    size_t o = 0, i = 0;
    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = alpha[v >> 18];
        out[o++] = alpha[(v >> 12) & 63];
        out[o++] = alpha[(v >> 6) & 63];
        out[o++] = alpha[v & 63];
    }
    if (i < n) {
        bool two = n - i == 2;
        uint32_t v = (uint32_t)p[i] << 16 | (two ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = alpha[v >> 18];
        out[o++] = alpha[(v >> 12) & 63];
        if (two)
            out[o++] = alpha[(v >> 6) & 63];
        if (flags & PINS_BASE64_PAD) {
            if (!two)
                out[o++] = '=';
            out[o++] = '=';
        }
    }
    out[o] = '\0';
    return o;
}

int pins_base64_decode(const char *in, size_t len, unsigned flags, uint8_t *out, size_t *pn)
{
    const uint8_t *dec = flags & PINS_BASE64_MIXED ? dec_mixed
                         : flags & PINS_BASE64_URL ? dec_url
                                                   : dec_std;
    const unsigned char *s = (const unsigned char *)in;
    if ((flags & PINS_BASE64_PAD) && len % 4 == 0 && len >= 2 && s[len - 1] == '=')
        len -= s[len - 2] == '=' ? 2 : 1;
    if (len % 4 == 1) {
        if (!(flags & PINS_BASE64_LOOSE_TAIL) || dec[s[len - 1]] == 0)
            return PINS_EINVALID_ARGUMENT;
        len--; /* six bits that complete no byte */
    }
    size_t o = 0, i = 0;
    for (; len - i >= 4; i += 4) {
        uint32_t a = dec[s[i]], b = dec[s[i + 1]], c = dec[s[i + 2]], d = dec[s[i + 3]];
        if (a == 0 || b == 0 || c == 0 || d == 0)
            return PINS_EINVALID_ARGUMENT;
        uint32_t v = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6 | (d - 1);
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    if (i < len) { /* 2 or 3 characters: 1 or 2 bytes, and 4 or 2 leftover bits */
        uint32_t a = dec[s[i]], b = dec[s[i + 1]], c = len - i == 3 ? dec[s[i + 2]] : 1;
        if (a == 0 || b == 0 || c == 0)
            return PINS_EINVALID_ARGUMENT;
        uint32_t v = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6;
        out[o++] = (uint8_t)(v >> 16);
        uint32_t rest = v & 0xffff;
        if (len - i == 3) {
            out[o++] = (uint8_t)(v >> 8);
            rest = v & 0xff;
        }
        if ((flags & PINS_BASE64_CANONICAL) && rest != 0)
            return PINS_EINVALID_ARGUMENT;
    }
    *pn = o;
    return 0;
}
