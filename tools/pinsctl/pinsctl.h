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

#endif
