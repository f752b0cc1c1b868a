/* tests/unit/rpc/test_dispatch.c: the method table (rpc/methods.c), the dispatcher
 * (rpc/dispatch.c) and the call object (rpc/call.c), driven through the fake transport. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/ratelimit.h"
#include "common/error.h"
#include "fake_call.h"
#include "scrape.h"
#include "grpc/health/v1/health.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "rpc/rpc_int.h"
#include "common/timeutil.h"

#define MEMORY_PINS_SERVICE "memorypins.v1.MemoryPins"
#define UPSERT_PATH         "/memorypins.v1.MemoryPins/UpsertPin"
#define CHECK_PATH          "/grpc.health.v1.Health/Check"
#define WATCH_PATH          "/grpc.health.v1.Health/Watch"

typedef Grpc__Health__V1__HealthCheckResponse HealthResponse;

/* What the test handlers saw. */
static struct {
    int runs;
    int cancels;
    bool finish_on_cancel;
    rpc_call *held; /* a call the handler kept without finishing */
    int tenant_reads;
    bool tenant_null;
    bool tenant_borrowed; /* the pointer is the request's own tenant_id */
    char tenant[64];
} seen;

/* ---- test handlers ----------------------------------------------------------------------------
 */

static void reply_serving(rpc_call *call)
{
    HealthResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    rpc_call_reply(call, &resp.base);
}

static void on_test_cancel(rpc_call *call, void *arg)
{
    assert_ptr_equal(arg, &seen);
    seen.cancels++;
    if (seen.finish_on_cancel)
        rpc_call_finish(call);
}

/* Counts its runs and replies. */
static void count_and_reply(rpc_call *call)
{
    seen.runs++;
    reply_serving(call);
}

/* Keeps the call open with a cancel callback. */
static void hold_with_cancel(rpc_call *call)
{
    seen.runs++;
    seen.held = call;
    rpc_call_on_cancel(call, on_test_cancel, &seen);
}

/* Keeps the call open without a cancel callback. */
static void hold_silently(rpc_call *call)
{
    seen.runs++;
    seen.held = call;
}

static void fail_internal(rpc_call *call)
{
    rpc_call_fail(call, PINS_EINTERNAL, "sqlite: disk I/O error on /var/lib/pins/pins.db");
}

static void fail_store(rpc_call *call)
{
    rpc_call_fail(call, PINS_ESTORE, "could not connect: password authentication failed");
}

static void fail_not_found(rpc_call *call)
{
    rpc_call_fail(call, PINS_ENOT_FOUND, "Pin not found: %s", "k1");
}

static void fail_without_text(rpc_call *call)
{
    rpc_call_fail(call, PINS_ENOT_FOUND, NULL);
}

static void add_metadata_and_reply(rpc_call *call)
{
    assert_int_equal(rpc_call_add_metadata(call, "x-initial", "one", false), 0);
    assert_int_equal(rpc_call_add_metadata(call, "x-trailing", "two", true), 0);
    assert_int_equal(rpc_call_add_metadata(call, "x-initial-2", "three", false), 0);
    reply_serving(call);
}

static void add_static_metadata_and_reply(rpc_call *call)
{
    static const char limit[] = "100";
    char *remaining = pins_arena_strdup(rpc_call_arena(call), "99");
    assert_non_null(remaining);
    const rpc_call_md md[] = {{"x-ratelimit-limit", 17, limit, 3},
                              {"x-ratelimit-remaining", 21, remaining, 2}};
    assert_int_equal(rpc_call_add_metadata(call, "x-copied", "one", true), 0);
    assert_int_equal(rpc_call_add_metadata_static(call, md, 0, true), 0);
    assert_int_equal(rpc_call_add_metadata_static(call, md, 2, true), 0);
    assert_int_equal(rpc_call_add_metadata(call, "retry-after", "7", true), 0);
    /* In order, with lengths; only the values that change from call to call are marked. */
    const rpc_metadata *m = rpc_call_metadata(call);
    static const char *const names[] = {"x-copied", "x-ratelimit-limit", "x-ratelimit-remaining",
                                        "retry-after"};
    static const bool varies[] = {false, false, true, true};
    for (size_t i = 0; i < 4; i++, m = m->next) {
        assert_non_null(m);
        assert_string_equal(m->name, names[i]);
        assert_int_equal(m->namelen, strlen(names[i]));
        assert_int_equal(m->valuelen, strlen(m->value));
        assert_int_equal(m->varies, varies[i]);
    }
    assert_null(m);
    assert_ptr_equal(rpc_call_metadata(call)->next->value, limit); /* not copied */
    reply_serving(call);
}

/* Records the tenant the dispatcher resolved. */
static void note_tenant(rpc_call *call)
{
    const char *t = rpc_call_tenant(call);
    const ProtobufCMessage *req = rpc_call_request(call);
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "tenant_id");
    seen.tenant_reads++;
    seen.tenant_null = t == NULL;
    seen.tenant_borrowed = f != NULL && f->type == PROTOBUF_C_TYPE_STRING &&
                           t == *(const char *const *)((const char *)req + f->offset);
    snprintf(seen.tenant, sizeof(seen.tenant), "%s", t != NULL ? t : "");
    reply_serving(call);
}

