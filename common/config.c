/* common/config.c: one table of settings drives defaults, the environment, flags and --help.
 *
 * Each row names the variable, how to parse it, where it lands in pins_config, its range, the
 * default shown by --help and a one-line meaning. Loading applies the defaults, then every set
 * environment variable, then the flags in order, then the checks that span several variables.
 * An empty environment variable counts as unset (compose files write `VAR=` for "not given"); an
 * empty optional string given as a flag clears it. Secret values never appear in an error line.
 */
#include "common/config.h"

#include "common/error.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum type { T_STR, T_SECRET, T_BOOL, T_INT, T_INT64, T_LISTEN, T_LEVEL, T_FORMAT };

struct var {
    const char *name;
    enum type type;
    size_t offset;
    long long min, max;
    const char *group;
    const char *def; /* as --help shows it */
    const char *help;
};

#define OFF(field) offsetof(pins_config, field)

/* Rows in --help order; a new group starts where the group name changes. */
static const struct var vars[] = {
    {"DATABASE_URL", T_SECRET, OFF(database_url), 0, 0, "Store", "unset",
     "PostgreSQL URL (postgres://...); unset: embedded SQLite in PINS_DATA_DIR"},
    {"DATABASE_LISTEN_URL", T_SECRET, OFF(database_listen_url), 0, 0, "Store", "unset",
     "PostgreSQL URL of a direct connection (not through PgBouncer) for the change feed that "
     "carries watch events between replicas (LISTEN); unset: DATABASE_URL, which must then be "
     "direct"},
    {"PINS_CACHE_MAX_BYTES", T_INT64, OFF(cache_max_bytes), 1048576, 68719476736LL, "Store",
     "268435456",
     "memory for the read cache of pins (embedded store; PostgreSQL with PINS_PG_READ_CACHE), "
     "1 MiB..64 GiB (entries and their values "
     "as JSON and protobuf, about 2.2x the value's size plus 250 bytes each)"},
    {"PINS_PG_READ_CACHE", T_BOOL, OFF(pg_read_cache), 0, 0, "Store", "true",
     "PostgreSQL: answer GetPin from a read cache that the change feed keeps coherent with every "
     "replica's writes (bounded by PINS_CACHE_MAX_BYTES; reads go to PostgreSQL while the feed is "
     "down); false: every read asks PostgreSQL"},
    {"PINS_DATA_DIR", T_STR, OFF(data_dir), 0, 0, "Store", "./var",
     "directory of the embedded store"},
    {"DB_POOL_SIZE", T_INT, OFF(db_pool_size), 1, 1024, "Store", "8",
     "PostgreSQL connections in total, 1..1024"},
    {"REDIS_URL", T_SECRET, OFF(redis_url), 0, 0, "Store", "unset",
     "Redis URL (redis://, rediss:// or unix://) shared by the rate limiter; unset: local only"},
    {"PINS_LISTEN", T_LISTEN, OFF(listen), 0, 0, "Listeners and TLS",
     "127.0.0.1:8000,127.0.0.1:50051",
     "comma-separated host:port list ([::1]:port for IPv6), at most 16"},
    {"TLS_CERT_FILE", T_STR, OFF(tls_cert_file), 0, 0, "Listeners and TLS", "unset",
     "PEM certificate chain; with TLS_KEY_FILE enables TLS"},
    {"TLS_KEY_FILE", T_STR, OFF(tls_key_file), 0, 0, "Listeners and TLS", "unset",
     "PEM private key of TLS_CERT_FILE"},
    {"TLS_CLIENT_CA_FILE", T_STR, OFF(tls_client_ca_file), 0, 0, "Listeners and TLS", "unset",
     "PEM CA bundle; require client certificates signed by it (mutual TLS)"},
    {"PINS_WORKERS", T_INT, OFF(workers), 1, 256, "Listeners and TLS", "CPUs this process may use",
     "worker threads (event loops), 1..256"},
    {"PINS_DRAIN_SECONDS", T_INT, OFF(drain_seconds), 0, 3600, "Listeners and TLS", "10",
     "grace for in-flight calls after SIGTERM, 0..3600"},
    {"PINS_MAX_CONNECTIONS", T_INT, OFF(max_connections), 1, 1000000, "Listeners and TLS", "10000",
     "open connections per process, 1..1000000"},
    {"PINS_MAX_CONCURRENT_STREAMS", T_INT, OFF(max_concurrent_streams), 1, 1000000,
     "Listeners and TLS", "100", "HTTP/2 streams per connection, 1..1000000"},
    {"PINS_IDLE_TIMEOUT_SECONDS", T_INT, OFF(idle_timeout_seconds), 0, 86400, "Listeners and TLS",
     "300", "close idle connections (HTTP/2: GOAWAY first) after this long, 0: never"},
    {"PINS_REQUEST_TIMEOUT_SECONDS", T_INT, OFF(request_timeout_seconds), 1, 3600,
     "Listeners and TLS", "30",
     "a request's headers and body must arrive within this long (408 / DEADLINE_EXCEEDED), "
     "1..3600"},
    {"PINS_CONN_BUFFER_BYTES", T_INT64, OFF(conn_buffer_bytes), 65536, 4294967296LL,
     "Listeners and TLS", "16777216",
     "bytes one connection may hold buffered (request bodies, decoded messages, pending "
     "output), 65536..4294967296"},
    {"PINS_BUFFER_BYTES", T_INT64, OFF(buffer_bytes), 1048576, 68719476736LL, "Listeners and TLS",
     "67108864", "bytes all connections together may hold buffered, 1048576..68719476736"},
    {"CORS_ALLOWED_ORIGINS", T_STR, OFF(cors_allowed_origins), 0, 0, "Listeners and TLS", "none",
     "comma-separated origins allowed by CORS"},
    {"MACHINE_SECRET_TOKEN", T_SECRET, OFF(machine_secret_token), 0, 0, "Authentication and RBAC",
     "unset", "X-Machine-Token value that grants role machine; unset or empty disables it"},
    {"JWT_SECRET", T_SECRET, OFF(jwt_secret), 0, 0, "Authentication and RBAC", "unset",
     "HS256 key of bearer tokens; unset or empty disables them"},
    {"RBAC_ENFORCE", T_BOOL, OFF(rbac_enforce), 0, 0, "Authentication and RBAC", "false",
     "deny by policy; false: evaluate and count (shadow mode) but allow"},
    {"RBAC_FAIL_OPEN", T_BOOL, OFF(rbac_fail_open), 0, 0, "Authentication and RBAC", "false",
     "let missing or insufficient credentials through (reason fail-open-*)"},
    {"RBAC_POLICY_FILE", T_STR, OFF(rbac_policy_file), 0, 0, "Authentication and RBAC",
     "built-in matrix", "policy file replacing the built-in role matrix; SIGHUP reloads it"},
    {"RBAC_TRUST_X_ROLES", T_BOOL, OFF(rbac_trust_x_roles), 0, 0, "Authentication and RBAC",
     "false", "honour the X-Roles header (anyone can send it)"},
    {"MEMORY_PINS_ENABLED", T_BOOL, OFF(memory_pins_enabled), 0, 0, "Domain", "true",
     "false: every MemoryPins call answers UNAVAILABLE / 503"},
    {"CHAOS_ALLOWED", T_BOOL, OFF(chaos_allowed), 0, 0, "Domain", "false",
     "allow the chaos scripts to run against this server"},
    {"MEMORY_MAX_SIZE_BYTES", T_INT64, OFF(memory_max_size_bytes), 1, 67108864, "Domain", "1048576",
     "largest pin value in bytes, 1..67108864"},
    {"MAX_REQUEST_BYTES", T_INT64, OFF(max_request_bytes), 1024, 67108864, "Domain", "4194304",
     "largest request message in bytes, 1024..67108864, at least MEMORY_MAX_SIZE_BYTES"},
    {"PINS_SWEEP_INTERVAL_SECONDS", T_INT, OFF(sweep_interval_seconds), 1, 86400, "Domain", "10",
     "seconds between sweeps of expired pins, 1..86400"},
    {"PINS_SWEEP_BATCH", T_INT, OFF(sweep_batch), 1, 100000, "Domain", "500",
     "expired pins deleted per sweep statement, 1..100000"},
    {"PINS_AUDIT_RETENTION_DAYS", T_INT, OFF(audit_retention_days), 0, 36500, "Domain", "90",
     "days RBAC and memory audit rows are kept, deleted in PINS_SWEEP_BATCH batches, 0..36500, "
     "0 keeps them forever"},
    {"PINS_AUDIT_DENIAL_ROWS_PER_SECOND", T_INT, OFF(audit_denial_rows_per_second), 1, 100000,
     "Blast-radius controls", "20",
     "RBAC audit rows of distinct denials per second and process, 1..100000; identical denials "
     "and those over the budget are counted in aggregated rows"},
    {"PINS_AUDIT_READ_ROWS_PER_SECOND", T_INT, OFF(audit_read_rows_per_second), 0, 1000000,
     "Domain", "200",
     "memory audit rows of single reads (one key each) per second and process, 0..1000000; reads "
     "beyond it are counted in one summary row per tenant and second, which lists their keys"},
    {"RATE_LIMIT_RPM", T_INT, OFF(rate_limit_rpm), 0, 1000000, "Blast-radius controls", "100",
     "requests per minute per tenant, 0..1000000, 0 disables rate limiting"},
    {"RATE_LIMIT_BURST", T_INT, OFF(rate_limit_burst), 0, 1000000, "Blast-radius controls",
     "RATE_LIMIT_RPM", "token bucket size, 0..1000000, at least 1 while rate limiting"},
    {"BREAKER_ERRORS_PER_MIN", T_INT, OFF(breaker_errors_per_min), 1, 1000000,
     "Blast-radius controls", "50", "store errors in a rolling minute that open the breaker"},
    {"BREAKER_OPEN_SECONDS", T_INT, OFF(breaker_open_seconds), 1, 3600, "Blast-radius controls",
     "30", "seconds the breaker stays open before one probe"},
    {"PINS_WATCH_MAX", T_INT, OFF(watch_max), 1, 1000000, "Blast-radius controls", "10000",
     "open watch streams (WatchPins, SSE) per process, 1..1000000"},
    {"PINS_WATCH_MAX_PER_PRINCIPAL", T_INT, OFF(watch_max_per_principal), 1, 1000000,
     "Blast-radius controls", "1000",
     "open watch streams per principal (credential subject; anonymous callers share one), "
     "1..1000000"},
    {"PINS_WATCH_PENDING_BYTES", T_INT64, OFF(watch_pending_bytes), 4096, 67108864,
     "Blast-radius controls", "1048576",
     "events a watch stream may have waiting for a slow reader, in bytes, before it is ended "
     "(RESOURCE_EXHAUSTED), 4096..67108864"},
    {"PINS_WATCH_HISTORY_SECONDS", T_INT, OFF(watch_history_seconds), 60, 604800,
     "Blast-radius controls", "3600",
     "changes kept for watches that resume from a revision, in seconds, 60..604800; older "
     "revisions answer OUT_OF_RANGE"},
    {"PINS_WATCH_HISTORY_MAX_ROWS", T_INT64, OFF(watch_history_max_rows), 1000, 1000000000,
     "Blast-radius controls", "1000000",
     "changes kept for watches that resume, at most, 1000..1000000000 (the oldest go first)"},
    {"PINS_SSE_HEARTBEAT_SECONDS", T_INT, OFF(sse_heartbeat_seconds), 0, 3600,
     "Blast-radius controls", "15",
     "a comment line on every SSE watch stream this often, 0..3600, 0 disables"},
    {"LOG_LEVEL", T_LEVEL, OFF(log_level), 0, 0, "Logs", "info", "debug, info, warn or error"},
    {"LOG_FORMAT", T_FORMAT, OFF(log_format), 0, 0, "Logs", "json", "json or text"},
};

