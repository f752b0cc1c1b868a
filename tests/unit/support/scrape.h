/* tests/unit/support/scrape.h: values read back from the metrics exposition
 * (observability/metrics.h: metrics_render), as a scraper would read them.
 */
#ifndef PINS_TESTS_SCRAPE_H
#define PINS_TESTS_SCRAPE_H

/* The value of the line `series value` (series exactly as rendered: `name` or `name{labels}`), or
 * absent when there is no such line. */
double scrape_value(const char *series, double absent);
/* The sum of every series of the family name (its `name{...}` lines and its unlabelled line); 0
 * when there is none. */
double scrape_family_sum(const char *name);

#endif
