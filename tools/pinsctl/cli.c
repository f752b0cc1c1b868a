/* tools/pinsctl/cli.c: pinsctl's argument parsing, help, dispatch and the output helpers its
 * client commands share.
 *
 * Global options may come before or after the command's name; "--" ends the options (a key or a
 * value that starts with '-' follows it). Every command answers --help before anything else.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common/timeutil.h"
#include "common/buf.h"
#include "protocols/json.h"

#define JSON_MAX_BYTES  (256u << 20)
#define TABLE_MAX_CELLS (4u << 20)

/* ---- the command table ----------------------------------------------------------------------- */

static const pinsctl_opt no_opts[] = {{NULL, NULL, NULL}};

static const pinsctl_opt put_opts[] = {
    {"--ttl", "SECONDS", "time to live; the pin expires that long after this write"},
    {"--source", "S", "who or what wrote the pin (free text, stored with it)"},
    {"--expected-version", "N",
     "write only when the pin's current version is N (0: only when it does not exist)"},
    {NULL, NULL, NULL}};

static const pinsctl_opt list_opts[] = {
    {"--prefix", "P", "only keys that start with P"},
    {"--limit", "N", "at most N pins per page (the server's default when absent)"},
    {"--offset", "N", "skip the first N pins"},
    {"--page-token", "T", "continue from a previous page's next_page_token"},
    {"--include-expired", NULL, "also pins whose TTL has passed and are not cleaned up yet"},
    {"--all", NULL,
     "follow next_page_token to the last page (at most 10000 pages, 100000 pins, 64 MiB)"},
    {NULL, NULL, NULL}};

static const pinsctl_opt delete_opts[] = {
    {"--expected-version", "N", "delete only when the pin's current version is N"},
    {NULL, NULL, NULL}};

static const pinsctl_opt watch_opts[] = {
    {"--prefix", "P", "only keys that start with P"},
    {"--since-revision", "R",
     "first every kept change after revision R (the last one seen), then the live ones"},
    {"--count", "N", "end after N events"},
    {NULL, NULL, NULL}};

static const pinsctl_opt health_opts[] = {
    {"--watch", NULL, "follow the serving status (gRPC health Watch), one line per change"},
    {"--count", "N", "with --watch: end after N statuses"},
    {NULL, NULL, NULL}};

/* The filters of ListRbacAuditRequest, CleanupRbacAuditRequest and ListMemoryAuditRequest: each
 * option sets the request field of the same name (dashes for underscores). */
static const pinsctl_opt rbac_audit_opts[] = {
    {"--resource", "R", "only decisions on resource R"},
    {"--action", "A", "only decisions on action A"},
    {"--allowed", "true|false", "only allowed (true) or only denied (false) decisions"},
    {"--subject", "S", "only decisions about subject S"},
    {"--tenant-id", "T", "only decisions on tenant T"},
    {"--since", "TIME", "only decisions at or after TIME (RFC 3339, e.g. 2026-12-07T00:00:00Z)"},
    {"--limit", "N", "at most N entries"},
    {"--offset", "N", "skip the first N entries"},
    {NULL, NULL, NULL}};

static const pinsctl_opt rbac_audit_cleanup_opts[] = {
    {"--retention-days", "D", "delete entries older than D days (the server's default when 0)"},
    {NULL, NULL, NULL}};

static const pinsctl_opt memory_audit_opts[] = {
    {"--tenant-id", "T", "only operations on tenant T"},
    {"--pin-key", "K", "only operations on the pin with key K (--key is the TLS key file)"},
    {"--operation", "OP", "only operations named OP (e.g. upsert, get, delete)"},
    {"--limit", "N", "at most N entries"},
    {"--offset", "N", "skip the first N entries"},
    {NULL, NULL, NULL}};

