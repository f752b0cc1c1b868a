/* tests/unit/pinsctl/test_opts.c: pinsctl's shared options, durations and exit statuses
 * (tools/pinsctl/opts.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "pinsctl.h"

static void clear_env(void)
{
    unsetenv("PINS_ADDR");
    unsetenv("MACHINE_SECRET_TOKEN");
    unsetenv("PINS_TOKEN");
}

static void test_durations_take_every_unit(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ms;
    } ok[] = {{"0", 0},          {"1", 1000},
              {"250ms", 250},    {"5s", 5000},
              {"1.5m", 90000},   {"2h", 7200000},
              {"0.5", 500},      {"10s", 10000},
              {"1.0005s", 1001}, {"0ms", 0},
              {"3m", 180000},    {"007s", 7000},
              {".5s", 500},      {"100000h", 360000000000}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int64_t ms = -1;
        assert_true(pinsctl_parse_duration_ms(ok[i].s, &ms));
        assert_int_equal(ms, ok[i].ms);
    }
}

static void test_durations_refuse_everything_else(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",       "-1",  "-1s", "+1s",  "s",   "ms",  "1x",     "1 s", " 1s", "1s ",
        "1.2.3s", "inf", "nan", "0x10", "1e3", "1sm", "1.5ms.", ".",   "1d",  "1000000000000000h",
        "5S"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = 42;
        assert_false(pinsctl_parse_duration_ms(bad[i], &ms));
        assert_int_equal(ms, 42); /* untouched on failure */
    }
    int64_t ms = 0;
    assert_false(pinsctl_parse_duration_ms(NULL, &ms));
}

static void test_global_init_reads_the_environment(void **state)
{
    (void)state;
    clear_env();
    pinsctl_global g;
    pinsctl_global_init(&g);
    assert_null(g.opts.machine_token);
    assert_null(g.opts.bearer_token);
    assert_int_equal(g.opts.timeout_ms, 10000);
    assert_false(g.timeout_given);
    assert_false(g.json);
    assert_false(g.opts.tls);

    setenv("PINS_ADDR", "http://127.0.0.1:9", 1);
    setenv("MACHINE_SECRET_TOKEN", "m-secret", 1);
    setenv("PINS_TOKEN", "jwt-text", 1);
    pinsctl_global_init(&g);
    assert_string_equal(g.opts.addr, "http://127.0.0.1:9");
    assert_string_equal(g.opts.machine_token, "m-secret");
    assert_string_equal(g.opts.bearer_token, "jwt-text");

    setenv("MACHINE_SECRET_TOKEN", "", 1); /* empty means unset */
    pinsctl_global_init(&g);
    assert_null(g.opts.machine_token);
    clear_env();
}

static void test_global_options_with_values_and_flags(void **state)
{
    (void)state;
    clear_env();
    char *argv[] = {"pinsctl",      "--addr", "h:1",    "--tls",         "--ca", "ca.pem",
                    "--cert=c.pem", "--key",  "k.pem",  "--server-name", "srv",  "--insecure",
                    "--timeout",    "250ms",  "--json", "get",           NULL};
    int argc = 16;
    pinsctl_global g;
    pinsctl_global_init(&g);
    int i = 1;
    int taken = 0;
    while (i < argc) {
        int rv = pinsctl_global_option(&g, argc, argv, &i);
        assert_true(rv >= 0);
        if (rv == 0)
            break;
        taken++;
    }
    assert_int_equal(taken, 9);
    assert_int_equal(i, 15);
    assert_string_equal(argv[i], "get");
    assert_string_equal(g.opts.addr, "h:1");
    assert_true(g.opts.tls);
    assert_string_equal(g.opts.ca_file, "ca.pem");
    assert_string_equal(g.opts.cert_file, "c.pem");
    assert_string_equal(g.opts.key_file, "k.pem");
    assert_string_equal(g.opts.server_name, "srv");
    assert_true(g.opts.insecure_skip_verify);
    assert_int_equal(g.opts.timeout_ms, 250);
    assert_true(g.timeout_given);
    assert_true(g.json);
}

