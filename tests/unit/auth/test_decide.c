/* tests/unit/auth/test_decide.c: RBAC decisions (auth/decide.c) as the dispatcher applies them
 * (rpc/dispatch.c), through the fake transport with a real store (tests/unit/support/fake_call.h),
 * and the Admin RBAC handlers (rpc/services/admin.c).
 *
 * The accuracy test runs every credential case against every guarded row of the method table
 * under every combination of RBAC_ENFORCE and RBAC_FAIL_OPEN, and compares each outcome with one
 * computed here from API.md's matrix, independently of auth/: it must find no mismatch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "common/error.h"
#include "fake_call.h"
#include "api_matrix.h"
#include "scrape.h"
#include "jwt_mint.h"
#include "memorypins/v1/admin.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "observability/metrics.h"

#define JWT_SECRET     "decide-jwt-secret"
#define MACHINE_SECRET "decide-machine-secret"

#define UPSERT         "/memorypins.v1.MemoryPins/UpsertPin"
#define GET            "/memorypins.v1.MemoryPins/GetPin"
#define LIST           "/memorypins.v1.MemoryPins/ListPins"
#define DELETE         "/memorypins.v1.MemoryPins/DeletePin"
#define CLEANUP        "/memorypins.v1.MemoryPins/CleanupExpiredPins"
#define INFO           "/memorypins.v1.Admin/GetRbacInfo"
#define RELOAD         "/memorypins.v1.Admin/ReloadRbacPolicy"
#define MATRIX         "/memorypins.v1.Admin/GetRbacMatrix"
#define CHECK          "/grpc.health.v1.Health/Check"
#define RAUDIT         "/memorypins.v1.Admin/ListRbacAudit"
#define RAUDIT_CLEANUP "/memorypins.v1.Admin/CleanupRbacAudit"
#define STATUS         "/memorypins.v1.Admin/GetStatus"

/* ---- the expected decision, from API.md section 6 -------------------------------------------- */

typedef enum cred_class { HAS_ROLE, NO_CREDENTIALS, INVALID } cred_class;

typedef struct expected {
    bool allowed;
    int grpc;
    const char *reason;
    const char *shadow;
} expected;

static expected expect(cred_class cls, const char *role, const char *resource, const char *action,
                       bool enforce, bool fail_open)
{
    expected e = {.allowed = true, .grpc = 0};
    if (cls == INVALID) {
        e = (expected){false, 16, "invalid-token", NULL};
    } else if (cls == NO_CREDENTIALS) {
        e = fail_open ? (expected){true, 0, "fail-open-no-credentials", NULL}
                      : (expected){false, 16, "no-credentials", NULL};
    } else if (api_allows(role, resource, action)) {
        e.reason = "role-allowed";
    } else {
        e = fail_open ? (expected){true, 0, "fail-open-insufficient-permissions", NULL}
                      : (expected){false, 7, "insufficient-permissions", NULL};
    }
    if (!enforce) {
        e.shadow = e.allowed ? NULL : e.reason;
        e = (expected){true, 0, "rbac-disabled", e.shadow};
    }
    return e;
}

/* ---- credentials ------------------------------------------------------------------------------
 */

typedef struct cred_case {
    const char *name;
    cred_class cls;
    const char *role; /* for HAS_ROLE */
    bool trust_x_roles;
    const char *hname; /* NULL: no header */
    char value[1024];
} cred_case;

/* "Bearer <token>" for payload; a payload without "exp" gets one an hour ahead (API.md section 6
 * requires it), so that each case names only what it is about. */
static char *bearer(char *out, size_t cap, const char *payload, const char *secret, bool sign,
                    const char *header)
{
    char tok[900], timed[512];
    if (header == NULL)
        header = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    if (strstr(payload, "\"exp\"") == NULL && payload[0] == '{') {
        snprintf(timed, sizeof(timed), "{\"exp\":%lld%s%s", (long long)time(NULL) + 3600,
                 payload[1] == '}' ? "" : ",", payload + 1);
        payload = timed;
    }
    assert_non_null(mint_jwt_raw(tok, sizeof(tok), header, payload, secret, sign));
    snprintf(out, cap, "Bearer %s", tok);
    return out;
}