static const pinsctl_cmd commands[] = {
    {"get", "TENANT KEY", "read one pin (GetPin)",
     "Prints the pin's key, version, times and value; --json prints the pin as the REST API\n"
     "answers GET /api/v1/memory/pins/{key}.",
     no_opts, 2, 2, pinsctl_cmd_get},
    {"put", "TENANT KEY (JSON | -)", "create or replace a pin (UpsertPin)",
     "The value is a JSON object given as one argument, or read from standard input with \"-\"\n"
     "(at most 4 MiB). --json prints the pin as the REST API answers POST /api/v1/memory/pins.",
     put_opts, 3, 3, pinsctl_cmd_put},
    {"list", "TENANT", "list a tenant's pins (ListPins)",
     "Columns KEY VERSION UPDATED EXPIRES VALUE; the value is cut to the terminal's width when\n"
     "standard output is a terminal. --json prints the ListPinsResponse (with --all: one\n"
     "document holding every page's pins).",
     list_opts, 1, 1, pinsctl_cmd_list},
    {"delete", "TENANT KEY", "delete a pin (DeletePin)", NULL, delete_opts, 2, 2,
     pinsctl_cmd_delete},
    {"cleanup", "[TENANT]", "delete expired pins, of one tenant or of all (CleanupExpiredPins)",
     NULL, no_opts, 0, 1, pinsctl_cmd_cleanup},
    {"watch", "TENANT", "print a tenant's pin events as they happen (WatchPins)",
     "One line per event (--json: one WatchPinsResponse per line). Ends after --count events,\n"
     "at the deadline when --timeout is given (DEADLINE_EXCEEDED on standard error, exit 0;\n"
     "a health Check first makes sure the server answers, else exit 3), or on Ctrl-C.\n"
     "Without --timeout a watch has no deadline.",
     watch_opts, 1, 1, pinsctl_cmd_watch},
    {"health", "[SERVICE]", "gRPC health Check (or Watch) of SERVICE (default: the server)",
     "Prints the serving status; exit 0 when SERVING, 1 otherwise.", health_opts, 0, 1,
     pinsctl_cmd_health},
    {"ready", "", "the readiness probe (GET /ready) and its checks",
     "Exit 0 when the server answers 200 (ready), 1 when it answers 503 (not ready).", no_opts, 0,
     0, pinsctl_cmd_ready},
    {"status", "", "the server's version, uptime and state (Admin GetStatus)", NULL, no_opts, 0, 0,
     pinsctl_cmd_status},
    {"rbac info", "", "the RBAC policy in force (Admin GetRbacInfo)", NULL, no_opts, 0, 0,
     pinsctl_cmd_rbac_info},
    {"rbac matrix", "", "what each role may do (Admin GetRbacMatrix)", NULL, no_opts, 0, 0,
     pinsctl_cmd_rbac_matrix},
    {"rbac reload", "", "reload the RBAC policy file (Admin ReloadRbacPolicy)",
     "Exit 1 when the server kept the previous policy (success false).", no_opts, 0, 0,
     pinsctl_cmd_rbac_reload},
    {"rbac audit", "", "the RBAC decision log (Admin ListRbacAudit)", NULL, rbac_audit_opts, 0, 0,
     pinsctl_cmd_rbac_audit},
    {"rbac audit-cleanup", "", "delete old RBAC decision log entries (Admin CleanupRbacAudit)",
     NULL, rbac_audit_cleanup_opts, 0, 0, pinsctl_cmd_rbac_audit_cleanup},
    {"memory-audit", "", "the pin operations log (Admin ListMemoryAudit)", NULL, memory_audit_opts,
     0, 0, pinsctl_cmd_memory_audit},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const char global_opts_text[] =
    "global options (before or after the command):\n"
    "  --addr ADDR          host:port, http://host:port (h2c) or https://host:port (TLS)\n"
    "                       (default: $PINS_ADDR, else 127.0.0.1:50051)\n"
    "  --tls                TLS also for a bare host:port; --ca, --cert, --key, --server-name\n"
    "                       and --insecure imply it (with an http:// address they are refused)\n"
    "  --ca FILE            PEM CA bundle that verifies the server (default: the system's)\n"
    "  --cert FILE          client certificate (PEM) for mutual TLS, with --key\n"
    "  --key FILE           the client certificate's private key (PEM)\n"
    "  --server-name NAME   name to verify and send as SNI (default: the host of --addr)\n"
    "  --insecure           TLS without verifying the server (testing only)\n"
    "  --timeout DUR        deadline of each call: 500ms, 5s, 2m, 1h; a bare number is seconds;\n"
    "                       0 for none (default 10s; watch: none unless given)\n"
    "  --json               one JSON document per call (REST shape: proto field names, int64\n"
    "                       as numbers, defaults emitted); one per line for watch\n"
    "  -h, --help           help (pinsctl CMD --help: the command's own)\n"
    "  --version            pinsctl's and libpins-client's versions\n";

static const char env_text[] =
    "environment:\n"
    "  PINS_ADDR              default --addr\n"
    "  MACHINE_SECRET_TOKEN   sent as x-machine-token (tokens are never taken from arguments\n"
    "                         and never printed)\n"
    "  PINS_TOKEN             sent as authorization: Bearer <token>\n"
    "  DATABASE_URL           migrate's database\n";

static const char exit_text[] =
    "exit status:\n"
    "  0  done\n"
    "  1  the server said no (any status it sent: NOT_FOUND, FAILED_PRECONDITION, ...; not\n"
    "     ready; not serving)\n"
    "  2  usage: bad arguments or a bad JSON value, nothing was sent\n"
    "  3  no usable answer: connection refused, TLS failure, deadline with no answer from the\n"
    "     server, malformed answer\n";

/* ---- help ------------------------------------------------------------------------------------ */

static void print_global_help(FILE *f)
{
    fputs("usage: pinsctl [GLOBAL OPTIONS] COMMAND [ARGS] [OPTIONS]\n"
          "\n"
          "pinsctl talks to a running pinsd over gRPC (libpins-client).\n"
          "\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char head[64];
        snprintf(head, sizeof(head), "%s %s", commands[i].name, commands[i].synopsis);
        fprintf(f, "  %-34s %s\n", head, commands[i].summary);
    }
    fputs("  migrate ...                        the PostgreSQL schema (pinsctl migrate --help)\n"
          "  bench ...                          load generator (pinsctl bench --help)\n"
          "  seed --file F --base URL ...       upsert the pins of a seed file, M7's format\n"
          "                                     (pinsctl seed --help)\n"
          "\n",
          f);
    fputs("command options (pinsctl CMD --help says more):\n", f);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const pinsctl_opt *o = commands[i].opts;
        if (o[0].name == NULL)
            continue;
        fprintf(f, "  %-19s", commands[i].name);
        for (; o->name != NULL; o++)
            fprintf(f, " [%s%s%s]", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fputc('\n', f);
    }
    fputc('\n', f);
    fputs(global_opts_text, f);
    fputc('\n', f);
    fputs(env_text, f);
    fputc('\n', f);
    fputs(exit_text, f);
}

static void print_cmd_help(const pinsctl_cmd *c, FILE *f)
{
    fprintf(f, "usage: pinsctl [GLOBAL OPTIONS] %s%s%s%s\n\n%s.\n", c->name,
            c->synopsis[0] ? " " : "", c->synopsis, c->opts[0].name ? " [OPTIONS]" : "",
            c->summary);
    if (c->details != NULL)
        fprintf(f, "\n%s\n", c->details);
    if (c->opts[0].name != NULL) {
        fputs("\noptions:\n", f);
        for (const pinsctl_opt *o = c->opts; o->name != NULL; o++) {
            char head[64];
            snprintf(head, sizeof(head), "%s%s%s", o->name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
            fprintf(f, "  %-24s %s\n", head, o->help);
        }
    }
    fputc('\n', f);
    fputs(global_opts_text, f);
    fputc('\n', f);
    fputs(exit_text, f);
}

static void print_rbac_help(FILE *f)
{
    fputs("usage: pinsctl [GLOBAL OPTIONS] rbac SUBCOMMAND [OPTIONS]\n\nsubcommands:\n", f);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strncmp(commands[i].name, "rbac ", 5) == 0)
            fprintf(f, "  %-20s %s\n", commands[i].name + 5, commands[i].summary);
    }
    fputs("\npinsctl rbac SUBCOMMAND --help says more.\n", f);
}

