/* common/config.h: pinsd's configuration (API.md section 8).
 *
 * Every setting comes from an environment variable and may be overridden by a command-line flag of
 * the same name: `--RATE_LIMIT_RPM=10`, `--rate-limit-rpm 10` and `--rate_limit_rpm=10` are the
 * same flag. A bad value stops the start with one line naming the variable.
 *
 * The loaded configuration is immutable and shared by every thread; a reload builds a new one.
 */
#ifndef PINS_COMMON_CONFIG_H
#define PINS_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PINS_MAX_LISTEN 16

/* The URL schemes of a PostgreSQL DATABASE_URL, NULL-terminated: the configuration accepts no
 * other, and store/store.c's backend table selects the PostgreSQL store by them. */
extern const char *const pins_config_postgres_schemes[];

typedef struct pins_listen_addr {
    char host[64]; /* numeric IPv4/IPv6 address or "localhost" */
    uint16_t port;
} pins_listen_addr;

typedef enum pins_log_format { PINS_LOG_JSON, PINS_LOG_TEXT } pins_log_format;
typedef enum pins_log_level {
    PINS_LOG_DEBUG,
    PINS_LOG_INFO,
    PINS_LOG_WARN,
    PINS_LOG_ERROR
} pins_log_level;

typedef struct pins_config {
    /* Store. database_url NULL: the embedded SQLite store in data_dir. */
    char *database_url; /* DATABASE_URL (a secret: never logged) */
    /* DATABASE_LISTEN_URL: a direct PostgreSQL connection for the change feed (LISTEN), when
     * DATABASE_URL goes through PgBouncer; NULL: DATABASE_URL (a secret: never logged) */
    char *database_listen_url;
    char *data_dir;   /* PINS_DATA_DIR, default "./var" */
    char *redis_url;  /* REDIS_URL (a secret), NULL: local rate limiting only */
    int db_pool_size; /* DB_POOL_SIZE, default 8, 1..1024 */

    /* Listeners and TLS. */
    pins_listen_addr
        listen[PINS_MAX_LISTEN]; /* PINS_LISTEN, default 127.0.0.1:8000,127.0.0.1:50051 */
    size_t nlisten;
    char *tls_cert_file;      /* TLS_CERT_FILE */
    char *tls_key_file;       /* TLS_KEY_FILE (both or neither) */
    char *tls_client_ca_file; /* TLS_CLIENT_CA_FILE: require client certificates */
    int workers;              /* PINS_WORKERS, default: CPUs this process may run on, 1..256 */
    int drain_seconds;   /* PINS_DRAIN_SECONDS, default 10: SIGTERM grace for in-flight calls */
    int max_connections; /* PINS_MAX_CONNECTIONS, default 10000 per process */
    int max_concurrent_streams;  /* PINS_MAX_CONCURRENT_STREAMS, default 100 per connection */
    int idle_timeout_seconds;    /* PINS_IDLE_TIMEOUT_SECONDS, default 300 (0: none) */
    int request_timeout_seconds; /* PINS_REQUEST_TIMEOUT_SECONDS, default 30: headers + body */
    int64_t conn_buffer_bytes;   /* PINS_CONN_BUFFER_BYTES, default 16 MiB per connection */
    int64_t buffer_bytes;        /* PINS_BUFFER_BYTES, default 64 MiB per process */
    char *cors_allowed_origins;  /* CORS_ALLOWED_ORIGINS, comma list, default none */

    /* Authentication and RBAC. */
    char *machine_secret_token; /* MACHINE_SECRET_TOKEN (a secret); empty disables */
    char *jwt_secret;           /* JWT_SECRET (a secret); empty disables bearer tokens */
    bool rbac_enforce;          /* RBAC_ENFORCE, default false */
    bool rbac_fail_open;        /* RBAC_FAIL_OPEN, default false */
    char *rbac_policy_file;     /* RBAC_POLICY_FILE, NULL: the built-in matrix */
    bool rbac_trust_x_roles;    /* RBAC_TRUST_X_ROLES, default false */

    /* Domain limits and flags. */
    bool memory_pins_enabled;      /* MEMORY_PINS_ENABLED, default true */
    bool chaos_allowed;            /* CHAOS_ALLOWED, default false */
    int64_t memory_max_size_bytes; /* MEMORY_MAX_SIZE_BYTES, default 1048576 */
    int64_t max_request_bytes;     /* MAX_REQUEST_BYTES, default 4194304 */
    int sweep_interval_seconds;    /* PINS_SWEEP_INTERVAL_SECONDS, default 10 */
    int sweep_batch;               /* PINS_SWEEP_BATCH, default 500 */

    /* Audits (rpc/audit.h). */
    int audit_retention_days;         /* PINS_AUDIT_RETENTION_DAYS, default 90, 0: forever */
    int audit_denial_rows_per_second; /* PINS_AUDIT_DENIAL_ROWS_PER_SECOND, default 20 */
    int audit_read_rows_per_second;   /* PINS_AUDIT_READ_ROWS_PER_SECOND, default 200 */
    int64_t cache_max_bytes;          /* PINS_CACHE_MAX_BYTES, default 256 MiB */
    bool pg_read_cache;               /* PINS_PG_READ_CACHE, default true */

    /* Blast-radius controls. */
    int rate_limit_rpm;         /* RATE_LIMIT_RPM, default 100, 0 disables */
    int rate_limit_burst;       /* RATE_LIMIT_BURST, default = RPM */
    int breaker_errors_per_min; /* BREAKER_ERRORS_PER_MIN, default 50 */
    int breaker_open_seconds;   /* BREAKER_OPEN_SECONDS, default 30 */

    /* Watch streams (rpc/watch.h). */
    int watch_max;                  /* PINS_WATCH_MAX, default 10000 watch streams per process */
    int watch_max_per_principal;    /* PINS_WATCH_MAX_PER_PRINCIPAL, default 1000 */
    int64_t watch_pending_bytes;    /* PINS_WATCH_PENDING_BYTES, default 1 MiB per watch stream */
    int watch_history_seconds;      /* PINS_WATCH_HISTORY_SECONDS, default 3600: changes kept for
                                     * resuming watches */
    int64_t watch_history_max_rows; /* PINS_WATCH_HISTORY_MAX_ROWS, default 1000000 changes kept */
    int sse_heartbeat_seconds;      /* PINS_SSE_HEARTBEAT_SECONDS, default 15 (0: none) */

    /* Logs. */
    pins_log_level log_level;   /* LOG_LEVEL debug|info|warn|error, default info */
    pins_log_format log_format; /* LOG_FORMAT json|text, default json */
} pins_config;

/* What pins_config_load() found besides settings. */
typedef enum pins_config_action {
    PINS_CONFIG_RUN,     /* start the server */
    PINS_CONFIG_HELP,    /* --help was given: print pins_config_usage() and exit 0 */
    PINS_CONFIG_VERSION, /* --version was given: print the version and exit 0 */
} pins_config_action;

/* Fills *cfg from the environment (getenv), then from argv (argv[0] is the program name).
 * On failure writes one line naming the variable or flag into err (errlen bytes) and leaves *cfg
 * in a state that pins_config_free() accepts. *paction says what to do on success.
 * Returns 0 or PINS_EINVALID_ARGUMENT. */
int pins_config_load(pins_config *cfg, int argc, char **argv, pins_config_action *paction,
                     char *err, size_t errlen);
/* Defaults only (no environment, no flags). */
void pins_config_defaults(pins_config *cfg);
/* Frees the strings the configuration owns. */
void pins_config_free(pins_config *cfg);
/* The --help text (static). */
const char *pins_config_usage(void);

#endif