static size_t make_cases(cred_case *c)
{
    static const char *const roles[] = {"infra", "admin", "machine", "dev", "readonly"};
    long long now = (long long)time(NULL);
    char payload[256];
    size_t n = 0;
    for (size_t i = 0; i < 5; i++) {
        c[n] = (cred_case){
            .name = roles[i], .cls = HAS_ROLE, .role = roles[i], .hname = "authorization"};
        snprintf(payload, sizeof(payload), "{\"sub\":\"u-%s\",\"roles\":[\"%s\"],\"exp\":%lld}",
                 roles[i], roles[i], now + 3600);
        bearer(c[n].value, sizeof(c[n].value), payload, JWT_SECRET, true, NULL);
        n++;
    }
    c[n] = (cred_case){.name = "jwt without roles", .cls = HAS_ROLE, .hname = "authorization"};
    bearer(c[n++].value, sizeof(c[0].value), "{\"sub\":\"nobody\"}", JWT_SECRET, true, NULL);
    c[n] = (cred_case){
        .name = "machine token", .cls = HAS_ROLE, .role = "machine", .hname = "x-machine-token"};
    snprintf(c[n++].value, sizeof(c[0].value), "%s", MACHINE_SECRET);
    c[n++] = (cred_case){.name = "none", .cls = NO_CREDENTIALS};
    c[n] = (cred_case){.name = "wrong machine token", .cls = INVALID, .hname = "x-machine-token"};
    snprintf(c[n++].value, sizeof(c[0].value), "%s-not", MACHINE_SECRET);
    c[n] = (cred_case){.name = "expired jwt", .cls = INVALID, .hname = "authorization"};
    snprintf(payload, sizeof(payload), "{\"roles\":[\"admin\"],\"exp\":%lld}", now - 3600);
    bearer(c[n++].value, sizeof(c[0].value), payload, JWT_SECRET, true, NULL);
    c[n] = (cred_case){.name = "bad signature", .cls = INVALID, .hname = "authorization"};
    bearer(c[n++].value, sizeof(c[0].value), "{\"roles\":[\"admin\"]}", "not-the-secret", true,
           NULL);
    c[n] = (cred_case){.name = "alg none", .cls = INVALID, .hname = "authorization"};
    bearer(c[n++].value, sizeof(c[0].value), "{\"roles\":[\"admin\"]}", JWT_SECRET, false,
           "{\"alg\":\"none\",\"typ\":\"JWT\"}");
    c[n] = (cred_case){.name = "x-roles untrusted", .cls = NO_CREDENTIALS, .hname = "x-roles"};
    snprintf(c[n++].value, sizeof(c[0].value), "admin");
    c[n] = (cred_case){.name = "x-roles trusted",
                       .cls = HAS_ROLE,
                       .role = "admin",
                       .trust_x_roles = true,
                       .hname = "x-roles"};
    snprintf(c[n++].value, sizeof(c[0].value), "admin");
    return n;
}

/* ---- fixture ----------------------------------------------------------------------------------
 */

static fake_env *new_env(void)
{
    fake_env *env = fake_env_new();
    pins_config *cfg = fake_env_config(env);
    cfg->machine_secret_token = strdup(MACHINE_SECRET);
    cfg->jwt_secret = strdup(JWT_SECRET);
    assert_non_null(cfg->machine_secret_token);
    assert_non_null(cfg->jwt_secret);
    return env;
}

static int handler_runs;

/* Replies with an empty message of the row's output type. */
static void counting_handler(rpc_call *call)
{
    handler_runs++;
    const ProtobufCMessageDescriptor *d = rpc_call_method(call)->output;
    ProtobufCMessage *m = pins_arena_alloc(rpc_call_arena(call), d->sizeof_message);
    assert_non_null(m);
    protobuf_c_message_init(d, m);
    rpc_call_reply(call, m);
}

/* ---- the accuracy table -----------------------------------------------------------------------
 */

