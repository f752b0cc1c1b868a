/* observability/metrics.c: the registry, per-thread shards and the text exposition.
 *
 * Every thread that updates a counter or a histogram owns a shard: one open-addressing series table
 * per family, indexed by the family's registration index. Only the owning thread writes a shard's
 * cells, so an update is a relaxed load and a relaxed store (no read-modify-write instruction); the
 * exposition reads the same cells with relaxed loads and sums them. Inserting a series or a table
 * takes the shard's mutex, which the exposition also holds while it walks the shard; lookups by the
 * owner need no lock because the owner is the only thread that ever changes its shard.
 *
 * Shards outlive their threads (a finished thread's counts stay in the sums) and are all freed by
 * metrics_shutdown(), which also bumps a generation so that a thread holding a stale shard pointer
 * registers a new shard instead of touching freed memory.
 *
 * Lock order: registry_mu, then shards_mu, then a shard's mu; a gauge family's mu is taken alone.
 */
#include "observability/metrics.h"

#include "observability/log.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/fmt.h"
#include "common/hash.h"

#define MAX_LABELS 8
#define MAX_SERIES 10000
#define MIN_TABLE  16
/* The longest exposition. Label values come from fixed sets (methods, routes, status codes,
 * reasons), whose product across every family renders to well under 1 MiB; 64 MiB leaves room for
 * families near their series limit and still stops a runaway before it takes the process's
 * memory. Past it (as when out of memory) metrics_render() returns NULL. */
#define MAX_EXPOSITION (64u << 20)
/* The first allocation: a freshly started process's exposition fits. */
#define FIRST_EXPOSITION 4096

enum kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

/* One label-value combination. Counter: cells[0] holds the value as double bits. Histogram:
 * cells[0] the sum as double bits, cells[1 + i] the (non-cumulative) count of bucket i, the last
 * one +Inf. Gauges use value, cb and cb_arg under the family mutex instead of cells. */
struct series {
    uint64_t hash;
    const char **values; /* nlabels copies, in the same allocation */
    double value;
    metrics_gauge_cb cb;
    void *cb_arg;
    _Atomic uint64_t cells[];
};

struct table {
    size_t cap; /* power of two, at least twice count */
    size_t count;
    struct series **slots;
};

struct metrics_family {
    struct metrics_family *next;
    enum kind kind;
    size_t index;
    char *name;
    char *help;
    size_t nlabels;
    char *labels[MAX_LABELS];
    size_t nbuckets;
    double *buckets;
    size_t ncells;
    atomic_bool warned; /* the series limit was logged */
    pthread_mutex_t mu; /* gauges only: guards gauges */
    struct table gauges;
};

struct shard {
    struct shard *next;
    pthread_mutex_t mu;
    size_t ntables;
    struct table **tables; /* by family index; NULL until the thread first updates the family */
};

/* Partial sums of one series across shards, built by the exposition. */
struct agg {
    uint64_t hash;
    size_t nlabels;
    const char *const *values; /* borrowed from a series, which lives until metrics_shutdown() */
    double value;
    metrics_gauge_cb cb;
    void *cb_arg;
    uint64_t counts[];
};

struct aggs {
    size_t n, cap;
    struct agg **items;
    size_t icap; /* index: open addressing over items, power of two */
    struct agg **index;
};

const double metrics_latency_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,    0.1,    0.25,  0.5,    1};
const size_t metrics_latency_nbuckets =
    sizeof(metrics_latency_buckets) / sizeof(metrics_latency_buckets[0]);

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_family *families;
static struct metrics_family **families_tail = &families;
static size_t nfamilies;

static pthread_mutex_t shards_mu = PTHREAD_MUTEX_INITIALIZER;
static struct shard *shards;

static atomic_uint generation = 1;
static atomic_uint_fast64_t dropped_series;

static _Thread_local struct shard *tls_shard;
static _Thread_local unsigned tls_generation;

static inline const char *value_at(const char *const *values, size_t i)
{
    return values != NULL && values[i] != NULL ? values[i] : "";
}