#define TEST_ROW(method_name, fn, fl)                                                   \
    {                                                                                   \
        .path = "/test.Test/" method_name, .service = "test.Test", .name = method_name, \
        .input = &grpc__health__v1__health_check_request__descriptor,                   \
        .output = &grpc__health__v1__health_check_response__descriptor, .handler = fn,  \
        .flags = fl,                                                                    \
    }

static const rpc_method count_row = TEST_ROW("Count", count_and_reply, RPC_METHOD_UNGUARDED);
static const rpc_method count_pins_row =
    TEST_ROW("CountPins", count_and_reply, RPC_METHOD_MEMORY_PINS);
static const rpc_method hold_row = TEST_ROW("Hold", hold_with_cancel, RPC_METHOD_SERVER_STREAM);
static const rpc_method silent_row = TEST_ROW("Silent", hold_silently, 0);
static const rpc_method internal_row = TEST_ROW("Internal", fail_internal, 0);
static const rpc_method store_row = TEST_ROW("Store", fail_store, 0);
static const rpc_method not_found_row = TEST_ROW("NotFound", fail_not_found, 0);
static const rpc_method no_text_row = TEST_ROW("NoText", fail_without_text, 0);
static const rpc_method metadata_row = TEST_ROW("Metadata", add_metadata_and_reply, 0);
static const rpc_method static_metadata_row =
    TEST_ROW("StaticMetadata", add_static_metadata_and_reply, 0);

#define TENANT_ROW(method_name, desc, fl)                                               \
    {                                                                                   \
        .path = "/test.Test/" method_name, .service = "test.Test", .name = method_name, \
        .input = &desc, .output = &grpc__health__v1__health_check_response__descriptor, \
        .handler = note_tenant, .flags = RPC_METHOD_UNGUARDED | (fl),                   \
    }

static const rpc_method get_tenant_row =
    TENANT_ROW("GetTenant", memorypins__v1__get_pin_request__descriptor, RPC_METHOD_MEMORY_PINS);
static const rpc_method admin_tenant_row =
    TENANT_ROW("AdminTenant", memorypins__v1__get_pin_request__descriptor, 0);
static const rpc_method all_tenant_row =
    TENANT_ROW("AllTenant", memorypins__v1__get_pin_request__descriptor, RPC_METHOD_ALL_TENANTS);
static const rpc_method cleanup_tenant_row =
    TENANT_ROW("CleanupTenant", memorypins__v1__cleanup_expired_pins_request__descriptor,
               RPC_METHOD_MEMORY_PINS);
static const rpc_method no_tenant_row =
    TENANT_ROW("NoTenant", grpc__health__v1__health_check_request__descriptor, 0);

/* ---- fixture ----------------------------------------------------------------------------------
 */

static int setup(void **state)
{
    memset(&seen, 0, sizeof(seen));
    *state = fake_env_new();
    return 0;
}

static int teardown(void **state)
{
    fake_env_free(*state);
    return 0;
}

static fake_call *run_row(fake_env *env, const rpc_method *m, const char *const *headers)
{
    fake_call *fc = fake_call_new_method(env, m, NULL, headers);
    assert_non_null(fc);
    fake_call_dispatch(fc);
    return fc;
}

static Memorypins__V1__UpsertPinRequest *upsert_request(void)
{
    static Google__Protobuf__Value v = GOOGLE__PROTOBUF__VALUE__INIT;
    static Google__Protobuf__Struct__FieldsEntry e = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
    static Google__Protobuf__Struct__FieldsEntry *fields[] = {&e};
    static Google__Protobuf__Struct value = GOOGLE__PROTOBUF__STRUCT__INIT;
    static Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    v.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
    v.bool_value = true;
    e.key = "a";
    e.value = &v;
    value.n_fields = 1;
    value.fields = fields;
    req.key = "k1";
    req.value = &value;
    return &req;
}

/* Runs row with request and returns what the handler saw as the tenant (NULL for none). */
static const char *tenant_of(fake_env *env, const rpc_method *row, const ProtobufCMessage *req)
{
    fake_call *fc = fake_call_new_method(env, row, req, NULL);
    assert_non_null(fc);
    int before = seen.tenant_reads;
    fake_call_dispatch(fc);
    assert_int_equal(fake_call_err(fc), 0);
    assert_int_equal(seen.tenant_reads, before + 1);
    fake_call_free(fc);
    return seen.tenant_null ? NULL : seen.tenant;
}

/* ---- method table -----------------------------------------------------------------------------
 */

static void test_method_find_returns_null_for_unknown_paths(void **state)
{
    static const char *const unknown[] = {
        "",
        "/",
        "/memorypins.v1.MemoryPins/Nope",
        "/memorypins.v1.MemoryPins/GetPi",
        "/memorypins.v1.MemoryPins/GetPinX",
        "/memorypins.v1.MemoryPins/getpin",
        "memorypins.v1.MemoryPins/GetPin",
        "/memorypins.v1.Other/GetPin",
        "/grpc.health.v1.Health/",
    };
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
        assert_null(rpc_method_find(unknown[i], strlen(unknown[i])));
    assert_null(fake_call_new(*state, "/memorypins.v1.MemoryPins/Nope", NULL, NULL));
}