/* ---- parsing --------------------------------------------------------------------------------- */

static const pinsctl_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static bool is_help(const char *s)
{
    return strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0;
}

/* Applies argv[*pi] when it is one of c's options. Returns 1 (taken), 0 (not c's), or
 * PINSCTL_EXIT_USAGE negated (printed). */
static int cmd_option(pinsctl_args *a, int argc, char **argv, int *pi)
{
    const char *s = argv[*pi];
    for (int k = 0; a->cmd->opts[k].name != NULL; k++) {
        const pinsctl_opt *o = &a->cmd->opts[k];
        size_t n = strlen(o->name);
        if (strncmp(s, o->name, n) != 0 || (s[n] != '\0' && s[n] != '='))
            continue;
        if (o->metavar == NULL) {
            if (s[n] == '=') {
                pinsctl_usage_error(a, "%s takes no value", o->name);
                return -PINSCTL_EXIT_USAGE;
            }
            a->set[k] = true;
            *pi += 1;
            return 1;
        }
        if (s[n] == '=') {
            a->val[k] = s + n + 1;
            *pi += 1;
        } else if (*pi + 1 < argc) {
            a->val[k] = argv[*pi + 1];
            *pi += 2;
        } else {
            pinsctl_usage_error(a, "%s needs a value (%s)", o->name, o->metavar);
            return -PINSCTL_EXIT_USAGE;
        }
        a->set[k] = true;
        return 1;
    }
    return 0;
}