/* FNV-1a over the values, each followed by 0xff (which no UTF-8 text holds). */
static uint64_t hash_values(size_t nlabels, const char *const *values)
{
    uint64_t h = PINS_FNV1A_INIT;
    for (size_t i = 0; i < nlabels; i++) {
        h = pins_fnv1a_str(h, value_at(values, i), NULL);
        h = (h ^ 0xff) * PINS_FNV1A_PRIME;
    }
    return h;
}

static inline bool values_equal(const char *const *stored, const char *const *values,
                                size_t nlabels)
{
    for (size_t i = 0; i < nlabels; i++) {
        if (strcmp(stored[i], value_at(values, i)) != 0)
            return false;
    }
    return true;
}

static inline double bits_to_double(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof(d));
    return d;
}

static inline uint64_t double_to_bits(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    return bits;
}

/* Single writer: the owning thread. A plain load and store keep the cell readable by the exposition
 * without paying for a locked instruction. */
static inline void cell_add_double(_Atomic uint64_t *cell, double v)
{
    double d = bits_to_double(atomic_load_explicit(cell, memory_order_relaxed)) + v;
    atomic_store_explicit(cell, double_to_bits(d), memory_order_relaxed);
}

static inline void cell_inc(_Atomic uint64_t *cell)
{
    uint64_t n = atomic_load_explicit(cell, memory_order_relaxed);
    atomic_store_explicit(cell, n + 1, memory_order_relaxed);
}

/* ---- series tables ------------------------------------------------------------------------ */

static int table_init(struct table *t)
{
    t->slots = calloc(MIN_TABLE, sizeof(*t->slots));
    if (t->slots == NULL)
        return -1;
    t->cap = MIN_TABLE;
    t->count = 0;
    return 0;
}

static struct series *table_find(const struct table *t, size_t nlabels, uint64_t h,
                                 const char *const *values)
{
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct series *s = t->slots[i];
        if (s == NULL)
            return NULL;
        if (s->hash == h && values_equal(s->values, values, nlabels))
            return s;
    }
}

static void table_place(struct series **slots, size_t cap, struct series *s)
{
    size_t i = s->hash & (cap - 1);
    while (slots[i] != NULL)
        i = (i + 1) & (cap - 1);
    slots[i] = s;
}

/* Adds s (not present yet), growing the table to keep the load under one half. */
static int table_insert(struct table *t, struct series *s)
{
    if ((t->count + 1) * 2 > t->cap) {
        size_t ncap = t->cap * 2;
        struct series **nslots = calloc(ncap, sizeof(*nslots));
        if (nslots == NULL)
            return -1;
        for (size_t i = 0; i < t->cap; i++) {
            if (t->slots[i] != NULL)
                table_place(nslots, ncap, t->slots[i]);
        }
        free(t->slots);
        t->slots = nslots;
        t->cap = ncap;
    }
    table_place(t->slots, t->cap, s);
    t->count++;
    return 0;
}

static void table_free_series(struct table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i]);
    free(t->slots);
    t->slots = NULL;
    t->cap = t->count = 0;
}

static struct series *series_new(const metrics_family *f, uint64_t h, const char *const *values)
{
    size_t lens[MAX_LABELS];
    size_t text = 0;
    for (size_t i = 0; i < f->nlabels; i++) {
        lens[i] = strlen(value_at(values, i)) + 1;
        text += lens[i];
    }
    size_t head = sizeof(struct series) + f->ncells * sizeof(_Atomic uint64_t);
    size_t ptrs = f->nlabels * sizeof(char *);
    struct series *s = malloc(head + ptrs + text);
    if (s == NULL)
        return NULL;
    s->hash = h;
    s->values = (const char **)((char *)s + head);
    s->value = 0;
    s->cb = NULL;
    s->cb_arg = NULL;
    for (size_t i = 0; i < f->ncells; i++)
        atomic_init(&s->cells[i], 0);
    char *p = (char *)s + head + ptrs;
    for (size_t i = 0; i < f->nlabels; i++) {
        memcpy(p, value_at(values, i), lens[i]);
        s->values[i] = p;
        p += lens[i];
    }
    return s;
}

