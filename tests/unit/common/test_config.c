/* tests/unit/common/test_config.c: defaults, environment, flags and every error line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/config.h"
#include "common/error.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const all_vars[] = {
    "DATABASE_URL",
    "DATABASE_LISTEN_URL",
    "PINS_WATCH_HISTORY_SECONDS",
    "PINS_WATCH_HISTORY_MAX_ROWS",
    "PINS_DATA_DIR",
    "PINS_CACHE_MAX_BYTES",
    "PINS_PG_READ_CACHE",
    "DB_POOL_SIZE",
    "REDIS_URL",
    "PINS_LISTEN",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA_FILE",
    "PINS_WORKERS",
    "PINS_DRAIN_SECONDS",
    "PINS_MAX_CONNECTIONS",
    "PINS_MAX_CONCURRENT_STREAMS",
    "PINS_IDLE_TIMEOUT_SECONDS",
    "CORS_ALLOWED_ORIGINS",
    "MACHINE_SECRET_TOKEN",
    "JWT_SECRET",
    "RBAC_ENFORCE",
    "RBAC_FAIL_OPEN",
    "RBAC_POLICY_FILE",
    "RBAC_TRUST_X_ROLES",
    "MEMORY_PINS_ENABLED",
    "CHAOS_ALLOWED",
    "MEMORY_MAX_SIZE_BYTES",
    "MAX_REQUEST_BYTES",
    "PINS_SWEEP_INTERVAL_SECONDS",
    "PINS_SWEEP_BATCH",
    "RATE_LIMIT_RPM",
    "RATE_LIMIT_BURST",
    "BREAKER_ERRORS_PER_MIN",
    "BREAKER_OPEN_SECONDS",
    "LOG_LEVEL",
    "LOG_FORMAT",
};
#define NALL (sizeof(all_vars) / sizeof(all_vars[0]))

struct ctx {
    pins_config cfg;
    pins_config_action action;
    char err[256];
};

static int setup(void **state)
{
    for (size_t i = 0; i < NALL; i++)
        unsetenv(all_vars[i]);
    struct ctx *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    pins_config_free(&c->cfg);
    free(c);
    for (size_t i = 0; i < NALL; i++)
        unsetenv(all_vars[i]);
    return 0;
}

/* Loads with argv = {"pinsd", args..., NULL}. */
static int load(struct ctx *c, const char *const *args)
{
    char *argv[32] = {"pinsd"};
    int argc = 1;
    for (; args != NULL && args[argc - 1] != NULL; argc++)
        argv[argc] = (char *)args[argc - 1];
    pins_config_free(&c->cfg);
    c->err[0] = '\0';
    c->action = (pins_config_action)-1;
    return pins_config_load(&c->cfg, argc, argv, &c->action, c->err, sizeof(c->err));
}

static void expect_ok(struct ctx *c, const char *const *args)
{
    int rv = load(c, args);
    if (rv != 0)
        fail_msg("load failed: %s", c->err);
    assert_int_equal(c->action, PINS_CONFIG_RUN);
}