#define NVARS (sizeof(vars) / sizeof(vars[0]))

/* The default data directory is static so that defaults cannot fail; free() skips it. */
static char default_data_dir[] = "./var";

/* ---- helpers ----------------------------------------------------------------------------------
 */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A value as an error line shows it: quoted, control characters escaped, cut at 80 bytes, so the
 * line stays one line. Never used for secrets. */
static const char *show(const char *s, size_t len, char *out, size_t outlen)
{
    size_t n = 0;
    out[n++] = '"';
    for (size_t i = 0; i < len && s[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (n + 8 >= outlen || i == 80) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
        if (ch < 0x20 || ch == 0x7f)
            n += (size_t)snprintf(out + n, outlen - n, "\\x%02x", ch);
        else if (ch == '"' || ch == '\\')
            n += (size_t)snprintf(out + n, outlen - n, "\\%c", ch);
        else
            out[n++] = (char)ch;
    }
    out[n++] = '"';
    out[n] = '\0';
    return out;
}

static void *field(pins_config *cfg, const struct var *v)
{
    return (char *)cfg + v->offset;
}

static void free_string(char **p)
{
    if (*p != default_data_dir)
        free(*p);
    *p = NULL;
}

static int default_workers(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    long n = 0;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > 256 ? 256 : (int)n;
}

/* Strict integer: optional sign, digits only, no surrounding space. */
static int parse_integer(const char *s, long long *pv)
{
    if (*s == '\0' || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0')
        return -1;
    if (errno == ERANGE)
        return -2;
    *pv = v;
    return 0;
}

static int parse_bool(const char *s, bool *pv)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *pv = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *pv = false;
            return 0;
        }
    }
    return -1;
}