static void note_dropped(metrics_family *f)
{
    atomic_fetch_add_explicit(&dropped_series, 1, memory_order_relaxed);
    if (!atomic_exchange_explicit(&f->warned, true, memory_order_relaxed))
        pins_log_warn("metrics series limit reached, dropping new series", "family", f->name, NULL);
}

/* ---- shards --------------------------------------------------------------------------------- */

static struct shard *shard_register(void)
{
    struct shard *sh = calloc(1, sizeof(*sh));
    if (sh == NULL)
        return NULL;
    pthread_mutex_init(&sh->mu, NULL);
    pthread_mutex_lock(&shards_mu);
    sh->next = shards;
    shards = sh;
    tls_generation = atomic_load_explicit(&generation, memory_order_relaxed);
    pthread_mutex_unlock(&shards_mu);
    tls_shard = sh;
    return sh;
}

/* Slow path of an update: the series is new to this thread's shard. */
static struct series *shard_insert(struct shard *sh, metrics_family *f, uint64_t h,
                                   const char *const *values)
{
    struct series *s = NULL;
    pthread_mutex_lock(&sh->mu);
    if (f->index >= sh->ntables) {
        size_t n = sh->ntables ? sh->ntables * 2 : 16;
        if (n <= f->index)
            n = f->index + 1;
        struct table **tables = realloc(sh->tables, n * sizeof(*tables));
        if (tables == NULL)
            goto out;
        for (size_t i = sh->ntables; i < n; i++)
            tables[i] = NULL;
        sh->tables = tables;
        sh->ntables = n;
    }
    struct table *t = sh->tables[f->index];
    if (t == NULL) {
        t = malloc(sizeof(*t));
        if (t == NULL)
            goto out;
        if (table_init(t) != 0) {
            free(t);
            goto out;
        }
        sh->tables[f->index] = t;
    }
    if (t->count >= MAX_SERIES) {
        note_dropped(f);
        goto out;
    }
    s = series_new(f, h, values);
    if (s == NULL)
        goto out;
    if (table_insert(t, s) != 0) {
        free(s);
        s = NULL;
    }
out:
    pthread_mutex_unlock(&sh->mu);
    return s;
}

/* The calling thread's series for values, created on first use; NULL when dropped. */
static inline struct series *shard_series(metrics_family *f, const char *const *values)
{
    struct shard *sh = tls_shard;
    if (sh == NULL || tls_generation != atomic_load_explicit(&generation, memory_order_relaxed)) {
        sh = shard_register();
        if (sh == NULL)
            return NULL;
    }
    uint64_t h = hash_values(f->nlabels, values);
    if (f->index < sh->ntables && sh->tables[f->index] != NULL) {
        struct series *s = table_find(sh->tables[f->index], f->nlabels, h, values);
        if (s != NULL)
            return s;
    }
    return shard_insert(sh, f, h, values);
}

/* Gauge series, under f->mu. */
static struct series *gauge_series(metrics_family *f, const char *const *values)
{
    uint64_t h = hash_values(f->nlabels, values);
    struct series *s = table_find(&f->gauges, f->nlabels, h, values);
    if (s != NULL)
        return s;
    if (f->gauges.count >= MAX_SERIES) {
        note_dropped(f);
        return NULL;
    }
    s = series_new(f, h, values);
    if (s != NULL && table_insert(&f->gauges, s) != 0) {
        free(s);
        s = NULL;
    }
    return s;
}

/* ---- families ------------------------------------------------------------------------------- */

static bool valid_name(const char *s, bool colon)
{
    if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
        return false;
    for (; *s; s++) {
        char c = *s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || (colon && c == ':');
        if (!ok)
            return false;
    }
    return true;
}

static void family_free(metrics_family *f)
{
    if (f == NULL)
        return;
    if (f->gauges.slots != NULL)
        table_free_series(&f->gauges);
    pthread_mutex_destroy(&f->mu);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f->buckets);
    free(f);
}