static void test_every_credential_row_and_mode_matches_the_matrix(void **state)
{
    fake_env *env = new_env();
    pins_config *cfg = fake_env_config(env);
    cred_case cases[24];
    size_t ncases = make_cases(cases);
    size_t nrows = 0;
    const rpc_method *table = rpc_method_table(&nrows);
    rpc_method rows[64];
    size_t nguarded = 0;
    for (size_t i = 0; i < nrows; i++) {
        if (table[i].flags & RPC_METHOD_UNGUARDED)
            continue;
        assert_non_null(table[i].resource);
        assert_non_null(table[i].action);
        assert_true(nguarded < 64);
        rows[nguarded] = table[i];
        rows[nguarded].handler = counting_handler;
        nguarded++;
    }
    assert_true(nguarded >= 13); /* 6 MemoryPins + 7 Admin methods */

    double decisions0 = scrape_family_sum("rbac_decisions_total");
    double engine0 = scrape_family_sum("rbac_engine_decisions_total");
    double shadow0 = scrape_family_sum("rbac_shadow_denials_total");
    double latency0 = scrape_value("rbac_latency_seconds_count", -1);
    double engine_latency0 = scrape_value("rbac_engine_latency_seconds_count", -1);
    int total = 0, mismatches = 0, shadows = 0, denied = 0;
    for (int mode = 0; mode < 4; mode++) {
        bool enforce = mode & 1, fail_open = mode & 2;
        cfg->rbac_enforce = enforce;
        cfg->rbac_fail_open = fail_open;
        for (size_t c = 0; c < ncases; c++) {
            cfg->rbac_trust_x_roles = cases[c].trust_x_roles;
            const char *hdrs[] = {cases[c].hname, cases[c].value, NULL};
            for (size_t r = 0; r < nguarded; r++) {
                expected e = expect(cases[c].cls, cases[c].role, rows[r].resource, rows[r].action,
                                    enforce, fail_open);
                int runs = handler_runs;
                fake_call *fc =
                    fake_call_new_method(env, &rows[r], NULL, cases[c].hname ? hdrs : NULL);
                assert_non_null(fc);
                rpc_call *call = fake_call_rpc(fc);
                rpc_call_ref(call); /* keep it readable after the fake lets go */
                fake_call_dispatch(fc);
                const auth_decision *d = rpc_call_auth(call);
                bool ran = handler_runs == runs + 1;
                bool ok = fake_call_finished(fc) && fake_call_grpc_code(fc) == e.grpc &&
                          ran == e.allowed && d != NULL && d->allowed == e.allowed &&
                          strcmp(d->reason, e.reason) == 0 &&
                          (e.shadow == NULL ? d->shadow_reason == NULL
                                            : d->shadow_reason != NULL &&
                                                  strcmp(d->shadow_reason, e.shadow) == 0);
                if (e.allowed)
                    ok = ok && call->deny.reason == NULL;
                else
                    ok = ok && call->deny.reason != NULL &&
                         strcmp(call->deny.reason, e.reason) == 0 &&
                         strcmp(call->deny.resource, rows[r].resource) == 0 &&
                         strcmp(call->deny.action, rows[r].action) == 0;
                if (!ok && mismatches++ < 20)
                    print_message("mismatch: %s %s enforce=%d fail_open=%d: got code %d reason %s "
                                  "ran %d; want code %d reason %s\n",
                                  cases[c].name, rows[r].path, enforce, fail_open,
                                  fake_call_grpc_code(fc), d ? d->reason : "(none)", ran, e.grpc,
                                  e.reason);
                shadows += e.shadow != NULL;
                denied += !e.allowed;
                total++;
                rpc_call_unref(call);
                fake_call_free(fc);
            }
        }
    }
    print_message("%d decisions checked (%zu credentials x %zu guarded methods x 4 modes), %d "
                  "mismatches\n",
                  total, ncases, nguarded, mismatches);
    assert_int_equal(mismatches, 0);
    assert_int_equal(total, (int)(4 * ncases * nguarded));
    assert_true(shadows > 0 && denied > 0);
    /* Every decision is counted once in each family, and every would-be denial as shadow. */
    assert_true(scrape_family_sum("rbac_decisions_total") - decisions0 == total);
    assert_true(scrape_family_sum("rbac_engine_decisions_total") - engine0 == total);
    assert_true(scrape_family_sum("rbac_shadow_denials_total") - shadow0 == shadows);
    assert_true(scrape_value("rbac_latency_seconds_count", -1) - (latency0 < 0 ? 0 : latency0) ==
                total);
    assert_true(scrape_value("rbac_engine_latency_seconds_count", -1) -
                    (engine_latency0 < 0 ? 0 : engine_latency0) ==
                total);
    assert_true(scrape_value("rbac_decisions_total{resource=\"memory_pin\",action=\"write\","
                             "decision=\"allowed\",reason=\"rbac-disabled\"}",
                             -1) > 0);
    assert_true(scrape_value("rbac_engine_decisions_total{resource=\"memory_pin\",action=\"write\","
                             "decision=\"denied\",reason=\"no-credentials\"}",
                             -1) > 0);
    assert_true(scrape_value("rbac_shadow_denials_total{reason=\"invalid-token\"}", -1) > 0);
    fake_env_free(env);
}

/* ---- real handlers ----------------------------------------------------------------------------
 */

static Memorypins__V1__UpsertPinRequest upsert_req(const char *tenant, const char *key,
                                                   Google__Protobuf__Struct *empty)
{
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    google__protobuf__struct__init(empty);
    req.tenant_id = (char *)tenant;
    req.key = (char *)key;
    req.value = empty;
    return req;
}

/* Runs the worker's loop until the store answered fc (bounded). */
static void wait_finished(fake_env *env, fake_call *fc)
{
    for (int i = 0; i < 500 && !fake_call_finished(fc); i++)
        fake_env_run(env, 2);
    assert_true(fake_call_finished(fc));
}

/* Runs path with request and one header; returns the gRPC code and frees the call. */
static int run(fake_env *env, const char *path, const ProtobufCMessage *req, const char *hname,
               const char *hvalue)
{
    const char *hdrs[] = {hname, hvalue, NULL};
    fake_call *fc = fake_call_run(env, path, req, hname != NULL ? hdrs : NULL);
    wait_finished(env, fc);
    int code = fake_call_grpc_code(fc);
    fake_call_free(fc);
    return code;
}