static bool has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return true;
    }
    return false;
}

const char *const pins_config_postgres_schemes[] = {"postgres://", "postgresql://", NULL};

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* One host:port entry of PINS_LISTEN, s[0..len). Writes the reason into why on failure. */
static int parse_listen_one(const char *s, size_t len, pins_listen_addr *pa, const char **why)
{
    char entry[128];
    if (len == 0) {
        *why = "an entry is empty";
        return -1;
    }
    if (len >= sizeof(entry)) {
        *why = "an entry is too long";
        return -1;
    }
    memcpy(entry, s, len);
    entry[len] = '\0';

    const char *host;
    size_t hostlen;
    const char *port;
    bool v6 = entry[0] == '[';
    if (v6) {
        char *close = strchr(entry, ']');
        if (close == NULL || close[1] != ':') {
            *why = "is not [IPv6]:port";
            return -1;
        }
        host = entry + 1;
        hostlen = (size_t)(close - host);
        port = close + 2;
    } else {
        char *colon = strrchr(entry, ':');
        if (colon == NULL || strchr(entry, ':') != colon) {
            *why = "is not host:port (write IPv6 addresses as [addr]:port)";
            return -1;
        }
        host = entry;
        hostlen = (size_t)(colon - entry);
        port = colon + 1;
    }
    pins_listen_addr a;
    memset(&a, 0, sizeof(a));
    if (hostlen == 0 || hostlen >= sizeof(a.host)) {
        *why = "has no valid host";
        return -1;
    }
    memcpy(a.host, host, hostlen);
    a.host[hostlen] = '\0';
    unsigned char addr[16];
    if (v6) {
        if (inet_pton(AF_INET6, a.host, addr) != 1) {
            *why = "has an invalid IPv6 address";
            return -1;
        }
    } else if (strcmp(a.host, "localhost") != 0 && inet_pton(AF_INET, a.host, addr) != 1) {
        *why = "has a host that is neither a numeric address nor localhost";
        return -1;
    }
    long long p;
    if (parse_integer(port, &p) != 0 || p < 1 || p > 65535 || port[0] == '+' || port[0] == '-') {
        *why = "has a port that is not an integer in 1..65535";
        return -1;
    }
    a.port = (uint16_t)p;
    *pa = a;
    return 0;
}

