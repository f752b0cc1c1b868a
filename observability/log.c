/* observability/log.c: one line per event, built in memory and written with one write(2).
 *
 * A line is built in a pins_buf (common/buf.h), usually in one allocation. If memory fails, or the
 * line would exceed LINE_MAX_BYTES, a short line built on the stack says that the event was
 * dropped instead; a log call never fails. JSON strings are written by pins_json_str_put
 * (common/json_str.h): escaped per RFC 8259, invalid UTF-8 replaced by U+FFFD, so every line
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

#include "common/buf.h"
#include "common/json_str.h"

/* The longest line written. Every value a line carries is bounded where it comes from: the
 * longest are peer-chosen strings from request headers (a JWT subject, a request id), which the
 * transports cap at 64 KiB per request and which JSON escaping grows at most sixfold (\u00XX), and
 * the error texts of Redis and libpq. 4 MiB is ten times the largest line that allows, so no line
 * that was written before the buffer had a maximum is dropped now. */
#define LINE_MAX_BYTES (4u << 20)
/* Enough for almost every line in one allocation. */
#define LINE_RESERVE 1024

/* A line under construction: the first failed append sticks, and the line is dropped. */
struct line {
    pins_buf b;
    int rv;
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
    if (l->rv == 0)
        l->rv = pins_buf_add(&l->b, s, n);
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void putc_(struct line *l, char c)
{
    if (l->rv == 0)
        l->rv = pins_buf_add_byte(&l->b, c);
}

static void put_json_string(struct line *l, const char *s)
{
    if (l->rv == 0)
        l->rv = pins_json_str_put(&l->b, s, strlen(s));
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

/* RFC 3339 UTC with microseconds: 2024-05-01T12:00:00.123456Z. Returns the length. */
static size_t format_timestamp(char out[40])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06ldZ", ts.tv_nsec / 1000);
    return strlen(out);
}

static void put_timestamp(struct line *l)
{
    char out[40];
    put(l, out, format_timestamp(out));
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

/* The line that replaces one that could not be built: short enough for the stack. */
static void write_dropped(bool json, int why)
{
    const char *reason = why == PINS_ETOO_LARGE ? "longer than 4 MiB" : "out of memory";
    char out[160];
    size_t n = 0;
    if (json) {
        n = (size_t)snprintf(out, sizeof(out), "{\"ts\":\"");
        n += format_timestamp(out + n);
        n += (size_t)snprintf(out + n, sizeof(out) - n,
                              "\",\"level\":\"error\",\"msg\":\"log line dropped: %s\"}\n", reason);
    } else {
        n = format_timestamp(out);
        n += (size_t)snprintf(out + n, sizeof(out) - n, " error log line dropped: %s\n", reason);
    }
    write_all(out, n);
}

void pins_log(pins_log_level level, const char *msg, ...)
{
    if (!pins_log_enabled(level))
        return;
    int saved_errno = errno;
    struct line l = {.rv = 0};
    pins_buf_init(&l.b, LINE_MAX_BYTES);
    l.rv = pins_buf_reserve(&l.b, LINE_RESERVE);
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

    if (json)
        putc_(&l, '}');
    putc_(&l, '\n');
    if (l.rv == 0)
        write_all(pins_buf_ptr(&l.b), pins_buf_len(&l.b));
    else
        write_dropped(json, l.rv); /* a log call never fails */
    pins_buf_free(&l.b);
    errno = saved_errno;
}