static void test_denied_calls_never_reach_the_store(void **state)
{
    fake_env *env = new_env();
    fake_env_config(env)->rbac_enforce = true;
    cred_case cases[24];
    size_t ncases = make_cases(cases);
    Google__Protobuf__Struct empty;
    Memorypins__V1__UpsertPinRequest up = upsert_req("t1", "k", &empty);
    char *before = fake_env_snapshot(env, "t1");
    int refused = 0;
    for (size_t c = 0; c < ncases; c++) {
        expected e = expect(cases[c].cls, cases[c].role, "memory_pin", "write", true, false);
        if (e.allowed || cases[c].trust_x_roles)
            continue;
        int code = run(env, UPSERT, &up.base, cases[c].hname, cases[c].value);
        if (code != e.grpc)
            fail_msg("%s: code %d, want %d", cases[c].name, code, e.grpc);
        char *after = fake_env_snapshot(env, "t1");
        assert_string_equal(after, before);
        free(after);
        refused++;
    }
    assert_true(refused >= 9);
    assert_int_equal(fake_env_pin_count(env, "t1"), 0);

    /* The machine token writes (runbook Phase 4 step 5). */
    assert_int_equal(run(env, UPSERT, &up.base, "x-machine-token", MACHINE_SECRET), 0);
    assert_int_equal(fake_env_pin_count(env, "t1"), 1);
    free(before);
    before = fake_env_snapshot(env, "t1");

    /* machine may not delete or clean up; dev may read but not delete. */
    Memorypins__V1__DeletePinRequest del = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
    del.tenant_id = "t1";
    del.key = "k";
    assert_int_equal(run(env, DELETE, &del.base, "x-machine-token", MACHINE_SECRET), 7);
    Memorypins__V1__CleanupExpiredPinsRequest cl =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    assert_int_equal(run(env, CLEANUP, &cl.base, "x-machine-token", MACHINE_SECRET), 7);
    char dev[1024];
    bearer(dev, sizeof(dev), "{\"roles\":\"dev\"}", JWT_SECRET, true, NULL);
    assert_int_equal(run(env, DELETE, &del.base, "authorization", dev), 7);
    Memorypins__V1__GetPinRequest get = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    get.tenant_id = "t1";
    get.key = "k";
    assert_int_equal(run(env, GET, &get.base, "authorization", dev), 0);
    char *after = fake_env_snapshot(env, "t1");
    assert_string_equal(after, before);
    free(after);
    free(before);

    /* RBAC_ENFORCE=false (runbook Phase 4 step 2): no credentials still write. */
    fake_env_config(env)->rbac_enforce = false;
    Memorypins__V1__UpsertPinRequest up2 = upsert_req("t1", "k2", &empty);
    assert_int_equal(run(env, UPSERT, &up2.base, NULL, NULL), 0);
    assert_int_equal(fake_env_pin_count(env, "t1"), 2);
    fake_env_free(env);
}

static void test_unguarded_methods_need_no_credentials(void **state)
{
    fake_env *env = new_env();
    fake_env_config(env)->rbac_enforce = true;
    fake_call *fc = fake_call_new(env, CHECK, NULL, NULL);
    rpc_call *call = fake_call_rpc(fc);
    rpc_call_ref(call);
    fake_call_dispatch(fc);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    assert_null(rpc_call_auth(call));
    assert_null(call->deny.reason);
    rpc_call_unref(call);
    fake_call_free(fc);
    fake_env_free(env);
}

static void test_auth_runs_before_the_feature_flag(void **state)
{
    fake_env *env = new_env();
    fake_env_config(env)->rbac_enforce = true;
    fake_env_config(env)->memory_pins_enabled = false;
    Google__Protobuf__Struct empty;
    Memorypins__V1__UpsertPinRequest up = upsert_req("t1", "k", &empty);
    assert_int_equal(run(env, UPSERT, &up.base, NULL, NULL), 16);
    assert_int_equal(run(env, UPSERT, &up.base, "x-machine-token", MACHINE_SECRET), 14);
    fake_env_free(env);
}

/* Runs path and returns the decision's reason (static string) and code. */
/* Runs path with the headers {name, value, ..., NULL}; returns the code, *preason the reason of
 * the RBAC decision (NULL: none) and, when pdeny is not NULL, *pdeny the reason the dispatcher
 * recorded for a refusal (NULL: none). The reasons are static strings. */
static int run_headers(fake_env *env, const char *path, const ProtobufCMessage *req,
                       const char *const *hdrs, const char **preason, const char **pdeny)
{
    fake_call *fc = fake_call_new(env, path, req, hdrs);
    assert_non_null(fc);
    rpc_call *call = fake_call_rpc(fc);
    rpc_call_ref(call);
    fake_call_dispatch(fc);
    wait_finished(env, fc);
    int code = fake_call_grpc_code(fc);
    *preason = rpc_call_auth(call) != NULL ? rpc_call_auth(call)->reason : NULL;
    if (pdeny != NULL)
        *pdeny = call->deny.reason;
    rpc_call_unref(call);
    fake_call_free(fc);
    return code;
}

static const char *reason_of(fake_env *env, const char *path, const ProtobufCMessage *req,
                             const char *token, int *pcode)
{
    const char *hdrs[] = {"authorization", token, NULL};
    const char *reason = NULL, *deny = NULL;
    *pcode = run_headers(env, path, req, hdrs, &reason, &deny);
    if (deny != NULL)
        assert_string_equal(deny, reason);
    return reason;
}

/* A request's one header, for auth_facts. */
typedef struct one_header {
    const char *name;
    const char *value;
} one_header;

static const char *one_header_lookup(void *arg, const char *name)
{
    const one_header *h = arg;
    return h->name != NULL && strcmp(h->name, name) == 0 ? h->value : NULL;
}