static int parse_listen(pins_config *cfg, const char *s, char *err, size_t errlen)
{
    pins_listen_addr list[PINS_MAX_LISTEN];
    size_t n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len > 0 && isspace((unsigned char)p[len - 1]))
            len--;
        if (n == PINS_MAX_LISTEN) {
            set_err(err, errlen, "invalid PINS_LISTEN: more than %d addresses", PINS_MAX_LISTEN);
            return -1;
        }
        const char *why = NULL;
        if (parse_listen_one(p, len, &list[n], &why) != 0) {
            char q[128];
            set_err(err, errlen, "invalid PINS_LISTEN: %s %s", show(p, len, q, sizeof(q)), why);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            if (list[i].port == list[n].port && strcmp(list[i].host, list[n].host) == 0) {
                char q[128];
                set_err(err, errlen, "invalid PINS_LISTEN: %s is listed twice",
                        show(p, len, q, sizeof(q)));
                return -1;
            }
        }
        n++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    memcpy(cfg->listen, list, n * sizeof(list[0]));
    cfg->nlisten = n;
    return 0;
}

/* True when s[0..n) is a port: 1 to 5 digits, 1..65535. */
static bool port_ok(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* True when url starts with a scheme of pins_config_postgres_schemes. */
static bool postgres_scheme(const char *url)
{
    for (const char *const *p = pins_config_postgres_schemes; *p != NULL; p++) {
        if (starts_with(url, *p))
            return true;
    }
    return false;
}

/* Checks what libpq only checks when it connects: every port of a postgres:// URL, in the host
 * list ("h1:5432,h2:5433", "[::1]:5432") and in a port= parameter. On failure writes a reason that
 * does not repeat the URL (it may hold a password). Returns 0 or -1. */
static int database_url_check(const char *name, const char *url, char *err, size_t errlen)
{
    const char *p = strstr(url, "://") + 3;
    size_t alen = strcspn(p, "/?");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++) {
        if (p[i] == '@')
            at = p + i;
    }
    const char *h = at != NULL ? at + 1 : p, *end = p + alen;
    while (h < end) {
        const char *comma = memchr(h, ',', (size_t)(end - h));
        const char *e = comma != NULL ? comma : end;
        const char *colon = NULL;
        if (*h == '[') {
            const char *rb = memchr(h, ']', (size_t)(e - h));
            if (rb == NULL) {
                set_err(err, errlen, "invalid %s: an IPv6 host lacks its ']'", name);
                return -1;
            }
            colon = rb + 1 < e && rb[1] == ':' ? rb + 1 : NULL;
        } else {
            colon = memchr(h, ':', (size_t)(e - h));
        }
        if (colon != NULL && !port_ok(colon + 1, (size_t)(e - colon - 1))) {
            set_err(err, errlen, "invalid %s: the port must be a number from 1 to 65535", name);
            return -1;
        }
        h = comma != NULL ? comma + 1 : end;
    }
    const char *q = strchr(url, '?');
    while (q != NULL) {
        q++;
        size_t plen = strcspn(q, "&");
        if (plen > 5 && strncmp(q, "port=", 5) == 0) {
            const char *v = q + 5, *ve = q + plen;
            while (v <= ve) {
                const char *c = memchr(v, ',', (size_t)(ve - v));
                const char *e = c != NULL ? c : ve;
                if (!port_ok(v, (size_t)(e - v))) {
                    set_err(err, errlen, "invalid %s: the port must be a number from 1 to 65535",
                            name);
                    return -1;
                }
                v = e + 1;
            }
        }
        q = strchr(q, '&');
    }
    return 0;
}

