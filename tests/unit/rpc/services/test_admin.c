/* tests/unit/rpc/services/test_admin.c: the audit and status handlers of memorypins.v1.Admin
 * (rpc/services/admin.c) through the fake transport, on a real SQLite store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"
#include "fake_call.h"
#include "memorypins/v1/admin.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"

#define ADMIN(m) "/memorypins.v1.Admin/" m
#define DAY_US   (INT64_C(86400) * 1000000)

static int setup(void **state)
{
    fake_env *env = fake_env_new();
    *state = env;
    return 0;
}

static int teardown(void **state)
{
    fake_env_free(*state);
    return 0;
}

static void on_written(void *arg, int err, int64_t count)
{
    assert_int_equal(err, 0);
    *(int64_t *)arg = count;
}

static void write_rbac(fake_env *env, const store_rbac_audit *rows, size_t n)
{
    int64_t written = -1;
    assert_int_equal(store_rbac_audit_write(fake_env_store(env), rows, n, on_written, &written), 0);
    assert_int_equal(written, (int64_t)n);
}

/* The field key of s, or NULL. */
static const Google__Protobuf__Value *field(const Google__Protobuf__Struct *s, const char *key)
{
    assert_non_null(s);
    for (size_t i = 0; i < s->n_fields; i++) {
        if (strcmp(s->fields[i]->key, key) == 0)
            return s->fields[i]->value;
    }
    return NULL;
}

static const char *str_field(const Google__Protobuf__Struct *s, const char *key)
{
    const Google__Protobuf__Value *v = field(s, key);
    assert_non_null(v);
    assert_int_equal(v->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE);
    return v->string_value;
}

static double num_field(const Google__Protobuf__Struct *s, const char *key)
{
    const Google__Protobuf__Value *v = field(s, key);
    assert_non_null(v);
    assert_int_equal(v->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE);
    return v->number_value;
}

static bool bool_field(const Google__Protobuf__Struct *s, const char *key)
{
    const Google__Protobuf__Value *v = field(s, key);
    assert_non_null(v);
    assert_int_equal(v->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE);
    return v->bool_value;
}

static void test_list_rbac_audit_filters_and_pages(void **state)
{
    fake_env *env = *state;
    static const char *const roles[] = {"dev"};
    int64_t now = pins_time_now_us();
    const store_rbac_audit rows[] = {
        {.ts_us = now - 2000,
         .subject = "alice",
         .resource = "memory_pin",
         .action = "write",
         .allowed = false,
         .reason = "insufficient-permissions",
         .roles = roles,
         .nroles = 1,
         .path = "/api/v1/memory/pins",
         .method = "POST",
         .tenant_id = "t1"},
        {.ts_us = now - 1000,
         .subject = "anonymous",
         .resource = "memory_pin",
         .action = "read",
         .allowed = false,
         .reason = "no-credentials",
         .tenant_id = "t1"},
        {.ts_us = now,
         .subject = "machine",
         .resource = "rbac",
         .action = "read",
         .allowed = true,
         .reason = "role-allowed"},
    };
    write_rbac(env, rows, 3);

    Memorypins__V1__ListRbacAuditRequest req = MEMORYPINS__V1__LIST_RBAC_AUDIT_REQUEST__INIT;
    fake_call *fc = fake_call_run(env, ADMIN("ListRbacAudit"), &req.base, NULL);
    assert_int_equal(fake_call_err(fc), 0);
    const Memorypins__V1__ListRbacAuditResponse *resp = (const void *)fake_call_response(fc);
    assert_int_equal(resp->total, 3);
    assert_int_equal(resp->limit, 100);
    assert_int_equal(resp->n_entries, 3);
    assert_string_equal(resp->entries[0]->subject, "machine");
    assert_string_equal(resp->entries[0]->tenant_id, "");
    assert_string_equal(resp->entries[2]->subject, "alice");
    assert_int_equal(resp->entries[2]->n_roles, 1);
    assert_string_equal(resp->entries[2]->roles[0], "dev");
    assert_string_equal(resp->entries[2]->path, "/api/v1/memory/pins");
    assert_non_null(resp->entries[2]->ts);
    fake_call_free(fc);

    Google__Protobuf__BoolValue denied = GOOGLE__PROTOBUF__BOOL_VALUE__INIT;
    denied.value = false;
    Google__Protobuf__Timestamp since = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    since.seconds = (now - 1000) / 1000000;
    since.nanos = (int32_t)((now - 1000) % 1000000) * 1000;
    req.allowed = &denied;
    req.tenant_id = "t1";
    req.since = &since;
    fc = fake_call_run(env, ADMIN("ListRbacAudit"), &req.base, NULL);
    resp = (const void *)fake_call_response(fc);
    assert_non_null(resp);
    assert_int_equal(resp->total, 1);
    assert_string_equal(resp->entries[0]->reason, "no-credentials");
    fake_call_free(fc);

    req = (Memorypins__V1__ListRbacAuditRequest)MEMORYPINS__V1__LIST_RBAC_AUDIT_REQUEST__INIT;
    req.limit = 1;
    req.offset = 1;
    req.resource = "memory_pin";
    fc = fake_call_run(env, ADMIN("ListRbacAudit"), &req.base, NULL);
    resp = (const void *)fake_call_response(fc);
    assert_int_equal(resp->total, 2);
    assert_int_equal(resp->n_entries, 1);
    assert_int_equal(resp->offset, 1);
    assert_string_equal(resp->entries[0]->subject, "alice");
    fake_call_free(fc);

    req.limit = 1001;
    fc = fake_call_run(env, ADMIN("ListRbacAudit"), &req.base, NULL);
    assert_int_equal(fake_call_err(fc), PINS_EINVALID_ARGUMENT);
    assert_string_equal(fake_call_field(fc), "limit");
    fake_call_free(fc);
}

