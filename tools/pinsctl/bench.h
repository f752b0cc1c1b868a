/* tools/pinsctl/bench.h: what pinsctl bench's files share (the run is tools/pinsctl/bench.c).
 *
 * bench_config is the parsed command line; bench_config_parse is separate from the run so that
 * unit tests check the parsing without a server.
 */
#ifndef PINSCTL_BENCH_H
#define PINSCTL_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bench_hist.h"
#include "pinsctl.h"

/* The operations a run mixes, in the order of --mix and of every report. */
typedef enum bench_op {
    BENCH_OP_GET,    /* GetPin */
    BENCH_OP_PUT,    /* UpsertPin */
    BENCH_OP_LIST,   /* ListPins */
    BENCH_OP_DELETE, /* DeletePin */
    BENCH_OP__COUNT
} bench_op;

/* "get", "put", "list", "delete". Static storage. */
const char *bench_op_name(bench_op op);

typedef enum bench_dist {
    BENCH_DIST_UNIFORM,
    BENCH_DIST_ZIPFIAN,
} bench_dist;

typedef struct bench_config {
    int connections;               /* -c, >= 1 */
    int streams;                   /* -m: calls in flight per connection, >= 1 */
    int64_t duration_ms;           /* -d; used when requests is 0 */
    uint64_t requests;             /* -n: total calls counted; 0: run for duration_ms */
    int64_t warmup_ms;             /* --warmup: calls sent before this are not counted */
    double rate;                   /* -r: total target calls per second; 0: closed loop */
    unsigned mix[BENCH_OP__COUNT]; /* --mix weights, sum > 0 */
    uint64_t keys;                 /* --keys per tenant, >= 1 */
    bench_dist dist;               /* --dist */
    double zipf_s;                 /* --zipf-s, > 0 */
    int tenants;                   /* --tenants, >= 1 */
    size_t value_size;             /* --value-size: bytes of each put's JSON value */
    int list_limit;                /* --list-limit: ListPins limit, 1..1000 */
    bool prefill;                  /* --prefill */
    double conflicts;              /* --conflicts: fraction of puts with a stale expected_version */
    uint64_t seed;                 /* --seed */
    const char *prefix;            /* --key-prefix: keys are <prefix><rank> (borrowed from argv) */
    const char *tenant_prefix;     /* --tenant-prefix: tenants are <tenant_prefix><index> */
    bool json;                     /* --json (or the global --json) */
    bool timeline;                 /* --timeline: the text report lists every second */
} bench_config;

/* The longest -d and --warmup: 365 days (8760h). Their sum in nanoseconds past the monotonic clock
 * stays far below UINT64_MAX (which about 5,000,000 hours would wrap). */
#define BENCH_MAX_DURATION_MS INT64_C(31536000000)

/* The deadline of the first health check when --timeout is 0 or longer: a server that accepts
 * and never answers makes the run exit 3 after it. */
#define BENCH_PROBE_TIMEOUT_MS 10000
/* Exit status of a run stopped by ^C before its load started (the health check or the prefill):
 * no report. */
#define BENCH_EXIT_INTERRUPTED 130

/* The defaults: -c 1 -m 10 -d 10s, get only, 1000 keys, uniform, 1 tenant, 64-byte values. */
void bench_config_init(bench_config *cfg);

/* Parses bench's arguments (argv[0] is "bench") into cfg and the shared connection options into
 * g. Returns 0 when the run should go on, 1 after printing --help (exit 0), or -1 after printing
 * a usage error to stderr (exit 2). */
int bench_config_parse(bench_config *cfg, pinsctl_global *g, int argc, char **argv);

/* Parses a --mix value ("get=90,put=10"; missing operations weigh 0) into mix. Returns false
 * on a malformed value or when every weight is 0; mix is untouched then. */
bool bench_parse_mix(const char *s, unsigned mix[BENCH_OP__COUNT]);

/* Seconds of the per-second timeline kept; answers later than that count in the last second. */
#define BENCH_TIMELINE_MAX 3600
#define BENCH_CODES        (PINS_CODE_UNAUTHENTICATED + 1)

/* What a run counted. Only calls sent after the warmup and the prefill count. Every counted
 * call ends as exactly one of: ok, error (pinsd's status code), aborted (a --conflicts put
 * answered ABORTED), failed locally (a status the client decided, pinsd sent none: connection
 * refused or lost, deadline passed), unanswered (still running when the run gave up waiting,
 * then cancelled). answers is ok + errors + aborted, the calls pinsd answered: they alone count
 * in req/s and in the latency, from the call's scheduled send time. About 220 KiB: allocate it. */