/* Sets one variable from its text. Returns 0 or -1 with err filled. */
static int apply(pins_config *cfg, const struct var *v, const char *s, char *err, size_t errlen)
{
    long long n;
    int rc;
    bool b;
    char q[128];
    switch (v->type) {
    case T_STR:
    case T_SECRET: {
        if (v->type == T_SECRET) {
            if (has_control(s)) {
                set_err(err, errlen, "invalid %s: contains a control character", v->name);
                return -1;
            }
            bool db_url =
                strcmp(v->name, "DATABASE_URL") == 0 || strcmp(v->name, "DATABASE_LISTEN_URL") == 0;
            if (db_url && *s != '\0' && !postgres_scheme(s)) {
                set_err(err, errlen, "invalid %s: must start with postgres:// or postgresql://",
                        v->name);
                return -1;
            }
            if (db_url && *s != '\0' && database_url_check(v->name, s, err, errlen) != 0)
                return -1;
            if (strcmp(v->name, "REDIS_URL") == 0 && *s != '\0' && !starts_with(s, "redis://") &&
                !starts_with(s, "rediss://") && !starts_with(s, "unix://")) {
                set_err(err, errlen,
                        "invalid REDIS_URL: must start with redis://, rediss:// or unix://");
                return -1;
            }
        } else if (has_control(s)) {
            set_err(err, errlen, "invalid %s: %s contains a control character", v->name,
                    show(s, SIZE_MAX, q, sizeof(q)));
            return -1;
        }
        char **p = field(cfg, v);
        char *copy = NULL;
        if (*s == '\0' && strcmp(v->name, "PINS_DATA_DIR") == 0) {
            set_err(err, errlen, "invalid PINS_DATA_DIR: must not be empty");
            return -1;
        }
        if (*s != '\0') {
            copy = strdup(s);
            if (copy == NULL) {
                set_err(err, errlen, "out of memory reading %s", v->name);
                return -1;
            }
        }
        free_string(p);
        *p = copy;
        return 0;
    }
    case T_BOOL:
        if (parse_bool(s, &b) != 0) {
            set_err(err, errlen,
                    "invalid %s: %s is not a boolean (true/false, 1/0, yes/no, on/off)", v->name,
                    show(s, SIZE_MAX, q, sizeof(q)));
            return -1;
        }
        *(bool *)field(cfg, v) = b;
        return 0;
    case T_INT:
    case T_INT64:
        rc = parse_integer(s, &n);
        if (rc == -1) {
            set_err(err, errlen, "invalid %s: %s is not an integer", v->name,
                    show(s, SIZE_MAX, q, sizeof(q)));
            return -1;
        }
        if (rc != 0 || n < v->min || n > v->max) {
            set_err(err, errlen, "invalid %s: %s is out of range %lld..%lld", v->name,
                    show(s, SIZE_MAX, q, sizeof(q)), v->min, v->max);
            return -1;
        }
        if (v->type == T_INT)
            *(int *)field(cfg, v) = (int)n;
        else
            *(int64_t *)field(cfg, v) = n;
        return 0;
    case T_LISTEN:
        return parse_listen(cfg, s, err, errlen);
    case T_LEVEL: {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(s, names[i]) == 0) {
                cfg->log_level = (pins_log_level)i;
                return 0;
            }
        }
        if (strcasecmp(s, "warning") == 0) {
            cfg->log_level = PINS_LOG_WARN;
            return 0;
        }
        set_err(err, errlen, "invalid LOG_LEVEL: %s is not one of debug, info, warn, error",
                show(s, SIZE_MAX, q, sizeof(q)));
        return -1;
    }
    case T_FORMAT:
        if (strcasecmp(s, "json") == 0) {
            cfg->log_format = PINS_LOG_JSON;
            return 0;
        }
        if (strcasecmp(s, "text") == 0) {
            cfg->log_format = PINS_LOG_TEXT;
            return 0;
        }
        set_err(err, errlen, "invalid LOG_FORMAT: %s is not one of json, text",
                show(s, SIZE_MAX, q, sizeof(q)));
        return -1;
    }
    return -1;
}