static void test_global_option_refusals(void **state)
{
    (void)state;
    pinsctl_global g;
    pinsctl_global_init(&g);
    /* Not a global option: left alone. */
    char *a1[] = {"pinsctl", "--prefix", "p", NULL};
    int i = 1;
    assert_int_equal(pinsctl_global_option(&g, 3, a1, &i), 0);
    assert_int_equal(i, 1);
    char *a1b[] = {"pinsctl", "--address", "x", NULL}; /* a longer name is not --addr */
    assert_int_equal(pinsctl_global_option(&g, 3, a1b, &i), 0);
    char *a1c[] = {"pinsctl", "get", NULL};
    assert_int_equal(pinsctl_global_option(&g, 2, a1c, &i), 0);
    /* A value missing, empty or bad: -1. */
    char *a2[] = {"pinsctl", "--addr", NULL};
    i = 1;
    assert_int_equal(pinsctl_global_option(&g, 2, a2, &i), -1);
    char *a3[] = {"pinsctl", "--timeout", "soon", NULL};
    i = 1;
    assert_int_equal(pinsctl_global_option(&g, 3, a3, &i), -1);
    assert_int_equal(g.opts.timeout_ms, 10000);
    char *a4[] = {"pinsctl", "--ca=", NULL};
    i = 1;
    assert_int_equal(pinsctl_global_option(&g, 2, a4, &i), -1);
    char *a5[] = {"pinsctl", "--timeout=-5s", NULL};
    i = 1;
    assert_int_equal(pinsctl_global_option(&g, 2, a5, &i), -1);
    /* --timeout 0: no deadline. */
    char *a6[] = {"pinsctl", "--timeout", "0", NULL};
    i = 1;
    assert_int_equal(pinsctl_global_option(&g, 3, a6, &i), 1);
    assert_int_equal(i, 3);
    assert_int_equal(g.opts.timeout_ms, 0);
    /* Tokens are never options. */
    char *a7[] = {"pinsctl", "--token", "t", NULL};
    i = 1;
    assert_int_equal(pinsctl_global_option(&g, 3, a7, &i), 0);
}

static void test_exit_status_of_a_status(void **state)
{
    (void)state;
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(pinsctl_exit_for(NULL), PINSCTL_EXIT_OK);
    assert_int_equal(pinsctl_exit_for(&st), PINSCTL_EXIT_OK);
    /* Anything the server sent: 1. */
    static const int server_codes[] = {
        PINS_CODE_NOT_FOUND,       PINS_CODE_FAILED_PRECONDITION, PINS_CODE_ABORTED,
        PINS_CODE_UNAUTHENTICATED, PINS_CODE_PERMISSION_DENIED,   PINS_CODE_INVALID_ARGUMENT,
        PINS_CODE_UNAVAILABLE,     PINS_CODE_DEADLINE_EXCEEDED,   PINS_CODE_INTERNAL};
    for (size_t i = 0; i < sizeof(server_codes) / sizeof(server_codes[0]); i++) {
        st.code = server_codes[i];
        st.from_server = true;
        assert_int_equal(pinsctl_exit_for(&st), PINSCTL_EXIT_REFUSED);
    }
    /* Decided by the client: 3, except a local argument error (2). */
    static const int local_codes[] = {PINS_CODE_UNAVAILABLE,        PINS_CODE_DEADLINE_EXCEEDED,
                                      PINS_CODE_INTERNAL,           PINS_CODE_CANCELLED,
                                      PINS_CODE_RESOURCE_EXHAUSTED, PINS_CODE_UNKNOWN};
    for (size_t i = 0; i < sizeof(local_codes) / sizeof(local_codes[0]); i++) {
        st.code = local_codes[i];
        st.from_server = false;
        assert_int_equal(pinsctl_exit_for(&st), PINSCTL_EXIT_UNREACHABLE);
    }
    st.code = PINS_CODE_INVALID_ARGUMENT;
    st.from_server = false;
    assert_int_equal(pinsctl_exit_for(&st), PINSCTL_EXIT_USAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations_take_every_unit),
        cmocka_unit_test(test_durations_refuse_everything_else),
        cmocka_unit_test(test_global_init_reads_the_environment),
        cmocka_unit_test(test_global_options_with_values_and_flags),
        cmocka_unit_test(test_global_option_refusals),
        cmocka_unit_test(test_exit_status_of_a_status),
    };
    return cmocka_run_group_tests_name("pinsctl_opts", tests, NULL, NULL);
}
