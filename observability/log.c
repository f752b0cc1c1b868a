/* observability/log.c: one line per event, built in memory and written with one write(2).
 *
 * Lines up to the stack buffer's size cost no allocation; longer ones grow on the heap. If the heap
 * fails, a short line saying the event was dropped is written instead; a log call never fails.
 * JSON strings are escaped per RFC 8259 and invalid UTF-8 is replaced by U+FFFD, so every line
 * parses. Text values are quoted when they hold spaces, quotes, '=' or control characters.
 */
#include "observability/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STACK_LINE 2048

struct line {
    char *p;
    size_t len, cap;
    bool cut; /* out of memory: stop appending */
    char stack[STACK_LINE];
};

static pins_log_level min_level = PINS_LOG_INFO;
static pins_log_format log_format = PINS_LOG_JSON;

static const char *const level_names[] = {
    [PINS_LOG_DEBUG] = "debug",
    [PINS_LOG_INFO] = "info",
    [PINS_LOG_WARN] = "warn",
    [PINS_LOG_ERROR] = "error",
};

static void put(struct line *l, const char *s, size_t n)
{
    if (l->cut)
        return;
    if (l->cap - l->len < n + 1) {
        size_t ncap = l->cap * 2;
        while (ncap - l->len < n + 1)
            ncap *= 2;
        char *p = l->p == l->stack ? malloc(ncap) : realloc(l->p, ncap);
        if (p == NULL) {
            l->cut = true;
            return;
        }
        if (l->p == l->stack)
            memcpy(p, l->stack, l->len);
        l->p = p;
        l->cap = ncap;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void putc_(struct line *l, char c)
{
    put(l, &c, 1);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not valid. */
static size_t utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (s[0] >= 0xe0 && s[0] <= 0xef) {
        unsigned char lo = s[0] == 0xe0 ? 0xa0 : 0x80;
        unsigned char hi = s[0] == 0xed ? 0x9f : 0xbf;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        unsigned char lo = s[0] == 0xf0 ? 0x90 : 0x80;
        unsigned char hi = s[0] == 0xf4 ? 0x8f : 0xbf;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

static void put_json_string(struct line *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    putc_(l, '"');
    while (*p) {
        const char *esc = NULL;
        char u[7];
        switch (*p) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (*p < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[*p >> 4];
                u[5] = hex[*p & 0xf];
                u[6] = '\0';
                esc = u;
            }
            break;
        }
        if (esc != NULL) {
            puts_(l, esc);
            p++;
            continue;
        }
        size_t n = utf8_len(p);
        if (n == 0) {
            puts_(l, "\\ufffd");
            p++;
            continue;
        }
        put(l, (const char *)p, n);
        p += n;
    }
    putc_(l, '"');
}

static bool text_needs_quotes(const char *s)
{
    if (*s == '\0')
        return true;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            return true;
    }
    return false;
}

/* Text values: control characters escaped as in JSON so that a line stays one line. */
static void put_text(struct line *l, const char *s, bool quote)
{
    if (quote)
        putc_(l, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        if (*p == '\n') {
            puts_(l, "\\n");
        } else if (*p == '\r') {
            puts_(l, "\\r");
        } else if (*p == '\t') {
            puts_(l, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
            puts_(l, tmp);
        } else if (quote && (*p == '"' || *p == '\\')) {
            putc_(l, '\\');
            putc_(l, (char)*p);
        } else {
            putc_(l, (char)*p);
        }
    }
    if (quote)
        putc_(l, '"');
}

/* RFC 3339 UTC with microseconds: 2024-05-01T12:00:00.123456Z. */
static void put_timestamp(struct line *l)
{
    struct timespec ts;
    struct tm tm;
    char out[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, sizeof(out) - n, ".%06ldZ", ts.tv_nsec / 1000);
    puts_(l, out);
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void pins_log_setup(pins_log_level level, pins_log_format format)
{
    if (level >= PINS_LOG_DEBUG && level <= PINS_LOG_ERROR)
        min_level = level;
    if (format == PINS_LOG_JSON || format == PINS_LOG_TEXT)
        log_format = format;
}

int pins_log_enabled(pins_log_level level)
{
    return level >= min_level && level <= PINS_LOG_ERROR;
}

void pins_log(pins_log_level level, const char *msg, ...)
{
    if (!pins_log_enabled(level))
        return;
    int saved_errno = errno;
    struct line l = {.len = 0, .cap = STACK_LINE, .cut = false};
    l.p = l.stack;
    bool json = log_format == PINS_LOG_JSON;
    if (msg == NULL)
        msg = "";

    if (json) {
        puts_(&l, "{\"ts\":\"");
        put_timestamp(&l);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"msg\":");
        put_json_string(&l, msg);
    } else {
        put_timestamp(&l);
        putc_(&l, ' ');
        puts_(&l, level_names[level]);
        putc_(&l, ' ');
        put_text(&l, msg, false);
    }

    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (key == NULL)
            break;
        const char *value = va_arg(ap, const char *);
        if (json) {
            putc_(&l, ',');
            put_json_string(&l, key);
            putc_(&l, ':');
            if (value == NULL)
                puts_(&l, "null");
            else
                put_json_string(&l, value);
        } else {
            putc_(&l, ' ');
            put_text(&l, key, false);
            putc_(&l, '=');
            if (value == NULL)
                puts_(&l, "null");
            else
                put_text(&l, value, text_needs_quotes(value));
        }
    }
    va_end(ap);

    if (l.cut) {
        /* Out of memory: a short line in the stack buffer says so instead. */
        if (l.p != l.stack)
            free(l.p);
        l = (struct line){.len = 0, .cap = STACK_LINE, .cut = false};
        l.p = l.stack;
        if (json) {
            puts_(&l, "{\"ts\":\"");
            put_timestamp(&l);
            puts_(&l, "\",\"level\":\"error\",\"msg\":\"log line dropped: out of memory\"}");
        } else {
            put_timestamp(&l);
            puts_(&l, " error log line dropped: out of memory");
        }
    } else if (json) {
        putc_(&l, '}');
    }
    putc_(&l, '\n');
    write_all(l.p, l.len);
    if (l.p != l.stack)
        free(l.p);
    errno = saved_errno;
}
