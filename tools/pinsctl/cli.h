/* tools/pinsctl/cli.h: what pinsctl's client commands share (tools/pinsctl/cli.c parses argv and
 * dispatches; cmd_pins.c and cmd_admin.c hold the commands). Not used by bench or migrate.
 */
#ifndef PINSCTL_CLI_H
#define PINSCTL_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pinsctl.h"

#define PINSCTL_MAX_POS  4
#define PINSCTL_MAX_OPTS 12

/* One option of a command: "--name METAVAR" (metavar NULL: a flag without a value). */
typedef struct pinsctl_opt {
    const char *name;
    const char *metavar;
    const char *help;
} pinsctl_opt;

struct pinsctl_cmd;

/* A command's parsed arguments. Strings are borrowed from argv. */
typedef struct pinsctl_args {
    pinsctl_global *g;
    const struct pinsctl_cmd *cmd;
    const char *pos[PINSCTL_MAX_POS];
    int npos;
    const char *val[PINSCTL_MAX_OPTS]; /* by index in cmd->opts; NULL when not given */
    bool set[PINSCTL_MAX_OPTS];
} pinsctl_args;

typedef struct pinsctl_cmd {
    const char *name;     /* "get", "rbac audit" */
    const char *synopsis; /* what follows the name: "TENANT KEY" */
    const char *summary;  /* one line */
    const char *details;  /* more lines for CMD --help, or NULL */
    const pinsctl_opt *opts;
    int min_pos, max_pos;
    int (*run)(pinsctl_args *a);
} pinsctl_cmd;

/* pinsctl's main for every command (main() in tools/pinsctl/pinsctl.c calls it). */
int pinsctl_main(int argc, char **argv);

/* The value of option name ("--prefix") or NULL when it was not given. */
const char *pinsctl_arg(const pinsctl_args *a, const char *name);
/* Whether option name was given (flags). */
bool pinsctl_flag(const pinsctl_args *a, const char *name);

/* Prints "pinsctl: CMD: TEXT (see pinsctl CMD --help)" and returns PINSCTL_EXIT_USAGE. */
int pinsctl_usage_error(const pinsctl_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Parses a whole decimal integer in [min, max]. Returns false on anything else. */
bool pinsctl_parse_int(const char *s, int64_t min, int64_t max, int64_t *pv);
/* Parses option name as an integer in [min, max]: 0 when absent (*pv untouched) or parsed (and
 * *pset true), PINSCTL_EXIT_USAGE after printing why. */
int pinsctl_int_opt(const pinsctl_args *a, const char *name, int64_t min, int64_t max, int64_t *pv,
                    bool *pset);

/* A new client for a's global options, or NULL with the exit status in *pexit (the reason
 * printed). Free with pins_client_free. */
pins_client *pinsctl_connect(const pinsctl_args *a, int *pexit);
/* Prints a failed call ("pinsctl: get: NOT_FOUND: pin not found (request id ...)") and returns
 * its exit status. */
int pinsctl_fail(const pinsctl_args *a, const pins_status *st);

/* Prints msg as one line of JSON in the REST shape (proto names, int64 as numbers, defaults
 * emitted); msg NULL prints null. Returns 0 or PINSCTL_EXIT_REFUSED when it has no JSON form. */
int pinsctl_print_json(const ProtobufCMessage *msg);
/* msg (a google.protobuf.Value, Struct or any message) as new compact JSON text (free()), or
 * NULL when it has none; NULL msg gives "null". */
char *pinsctl_json_text(const ProtobufCMessage *msg);
/* A Timestamp as "2026-12-07T01:15:08Z" (micros adds ".123456"), "-" when ts is NULL. */
void pinsctl_fmt_ts(const Google__Protobuf__Timestamp *ts, bool micros, char *out, size_t n);

/* A text table: cells are copied; the last column is cut to the terminal's width when stdout is
 * a terminal. */
typedef struct pinsctl_table {
    size_t ncols;
    char **cells; /* nrows * ncols, row-major; row 0 is the header */
    size_t ncells, cap;
    bool failed; /* out of memory: printing says so */
} pinsctl_table;

void pinsctl_table_init(pinsctl_table *t, size_t ncols);
void pinsctl_table_add(pinsctl_table *t, const char *cell);
void pinsctl_table_addf(pinsctl_table *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prints the table to stdout; returns 0 or PINSCTL_EXIT_REFUSED after an allocation failure. */
int pinsctl_table_print(pinsctl_table *t);
void pinsctl_table_free(pinsctl_table *t);

/* Before a stream: one health Check, so that a deadline ending the stream later is known to be
 * on a server that answers. Returns 0, or the exit status when no answer came (printed). */
int pinsctl_stream_probe(const pinsctl_args *a, pins_client *c);
/* How a stream (watch, health --watch) ended after seen messages, rv being pins_stream_next's
 * last return: 0 at its end, or at the deadline --timeout asked for (DEADLINE_EXCEEDED printed
 * on stderr; pinsctl_stream_probe showed the server answers); else as pinsctl_fail. */
int pinsctl_stream_end(const pinsctl_args *a, int rv, const pins_status *st, uint64_t seen);
/* The per-call options of a stream: its deadline only when --timeout was given. */
pins_call_options pinsctl_stream_copts(const pinsctl_args *a);

/* The commands (cmd_pins.c, cmd_admin.c). */
int pinsctl_cmd_get(pinsctl_args *a);
int pinsctl_cmd_put(pinsctl_args *a);
int pinsctl_cmd_list(pinsctl_args *a);
int pinsctl_cmd_delete(pinsctl_args *a);
int pinsctl_cmd_cleanup(pinsctl_args *a);
int pinsctl_cmd_watch(pinsctl_args *a);
int pinsctl_cmd_health(pinsctl_args *a);
int pinsctl_cmd_ready(pinsctl_args *a);
int pinsctl_cmd_status(pinsctl_args *a);
int pinsctl_cmd_rbac_info(pinsctl_args *a);
int pinsctl_cmd_rbac_matrix(pinsctl_args *a);
int pinsctl_cmd_rbac_reload(pinsctl_args *a);
int pinsctl_cmd_rbac_audit(pinsctl_args *a);
int pinsctl_cmd_rbac_audit_cleanup(pinsctl_args *a);
int pinsctl_cmd_memory_audit(pinsctl_args *a);

#endif