/* The verdict from the headers alone, before the request is decoded: plain facts, no call. */
static const char *early_reason(fake_env *env, const char *path, const char *hname,
                                const char *token, bool *pallowed)
{
    const rpc_method *m = rpc_method_find(path, strlen(path));
    assert_non_null(m);
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    one_header h = {hname, token};
    /* Early, only a row that spans every tenant names one (as the dispatcher resolves it). */
    auth_facts f = {
        .cfg = fake_env_config(env),
        .arena = a,
        .header = one_header_lookup,
        .header_arg = &h,
        .resource = m->resource,
        .action = m->action,
        .tenant = (m->flags & RPC_METHOD_ALL_TENANTS) ? AUTH_ALL_TENANTS : NULL,
        .method = m->path,
        .request_id = "early",
    };
    auth_decision d;
    assert_int_equal(auth_decide_early(&f, &d), 0);
    *pallowed = d.allowed;
    const char *reason = d.reason; /* static */
    if (!d.allowed)
        assert_int_not_equal(d.err, 0);
    pins_arena_free(a);
    return reason;
}

static void test_early_decision_refuses_only_what_the_headers_decide(void **state)
{
    fake_env *env = new_env();
    pins_config *cfg = fake_env_config(env);
    cfg->rbac_enforce = true;
    char t1[1024], dev[1024], forged[1024];
    bearer(t1, sizeof(t1), "{\"roles\":[\"admin\"],\"tenants\":[\"t1\"]}", JWT_SECRET, true, NULL);
    bearer(dev, sizeof(dev), "{\"roles\":\"dev\"}", JWT_SECRET, true, NULL);
    bearer(forged, sizeof(forged), "{\"roles\":\"admin\"}", "another-secret", true, NULL);
    bool allowed = true;
    double before = scrape_family_sum("rbac_decisions_total");
    assert_string_equal(early_reason(env, UPSERT, NULL, NULL, &allowed), "no-credentials");
    assert_false(allowed);
    assert_string_equal(early_reason(env, UPSERT, "authorization", forged, &allowed),
                        "invalid-token");
    assert_false(allowed);
    assert_string_equal(early_reason(env, UPSERT, "authorization", dev, &allowed),
                        "insufficient-permissions");
    assert_false(allowed);
    /* Final denials are counted once, here; the full decision never runs for them. */
    assert_true(scrape_family_sum("rbac_decisions_total") == (before < 0 ? 0 : before) + 3);
    /* The tenant binding needs the request: a restricted token passes this step, except for a
     * method that spans every tenant, which needs no request to tell. */
    assert_true(early_reason(env, UPSERT, "authorization", t1, &allowed) != NULL);
    assert_true(allowed);
    assert_string_equal(early_reason(env, RELOAD, "authorization", t1, &allowed),
                        "tenant-not-allowed");
    assert_false(allowed);
    assert_true(early_reason(env, UPSERT, "x-machine-token", MACHINE_SECRET, &allowed) != NULL);
    assert_true(allowed);
    /* Fail-open lets missing credentials through; shadow mode decides nothing early. */
    cfg->rbac_fail_open = true;
    early_reason(env, UPSERT, NULL, NULL, &allowed);
    assert_true(allowed);
    assert_string_equal(early_reason(env, UPSERT, "authorization", forged, &allowed),
                        "invalid-token");
    assert_false(allowed);
    cfg->rbac_fail_open = false;
    cfg->rbac_enforce = false;
    early_reason(env, UPSERT, "authorization", forged, &allowed);
    assert_true(allowed);
    fake_env_free(env);
}