/* The load fails with one line starting with "invalid <var>: " (or prefix when var is NULL). */
static void expect_error(struct ctx *c, const char *const *args, const char *var)
{
    char want[128];
    snprintf(want, sizeof(want), "invalid %s: ", var);
    assert_int_equal(load(c, args), PINS_EINVALID_ARGUMENT);
    if (strncmp(c->err, want, strlen(want)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", c->err, want);
    assert_null(strchr(c->err, '\n'));
}

static void expect_env_error(struct ctx *c, const char *var, const char *value)
{
    setenv(var, value, 1);
    expect_error(c, NULL, var);
    unsetenv(var);
}

static void test_defaults_match_the_header(void **state)
{
    struct ctx *c = *state;
    expect_ok(c, NULL);
    pins_config *g = &c->cfg;
    assert_null(g->database_url);
    assert_string_equal(g->data_dir, "./var");
    assert_null(g->redis_url);
    assert_int_equal(g->db_pool_size, 8);
    assert_int_equal(g->nlisten, 2);
    assert_string_equal(g->listen[0].host, "127.0.0.1");
    assert_int_equal(g->listen[0].port, 8000);
    assert_string_equal(g->listen[1].host, "127.0.0.1");
    assert_int_equal(g->listen[1].port, 50051);
    assert_null(g->tls_cert_file);
    assert_null(g->tls_key_file);
    assert_null(g->tls_client_ca_file);
    assert_true(g->workers >= 1 && g->workers <= 256);
    assert_int_equal(g->drain_seconds, 10);
    assert_int_equal(g->max_connections, 10000);
    assert_int_equal(g->max_concurrent_streams, 100);
    assert_int_equal(g->idle_timeout_seconds, 300);
    assert_int_equal(g->request_timeout_seconds, 30);
    assert_int_equal(g->conn_buffer_bytes, 16777216);
    assert_int_equal(g->buffer_bytes, 67108864);
    assert_int_equal(g->audit_retention_days, 90);
    assert_int_equal(g->audit_denial_rows_per_second, 20);
    assert_int_equal(g->watch_max, 10000);
    assert_int_equal(g->watch_max_per_principal, 1000);
    assert_int_equal(g->watch_pending_bytes, 1048576);
    assert_int_equal(g->sse_heartbeat_seconds, 15);
    assert_null(g->cors_allowed_origins);
    assert_null(g->machine_secret_token);
    assert_null(g->jwt_secret);
    assert_false(g->rbac_enforce);
    assert_false(g->rbac_fail_open);
    assert_null(g->rbac_policy_file);
    assert_false(g->rbac_trust_x_roles);
    assert_true(g->memory_pins_enabled);
    assert_true(g->pg_read_cache);
    assert_false(g->chaos_allowed);
    assert_int_equal(g->memory_max_size_bytes, 1048576);
    assert_int_equal(g->max_request_bytes, 4194304);
    assert_int_equal(g->sweep_interval_seconds, 10);
    assert_int_equal(g->sweep_batch, 500);
    assert_int_equal(g->rate_limit_rpm, 100);
    assert_int_equal(g->rate_limit_burst, 100);
    assert_int_equal(g->breaker_errors_per_min, 50);
    assert_int_equal(g->breaker_open_seconds, 30);
    assert_int_equal(g->log_level, PINS_LOG_INFO);
    assert_int_equal(g->log_format, PINS_LOG_JSON);
}

static void test_environment_sets_every_kind_of_value(void **state)
{
    struct ctx *c = *state;
    setenv("DATABASE_URL", "postgres://u:p@db/pins", 1);
    setenv("REDIS_URL", "redis://cache:6379/0", 1);
    setenv("PINS_DATA_DIR", "/data", 1);
    setenv("RBAC_ENFORCE", "YES", 1);
    setenv("MEMORY_PINS_ENABLED", "off", 1);
    setenv("PINS_PG_READ_CACHE", "false", 1);
    setenv("RATE_LIMIT_RPM", "10", 1);
    setenv("MEMORY_MAX_SIZE_BYTES", "2048", 1);
    setenv("LOG_LEVEL", "DEBUG", 1);
    setenv("LOG_FORMAT", "text", 1);
    setenv("JWT_SECRET", "s3cret", 1);
    expect_ok(c, NULL);
    assert_string_equal(c->cfg.database_url, "postgres://u:p@db/pins");
    assert_string_equal(c->cfg.redis_url, "redis://cache:6379/0");
    assert_string_equal(c->cfg.data_dir, "/data");
    assert_true(c->cfg.rbac_enforce);
    assert_false(c->cfg.memory_pins_enabled);
    assert_false(c->cfg.pg_read_cache);
    assert_int_equal(c->cfg.rate_limit_rpm, 10);
    assert_int_equal(c->cfg.rate_limit_burst, 10);
    assert_int_equal(c->cfg.memory_max_size_bytes, 2048);
    assert_int_equal(c->cfg.log_level, PINS_LOG_DEBUG);
    assert_int_equal(c->cfg.log_format, PINS_LOG_TEXT);
    assert_string_equal(c->cfg.jwt_secret, "s3cret");
}

static void test_empty_environment_variable_counts_as_unset(void **state)
{
    struct ctx *c = *state;
    setenv("RATE_LIMIT_RPM", "", 1);
    setenv("DATABASE_URL", "", 1);
    setenv("PINS_DATA_DIR", "", 1);
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.rate_limit_rpm, 100);
    assert_null(c->cfg.database_url);
    assert_string_equal(c->cfg.data_dir, "./var");
}

static void test_flags_override_environment(void **state)
{
    struct ctx *c = *state;
    setenv("RATE_LIMIT_RPM", "10", 1);
    setenv("JWT_SECRET", "from-env", 1);
    expect_ok(c, (const char *[]){"--rate-limit-rpm", "20", "--JWT_SECRET=from-flag", NULL});
    assert_int_equal(c->cfg.rate_limit_rpm, 20);
    assert_string_equal(c->cfg.jwt_secret, "from-flag");
}

static void test_flag_spellings_are_the_same_flag(void **state)
{
    struct ctx *c = *state;
    static const char *const forms[][3] = {
        {"--RATE_LIMIT_RPM=10", NULL, NULL},
        {"--rate-limit-rpm", "10", NULL},
        {"--rate_limit_rpm=10", NULL, NULL},
        {"--RATE-LIMIT-RPM", "10", NULL},
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        expect_ok(c, forms[i]);
        assert_int_equal(c->cfg.rate_limit_rpm, 10);
    }
}

static void test_later_flag_wins(void **state)
{
    struct ctx *c = *state;
    expect_ok(c, (const char *[]){"--db-pool-size=3", "--db-pool-size=4", NULL});
    assert_int_equal(c->cfg.db_pool_size, 4);
}

static void test_booleans_accept_every_documented_word(void **state)
{
    struct ctx *c = *state;
    static const char *const yes[] = {"true", "TRUE", "1", "yes", "Yes", "on", "ON"};
    static const char *const no[] = {"false", "False", "0", "no", "NO", "off", "Off"};
    for (size_t i = 0; i < 7; i++) {
        setenv("CHAOS_ALLOWED", yes[i], 1);
        expect_ok(c, NULL);
        assert_true(c->cfg.chaos_allowed);
        setenv("CHAOS_ALLOWED", no[i], 1);
        expect_ok(c, NULL);
        assert_false(c->cfg.chaos_allowed);
    }
}

static void test_bare_boolean_flag_means_true_and_takes_a_following_word(void **state)
{
    struct ctx *c = *state;
    expect_ok(c, (const char *[]){"--rbac-enforce", "--chaos-allowed", NULL});
    assert_true(c->cfg.rbac_enforce);
    assert_true(c->cfg.chaos_allowed);
    expect_ok(c, (const char *[]){"--memory-pins-enabled", "false", NULL});
    assert_false(c->cfg.memory_pins_enabled);
    expect_ok(c, (const char *[]){"--rbac-enforce=off", NULL});
    assert_false(c->cfg.rbac_enforce);
}

static void test_bad_boolean_names_the_variable(void **state)
{
    struct ctx *c = *state;
    expect_env_error(c, "RBAC_ENFORCE", "maybe");
    assert_string_equal(c->err, "invalid RBAC_ENFORCE: \"maybe\" is not a boolean "
                                "(true/false, 1/0, yes/no, on/off)");
    expect_env_error(c, "RBAC_FAIL_OPEN", "2");
    expect_env_error(c, "RBAC_TRUST_X_ROLES", "truee");
    expect_env_error(c, "MEMORY_PINS_ENABLED", "enabled");
    expect_env_error(c, "CHAOS_ALLOWED", " true");
    expect_error(c, (const char *[]){"--rbac-enforce=", NULL}, "RBAC_ENFORCE");
}

static void test_integers_are_parsed_strictly(void **state)
{
    struct ctx *c = *state;
    static const char *const bad[] = {"abc", "10abc", " 10", "10 ", "0x10", "1.5", "1e3", "--1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        expect_env_error(c, "RATE_LIMIT_RPM", bad[i]);
        assert_non_null(strstr(c->err, "is not an integer"));
    }
    expect_env_error(c, "RATE_LIMIT_RPM", "abc");
    assert_string_equal(c->err, "invalid RATE_LIMIT_RPM: \"abc\" is not an integer");
    expect_env_error(c, "RATE_LIMIT_RPM", "99999999999999999999");
    assert_non_null(strstr(c->err, "out of range"));
    expect_error(c, (const char *[]){"--rate-limit-rpm=", NULL}, "RATE_LIMIT_RPM");
}

static void test_every_integer_checks_its_range(void **state)
{
    struct ctx *c = *state;
    static const struct {
        const char *name, *low, *high, *min, *max;
    } rows[] = {
        {"DB_POOL_SIZE", "0", "1025", "1", "1024"},
        {"PINS_WORKERS", "0", "257", "1", "256"},
        {"PINS_DRAIN_SECONDS", "-1", "3601", "0", "3600"},
        {"PINS_MAX_CONNECTIONS", "0", "1000001", "1", "1000000"},
        {"PINS_MAX_CONCURRENT_STREAMS", "0", "1000001", "1", "1000000"},
        {"PINS_IDLE_TIMEOUT_SECONDS", "-1", "86401", "0", "86400"},
        {"MEMORY_MAX_SIZE_BYTES", "0", "67108865", "1", "4194304"},
        {"MAX_REQUEST_BYTES", "1023", "67108865", "1048576", "67108864"},
        {"PINS_SWEEP_INTERVAL_SECONDS", "0", "86401", "1", "86400"},
        {"PINS_SWEEP_BATCH", "0", "100001", "1", "100000"},
        {"RATE_LIMIT_RPM", "-1", "1000001", "0", "1000000"},
        {"RATE_LIMIT_BURST", "-1", "1000001", "1", "1000000"},
        {"BREAKER_ERRORS_PER_MIN", "0", "1000001", "1", "1000000"},
        {"BREAKER_OPEN_SECONDS", "0", "3601", "1", "3600"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        expect_env_error(c, rows[i].name, rows[i].low);
        assert_non_null(strstr(c->err, "out of range"));
        expect_env_error(c, rows[i].name, rows[i].high);
        assert_non_null(strstr(c->err, "out of range"));
        setenv(rows[i].name, rows[i].min, 1);
        expect_ok(c, NULL);
        setenv(rows[i].name, rows[i].max, 1);
        expect_ok(c, NULL);
        unsetenv(rows[i].name);
    }
    expect_env_error(c, "RATE_LIMIT_RPM", "1000001");
    assert_string_equal(c->err, "invalid RATE_LIMIT_RPM: \"1000001\" is out of range 0..1000000");
}

static void test_enums_accept_documented_names_only(void **state)
{
    struct ctx *c = *state;
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        setenv("LOG_LEVEL", levels[i], 1);
        expect_ok(c, NULL);
        assert_int_equal(c->cfg.log_level, i);
    }
    unsetenv("LOG_LEVEL");
    expect_env_error(c, "LOG_LEVEL", "verbose");
    assert_string_equal(c->err,
                        "invalid LOG_LEVEL: \"verbose\" is not one of debug, info, warn, error");
    expect_env_error(c, "LOG_FORMAT", "xml");
    expect_ok(c, (const char *[]){"--log-format", "TEXT", NULL});
    assert_int_equal(c->cfg.log_format, PINS_LOG_TEXT);
}

static void test_listen_parses_ipv4_ipv6_and_localhost(void **state)
{
    struct ctx *c = *state;
    setenv("PINS_LISTEN", "0.0.0.0:8000, [::1]:50051,localhost:9000,[::]:1", 1);
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.nlisten, 4);
    assert_string_equal(c->cfg.listen[0].host, "0.0.0.0");
    assert_int_equal(c->cfg.listen[0].port, 8000);
    assert_string_equal(c->cfg.listen[1].host, "::1");
    assert_int_equal(c->cfg.listen[1].port, 50051);
    assert_string_equal(c->cfg.listen[2].host, "localhost");
    assert_int_equal(c->cfg.listen[2].port, 9000);
    assert_string_equal(c->cfg.listen[3].host, "::");
    assert_int_equal(c->cfg.listen[3].port, 1);
    expect_ok(c, (const char *[]){"--pins-listen", "127.0.0.1:65535", NULL});
    assert_int_equal(c->cfg.nlisten, 1);
    assert_int_equal(c->cfg.listen[0].port, 65535);
}

