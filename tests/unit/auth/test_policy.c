/* tests/unit/auth/test_policy.c: the RBAC policy object (auth/policy.c): the built-in matrix,
 * policy files, the hash, reloads that fail, and the atomic swap under concurrent readers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth_int.h"
#include "common/error.h"
#include "observability/metrics.h"
#include "api_matrix.h"
#include "scrape.h"

/* Everything api_matrix.h names. */
static const char *const all_roles[] = {"infra", "admin", "machine", "dev", "readonly"};
static const char *const all_resources[] = {"memory_pin", "prometheus", "rbac"};
static const char *const all_actions[] = {"read", "write", "delete", "admin", "reload", "query"};

static char tmpdir[64];

static int group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pins-auth-policy-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* Writes text to a file of the test directory; returns its path (static buffer per name). */
static const char *write_file(const char *name, const char *text)
{
    static char path[8][128];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 128, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    return p;
}

static auth__policy *parse_ok(const char *text)
{
    auth__policy *p = NULL;
    char err[256] = "";
    int rv = auth__policy_parse(text, strlen(text), true, &p, err, sizeof(err));
    if (rv != 0)
        fail_msg("policy refused: %s", err);
    return p;
}

static void test_default_matrix_is_api_md(void **state)
{
    auth__policy *p = NULL;
    assert_int_equal(auth__policy_default(&p), 0);
    assert_string_equal(p->version, "default");
    assert_false(p->from_file);
    assert_false(p->log_allowed);
    assert_int_equal(p->nroles, 5);
    /* Sorted. */
    assert_string_equal(p->roles[0].name, "admin");
    assert_string_equal(p->roles[4].name, "readonly");
    assert_int_equal(p->nresources, 3);
    assert_string_equal(p->resources[0], "memory_pin");
    assert_string_equal(p->resources[2], "rbac");
    int checked = 0;
    for (size_t r = 0; r < 5; r++)
        for (size_t s = 0; s < 3; s++)
            for (size_t a = 0; a < 6; a++) {
                const char *role = all_roles[r];
                bool got = auth__policy_allows(p, &role, 1, all_resources[s], all_actions[a]);
                bool want = api_allows(role, all_resources[s], all_actions[a]);
                if (got != want)
                    fail_msg("%s %s:%s: got %d want %d", role, all_resources[s], all_actions[a],
                             got, want);
                checked++;
            }
    assert_int_equal(checked, 90);
    /* Unknown roles and several roles. */
    const char *unknown[] = {"root"};
    assert_false(auth__policy_allows(p, unknown, 1, "memory_pin", "read"));
    const char *two[] = {"root", "dev"};
    assert_true(auth__policy_allows(p, two, 2, "memory_pin", "read"));
    assert_false(auth__policy_allows(p, two, 2, "memory_pin", "write"));
    assert_false(auth__policy_allows(p, two, 0, "memory_pin", "read"));
    assert_string_equal(p->matrix_json,
                        "{\"admin\":{\"memory_pin\":[\"read\",\"write\",\"delete\",\"admin\"],"
                        "\"prometheus\":[\"reload\",\"query\"],\"rbac\":[\"read\",\"reload\"]},"
                        "\"dev\":{\"memory_pin\":[\"read\"],\"prometheus\":[\"query\"],"
                        "\"rbac\":[\"read\"]},"
                        "\"infra\":{\"memory_pin\":[\"read\",\"write\",\"delete\",\"admin\"],"
                        "\"prometheus\":[\"reload\",\"query\"],\"rbac\":[\"read\",\"reload\"]},"
                        "\"machine\":{\"memory_pin\":[\"read\",\"write\"],"
                        "\"prometheus\":[\"reload\"],\"rbac\":[\"read\"]},"
                        "\"readonly\":{\"memory_pin\":[\"read\"],\"prometheus\":[\"query\"],"
                        "\"rbac\":[\"read\"]}}");
    auth__policy_free(p);
}

static const char m7_file[] = "{\n  \"version\": \"2.1.0\",\n  \"description\": \"M7 policies\",\n"
                              "  \"matrix\": {\n    \"ops\": {\"memory_pin\": [\"read\", "
                              "\"admin\"], \"billing\": [\"read\"]},\n"
                              "    \"agent\": {\"memory_pin\": [\"read\", \"write\"]}\n  },\n"
                              "  \"audit\": {\"log_allowed\": true, \"retention_days\": 30}\n}\n";

