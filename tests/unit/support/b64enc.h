/* tests/unit/support/b64enc.h: base64 for the tests and fuzzers that build their input
 * independently of common/base64.c: the standard alphabet with '=' padding (gRPC-Web text), or
 * the URL-safe one without padding (JWT). The fuzzers include it by its relative path.
 *
 * static inline, so that each program includes it without warnings.
 */
#ifndef PINS_TESTS_B64ENC_H
#define PINS_TESTS_B64ENC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Encodes in[0..n) into out ((n + 2) / 3 * 4 + 1 bytes), NUL-terminated: URL-safe and unpadded
 * when url, else standard and padded. Returns the length (without the NUL). */
static inline size_t b64enc(const void *in, size_t n, bool url, char *out)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char safe[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *abc = url ? safe : std;
    const uint8_t *p = in;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = abc[(v >> 6) & 63];
        else if (!url)
            out[o++] = '=';
        if (i + 2 < n)
            out[o++] = abc[v & 63];
        else if (!url)
            out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

#endif
