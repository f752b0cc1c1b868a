/* tools/pinsctl/bench.c: pinsctl bench, a load generator for pinsd on libpins-client's
 * event-driven API (pins_conn on one libevent base, one thread).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const char usage_text[] =
    "usage: pinsctl bench [OPTIONS]\n"
    "\n"
    "Sends GetPin, UpsertPin, ListPins and DeletePin calls (memorypins.v1.MemoryPins) to pinsd\n"
    "over -c HTTP/2 connections with -m calls in flight on each, and reports calls per second,\n"
    "answers by status and latency percentiles. Start pinsd with RATE_LIMIT_RPM=0 (its default\n"
    "limit of 100 requests per minute per tenant answers RESOURCE_EXHAUSTED beyond it).\n"
    "\n"
    "load:\n"
    "  -c, --connections N   HTTP/2 connections (default 1)\n"
    "  -m, --streams N       calls in flight per connection (default 10)\n"
    "  -d, --duration DUR    how long to send, e.g. 10s, 500ms, 2m (default 10s; at most 8760h)\n"
    "  -n, --requests N      send exactly N counted calls instead of running for a duration\n"
    "  --warmup DUR          send for DUR first without counting (default 0; at most 8760h)\n"
    "  -r, --rate N          total target calls per second, paced evenly: each connection sends\n"
    "                        at fixed intervals; latency counts from the scheduled send time, so\n"
    "                        a stalled server shows as latency (default: closed loop, -m calls\n"
    "                        always in flight per connection)\n"
    "\n"
    "workload:\n"
    "  --mix SPEC            weights of the operations, e.g. get=90,put=10,list=0,delete=0\n"
    "                        (default get=100); the proportions are exact (a deterministic\n"
    "                        interleaving, not random draws)\n"
    "  --keys N              keys per tenant (default 1000): <key-prefix>0 .. <key-prefix>N-1\n"
    "  --dist uniform|zipfian  key distribution (default uniform); zipfian: rank r (key\n"
    "                        <key-prefix>r, r from 0) is drawn with probability ~ 1/(r+1)^s\n"
    "  --zipf-s S            the zipfian exponent (default 0.99)\n"
    "  --tenants N           tenants (default 1): <tenant-prefix>0 .. <tenant-prefix>N-1, drawn\n"
    "                        uniformly\n"
    "  --value-size BYTES    size of each put's JSON value, about (default 64)\n"
    "  --list-limit N        ListPins limit (default 10)\n"
    "  --prefill             upsert every key of every tenant first (not counted; when one of\n"
    "                        them fails, the run stops there with exit status 1); before and\n"
    "                        after it one ListPins per tenant counts its keys: a tenant that\n"
    "                        held none must then hold exactly --keys, else the run stops with\n"
    "                        exit status 1 (another server on the same address, lost writes);\n"
    "                        without the right to list, the prefill runs unchecked and says so\n"
    "  --conflicts F         fraction (0..1) of puts sent with a stale expected_version; their\n"
    "                        ABORTED answers are counted apart, not as errors (default 0)\n"
    "  --seed N              seed of the key and tenant draws (default 1)\n"
    "  --key-prefix P        (default \"bench-\")\n"
    "  --tenant-prefix P     (default \"bench-t\")\n"
    "\n"
    "connection (shared by every pinsctl command):\n"
    "  --addr ADDR           host:port, http://host:port or https://host:port\n"
    "                        (default $PINS_ADDR, else 127.0.0.1:50051)\n"
    "  --tls, --ca FILE, --cert FILE, --key FILE, --server-name NAME, --insecure\n"
    "  --timeout DUR         deadline of each call (default 10s)\n"
    "  --json                print the report as one JSON object\n"
    "\n"
    "report:\n"
    "  --timeline            also list every second of the run (by the answers' arrival):\n"
    "                        answers, errors, failed locally, p50, p99 and max latency\n"
    "  tokens: MACHINE_SECRET_TOKEN (x-machine-token) and PINS_TOKEN (bearer) from the "
    "environment\n"
    "\n"
    "Calls are not retried with backoff (a failure is counted as it came); calls the server never\n"
    "processed (refused streams, GOAWAY) are resent by the library, and a connection that pinsd\n"
    "closed is opened again. A call that ended without an answer from pinsd (connection refused\n"
    "or lost, deadline passed) is counted as failed locally, by status, apart from the answers:\n"
    "it is not in req/s or in the latency. The first ^C stops sending and waits for the calls in\n"
    "flight; a second ^C cancels them.\n"
    "\n"
    "Per second: the latency of the answers that arrived in each second is kept in a coarser\n"
    "histogram (percentiles within 3.1%, the run's within 0.4%). The report names the second\n"
    "with the worst p99 against the run's p99, and how many seconds had a p99 over 3 times the\n"
    "run's; only complete seconds with 20 answers or more count (not the partial one after the\n"
    "end of sending). With --json, each second of \"timeline\" has p50_ms, p99_ms, p99.9_ms and\n"
    "max_ms (null without answers), and \"stall\" holds run_p99_ms, worst_second, worst_p99_ms,\n"
    "ratio, seconds_over_3x, seconds_considered, min_answers and complete_until_s (worst_second,\n"
    "worst_p99_ms and ratio are null when no second counts).\n"
    "\n"
    "Before the load, one health check must be answered within --timeout, at most 10s (10s with\n"
    "--timeout 0); a ^C during it or during --prefill ends the run without a report.\n"
    "\n"
    "Exit status: 0 the run completed (also when calls failed: see the errors in the report),\n"
    "1 an upsert of --prefill failed or pinsd does not hold the prefilled keys (the load was not\n"
    "run), 2 usage error, 3 pinsd could not be\n"
    "reached at all (the health check got no answer), 130 interrupted by ^C during the health\n"
    "check or --prefill (no report).\n";

void bench_config_init(bench_config *cfg)
{
    *cfg = (bench_config){
        .connections = 1,
        .streams = 10,
        .duration_ms = 10000,
        .mix = {[BENCH_OP_GET] = 100},
        .keys = 1000,
        .dist = BENCH_DIST_UNIFORM,
        .zipf_s = 0.99,
        .tenants = 1,
        .value_size = 64,
        .list_limit = 10,
        .seed = 1,
        .prefix = "bench-",
        .tenant_prefix = "bench-t",
    };
}

/* Parses a whole unsigned decimal within [min, max]. */
static bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *pv)
{
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *pv = v;
    return true;
}

