/* common/json_str.c: JSON string escaping.
 *
 * Bytes that need nothing are copied in runs, found with a table, so printable ASCII costs a load
 * and a comparison a byte and one append a run; pins_utf8_seq runs once per non-ASCII sequence.
 */
#include "common/json_str.h"

#include <stdbool.h>
#include <string.h>

#include "common/utf8.h"

/* 1 for the bytes that cannot be copied as they are: controls, '"', '\\', and every non-ASCII byte
 * (checked as UTF-8). */
static const unsigned char special[256] = {
    [0x00 ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
    [0x80 ... 0xff] = 1,
};

/* Inlined into each entry point, so that cstr (s is NUL-terminated, end unknown) is a constant
 * and the scan of a C string needs no bound: its NUL is a special byte. */
static inline __attribute__((always_inline)) int put(pins_buf *b, const char *str, size_t n,
                                                     bool strict, bool cstr)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = pins_buf_len(b);
    const unsigned char *p = (const unsigned char *)str, *run = p;
    const unsigned char *end = cstr ? NULL : p + n;
    int rv = pins_buf_add_byte(b, '"');
    if (rv != 0)
        return rv;
    for (;;) {
        if (cstr) {
            while (!special[*p])
                p++;
            if (*p == '\0')
                break;
        } else {
            while (p < end && !special[*p])
                p++;
            if (p == end)
                break;
        }
        unsigned c = *p;
        if (c >= 0x80) {
            /* A C string may claim 4 bytes: its NUL is no continuation byte and stops the check. */
            size_t k = pins_utf8_seq(p, cstr ? 4 : (size_t)(end - p));
            if (k != 0) {
                p += k;
                continue;
            }
            if (strict) {
                rv = PINS_EINVALID_ARGUMENT;
                break;
            }
        }
        if (p > run) {
            rv = pins_buf_add(b, run, (size_t)(p - run));
            if (rv != 0)
                break;
        }
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t len = 2;
        if (c == '\b') {
            esc[1] = 'b';
        } else if (c == '\f') {
            esc[1] = 'f';
        } else if (c == '\n') {
            esc[1] = 'n';
        } else if (c == '\r') {
            esc[1] = 'r';
        } else if (c == '\t') {
            esc[1] = 't';
        } else if (c < 0x20) {
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        } else if (c >= 0x80) { /* a byte that starts no valid sequence: U+FFFD */
            memcpy(esc, "\\ufffd", 6);
            len = 6;
        }
        rv = pins_buf_add(b, esc, len);
        if (rv != 0)
            break;
        run = ++p;
    }
    if (rv == 0 && p > run)
        rv = pins_buf_add(b, run, (size_t)(p - run));
    if (rv == 0)
        rv = pins_buf_add_byte(b, '"');
    if (rv != 0)
        pins_buf_setlen(b, start);
    return rv;
}

int pins_json_str_put(pins_buf *b, const char *s, size_t n)
{
    if (n == PINS_JSON_STR_NUL)
        return put(b, s, 0, false, true);
    return put(b, s, n, false, false);
}

int pins_json_str_put_strict(pins_buf *b, const char *s, size_t n)
{
    if (n == PINS_JSON_STR_NUL)
        return put(b, s, 0, true, true);
    return put(b, s, n, true, false);
}