static void test_tenant_restricted_tokens_stay_in_their_tenants(void **state)
{
    fake_env *env = new_env();
    pins_config *cfg = fake_env_config(env);
    cfg->rbac_enforce = true;
    char t1[1024], global[1024], dev_t1[1024];
    bearer(t1, sizeof(t1), "{\"roles\":[\"admin\"],\"tenants\":[\"t1\"]}", JWT_SECRET, true, NULL);
    bearer(global, sizeof(global), "{\"roles\":\"admin\",\"tenant_id\":\"global\"}", JWT_SECRET,
           true, NULL);
    bearer(dev_t1, sizeof(dev_t1), "{\"roles\":\"dev\",\"tenant_id\":\"t1\"}", JWT_SECRET, true,
           NULL);
    Google__Protobuf__Struct empty;
    int code = -1;
    Memorypins__V1__UpsertPinRequest up1 = upsert_req("t1", "k", &empty);
    Memorypins__V1__UpsertPinRequest up2 = upsert_req("t2", "k", &empty);
    Memorypins__V1__UpsertPinRequest upg = upsert_req("", "k", &empty);
    assert_string_equal(reason_of(env, UPSERT, &up1.base, t1, &code), "role-allowed");
    assert_int_equal(code, 0);
    assert_string_equal(reason_of(env, UPSERT, &up2.base, t1, &code), "tenant-not-allowed");
    assert_int_equal(code, 7);
    assert_int_equal(fake_env_pin_count(env, "t2"), 0);
    assert_string_equal(reason_of(env, UPSERT, &upg.base, t1, &code), "tenant-not-allowed");
    assert_string_equal(reason_of(env, UPSERT, &upg.base, global, &code), "role-allowed");
    assert_int_equal(code, 0);
    assert_int_equal(fake_env_pin_count(env, "global"), 1);

    Memorypins__V1__GetPinRequest get = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    get.tenant_id = "t2";
    get.key = "k";
    assert_string_equal(reason_of(env, GET, &get.base, t1, &code), "tenant-not-allowed");
    assert_int_equal(code, 7);
    Memorypins__V1__ListPinsRequest list = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    list.tenant_id = "t2";
    assert_string_equal(reason_of(env, LIST, &list.base, t1, &code), "tenant-not-allowed");
    list.tenant_id = "t1";
    assert_string_equal(reason_of(env, LIST, &list.base, t1, &code), "role-allowed");
    assert_int_equal(code, 0);

    /* CleanupExpiredPins: unset tenant_id means every tenant. */
    Memorypins__V1__CleanupExpiredPinsRequest cl =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    assert_string_equal(reason_of(env, CLEANUP, &cl.base, t1, &code), "tenant-not-allowed");
    Google__Protobuf__StringValue sv = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    sv.value = "t1";
    cl.tenant_id = &sv;
    assert_string_equal(reason_of(env, CLEANUP, &cl.base, t1, &code), "role-allowed");
    assert_int_equal(code, 0);

    /* Fail-open lets a missing permission through, never a foreign tenant. */
    cfg->rbac_fail_open = true;
    assert_string_equal(reason_of(env, UPSERT, &up1.base, dev_t1, &code),
                        "fail-open-insufficient-permissions");
    assert_int_equal(code, 0);
    assert_string_equal(reason_of(env, UPSERT, &up2.base, dev_t1, &code), "tenant-not-allowed");
    assert_int_equal(code, 7);

    /* Shadow mode counts it. */
    cfg->rbac_enforce = false;
    double before = scrape_value("rbac_shadow_denials_total{reason=\"tenant-not-allowed\"}", -1);
    assert_string_equal(reason_of(env, UPSERT, &up2.base, t1, &code), "rbac-disabled");
    assert_int_equal(code, 0);
    assert_true(scrape_value("rbac_shadow_denials_total{reason=\"tenant-not-allowed\"}", -1) ==
                (before < 0 ? 0 : before) + 1);
    fake_env_free(env);
}

static void on_count(void *arg, int err, int64_t count)
{
    assert_int_equal(err, 0);
    *(int64_t *)arg = count;
}

/* Writes one RBAC audit row dated at ts_us straight to the store. */
static void audit_row_at(fake_env *env, int64_t ts_us)
{
    store_rbac_audit row = {.ts_us = ts_us,
                            .subject = "old",
                            .resource = "memory_pin",
                            .action = "read",
                            .reason = "no-credentials",
                            .tenant_id = "t2"};
    int64_t written = -1;
    assert_int_equal(store_rbac_audit_write(fake_env_store(env), &row, 1, on_count, &written), 0);
    for (int i = 0; i < 500 && written < 0; i++)
        fake_env_run(env, 2);
    assert_int_equal(written, 1);
}

static int64_t audit_rows(fake_env *env, const char *token)
{
    Memorypins__V1__ListRbacAuditRequest req = MEMORYPINS__V1__LIST_RBAC_AUDIT_REQUEST__INIT;
    const char *hdrs[] = {"authorization", token, NULL};
    fake_call *fc = fake_call_run(env, RAUDIT, &req.base, hdrs);
    wait_finished(env, fc);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    const Memorypins__V1__ListRbacAuditResponse *resp = (const void *)fake_call_response(fc);
    assert_non_null(resp);
    int64_t total = resp->total;
    fake_call_free(fc);
    return total;
}