static void test_method_find_compares_only_len_bytes(void **state)
{
    const char *p = "/memorypins.v1.MemoryPins/GetPinAndMore";
    const rpc_method *m = rpc_method_find(p, strlen("/memorypins.v1.MemoryPins/GetPin"));
    assert_non_null(m);
    assert_string_equal(m->name, "GetPin");
}

static void test_method_table_rows_match_their_paths_and_descriptors(void **state)
{
    size_t n = 0;
    const rpc_method *t = rpc_method_table(&n);
    assert_true(n >= 17);
    for (size_t i = 0; i < n; i++) {
        const rpc_method *m = &t[i];
        char path[256];
        snprintf(path, sizeof(path), "/%s/%s", m->service, m->name);
        assert_string_equal(m->path, path);
        assert_ptr_equal(rpc_method_find(m->path, strlen(m->path)), m);
        assert_non_null(m->handler);
        assert_non_null(m->input);
        assert_non_null(m->output);
        assert_int_equal(m->input->magic, PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
        assert_int_equal(m->output->magic, PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
        /* The request type is named after the method (GetPin -> GetPinRequest), except in the
         * shared health and reflection services. */
        if (strcmp(m->service, MEMORY_PINS_SERVICE) == 0) {
            char in[128], out[128];
            snprintf(in, sizeof(in), "%sRequest", m->name);
            snprintf(out, sizeof(out), "%sResponse", m->name);
            assert_string_equal(m->input->short_name, in);
            assert_string_equal(m->output->short_name, out);
            assert_true(m->flags & RPC_METHOD_MEMORY_PINS);
            assert_non_null(m->resource);
            assert_non_null(m->action);
        }
        if (strncmp(m->service, "grpc.", 5) == 0) {
            assert_true(m->flags & RPC_METHOD_UNGUARDED);
            assert_false(m->flags & RPC_METHOD_MEMORY_PINS);
        }
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(t[j].path, m->path);
    }
    const rpc_method *watch = rpc_method_find(WATCH_PATH, strlen(WATCH_PATH));
    assert_non_null(watch);
    assert_true(watch->flags & RPC_METHOD_SERVER_STREAM);
    assert_ptr_equal(watch->input, &grpc__health__v1__health_check_request__descriptor);
    assert_ptr_equal(watch->output, &grpc__health__v1__health_check_response__descriptor);
}

/* ---- deadline ---------------------------------------------------------------------------------
 */

static void test_dispatch_rejects_expired_deadline_before_handler(void **state)
{
    fake_env *env = *state;
    char *before = fake_env_snapshot(env, "global");
    fake_call *fc = fake_call_new(env, UPSERT_PATH, &upsert_request()->base, NULL);
    assert_non_null(fc);
    fake_call_set_deadline_ns(fc, pins_time_mono_ns() - 1);
    fake_call_dispatch(fc);
    assert_true(fake_call_finished(fc));
    assert_int_equal(fake_call_err(fc), PINS_EDEADLINE_EXCEEDED);
    assert_int_equal(fake_call_grpc_code(fc), 4);
    assert_string_equal(fake_call_message(fc), "deadline exceeded before the call started");
    assert_int_equal(fake_call_nsent(fc), 0);
    assert_null(fake_call_rpc(fc)); /* the transport let go: the call is gone */
    char *after = fake_env_snapshot(env, "global");
    assert_string_equal(after, before);
    assert_int_equal(fake_env_pin_count(env, "global"), 0);
    free(before);
    free(after);
    fake_call_free(fc);

    /* The handler never ran. */
    fc = fake_call_new_method(env, &count_row, NULL, NULL);
    fake_call_set_deadline_ns(fc, pins_time_mono_ns() - 1);
    fake_call_dispatch(fc);
    assert_int_equal(seen.runs, 0);
    assert_int_equal(fake_call_err(fc), PINS_EDEADLINE_EXCEEDED);
    fake_call_free(fc);
}

static void test_dispatch_rejects_zero_grpc_timeout_before_handler(void **state)
{
    static const char *const headers[] = {"grpc-timeout", "0n", NULL};
    fake_call *fc = run_row(*state, &count_row, headers);
    assert_int_equal(seen.runs, 0);
    assert_int_equal(fake_call_grpc_code(fc), 4);
    fake_call_free(fc);
}

static void test_dispatch_runs_handler_within_deadline_without_leaving_a_timer(void **state)
{
    fake_env *env = *state;
    static const char *const headers[] = {"grpc-timeout", "10S", NULL};
    fake_call *fc = run_row(env, &count_row, headers);
    assert_int_equal(seen.runs, 1);
    assert_int_equal(fake_call_err(fc), 0);
    assert_int_equal(fake_call_nsent(fc), 1);
    assert_null(fake_call_message(fc));
    /* A call that finished inside its handler needs no deadline timer. */
    assert_int_equal(event_base_get_num_events(fake_env_base(env), EVENT_BASE_COUNT_ADDED), 0);
    fake_call_free(fc);
}

static void test_dispatch_expires_a_handler_that_outlives_its_deadline(void **state)
{
    fake_env *env = *state;
    static const char *const headers[] = {"grpc-timeout", "1S",
                                          NULL}; /* past dispatch even on a loaded machine */
    fake_call *fc = fake_call_run(env, WATCH_PATH, NULL, headers);
    /* Watch sent the current status and stays open. */
    assert_false(fake_call_finished(fc));
    assert_int_equal(fake_call_nsent(fc), 1);
    const HealthResponse *r = (const HealthResponse *)fake_call_response(fc);
    assert_int_equal(r->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    assert_false(pins_list_is_empty(&fake_env_worker(env)->health_watches));

    assert_true(fake_env_run_until_finished(env, fc, 10000));
    assert_true(fake_call_finished(fc));
    assert_int_equal(fake_call_finish_count(fc), 1);
    /* the stream left the watch list */
    assert_true(pins_list_is_empty(&fake_env_worker(env)->health_watches));
    assert_null(fake_call_rpc(fc));
    /* What the client sees: the deadline, not an OK from the handler's cleanup. */
    assert_int_equal(fake_call_err(fc), PINS_EDEADLINE_EXCEEDED);
    assert_int_equal(fake_call_grpc_code(fc), 4);
    fake_call_free(fc);
}

static void test_dispatch_expires_a_call_whose_cancel_callback_finishes_it(void **state)
{
    fake_env *env = *state;
    static const char *const headers[] = {"grpc-timeout", "1S",
                                          NULL}; /* past dispatch even on a loaded machine */
    seen.finish_on_cancel = true;
    fake_call *fc = run_row(env, &hold_row, headers);
    assert_false(fake_call_finished(fc));
    assert_true(fake_env_run_until_finished(env, fc, 10000));
    assert_int_equal(seen.cancels, 1);
    assert_int_equal(fake_call_finish_count(fc), 1);
    assert_int_equal(fake_call_err(fc), PINS_EDEADLINE_EXCEEDED);
    fake_call_free(fc);
}

static void test_dispatch_drops_a_reply_sent_after_the_deadline_fired(void **state)
{
    fake_env *env = *state;
    static const char *const headers[] = {"grpc-timeout", "1S",
                                          NULL}; /* past dispatch even on a loaded machine */
    fake_env_recycle_arenas(env, true);
    fake_call *fc = run_row(env, &silent_row, headers);
    assert_false(fake_call_finished(fc));
    assert_true(fake_env_run_until_finished(env, fc, 10000));
    assert_true(fake_call_finished(fc));
    assert_int_equal(fake_call_err(fc), PINS_EDEADLINE_EXCEEDED);
    assert_string_equal(fake_call_message(fc), "deadline exceeded before the call completed");
    assert_null(fake_call_rpc(fc)); /* the transport let go; the handler still holds the call */
    assert_true(rpc_call_cancelled(seen.held));

    size_t pooled = fake_env_pooled_arenas(env);
    reply_serving(seen.held); /* the handler finishes late: dropped */
    assert_int_equal(fake_call_nsent(fc), 0);
    assert_int_equal(fake_call_finish_count(fc), 1);
    assert_int_equal(fake_env_pooled_arenas(env), pooled + 1); /* and the call is gone */
    fake_call_free(fc);
}

/* ---- feature flag -----------------------------------------------------------------------------
 */

static void test_dispatch_answers_disabled_for_every_memory_pins_method(void **state)
{
    fake_env *env = *state;
    fake_env_config(env)->memory_pins_enabled = false;
    char *before = fake_env_snapshot(env, "global");
    size_t n = 0, checked = 0;
    const rpc_method *t = rpc_method_table(&n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i].service, MEMORY_PINS_SERVICE) != 0)
            continue;
        const ProtobufCMessage *req =
            strcmp(t[i].name, "UpsertPin") == 0 ? &upsert_request()->base : NULL;
        fake_call *fc = fake_call_run(env, t[i].path, req, NULL);
        assert_true(fake_call_finished(fc));
        assert_int_equal(fake_call_err(fc), PINS_EDISABLED);
        assert_int_equal(fake_call_grpc_code(fc), 14);
        assert_string_equal(fake_call_message(fc), "Memory pins feature is disabled");
        assert_int_equal(fake_call_nsent(fc), 0);
        fake_call_free(fc);
        checked++;
    }
    assert_int_equal(checked, 6);
    char *after = fake_env_snapshot(env, "global");
    assert_string_equal(after, before);
    free(before);
    free(after);

    /* The flag is checked before the handler of any row marked MEMORY_PINS. */
    fake_call *fc = run_row(env, &count_pins_row, NULL);
    assert_int_equal(seen.runs, 0);
    assert_int_equal(fake_call_err(fc), PINS_EDISABLED);
    fake_call_free(fc);
}