static void test_cleanup_rbac_audit_deletes_rows_past_retention(void **state)
{
    fake_env *env = *state;
    int64_t now = pins_time_now_us();
    const store_rbac_audit rows[] = {
        {.ts_us = now - 3 * DAY_US, .subject = "old", .resource = "rbac", .action = "read"},
        {.ts_us = now - DAY_US / 2, .subject = "recent", .resource = "rbac", .action = "read"},
    };
    write_rbac(env, rows, 2);
    Memorypins__V1__CleanupRbacAuditRequest req = MEMORYPINS__V1__CLEANUP_RBAC_AUDIT_REQUEST__INIT;
    fake_call *fc = fake_call_run(env, ADMIN("CleanupRbacAudit"), &req.base, NULL);
    const Memorypins__V1__CleanupRbacAuditResponse *resp = (const void *)fake_call_response(fc);
    assert_non_null(resp);
    assert_int_equal(resp->retention_days, 90);
    assert_int_equal(resp->deleted_count, 0);
    fake_call_free(fc);

    req.retention_days = 1;
    fc = fake_call_run(env, ADMIN("CleanupRbacAudit"), &req.base, NULL);
    resp = (const void *)fake_call_response(fc);
    assert_non_null(resp);
    assert_int_equal(resp->retention_days, 1);
    assert_int_equal(resp->deleted_count, 1);
    assert_non_null(resp->timestamp);
    assert_true(resp->timestamp->seconds >= now / 1000000);
    fake_call_free(fc);

    req.retention_days = -1;
    fc = fake_call_run(env, ADMIN("CleanupRbacAudit"), &req.base, NULL);
    assert_int_equal(fake_call_err(fc), PINS_EINVALID_ARGUMENT);
    fake_call_free(fc);
}