/* The row a flag names, or NULL. name: the flag without its dashes, up to '=' (len bytes); dashes
 * and underscores are the same and case does not matter. */
static const struct var *find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < NVARS; i++) {
        const char *v = vars[i].name;
        if (strlen(v) != len)
            continue;
        size_t k = 0;
        for (; k < len; k++) {
            char c = name[k] == '-' ? '_' : (char)toupper((unsigned char)name[k]);
            if (c != v[k])
                break;
        }
        if (k == len)
            return &vars[i];
    }
    return NULL;
}

static int check_combinations(pins_config *cfg, bool burst_set, char *err, size_t errlen)
{
    if ((cfg->tls_cert_file == NULL) != (cfg->tls_key_file == NULL)) {
        set_err(err, errlen, "invalid %s: TLS_CERT_FILE and TLS_KEY_FILE must be set together",
                cfg->tls_cert_file == NULL ? "TLS_CERT_FILE" : "TLS_KEY_FILE");
        return -1;
    }
    if (cfg->database_listen_url != NULL && cfg->database_url == NULL) {
        set_err(err, errlen,
                "invalid DATABASE_LISTEN_URL: it is the change feed of the PostgreSQL store, and "
                "DATABASE_URL is not set (the embedded store needs none)");
        return -1;
    }
    if (cfg->tls_client_ca_file != NULL && cfg->tls_cert_file == NULL) {
        set_err(err, errlen,
                "invalid TLS_CLIENT_CA_FILE: mutual TLS needs TLS_CERT_FILE and TLS_KEY_FILE");
        return -1;
    }
    if (cfg->max_request_bytes < cfg->memory_max_size_bytes) {
        set_err(err, errlen,
                "invalid MAX_REQUEST_BYTES: %lld is smaller than MEMORY_MAX_SIZE_BYTES (%lld)",
                (long long)cfg->max_request_bytes, (long long)cfg->memory_max_size_bytes);
        return -1;
    }
    if (!burst_set)
        cfg->rate_limit_burst = cfg->rate_limit_rpm;
    if (cfg->rate_limit_rpm > 0 && cfg->rate_limit_burst < 1) {
        set_err(err, errlen,
                "invalid RATE_LIMIT_BURST: must be at least 1 while RATE_LIMIT_RPM "
                "is above 0");
        return -1;
    }
    return 0;
}