static void test_dispatch_keeps_health_served_when_memory_pins_are_disabled(void **state)
{
    fake_env *env = *state;
    fake_env_config(env)->memory_pins_enabled = false;
    fake_call *fc = fake_call_run(env, CHECK_PATH, NULL, NULL);
    assert_int_equal(fake_call_err(fc), 0);
    assert_int_equal(fake_call_nsent(fc), 1);
    const HealthResponse *r = (const HealthResponse *)fake_call_response(fc);
    assert_int_equal(r->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    fake_call_free(fc);

    fc = run_row(env, &count_row, NULL);
    assert_int_equal(seen.runs, 1);
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
}

static void test_dispatch_serves_memory_pins_when_enabled(void **state)
{
    fake_env *env = *state;
    assert_true(fake_env_config(env)->memory_pins_enabled); /* the default */
    fake_call *fc = fake_call_run(env, UPSERT_PATH, &upsert_request()->base, NULL);
    assert_int_equal(fake_call_err(fc), 0);
    assert_int_equal(fake_env_pin_count(env, "global"), 1);
    fake_call_free(fc);
}

/* ---- cancellation -----------------------------------------------------------------------------
 */

static void test_call_detach_runs_cancel_once_and_frees_the_call(void **state)
{
    fake_env *env = *state;
    fake_env_recycle_arenas(env, true);
    seen.finish_on_cancel = true;
    fake_call *fc = run_row(env, &hold_row, NULL);
    assert_int_equal(seen.runs, 1);
    assert_false(fake_call_finished(fc));
    size_t pooled = fake_env_pooled_arenas(env);

    fake_call_detach(fc); /* the client went away */
    assert_int_equal(seen.cancels, 1);
    assert_null(fake_call_rpc(fc));
    assert_int_equal(fake_env_pooled_arenas(env), pooled + 1);
    fake_call_detach(fc); /* a second close is a no-op for the fake */
    assert_int_equal(seen.cancels, 1);
    fake_call_free(fc);
}

static void test_call_detach_drops_the_reply_of_the_cancel_callback(void **state)
{
    fake_env *env = *state;
    seen.finish_on_cancel = true;
    fake_call *fc = run_row(env, &hold_row, NULL);
    fake_call_detach(fc);
    assert_int_equal(seen.cancels, 1);
    /* The transport let go: the status the cancel callback produces must not reach it. */
    assert_int_equal(fake_call_finish_during_detach(fc), 0);
    fake_call_free(fc);
}

static void test_call_detach_closes_a_health_watch(void **state)
{
    fake_env *env = *state;
    fake_env_recycle_arenas(env, true);
    fake_call *fc = fake_call_run(env, WATCH_PATH, NULL, NULL);
    assert_false(fake_call_finished(fc));
    assert_false(pins_list_is_empty(&fake_env_worker(env)->health_watches));
    size_t pooled = fake_env_pooled_arenas(env);
    fake_call_detach(fc);
    assert_true(pins_list_is_empty(&fake_env_worker(env)->health_watches));
    assert_int_equal(fake_env_pooled_arenas(env), pooled + 1);
    fake_call_free(fc);
}

static void test_call_cancel_runs_the_callback_once(void **state)
{
    fake_env *env = *state;
    fake_call *fc = run_row(env, &hold_row, NULL);
    rpc_call *call = fake_call_rpc(fc);
    assert_false(rpc_call_cancelled(call));
    rpc_call_cancel(call);
    rpc_call_cancel(call);
    assert_int_equal(seen.cancels, 1);
    assert_true(rpc_call_cancelled(call));
    HealthResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    assert_int_equal(rpc_call_send(call, &resp.base), PINS_ECANCELLED);
    rpc_call_fail(call, PINS_ECANCELLED, NULL); /* the handler finishes */
    assert_int_equal(fake_call_err(fc), PINS_ECANCELLED);
    assert_int_equal(fake_call_nsent(fc), 0);
    fake_call_free(fc);
}

static void test_call_reply_turns_a_failed_send_into_the_status(void **state)
{
    fake_env *env = *state;
    fake_call *fc = fake_call_new(env, CHECK_PATH, NULL, NULL);
    fake_call_set_send_error(fc, PINS_ERESOURCE_EXHAUSTED);
    fake_call_dispatch(fc);
    assert_true(fake_call_finished(fc));
    assert_int_equal(fake_call_err(fc), PINS_ERESOURCE_EXHAUSTED);
    assert_int_equal(fake_call_nsent(fc), 0);
    assert_int_equal(fake_call_finish_count(fc), 1);
    fake_call_free(fc);
}

static void test_call_abandoned_before_dispatch_is_freed(void **state)
{
    fake_env *env = *state;
    fake_env_recycle_arenas(env, true);
    size_t pooled = fake_env_pooled_arenas(env);
    fake_call *fc = fake_call_new_method(env, &count_row, NULL, NULL);
    fake_call_free(fc);
    assert_int_equal(seen.runs, 0);
    assert_int_equal(fake_env_pooled_arenas(env), pooled + 1);
}

/* ---- the error funnel -------------------------------------------------------------------------
 */

static void test_call_fail_internal_gives_generic_message_with_request_id(void **state)
{
    static const char *const headers[] = {"x-request-id", "req-42", NULL};
    fake_call *fc = run_row(*state, &internal_row, headers);
    assert_int_equal(fake_call_grpc_code(fc), 13);
    assert_string_equal(fake_call_message(fc), "internal error (request id req-42)");
    assert_null(strstr(fake_call_message(fc), "sqlite"));
    assert_null(strstr(fake_call_message(fc), "/var/lib"));
    fake_call_free(fc);
}

static void test_call_fail_store_hides_database_text(void **state)
{
    fake_call *fc = run_row(*state, &store_row, NULL);
    assert_int_equal(fake_call_grpc_code(fc), 14);
    const char *msg = fake_call_message(fc);
    assert_null(strstr(msg, "password"));
    assert_non_null(strstr(msg, "store unavailable"));
    assert_non_null(strstr(msg, fake_call_request_id(fc)));
    fake_call_free(fc);
}

static void test_call_fail_keeps_the_text_of_a_domain_error(void **state)
{
    fake_call *fc = run_row(*state, &not_found_row, NULL);
    assert_int_equal(fake_call_grpc_code(fc), 5);
    assert_string_equal(fake_call_message(fc), "Pin not found: k1");
    fake_call_free(fc);

    fc = run_row(*state, &no_text_row, NULL);
    assert_string_equal(fake_call_message(fc), "not found"); /* the table's message */
    fake_call_free(fc);
}

/* ---- request id and metadata ------------------------------------------------------------------
 */

static bool is_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static void test_call_echoes_the_request_id_the_client_sent(void **state)
{
    static const char *const headers[] = {"x-request-id", "abc-123_XYZ", NULL};
    fake_call *fc = run_row(*state, &count_row, headers);
    assert_string_equal(fake_call_request_id(fc), "abc-123_XYZ");
    fake_call_free(fc);
}

static void test_call_generates_a_request_id_when_none_was_sent(void **state)
{
    fake_call *a = run_row(*state, &count_row, NULL);
    fake_call *b = run_row(*state, &count_row, NULL);
    assert_true(is_lower_hex(fake_call_request_id(a), 32));
    assert_true(is_lower_hex(fake_call_request_id(b), 32));
    assert_string_not_equal(fake_call_request_id(a), fake_call_request_id(b));
    fake_call_free(a);
    fake_call_free(b);
}

static void test_call_replaces_an_unprintable_or_long_request_id(void **state)
{
    char long_id[130];
    memset(long_id, 'r', 129);
    long_id[129] = '\0';
    const char *const bad[] = {"has space", "tab\there", "caf\xc3\xa9", "", long_id};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *const headers[] = {"x-request-id", bad[i], NULL};
        fake_call *fc = run_row(*state, &count_row, headers);
        assert_true(is_lower_hex(fake_call_request_id(fc), 32));
        fake_call_free(fc);
    }
    long_id[128] = '\0'; /* 128 characters are kept */
    const char *const headers[] = {"x-request-id", long_id, NULL};
    fake_call *fc = run_row(*state, &count_row, headers);
    assert_string_equal(fake_call_request_id(fc), long_id);
    fake_call_free(fc);
}