/* A family is rejected (NULL) when out of memory, and also when its name, labels or buckets are
 * invalid or the name is taken: those are programming errors a start-up check should catch. */
static metrics_family *family_new(enum kind kind, const char *name, const char *help,
                                  const char *const *labels, size_t nlabels, const double *buckets,
                                  size_t nbuckets)
{
    metrics_family *f = NULL;
    if (!valid_name(name, true) || nlabels > MAX_LABELS || (nlabels > 0 && labels == NULL))
        return NULL;
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0)
            return NULL;
        if (kind == KIND_HISTOGRAM && strcmp(labels[i], "le") == 0)
            return NULL;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(labels[i], labels[j]) == 0)
                return NULL;
        }
    }
    if (nbuckets > 0 && buckets == NULL)
        return NULL;
    for (size_t i = 0; i < nbuckets; i++) {
        if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
            return NULL;
    }

    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    pthread_mutex_init(&f->mu, NULL);
    f->kind = kind;
    f->name = strdup(name);
    f->help = strdup(help != NULL ? help : "");
    if (f->name == NULL || f->help == NULL)
        goto fail;
    for (size_t i = 0; i < nlabels; i++) {
        f->labels[i] = strdup(labels[i]);
        if (f->labels[i] == NULL)
            goto fail;
        f->nlabels = i + 1;
    }
    if (kind == KIND_HISTOGRAM) {
        f->buckets = malloc((nbuckets + 1) * sizeof(double));
        if (f->buckets == NULL)
            goto fail;
        if (nbuckets > 0)
            memcpy(f->buckets, buckets, nbuckets * sizeof(double));
        f->buckets[nbuckets] = INFINITY;
        f->nbuckets = nbuckets;
        f->ncells = nbuckets + 2;
    } else if (kind == KIND_COUNTER) {
        f->ncells = 1;
    } else if (table_init(&f->gauges) != 0) {
        goto fail;
    }

    pthread_mutex_lock(&registry_mu);
    for (metrics_family *g = families; g != NULL; g = g->next) {
        if (strcmp(g->name, name) == 0) {
            pthread_mutex_unlock(&registry_mu);
            goto fail;
        }
    }
    f->index = nfamilies++;
    *families_tail = f;
    families_tail = &f->next;
    pthread_mutex_unlock(&registry_mu);
    return f;
fail:
    family_free(f);
    return NULL;
}

/* ---- text output ------------------------------------------------------------------------------
 */

/* Shortest text that parses back to v; integers without an exponent. */
static void format_double(char *out, size_t outlen, double v)
{
    if (isnan(v)) {
        snprintf(out, outlen, "NaN");
    } else if (isinf(v)) {
        snprintf(out, outlen, "%s", v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        snprintf(out, outlen, "0");
    } else if (v == floor(v) && fabs(v) < 1e18) {
        snprintf(out, outlen, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(out, outlen, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                break;
        }
    }
}

static void put_double(pins_buf *b, double v)
{
    char tmp[40];
    format_double(tmp, sizeof(tmp), v);
    pins_buf_add_str(b, tmp);
}

static void put_u64(pins_buf *b, uint64_t v)
{
    char tmp[PINS_FMT_INT_MAX];
    pins_buf_add(b, tmp, (size_t)(pins_fmt_u64(tmp, v) - tmp));
}

/* Label values escape backslash, double quote and newline; help text backslash and newline. */
static void put_escaped(pins_buf *b, const char *s, bool quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (*s == '"' && quote)
            esc = "\\\"";
        if (esc != NULL) {
            pins_buf_add(b, run, (size_t)(s - run));
            pins_buf_add_str(b, esc);
            run = s + 1;
        }
    }
    pins_buf_add(b, run, (size_t)(s - run));
}

static void put_header(pins_buf *b, const char *name, const char *help, const char *type)
{
    pins_buf_add_str(b, "# HELP ");
    pins_buf_add_str(b, name);
    pins_buf_add_byte(b, ' ');
    put_escaped(b, help, false);
    pins_buf_add_str(b, "\n# TYPE ");
    pins_buf_add_str(b, name);
    pins_buf_add_byte(b, ' ');
    pins_buf_add_str(b, type);
    pins_buf_add_byte(b, '\n');
}

/* name{labels[,le="..."]} with nothing in braces omitted. */
static void put_series_name(pins_buf *b, const metrics_family *f, const char *suffix,
                            const char *const *values, const char *le)
{
    pins_buf_add_str(b, f->name);
    pins_buf_add_str(b, suffix);
    if (f->nlabels == 0 && le == NULL)
        return;
    pins_buf_add_byte(b, '{');
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i > 0)
            pins_buf_add_byte(b, ',');
        pins_buf_add_str(b, f->labels[i]);
        pins_buf_add_str(b, "=\"");
        put_escaped(b, value_at(values, i), true);
        pins_buf_add_byte(b, '"');
    }
    if (le != NULL) {
        if (f->nlabels > 0)
            pins_buf_add_byte(b, ',');
        pins_buf_add_str(b, "le=\"");
        pins_buf_add_str(b, le);
        pins_buf_add_byte(b, '"');
    }
    pins_buf_add_byte(b, '}');
}

