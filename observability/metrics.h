/* observability/metrics.h: the metrics registry and its Prometheus text exposition (format 0.0.4).
 *
 * Families are created once at start-up (before workers run) and live for the process. Counters
 * and histograms are sharded per thread: an update touches only the calling thread's shard with
 * relaxed atomics, no lock on the request path; the exposition sums the shards. Gauges are process
 * wide (last write wins, or a callback sampled at exposition time).
 *
 * Label values are borrowed for the call; the registry copies them when a series is first seen.
 * A family has at most 8 labels and at most 10000 series per thread shard; updates past that are
 * dropped and counted in pins_metrics_dropped_series_total.
 */
#ifndef PINS_OBSERVABILITY_METRICS_H
#define PINS_OBSERVABILITY_METRICS_H

#include <stddef.h>

typedef struct metrics_family metrics_family;

/* A gauge callback, called at exposition time; returns the value. */
typedef double (*metrics_gauge_cb)(void *arg);

/* New counter family. labels: nlabels names (static strings). Returns NULL when out of memory. */
metrics_family *metrics_counter_new(const char *name, const char *help, const char *const *labels,
                                    size_t nlabels);
/* New histogram family with nbuckets ascending upper bounds (+Inf is implied). */
metrics_family *metrics_histogram_new(const char *name, const char *help, const char *const *labels,
                                      size_t nlabels, const double *buckets, size_t nbuckets);
/* New gauge family. */
metrics_family *metrics_gauge_new(const char *name, const char *help, const char *const *labels,
                                  size_t nlabels);

/* counter += v (v >= 0). values: one per label. */
void metrics_counter_add(metrics_family *f, const char *const *values, double v);
/* counter += 1. */
void metrics_counter_inc(metrics_family *f, const char *const *values);
/* One observation. */
void metrics_histogram_observe(metrics_family *f, const char *const *values, double v);
/* gauge = v. */
void metrics_gauge_set(metrics_family *f, const char *const *values, double v);
/* gauge += v (may be negative). */
void metrics_gauge_add(metrics_family *f, const char *const *values, double v);
/* The series' value is cb(arg), sampled at exposition time. */
void metrics_gauge_set_cb(metrics_family *f, const char *const *values, metrics_gauge_cb cb,
                          void *arg);

/* Cells: the calling thread's series of a counter or histogram family, for callers that update
 * the same series often and want to skip the label lookup. A cell belongs to the thread that got
 * it and stays valid until metrics_shutdown(); use it only on that thread. NULL when out of
 * memory, over the series limit, or f is a gauge family. */
typedef struct metrics_cell metrics_cell;
metrics_cell *metrics_cell_get(metrics_family *f, const char *const *values);
/* counter cell += v (v >= 0). c may be NULL (the update is dropped). */
void metrics_cell_add(metrics_cell *c, double v);
/* One observation on a histogram cell of family f. c may be NULL. */
void metrics_cell_observe(metrics_family *f, metrics_cell *c, double v);

/* The whole registry in text format 0.0.4, plus process_* series. New string the caller frees;
 * *plen gets its length. NULL when out of memory or when the text would exceed 64 MiB (far above
 * what the registry's label sets render to). */
char *metrics_render(size_t *plen);

/* Frees every family (at exit, after every worker has stopped; for leak-clean tests). */
void metrics_shutdown(void);

/* Standard bucket sets. */
extern const double metrics_latency_buckets[]; /* 0.0001 .. 1 s */
extern const size_t metrics_latency_nbuckets;

#endif