static void test_call_metadata_reaches_the_transport(void **state)
{
    fake_call *fc = run_row(*state, &metadata_row, NULL);
    assert_int_equal(fake_call_err(fc), 0);
    assert_int_equal(fake_call_nmetadata(fc), 3);
    assert_string_equal(fake_call_metadata(fc, "x-initial", false), "one");
    assert_string_equal(fake_call_metadata(fc, "x-initial-2", false), "three");
    assert_string_equal(fake_call_metadata(fc, "x-trailing", true), "two");
    assert_null(fake_call_metadata(fc, "x-trailing", false));
    assert_null(fake_call_metadata(fc, "x-initial", true));
    fake_call_free(fc);
}

static void test_call_static_metadata_keeps_order_and_is_not_copied(void **state)
{
    fake_call *fc = run_row(*state, &static_metadata_row, NULL);
    assert_int_equal(fake_call_err(fc), 0);
    assert_int_equal(fake_call_nmetadata(fc), 4);
    assert_string_equal(fake_call_metadata(fc, "x-ratelimit-limit", true), "100");
    assert_string_equal(fake_call_metadata(fc, "x-ratelimit-remaining", true), "99");
    assert_string_equal(fake_call_metadata(fc, "retry-after", true), "7");
    fake_call_free(fc);
}