static int run_cmd(pinsctl_global *g, const pinsctl_cmd *c, int argc, char **argv, int i)
{
    pinsctl_args a = {.g = g, .cmd = c};
    for (int j = i; j < argc && strcmp(argv[j], "--") != 0; j++) {
        if (is_help(argv[j])) {
            print_cmd_help(c, stdout);
            return PINSCTL_EXIT_OK;
        }
    }
    bool only_pos = false;
    while (i < argc) {
        const char *s = argv[i];
        if (!only_pos && strcmp(s, "--") == 0) {
            only_pos = true;
            i++;
            continue;
        }
        if (!only_pos && s[0] == '-' && s[1] != '\0') {
            int rv = pinsctl_global_option(g, argc, argv, &i);
            if (rv < 0)
                return PINSCTL_EXIT_USAGE;
            if (rv > 0)
                continue;
            rv = cmd_option(&a, argc, argv, &i);
            if (rv < 0)
                return -rv;
            if (rv > 0)
                continue;
            return pinsctl_usage_error(&a, "unknown option '%s'", s);
        }
        if (a.npos >= c->max_pos || a.npos >= PINSCTL_MAX_POS)
            return pinsctl_usage_error(&a, "unexpected argument '%s'", s);
        a.pos[a.npos++] = s;
        i++;
    }
    if (a.npos < c->min_pos)
        return pinsctl_usage_error(&a, "expected %s", c->synopsis);
    return c->run(&a);
}

