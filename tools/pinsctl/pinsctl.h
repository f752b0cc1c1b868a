/* tools/pinsctl/pinsctl.h: what pinsctl's command files share (main is tools/pinsctl/pinsctl.c).
 *
 * Exit status of every command: 0 done, 1 the server (or the database) said no, 2 usage error,
 * 3 the server could not be reached or gave no usable answer.
 */
#ifndef PINSCTL_H
#define PINSCTL_H

#define PINSCTL_EXIT_OK          0
#define PINSCTL_EXIT_REFUSED     1
#define PINSCTL_EXIT_USAGE       2
#define PINSCTL_EXIT_UNREACHABLE 3

#include <stdbool.h>
#include <stdint.h>

#include "pins/client.h"

/* The options every client command shares, given before or after the command's name:
 *   --addr ADDR        host:port, http://host:port or https://host:port (default: $PINS_ADDR,
 *                      else 127.0.0.1:50051)
 *   --tls, --ca FILE, --cert FILE, --key FILE, --server-name NAME, --insecure
 *   --timeout DUR      deadline of each call (default 10s; 0 for none), e.g. 500ms, 5s, 2m
 *   --json             machine-readable output
 * Tokens come from the environment only: MACHINE_SECRET_TOKEN (x-machine-token) and PINS_TOKEN
 * (authorization: Bearer). */
typedef struct pinsctl_global {
    pins_options opts; /* strings borrowed from argv and the environment */
    bool json;
    bool timeout_given; /* --timeout was given (watch has no deadline otherwise) */
} pinsctl_global;

/* Fills g with the defaults and the environment. */
void pinsctl_global_init(pinsctl_global *g);
/* When argv[*pi] is a global option, applies it (and its value) to g, moves *pi past it and
 * returns 1; returns 0 when it is not one; prints the reason and returns -1 on a bad value. */
int pinsctl_global_option(pinsctl_global *g, int argc, char **argv, int *pi);
/* Parses a duration: a number with a unit ms, s, m or h ("250ms", "5s", "1.5m"); a bare number
 * is seconds. Returns false on anything else or a negative or overflowing value. */
bool pinsctl_parse_duration_ms(const char *s, int64_t *pms);
/* The exit status for a failed call's status: 1 when the server answered, 3 otherwise
 * (unreachable, deadline without an answer, malformed answer), 2 for a local argument error. */
int pinsctl_exit_for(const pins_status *st);

/* pinsctl bench ARGS (tools/pinsctl/bench.c); argv[0] is "bench". */
int pinsctl_bench_main(pinsctl_global *g, int argc, char **argv);

/* pinsctl [--database-url URL] migrate ...: argv as main's (tools/pinsctl/migrate.c). */
int pinsctl_migrate_main(int argc, char **argv);

/* pinsctl seed ARGS (tools/pinsctl/cmd_seed.c): upserts the pins of a seed file (the M7 format);
 * argv[0] is "seed". Exit status: 0 every pin written (and verified when asked), 1 a pin failed
 * or was not verified, 2 usage, a bad file (nothing written) or --wait timed out. */
int pinsctl_seed_main(pinsctl_global *g, int argc, char **argv);

/* The parts of seed the unit tests reach (tests/unit/pinsctl/test_seed.c). */
typedef struct pinsctl_seed_pin {
    const char *tenant; /* in the plan's arena */
    const char *key;
    const char *source;
    int32_t ttl; /* with has_ttl */
    bool has_ttl;
    Google__Protobuf__Struct *value; /* in the plan's arena */
    char *value_json;                /* compact JSON text of value, in the plan's arena */
    size_t entry;                    /* index of its entry in the file */
} pinsctl_seed_pin;

typedef struct pinsctl_seed_plan {
    struct pins_arena *arena;
    pinsctl_seed_pin *pins; /* in file order */
    size_t npins;
    size_t nentries;
} pinsctl_seed_plan;

/* Validates a whole seed file json[0..len) and fills plan (free with pinsctl_seed_plan_free, also
 * after a failure). An empty tenant_id becomes "global" (pinsd's rule). The parse tree's memory is
 * bounded in proportion to len. Returns 0, or -1 with one line in err naming the entry index and
 * key. */
int pinsctl_seed_parse(const char *json, size_t len, pinsctl_seed_plan *plan, char *err,
                       size_t errlen);
void pinsctl_seed_plan_free(pinsctl_seed_plan *plan);
/* Whether token is a JWT: three base64url segments, the first decoding to a JSON object with
 * "alg". */
bool pinsctl_seed_is_jwt(const char *token);
/* The wait before retry number attempt (0 for the first retry): base_ms * 2^attempt, or the
 * server's retry_after_ms when longer (-1: none); both capped at PINSCTL_SEED_BACKOFF_MAX_MS. */
#define PINSCTL_SEED_BACKOFF_MAX_MS 60000
int64_t pinsctl_seed_backoff_ms(int64_t base_ms, int attempt, int64_t retry_after_ms);
/* Whether a failed call is worth another attempt: RESOURCE_EXHAUSTED with a retry-after (the
 * rate limit; without one, e.g. a message over the size limit, it is permanent), UNAVAILABLE,
 * DEADLINE_EXCEEDED, or a connection that failed or broke without an answer. */
bool pinsctl_seed_retryable(const pins_status *st);
/* Whether two Structs hold the same JSON object (key order aside; the last of a repeated key
 * counts). O(n log n) in the keys. */
bool pinsctl_seed_value_equal(const Google__Protobuf__Struct *a, const Google__Protobuf__Struct *b);

#endif