static bool parse_int_range(const char *s, int min, int max, int *pv)
{
    uint64_t v = 0;
    if (!parse_u64(s, (uint64_t)min, (uint64_t)max, &v))
        return false;
    *pv = (int)v;
    return true;
}

/* Parses a finite double within [min, max]. */
static bool parse_double(const char *s, double min, double max, double *pv)
{
    if (s == NULL || *s == '\0')
        return false;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return false;
    *pv = v;
    return true;
}

static int usage_error(const char *fmt, const char *arg)
{
    fputs("pinsctl bench: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (see pinsctl bench --help)\n", stderr);
    return -1;
}

int bench_config_parse(bench_config *cfg, pinsctl_global *g, int argc, char **argv)
{
    bool have_duration = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            return 1;
        }
        int grv = pinsctl_global_option(g, argc, argv, &i);
        if (grv < 0)
            return -1;
        if (grv > 0) {
            i--; /* the global parser moved past the option; the loop's i++ does too */
            continue;
        }
        if (strcmp(a, "--prefill") == 0) {
            cfg->prefill = true;
            continue;
        }
        if (strcmp(a, "--timeline") == 0) {
            cfg->timeline = true;
            continue;
        }
        if (a[0] != '-')
            return usage_error("unexpected argument '%s'", a);
        /* --name=value or --name value */
        char name[32];
        const char *v = NULL;
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq != NULL && (size_t)(eq - a) < sizeof(name)) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = '\0';
            a = name;
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            return usage_error("%s needs a value", a);
        }
        uint64_t u = 0;
        if (strcmp(a, "-c") == 0 || strcmp(a, "--connections") == 0) {
            if (!parse_int_range(v, 1, 10000, &cfg->connections))
                return usage_error("--connections needs 1..10000, got '%s'", v);
        } else if (strcmp(a, "-m") == 0 || strcmp(a, "--streams") == 0) {
            if (!parse_int_range(v, 1, 10000, &cfg->streams))
                return usage_error("--streams needs 1..10000, got '%s'", v);
        } else if (strcmp(a, "-d") == 0 || strcmp(a, "--duration") == 0) {
            if (!pinsctl_parse_duration_ms(v, &cfg->duration_ms) || cfg->duration_ms <= 0 ||
                cfg->duration_ms > BENCH_MAX_DURATION_MS)
                return usage_error(
                    "--duration needs a positive duration up to 8760h such as 10s, got '%s'", v);
            have_duration = true;
        } else if (strcmp(a, "-n") == 0 || strcmp(a, "--requests") == 0) {
            if (!parse_u64(v, 1, UINT64_C(1) << 48, &cfg->requests))
                return usage_error("--requests needs a positive count, got '%s'", v);
        } else if (strcmp(a, "--warmup") == 0) {
            if (!pinsctl_parse_duration_ms(v, &cfg->warmup_ms) ||
                cfg->warmup_ms > BENCH_MAX_DURATION_MS)
                return usage_error("--warmup needs a duration up to 8760h such as 2s, got '%s'", v);
        } else if (strcmp(a, "-r") == 0 || strcmp(a, "--rate") == 0) {
            if (!parse_double(v, 0.001, 1e8, &cfg->rate))
                return usage_error("--rate needs a positive number of calls per second, got '%s'",
                                   v);
        } else if (strcmp(a, "--mix") == 0) {
            if (!bench_parse_mix(v, cfg->mix))
                return usage_error(
                    "--mix needs weights such as get=90,put=10 (operations get, put, "
                    "list, delete, not all 0), got '%s'",
                    v);
        } else if (strcmp(a, "--keys") == 0) {
            if (!parse_u64(v, 1, UINT64_C(100000000), &cfg->keys))
                return usage_error("--keys needs 1..100000000, got '%s'", v);
        } else if (strcmp(a, "--dist") == 0) {
            if (strcmp(v, "uniform") == 0)
                cfg->dist = BENCH_DIST_UNIFORM;
            else if (strcmp(v, "zipfian") == 0 || strcmp(v, "zipf") == 0)
                cfg->dist = BENCH_DIST_ZIPFIAN;
            else
                return usage_error("--dist needs uniform or zipfian, got '%s'", v);
        } else if (strcmp(a, "--zipf-s") == 0) {
            if (!parse_double(v, 0.01, 10.0, &cfg->zipf_s))
                return usage_error("--zipf-s needs an exponent in 0.01..10, got '%s'", v);
        } else if (strcmp(a, "--tenants") == 0) {
            if (!parse_int_range(v, 1, 1000000, &cfg->tenants))
                return usage_error("--tenants needs 1..1000000, got '%s'", v);
        } else if (strcmp(a, "--value-size") == 0) {
            if (!parse_u64(v, 0, 1000000, &u))
                return usage_error("--value-size needs 0..1000000 bytes, got '%s'", v);
            cfg->value_size = (size_t)u;
        } else if (strcmp(a, "--list-limit") == 0) {
            if (!parse_int_range(v, 1, 1000, &cfg->list_limit))
                return usage_error("--list-limit needs 1..1000, got '%s'", v);
        } else if (strcmp(a, "--conflicts") == 0) {
            if (!parse_double(v, 0.0, 1.0, &cfg->conflicts))
                return usage_error("--conflicts needs a fraction in 0..1, got '%s'", v);
        } else if (strcmp(a, "--seed") == 0) {
            if (!parse_u64(v, 0, UINT64_MAX, &cfg->seed))
                return usage_error("--seed needs a number, got '%s'", v);
        } else if (strcmp(a, "--key-prefix") == 0) {
            if (strlen(v) > 200)
                return usage_error("--key-prefix is too long: '%s'", v);
            cfg->prefix = v;
        } else if (strcmp(a, "--tenant-prefix") == 0) {
            if (v[0] == '\0' || strlen(v) > 200)
                return usage_error("--tenant-prefix needs 1..200 characters, got '%s'", v);
            cfg->tenant_prefix = v;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (have_duration && cfg->requests > 0)
        return usage_error("%s", "give --duration or --requests, not both");
    cfg->json = cfg->json || g->json;
    return 0;
}

int pinsctl_bench_main(pinsctl_global *g, int argc, char **argv)
{
    bench_config cfg;
    bench_config_init(&cfg);
    int rv = bench_config_parse(&cfg, g, argc, argv);
    if (rv != 0)
        return rv > 0 ? PINSCTL_EXIT_OK : PINSCTL_EXIT_USAGE;
    bench_stats *st = malloc(sizeof(*st));
    if (st == NULL) {
        fputs("pinsctl bench: out of memory\n", stderr);
        return PINSCTL_EXIT_UNREACHABLE;
    }
    bench_stats_init(st);
    rv = bench_run(&cfg, &g->opts, st);
    if (rv == PINSCTL_EXIT_OK) {
        if (cfg.json)
            bench_report_json(stdout, &cfg, &g->opts, st);
        else
            bench_report_text(stdout, &cfg, &g->opts, st);
        fflush(stdout);
    }
    bench_stats_clear(st);
    free(st);
    return rv;
}