/* ---- aggregation over shards ------------------------------------------------------------------
 */

static void aggs_free(struct aggs *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->items[i]);
    free(a->items);
    free(a->index);
}

/* The aggregate for (h, values), created zeroed when new; NULL when out of memory. */
static struct agg *aggs_get(struct aggs *a, const metrics_family *f, uint64_t h,
                            const char *const *values)
{
    if (a->icap == 0 || (a->n + 1) * 2 > a->icap) {
        size_t ncap = a->icap ? a->icap * 2 : MIN_TABLE;
        struct agg **idx = calloc(ncap, sizeof(*idx));
        if (idx == NULL)
            return NULL;
        for (size_t i = 0; i < a->n; i++) {
            size_t j = a->items[i]->hash & (ncap - 1);
            while (idx[j] != NULL)
                j = (j + 1) & (ncap - 1);
            idx[j] = a->items[i];
        }
        free(a->index);
        a->index = idx;
        a->icap = ncap;
    }
    size_t j = h & (a->icap - 1);
    for (; a->index[j] != NULL; j = (j + 1) & (a->icap - 1)) {
        struct agg *g = a->index[j];
        if (g->hash == h && values_equal(g->values, values, f->nlabels))
            return g;
    }
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 16;
        struct agg **items = realloc(a->items, ncap * sizeof(*items));
        if (items == NULL)
            return NULL;
        a->items = items;
        a->cap = ncap;
    }
    size_t ncounts = f->kind == KIND_HISTOGRAM ? f->nbuckets + 1 : 0;
    struct agg *g = calloc(1, sizeof(*g) + ncounts * sizeof(uint64_t));
    if (g == NULL)
        return NULL;
    g->hash = h;
    g->nlabels = f->nlabels;
    g->values = values;
    a->items[a->n++] = g;
    a->index[j] = g;
    return g;
}

static int agg_cmp(const void *pa, const void *pb)
{
    const struct agg *a = *(const struct agg *const *)pa;
    const struct agg *b = *(const struct agg *const *)pb;
    for (size_t i = 0; i < a->nlabels; i++) {
        int c = strcmp(a->values[i], b->values[i]);
        if (c != 0)
            return c;
    }
    return 0;
}

/* Adds one shard table (or the gauge table) to the aggregates. Returns 0 or -1 (out of memory). */
static int aggs_add_table(struct aggs *a, const metrics_family *f, const struct table *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        const struct series *s = t->slots[i];
        if (s == NULL)
            continue;
        struct agg *g = aggs_get(a, f, s->hash, (const char *const *)s->values);
        if (g == NULL)
            return -1;
        if (f->kind == KIND_GAUGE) {
            g->value = s->value;
            g->cb = s->cb;
            g->cb_arg = s->cb_arg;
            continue;
        }
        g->value += bits_to_double(atomic_load_explicit(&s->cells[0], memory_order_relaxed));
        if (f->kind == KIND_HISTOGRAM) {
            for (size_t k = 0; k <= f->nbuckets; k++)
                g->counts[k] += atomic_load_explicit(&s->cells[1 + k], memory_order_relaxed);
        }
    }
    return 0;
}

