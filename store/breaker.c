/* store/breaker.c: the store circuit breaker (breaker.h). The closed fast path is one atomic
 * load; errors and transitions take a mutex (they are rare, and a burst of errors is exactly when
 * exact counting matters). The rolling minute is 60 one-second buckets of the monotonic clock
 * (pins_time_mono_ns, which tests replace with a fake clock). */
#include "store/breaker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"
#include "observability/metrics.h"

#define BUCKETS 60

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t metric_once = PTHREAD_ONCE_INIT;
static atomic_int state = STORE_BREAKER_CLOSED;
static int limit = 50;
static int64_t open_ns = INT64_C(30000000000);
static int64_t reopen_at;   /* OPEN: when the probe may run */
static int64_t probe_since; /* HALF_OPEN: when the probe started (0: none running) */
static int64_t bucket_sec[BUCKETS];
static int bucket_count[BUCKETS];

static double state_gauge(void *arg)
{
    return (double)atomic_load(&state);
}

static void metric_init(void)
{
    static const char *const labels[] = {"name"};
    static const char *const values[] = {"store"};
    metrics_family *f =
        metrics_gauge_new("circuit_breaker_state",
                          "Circuit breaker state: 0 closed, 1 open, 2 half-open.", labels, 1);
    if (f != NULL)
        metrics_gauge_set_cb(f, values, state_gauge, NULL);
}

/* Under lock. */
static void open_now(int64_t now)
{
    reopen_at = now + open_ns;
    probe_since = 0;
    atomic_store(&state, STORE_BREAKER_OPEN);
}

/* Under lock. */
static void close_now(void)
{
    memset(bucket_sec, 0, sizeof(bucket_sec));
    memset(bucket_count, 0, sizeof(bucket_count));
    probe_since = 0;
    atomic_store(&state, STORE_BREAKER_CLOSED);
}

void store_breaker_configure(int errors_per_min, int open_seconds)
{
    pthread_once(&metric_once, metric_init);
    pthread_mutex_lock(&lock);
    limit = errors_per_min > 0 ? errors_per_min : 1;
    open_ns = (int64_t)(open_seconds > 0 ? open_seconds : 1) * 1000000000;
    close_now();
    pthread_mutex_unlock(&lock);
}

bool store_breaker_allow(void)
{
    if (atomic_load_explicit(&state, memory_order_relaxed) == STORE_BREAKER_CLOSED)
        return true;
    bool allow = false;
    int64_t now = pins_time_mono_ns();
    pthread_mutex_lock(&lock);
    int st = atomic_load(&state);
    if (st == STORE_BREAKER_CLOSED) {
        allow = true;
    } else if (st == STORE_BREAKER_OPEN && now >= reopen_at) {
        atomic_store(&state, STORE_BREAKER_HALF_OPEN);
        probe_since = now;
        allow = true;
    } else if (st == STORE_BREAKER_HALF_OPEN &&
               (probe_since == 0 || now - probe_since >= open_ns)) {
        probe_since = now; /* no probe running, or the last one never reported */
        allow = true;
    }
    pthread_mutex_unlock(&lock);
    return allow;
}

void store_breaker_record(int err)
{
    bool store_error = err == PINS_ESTORE;
    bool store_ok =
        err == 0 || err == PINS_ENOT_FOUND || err == PINS_EALREADY_EXISTS || err == PINS_EABORTED;
    int st = atomic_load_explicit(&state, memory_order_relaxed);
    if (st == STORE_BREAKER_CLOSED && !store_error)
        return;
    int64_t now = pins_time_mono_ns();
    pthread_mutex_lock(&lock);
    st = atomic_load(&state);
    if (st == STORE_BREAKER_HALF_OPEN) {
        if (store_error || err == PINS_EDEADLINE_EXCEEDED)
            open_now(now);
        else if (store_ok)
            close_now();
    } else if (st == STORE_BREAKER_CLOSED && store_error) {
        int64_t sec = now / 1000000000;
        int i = (int)(sec % BUCKETS);
        if (bucket_sec[i] != sec) {
            bucket_sec[i] = sec;
            bucket_count[i] = 0;
        }
        bucket_count[i]++;
        int64_t total = 0;
        for (int b = 0; b < BUCKETS; b++) {
            if (sec - bucket_sec[b] < BUCKETS)
                total += bucket_count[b];
        }
        if (total > limit)
            open_now(now);
    }
    pthread_mutex_unlock(&lock);
}

void store_breaker_store_back(void)
{
    if (atomic_load_explicit(&state, memory_order_relaxed) != STORE_BREAKER_OPEN)
        return;
    int64_t now = pins_time_mono_ns();
    pthread_mutex_lock(&lock);
    if (atomic_load(&state) == STORE_BREAKER_OPEN && reopen_at > now)
        reopen_at = now;
    pthread_mutex_unlock(&lock);
}

store_breaker_state store_breaker_get(void)
{
    return (store_breaker_state)atomic_load(&state);
}

int store_breaker_errors_last_minute(void)
{
    int64_t sec = pins_time_mono_ns() / 1000000000;
    int total = 0;
    pthread_mutex_lock(&lock);
    for (int b = 0; b < BUCKETS; b++) {
        if (sec - bucket_sec[b] < BUCKETS)
            total += bucket_count[b];
    }
    pthread_mutex_unlock(&lock);
    return total;
}