static void test_tenant_restricted_tokens_are_refused_all_tenant_methods(void **state)
{
    fake_env *env = new_env();
    fake_env_config(env)->rbac_enforce = true;
    char t1[1024], admin[1024];
    bearer(t1, sizeof(t1), "{\"roles\":[\"admin\"],\"tenants\":[\"t1\"]}", JWT_SECRET, true, NULL);
    bearer(admin, sizeof(admin), "{\"roles\":[\"admin\"]}", JWT_SECRET, true, NULL);
    audit_row_at(env, 1000000); /* 1970: older than any retention */
    int code = -1;

    /* The policy is every tenant's: a restricted admin may not reload it. */
    assert_string_equal(reason_of(env, RELOAD, NULL, t1, &code), "tenant-not-allowed");
    assert_int_equal(code, 7);
    /* Nor delete every tenant's audit rows: refused, and nothing is deleted. */
    Memorypins__V1__CleanupRbacAuditRequest cl = MEMORYPINS__V1__CLEANUP_RBAC_AUDIT_REQUEST__INIT;
    cl.retention_days = 1;
    assert_string_equal(reason_of(env, RAUDIT_CLEANUP, &cl.base, t1, &code), "tenant-not-allowed");
    assert_int_equal(code, 7);
    assert_true(audit_rows(env, admin) >= 1);
    /* An audit listing without a tenant spans every tenant too. */
    Memorypins__V1__ListRbacAuditRequest ls = MEMORYPINS__V1__LIST_RBAC_AUDIT_REQUEST__INIT;
    assert_string_equal(reason_of(env, RAUDIT, &ls.base, t1, &code), "tenant-not-allowed");
    ls.tenant_id = "t1";
    assert_string_equal(reason_of(env, RAUDIT, &ls.base, t1, &code), "role-allowed");
    assert_int_equal(code, 0);
    /* Reads of the policy and of the status show no tenant's data. */
    assert_string_equal(reason_of(env, INFO, NULL, t1, &code), "role-allowed");
    assert_string_equal(reason_of(env, MATRIX, NULL, t1, &code), "role-allowed");
    assert_string_equal(reason_of(env, STATUS, NULL, t1, &code), "role-allowed");
    assert_int_equal(code, 0);

    /* An unrestricted admin may do both. */
    assert_string_equal(reason_of(env, RELOAD, NULL, admin, &code), "role-allowed");
    assert_int_equal(code, 0);
    assert_string_equal(reason_of(env, RAUDIT_CLEANUP, &cl.base, admin, &code), "role-allowed");
    assert_int_equal(code, 0);
    fake_env_free(env);
}

static void test_a_repeated_credential_header_is_an_invalid_credential(void **state)
{
    fake_env *env = new_env();
    fake_env_config(env)->rbac_enforce = true;
    char admin[1024], dev[1024];
    bearer(admin, sizeof(admin), "{\"roles\":[\"admin\"]}", JWT_SECRET, true, NULL);
    bearer(dev, sizeof(dev), "{\"roles\":[\"dev\"]}", JWT_SECRET, true, NULL);
    Google__Protobuf__Struct empty;
    Memorypins__V1__UpsertPinRequest up = upsert_req("t1", "k", &empty);
    const char *reason = NULL;

    /* Either copy alone would decide; together they are refused, whatever their order. */
    assert_int_equal(run_headers(env, UPSERT, &up.base,
                                 (const char *const[]){"authorization", admin, NULL}, &reason,
                                 NULL),
                     0);
    assert_int_equal(
        run_headers(env, UPSERT, &up.base,
                    (const char *const[]){"authorization", admin, "authorization", dev, NULL},
                    &reason, NULL),
        16);
    assert_string_equal(reason, "invalid-token");
    assert_int_equal(
        run_headers(env, UPSERT, &up.base,
                    (const char *const[]){"authorization", dev, "authorization", admin, NULL},
                    &reason, NULL),
        16);
    assert_int_equal(run_headers(env, UPSERT, &up.base,
                                 (const char *const[]){"x-machine-token", MACHINE_SECRET,
                                                       "x-machine-token", "other", NULL},
                                 &reason, NULL),
                     16);
    assert_string_equal(reason, "invalid-token");
    assert_int_equal(run_headers(env, UPSERT, &up.base,
                                 (const char *const[]){"x-machine-token", MACHINE_SECRET,
                                                       "x-machine-token", MACHINE_SECRET, NULL},
                                 &reason, NULL),
                     16);
    assert_int_equal(fake_env_pin_count(env, "t1"), 1);
    fake_env_free(env);
}

/* ---- Admin ------------------------------------------------------------------------------------
 */

static char tmpdir[64];

static const char *write_file(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    return path;
}

static const Google__Protobuf__Value *field(const Google__Protobuf__Struct *s, const char *key)
{
    for (size_t i = 0; i < s->n_fields; i++) {
        if (strcmp(s->fields[i]->key, key) == 0)
            return s->fields[i]->value;
    }
    return NULL;
}

