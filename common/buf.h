/* common/buf.h: the one growable byte buffer, bounded by a maximum the caller must give (as curl's
 * dynbuf).
 *
 * Every text pinsd builds in memory and does not place in a call's arena goes through a pins_buf:
 * log lines, the metrics exposition, the JSON text of a pin's value. The maximum is part of the
 * contract, not a hint: a buffer a peer can grow meets PINS_ETOO_LARGE long before malloc fails
 * (STYLE rule 15). Pick it from what the content can legitimately reach and say why where you
 * call pins_buf_init().
 *
 * The content is always followed by a NUL (not counted in the length), so it can be used as a C
 * string once the buffer has allocated. The allocation holds at most max + 1 bytes.
 *
 * Failure leaves the buffer as it was: an append that does not fit or cannot allocate adds
 * nothing (never a part), and the content so far stays valid and owned by the buffer. (curl frees
 * the buffer instead; here a caller may still write what it has, or reset and write something
 * shorter.) Errors: PINS_ETOO_LARGE when the content would exceed the maximum, PINS_ENOMEM when
 * malloc fails below it. Callers map PINS_ETOO_LARGE to the status their layer needs.
 *
 * The first failure also sticks (pins_buf_error), for builders that append many pieces and check
 * once at the end (a log line, the metrics exposition). Appends after a failure still run, so such
 * a builder must discard the content when pins_buf_error() is not 0.
 *
 * The fields are public only so that the append fast paths can be inline (they run per token
 * when a pin's value is written as JSON); read and change them only through these functions.
 * A buffer is used by one thread at a time.
 */
#ifndef PINS_COMMON_BUF_H
#define PINS_COMMON_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include "common/error.h"

typedef struct pins_buf {
    char *p;    /* NULL until the first allocation; then malloc'd, content + NUL */
    size_t len; /* content bytes, without the NUL */
    size_t cap; /* bytes allocated at p (content + NUL fit while len < cap); at most max + 1 */
    size_t max; /* the most content bytes the buffer may hold */
    int err;    /* the first failed append's error, 0 while none failed */
} pins_buf;

/* Makes b an empty buffer whose content may grow to max bytes (SIZE_MAX: only memory bounds it;
 * use that only where the producer, not a peer, decides the size). Allocates nothing, cannot
 * fail. */
void pins_buf_init(pins_buf *b, size_t max);

/* Frees b's memory; b is empty again, without error, and keeps its maximum, so it may be reused. */
void pins_buf_free(pins_buf *b);

/* Empties b (and clears its error) but keeps its allocation for the next content. */
void pins_buf_reset(pins_buf *b);

/* Out-of-line part of the appends below; not for direct use. */
int pins_buf__add_slow(pins_buf *b, const void *p, size_t n);

/* Appends n bytes of p (borrowed; may be NULL when n is 0). Returns 0, PINS_ETOO_LARGE or
 * PINS_ENOMEM; on failure nothing was appended. */
static inline int pins_buf_add(pins_buf *b, const void *p, size_t n)
{
    size_t len = b->len;
    char *d = b->p; /* locals: the copy cannot make the compiler reload them */
    if (n < b->cap - len) {
        memcpy(d + len, p, n);
        len += n;
        d[len] = '\0';
        b->len = len;
        return 0;
    }
    return pins_buf__add_slow(b, p, n);
}

/* Appends the NUL-terminated s (without its NUL). Returns as pins_buf_add(). */
static inline int pins_buf_add_str(pins_buf *b, const char *s)
{
    return pins_buf_add(b, s, strlen(s));
}

/* Appends one byte (which may be NUL). Returns as pins_buf_add(). */
static inline int pins_buf_add_byte(pins_buf *b, char c)
{
    size_t len = b->len;
    char *d = b->p;
    if (b->cap - len > 1) {
        d[len] = c;
        d[len + 1] = '\0';
        b->len = len + 1;
        return 0;
    }
    return pins_buf__add_slow(b, &c, 1);
}

/* Appends printf-style output. Not for per-request paths (snprintf costs thousands of
 * instructions; common/fmt.h formats integers without it). Returns as pins_buf_add(), or
 * PINS_EINVALID_ARGUMENT when the format itself fails. */
int pins_buf_addf(pins_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int pins_buf_vaddf(pins_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Makes room for n more content bytes now, so that appends up to that size cannot fail. Returns
 * 0, PINS_ETOO_LARGE or PINS_ENOMEM; the content is unchanged either way. */
int pins_buf_reserve(pins_buf *b, size_t n);

/* The content, NUL-terminated; NULL while nothing was ever allocated (then the length is 0).
 * Borrowed: valid until the next call that changes b. */
static inline char *pins_buf_ptr(const pins_buf *b)
{
    return b->p;
}

/* Content length in bytes, without the NUL. */
static inline size_t pins_buf_len(const pins_buf *b)
{
    return b->len;
}

/* The error of the first append or reserve that failed since init, reset, free or take, or 0. */
static inline int pins_buf_error(const pins_buf *b)
{
    return b->err;
}

/* Cuts the content to its first len bytes (len <= the length; larger values change nothing). */
void pins_buf_setlen(pins_buf *b, size_t len);

/* Takes the content out of b: a NUL-terminated malloc'd block the caller frees with free(), and
 * *plen (may be NULL) its length. NULL (and 0) when b never allocated. b is empty afterwards,
 * without error, and keeps its maximum. */
char *pins_buf_take(pins_buf *b, size_t *plen);

#endif
