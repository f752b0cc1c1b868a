/* tools/pinsctl/opts.c: the options every client command shares, durations and exit statuses. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pinsctl.h"

#define DEFAULT_TIMEOUT_MS 10000

/* Takes the value of option name at argv[*pi], given as "--name VALUE" or "--name=VALUE". Returns
 * 1 with *pval set and *pi past it, 0 when argv[*pi] is not this option, -1 when the value is
 * missing. */
static int take_value(const char *name, int argc, char **argv, int *pi, const char **pval)
{
    const char *a = argv[*pi];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *pval = a + n + 1;
        *pi += 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*pi + 1 >= argc) {
        fprintf(stderr, "pinsctl: %s needs a value\n", name);
        return -1;
    }
    *pval = argv[*pi + 1];
    *pi += 2;
    return 1;
}

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

void pinsctl_global_init(pinsctl_global *g)
{
    memset(g, 0, sizeof(*g));
    pins_options_init(&g->opts);
    const char *addr = env_or_null("PINS_ADDR");
    if (addr != NULL)
        g->opts.addr = addr;
    g->opts.machine_token = env_or_null("MACHINE_SECRET_TOKEN");
    g->opts.bearer_token = env_or_null("PINS_TOKEN");
    g->opts.user_agent = "pinsctl/" PINS_CLIENT_VERSION_STRING;
    g->opts.timeout_ms = DEFAULT_TIMEOUT_MS;
    g->json = false;
}

int pinsctl_global_option(pinsctl_global *g, int argc, char **argv, int *pi)
{
    static const char *const with_value[] = {"--addr", "--ca",          "--cert",
                                             "--key",  "--server-name", "--timeout"};
    const char *a = argv[*pi];
    if (a == NULL || strncmp(a, "--", 2) != 0)
        return 0;
    if (strcmp(a, "--tls") == 0) {
        g->opts.tls = true;
        *pi += 1;
        return 1;
    }
    if (strcmp(a, "--insecure") == 0) {
        g->opts.insecure_skip_verify = true;
        g->opts.tls = true;
        *pi += 1;
        return 1;
    }
    if (strcmp(a, "--json") == 0) {
        g->json = true;
        *pi += 1;
        return 1;
    }
    for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++) {
        const char *name = with_value[k];
        const char *val = NULL;
        int rv = take_value(name, argc, argv, pi, &val);
        if (rv <= 0) {
            if (rv < 0)
                return -1;
            continue;
        }
        if (strcmp(name, "--timeout") == 0) {
            int64_t ms = 0;
            if (!pinsctl_parse_duration_ms(val, &ms)) {
                fprintf(stderr,
                        "pinsctl: --timeout: expected a duration such as 500ms, 5s or 2m, "
                        "got '%s'\n",
                        val);
                return -1;
            }
            g->opts.timeout_ms = ms;
            g->timeout_given = true;
            return 1;
        }
        if (val[0] == '\0') {
            fprintf(stderr, "pinsctl: %s needs a non-empty value\n", name);
            return -1;
        }
        if (strcmp(name, "--addr") == 0) {
            g->opts.addr = val;
            return 1;
        }
        if (strcmp(name, "--ca") == 0)
            g->opts.ca_file = val;
        else if (strcmp(name, "--cert") == 0)
            g->opts.cert_file = val;
        else if (strcmp(name, "--key") == 0)
            g->opts.key_file = val;
        else
            g->opts.server_name = val;
        g->opts.tls = true; /* a TLS option means TLS (an http:// address is then refused) */
        return 1;
    }
    return 0;
}

bool pinsctl_parse_duration_ms(const char *s, int64_t *pms)
{
    if (s == NULL || s[0] == '\0' || s[0] == '-' || s[0] == '+')
        return false;
    /* Digits with at most one '.', then the unit. strtod alone would take "inf", "nan", hex and
     * exponents, none of which is a duration. */
    size_t n = 0;
    int dots = 0;
    int digits = 0;
    for (; s[n] != '\0' && ((s[n] >= '0' && s[n] <= '9') || s[n] == '.'); n++) {
        if (s[n] == '.')
            dots++;
        else
            digits++;
    }
    if (digits == 0 || dots > 1 || n > 32)
        return false;
    char num[40];
    memcpy(num, s, n);
    num[n] = '\0';
    const char *unit = s + n;
    double scale = 0;
    if (unit[0] == '\0' || strcmp(unit, "s") == 0)
        scale = 1000.0;
    else if (strcmp(unit, "ms") == 0)
        scale = 1.0;
    else if (strcmp(unit, "m") == 0)
        scale = 60000.0;
    else if (strcmp(unit, "h") == 0)
        scale = 3600000.0;
    else
        return false;
    errno = 0;
    char *end = NULL;
    double v = strtod(num, &end);
    if (errno != 0 || end == num || *end != '\0' || !isfinite(v) || v < 0)
        return false;
    double ms = v * scale;
    /* Far beyond any deadline anyone means, and exactly representable in a double. */
    if (!isfinite(ms) || ms > 9007199254740992.0)
        return false;
    *pms = (int64_t)ceil(ms);
    return true;
}

int pinsctl_exit_for(const pins_status *st)
{
    if (st == NULL || st->code == PINS_CODE_OK)
        return PINSCTL_EXIT_OK;
    if (st->from_server)
        return PINSCTL_EXIT_REFUSED;
    if (st->code == PINS_CODE_INVALID_ARGUMENT)
        return PINSCTL_EXIT_USAGE;
    return PINSCTL_EXIT_UNREACHABLE;
}