static void test_admin_info_matrix_and_reload(void **state)
{
    fake_env *env = new_env();
    pins_config *cfg = fake_env_config(env);
    cfg->rbac_enforce = true;
    char admin[1024], dev[1024];
    bearer(admin, sizeof(admin), "{\"roles\":\"admin\"}", JWT_SECRET, true, NULL);
    bearer(dev, sizeof(dev), "{\"roles\":\"dev\"}", JWT_SECRET, true, NULL);
    const char *dev_h[] = {"authorization", dev, NULL};
    const char *admin_h[] = {"authorization", admin, NULL};

    fake_call *fc = fake_call_run(env, INFO, NULL, dev_h);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    const Memorypins__V1__GetRbacInfoResponse *info = (const void *)fake_call_response(fc);
    assert_non_null(info);
    assert_string_equal(info->version, "default");
    assert_int_equal(strlen(info->hash), 16);
    assert_non_null(info->loaded_at);
    assert_true(info->loaded_at->seconds > 1700000000);
    assert_int_equal(info->n_roles, 5);
    assert_string_equal(info->roles[0], "admin");
    assert_int_equal(info->n_resources, 3);
    assert_string_equal(info->resources[1], "prometheus");
    assert_true(info->enforce_mode);
    assert_false(info->fail_open);
    char default_hash[17];
    snprintf(default_hash, sizeof(default_hash), "%s", info->hash);
    fake_call_free(fc);

    fc = fake_call_run(env, MATRIX, NULL, dev_h);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    const Memorypins__V1__GetRbacMatrixResponse *mx = (const void *)fake_call_response(fc);
    assert_string_equal(mx->hash, default_hash);
    assert_int_equal(mx->matrix->n_fields, 5);
    const Google__Protobuf__Value *machine = field(mx->matrix, "machine");
    assert_non_null(machine);
    assert_int_equal(machine->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE);
    const Google__Protobuf__Value *mp = field(machine->struct_value, "memory_pin");
    assert_int_equal(mp->kind_case, GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE);
    assert_int_equal(mp->list_value->n_values, 2);
    assert_string_equal(mp->list_value->values[0]->string_value, "read");
    assert_string_equal(mp->list_value->values[1]->string_value, "write");
    fake_call_free(fc);

    /* dev may read the policy but not reload it. */
    fc = fake_call_run(env, RELOAD, NULL, dev_h);
    assert_int_equal(fake_call_grpc_code(fc), 7);
    fake_call_free(fc);

    /* A policy that lets dev write; the decision follows the reload. */
    Google__Protobuf__Struct empty;
    Memorypins__V1__UpsertPinRequest up = upsert_req("t1", "k", &empty);
    assert_int_equal(run(env, UPSERT, &up.base, "authorization", dev), 7);
    cfg->rbac_policy_file = strdup(write_file(
        "p.json", "{\"version\":\"v2\",\"matrix\":{\"dev\":{\"memory_pin\":[\"read\",\"write\"]},"
                  "\"admin\":{\"rbac\":[\"read\",\"reload\"]}},\"audit\":{\"log_allowed\":true}}"));
    fc = fake_call_run(env, RELOAD, NULL, admin_h);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    const Memorypins__V1__ReloadRbacPolicyResponse *rr = (const void *)fake_call_response(fc);
    assert_true(rr->success);
    assert_string_equal(rr->previous_hash, default_hash);
    assert_string_not_equal(rr->new_hash, default_hash);
    assert_non_null(rr->timestamp);
    assert_non_null(strstr(rr->message, "v2"));
    char v2_hash[17];
    snprintf(v2_hash, sizeof(v2_hash), "%s", rr->new_hash);
    fake_call_free(fc);

    const char *hdrs[] = {"authorization", dev, NULL};
    fc = fake_call_new(env, UPSERT, &up.base, hdrs);
    rpc_call *call = fake_call_rpc(fc);
    rpc_call_ref(call);
    fake_call_dispatch(fc);
    wait_finished(env, fc);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    assert_true(rpc_call_auth(call)->log_allowed);
    assert_string_equal(rpc_call_auth(call)->subject, "jwt");
    rpc_call_unref(call);
    fake_call_free(fc);

    /* A broken file: success=false in an OK answer, and the v2 policy stays. */
    write_file("p.json", "{\"version\":\"v3\",\"matrix\":{\"dev\":");
    fc = fake_call_run(env, RELOAD, NULL, admin_h);
    assert_int_equal(fake_call_grpc_code(fc), 0);
    rr = (const void *)fake_call_response(fc);
    assert_false(rr->success);
    assert_string_equal(rr->previous_hash, v2_hash);
    assert_string_equal(rr->new_hash, v2_hash);
    assert_non_null(strstr(rr->message, "not valid JSON"));
    fake_call_free(fc);
    assert_int_equal(run(env, UPSERT, &up.base, "authorization", dev), 0);

    /* Back to the built-in matrix for the tests that follow. */
    free(cfg->rbac_policy_file);
    cfg->rbac_policy_file = NULL;
    fc = fake_call_run(env, RELOAD, NULL, admin_h);
    rr = (const void *)fake_call_response(fc);
    assert_true(rr->success);
    assert_string_equal(rr->new_hash, default_hash);
    fake_call_free(fc);
    assert_int_equal(run(env, UPSERT, &up.base, "authorization", dev), 7);
    fake_env_free(env);
}

static int group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pins-auth-decide-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int group_teardown(void **state)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/p.json", tmpdir);
    unlink(path);
    assert_int_equal(rmdir(tmpdir), 0);
    auth_shutdown();
    metrics_shutdown();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_credential_row_and_mode_matches_the_matrix),
        cmocka_unit_test(test_denied_calls_never_reach_the_store),
        cmocka_unit_test(test_unguarded_methods_need_no_credentials),
        cmocka_unit_test(test_auth_runs_before_the_feature_flag),
        cmocka_unit_test(test_early_decision_refuses_only_what_the_headers_decide),
        cmocka_unit_test(test_tenant_restricted_tokens_stay_in_their_tenants),
        cmocka_unit_test(test_tenant_restricted_tokens_are_refused_all_tenant_methods),
        cmocka_unit_test(test_a_repeated_credential_header_is_an_invalid_credential),
        cmocka_unit_test(test_admin_info_matrix_and_reload),
    };
    return cmocka_run_group_tests_name("auth_decide", tests, group_setup, group_teardown);
}