static void test_listen_rejects_bad_entries(void **state)
{
    struct ctx *c = *state;
    static const char *const bad[] = {
        "example.com:80",  "127.0.0.1",
        "127.0.0.1:0",     "127.0.0.1:65536",
        "::1:80",          "[::1]80",
        "[::1:80",         "[1.2.3.4]:80",
        "127.0.0.1:8000,", "a:1,,b:2",
        ":8000",           "127.0.0.1:http",
        "127.0.0.1:+80",   "1.2.3.4:80,1.2.3.4:80",
        "300.1.1.1:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_env_error(c, "PINS_LISTEN", bad[i]);
    char many[512] = "";
    for (int i = 0; i < PINS_MAX_LISTEN + 1; i++) {
        char one[32];
        snprintf(one, sizeof(one), "%s127.0.0.1:%d", i ? "," : "", 8000 + i);
        strncat(many, one, sizeof(many) - strlen(many) - 1);
    }
    expect_env_error(c, "PINS_LISTEN", many);
    assert_non_null(strstr(c->err, "more than 16"));
}

static void test_tls_cert_and_key_come_together(void **state)
{
    struct ctx *c = *state;
    expect_error(c, (const char *[]){"--tls-cert-file=/c.pem", NULL}, "TLS_KEY_FILE");
    expect_error(c, (const char *[]){"--tls-key-file=/k.pem", NULL}, "TLS_CERT_FILE");
    expect_error(c, (const char *[]){"--tls-client-ca-file=/ca.pem", NULL}, "TLS_CLIENT_CA_FILE");
    expect_ok(c, (const char *[]){"--tls-cert-file=/c.pem", "--tls-key-file=/k.pem",
                                  "--tls-client-ca-file=/ca.pem", NULL});
    assert_string_equal(c->cfg.tls_cert_file, "/c.pem");
    assert_string_equal(c->cfg.tls_key_file, "/k.pem");
    assert_string_equal(c->cfg.tls_client_ca_file, "/ca.pem");
}

static void test_rate_limit_burst_defaults_to_rpm(void **state)
{
    struct ctx *c = *state;
    expect_ok(c, (const char *[]){"--rate-limit-rpm=600", NULL});
    assert_int_equal(c->cfg.rate_limit_burst, 600);
    expect_ok(c, (const char *[]){"--rate-limit-burst=5", "--rate-limit-rpm=600", NULL});
    assert_int_equal(c->cfg.rate_limit_burst, 5);
    expect_ok(c, (const char *[]){"--rate-limit-rpm=0", NULL});
    assert_int_equal(c->cfg.rate_limit_burst, 0);
    expect_error(c, (const char *[]){"--rate-limit-burst=0", NULL}, "RATE_LIMIT_BURST");
}

static void test_max_request_must_hold_the_largest_pin(void **state)
{
    struct ctx *c = *state;
    expect_error(c, (const char *[]){"--memory-max-size-bytes=8388608", NULL}, "MAX_REQUEST_BYTES");
    expect_ok(c, (const char *[]){"--memory-max-size-bytes=8388608", "--max-request-bytes=8388608",
                                  NULL});
    assert_int_equal(c->cfg.max_request_bytes, 8388608);
}

static void test_secrets_are_never_echoed(void **state)
{
    struct ctx *c = *state;
    static const struct {
        const char *var, *value;
    } rows[] = {
        {"DATABASE_URL", "mysql://user:hunter2@db/x"},
        {"DATABASE_URL", "postgres://user:hunter2@db/x\n"},
        {"REDIS_URL", "memcache://:hunter2@cache"},
        {"MACHINE_SECRET_TOKEN", "hunter2\n"},
        {"JWT_SECRET", "hunter2\r"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        expect_env_error(c, rows[i].var, rows[i].value);
        assert_null(strstr(c->err, "hunter2"));
    }
    expect_error(c, (const char *[]){"--jwt-secret", "hunter2\x01", NULL}, "JWT_SECRET");
    assert_null(strstr(c->err, "hunter2"));
    /* A misspelt flag or a stray word never shows its value either. */
    assert_int_equal(load(c, (const char *[]){"--jwt-secrte=hunter2", NULL}),
                     PINS_EINVALID_ARGUMENT);
    assert_string_equal(c->err, "unknown flag --jwt-secrte (see --help)");
    assert_int_equal(load(c, (const char *[]){"--jwt-secret=a", "hunter2", NULL}),
                     PINS_EINVALID_ARGUMENT);
    assert_null(strstr(c->err, "hunter2"));
    assert_non_null(strstr(c->err, "unexpected argument 2"));
}

static void test_bounds_of_the_hardening_settings(void **state)
{
    struct ctx *c = *state;
    static const char *const bad[][2] = {
        {"PINS_REQUEST_TIMEOUT_SECONDS", "0"},  {"PINS_REQUEST_TIMEOUT_SECONDS", "3601"},
        {"PINS_CONN_BUFFER_BYTES", "65535"},    {"PINS_BUFFER_BYTES", "1048575"},
        {"PINS_AUDIT_RETENTION_DAYS", "-1"},    {"PINS_AUDIT_DENIAL_ROWS_PER_SECOND", "0"},
        {"PINS_WATCH_MAX_PER_PRINCIPAL", "0"},  {"PINS_WATCH_PENDING_BYTES", "4095"},
        {"PINS_SSE_HEARTBEAT_SECONDS", "3601"}, {"PINS_MAX_CONCURRENT_STREAMS", "0"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_env_error(c, bad[i][0], bad[i][1]);
    setenv("PINS_REQUEST_TIMEOUT_SECONDS", "1", 1);
    setenv("PINS_CONN_BUFFER_BYTES", "65536", 1);
    setenv("PINS_BUFFER_BYTES", "4294967296", 1);
    setenv("PINS_AUDIT_RETENTION_DAYS", "0", 1);
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.request_timeout_seconds, 1);
    assert_int_equal(c->cfg.conn_buffer_bytes, 65536);
    assert_int_equal(c->cfg.buffer_bytes, 4294967296LL);
    assert_int_equal(c->cfg.audit_retention_days, 0);
    unsetenv("PINS_REQUEST_TIMEOUT_SECONDS");
    unsetenv("PINS_CONN_BUFFER_BYTES");
    unsetenv("PINS_BUFFER_BYTES");
    unsetenv("PINS_AUDIT_RETENTION_DAYS");
}

static void test_database_url_ports_are_checked_at_start(void **state)
{
    struct ctx *c = *state;
    static const char *const bad[] = {
        "postgres://user:hunter2@db:abc/x",
        "postgresql://user:hunter2@db:0/x",
        "postgresql://user:hunter2@db:65536/x",
        "postgresql://user:hunter2@db:/x",
        "postgresql://user:hunter2@a:5432,b:x/x",
        "postgresql://user:hunter2@[::1]:5q/x",
        "postgresql://user:hunter2@[::1/x",
        "postgresql://user:hunter2@db/x?port=five",
        "postgresql://user:hunter2@db/x?sslmode=disable&port=5432,",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        expect_env_error(c, "DATABASE_URL", bad[i]);
        assert_null(strstr(c->err, "hunter2"));
    }
    static const char *const good[] = {
        "postgres://user:p@db:5432/x",
        "postgresql://db/x",
        "postgresql://user:p:q@db:6432/x?sslmode=disable",
        "postgresql://a:5432,b:5433/x?target_session_attrs=read-write",
        "postgresql://[::1]:5432/x",
        "postgresql://[::1]/x",
        "postgresql:///x?host=/run/postgresql&port=5432",
        "postgresql://u@db:65535",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        setenv("DATABASE_URL", good[i], 1);
        expect_ok(c, NULL);
        assert_string_equal(c->cfg.database_url, good[i]);
    }
    unsetenv("DATABASE_URL");
}

static void test_database_listen_url_is_checked_and_needs_database_url(void **state)
{
    struct ctx *c = *state;
    setenv("DATABASE_URL", "postgresql://pgbouncer:6432/x", 1);
    expect_env_error(c, "DATABASE_LISTEN_URL", "postgresql://user:hunter2@db:99999/x");
    assert_non_null(strstr(c->err, "invalid DATABASE_LISTEN_URL"));
    assert_null(strstr(c->err, "hunter2"));
    expect_env_error(c, "DATABASE_LISTEN_URL", "mysql://user:hunter2@db/x");
    assert_null(strstr(c->err, "hunter2"));
    setenv("DATABASE_LISTEN_URL", "postgresql://user:p@db:5432/x", 1);
    expect_ok(c, NULL);
    assert_string_equal(c->cfg.database_listen_url, "postgresql://user:p@db:5432/x");
    unsetenv("DATABASE_URL"); /* the embedded store has no change feed to give it */
    expect_error(c, NULL, "DATABASE_LISTEN_URL");
    unsetenv("DATABASE_LISTEN_URL");
}

static void test_watch_history_bounds(void **state)
{
    struct ctx *c = *state;
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.watch_history_seconds, 3600);
    assert_int_equal(c->cfg.watch_history_max_rows, 1000000);
    expect_env_error(c, "PINS_WATCH_HISTORY_SECONDS", "59");
    expect_env_error(c, "PINS_WATCH_HISTORY_MAX_ROWS", "999");
    setenv("PINS_WATCH_HISTORY_SECONDS", "60", 1);
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.watch_history_seconds, 60);
    unsetenv("PINS_WATCH_HISTORY_SECONDS");
}

static void test_string_values_with_control_characters_are_rejected(void **state)
{
    struct ctx *c = *state;
    expect_env_error(c, "PINS_DATA_DIR", "/data\n");
    expect_env_error(c, "RBAC_POLICY_FILE", "/p\x1b.yaml");
    expect_error(c, (const char *[]){"--pins-data-dir=", NULL}, "PINS_DATA_DIR");
}

static void test_unknown_flags_and_missing_values_are_errors(void **state)
{
    struct ctx *c = *state;
    assert_int_equal(load(c, (const char *[]){"--no-such-thing=1", NULL}), PINS_EINVALID_ARGUMENT);
    assert_string_equal(c->err, "unknown flag --no-such-thing (see --help)");
    assert_int_equal(load(c, (const char *[]){"-x", NULL}), PINS_EINVALID_ARGUMENT);
    assert_int_equal(load(c, (const char *[]){"--", NULL}), PINS_EINVALID_ARGUMENT);
    expect_error(c, (const char *[]){"--rate-limit-rpm", NULL}, "RATE_LIMIT_RPM");
    assert_string_equal(c->err, "invalid RATE_LIMIT_RPM: flag --rate-limit-rpm needs a value");
}

static void test_help_and_version_set_the_action_even_with_bad_settings(void **state)
{
    struct ctx *c = *state;
    setenv("RATE_LIMIT_RPM", "abc", 1);
    static const char *const help[] = {"--help", "-h"};
    static const char *const version[] = {"--version", "-V"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(load(c, (const char *[]){"--bogus", help[i], NULL}), 0);
        assert_int_equal(c->action, PINS_CONFIG_HELP);
        assert_int_equal(load(c, (const char *[]){version[i], NULL}), 0);
        assert_int_equal(c->action, PINS_CONFIG_VERSION);
    }
}

static void test_usage_lists_every_variable_with_its_default(void **state)
{
    const char *u = pins_config_usage();
    assert_true(strncmp(u, "Usage: pinsd [--NAME=value ...]\n", 32) == 0);
    for (size_t i = 0; i < NALL; i++) {
        if (strstr(u, all_vars[i]) == NULL)
            fail_msg("usage does not mention %s", all_vars[i]);
    }
    assert_non_null(strstr(u, "(default: 127.0.0.1:8000,127.0.0.1:50051)"));
    assert_non_null(strstr(u, "(default: 100)"));
    assert_non_null(strstr(u, "--help"));
    assert_non_null(strstr(u, "--version"));
    assert_non_null(strstr(u, "are never logged.\n")); /* not truncated */
    assert_ptr_equal(u, pins_config_usage());
}

static void test_workers_default_to_cpus_of_the_affinity_mask(void **state)
{
    struct ctx *c = *state;
    cpu_set_t saved, one;
    assert_int_equal(sched_getaffinity(0, sizeof(saved), &saved), 0);
    int first = -1;
    for (int i = 0; i < CPU_SETSIZE && first < 0; i++) {
        if (CPU_ISSET(i, &saved))
            first = i;
    }
    assert_true(first >= 0);
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.workers, CPU_COUNT(&saved) > 256 ? 256 : CPU_COUNT(&saved));
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    assert_int_equal(sched_setaffinity(0, sizeof(one), &one), 0);
    int rv = load(c, NULL);
    assert_int_equal(sched_setaffinity(0, sizeof(saved), &saved), 0);
    assert_int_equal(rv, 0);
    assert_int_equal(c->cfg.workers, 1);
    setenv("PINS_WORKERS", "3", 1);
    expect_ok(c, NULL);
    assert_int_equal(c->cfg.workers, 3);
}

