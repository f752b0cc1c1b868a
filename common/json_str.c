/* common/json_str.c: JSON string escaping.
 *
 * Bytes that need nothing are copied in runs, so printable ASCII costs one comparison a byte and
 * one append a run; pins_utf8_seq runs once per non-ASCII sequence.
 */
#include "common/json_str.h"

#include <stdbool.h>
#include <string.h>

#include "common/utf8.h"

static int put(pins_buf *b, const char *str, size_t n, bool strict)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = pins_buf_len(b);
    const unsigned char *p = (const unsigned char *)str, *end = p + n, *run = p;
    int rv = pins_buf_add_byte(b, '"');
    while (rv == 0 && p < end) {
        unsigned c = *p;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            p++;
            continue;
        }
        size_t k = 0;
        if (c >= 0x80) {
            k = pins_utf8_seq(p, (size_t)(end - p));
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
    return put(b, s, n, false);
}

int pins_json_str_put_strict(pins_buf *b, const char *s, size_t n)
{
    return put(b, s, n, true);
}
