/* tests/unit/rpc/test_watch.c: rpc/watch.c: watch slots per principal and per process, the
 * pending bound handed to the transport, the heartbeat timer armed only while streams are open.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "fake_call.h"
#include "scrape.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "rpc/rpc_int.h"
#include "rpc/watch.h"

#define WATCH "/memorypins.v1.MemoryPins/WatchPins"

static const char *const machine[] = {"x-machine-token", "watch-test-token", NULL};

static int setup(void **state)
{
    fake_env *env = fake_env_new();
    pins_config *cfg = fake_env_config(env);
    cfg->machine_secret_token = strdup("watch-test-token");
    assert_non_null(cfg->machine_secret_token);
    *state = env;
    return 0;
}

static int teardown(void **state)
{
    fake_env_free(*state);
    return 0;
}

static fake_call *watch(fake_env *env, const char *const *headers)
{
    Memorypins__V1__WatchPinsRequest w = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    w.tenant_id = "tw";
    return fake_call_run(env, WATCH, &w.base, headers);
}

static void expect_refused(fake_call *fc, const char *why)
{
    assert_true(fake_call_finished(fc));
    assert_int_equal(fake_call_err(fc), PINS_ERESOURCE_EXHAUSTED);
    assert_non_null(strstr(fake_call_message(fc), why));
    fake_call_free(fc);
}

static void test_watch_refuses_a_principal_past_its_share(void **state)
{
    fake_env *env = *state;
    fake_env_config(env)->watch_max_per_principal = 2;
    fake_call *a1 = watch(env, NULL);
    fake_call *a2 = watch(env, NULL);
    assert_false(fake_call_finished(a1));
    assert_false(fake_call_finished(a2));
    expect_refused(watch(env, NULL), "too many watch streams are open for this caller (at most 2)");
    /* Another principal has its own share. */
    fake_call *m1 = watch(env, machine);
    assert_false(fake_call_finished(m1));
    /* A client that leaves gives its slot back at once. */
    fake_call_detach(a1);
    fake_call *a3 = watch(env, NULL);
    assert_false(fake_call_finished(a3));
    fake_call_free(a1);
    fake_call_free(a2);
    fake_call_free(a3);
    fake_call_free(m1);
    assert_false(rpc_watch_active());
}

static void test_watch_refuses_past_the_process_total(void **state)
{
    fake_env *env = *state;
    fake_env_config(env)->watch_max = 2;
    double refused = scrape_value("watch_streams_refused_total", -1);
    assert_true(refused >= 0);
    assert_true(scrape_value("watch_streams_active", -1) == 0);
    fake_call *a1 = watch(env, NULL);
    fake_call *m1 = watch(env, machine);
    assert_false(fake_call_finished(a1));
    assert_false(fake_call_finished(m1));
    assert_true(scrape_value("watch_streams_active", -1) == 2);
    expect_refused(watch(env, machine), "too many watch streams are open (at most 2)");
    assert_true(scrape_value("watch_streams_refused_total", -1) == refused + 1);
    assert_true(scrape_value("watch_streams_active", -1) == 2);
    fake_call_free(a1);
    fake_call_free(m1);
    assert_false(rpc_watch_active());
    assert_true(scrape_value("watch_streams_active", -1) == 0);
}

static void test_watch_gives_the_transport_its_pending_bound(void **state)
{
    fake_env *env = *state;
    fake_env_config(env)->watch_pending_bytes = 65536;
    fake_call *w = watch(env, NULL);
    assert_int_equal(fake_call_rpc(w)->pending_max, 65536);
    fake_call_free(w);
}

static void test_watch_arms_the_heartbeat_only_while_streams_are_open(void **state)
{
    fake_env *env = *state;
    struct event_base *base = fake_env_base(env);
    assert_int_equal(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 0);
    fake_call *w = watch(env, NULL);
    assert_int_equal(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 1);
    fake_call_detach(w);
    assert_int_equal(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 0);
    fake_call_free(w);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_watch_refuses_a_principal_past_its_share),
        T(test_watch_refuses_past_the_process_total),
        T(test_watch_gives_the_transport_its_pending_bound),
        T(test_watch_arms_the_heartbeat_only_while_streams_are_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