static int collect(struct aggs *a, metrics_family *f)
{
    int rv = 0;
    if (f->kind == KIND_GAUGE) {
        pthread_mutex_lock(&f->mu);
        rv = aggs_add_table(a, f, &f->gauges);
        pthread_mutex_unlock(&f->mu);
        goto out;
    }
    pthread_mutex_lock(&shards_mu);
    for (struct shard *sh = shards; sh != NULL && rv == 0; sh = sh->next) {
        pthread_mutex_lock(&sh->mu);
        if (f->index < sh->ntables && sh->tables[f->index] != NULL)
            rv = aggs_add_table(a, f, sh->tables[f->index]);
        pthread_mutex_unlock(&sh->mu);
    }
    pthread_mutex_unlock(&shards_mu);
out:
    /* A family without labels always shows its one series, zero until first updated. */
    if (rv == 0 && f->nlabels == 0 && a->n == 0 &&
        aggs_get(a, f, hash_values(0, NULL), NULL) == NULL)
        rv = -1;
    return rv;
}

static void render_histogram_series(pins_buf *b, const metrics_family *f, const struct agg *g)
{
    uint64_t cumulative = 0;
    for (size_t k = 0; k <= f->nbuckets; k++) {
        char le[40];
        format_double(le, sizeof(le), f->buckets[k]);
        cumulative += g->counts[k];
        put_series_name(b, f, "_bucket", g->values, le);
        pins_buf_add_byte(b, ' ');
        put_u64(b, cumulative);
        pins_buf_add_byte(b, '\n');
    }
    put_series_name(b, f, "_sum", g->values, NULL);
    pins_buf_add_byte(b, ' ');
    put_double(b, g->value);
    pins_buf_add_byte(b, '\n');
    put_series_name(b, f, "_count", g->values, NULL);
    pins_buf_add_byte(b, ' ');
    put_u64(b, cumulative);
    pins_buf_add_byte(b, '\n');
}

static int render_family(pins_buf *b, metrics_family *f)
{
    static const char *const types[] = {
        [KIND_COUNTER] = "counter", [KIND_GAUGE] = "gauge", [KIND_HISTOGRAM] = "histogram"};
    struct aggs a = {0};
    int rv = collect(&a, f);
    if (rv != 0)
        goto out;
    /* Callbacks run without any registry lock held, so they may update metrics themselves. */
    for (size_t i = 0; i < a.n; i++) {
        if (a.items[i]->cb != NULL)
            a.items[i]->value = a.items[i]->cb(a.items[i]->cb_arg);
    }
    if (a.n > 1)
        qsort(a.items, a.n, sizeof(*a.items), agg_cmp);
    put_header(b, f->name, f->help, types[f->kind]);
    for (size_t i = 0; i < a.n; i++) {
        if (f->kind == KIND_HISTOGRAM) {
            render_histogram_series(b, f, a.items[i]);
            continue;
        }
        put_series_name(b, f, "", a.items[i]->values, NULL);
        pins_buf_add_byte(b, ' ');
        put_double(b, a.items[i]->value);
        pins_buf_add_byte(b, '\n');
    }
out:
    aggs_free(&a);
    return rv;
}

/* ---- process_* ----------------------------------------------------------------------------------
 */

static double process_start_time;

static void read_start_time(void)
{
    char line[256];
    unsigned long long btime = 0, start_ticks = 0;
    bool have_btime = false;
    FILE *fp = fopen("/proc/stat", "r");
    if (fp != NULL) {
        while (fgets(line, sizeof(line), fp) != NULL) {
            if (sscanf(line, "btime %llu", &btime) == 1) {
                have_btime = true;
                break;
            }
        }
        fclose(fp);
    }
    char stat[1024];
    fp = fopen("/proc/self/stat", "r");
    if (fp == NULL || !have_btime)
        goto out;
    size_t n = fread(stat, 1, sizeof(stat) - 1, fp);
    stat[n] = '\0';
    /* Fields after the command name (which may hold spaces and parentheses): state is field 3,
     * starttime field 22. */
    char *p = strrchr(stat, ')');
    if (p == NULL || sscanf(p + 1,
                            " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d "
                            "%*d %*d %*d %*d %llu",
                            &start_ticks) != 1)
        goto out;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz > 0)
        process_start_time = (double)btime + (double)start_ticks / (double)hz;