int pinsctl_main(int argc, char **argv)
{
    pinsctl_global g;
    pinsctl_global_init(&g);
    int i = 1;
    while (i < argc) {
        const char *s = argv[i];
        if (is_help(s)) {
            print_global_help(stdout);
            return PINSCTL_EXIT_OK;
        }
        if (strcmp(s, "--version") == 0) {
            printf("pinsctl %s (libpins-client %s)\n", PINS_CLIENT_VERSION_STRING,
                   pins_client_version());
            return PINSCTL_EXIT_OK;
        }
        if (strcmp(s, "--database-url") == 0 || strncmp(s, "--database-url=", 15) == 0)
            return pinsctl_migrate_main(argc, argv);
        if (s[0] != '-' || s[1] == '\0')
            break;
        int rv = pinsctl_global_option(&g, argc, argv, &i);
        if (rv < 0)
            return PINSCTL_EXIT_USAGE;
        if (rv == 0) {
            fprintf(stderr, "pinsctl: unknown option '%s' (see pinsctl --help)\n", s);
            return PINSCTL_EXIT_USAGE;
        }
    }
    if (i >= argc) {
        fputs("pinsctl: no command given (see pinsctl --help)\n", stderr);
        return PINSCTL_EXIT_USAGE;
    }
    const char *name = argv[i];
    if (strcmp(name, "migrate") == 0)
        return pinsctl_migrate_main(argc, argv);
    if (strcmp(name, "bench") == 0)
        return pinsctl_bench_main(&g, argc - i, argv + i);
    if (strcmp(name, "seed") == 0)
        return pinsctl_seed_main(&g, argc - i, argv + i);
    if (strcmp(name, "help") == 0) {
        /* pinsctl help [CMD [SUBCOMMAND]] */
        const pinsctl_cmd *c = NULL;
        if (i + 1 < argc && strcmp(argv[i + 1], "seed") == 0) {
            char *help[] = {"seed", "--help", NULL};
            return pinsctl_seed_main(&g, 2, help);
        }
        if (i + 2 < argc && strcmp(argv[i + 1], "rbac") == 0) {
            char full[64];
            snprintf(full, sizeof(full), "rbac %s", argv[i + 2]);
            c = find_cmd(full);
        } else if (i + 1 < argc && strcmp(argv[i + 1], "rbac") == 0) {
            print_rbac_help(stdout);
            return PINSCTL_EXIT_OK;
        } else if (i + 1 < argc) {
            c = find_cmd(argv[i + 1]);
        }
        if (c != NULL) {
            print_cmd_help(c, stdout);
        } else if (i + 1 < argc) {
            fprintf(stderr, "pinsctl: help: no command '%s' (see pinsctl --help)\n", argv[i + 1]);
            return PINSCTL_EXIT_USAGE;
        } else {
            print_global_help(stdout);
        }
        return PINSCTL_EXIT_OK;
    }
    if (strcmp(name, "rbac") == 0) {
        /* Global options may also stand between rbac and its subcommand. */
        int j = i + 1;
        while (j < argc && argv[j][0] == '-' && argv[j][1] != '\0' && !is_help(argv[j])) {
            int rv = pinsctl_global_option(&g, argc, argv, &j);
            if (rv < 0)
                return PINSCTL_EXIT_USAGE;
            if (rv == 0)
                break;
        }
        if (j >= argc || argv[j][0] == '-') {
            bool help = j < argc && is_help(argv[j]);
            if (!help)
                fputs("pinsctl: rbac: a subcommand is needed\n", stderr);
            print_rbac_help(help ? stdout : stderr);
            return help ? PINSCTL_EXIT_OK : PINSCTL_EXIT_USAGE;
        }
        char full[64];
        snprintf(full, sizeof(full), "rbac %s", argv[j]);
        const pinsctl_cmd *c = find_cmd(full);
        if (c == NULL) {
            fprintf(stderr, "pinsctl: unknown command 'rbac %s' (see pinsctl rbac --help)\n",
                    argv[j]);
            return PINSCTL_EXIT_USAGE;
        }
        return run_cmd(&g, c, argc, argv, j + 1);
    }
    const pinsctl_cmd *c = find_cmd(name);
    if (c == NULL) {
        fprintf(stderr, "pinsctl: unknown command '%s' (see pinsctl --help)\n", name);
        return PINSCTL_EXIT_USAGE;
    }
    return run_cmd(&g, c, argc, argv, i + 1);
}

/* ---- helpers for the commands ---------------------------------------------------------------- */