static void test_dispatch_resolves_the_tenant_once_with_the_default(void **state)
{
    fake_env *env = *state;
    Memorypins__V1__GetPinRequest get = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    get.key = "k";
    /* A MemoryPins request: as sent (borrowed from the decoded request), else the default. */
    get.tenant_id = "acme";
    assert_string_equal(tenant_of(env, &get_tenant_row, &get.base), "acme");
    assert_true(seen.tenant_borrowed);
    get.tenant_id = "";
    assert_string_equal(tenant_of(env, &get_tenant_row, &get.base), "global");
    assert_false(seen.tenant_borrowed);
    assert_string_equal(tenant_of(env, &get_tenant_row, NULL), "global");
    /* Elsewhere an empty tenant is no filter: every tenant. */
    assert_string_equal(tenant_of(env, &admin_tenant_row, &get.base), RPC_TENANT_ALL);
    get.tenant_id = "acme";
    assert_string_equal(tenant_of(env, &admin_tenant_row, &get.base), "acme");
    /* A row that acts on every tenant, whatever its request says. */
    assert_string_equal(tenant_of(env, &all_tenant_row, &get.base), RPC_TENANT_ALL);
    /* A google.protobuf.StringValue: unset is every tenant, empty the default. */
    Memorypins__V1__CleanupExpiredPinsRequest cl =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    assert_string_equal(tenant_of(env, &cleanup_tenant_row, &cl.base), RPC_TENANT_ALL);
    Google__Protobuf__StringValue sv = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    sv.value = "";
    cl.tenant_id = &sv;
    assert_string_equal(tenant_of(env, &cleanup_tenant_row, &cl.base), "global");
    sv.value = "acme";
    assert_string_equal(tenant_of(env, &cleanup_tenant_row, &cl.base), "acme");
    /* No tenant_id field: none. */
    assert_null(tenant_of(env, &no_tenant_row, NULL));
}

