/* common/buf.c: growing a pins_buf.
 *
 * The capacity doubles from MIN_CAP and is clamped to max + 1, so a buffer near its maximum never
 * holds more than the maximum allows and the limit check is the one comparison in grow(). The
 * allocation is only replaced once realloc succeeded, which is what keeps the buffer valid when
 * it fails.
 */
#include "common/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MIN_CAP 256

/* The first error sticks. */
static int failed(pins_buf *b, int err)
{
    if (b->err == 0)
        b->err = err;
    return err;
}

/* Makes room for n more content bytes plus the NUL. */
static int grow(pins_buf *b, size_t n)
{
    if (n > b->max - b->len)
        return failed(b, PINS_ETOO_LARGE);
    size_t want = b->len + n + 1; /* no wrap: len + n <= max <= SIZE_MAX - 1 (pins_buf_init) */
    if (want <= b->cap)
        return 0;
    size_t cap = b->cap != 0 ? b->cap : MIN_CAP;
    while (cap < want && cap <= SIZE_MAX / 2)
        cap *= 2;
    if (cap < want)
        cap = want;
    if (cap - 1 > b->max)
        cap = b->max + 1;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return failed(b, PINS_ENOMEM);
    if (b->p == NULL)
        p[0] = '\0';
    b->p = p;
    b->cap = cap;
    return 0;
}

void pins_buf_init(pins_buf *b, size_t max)
{
    /* len + n + 1 must not wrap in grow(): the largest usable maximum is SIZE_MAX - 1. */
    *b = (pins_buf){.max = max == SIZE_MAX ? SIZE_MAX - 1 : max};
}

void pins_buf_free(pins_buf *b)
{
    free(b->p);
    *b = (pins_buf){.max = b->max};
}

void pins_buf_reset(pins_buf *b)
{
    b->len = 0;
    b->err = 0;
    if (b->p != NULL)
        b->p[0] = '\0';
}

int pins_buf__add_slow(pins_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int rv = grow(b, n);
    if (rv != 0)
        return rv;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int pins_buf_reserve(pins_buf *b, size_t n)
{
    return grow(b, n);
}

int pins_buf_vaddf(pins_buf *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    size_t room = b->cap - b->len; /* 0 before the first allocation */
    int n = vsnprintf(room != 0 ? b->p + b->len : NULL, room, fmt, ap);
    int rv = 0;
    if (n < 0) {
        rv = failed(b, PINS_EINVALID_ARGUMENT);
    } else if ((size_t)n < room) {
        b->len += (size_t)n; /* vsnprintf wrote the NUL */
    } else {
        rv = grow(b, (size_t)n);
        if (rv == 0) {
            vsnprintf(b->p + b->len, b->cap - b->len, fmt, again);
            b->len += (size_t)n;
        }
    }
    va_end(again);
    if (rv != 0 && b->p != NULL)
        b->p[b->len] = '\0'; /* a cut attempt may have overwritten the NUL */
    return rv;
}

int pins_buf_addf(pins_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rv = pins_buf_vaddf(b, fmt, ap);
    va_end(ap);
    return rv;
}

void pins_buf_setlen(pins_buf *b, size_t len)
{
    if (len < b->len) {
        b->len = len;
        b->p[len] = '\0';
    }
}

char *pins_buf_take(pins_buf *b, size_t *plen)
{
    char *p = b->p;
    if (plen != NULL)
        *plen = b->len;
    *b = (pins_buf){.max = b->max};
    return p;
}
