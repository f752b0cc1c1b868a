/* tools/bench/store_bench.c: the SQLite store on one thread, without the server.
 *
 * Measures upserts per second when B writes are queued per loop iteration (B = 1, 10, 100, 512:
 * one group commit each), and gets per second answered by the read cache and by SQLite (a cold
 * cache: the store is reopened before each pass, every get misses, reads the row, packs the value
 * and fills). Not a test; build it by hand against a build tree, e.g.
 *
 *   cc -O2 -I. -Ibuild/gen tools/bench/store_bench.c build/libpins_core.a build/libpins_proto.a \
 *      $(pkg-config --libs libevent libevent_pthreads sqlite3 openssl jansson libprotobuf-c \
 *      libnghttp2 libevent_openssl) -lpthread -lm -o /tmp/store_bench
 *   /tmp/store_bench [dir]      (default dir: a new directory under /tmp, removed afterwards)
 *
 * STORE_BENCH_BATCH=512 runs only that upsert batch size (for a profiler).
 */
#include <event2/event.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "store/store.h"
#include "store/sqlite.h"

#define KEYS  10000
#define VALUE "{\"note\":\"remember the milk\",\"n\":42,\"tags\":[\"a\",\"b\"],\"ok\":true}"

static int pending;
static int failures;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_pin(void *arg, int err, const store_pin *pin, bool created)
{
    pending--;
    if (err != 0)
        failures++;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int open_all(const store_options *opts, struct event_base *base, store **ps,
                    store_session **pss)
{
    int err = store_open(opts, ps);
    if (err == 0)
        err = store_session_new(*ps, base, pss);
    return err;
}

static void bench_upserts(store_session *ss, struct event_base *base, int per_iteration)
{
    const int total = per_iteration == 1 ? 4000 : 40000;
    char key[32];
    store_sqlite_stats before;
    store_sqlite_session_stats(ss, &before);
    double t0 = now_s();
    for (int done = 0; done < total;) {
        for (int i = 0; i < per_iteration && done < total; i++, done++) {
            snprintf(key, sizeof(key), "key-%d", done % KEYS);
            const store_upsert_req req = {
                .tenant_id = "bench",
                .key = key,
                .value_json = VALUE,
                .value_len = sizeof(VALUE) - 1,
                .value_hash = "0000000000000000",
                .source = "api",
                .now_us = 1,
                .audit = {.request_id = "r"},
            };
            pending++;
            if (store_pin_upsert(ss, &req, on_pin, NULL) != 0) {
                pending--;
                failures++;
            }
        }
        while (pending > 0)
            event_base_loop(base, EVLOOP_ONCE);
    }
    double dt = now_s() - t0;
    store_sqlite_stats after;
    store_sqlite_session_stats(ss, &after);
    printf("upsert  %4d per iteration: %9.0f /s  (%.1f us each, %llu commits)\n", per_iteration,
           total / dt, dt * 1e6 / total,
           (unsigned long long)(after.write_commits - before.write_commits));
}

static void bench_gets(store_session *ss, int rounds, const char *what)
{
    char key[32];
    double t0 = now_s();
    int n = 0;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < KEYS; k++, n++) {
            snprintf(key, sizeof(key), "key-%d", k);
            pending++;
            if (store_pin_get(ss, "bench", key, 2, on_pin, NULL) != 0) {
                pending--;
                failures++;
            }
        }
    }
    double dt = now_s() - t0;
    printf("get     %-20s: %9.0f /s  (%.2f us each)\n", what, n / dt, dt * 1e6 / n);
}

int main(int argc, char **argv)
{
    char dir[64] = "/tmp/pins-store-bench-XXXXXX";
    if (argc > 1)
        snprintf(dir, sizeof(dir), "%s", argv[1]);
    else if (mkdtemp(dir) == NULL)
        return 1;
    store_options opts = {.data_dir = dir};
    struct event_base *base = event_base_new();
    store *s = NULL;
    store_session *ss = NULL;
    if (base == NULL || open_all(&opts, base, &s, &ss) != 0) {
        fprintf(stderr, "cannot open the store in %s\n", dir);
        return 1;
    }
    static const int batches[] = {1, 10, 100, 512};
    const char *only = getenv("STORE_BENCH_BATCH"); /* one batch size, for profiling */
    for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
        if (only == NULL || strtol(only, NULL, 10) == batches[i])
            bench_upserts(ss, base, batches[i]);
    }
    bench_gets(ss, 50, "from the cache");
    double sum = 0;
    int passes = 5;
    for (int p = 0; p < passes; p++) {
        store_session_free(ss);
        store_close(s);
        if (open_all(&opts, base, &s, &ss) != 0)
            return 1;
        double t0 = now_s();
        bench_gets(ss, 1, "from SQLite (cold)");
        sum += now_s() - t0;
    }
    printf("get     from SQLite, mean   : %9.0f /s\n", passes * KEYS / sum);
    store_session_free(ss);
    store_close(s);
    event_base_free(base);
    if (argc <= 1)
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (failures != 0)
        fprintf(stderr, "%d operations failed\n", failures);
    return failures != 0;
}