/* One GetPin-shaped call of tenant on row; the call stays readable until the caller unrefs it. */
static fake_call *run_tenant(fake_env *env, const rpc_method *row, const char *tenant,
                             rpc_call **pcall)
{
    Memorypins__V1__GetPinRequest get = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    get.key = "k";
    get.tenant_id = (char *)tenant;
    fake_call *fc = fake_call_new_method(env, row, &get.base, NULL);
    assert_non_null(fc);
    *pcall = fake_call_rpc(fc);
    rpc_call_ref(*pcall);
    fake_call_dispatch(fc);
    assert_true(fake_call_finished(fc));
    return fc;
}

static void test_dispatch_adds_the_rate_limiters_verdict_as_headers(void **state)
{
    fake_env *env = *state;
    pins_config *cfg = fake_env_config(env);
    cfg->rate_limit_rpm = 60;
    cfg->rate_limit_burst = 1;
    ratelimit *rl = NULL;
    char err[128];
    assert_int_equal(ratelimit_new(cfg, &rl, err, sizeof(err)), 0);
    ratelimit_worker *w = NULL;
    assert_int_equal(ratelimit_worker_new(rl, fake_env_base(env), &w), 0);
    fake_env_worker(env)->ratelimit = w;

    /* Allowed: the four headers of API.md 7, the numbers typed on the call. */
    rpc_call *call;
    fake_call *fc = run_tenant(env, &get_tenant_row, "acme", &call);
    assert_int_equal(fake_call_err(fc), 0);
    assert_string_equal(fake_call_metadata(fc, "ratelimit-policy", true), "60;w=60;burst=1");
    assert_string_equal(fake_call_metadata(fc, "ratelimit", true),
                        "limit=60, remaining=0, reset=1");
    assert_string_equal(fake_call_metadata(fc, "x-ratelimit-limit", true), "60");
    assert_string_equal(fake_call_metadata(fc, "x-ratelimit-remaining", true), "0");
    assert_null(fake_call_metadata(fc, "retry-after", true));
    assert_true(call->rate.set);
    assert_int_equal(call->rate.limit, 60);
    assert_int_equal(call->rate.retry_after_s, 0);
    rpc_call_unref(call);
    fake_call_free(fc);

    /* Refused by the same tenant's bucket: the dispatcher fails the call and adds Retry-After;
     * the handler never runs. */
    int reads = seen.tenant_reads;
    fc = run_tenant(env, &get_tenant_row, "acme", &call);
    assert_int_equal(fake_call_err(fc), PINS_ERATE_LIMITED);
    assert_string_equal(fake_call_message(fc),
                        "rate limit exceeded: 60 requests per minute, retry after 1 s");
    assert_string_equal(fake_call_metadata(fc, "retry-after", true), "1");
    assert_string_equal(fake_call_metadata(fc, "x-ratelimit-remaining", true), "0");
    assert_int_equal(seen.tenant_reads, reads);
    assert_true(call->rate.set);
    assert_int_equal(call->rate.limit, 60);
    assert_int_equal(call->rate.retry_after_s, 1);
    rpc_call_unref(call);
    fake_call_free(fc);

    /* Another tenant has its own bucket; a request without a tenant counts against the
     * default one, which is still full. */
    fc = run_tenant(env, &get_tenant_row, "other", &call);
    assert_int_equal(fake_call_err(fc), 0);
    rpc_call_unref(call);
    fake_call_free(fc);
    fc = run_tenant(env, &get_tenant_row, "", &call);
    assert_int_equal(fake_call_err(fc), 0);
    rpc_call_unref(call);
    fake_call_free(fc);
    fc = run_tenant(env, &get_tenant_row, "global", &call);
    assert_int_equal(fake_call_err(fc), PINS_ERATE_LIMITED);
    rpc_call_unref(call);
    fake_call_free(fc);

    fake_env_worker(env)->ratelimit = NULL;
    ratelimit_worker_free(w);
    ratelimit_free(rl);
}

