/* tools/pinsctl/migrate.c: pinsctl migrate, the PostgreSQL schema.
 *
 *   pinsctl [--database-url URL] migrate upgrade head|+N|VERSION
 *   pinsctl [--database-url URL] migrate downgrade -N|base
 *   pinsctl [--database-url URL] migrate current
 *   pinsctl [--database-url URL] migrate history
 *
 * The URL comes from --database-url or DATABASE_URL and is never printed (it may hold a
 * password). Exit status: 0 done, 1 the database refused or could not be reached, 2 usage.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "pinsctl.h"
#include "store/store.h"

#define EXIT_DB    1
#define EXIT_USAGE 2
#define HIST_MAX   256

static const char usage_text[] =
    "usage: pinsctl [--database-url URL] migrate COMMAND\n"
    "\n"
    "Manages the PostgreSQL schema of pinsd (schema `system`, versions recorded in\n"
    "system.pins_schema_migrations). pinsd does not migrate by itself: run\n"
    "`pinsctl migrate upgrade head` before starting a new pinsd version.\n"
    "\n"
    "commands:\n"
    "  migrate upgrade head      apply every migration not applied yet\n"
    "  migrate upgrade +N        apply the next N migrations\n"
    "  migrate upgrade VERSION   apply migrations up to VERSION\n"
    "  migrate downgrade -N      revert the newest N applied migrations (-1: the newest)\n"
    "  migrate downgrade base    revert every applied migration\n"
    "  migrate current           print the current schema version\n"
    "  migrate history           list the migrations and when each was applied\n"
    "\n"
    "options:\n"
    "  --database-url URL        PostgreSQL URL (default: the DATABASE_URL environment variable)\n"
    "  -h, --help                this help\n"
    "\n"
    "Runners serialise on a PostgreSQL advisory lock; each step is one transaction; re-running an\n"
    "upgrade that is already done changes nothing. Exit status: 0 done, 1 database error,\n"
    "2 usage error.\n";

/* Parses a whole decimal int (sign allowed). Returns false when s is not one. */
static bool parse_int(const char *s, int *pv)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < INT_MIN || v > INT_MAX)
        return false;
    *pv = (int)v;
    return true;
}

static int fail(const char *what, int rv, const char *err)
{
    fprintf(stderr, "pinsctl: %s: %s\n", what, err[0] != '\0' ? err : pins_strerror(rv));
    return rv == PINS_EINVALID_ARGUMENT ? EXIT_USAGE : EXIT_DB;
}

static int cmd_current(const char *url)
{
    char err[512] = "";
    int cur = 0;
    int rv = store_migrate_current(url, &cur, err, sizeof(err));
    if (rv != 0)
        return fail("migrate current", rv, err);
    int latest = store_migrate_latest();
    printf("%d%s\n", cur,
           cur == latest  ? " (head)"
           : cur < latest ? " (behind head)"
                          : " (ahead of this binary)");
    return 0;
}

static int cmd_history(const char *url)
{
    char err[512] = "";
    store_migration_info rows[HIST_MAX];
    size_t n = 0;
    int rv = store_migrate_history(url, rows, HIST_MAX, &n, err, sizeof(err));
    if (rv != 0)
        return fail("migrate history", rv, err);
    for (size_t i = 0; i < n; i++)
        printf("%03d  %-32s  %s\n", rows[i].version, rows[i].name,
               rows[i].applied_at[0] != '\0' ? rows[i].applied_at : "not applied");
    return 0;
}