/* ---- usage ------------------------------------------------------------------------------------
 */

static char usage_text[8192];

static void build_usage(void)
{
    size_t n = 0;
    const char *group = NULL;
#define ADD(...)                                                                               \
    do {                                                                                       \
        int w_ = snprintf(usage_text + n, sizeof(usage_text) - n, __VA_ARGS__);                \
        if (w_ > 0)                                                                            \
            n = n + (size_t)w_ < sizeof(usage_text) ? n + (size_t)w_ : sizeof(usage_text) - 1; \
    } while (0)
    ADD("Usage: pinsd [--NAME=value ...]\n"
        "\n"
        "pinsd serves memory pins over gRPC, Connect, gRPC-Web and REST on one listener.\n"
        "Every setting is an environment variable; a flag of the same name overrides it:\n"
        "--RATE_LIMIT_RPM=10, --rate-limit-rpm 10 and --rate_limit_rpm=10 are the same flag.\n"
        "Booleans: true/false, 1/0, yes/no, on/off. An empty variable counts as unset.\n"
        "\n"
        "  -h, --help     print this text and exit\n"
        "  -V, --version  print the version and exit\n");
    for (size_t i = 0; i < NVARS; i++) {
        if (group == NULL || strcmp(group, vars[i].group) != 0) {
            group = vars[i].group;
            ADD("\n%s:\n", group);
        }
        ADD("  %s (default: %s)\n      %s\n", vars[i].name, vars[i].def, vars[i].help);
    }
    ADD("\nSecrets (DATABASE_URL, DATABASE_LISTEN_URL, REDIS_URL, MACHINE_SECRET_TOKEN, "
        "JWT_SECRET) are never logged.\n");
#undef ADD
}

/* ---- public -----------------------------------------------------------------------------------
 */