static void test_free_accepts_defaults_failed_loads_and_repeats(void **state)
{
    struct ctx *c = *state;
    pins_config cfg;
    pins_config_defaults(&cfg);
    pins_config_free(&cfg);
    pins_config_free(&cfg);
    setenv("JWT_SECRET", "x", 1);
    setenv("PINS_DATA_DIR", "/d", 1);
    setenv("LOG_LEVEL", "loud", 1);
    assert_int_equal(load(c, NULL), PINS_EINVALID_ARGUMENT);
    pins_config_free(&c->cfg); /* leak-free under ASan, and safe to free again in teardown */
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_defaults_match_the_header),
        T(test_environment_sets_every_kind_of_value),
        T(test_empty_environment_variable_counts_as_unset),
        T(test_flags_override_environment),
        T(test_flag_spellings_are_the_same_flag),
        T(test_later_flag_wins),
        T(test_booleans_accept_every_documented_word),
        T(test_bare_boolean_flag_means_true_and_takes_a_following_word),
        T(test_bad_boolean_names_the_variable),
        T(test_integers_are_parsed_strictly),
        T(test_every_integer_checks_its_range),
        T(test_enums_accept_documented_names_only),
        T(test_listen_parses_ipv4_ipv6_and_localhost),
        T(test_listen_rejects_bad_entries),
        T(test_tls_cert_and_key_come_together),
        T(test_rate_limit_burst_defaults_to_rpm),
        T(test_max_request_must_hold_the_largest_pin),
        T(test_bounds_of_the_hardening_settings),
        T(test_database_url_ports_are_checked_at_start),
        T(test_database_listen_url_is_checked_and_needs_database_url),
        T(test_watch_history_bounds),
        T(test_secrets_are_never_echoed),
        T(test_string_values_with_control_characters_are_rejected),
        T(test_unknown_flags_and_missing_values_are_errors),
        T(test_help_and_version_set_the_action_even_with_bad_settings),
        T(test_usage_lists_every_variable_with_its_default),
        T(test_workers_default_to_cpus_of_the_affinity_mask),
        T(test_free_accepts_defaults_failed_loads_and_repeats),
    };
    return cmocka_run_group_tests_name("common/config", tests, NULL, NULL);
}