static void test_list_memory_audit_filters_by_operation(void **state)
{
    fake_env *env = *state;
    Memorypins__V1__UpsertPinRequest up = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    Google__Protobuf__Struct empty = GOOGLE__PROTOBUF__STRUCT__INIT;
    up.tenant_id = "t2";
    up.key = "k1";
    up.value = &empty;
    fake_call *fc = fake_call_run(env, "/memorypins.v1.MemoryPins/UpsertPin", &up.base,
                                  (const char *const[]){"x-agent-id", "a-1", NULL});
    assert_true(fake_env_run_until_finished(env, fc, 10000));
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
    Memorypins__V1__DeletePinRequest del = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
    del.tenant_id = "t2";
    del.key = "k1";
    fc = fake_call_run(env, "/memorypins.v1.MemoryPins/DeletePin", &del.base, NULL);
    assert_true(fake_env_run_until_finished(env, fc, 10000));
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);

    Memorypins__V1__ListMemoryAuditRequest req = MEMORYPINS__V1__LIST_MEMORY_AUDIT_REQUEST__INIT;
    req.tenant_id = "t2";
    fc = fake_call_run(env, ADMIN("ListMemoryAudit"), &req.base, NULL);
    const Memorypins__V1__ListMemoryAuditResponse *resp = (const void *)fake_call_response(fc);
    assert_non_null(resp);
    assert_int_equal(resp->total, 2);
    assert_int_equal(resp->limit, 100);
    assert_string_equal(resp->entries[0]->operation, "delete");
    assert_string_equal(resp->entries[1]->operation, "upsert");
    assert_string_equal(resp->entries[1]->agent_id, "a-1");
    assert_int_equal(strlen(resp->entries[1]->new_value_hash), 16);
    fake_call_free(fc);

    req.operation = "upsert";
    fc = fake_call_run(env, ADMIN("ListMemoryAudit"), &req.base, NULL);
    resp = (const void *)fake_call_response(fc);
    assert_int_equal(resp->total, 1);
    assert_string_equal(resp->entries[0]->key, "k1");
    fake_call_free(fc);

    req.offset = -1;
    fc = fake_call_run(env, ADMIN("ListMemoryAudit"), &req.base, NULL);
    assert_int_equal(fake_call_err(fc), PINS_EINVALID_ARGUMENT);
    fake_call_free(fc);
}

static void test_get_status_reports_every_section(void **state)
{
    fake_env *env = *state;
    pins_config *cfg = fake_env_config(env);
    cfg->chaos_allowed = true;
    cfg->rate_limit_rpm = 60;
    cfg->rate_limit_burst = 10;
    Memorypins__V1__GetStatusRequest req = MEMORYPINS__V1__GET_STATUS_REQUEST__INIT;
    fake_call *fc = fake_call_run(env, ADMIN("GetStatus"), &req.base, NULL);
    assert_int_equal(fake_call_err(fc), 0);
    const Memorypins__V1__GetStatusResponse *resp = (const void *)fake_call_response(fc);
    assert_non_null(resp);
    assert_string_equal(resp->version, PINS_VERSION);
    assert_true(resp->uptime >= 0);
    assert_string_equal(str_field(resp->store, "backend"), "sqlite");
    assert_string_equal(str_field(resp->store, "state"), "ok");
    assert_string_equal(str_field(resp->redis, "state"), "disabled");
    assert_true(bool_field(resp->flags, "memory_pins_enabled"));
    assert_false(bool_field(resp->flags, "rbac_enforce"));
    assert_false(bool_field(resp->flags, "rbac_fail_open"));
    assert_false(bool_field(resp->flags, "rbac_trust_x_roles"));
    assert_true(bool_field(resp->flags, "chaos_allowed"));
    assert_string_equal(str_field(resp->breaker, "state"), "closed");
    assert_true(num_field(resp->breaker, "errors_last_minute") >= 0);
    assert_true(num_field(resp->limiter, "rpm") == 60);
    assert_true(num_field(resp->limiter, "burst") == 10);
    assert_string_equal(str_field(resp->limiter, "backend"), "local");
    fake_call_free(fc);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_list_rbac_audit_filters_and_pages),
        T(test_cleanup_rbac_audit_deletes_rows_past_retention),
        T(test_list_memory_audit_filters_by_operation),
        T(test_get_status_reports_every_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