out:
    if (fp != NULL)
        fclose(fp);
}

static void put_process(pins_buf *b, const char *name, const char *help, const char *type, double v)
{
    put_header(b, name, help, type);
    pins_buf_add_str(b, name);
    pins_buf_add_byte(b, ' ');
    put_double(b, v);
    pins_buf_add_byte(b, '\n');
}

static void render_process(pins_buf *b)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        put_process(b, "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.", "counter", cpu);
    }

    char stat[1024];
    FILE *fp = fopen("/proc/self/stat", "r");
    if (fp != NULL) {
        size_t n = fread(stat, 1, sizeof(stat) - 1, fp);
        stat[n] = '\0';
        fclose(fp);
        unsigned long long vsize = 0;
        long long rss = 0;
        char *p = strrchr(stat, ')');
        /* vsize is field 23, rss (pages) field 24. */
        if (p != NULL && sscanf(p + 1,
                                " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d "
                                "%*d %*d %*d %*d %*d %*u %llu %lld",
                                &vsize, &rss) == 2) {
            long page = sysconf(_SC_PAGESIZE);
            put_process(b, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
                        (double)vsize);
            put_process(b, "process_resident_memory_bytes", "Resident memory size in bytes.",
                        "gauge", (double)rss * (double)(page > 0 ? page : 4096));
        }
    }

    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        long nfds = 0;
        for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
            if (e->d_name[0] != '.')
                nfds++;
        }
        closedir(d);
        /* Not counting the descriptor opendir() itself held. */
        put_process(b, "process_open_fds", "Number of open file descriptors.", "gauge",
                    (double)(nfds > 0 ? nfds - 1 : 0));
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        put_process(b, "process_max_fds", "Maximum number of open file descriptors.", "gauge",
                    (double)rl.rlim_cur);

    pthread_once(&once, read_start_time);
    if (process_start_time > 0)
        put_process(b, "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.", "gauge",
                    process_start_time);
}

/* ---- public ------------------------------------------------------------------------------------
 */

metrics_family *metrics_counter_new(const char *name, const char *help, const char *const *labels,
                                    size_t nlabels)
{
    return family_new(KIND_COUNTER, name, help, labels, nlabels, NULL, 0);
}

metrics_family *metrics_histogram_new(const char *name, const char *help, const char *const *labels,
                                      size_t nlabels, const double *buckets, size_t nbuckets)
{
    return family_new(KIND_HISTOGRAM, name, help, labels, nlabels, buckets, nbuckets);
}

metrics_family *metrics_gauge_new(const char *name, const char *help, const char *const *labels,
                                  size_t nlabels)
{
    return family_new(KIND_GAUGE, name, help, labels, nlabels, NULL, 0);
}

void metrics_counter_add(metrics_family *f, const char *const *values, double v)
{
    /* Negative and NaN increments would break monotonicity; they are ignored. */
    if (f == NULL || f->kind != KIND_COUNTER || !(v >= 0))
        return;
    struct series *s = shard_series(f, values);
    if (s != NULL)
        cell_add_double(&s->cells[0], v);
}

void metrics_counter_inc(metrics_family *f, const char *const *values)
{
    metrics_counter_add(f, values, 1.0);
}

void metrics_histogram_observe(metrics_family *f, const char *const *values, double v)
{
    if (f == NULL || f->kind != KIND_HISTOGRAM)
        return;
    struct series *s = shard_series(f, values);
    if (s == NULL)
        return;
    size_t k = 0;
    while (k < f->nbuckets && !(v <= f->buckets[k]))
        k++;
    cell_inc(&s->cells[1 + k]);
    cell_add_double(&s->cells[0], v);
}

