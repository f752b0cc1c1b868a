/* tests/unit/pinsctl/test_cli.c: pinsctl's command line (tools/pinsctl/cli.c): help, usage
 * errors found before any call, and options before or after the command. Calls go to a loopback
 * port nobody listens on, so a command that got past its arguments exits 3, never 2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"

#define MAXARGS 24

static char dead_addr[64];

/* A loopback port that refuses connections: bound, then closed. */
static int group_setup(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(dead_addr, sizeof(dead_addr), "127.0.0.1:%d", ntohs(sa.sin_port));
    close(fd);
    setenv("PINS_ADDR", dead_addr, 1);
    unsetenv("MACHINE_SECRET_TOKEN");
    unsetenv("PINS_TOKEN");
    return 0;
}

/* Runs pinsctl with the NULL-terminated arguments after argv[0]; returns the exit status. */
static int run(const char *first, ...)
{
    char *argv[MAXARGS + 1];
    int argc = 0;
    argv[argc++] = "pinsctl";
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s != NULL && argc < MAXARGS; s = va_arg(ap, const char *))
        argv[argc++] = (char *)s;
    va_end(ap);
    argv[argc] = NULL;
    fflush(stdout);
    int rv = pinsctl_main(argc, argv);
    fflush(stdout);
    return rv;
}

static void test_help_and_version_exit_0(void **state)
{
    (void)state;
    assert_int_equal(run("--help", NULL), 0);
    assert_int_equal(run("-h", NULL), 0);
    assert_int_equal(run("--version", NULL), 0);
    assert_int_equal(run("help", "put", NULL), 0);
    static const char *const cmds[] = {"get",   "put",    "list",  "delete", "cleanup",
                                       "watch", "health", "ready", "status", "memory-audit"};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        assert_int_equal(run(cmds[i], "--help", NULL), 0);
    static const char *const rbac[] = {"info", "matrix", "reload", "audit", "audit-cleanup"};
    for (size_t i = 0; i < sizeof(rbac) / sizeof(rbac[0]); i++)
        assert_int_equal(run("rbac", rbac[i], "--help", NULL), 0);
    assert_int_equal(run("rbac", "--help", NULL), 0);
    /* --help wins over anything else on the line, bad values included. */
    assert_int_equal(run("put", "t", "k", "not json", "--ttl", "x", "-h", NULL), 0);
}

static void test_usage_errors_exit_2(void **state)
{
    (void)state;
    assert_int_equal(run(NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("frobnicate", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("--frob", "get", "t", "k", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("get", "t", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("get", "t", "k", "extra", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("get", "t", "k", "--prefix", "p", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("get", "t", "k", "--timeout", "soon", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("--addr", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("put", "t", "k", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("put", "t", "k", "{}", "--ttl", "x", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("put", "t", "k", "{}", "--ttl", "-1", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("put", "t", "k", "{}", "--ttl", "3000000000", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("put", "t", "k", "{}", "--expected-version", "v1", NULL),
                     PINSCTL_EXIT_USAGE);
    assert_int_equal(run("put", "t", "k", "{}", "--ttl", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("list", "t", "--limit", "many", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("list", "t", "--all=yes", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("delete", "t", "k", "--expected-version", "1.5", NULL),
                     PINSCTL_EXIT_USAGE);
    assert_int_equal(run("cleanup", "a", "b", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("watch", "t", "--count", "0", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("health", "--count", "1", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("ready", "extra", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("rbac", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("rbac", "bogus", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("rbac", "audit", "--allowed", "perhaps", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("rbac", "audit", "--since", "yesterday", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("rbac", "audit", "--limit", "x", NULL), PINSCTL_EXIT_USAGE);
    assert_int_equal(run("rbac", "audit-cleanup", "--retention-days", "x", NULL),
                     PINSCTL_EXIT_USAGE);
    assert_int_equal(run("memory-audit", "--offset", "1.5", NULL), PINSCTL_EXIT_USAGE);
    /* Tokens are never taken from arguments. */
    assert_int_equal(run("get", "t", "k", "--token", "secret", NULL), PINSCTL_EXIT_USAGE);
}

static void test_bad_json_values_exit_2_before_any_call(void **state)
{
    (void)state;
    static const char *const bad[] = {"",   "{",    "{\"a\":}",   "[1]",     "\"text\"",
                                      "42", "null", "{\"a\":1}x", "{'a':1}", "{\"a\":1,}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(run("put", "t", "k", bad[i], NULL), PINSCTL_EXIT_USAGE);
}

static void test_calls_past_their_arguments_meet_the_dead_port(void **state)
{
    (void)state;
    assert_int_equal(run("get", "t", "k", NULL), PINSCTL_EXIT_UNREACHABLE);
    /* Global options after the command, and "--" before a key that starts with '-'. */
    assert_int_equal(run("get", "t", "--json", "--timeout", "2s", "--", "-k", NULL),
                     PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("--json", "put", "t", "k", "{\"a\":[1,2]}", "--ttl", "5", NULL),
                     PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("list", "t", "--all", "--limit=2", NULL), PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("rbac", "audit", "--allowed", "false", "--since", "2026-12-07T00:00:00Z",
                         "--limit", "3", NULL),
                     PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("cleanup", NULL), PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("ready", NULL), PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("health", NULL), PINSCTL_EXIT_UNREACHABLE);
    assert_int_equal(run("status", "--addr", dead_addr, NULL), PINSCTL_EXIT_UNREACHABLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_version_exit_0),
        cmocka_unit_test(test_usage_errors_exit_2),
        cmocka_unit_test(test_bad_json_values_exit_2_before_any_call),
        cmocka_unit_test(test_calls_past_their_arguments_meet_the_dead_port),
    };
    return cmocka_run_group_tests_name("pinsctl_cli", tests, group_setup, NULL);
}