static void test_file_loads_m7_format_with_extra_keys(void **state)
{
    const char *path = write_file("m7.json", m7_file);
    auth__policy *p = NULL;
    const char *status = NULL;
    char err[256] = "";
    assert_int_equal(auth__policy_load_file(path, &p, &status, err, sizeof(err)), 0);
    assert_string_equal(status, "success");
    assert_string_equal(p->version, "2.1.0");
    assert_true(p->from_file);
    assert_true(p->log_allowed);
    assert_int_equal(p->nroles, 2);
    assert_string_equal(p->roles[0].name, "agent");
    assert_int_equal(p->nresources, 2);
    assert_string_equal(p->resources[0], "billing");
    const char *ops[] = {"ops"};
    assert_true(auth__policy_allows(p, ops, 1, "memory_pin", "admin"));
    assert_false(auth__policy_allows(p, ops, 1, "memory_pin", "write"));
    assert_true(auth__policy_allows(p, ops, 1, "billing", "read"));
    assert_int_equal(strlen(p->hash), 16);
    auth__policy_free(p);
}

static void test_bad_files_are_refused_with_a_reason(void **state)
{
    static const struct {
        const char *text, *status, *why;
    } cases[] = {
        {"{\"version\":\"1\",\"matrix\":{}", "parse_error", "not valid JSON"},
        {"[]", "parse_error", "top level"},
        {"{\"matrix\":{}}", "parse_error", "version"},
        {"{\"version\":\"\",\"matrix\":{}}", "parse_error", "version"},
        {"{\"version\":1,\"matrix\":{}}", "parse_error", "version"},
        {"{\"version\":\"1\"}", "parse_error", "matrix: missing"},
        {"{\"version\":\"1\",\"matrix\":[]}", "parse_error", "matrix"},
        {"{\"version\":\"1\",\"matrix\":{\"dev\":[\"read\"]}}", "parse_error", "matrix.dev"},
        {"{\"version\":\"1\",\"matrix\":{\"dev\":{\"memory_pin\":\"read\"}}}", "parse_error",
         "matrix.dev.memory_pin"},
        {"{\"version\":\"1\",\"matrix\":{\"dev\":{\"memory_pin\":[\"read\",3]}}}", "parse_error",
         "matrix.dev.memory_pin[1]"},
        {"{\"version\":\"1\",\"matrix\":{\"dev\":{\"memory_pin\":[\"\"]}}}", "parse_error",
         "matrix.dev.memory_pin[0]"},
        {"{\"version\":\"1\",\"matrix\":{\"\":{}}}", "parse_error", "role name"},
        {"{\"version\":\"1\",\"matrix\":{},\"audit\":[]}", "parse_error", "audit"},
        {"{\"version\":\"1\",\"matrix\":{},\"audit\":{\"log_allowed\":\"yes\"}}", "parse_error",
         "audit.log_allowed"},
        {"{\"version\":\"1\",\"version\":\"2\",\"matrix\":{}}", "parse_error", "duplicate"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *path = write_file("bad.json", cases[i].text);
        auth__policy *p = (auth__policy *)&cases; /* must stay untouched */
        const char *status = NULL;
        char err[256] = "";
        assert_int_equal(auth__policy_load_file(path, &p, &status, err, sizeof(err)),
                         PINS_EINVALID_ARGUMENT);
        assert_ptr_equal(p, &cases);
        assert_string_equal(status, cases[i].status);
        if (strstr(err, cases[i].why) == NULL)
            fail_msg("case %zu: reason \"%s\" lacks \"%s\"", i, err, cases[i].why);
        assert_non_null(strstr(err, path)); /* says which file */
    }
    auth__policy *p = NULL;
    const char *status = NULL;
    char err[256] = "";
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/missing.json", tmpdir);
    assert_int_equal(auth__policy_load_file(missing, &p, &status, err, sizeof(err)),
                     PINS_EINVALID_ARGUMENT);
    assert_string_equal(status, "error");
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(auth__policy_load_file(tmpdir, &p, &status, err, sizeof(err)),
                     PINS_EINVALID_ARGUMENT);
    assert_string_equal(status, "error");
}

static void test_hash_is_canonical_and_content_sensitive(void **state)
{
    auth__policy *a = parse_ok(
        "{\"version\":\"v1\",\"matrix\":{\"r\":{\"x\":[\"a\"]}},\"audit\":{\"log_allowed\":"
        "true}}");
    auth__policy *b = parse_ok("{ \"audit\" : { \"log_allowed\" : true },\n\t\"matrix\": "
                               "{\"r\": {\"x\": [\"a\"]}}, \"version\": \"v1\" }");
    auth__policy *c =
        parse_ok("{\"version\":\"v1\",\"matrix\":{\"r\":{\"x\":[\"a\",\"b\"]}},\"audit\":{"
                 "\"log_allowed\":true}}");
    auth__policy *d = parse_ok(
        "{\"version\":\"v1\",\"matrix\":{\"r\":{\"x\":[\"a\"]}},\"audit\":{\"log_allowed\":"
        "true},\"note\":\"x\"}");
    /* The canonical text, written by hand: keys sorted, no whitespace. */
    static const char canon[] =
        "{\"audit\":{\"log_allowed\":true},\"matrix\":{\"r\":{\"x\":[\"a\"]}},\"version\":\"v1\"}";
    char want[17];
    assert_int_equal(auth__sha256_hex16(canon, strlen(canon), want), 0);
    assert_string_equal(a->hash, want);
    assert_string_equal(b->hash, want);
    assert_string_not_equal(c->hash, want);
    assert_string_not_equal(d->hash, want); /* extra keys are part of the file */
    for (int i = 0; i < 16; i++)
        assert_non_null(strchr("0123456789abcdef", a->hash[i]));
    auth__policy_free(a);
    auth__policy_free(b);
    auth__policy_free(c);
    auth__policy_free(d);
}

static void test_reload_keeps_previous_policy_on_a_bad_file(void **state)
{
    pins_config cfg = {0};
    auth_reload_result r;
    char err[256];
    cfg.rbac_policy_file = (char *)write_file("good.json", m7_file);
    assert_int_equal(auth_init(&cfg, err, sizeof(err)), 0);
    auth_policy_view v;
    pins_arena *a = pins_arena_new(0);
    assert_int_equal(auth_policy_view_get(a, &v), 0);
    assert_string_equal(v.version, "2.1.0");
    assert_true(v.from_file);
    assert_int_equal(v.nroles, 2);
    char good_hash[17];
    memcpy(good_hash, v.hash, 17);
    double parse_errors = scrape_value("rbac_policy_loads_total{status=\"parse_error\"}", -1);
    double errors = scrape_value("rbac_policy_loads_total{status=\"error\"}", -1);
    assert_true(parse_errors >= 0);

    cfg.rbac_policy_file = (char *)write_file("broken.json", "{\"version\":\"3\",\"matrix\":[");
    assert_int_equal(auth_policy_reload(&cfg, &r), PINS_EINVALID_ARGUMENT);
    assert_false(r.success);
    assert_string_equal(r.previous_hash, good_hash);
    assert_string_equal(r.new_hash, good_hash);
    assert_non_null(strstr(r.message, "previous kept"));
    assert_non_null(strstr(r.message, "not valid JSON"));
    assert_true(r.at_us > 0);
    assert_int_equal(auth_policy_view_get(a, &v), 0);
    assert_string_equal(v.version, "2.1.0");
    assert_string_equal(v.hash, good_hash);
    assert_true(scrape_value("rbac_policy_loads_total{status=\"parse_error\"}", -1) ==
                parse_errors + 1);

    char missing[128];
    snprintf(missing, sizeof(missing), "%s/missing.json", tmpdir);
    cfg.rbac_policy_file = missing;
    assert_int_equal(auth_policy_reload(&cfg, &r), PINS_EINVALID_ARGUMENT);
    assert_false(r.success);
    assert_true(scrape_value("rbac_policy_loads_total{status=\"error\"}", -1) == errors + 1);

    /* No file: back to the built-in matrix; the gauge follows. */
    cfg.rbac_policy_file = NULL;
    assert_int_equal(auth_policy_reload(&cfg, &r), 0);
    assert_true(r.success);
    assert_string_equal(r.previous_hash, good_hash);
    assert_string_not_equal(r.new_hash, good_hash);
    assert_int_equal(auth_policy_view_get(a, &v), 0);
    assert_string_equal(v.version, "default");
    assert_false(v.from_file);
    char series[128];
    snprintf(series, sizeof(series), "rbac_policy_version_info{version=\"default\",hash=\"%s\"}",
             r.new_hash);
    assert_true(scrape_value(series, -1) == 1);
    snprintf(series, sizeof(series), "rbac_policy_version_info{version=\"2.1.0\",hash=\"%s\"}",
             good_hash);
    assert_true(scrape_value(series, -1) == 0);
    pins_arena_free(a);
}

/* ---- the swap under readers -------------------------------------------------------------------
 */

static const char policy_a[] =
    "{\"version\":\"A\",\"matrix\":{\"ra\":{\"res\":[\"act\"]}},\"audit\":{\"log_allowed\":true}}";
static const char policy_b[] =
    "{\"version\":\"B\",\"matrix\":{\"rb\":{\"res\":[\"act\"]},\"rc\":{\"x\":[\"y\"]}}}";

typedef struct reader_ctx {
    atomic_bool stop;
    atomic_long reads;
    atomic_long bad;
} reader_ctx;

/* Reads whatever policy is in force and checks that it is whole. */
static void *reader(void *arg)
{
    reader_ctx *c = arg;
    while (!atomic_load(&c->stop)) {
        const auth__policy *p = auth__policy_acquire();
        const auth__policy *nested = auth__policy_acquire();
        bool ok = p != NULL && nested == p;
        if (ok && strcmp(p->version, "A") == 0) {
            const char *r[] = {"ra"};
            ok = p->nroles == 1 && p->log_allowed && auth__policy_allows(p, r, 1, "res", "act") &&
                 strstr(p->matrix_json, "\"ra\"") != NULL;
        } else if (ok && strcmp(p->version, "B") == 0) {
            const char *r[] = {"rb"};
            ok = p->nroles == 2 && !p->log_allowed && auth__policy_allows(p, r, 1, "res", "act") &&
                 strcmp(p->resources[1], "x") == 0;
        } else if (ok) {
            ok = strcmp(p->version, "default") == 0;
        }
        auth__policy_release(nested);
        auth__policy_release(p);
        if (!ok)
            atomic_fetch_add(&c->bad, 1);
        atomic_fetch_add(&c->reads, 1);
    }
    return NULL;
}

static void test_swap_while_other_threads_read(void **state)
{
    reader_ctx c = {0};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, reader, &c), 0);
    int swaps = 0;
    for (int i = 0; i < 2000; i++) {
        const char *text = i % 2 ? policy_a : policy_b;
        auth__policy *p = parse_ok(text);
        char prev[17];
        auth__policy_install_take(p, prev);
        assert_int_equal(strlen(prev), 16);
        swaps++;
        if (i % 256 == 0)
            usleep(100); /* let readers overlap several swaps */
    }
    atomic_store(&c.stop, true);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(swaps, 2000);
    assert_true(atomic_load(&c.reads) > 0);
    assert_int_equal(atomic_load(&c.bad), 0);
    /* Readers that exited gave their slots back: a new thread reuses one and still reads. */
    c.stop = false;
    c.reads = 0;
    assert_int_equal(pthread_create(&t[0], NULL, reader, &c), 0);
    while (atomic_load(&c.reads) < 10)
        usleep(100);
    atomic_store(&c.stop, true);
    assert_int_equal(pthread_join(t[0], NULL), 0);
    assert_int_equal(atomic_load(&c.bad), 0);
    /* Leave the built-in policy for whoever runs next. */
    auth__policy *d = NULL;
    assert_int_equal(auth__policy_default(&d), 0);
    char prev[17];
    auth__policy_install_take(d, prev);
}

static void test_shutdown_frees_and_reinitialises(void **state)
{
    auth_shutdown();
    metrics_shutdown();
    const auth__policy *p = auth__policy_acquire(); /* installs the built-in matrix again */
    assert_non_null(p);
    assert_string_equal(p->version, "default");
    auth__policy_release(p);
    assert_true(scrape_value("rbac_policy_loads_total{status=\"success\"}", -1) == 1);
    auth_shutdown();
    metrics_shutdown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_matrix_is_api_md),
        cmocka_unit_test(test_file_loads_m7_format_with_extra_keys),
        cmocka_unit_test(test_bad_files_are_refused_with_a_reason),
        cmocka_unit_test(test_hash_is_canonical_and_content_sensitive),
        cmocka_unit_test(test_reload_keeps_previous_policy_on_a_bad_file),
        cmocka_unit_test(test_swap_while_other_threads_read),
        cmocka_unit_test(test_shutdown_frees_and_reinitialises),
    };
    return cmocka_run_group_tests_name("auth_policy", tests, group_setup, group_teardown);
}