void pins_config_defaults(pins_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->data_dir = default_data_dir;
    cfg->db_pool_size = 8;
    snprintf(cfg->listen[0].host, sizeof(cfg->listen[0].host), "127.0.0.1");
    cfg->listen[0].port = 8000;
    snprintf(cfg->listen[1].host, sizeof(cfg->listen[1].host), "127.0.0.1");
    cfg->listen[1].port = 50051;
    cfg->nlisten = 2;
    cfg->workers = default_workers();
    cfg->drain_seconds = 10;
    cfg->max_connections = 10000;
    cfg->max_concurrent_streams = 100;
    cfg->idle_timeout_seconds = 300;
    cfg->request_timeout_seconds = 30;
    cfg->conn_buffer_bytes = 16777216;
    cfg->buffer_bytes = 67108864;
    cfg->rbac_enforce = false;
    cfg->rbac_fail_open = false;
    cfg->rbac_trust_x_roles = false;
    cfg->memory_pins_enabled = true;
    cfg->pg_read_cache = true;
    cfg->chaos_allowed = false;
    cfg->memory_max_size_bytes = 1048576;
    cfg->max_request_bytes = 4194304;
    cfg->sweep_interval_seconds = 10;
    cfg->sweep_batch = 500;
    cfg->audit_retention_days = 90;
    cfg->audit_denial_rows_per_second = 20;
    cfg->audit_read_rows_per_second = 200;
    cfg->cache_max_bytes = 268435456;
    cfg->rate_limit_rpm = 100;
    cfg->rate_limit_burst = 100;
    cfg->breaker_errors_per_min = 50;
    cfg->breaker_open_seconds = 30;
    cfg->watch_max = 10000;
    cfg->watch_max_per_principal = 1000;
    cfg->watch_pending_bytes = 1048576;
    cfg->sse_heartbeat_seconds = 15;
    cfg->watch_history_seconds = 3600;
    cfg->watch_history_max_rows = 1000000;
    cfg->log_level = PINS_LOG_INFO;
    cfg->log_format = PINS_LOG_JSON;
}

void pins_config_free(pins_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < NVARS; i++) {
        if (vars[i].type == T_STR || vars[i].type == T_SECRET)
            free_string(field(cfg, &vars[i]));
    }
}

int pins_config_load(pins_config *cfg, int argc, char **argv, pins_config_action *paction,
                     char *err, size_t errlen)
{
    bool burst_set = false;
    pins_config_defaults(cfg);

    /* --help and --version win over any bad setting so that help is always reachable. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            *paction = PINS_CONFIG_HELP;
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            *paction = PINS_CONFIG_VERSION;
            return 0;
        }
    }

    for (size_t i = 0; i < NVARS; i++) {
        const char *s = getenv(vars[i].name);
        if (s == NULL || *s == '\0')
            continue;
        if (apply(cfg, &vars[i], s, err, errlen) != 0)
            return PINS_EINVALID_ARGUMENT;
        if (strcmp(vars[i].name, "RATE_LIMIT_BURST") == 0)
            burst_set = true;
    }

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            /* Not echoed: a stray word may be half of a secret that lost its quotes. */
            set_err(err, errlen, "unexpected argument %d (flags are --NAME=value; see --help)", i);
            return PINS_EINVALID_ARGUMENT;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct var *v = find_flag(name, len);
        if (v == NULL) {
            bool plain = len > 0 && len <= 64;
            for (size_t k = 0; k < len && plain; k++)
                plain = isalnum((unsigned char)name[k]) || name[k] == '-' || name[k] == '_';
            if (plain)
                set_err(err, errlen, "unknown flag --%.*s (see --help)", (int)len, name);
            else
                set_err(err, errlen, "unknown flag at argument %d (see --help)", i);
            return PINS_EINVALID_ARGUMENT;
        }
        const char *value;
        if (eq != NULL) {
            value = eq + 1;
        } else if (v->type == T_BOOL) {
            /* A bare boolean flag means true; a following boolean word is its value. */
            bool b;
            value = "true";
            if (i + 1 < argc && parse_bool(argv[i + 1], &b) == 0)
                value = argv[++i];
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            set_err(err, errlen, "invalid %s: flag --%.*s needs a value", v->name, (int)len, name);
            return PINS_EINVALID_ARGUMENT;
        }
        if (apply(cfg, v, value, err, errlen) != 0)
            return PINS_EINVALID_ARGUMENT;
        if (strcmp(v->name, "RATE_LIMIT_BURST") == 0)
            burst_set = true;
    }

    if (check_combinations(cfg, burst_set, err, errlen) != 0)
        return PINS_EINVALID_ARGUMENT;
    *paction = PINS_CONFIG_RUN;
    return 0;
}

const char *pins_config_usage(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_usage);
    return usage_text;
}
