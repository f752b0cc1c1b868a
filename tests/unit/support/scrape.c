/* tests/unit/support/scrape.c: values read back from the metrics exposition. */
#include "scrape.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "observability/metrics.h"

/* Folds on_line over the exposition lines that start with prefix (n: its length), from start. */
static double scan(const char *prefix, double start,
                   double (*on_line)(const char *line, size_t n, double acc))
{
    size_t len = 0;
    char *text = metrics_render(&len);
    assert_non_null(text);
    double acc = start;
    size_t n = strlen(prefix);
    for (const char *l = text; l != NULL && *l != '\0';) {
        if (strncmp(l, prefix, n) == 0)
            acc = on_line(l, n, acc);
        l = strchr(l, '\n');
        l = l != NULL ? l + 1 : NULL;
    }
    free(text);
    return acc;
}

static double series_line(const char *line, size_t n, double acc)
{
    return line[n] == ' ' ? strtod(line + n + 1, NULL) : acc;
}

static double family_line(const char *line, size_t n, double acc)
{
    if (line[n] != '{' && line[n] != ' ')
        return acc;
    const char *end = strchr(line, '\n');
    const char *v = end != NULL ? end : line + strlen(line);
    while (v > line && v[-1] != ' ')
        v--;
    return acc + strtod(v, NULL);
}

double scrape_value(const char *series, double absent)
{
    return scan(series, absent, series_line);
}

double scrape_family_sum(const char *name)
{
    return scan(name, 0, family_line);
}