metrics_cell *metrics_cell_get(metrics_family *f, const char *const *values)
{
    if (f == NULL || f->kind == KIND_GAUGE)
        return NULL;
    return (metrics_cell *)shard_series(f, values);
}

void metrics_cell_add(metrics_cell *c, double v)
{
    if (c != NULL && v >= 0)
        cell_add_double(&((struct series *)c)->cells[0], v);
}

void metrics_cell_observe(metrics_family *f, metrics_cell *c, double v)
{
    if (c == NULL || f == NULL || f->kind != KIND_HISTOGRAM)
        return;
    struct series *s = (struct series *)c;
    size_t k = 0;
    while (k < f->nbuckets && !(v <= f->buckets[k]))
        k++;
    cell_inc(&s->cells[1 + k]);
    cell_add_double(&s->cells[0], v);
}

void metrics_gauge_set(metrics_family *f, const char *const *values, double v)
{
    if (f == NULL || f->kind != KIND_GAUGE)
        return;
    pthread_mutex_lock(&f->mu);
    struct series *s = gauge_series(f, values);
    if (s != NULL) {
        s->value = v;
        s->cb = NULL;
    }
    pthread_mutex_unlock(&f->mu);
}

void metrics_gauge_add(metrics_family *f, const char *const *values, double v)
{
    if (f == NULL || f->kind != KIND_GAUGE)
        return;
    pthread_mutex_lock(&f->mu);
    struct series *s = gauge_series(f, values);
    if (s != NULL && s->cb == NULL)
        s->value += v;
    pthread_mutex_unlock(&f->mu);
}

void metrics_gauge_set_cb(metrics_family *f, const char *const *values, metrics_gauge_cb cb,
                          void *arg)
{
    if (f == NULL || f->kind != KIND_GAUGE)
        return;
    pthread_mutex_lock(&f->mu);
    struct series *s = gauge_series(f, values);
    if (s != NULL) {
        s->cb = cb;
        s->cb_arg = arg;
    }
    pthread_mutex_unlock(&f->mu);
}

char *metrics_render(size_t *plen)
{
    pins_buf b;
    pins_buf_init(&b, MAX_EXPOSITION);
    pins_buf_reserve(&b, FIRST_EXPOSITION);
    int rv = 0;
    pthread_mutex_lock(&registry_mu);
    for (metrics_family *f = families; f != NULL && rv == 0; f = f->next)
        rv = render_family(&b, f);
    pthread_mutex_unlock(&registry_mu);
    if (rv != 0)
        goto fail;
    put_process(&b, "pins_metrics_dropped_series_total",
                "Metric updates dropped because a family reached its series limit.", "counter",
                (double)atomic_load_explicit(&dropped_series, memory_order_relaxed));
    render_process(&b);
    if (pins_buf_error(&b) != 0)
        goto fail;
    return pins_buf_take(&b, plen);
fail:
    pins_buf_free(&b);
    return NULL;
}

void metrics_shutdown(void)
{
    pthread_mutex_lock(&registry_mu);
    pthread_mutex_lock(&shards_mu);
    struct shard *sh = shards;
    while (sh != NULL) {
        struct shard *next = sh->next;
        for (size_t i = 0; i < sh->ntables; i++) {
            if (sh->tables[i] != NULL) {
                table_free_series(sh->tables[i]);
                free(sh->tables[i]);
            }
        }
        free(sh->tables);
        pthread_mutex_destroy(&sh->mu);
        free(sh);
        sh = next;
    }
    shards = NULL;
    atomic_fetch_add_explicit(&generation, 1, memory_order_relaxed);
    atomic_store_explicit(&dropped_series, 0, memory_order_relaxed);
    pthread_mutex_unlock(&shards_mu);
    metrics_family *f = families;
    while (f != NULL) {
        metrics_family *next = f->next;
        family_free(f);
        f = next;
    }
    families = NULL;
    families_tail = &families;
    nfamilies = 0;
    pthread_mutex_unlock(&registry_mu);
    tls_shard = NULL;
}