static void test_call_headers_are_visible_to_the_handler(void **state)
{
    static const char *const headers[] = {"x-agent-id", "agent-7", "x-other", "v", NULL};
    fake_call *fc = fake_call_new_method(*state, &hold_row, NULL, headers);
    seen.finish_on_cancel = true;
    fake_call_dispatch(fc);
    assert_string_equal(rpc_call_header(seen.held, "x-agent-id"), "agent-7");
    assert_string_equal(rpc_call_header(seen.held, "x-other"), "v");
    assert_null(rpc_call_header(seen.held, "x-missing"));
    assert_ptr_equal(rpc_call_method(seen.held), &hold_row);
    assert_non_null(rpc_call_store(seen.held));
    assert_ptr_equal(rpc_call_config(seen.held), fake_env_config(*state));
    fake_call_free(fc);
    assert_int_equal(seen.cancels, 1);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

/* rpc_requests_total and rpc_request_duration_seconds count a call under the protocol its mapping
 * set, with its status code; every protocol's series exist before any call. A call of no protocol
 * (the fake transport's default) is not counted there. */
static void test_dispatch_counts_calls_by_protocol_and_code(void **state)
{
    fake_env *env = *state;
    static const char *const protocols[] = {"grpc", "grpc_web", "connect", "rest"};
    char series[128];
    for (size_t i = 0; i < 4; i++) {
        snprintf(series, sizeof(series), "rpc_requests_total{protocol=\"%s\",grpc_code=\"OK\"}",
                 protocols[i]);
        assert_true(scrape_value(series, -1) >= 0);
        snprintf(series, sizeof(series),
                 "rpc_requests_total{protocol=\"%s\",grpc_code=\"DEADLINE_EXCEEDED\"}",
                 protocols[i]);
        assert_true(scrape_value(series, -1) >= 0);
        snprintf(series, sizeof(series), "rpc_request_duration_seconds_count{protocol=\"%s\"}",
                 protocols[i]);
        assert_true(scrape_value(series, -1) >= 0);
    }
    const char *rest_ok = "rpc_requests_total{protocol=\"rest\",grpc_code=\"OK\"}";
    const char *web_late =
        "rpc_requests_total{protocol=\"grpc_web\",grpc_code=\"DEADLINE_EXCEEDED\"}";
    const char *rest_n = "rpc_request_duration_seconds_count{protocol=\"rest\"}";
    double ok0 = scrape_value(rest_ok, -1), late0 = scrape_value(web_late, -1);
    double n0 = scrape_value(rest_n, -1), all0 = scrape_family_sum("rpc_requests_total");

    fake_call *fc = fake_call_new(env, CHECK_PATH, NULL, NULL);
    fake_call_rpc(fc)->protocol = RPC_PROTOCOL_REST;
    fake_call_dispatch(fc);
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
    fc = fake_call_new(env, CHECK_PATH, NULL, NULL);
    fake_call_rpc(fc)->protocol = RPC_PROTOCOL_GRPC_WEB;
    fake_call_set_deadline_ns(fc, pins_time_mono_ns() - 1);
    fake_call_dispatch(fc);
    assert_int_equal(fake_call_err(fc), PINS_EDEADLINE_EXCEEDED);
    fake_call_free(fc);
    fc = fake_call_run(env, CHECK_PATH, NULL, NULL); /* RPC_PROTOCOL_NONE */
    fake_call_free(fc);

    assert_true(scrape_value(rest_ok, -1) == ok0 + 1);
    assert_true(scrape_value(web_late, -1) == late0 + 1);
    assert_true(scrape_value(rest_n, -1) == n0 + 1);
    assert_true(scrape_family_sum("rpc_requests_total") == all0 + 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_method_find_returns_null_for_unknown_paths),
        T(test_method_find_compares_only_len_bytes),
        T(test_method_table_rows_match_their_paths_and_descriptors),
        T(test_dispatch_rejects_expired_deadline_before_handler),
        T(test_dispatch_counts_calls_by_protocol_and_code),
        T(test_dispatch_rejects_zero_grpc_timeout_before_handler),
        T(test_dispatch_runs_handler_within_deadline_without_leaving_a_timer),
        T(test_dispatch_expires_a_handler_that_outlives_its_deadline),
        T(test_dispatch_expires_a_call_whose_cancel_callback_finishes_it),
        T(test_dispatch_drops_a_reply_sent_after_the_deadline_fired),
        T(test_dispatch_answers_disabled_for_every_memory_pins_method),
        T(test_dispatch_keeps_health_served_when_memory_pins_are_disabled),
        T(test_dispatch_serves_memory_pins_when_enabled),
        T(test_call_detach_runs_cancel_once_and_frees_the_call),
        T(test_call_detach_drops_the_reply_of_the_cancel_callback),
        T(test_call_detach_closes_a_health_watch),
        T(test_call_cancel_runs_the_callback_once),
        T(test_call_reply_turns_a_failed_send_into_the_status),
        T(test_call_abandoned_before_dispatch_is_freed),
        T(test_call_fail_internal_gives_generic_message_with_request_id),
        T(test_call_fail_store_hides_database_text),
        T(test_call_fail_keeps_the_text_of_a_domain_error),
        T(test_call_echoes_the_request_id_the_client_sent),
        T(test_call_generates_a_request_id_when_none_was_sent),
        T(test_call_replaces_an_unprintable_or_long_request_id),
        T(test_call_metadata_reaches_the_transport),
        T(test_call_static_metadata_keeps_order_and_is_not_copied),
        T(test_call_headers_are_visible_to_the_handler),
        T(test_dispatch_resolves_the_tenant_once_with_the_default),
        T(test_dispatch_adds_the_rate_limiters_verdict_as_headers),
    };
    return cmocka_run_group_tests_name("rpc/dispatch", tests, NULL, NULL);
}