static int opt_index(const pinsctl_args *a, const char *name)
{
    for (int k = 0; a->cmd->opts[k].name != NULL; k++) {
        if (strcmp(a->cmd->opts[k].name, name) == 0)
            return k;
    }
    return -1;
}

const char *pinsctl_arg(const pinsctl_args *a, const char *name)
{
    int k = opt_index(a, name);
    return k >= 0 ? a->val[k] : NULL;
}

bool pinsctl_flag(const pinsctl_args *a, const char *name)
{
    int k = opt_index(a, name);
    return k >= 0 && a->set[k];
}

int pinsctl_usage_error(const pinsctl_args *a, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    fprintf(stderr, "pinsctl: %s: %s (see pinsctl %s --help)\n", a->cmd->name, text, a->cmd->name);
    return PINSCTL_EXIT_USAGE;
}

bool pinsctl_parse_int(const char *s, int64_t min, int64_t max, int64_t *pv)
{
    if (s == NULL || s[0] == '\0' || s[0] == ' ')
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *pv = (int64_t)v;
    return true;
}

int pinsctl_int_opt(const pinsctl_args *a, const char *name, int64_t min, int64_t max, int64_t *pv,
                    bool *pset)
{
    const char *s = pinsctl_arg(a, name);
    if (pset != NULL)
        *pset = false;
    if (s == NULL)
        return 0;
    if (!pinsctl_parse_int(s, min, max, pv))
        return pinsctl_usage_error(
            a, "%s: expected an integer from %" PRId64 " to %" PRId64 ", got '%s'", name, min, max,
            s);
    if (pset != NULL)
        *pset = true;
    return 0;
}

pins_client *pinsctl_connect(const pinsctl_args *a, int *pexit)
{
    pins_status st = PINS_STATUS_INIT;
    pins_client *c = pins_client_new(&a->g->opts, &st);
    if (c == NULL) {
        fprintf(stderr, "pinsctl: %s: %s\n", a->cmd->name,
                st.message != NULL && st.message[0] != '\0' ? st.message : "bad client options");
        *pexit = PINSCTL_EXIT_USAGE;
    }
    pins_status_clear(&st);
    return c;
}

int pinsctl_fail(const pinsctl_args *a, const pins_status *st)
{
    const char *msg = st->message != NULL && st->message[0] != '\0' ? st->message : "";
    fprintf(stderr, "pinsctl: %s: %s%s%s", a->cmd->name, pins_code_name(st->code),
            msg[0] ? ": " : "", msg);
    if (st->request_id != NULL && st->request_id[0] != '\0')
        fprintf(stderr, " (request id %s)", st->request_id);
    fputc('\n', stderr);
    int rv = pinsctl_exit_for(st);
    return rv == PINSCTL_EXIT_OK ? PINSCTL_EXIT_REFUSED : rv;
}

char *pinsctl_json_text(const ProtobufCMessage *msg)
{
    pins_buf b;
    pins_buf_init(&b, JSON_MAX_BYTES);
    int rv =
        msg != NULL ? proto_json_encode(msg, &proto_json_rest, &b) : pins_buf_add_str(&b, "null");
    if (rv == 0 && pins_buf_ptr(&b) == NULL)
        rv = pins_buf_add(&b, "", 0);
    if (rv != 0) {
        pins_buf_free(&b);
        return NULL;
    }
    return pins_buf_ptr(&b); /* the buffer's malloc'd content, NUL-terminated */
}

