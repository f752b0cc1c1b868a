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
#include <unistd.h>

#include "common/buf.h"
#include "common/json_str.h"
#include "common/timeutil.h"

/* The longest line written. Every value a line carries is bounded where it comes from: the
 * longest are peer-chosen strings from request headers (a JWT subject, a request id), which the
 * transports cap at 64 KiB per request and which JSON escaping grows at most sixfold (\u00XX), and
 * the error texts of Redis and libpq. 4 MiB is ten times the largest line that allows, so no line
 * that was written before the buffer had a maximum is dropped now. */
#define LINE_MAX_BYTES (4u << 20)
/* Enough for almost every line in one allocation. */
#define LINE_RESERVE 1024

static pins_log_level min_level = PINS_LOG_INFO;
static pins_log_format log_format = PINS_LOG_JSON;

static const char *const level_names[] = {
    [PINS_LOG_DEBUG] = "debug",
    [PINS_LOG_INFO] = "info",
    [PINS_LOG_WARN] = "warn",
    [PINS_LOG_ERROR] = "error",
};

static void put_json_string(pins_buf *b, const char *s)
{
    pins_json_str_put(b, s, PINS_JSON_STR_NUL);
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
static void put_text(pins_buf *b, const char *s, bool quote)
{
    if (quote)
        pins_buf_add_byte(b, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n') {
            pins_buf_add_str(b, "\\n");
        } else if (*p == '\r') {
            pins_buf_add_str(b, "\\r");
        } else if (*p == '\t') {
            pins_buf_add_str(b, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            pins_buf_addf(b, "\\x%02x", *p);
        } else if (quote && (*p == '"' || *p == '\\')) {
            pins_buf_add_byte(b, '\\');
            pins_buf_add_byte(b, (char)*p);
        } else {
            pins_buf_add_byte(b, (char)*p);
        }
    }
    if (quote)
        pins_buf_add_byte(b, '"');
}

/* RFC 3339 UTC with microseconds from the process's clock (common/timeutil.h, which a test may
 * replace): 2024-05-01T12:00:00.123456Z. Returns the length. */
static size_t format_timestamp(char out[PINS_TIME_RFC3339_LEN])
{
    return pins_time_format_us(pins_time_now_us(), out);
}

static void put_timestamp(pins_buf *b)
{
    char out[PINS_TIME_RFC3339_LEN];
    pins_buf_add(b, out, format_timestamp(out));
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
    pins_buf b;
    pins_buf_init(&b, LINE_MAX_BYTES);
    pins_buf_reserve(&b, LINE_RESERVE); /* a failure sticks, and the line is dropped */
    bool json = log_format == PINS_LOG_JSON;
    if (msg == NULL)
        msg = "";

    if (json) {
        pins_buf_add_str(&b, "{\"ts\":\"");
        put_timestamp(&b);
        pins_buf_add_str(&b, "\",\"level\":\"");
        pins_buf_add_str(&b, level_names[level]);
        pins_buf_add_str(&b, "\",\"msg\":");
        put_json_string(&b, msg);
    } else {
        put_timestamp(&b);
        pins_buf_add_byte(&b, ' ');
        pins_buf_add_str(&b, level_names[level]);
        pins_buf_add_byte(&b, ' ');
        put_text(&b, msg, false);
    }

    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (key == NULL)
            break;
        const char *value = va_arg(ap, const char *);
        if (json) {
            pins_buf_add_byte(&b, ',');
            put_json_string(&b, key);
            pins_buf_add_byte(&b, ':');
            if (value == NULL)
                pins_buf_add_str(&b, "null");
            else
                put_json_string(&b, value);
        } else {
            pins_buf_add_byte(&b, ' ');
            put_text(&b, key, false);
            pins_buf_add_byte(&b, '=');
            if (value == NULL)
                pins_buf_add_str(&b, "null");
            else
                put_text(&b, value, text_needs_quotes(value));
        }
    }
    va_end(ap);

    if (json)
        pins_buf_add_byte(&b, '}');
    pins_buf_add_byte(&b, '\n');
    if (pins_buf_error(&b) == 0)
        write_all(pins_buf_ptr(&b), pins_buf_len(&b));
    else
        write_dropped(json, pins_buf_error(&b)); /* a log call never fails */
    pins_buf_free(&b);
    errno = saved_errno;
}