static int cmd_upgrade(const char *url, const char *arg)
{
    char err[512] = "";
    int target = 0;
    if (strcmp(arg, "head") == 0) {
        target = store_migrate_latest();
    } else if (arg[0] == '+') {
        int steps = 0;
        if (!parse_int(arg + 1, &steps) || steps < 1) {
            fprintf(stderr, "pinsctl: migrate upgrade: +N needs N >= 1\n");
            return EXIT_USAGE;
        }
        store_migration_info rows[HIST_MAX];
        size_t n = 0;
        int rv = store_migrate_history(url, rows, HIST_MAX, &n, err, sizeof(err));
        if (rv != 0)
            return fail("migrate upgrade", rv, err);
        int cur = 0;
        for (size_t i = 0; i < n; i++) {
            if (rows[i].applied_at[0] != '\0' && rows[i].version > cur)
                cur = rows[i].version;
        }
        int left = steps;
        target = -1;
        for (size_t i = 0; i < n && left > 0; i++) {
            if (rows[i].version > cur) {
                target = rows[i].version;
                left--;
            }
        }
        if (target < 0 || left > 0) {
            fprintf(stderr, "pinsctl: migrate upgrade: fewer than %d migrations above version %d\n",
                    steps, cur);
            return EXIT_USAGE;
        }
    } else if (!parse_int(arg, &target) || target < 1) {
        fprintf(stderr, "pinsctl: migrate upgrade: expected head, +N or a version, got '%s'\n",
                arg);
        return EXIT_USAGE;
    }
    int applied = 0;
    int rv = store_migrate_up(url, target, &applied, err, sizeof(err));
    if (rv != 0)
        return fail("migrate upgrade", rv, err);
    printf("applied %d migration%s; schema at version %d\n", applied, applied == 1 ? "" : "s",
           target);
    return 0;
}

static int cmd_downgrade(const char *url, const char *arg)
{
    char err[512] = "";
    int steps = 0;
    if (strcmp(arg, "base") == 0) {
        steps = -1;
    } else if (!parse_int(arg, &steps) || steps >= 0) {
        fprintf(stderr, "pinsctl: migrate downgrade: expected -N or base, got '%s'\n", arg);
        return EXIT_USAGE;
    } else {
        steps = -steps;
    }
    int reverted = 0;
    int rv = store_migrate_down(url, steps, &reverted, err, sizeof(err));
    if (rv != 0)
        return fail("migrate downgrade", rv, err);
    printf("reverted %d migration%s\n", reverted, reverted == 1 ? "" : "s");
    return 0;
}

int pinsctl_migrate_main(int argc, char **argv)
{
    const char *url = getenv("DATABASE_URL");
    /* --help anywhere on the line (pinsctl migrate --help, migrate upgrade --help). */
    for (int k = 1; k < argc; k++) {
        if (strcmp(argv[k], "-h") == 0 || strcmp(argv[k], "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
    }
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--database-url") == 0 && i + 1 < argc) {
            url = argv[++i];
        } else if (strncmp(argv[i], "--database-url=", 15) == 0) {
            url = argv[i] + 15;
        } else {
            break;
        }
    }
    if (i >= argc || strcmp(argv[i], "migrate") != 0 || i + 1 >= argc) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[i + 1];
    const char *arg = i + 2 < argc ? argv[i + 2] : NULL;
    int extra = argc - (i + 2) - (arg != NULL ? 1 : 0);
    if (url == NULL || url[0] == '\0') {
        fprintf(stderr, "pinsctl: no database: set DATABASE_URL or pass --database-url\n");
        return EXIT_USAGE;
    }
    bool needs_arg = strcmp(cmd, "upgrade") == 0 || strcmp(cmd, "downgrade") == 0;
    if (extra > 0 || (needs_arg && arg == NULL) || (!needs_arg && arg != NULL)) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "upgrade") == 0)
        return cmd_upgrade(url, arg);
    if (strcmp(cmd, "downgrade") == 0)
        return cmd_downgrade(url, arg);
    if (strcmp(cmd, "current") == 0)
        return cmd_current(url);
    if (strcmp(cmd, "history") == 0)
        return cmd_history(url);
    fprintf(stderr, "pinsctl: unknown migrate command '%s' (see --help)\n", cmd);
    return EXIT_USAGE;
}