int pinsctl_print_json(const ProtobufCMessage *msg)
{
    char *s = pinsctl_json_text(msg);
    if (s == NULL) {
        /* A malformed answer (or one over the JSON bound): no usable answer, as documented. */
        fputs("pinsctl: the answer has no JSON form\n", stderr);
        return PINSCTL_EXIT_UNREACHABLE;
    }
    fputs(s, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(s);
    return PINSCTL_EXIT_OK;
}

void pinsctl_fmt_ts(const Google__Protobuf__Timestamp *ts, bool micros, char *out, size_t n)
{
    if (ts == NULL) {
        snprintf(out, n, "-");
        return;
    }
    /* Outside proto3's Timestamp range (years 1..9999) a malformed answer: the raw number. */
    if (ts->seconds < -62135596800LL || ts->seconds > 253402300799LL) {
        snprintf(out, n, "%" PRId64 "s", ts->seconds);
        return;
    }
    /* pinsd's RFC 3339 writer (common/timeutil.h), cut to whole seconds for tables. */
    char buf[PINS_TIME_RFC3339_LEN + 8];
    size_t len = pins_time_format_us(ts->seconds * 1000000 + ts->nanos / 1000, buf);
    if (!micros && len > 8)
        snprintf(out, n, "%.*sZ", (int)(len - 8), buf);
    else
        snprintf(out, n, "%s", buf);
}

/* ---- tables ---------------------------------------------------------------------------------- */

void pinsctl_table_init(pinsctl_table *t, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->ncols = ncols;
}

static void table_take(pinsctl_table *t, char *cell)
{
    if (cell == NULL || t->ncells >= TABLE_MAX_CELLS) {
        free(cell);
        t->failed = true;
        return;
    }
    if (t->ncells == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        char **p = realloc(t->cells, cap * sizeof(*p));
        if (p == NULL) {
            free(cell);
            t->failed = true;
            return;
        }
        t->cells = p;
        t->cap = cap;
    }
    /* A cell is one line: control characters would break the columns. */
    for (char *q = cell; *q != '\0'; q++) {
        if ((unsigned char)*q < 0x20)
            *q = ' ';
    }
    t->cells[t->ncells++] = cell;
}

void pinsctl_table_add(pinsctl_table *t, const char *cell)
{
    table_take(t, strdup(cell != NULL ? cell : ""));
}

void pinsctl_table_addf(pinsctl_table *t, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    pinsctl_table_add(t, buf);
}

/* Display width of UTF-8 text: one column per code point (wide characters are rare in keys). */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s != '\0'; s++) {
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    }
    return w;
}

/* How many bytes of s fit in cols columns, at a code point boundary. */
static size_t bytes_for_width(const char *s, size_t cols)
{
    size_t w = 0, i = 0;
    for (; s[i] != '\0'; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (w == cols)
                break;
            w++;
        }
    }
    return i;
}

static size_t terminal_width(void)
{
    if (!isatty(STDOUT_FILENO))
        return 0;
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

int pinsctl_table_print(pinsctl_table *t)
{
    if (t->failed) {
        fputs("pinsctl: out of memory while building the table\n", stderr);
        return PINSCTL_EXIT_REFUSED;
    }
    size_t nc = t->ncols;
    size_t width[16] = {0};
    if (nc == 0 || nc > 16)
        return PINSCTL_EXIT_REFUSED;
    for (size_t i = 0; i < t->ncells; i++) {
        size_t w = text_width(t->cells[i]);
        if (w > width[i % nc])
            width[i % nc] = w;
    }
    size_t term = terminal_width();
    for (size_t i = 0; i < t->ncells; i++) {
        size_t col = i % nc;
        const char *cell = t->cells[i];
        if (col + 1 < nc) {
            fputs(cell, stdout);
            for (size_t w = text_width(cell); w < width[col] + 2; w++)
                fputc(' ', stdout);
            continue;
        }
        size_t used = 0;
        for (size_t k = 0; k + 1 < nc; k++)
            used += width[k] + 2;
        if (term > 0 && used < term && text_width(cell) > term - used) {
            size_t room = term - used;
            size_t n = bytes_for_width(cell, room > 3 ? room - 3 : room);
            fwrite(cell, 1, n, stdout);
            if (room > 3)
                fputs("...", stdout);
        } else {
            fputs(cell, stdout);
        }
        fputc('\n', stdout);
    }
    fflush(stdout);
    return PINSCTL_EXIT_OK;
}

void pinsctl_table_free(pinsctl_table *t)
{
    for (size_t i = 0; i < t->ncells; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}
