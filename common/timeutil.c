/* common/timeutil.c: clocks and RFC 3339 formatting without locale or TZ dependence. */
#include "common/timeutil.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/fmt.h"

/* NULL: the system clock, read directly (the common case costs one predictable branch). */
static const pins_clock *clock_override;

void pins_clock_set(const pins_clock *c)
{
    clock_override = c;
}

int64_t pins_time_now_us(void)
{
    if (clock_override != NULL)
        return clock_override->now_us(clock_override->arg);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t pins_time_mono_ns(void)
{
    if (clock_override != NULL)
        return clock_override->mono_ns(clock_override->arg);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Days since 1970-01-01 to civil date (Howard Hinnant's algorithm). */
static void civil_from_days(int64_t z, int64_t *py, unsigned *pm, unsigned *pd)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    *py = y + (m <= 2);
    *pm = m;
    *pd = d;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

size_t pins_time_format_us(int64_t us, char *buf)
{
    int64_t secs = us >= 0 ? us / 1000000 : (us - 999999) / 1000000;
    int64_t frac = us - secs * 1000000;
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t rem = secs - days * 86400;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) { /* outside RFC 3339's years: printf's own rendering */
        int n = snprintf(buf, PINS_TIME_RFC3339_LEN, "%04lld-%02u-%02uT%02d:%02d:%02d.%06lldZ",
                         (long long)y, m, d, (int)(rem / 3600), (int)(rem / 60 % 60),
                         (int)(rem % 60), (long long)frac);
        return n > 0 ? (size_t)n : 0;
    }
    char *p = pins_fmt_digits(buf, (uint64_t)y, 4);
    *p++ = '-';
    p = pins_fmt_digits(p, m, 2);
    *p++ = '-';
    p = pins_fmt_digits(p, d, 2);
    *p++ = 'T';
    p = pins_fmt_digits(p, (uint64_t)(rem / 3600), 2);
    *p++ = ':';
    p = pins_fmt_digits(p, (uint64_t)(rem / 60 % 60), 2);
    *p++ = ':';
    p = pins_fmt_digits(p, (uint64_t)(rem % 60), 2);
    *p++ = '.';
    p = pins_fmt_digits(p, (uint64_t)frac, 6);
    *p++ = 'Z';
    *p = '\0';
    return (size_t)(p - buf);
}

static int digits(const char *s, size_t n, int *pv)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *pv = v;
    return 0;
}

/* Days in month m (1..12) of year y, proleptic Gregorian. */
static int month_days(int y, int m)
{
    static const unsigned char days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))
        return 29;
    return days[m - 1];
}

int pins_time_parse_us(const char *s, size_t len, int64_t *pus)
{
    int Y, M, D, h, mi, sec;
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return PINS_EINVALID_ARGUMENT;
    if (digits(s, 4, &Y) || digits(s + 5, 2, &M) || digits(s + 8, 2, &D) || digits(s + 11, 2, &h) ||
        digits(s + 14, 2, &mi) || digits(s + 17, 2, &sec))
        return PINS_EINVALID_ARGUMENT;
    if (M < 1 || M > 12 || D < 1 || D > month_days(Y, M) || h > 23 || mi > 59 || sec > 60)
        return PINS_EINVALID_ARGUMENT;
    size_t i = 19;
    int64_t frac = 0;
    if (i < len && s[i] == '.') {
        i++;
        size_t start = i;
        int64_t scale = 100000;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (i - start < 6) {
                frac += (s[i] - '0') * scale;
                scale /= 10;
            }
            i++;
        }
        if (i == start || i - start > 9)
            return PINS_EINVALID_ARGUMENT;
    }
    int64_t offset = 0;
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int oh, om;
        if (digits(s + i + 1, 2, &oh) || digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return PINS_EINVALID_ARGUMENT;
        offset = (int64_t)(oh * 3600 + om * 60) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return PINS_EINVALID_ARGUMENT;
    }
    if (i != len)
        return PINS_EINVALID_ARGUMENT;
    int64_t days = days_from_civil(Y, (unsigned)M, (unsigned)D);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + (sec == 60 ? 59 : sec) - offset;
    *pus = secs * 1000000 + frac;
    return 0;
}