typedef struct bench_stats {
    uint64_t sent[BENCH_OP__COUNT];
    uint64_t answers[BENCH_OP__COUNT];
    uint64_t ok[BENCH_OP__COUNT];
    uint64_t errors[BENCH_OP__COUNT];
    uint64_t codes[BENCH_CODES]; /* errors by status code */
    uint64_t failed_locally[BENCH_OP__COUNT];
    uint64_t local_codes[BENCH_CODES]; /* failed_locally by status code */
    uint64_t conflicts_sent;           /* puts sent with a stale expected_version */
    uint64_t aborted;                  /* of those, answered ABORTED */
    uint64_t unanswered;
    uint64_t prefill_sent;
    uint64_t prefill_errors;
    uint64_t prefill_ns;
    uint64_t measured_ns; /* from the end of the warmup to the last counted answer */
    /* From the end of the warmup to the end of sending: the end of -d (also when the pacer's
     * last send came before it), or when a ^C or -n's last call stopped it. 0 when the load
     * never stopped sending (no report then). */
    uint64_t sending_ns;
    uint64_t timeline_ok[BENCH_TIMELINE_MAX];
    uint64_t timeline_err[BENCH_TIMELINE_MAX];   /* errors, aborted included */
    uint64_t timeline_local[BENCH_TIMELINE_MAX]; /* failed locally */
    uint64_t timeline_len;
    /* The latency of the answers (all operations) that arrived in each second, allocated when
     * the second's first answer comes (NULL: none yet), freed by bench_stats_clear. At most
     * BENCH_TIMELINE_MAX x 4.3 KiB (15 MiB) for a run of an hour or more. */
    bench_shist *timeline_lat[BENCH_TIMELINE_MAX];
    uint64_t timeline_lat_lost; /* answers left out of timeline_lat: out of memory */
    bench_hist lat[BENCH_OP__COUNT];
} bench_stats;

/* Runs the load of cfg with the connection options opts (borrowed) and fills st (zeroed by the
 * caller with the histograms initialised: bench_stats_init). Returns 0 when the run completed,
 * PINSCTL_EXIT_UNREACHABLE when pinsd could not be reached at all, PINSCTL_EXIT_USAGE for an
 * option the run refused, PINSCTL_EXIT_REFUSED when the prefill failed, BENCH_EXIT_INTERRUPTED
 * after a ^C before the load; the reason is printed to stderr. (tools/pinsctl/bench_run.c) */
int bench_run(const bench_config *cfg, const pins_options *opts, bench_stats *st);

void bench_stats_init(bench_stats *st);
/* Frees what st allocated (the per-second histograms), not st itself; st is empty after. */
void bench_stats_clear(bench_stats *st);
/* Records the latency ns of an answer that arrived in second sec (< BENCH_TIMELINE_MAX) of the
 * timeline in st->timeline_lat, allocating the second's histogram on its first answer. Does not
 * touch timeline_len or the counts. Returns 0, or -1 when the allocation failed (the answer is
 * counted in timeline_lat_lost). */
int bench_stats_timeline_record(bench_stats *st, uint64_t sec, uint64_t ns);

/* A second of the timeline counts in the stall figures when it had at least this many answers
 * (the p99 of a handful of values is their max) ... */
#define BENCH_STALL_MIN_ANSWERS 20
/* ... and its p99 is "over" when above this many times the run's p99. */
#define BENCH_STALL_FACTOR 3

/* The worst second of a run against the whole run. Only complete seconds count: second i
 * ended by the end of sending or the last counted answer, whichever came later ((i + 1) s <=
 * bench_stall_end_ns), so the last, partial second (the drain after -d, the end of -n, a ^C)
 * does not, nor the last slot of the timeline, which holds every answer after
 * BENCH_TIMELINE_MAX - 1 seconds. */
typedef struct bench_stall {
    uint64_t run_p99_ns;   /* p99 of every answer of the run (st->lat merged), 0 when none */
    uint64_t considered;   /* seconds that count (complete, >= BENCH_STALL_MIN_ANSWERS) */
    uint64_t worst_second; /* of those, the one with the highest p99 (the first of equals) */
    uint64_t worst_p99_ns; /* its p99; worst_second and worst_p99_ns are 0 when none counts */
    uint64_t over;         /* seconds that count whose p99 > BENCH_STALL_FACTOR x run_p99_ns */
} bench_stall;

/* The end of the complete seconds: the later of st->measured_ns and st->sending_ns. */
uint64_t bench_stall_end_ns(const bench_stats *st);
/* Whether second i of st counts in the stall figures (see bench_stall). */
bool bench_stall_second_counts(const bench_stats *st, uint64_t i);
/* Computes the stall figures of st into *pstall. */
void bench_stall_compute(const bench_stats *st, bench_stall *pstall);
/* The report: text for people, or one JSON object (tools/pinsctl/bench_report.c). */
void bench_report_text(FILE *out, const bench_config *cfg, const pins_options *opts,
                       const bench_stats *st);
void bench_report_json(FILE *out, const bench_config *cfg, const pins_options *opts,
                       const bench_stats *st);

#endif
